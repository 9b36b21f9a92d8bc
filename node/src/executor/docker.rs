//! The Docker executor: each attempt in its own container, through the
//! daemon's API (bollard), with the same run contract as the process
//! executor. The app dir is bind-mounted at [`APP_DIR`] and is the working
//! directory; the program's output streams go to the same log files.
//!
//! Containers are unprivileged: every capability dropped,
//! `no-new-privileges`, a pids limit, memory and CPU limits, the node's own
//! uid (files in the app dir stay the node's), no network unless the node
//! allows one, and never the host's Docker socket. A stop (cancel, lease
//! lost, node stopping) sends SIGTERM, then SIGKILL after the grace, and the
//! container is always removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, BuildImageOptionsBuilder, CreateContainerOptionsBuilder,
    CreateImageOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use pesc_protocol::domain::{CONTEXT_FILE, Domain};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::{Executor, Exit, Job};

/// Where the app dir is inside the container.
pub const APP_DIR: &str = "/app";
/// Label on every container of this node (for clean-up after a crash).
const NODE_LABEL: &str = "pesc.node";
/// Label with the CPUs a container was given (to cut and restore them).
const CPUS_LABEL: &str = "pesc.cpus";
/// Label with the run a container is: `REQUEST/RANK` (to pause it).
const RUN_LABEL: &str = "pesc.run";
/// How long a stopped program gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_millis(1000);

/// Limits and defaults for the containers of one node (`[docker]` in
/// `node.toml`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DockerConfig {
    /// Image for runs whose request names none.
    pub default_image: String,
    /// Memory per run, MiB (0: no limit).
    pub memory_mb: u64,
    /// CPUs per run (0: no limit).
    pub cpus: f64,
    /// Processes per run.
    pub pids: i64,
    /// `none` (default), `bridge` or `host`.
    pub network: String,
    /// Base image per template family (`python`, `r`, `java`, `gcc`,
    /// `pytorch`, `tensorflow`) for domains made from templates on this
    /// node; unset families use the template's public image.
    pub template_bases: HashMap<String, String>,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            default_image: "python:3.12-slim".into(),
            memory_mb: 4096,
            cpus: 1.0,
            pids: 512,
            network: "none".into(),
            template_bases: HashMap::new(),
        }
    }
}

pub struct DockerExecutor {
    docker: Docker,
    node: String,
    cfg: DockerConfig,
    pulling: tokio::sync::Mutex<()>,
    /// One build per domain content at a time; others wait for it.
    building: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Percent of their CPU runs get while another user is at the desktop
    /// (0: no cut).
    share: std::sync::atomic::AtomicU32,
}

impl DockerConfig {
    /// Refuses settings that cannot work.
    pub fn check(&self) -> Result<()> {
        if !["none", "bridge", "host"].contains(&self.network.as_str()) {
            anyhow::bail!(
                "docker.network is '{}': use none, bridge or host",
                self.network
            );
        }
        if self.default_image.trim().is_empty() {
            anyhow::bail!("docker.default_image is empty");
        }
        if !(self.cpus >= 0.0 && self.cpus <= 1024.0) {
            anyhow::bail!("docker.cpus is {}: use 0 (no limit) to 1024", self.cpus);
        }
        if self.pids < 16 {
            anyhow::bail!("docker.pids is {}: at least 16", self.pids);
        }
        Ok(())
    }
}

impl DockerExecutor {
    /// Connects to the local daemon (`DOCKER_HOST` or the default socket) and
    /// agrees on an API version. Fails when no daemon answers.
    pub async fn connect(node: &str, cfg: DockerConfig) -> Result<Self> {
        let docker =
            Docker::connect_with_local_defaults().context("connecting to the Docker daemon")?;
        let answer = async {
            let d = docker.negotiate_version().await?;
            d.ping().await?;
            Ok::<_, bollard::errors::Error>(d)
        };
        let docker = tokio::time::timeout(Duration::from_secs(3), answer)
            .await
            .map_err(|_| anyhow!("the Docker daemon does not answer within 3 s"))?
            .context("the Docker daemon does not answer")?;
        Ok(DockerExecutor {
            docker,
            node: node.to_string(),
            cfg,
            pulling: tokio::sync::Mutex::new(()),
            building: Default::default(),
            share: 0.into(),
        })
    }

    /// The daemon's version, for `pesc doctor`.
    pub async fn server_version(&self) -> String {
        self.docker
            .version()
            .await
            .ok()
            .and_then(|v| v.version)
            .unwrap_or_else(|| "unknown".into())
    }

    /// Removes the containers an earlier life of this node left (after
    /// `kill -9` or a power loss). Returns how many.
    pub async fn remove_orphans(&self) -> usize {
        let all = self.own_containers(true).await;
        for (id, _) in &all {
            self.remove(id).await;
        }
        all.len()
    }

    async fn remove(&self, id: &str) {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        if let Err(e) = self.docker.remove_container(id, Some(opts)).await {
            tracing::warn!("cannot remove container {id}: {e}");
        }
    }

    /// CPU limit of a run of `cpus` CPUs now (nano-CPUs; 0: none), cut to
    /// the share while another user is at the desktop.
    fn nano_cpus(&self, cpus: f64) -> i64 {
        let base = if cpus > 0.0 {
            cpus
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
        };
        match self.share.load(std::sync::atomic::Ordering::Relaxed) {
            0 if cpus > 0.0 => (base * 1e9) as i64,
            0 => 0,
            s => ((base * 1e9) as i64 * i64::from(s) / 100).max(10_000_000),
        }
    }

    /// This node's containers now: (id, CPUs it was given).
    async fn own_containers(&self, all: bool) -> Vec<(String, f64)> {
        let filter = format!("{NODE_LABEL}={}", self.node);
        let opts = ListContainersOptionsBuilder::default()
            .all(all)
            .filters(&HashMap::from([("label".to_string(), vec![filter])]))
            .build();
        let list = self.docker.list_containers(Some(opts)).await;
        list.map(|l| {
            l.into_iter()
                .filter_map(|c| {
                    let cpus = c
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(CPUS_LABEL))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(self.cfg.cpus);
                    Some((c.id?, cpus))
                })
                .collect()
        })
        .unwrap_or_default()
    }

    fn host_config(&self, app_dir: &Path, memory_mb: u64, cpus: f64) -> HostConfig {
        let c = &self.cfg;
        HostConfig {
            binds: Some(vec![format!("{}:{APP_DIR}", app_dir.display())]),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            pids_limit: Some(c.pids),
            memory: (memory_mb > 0).then_some((memory_mb as i64) << 20),
            memory_swap: (memory_mb > 0).then_some((memory_mb as i64) << 20),
            nano_cpus: Some(self.nano_cpus(cpus)),
            network_mode: Some(c.network.clone()),
            privileged: Some(false),
            // The output goes to the node through the attach stream only.
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            init: Some(true),
            ..Default::default()
        }
    }

    /// Runs the created container `id` to its end.
    async fn run_container(
        &self,
        id: &str,
        job: &Job,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Exit> {
        let attach = self
            .docker
            .attach_container(
                id,
                Some(
                    AttachContainerOptionsBuilder::default()
                        .stdout(true)
                        .stderr(true)
                        .stream(true)
                        .build(),
                ),
            )
            .await
            .context("attaching to the container")?;
        let copy = tokio::spawn(copy_output(
            attach.output,
            job.stdout.clone(),
            job.stderr.clone(),
        ));
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| anyhow!("cannot start the container: {e}"))?;
        let mut waiting = self.docker.wait_container(
            id,
            Some(
                WaitContainerOptionsBuilder::default()
                    .condition("not-running")
                    .build(),
            ),
        );
        let mut stopped = false;
        let code = loop {
            tokio::select! {
                w = waiting.next() => break wait_code(w)?,
                _ = async { let _ = stop.wait_for(|s| *s).await; }, if !stopped => {
                    stopped = true;
                    self.signal(id, "SIGTERM").await;
                    let id = id.to_string();
                    let docker = self.docker.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(STOP_GRACE).await;
                        let opts = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
                        let _ = docker.kill_container(&id, Some(opts)).await;
                    });
                }
            }
        };
        // The output ends with the container.
        let _ = tokio::time::timeout(Duration::from_secs(5), copy).await;
        Ok(match code {
            c if stopped && (129..=192).contains(&c) => Exit::Signal((c - 128) as i32),
            c => Exit::Code(c as i32),
        })
    }

    /// Makes sure `image` is here, pulling it from its registry if not.
    /// One pull at a time per node; runs that need the same image wait.
    async fn ensure_image(&self, image: &str) -> Result<()> {
        let _one = self.pulling.lock().await;
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        tracing::info!("pulling image {image}");
        let (name, tag) = split_tag(image);
        let opts = CreateImageOptionsBuilder::default()
            .from_image(name)
            .tag(tag)
            .build();
        let mut progress = self.docker.create_image(Some(opts), None, None);
        while let Some(p) = progress.next().await {
            if let Err(e) = p {
                anyhow::bail!("image '{image}' is not on this node and cannot be pulled: {e}");
            }
        }
        Ok(())
    }

    /// Builds the image of `d` from a tar context (its Dockerfile and
    /// requirements.txt), tagged by its content, writing the output to `log`.
    async fn build(&self, d: &Domain, log: &Path) -> Result<String> {
        let tag = d.image_tag();
        let lock = {
            let mut map = self.building.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(d.hash.clone()).or_default().clone()
        };
        let _one = lock.lock().await;
        if self.docker.inspect_image(&tag).await.is_ok() {
            return Ok(tag);
        }
        tracing::info!("building domain {} as {tag}", d.name);
        let context = build_context(d).context("packing the build context")?;
        let opts = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(&tag)
            .rm(true)
            .forcerm(true)
            .labels(&HashMap::from([(
                "pesc.domain".to_string(),
                d.name.clone(),
            )]))
            .build();
        let mut out = tokio::fs::File::create(log)
            .await
            .with_context(|| format!("creating {}", log.display()))?;
        let mut tail: Vec<String> = Vec::new();
        let mut failure = None;
        let mut steps =
            self.docker
                .build_image(opts, None, Some(bollard::body_full(context.into())));
        while let Some(info) = steps.next().await {
            let text = match info {
                Ok(i) => {
                    if let Some(e) = i.error_detail.and_then(|e| e.message) {
                        failure = Some(e.clone());
                        format!("ERROR: {e}\n")
                    } else {
                        i.stream.unwrap_or_default()
                    }
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    format!("ERROR: {e}\n")
                }
            };
            out.write_all(text.as_bytes()).await?;
            tail.extend(text.lines().map(str::to_string));
            let keep = tail.len().saturating_sub(20);
            tail.drain(..keep);
        }
        out.flush().await?;
        match failure {
            None => Ok(tag),
            Some(e) => Err(anyhow!(
                "building domain '{}' failed: {e}\n--- last lines of the build log ---\n{}",
                d.name,
                tail.join("\n")
            )),
        }
    }

    async fn signal(&self, id: &str, sig: &str) {
        let opts = KillContainerOptionsBuilder::default().signal(sig).build();
        let _ = self.docker.kill_container(id, Some(opts)).await;
    }
}

/// The devices a run holds, for the NVIDIA container runtime (`None`
/// without GPUs: the container sees none).
fn device_requests(
    gpus: &[pesc_protocol::model::Gpu],
) -> Option<Vec<bollard::models::DeviceRequest>> {
    if gpus.is_empty() {
        return None;
    }
    Some(vec![bollard::models::DeviceRequest {
        driver: Some("nvidia".into()),
        device_ids: Some(gpus.iter().map(|g| g.uuid.clone()).collect()),
        capabilities: Some(vec![vec!["gpu".into()]]),
        ..Default::default()
    }])
}

/// The build context of a domain: a tar with its Dockerfile and requirements.txt.
fn build_context(d: &Domain) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, text) in [
        ("Dockerfile", &d.dockerfile),
        (CONTEXT_FILE, &d.requirements),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, name, text.as_bytes())?;
    }
    Ok(tar.into_inner()?)
}

/// `name[:tag]` → (name, tag); a `:` inside a registry host:port is not a tag.
fn split_tag(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (image, "latest"),
    }
}

/// The exit code from the wait stream (bollard reports a non-zero exit as
/// an error carrying the code).
fn wait_code(
    w: Option<Result<bollard::models::ContainerWaitResponse, bollard::errors::Error>>,
) -> Result<i64> {
    match w {
        Some(Ok(r)) => Ok(r.status_code),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(anyhow!("waiting for the container: {e}")),
        None => Err(anyhow!(
            "the Docker daemon stopped answering about the container"
        )),
    }
}

/// Writes the container's output streams to the log files as they come.
async fn copy_output(
    mut out: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
    stdout: PathBuf,
    stderr: PathBuf,
) -> Result<()> {
    let mut so = tokio::fs::File::create(&stdout).await?;
    let mut se = tokio::fs::File::create(&stderr).await?;
    while let Some(chunk) = out.next().await {
        match chunk {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                so.write_all(&message).await?
            }
            Ok(LogOutput::StdErr { message }) => se.write_all(&message).await?,
            Ok(LogOutput::StdIn { .. }) => {}
            Err(_) => break,
        }
    }
    so.flush().await?;
    se.flush().await?;
    Ok(())
}

/// The uid:gid that owns `dir` (the node's own), for the container's user.
fn owner_of(dir: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok(format!("{}:{}", m.uid(), m.gid()))
}

#[async_trait::async_trait]
impl Executor for DockerExecutor {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn isolation(&self) -> super::Isolation {
        super::Isolation::Containers
    }

    fn app_dir_in_run(&self, _host: &Path) -> PathBuf {
        PathBuf::from(APP_DIR)
    }

    fn runs_containers(&self) -> bool {
        true
    }

    async fn prepare_domain(&self, domain: &Domain, log: &Path) -> Result<String> {
        self.build(domain, log).await
    }

    async fn throttle(&self, share: Option<u32>) {
        self.share.store(
            share.unwrap_or(0).min(100),
            std::sync::atomic::Ordering::Relaxed,
        );
        for (id, cpus) in self.own_containers(false).await {
            let body = bollard::models::ContainerUpdateBody {
                nano_cpus: Some(self.nano_cpus(cpus)),
                ..Default::default()
            };
            if let Err(e) = self.docker.update_container(&id, body).await {
                tracing::warn!("cannot change the CPU limit of container {id}: {e}");
            }
        }
        match share {
            Some(s) => tracing::info!("runs cut to {s} % of their CPU"),
            None => tracing::info!("runs back to their full CPU"),
        }
    }

    async fn image_id(&self, image: Option<&str>) -> Option<String> {
        let name = image.unwrap_or(&self.cfg.default_image);
        self.docker.inspect_image(name).await.ok()?.id
    }

    async fn suspend(
        &self,
        _node_id: &str,
        request: &pesc_protocol::RequestId,
        rank: u32,
        on: bool,
    ) -> Result<()> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{NODE_LABEL}={}", self.node),
                format!("{RUN_LABEL}={request}/{rank}"),
            ],
        )]);
        let opts = ListContainersOptionsBuilder::default()
            .filters(&filters)
            .build();
        let list = self.docker.list_containers(Some(opts)).await?;
        for id in list.into_iter().filter_map(|c| c.id) {
            if on {
                self.docker.pause_container(&id).await
            } else {
                self.docker.unpause_container(&id).await
            }
            .with_context(|| format!("container {id}"))?;
            tracing::info!(
                "rank {rank} of {request}: container {} {}",
                &id[..12.min(id.len())],
                if on { "paused" } else { "unpaused" }
            );
        }
        Ok(())
    }

    async fn run(&self, job: Job, mut stop: watch::Receiver<bool>) -> Result<Exit> {
        let image = job
            .image
            .clone()
            .unwrap_or_else(|| self.cfg.default_image.clone());
        self.ensure_image(&image).await?;
        let memory_mb = job.limits.memory_mb.unwrap_or(self.cfg.memory_mb);
        let cpus = job.limits.cpus.unwrap_or(self.cfg.cpus);
        let env_of = |k: &str| {
            job.env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let labels = HashMap::from([
            (NODE_LABEL.to_string(), self.node.clone()),
            (CPUS_LABEL.to_string(), cpus.to_string()),
            (
                RUN_LABEL.to_string(),
                format!("{}/{}", env_of("PESC_REQUEST_ID"), env_of("PESC_RANK")),
            ),
        ]);
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            cmd: Some(job.argv.clone()),
            env: Some(job.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: Some(APP_DIR.into()),
            user: Some(owner_of(&job.app_dir)?),
            labels: Some(labels),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(false),
            tty: Some(false),
            host_config: Some({
                let mut h = self.host_config(&job.app_dir, memory_mb, cpus);
                h.device_requests = device_requests(&job.gpus);
                // A parallel request's ranks reach each other's nodes, and
                // rank 0 listens on its node's port: the host's network.
                if job.network {
                    h.network_mode = Some("host".into());
                }
                if let Some(b) = h.binds.as_mut() {
                    b.extend(
                        job.shared
                            .iter()
                            .map(|(host, name)| format!("{}:{APP_DIR}/{name}:ro", host.display())),
                    );
                }
                h
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(CreateContainerOptionsBuilder::default().build()), body)
            .await
            .map_err(|e| anyhow!("cannot create a container from image '{image}': {e}"))?;
        let result = self.run_container(&created.id, &job, &mut stop).await;
        self.remove(&created.id).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_split_into_name_and_tag() {
        assert_eq!(split_tag("python:3.12-slim"), ("python", "3.12-slim"));
        assert_eq!(split_tag("python"), ("python", "latest"));
        assert_eq!(
            split_tag("registry.lan:5000/team/img"),
            ("registry.lan:5000/team/img", "latest")
        );
        assert_eq!(
            split_tag("registry.lan:5000/team/img:v2"),
            ("registry.lan:5000/team/img", "v2")
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        assert!(DockerConfig::default().check().is_ok());
        let bad = |f: fn(&mut DockerConfig)| {
            let mut c = DockerConfig::default();
            f(&mut c);
            c.check().is_err()
        };
        assert!(bad(|c| c.network = "overlay".into()));
        assert!(bad(|c| c.default_image = " ".into()));
        assert!(bad(|c| c.cpus = -1.0));
        assert!(bad(|c| c.pids = 0));
    }
}
