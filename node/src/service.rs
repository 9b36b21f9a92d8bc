//! The node's side of the API: what the web layer calls.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use pesc_protocol::access::{AccessChange, AccessState, ApiToken, User};
use pesc_protocol::api::{
    NewDomain, NewRequest, NodeInfo, RequestInfo, SharedFileInfo, TemplateInfo, UploadFile,
    UploadProcess,
};
use pesc_protocol::domain::{self, Domain};
use pesc_protocol::limits::MAX_NAME_BYTES;
use pesc_protocol::model::{Language, Process, ProcessKind, SharedFile, safe_relative_path};
use pesc_protocol::{BlobHash, RequestId};
use pesc_webui::{ApiFailure, ByteStream, LogStream, NodeService, ResultsFile};

use crate::agent::{AgentHandle, Command, LogSource, now_ms};
use crate::archive;
use crate::blobs::BlobStore;
use crate::runner::RunnerCtx;

/// Shortest time a long poll waits before answering with a change that does
/// not finish the request.
const LONG_POLL_MIN: Duration = Duration::from_millis(100);

/// How often a followed log checks for new bytes where it cannot be woken
/// (inotify unavailable).
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub struct Service {
    pub token: String,
    /// The one-time code of the setup link printed at start.
    pub setup_code: String,
    pub agent: AgentHandle,
    pub blobs: Arc<BlobStore>,
    pub runner: Arc<RunnerCtx>,
    pub max_upload_bytes: u64,
    pub max_file_bytes: u64,
    pub owner: String,
    pub tmp_dir: PathBuf,
    /// Base images this node puts in templates, by family (`[docker.template_bases]`).
    pub template_bases: std::collections::HashMap<String, String>,
    /// When this node started (wall ms): tells a page that the node restarted.
    pub started_ms: u64,
    /// Signs session cookies (derived from the grid key).
    pub session_key: [u8; 32],
    /// The data dir: the join token is read from it when asked for.
    pub data_dir: PathBuf,
    /// Host names browsers may use besides the loopback ones.
    pub allowed_hosts: Vec<String>,
    /// What nodes that are not ring neighbours said of themselves when
    /// last asked (`nodes`), and when.
    pub far_statuses: FarStatuses,
}

impl Service {
    fn template_base(&self, t: &domain::Template) -> String {
        self.template_bases
            .get(t.family)
            .cloned()
            .unwrap_or_else(|| t.base.to_string())
    }
}

fn internal(e: impl std::fmt::Display) -> ApiFailure {
    ApiFailure::internal(e.to_string())
}

impl Service {
    /// Streams an upload into the blob store, enforcing the size limit as it
    /// goes; nothing is kept if the body is too large or breaks off.
    async fn receive(
        &self,
        mut body: ByteStream,
        limit: u64,
        setting: &str,
    ) -> Result<crate::blobs::BlobWriter, ApiFailure> {
        let mut w = self.blobs.writer().map_err(internal)?;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    self.blobs.abort(w);
                    return Err(ApiFailure::bad_request(format!(
                        "the upload broke off: {e}"
                    )));
                }
            };
            if w.len() + chunk.len() as u64 > limit {
                self.blobs.abort(w);
                drain(&mut body).await;
                return Err(ApiFailure::too_large(format!(
                    "the upload is larger than this node's limit of {} MiB ({setting} in node.toml)",
                    limit >> 20
                )));
            }
            if let Err(e) = w.write_all(&chunk) {
                self.blobs.abort(w);
                return Err(internal(format!("writing the upload: {e}")));
            }
        }
        Ok(w)
    }
}

async fn drain_body(mut body: ByteStream) {
    drain(&mut body).await
}

/// Reads and drops what is left of a refused upload (bounded in bytes and
/// time), so the client gets to read the answer instead of a reset.
async fn drain(body: &mut ByteStream) {
    const MAX_DRAIN: u64 = 256 << 20;
    let mut seen = 0u64;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(c)) = body.next().await {
            seen += c.len() as u64;
            if seen > MAX_DRAIN {
                break;
            }
        }
    })
    .await;
}

/// Decides a process's language and entry from what the user gave and what
/// the upload holds. Errors say what to fix.
fn describe(meta: &UploadProcess, files: &[String]) -> Result<(Language, String, bool), String> {
    if let Some(cmd) = meta
        .command
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        if cmd.len() > MAX_NAME_BYTES {
            return Err(format!("the command is longer than {MAX_NAME_BYTES} bytes"));
        }
        let lang = match &meta.language {
            Some(l) => l.parse().map_err(|e: pesc_protocol::Error| e.to_string())?,
            None => Language::Shell,
        };
        return Ok((lang, cmd.to_string(), true));
    }
    let entry = match &meta.entry {
        Some(e) => {
            let e = safe_relative_path(e).map_err(|e| format!("entry {e}"))?;
            if !files.contains(&e) {
                return Err(format!(
                    "the entry '{e}' is not in the upload (files: {})",
                    preview(files)
                ));
            }
            e
        }
        None if files.len() == 1 => files[0].clone(),
        None => {
            let guess = ["main.py", "main.R", "main.r", "main.sh", "main.c", "run.sh"]
                .iter()
                .find(|m| files.iter().any(|f| f == *m))
                .map(|m| m.to_string())
                .or_else(|| {
                    let jars: Vec<_> = files.iter().filter(|f| f.ends_with(".jar")).collect();
                    (jars.len() == 1).then(|| jars[0].clone())
                });
            guess.ok_or_else(|| {
                format!(
                    "say which file to run with entry=PATH (files: {})",
                    preview(files)
                )
            })?
        }
    };
    let lang = match &meta.language {
        Some(l) => l.parse().map_err(|e: pesc_protocol::Error| e.to_string())?,
        None => Language::from_file_name(&entry).ok_or_else(|| {
            format!("cannot tell the language of '{entry}': give language=python|r|java|c|shell")
        })?,
    };
    Ok((lang, entry, false))
}

fn preview(files: &[String]) -> String {
    let mut s = files.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if files.len() > 8 {
        s.push_str(", …");
    }
    s
}

#[async_trait::async_trait]
impl NodeService for Service {
    fn api_token(&self) -> &str {
        &self.token
    }

    fn setup_code(&self) -> &str {
        &self.setup_code
    }

    fn node_owner(&self) -> &str {
        &self.owner
    }

    fn session_key(&self) -> [u8; 32] {
        self.session_key
    }

    fn allowed_hosts(&self) -> Vec<String> {
        self.allowed_hosts.clone()
    }

    fn join_token(&self) -> String {
        crate::grid_secret::token(&self.data_dir)
            .map(|t| t.to_string())
            .unwrap_or_else(|e| format!("(no join token: {e})"))
    }

    async fn user(&self, name: &str) -> Result<Option<User>, ApiFailure> {
        self.agent
            .call(|r| Command::User(name.to_string(), r))
            .await
    }

    async fn token(&self, id: &str) -> Result<Option<ApiToken>, ApiFailure> {
        self.agent.call(|r| Command::Token(id.to_string(), r)).await
    }

    async fn access(&self) -> Result<AccessState, ApiFailure> {
        self.agent.call(Command::Access).await
    }

    async fn change_access(&self, change: AccessChange) -> Result<(), ApiFailure> {
        self.agent.call(|r| Command::ChangeAccess(change, r)).await
    }

    async fn nodes(&self) -> Result<Vec<pesc_protocol::api::GridNode>, ApiFailure> {
        let mut list = self.agent.read().nodes();
        // Heartbeats go to ring neighbours only: the others are asked.
        let far: Vec<usize> = (0..list.len())
            .filter(|&i| {
                let n = &list[i];
                !n.this_node && n.up && n.slots_free.is_none()
            })
            .take(FAR_STATUS_ASKED)
            .collect();
        if far.is_empty() {
            return Ok(list);
        }
        let min = self.access().await?.min_isolation;
        let answers = futures_util::future::join_all(
            far.iter()
                .map(|&i| far_status(&self.runner, &self.far_statuses, &list[i].id)),
        )
        .await;
        for (i, a) in far.into_iter().zip(answers) {
            if let Some((s, age_ms)) = a {
                list[i].fill_from_status(&s, min);
                list[i].last_seen_ms_ago = Some(age_ms);
            }
        }
        Ok(list)
    }

    async fn node_info(&self) -> Result<NodeInfo, ApiFailure> {
        self.agent.ask(Command::NodeInfo).await
    }

    async fn upload_process(
        &self,
        meta: UploadProcess,
        body: ByteStream,
        owner: &str,
    ) -> Result<Process, ApiFailure> {
        let file_name = safe_relative_path(&meta.file_name)
            .map_err(|e| ApiFailure::bad_request(format!("file_name {e}")))?;
        if file_name.contains('/') || file_name.len() > MAX_NAME_BYTES {
            return Err(ApiFailure::bad_request(
                "file_name must be a plain file name, like main.py or project.zip",
            ));
        }
        let name = meta
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| file_name.clone());
        if name.len() > MAX_NAME_BYTES {
            return Err(ApiFailure::bad_request(format!(
                "name must be at most {MAX_NAME_BYTES} bytes"
            )));
        }
        // Check what can be checked before taking the body.
        if let Some(l) = &meta.language {
            l.parse::<Language>()?;
        }
        let w = self
            .receive(body, self.max_upload_bytes, "max_upload_mb")
            .await?;
        if w.len() == 0 {
            self.blobs.abort(w);
            return Err(ApiFailure::bad_request(
                "the upload is empty: send the file's bytes as the body",
            ));
        }
        let files = match meta.kind {
            ProcessKind::File => vec![file_name.clone()],
            ProcessKind::Zip => {
                let path = w.path().to_path_buf();
                let max = self.max_upload_bytes.saturating_mul(10);
                match tokio::task::spawn_blocking(move || archive::check_zip(&path, max))
                    .await
                    .map_err(internal)?
                {
                    Ok(l) => l.files,
                    Err(msg) => {
                        self.blobs.abort(w);
                        return Err(ApiFailure::bad_request(msg));
                    }
                }
            }
        };
        let (language, entry, entry_is_command) = match describe(&meta, &files) {
            Ok(d) => d,
            Err(msg) => {
                self.blobs.abort(w);
                return Err(ApiFailure::bad_request(msg));
            }
        };
        let (code, size) = self.blobs.commit(w).map_err(internal)?;
        let p = Process {
            id: Process::derive_id(
                &code,
                meta.kind,
                &file_name,
                language,
                &entry,
                entry_is_command,
                owner,
            ),
            name,
            kind: meta.kind,
            file_name,
            code,
            size,
            language,
            entry,
            entry_is_command,
            owner: owner.to_string(),
            created_ms: now_ms(),
            rooms: pesc_protocol::api::room_list(meta.rooms.as_deref()),
        };
        self.agent.call(|r| Command::RegisterProcess(p, r)).await
    }

    async fn list_processes(&self) -> Result<Vec<Process>, ApiFailure> {
        self.agent.ask(Command::Processes).await
    }

    async fn upload_file(
        &self,
        meta: UploadFile,
        body: ByteStream,
        owner: &str,
    ) -> Result<SharedFileInfo, ApiFailure> {
        if let Err(e) = SharedFile::check_name(&meta.name) {
            drain_body(body).await;
            return Err(e.into());
        }
        let w = self
            .receive(body, self.max_file_bytes, "max_shared_file_mb")
            .await?;
        // Hashing a large file takes a while: off the async threads.
        let blobs = self.blobs.clone();
        let (hash, size) = tokio::task::spawn_blocking(move || blobs.commit(w))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        let f = SharedFile {
            name: meta.name,
            hash,
            size,
            owner: owner.to_string(),
            created_ms: now_ms(),
            rooms: pesc_protocol::api::room_list(meta.rooms.as_deref()),
        };
        self.agent.call(|r| Command::PutFile(f, r)).await
    }

    async fn list_files(&self) -> Result<Vec<SharedFileInfo>, ApiFailure> {
        self.agent.ask(Command::Files).await
    }

    async fn fetch_file(&self, name: &str) -> Result<SharedFileInfo, ApiFailure> {
        let info = self
            .agent
            .call(|r| Command::File(name.to_string(), r))
            .await?;
        if !info.here {
            self.runner
                .fetcher
                .ensure(&info.file.hash, &info.holders)
                .await
                .map_err(|e| {
                    ApiFailure::unavailable(format!(
                        "shared file '{name}' cannot be fetched: {e:#}"
                    ))
                })?;
            self.agent
                .ask(|r| Command::HoldFile(info.file.hash, r))
                .await?;
        }
        self.agent
            .call(|r| Command::File(name.to_string(), r))
            .await
    }

    async fn events(&self, since: u64, owner: Option<String>) -> Result<ByteStream, ApiFailure> {
        // The stream begins with `hello` (this node's version now and its
        // start time, so a page can tell a restarted node); then the changes
        // after `since`, or `reset` when they are gone: load everything again.
        struct State {
            agent: crate::agent::AgentHandle,
            versions: tokio::sync::watch::Receiver<u64>,
            last: u64,
            owner: Option<String>,
        }
        let mut versions = self.agent.versions.clone();
        let hello = format!(
            "event: hello\ndata: {{\"version\":{},\"node_started_ms\":{}}}\n\n",
            *versions.borrow_and_update(),
            self.started_ms
        );
        let state = State {
            agent: self.agent.clone(),
            versions,
            last: since,
            owner,
        };
        let changes = futures_util::stream::unfold(state, |mut st| async move {
            loop {
                // Seen before asking: a change made after the answer wakes us.
                st.versions.borrow_and_update();
                let owner = st.owner.clone();
                let page = st
                    .agent
                    .ask(|r| Command::Events(st.last, owner, r))
                    .await
                    .ok()?;
                if !page.complete {
                    st.last = page.current;
                    let text = format!("id: {}\nevent: reset\ndata: {{}}\n\n", page.current);
                    return Some((Ok(Bytes::from(text)), st));
                }
                if let Some(scanned) = page.scanned {
                    st.last = scanned;
                }
                if !page.events.is_empty() {
                    return Some((Ok(Bytes::from(sse_lines(&page.events))), st));
                }
                if page.scanned.is_some() {
                    // Only others' changes: look again before waiting.
                    continue;
                }
                // Nothing new: wait for a change, with a comment now and
                // then so proxies keep the connection.
                match tokio::time::timeout(Duration::from_secs(15), st.versions.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return None,
                    Err(_) => return Some((Ok(Bytes::from_static(b": ping\n\n")), st)),
                }
            }
        });
        let stream =
            futures_util::stream::once(async move { Ok(Bytes::from(hello)) }).chain(changes);
        Ok(Box::pin(stream))
    }

    async fn metrics(&self) -> Result<String, ApiFailure> {
        let mut m = self.agent.read().metrics();
        m.traffic = self.agent.traffic.snapshot();
        let blobs = self.blobs.clone();
        let (count, bytes, partial) = tokio::task::spawn_blocking(move || blobs.usage())
            .await
            .map_err(internal)?;
        Ok(crate::metrics::prometheus(&m, count, bytes, partial))
    }

    async fn create_domain(
        &self,
        d: NewDomain,
        owner: &str,
        review: pesc_protocol::domain::Review,
    ) -> Result<Domain, ApiFailure> {
        let bad = |e: pesc_protocol::error::Error| ApiFailure::bad_request(e.to_string());
        let (dockerfile, requirements, template) = match (&d.template, &d.dockerfile) {
            (Some(t), None) => {
                let t = domain::template(t).map_err(bad)?;
                let base = self.template_base(t);
                let (df, req) = t.render(&base, &d.packages).map_err(bad)?;
                if d.requirements.is_some() {
                    return Err(ApiFailure::bad_request(
                        "a template writes requirements.txt itself: give --packages, not a requirements file",
                    ));
                }
                (df, req, Some(t.name))
            }
            (None, Some(df)) => {
                if !d.packages.is_empty() {
                    return Err(ApiFailure::bad_request(
                        "packages go with a template; with your own Dockerfile, list them in requirements.txt",
                    ));
                }
                (df.clone(), d.requirements.clone().unwrap_or_default(), None)
            }
            _ => {
                return Err(ApiFailure::bad_request(
                    "give either a template (with optional packages) or a Dockerfile",
                ));
            }
        };
        let mut domain = Domain::new(
            &d.name,
            &dockerfile,
            &requirements,
            template,
            owner,
            crate::agent::now_ms(),
        )
        .map_err(bad)?;
        domain.review = review;
        self.agent.call(|r| Command::PutDomain(domain, r)).await
    }

    async fn review_domain(
        &self,
        name: &str,
        review: pesc_protocol::domain::Review,
        rooms: Vec<String>,
    ) -> Result<Domain, ApiFailure> {
        let mut d = self.get_domain(name).await?;
        d.review = review;
        d.rooms = rooms;
        self.agent.call(|r| Command::PutDomain(d, r)).await
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, ApiFailure> {
        self.agent.ask(Command::Domains).await
    }

    async fn get_domain(&self, name: &str) -> Result<Domain, ApiFailure> {
        self.agent
            .call(|r| Command::Domain(name.to_string(), r))
            .await
    }

    async fn templates(&self) -> Result<Vec<TemplateInfo>, ApiFailure> {
        Ok(domain::TEMPLATES
            .iter()
            .map(|t| TemplateInfo {
                name: t.name.into(),
                description: t.description.into(),
                base: self.template_base(t),
                packages: t.packages.iter().map(|p| p.to_string()).collect(),
            })
            .collect())
    }

    async fn create_request(
        &self,
        req: NewRequest,
        owner: &str,
    ) -> Result<RequestInfo, ApiFailure> {
        self.agent
            .call(|r| Command::Submit(req, owner.to_string(), r))
            .await
    }

    async fn list_requests(
        &self,
        owner: Option<String>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<RequestInfo>, ApiFailure> {
        Ok(self.agent.read().page(owner.as_deref(), offset, limit))
    }

    async fn get_request(
        &self,
        id: &str,
        with_runs: bool,
        since_version: Option<u64>,
        timeout_ms: u64,
    ) -> Result<RequestInfo, ApiFailure> {
        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_millis(timeout_ms);
        // Woken by changes of this request only (set once its id is known).
        let mut versions: Option<tokio::sync::watch::Receiver<u64>> = None;
        loop {
            if let Some(v) = versions.as_mut() {
                v.borrow_and_update();
            }
            let info = self
                .agent
                .call(|r| Command::Get {
                    id: id.to_string(),
                    runs: with_runs,
                    reply: r,
                })
                .await?;
            // Answer at once without a version, and as soon as the request is
            // finished; other changes at most every LONG_POLL_MIN so a watcher
            // of a fast request does not spin.
            let changed = since_version.is_none_or(|v| info.version > v);
            if since_version.is_none() || info.state.is_terminal() {
                return Ok(info);
            }
            let Some(watch) = versions.as_mut() else {
                // Subscribed, then asked again: a change in between is seen.
                versions = Some(self.agent.watchers.subscribe(&info.id));
                continue;
            };
            let wake_at = if changed {
                (start + LONG_POLL_MIN).min(deadline)
            } else {
                deadline
            };
            if changed && tokio::time::Instant::now() >= wake_at {
                return Ok(info);
            }
            match tokio::time::timeout_at(wake_at, watch.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Ok(info),
                Err(_) if changed => continue,
                Err(_) => return Ok(info),
            }
        }
    }

    async fn cancel_request(&self, id: &str) -> Result<RequestInfo, ApiFailure> {
        self.agent
            .call(|r| Command::Cancel {
                id: id.to_string(),
                reply: r,
            })
            .await
    }

    async fn logs(
        &self,
        id: &str,
        rank: u32,
        stream: LogStream,
        follow: bool,
    ) -> Result<ByteStream, ApiFailure> {
        let which = match stream {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        };
        let src = self
            .agent
            .call(|r| Command::Log {
                id: id.to_string(),
                rank,
                reply: r,
            })
            .await?;
        match src {
            LogSource::Stored {
                stdout,
                stderr,
                holders,
            } => {
                let h = if which == "stdout" { stdout } else { stderr };
                if let Some(h) = &h {
                    self.runner.fetcher.ensure(h, &holders).await.map_err(|e| {
                        ApiFailure::unavailable(format!(
                            "the log of rank {rank} cannot be fetched: {e:#}"
                        ))
                    })?;
                }
                Ok(blob_stream(&self.blobs, h).await?)
            }
            LogSource::NotYet if !follow => Ok(Box::pin(futures_util::stream::empty())),
            LogSource::Remote { node, key } if !follow => {
                // What the run on the other node has written so far.
                let runner = self.runner.clone();
                Ok(Box::pin(async_stream(move |tx| async move {
                    follow_remote(&runner, &node, &key, which, 0, true, &tx).await;
                })))
            }
            src => {
                let agent = self.agent.clone();
                let runner = self.runner.clone();
                let blobs = self.blobs.clone();
                let id = id.to_string();
                Ok(Box::pin(follow_log(
                    agent, runner, blobs, id, rank, which, src,
                )))
            }
        }
    }

    async fn receipt(&self, id: &str) -> Result<pesc_protocol::receipt::Receipt, ApiFailure> {
        let plan = self.result_plan(id).await?;
        Ok(pesc_protocol::receipt::Receipt::of(
            &plan.spec,
            &plan.attempts,
        ))
    }

    async fn rerun(
        &self,
        id: &str,
        who: &pesc_protocol::access::Principal,
    ) -> Result<RequestInfo, ApiFailure> {
        let (id, owner) = (id.to_string(), who.clone());
        self.agent
            .call(|r| Command::Rerun {
                id,
                owner,
                reply: r,
            })
            .await
    }

    async fn results(&self, id: &str) -> Result<ResultsFile, ApiFailure> {
        let plan = self.result_plan(id).await?;
        // Outputs made on other nodes come here first.
        for (rank, output, stdout, holders) in &plan.ranks {
            for h in [output, stdout].into_iter().flatten() {
                self.runner.fetcher.ensure(h, holders).await.map_err(|e| {
                    ApiFailure::unavailable(format!(
                        "the results of rank {rank} cannot be fetched: {e:#}"
                    ))
                })?;
            }
        }
        let blobs = self.blobs.clone();
        let tmp = self.tmp_dir.clone();
        let rid: RequestId = plan.id.clone();
        let out = tmp.join(format!(
            "results-{rid}-{}.zip",
            hex::encode(rand::random::<[u8; 4]>())
        ));
        let out2 = out.clone();
        tokio::task::spawn_blocking(move || {
            let ranks: Vec<archive::RankResult> = plan
                .ranks
                .iter()
                .map(|(rank, output, stdout, _)| {
                    let (values, repetition) = plan.point(*rank);
                    archive::RankResult {
                        rank: *rank,
                        output_zip: output.filter(|h| blobs.contains(h)).map(|h| blobs.path(&h)),
                        stdout: stdout.filter(|h| blobs.contains(h)).map(|h| blobs.path(&h)),
                        values,
                        repetition,
                    }
                })
                .collect();
            let params = plan
                .spec
                .sweep
                .as_ref()
                .map(|s| s.names.clone())
                .unwrap_or_default();
            let receipt = pesc_protocol::receipt::Receipt::of(&plan.spec, &plan.attempts);
            let receipt = serde_json::to_vec_pretty(&receipt)
                .map_err(|e| anyhow::anyhow!("writing the receipt: {e}"))?;
            archive::build_results(&ranks, &params, &[("receipt.json", receipt)], &tmp, &out2)
        })
        .await
        .map_err(internal)?
        .map_err(|e| internal(format!("building the results archive: {e:#}")))?;
        let file = tokio::fs::File::open(&out).await.map_err(internal)?;
        let len = file.metadata().await.map_err(internal)?.len();
        // Unlinked now; the open handle keeps the bytes until the download ends.
        let _ = std::fs::remove_file(&out);
        Ok(ResultsFile {
            file,
            len,
            name: format!("pesc-results-{rid}.zip"),
        })
    }
}

async fn blob_stream(blobs: &BlobStore, h: Option<BlobHash>) -> Result<ByteStream, ApiFailure> {
    let Some(h) = h else {
        return Ok(Box::pin(futures_util::stream::empty()));
    };
    let f = tokio::fs::File::open(blobs.path(&h))
        .await
        .map_err(|e| ApiFailure::not_found(format!("the log is not on this node: {e}")))?;
    Ok(Box::pin(tokio_util::io::ReaderStream::new(f)))
}

/// Streams a running attempt's log as it grows, until the attempt ends.
/// Nothing polls: the stream wakes when the log file is written (inotify)
/// and when the request changes (its attempt started or ended).
fn follow_log(
    agent: AgentHandle,
    runner: Arc<RunnerCtx>,
    blobs: Arc<BlobStore>,
    id: String,
    rank: u32,
    which: &'static str,
    first: LogSource,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    async_stream(move |tx| async move {
        let ask = || {
            let agent = agent.clone();
            let id = id.clone();
            async move {
                agent
                    .call(|r| Command::Log { id, rank, reply: r })
                    .await
                    .ok()
            }
        };
        let pick = |stdout: Option<BlobHash>, stderr: Option<BlobHash>| {
            if which == "stdout" { stdout } else { stderr }
        };
        // Subscribed before asking again: a change in between is seen.
        let mut request = match agent.read().request(&id) {
            Ok(info) => RequestWatch::Changes(agent.watchers.subscribe(&info.id)),
            Err(_) => RequestWatch::Poll,
        };
        let mut src = first;
        if matches!(src, LogSource::NotYet) {
            // Asked again once subscribed: a start in between is not missed.
            let Some(s) = ask().await else { return };
            src = s;
        }
        // Wait for the run to start here.
        while matches!(src, LogSource::NotYet) {
            if request.changed().await.is_err() {
                return;
            }
            let Some(s) = ask().await else { return };
            src = s;
        }
        let (key, slot) = match src {
            LogSource::Live { key, slot } => (key, slot),
            LogSource::Stored {
                stdout,
                stderr,
                holders,
            } => {
                if let Some(h) = pick(stdout, stderr)
                    && runner.fetcher.ensure(&h, &holders).await.is_ok()
                    && let Ok(data) = tokio::fs::read(blobs.path(&h)).await
                {
                    let _ = tx.send(Ok(Bytes::from(data))).await;
                }
                return;
            }
            LogSource::Remote { mut node, mut key } => {
                // Running on another node: read it from there as it grows,
                // then the rest from the stored blob once this node sees
                // the attempt's end (its news may come after the other node
                // stopped answering for it, or an answer may be lost: then
                // it reads on from where it was).
                let mut sent = 0u64;
                loop {
                    let Some(n) =
                        follow_remote(&runner, &node, &key, which, sent, false, &tx).await
                    else {
                        return;
                    };
                    sent = n;
                    let next = tokio::select! {
                        s = ask() => s,
                        _ = tx.closed() => return,
                    };
                    match next {
                        Some(LogSource::Stored {
                            stdout,
                            stderr,
                            holders,
                        }) => {
                            if let Some(h) = pick(stdout, stderr)
                                && runner.fetcher.ensure(&h, &holders).await.is_ok()
                                && let Ok(data) = tokio::fs::read(blobs.path(&h)).await
                            {
                                let rest = data.get(sent as usize..).unwrap_or_default();
                                if !rest.is_empty() {
                                    let _ = tx.send(Ok(Bytes::copy_from_slice(rest))).await;
                                }
                            }
                            return;
                        }
                        // Still running there as far as this node knows:
                        // wait for news (bounded by the poll) and read on.
                        Some(LogSource::Remote { node: n, key: k }) => {
                            if k != key {
                                // Another attempt: its log starts afresh.
                                sent = 0;
                            }
                            (node, key) = (n, k);
                            tokio::select! {
                                _ = request.changed() => {}
                                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                                _ = tx.closed() => return,
                            }
                        }
                        _ => return,
                    }
                }
            }
            LogSource::NotYet => return,
        };
        let path = runner.log_path(slot, which);
        // Watched before the first read: no write after it goes unseen.
        let writes = crate::file_watch::FileWatch::new(&path).ok();
        let Ok(mut f) = tokio::fs::File::open(&path).await else {
            return;
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        // Whether the request changed since the attempt was last looked at.
        let mut ask_again = true;
        loop {
            let n = match f.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if n > 0 {
                sent += n as u64;
                if tx
                    .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            // At the end of what is written: is the attempt still running?
            if ask_again {
                ask_again = false;
                match ask().await {
                    Some(LogSource::Live { key: k, .. }) if k == key => {}
                    Some(LogSource::Stored {
                        stdout,
                        stderr,
                        holders,
                    }) => {
                        // It ended: the rest is in the stored blob.
                        let Some(h) = pick(stdout, stderr) else {
                            return;
                        };
                        if runner.fetcher.ensure(&h, &holders).await.is_err() {
                            return;
                        }
                        let Ok(mut b) = tokio::fs::File::open(blobs.path(&h)).await else {
                            return;
                        };
                        if b.seek(std::io::SeekFrom::Start(sent)).await.is_err() {
                            return;
                        }
                        let mut stream = tokio_util::io::ReaderStream::new(b);
                        while let Some(chunk) = stream.next().await {
                            if tx.send(chunk).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                    _ => return,
                }
            }
            let written = async {
                match &writes {
                    Some(w) => w.changed().await.is_ok(),
                    None => {
                        tokio::time::sleep(FOLLOW_POLL).await;
                        true
                    }
                }
            };
            tokio::select! {
                ok = written => if !ok { ask_again = true },
                r = request.changed() => {
                    if r.is_err() {
                        return;
                    }
                    ask_again = true;
                }
                _ = tx.closed() => return,
            }
        }
    })
}

/// Streams what attempt `key` writes on `node` to `tx` while it runs
/// there from byte `from` (asking every [`FOLLOW_POLL`] when nothing new came), or only what
/// it has written so far (`once`); how many bytes were sent, or `None`
/// when the reader went away.
async fn follow_remote(
    runner: &RunnerCtx,
    node: &pesc_protocol::NodeId,
    key: &pesc_protocol::node::AttemptKey,
    which: &str,
    from: u64,
    once: bool,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Option<u64> {
    use pesc_protocol::wire::{LOG_CHUNK, SyncRequest, SyncResponse};
    let peer = crate::net::peer_of(node)?;
    let mut sent = from;
    loop {
        let ask = SyncRequest::LogTail {
            request: key.0.clone(),
            rank: key.1,
            stderr: which == "stderr",
            offset: sent,
        };
        let (data, running) = match runner.net.ask_sync(peer, ask).await {
            Ok(SyncResponse::Log {
                data,
                epoch,
                running,
            }) => (data, running && epoch == key.2),
            _ => (Vec::new(), false),
        };
        let full = data.len() >= LOG_CHUNK;
        if !data.is_empty() {
            sent += data.len() as u64;
            if tx.send(Ok(Bytes::from(data))).await.is_err() {
                return None;
            }
        }
        if !running || (once && !full) {
            return Some(sent);
        }
        if !full {
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = tx.closed() => return None,
            }
        }
    }
}

/// What wakes a follower when the request it follows changes: the
/// request's own watch, or (when it could not be named) a timer.
enum RequestWatch {
    Changes(tokio::sync::watch::Receiver<u64>),
    Poll,
}

impl RequestWatch {
    /// Waits for the next change; an error when the node is gone.
    async fn changed(&mut self) -> Result<(), ()> {
        match self {
            RequestWatch::Changes(rx) => rx.changed().await.map_err(|_| ()),
            RequestWatch::Poll => {
                tokio::time::sleep(FOLLOW_POLL).await;
                Ok(())
            }
        }
    }
}

/// A stream fed by a task through a channel.
fn async_stream<F, Fut>(
    f: F,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// Server-sent event lines for request changes: `id` is the version.
fn sse_lines(events: &[(u64, RequestId)]) -> String {
    events
        .iter()
        .map(|(v, id)| {
            format!("id: {v}\nevent: request\ndata: {{\"request\":\"{id}\",\"version\":{v}}}\n\n")
        })
        .collect()
}

impl Service {
    /// What a finished request's results are made of (its runs' blobs, its
    /// spec and attempts).
    async fn result_plan(&self, id: &str) -> Result<pesc_protocol::node::ResultPlan, ApiFailure> {
        self.agent
            .call(|r| Command::Results {
                id: id.to_string(),
                reply: r,
            })
            .await
    }
}

/// The statuses of nodes that are not this node's ring neighbours, as they
/// answered: kept a few seconds, so pages that refresh do not ask every
/// node of the lab each time.
pub type FarStatuses = std::sync::Mutex<
    std::collections::HashMap<pesc_protocol::NodeId, (std::time::Instant, NodeStatus)>,
>;

/// Nodes a Nodes page asks at most (the others show what the grid
/// document says).
const FAR_STATUS_ASKED: usize = 64;

/// How long an answer is kept.
const FAR_STATUS_KEPT: Duration = Duration::from_secs(5);

/// How long a node has to answer.
const FAR_STATUS_WAIT: Duration = Duration::from_millis(1500);

use pesc_protocol::wire::NodeStatus;

/// A node's status, asked over the sync channel (or kept from a recent
/// answer): the status, bounded, and how old it is (ms).
async fn far_status(
    runner: &RunnerCtx,
    kept: &FarStatuses,
    node: &pesc_protocol::NodeId,
) -> Option<(NodeStatus, u64)> {
    use pesc_protocol::wire::{SyncRequest, SyncResponse};
    if let Some((at, s)) = kept.lock().ok()?.get(node).cloned()
        && at.elapsed() < FAR_STATUS_KEPT
    {
        return Some((s, at.elapsed().as_millis() as u64));
    }
    let peer = crate::net::peer_of(node)?;
    let ask = runner.net.ask_sync(peer, SyncRequest::Status);
    let Ok(Ok(SyncResponse::Status(s))) = tokio::time::timeout(FAR_STATUS_WAIT, ask).await else {
        return None;
    };
    let s = s.bounded();
    if let Ok(mut k) = kept.lock() {
        // Nodes that left stop being kept once the map grows.
        if k.len() > 4 * FAR_STATUS_ASKED {
            k.retain(|_, (at, _)| at.elapsed() < FAR_STATUS_KEPT);
        }
        k.insert(node.clone(), (std::time::Instant::now(), s.clone()));
    }
    Some((s, 0))
}
