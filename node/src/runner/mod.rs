//! One attempt from start to stored results: fetch the code and shared
//! files, prepare the app dir (restoring the rank's checkpoint), run the
//! executor while snapshotting `checkpoint/`, pack `output/` and the logs
//! into blobs, have other nodes keep copies, clean up.

pub mod caps;
mod checkpoint;
mod inputs;
mod replicate;

pub use replicate::replicate;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use pesc_protocol::header::{DEFAULT_MASTER_PORT, HeaderMode, RunContext, header_args, header_env};
use pesc_protocol::model::{Process, ProcessKind, SharedFile};
use pesc_protocol::{BlobHash, RequestId};
use tokio::sync::{mpsc, watch};

use crate::archive;
use crate::blobs::BlobStore;
use crate::executor::{Executor, Exit, Job};

/// Which attempt, what to run, what a runner reports and how it ended:
/// the protocol core's types (it decides; the runner carries out).
pub use pesc_protocol::node::{
    AttemptKey, Job as AttemptJob, Outcome as RunnerOutcome, RunEvent as RunnerEvent,
};

/// What every runner shares.
///
/// Each slot has a workspace that attempts reuse (`work/slots/N/`: `app/`,
/// `stdout`, `stderr`, `owner`), cleaned between attempts. Reusing files and
/// directories instead of creating and deleting them per run keeps the
/// filesystem fast at hundreds of runs per second. A rank's checkpoint moves
/// out to `work/REQUEST/ckpt-RANK` between attempts.
pub struct RunnerCtx {
    pub work_dir: PathBuf,
    pub blobs: Arc<BlobStore>,
    pub executor: Arc<dyn Executor>,
    /// Gets process code this node lacks from peers.
    pub fetcher: Arc<crate::net::fetch::Fetcher>,
    pub net: crate::net::NetHandle,
    /// Snapshot `checkpoint/` this often while a run runs.
    pub checkpoint_every: std::time::Duration,
    /// Grid members believed alive, this node included (the agent updates
    /// it every heartbeat): a run does not wait for copies of its results
    /// on nodes that have left.
    pub live_nodes: std::sync::atomic::AtomicUsize,
    /// What a run may make the node store.
    pub result_limits: caps::ResultLimits,
}

impl RunnerCtx {
    /// Peers connected now.
    pub fn peers(&self) -> usize {
        self.net.connected().len()
    }

    /// Other nodes believed alive now: at least the connected ones.
    pub fn live_others(&self) -> usize {
        let live = self.live_nodes.load(std::sync::atomic::Ordering::Relaxed);
        live.max(self.peers() + 1) - 1
    }

    pub fn slot_dir(&self, slot: usize) -> PathBuf {
        slot_dir(&self.work_dir, slot)
    }
    /// The live log file of the attempt running in `slot`.
    pub fn log_path(&self, slot: usize, stream: &str) -> PathBuf {
        self.slot_dir(slot).join(stream)
    }
    fn saved_checkpoint(&self, req: &RequestId, rank: u32) -> PathBuf {
        self.work_dir
            .join(req.as_str())
            .join(format!("ckpt-{rank}"))
    }

    /// After a crash: checkpoints left in slot workspaces go back to their rank.
    pub fn recover(&self) {
        let Ok(slots) = std::fs::read_dir(self.work_dir.join("slots")) else {
            return;
        };
        for e in slots.flatten() {
            let dir = e.path();
            let Ok(owner) = std::fs::read_to_string(dir.join("owner")) else {
                continue;
            };
            let mut it = owner.split_whitespace();
            let (Some(req), Some(rank)) = (it.next(), it.next()) else {
                continue;
            };
            let (Ok(req), Ok(rank)) = (req.parse::<RequestId>(), rank.parse::<u32>()) else {
                continue;
            };
            if let Err(e) = self.save_checkpoint(&dir.join("app"), &req, rank) {
                tracing::warn!("cannot keep the checkpoint of {req} rank {rank}: {e:#}");
            }
            let _ = std::fs::write(dir.join("owner"), "");
        }
    }

    /// Moves a non-empty `app/checkpoint` to the rank's saved place.
    fn save_checkpoint(&self, app: &Path, req: &RequestId, rank: u32) -> Result<()> {
        let ck = app.join("checkpoint");
        if !is_real_dir(&ck) || !has_entries(&ck) {
            return Ok(());
        }
        let saved = self.saved_checkpoint(req, rank);
        if let Some(parent) = saved.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if saved.exists() {
            std::fs::remove_dir_all(&saved)?;
        }
        std::fs::rename(&ck, &saved)?;
        std::fs::create_dir(&ck)?;
        Ok(())
    }
}

/// Whether rank 0 of a gang can listen on `port` on this node.
fn port_free(port: u16) -> Result<()> {
    std::net::TcpListener::bind(("0.0.0.0", port))
        .map(drop)
        .with_context(|| {
            format!(
                "MASTER_PORT {port} is taken on this node: the gang starts again with another port"
            )
        })
}

/// The address a parallel request's rank reaches its rank 0 at: the IP
/// this node reaches rank 0's node at, or its own (as peers reach it) when
/// rank 0 runs here; 127.0.0.1 for other runs, or when nothing better is
/// known.
fn master_addr(
    ctx: &RunnerCtx,
    me: &pesc_protocol::NodeId,
    gang: Option<&pesc_protocol::node::GangJob>,
) -> String {
    let Some(g) = gang else {
        return "127.0.0.1".into();
    };
    let ip = match crate::net::peer_of(&g.master) {
        Some(p) if g.master != *me => ctx.net.peer_ip(&p),
        _ => ctx.net.own_ip(),
    };
    ip.map_or_else(|| "127.0.0.1".into(), |ip| ip.to_string())
}

/// The workspace of `slot` under the node's work dir.
pub fn slot_dir(work_dir: &Path, slot: usize) -> PathBuf {
    work_dir.join("slots").join(slot.to_string())
}

/// The app dir of `slot` (the sandbox prepares a root around it).
pub fn slot_app_dir(work_dir: &Path, slot: usize) -> PathBuf {
    slot_dir(work_dir, slot).join("app")
}

/// Runs one attempt and reports to `events`.
pub async fn run_attempt(
    ctx: Arc<RunnerCtx>,
    job: AttemptJob,
    stop: watch::Receiver<bool>,
    events: mpsc::Sender<RunnerEvent>,
) {
    let key = job.key.clone();
    let outcome = match attempt(&ctx, job, stop, &events).await {
        Ok(o) => o,
        Err(e) => RunnerOutcome::error(format!("{e:#}")),
    };
    let _ = events
        .send(RunnerEvent::Finished {
            key,
            outcome: Box::new(outcome),
        })
        .await;
}

async fn attempt(
    ctx: &Arc<RunnerCtx>,
    job: AttemptJob,
    stop: watch::Receiver<bool>,
    events: &mpsc::Sender<RunnerEvent>,
) -> Result<RunnerOutcome> {
    let (req, rank, epoch) = job.key.clone();
    let slot_dir = ctx.slot_dir(job.slot);
    let app_dir = slot_app_dir(&ctx.work_dir, job.slot);
    let stdout = ctx.log_path(job.slot, "stdout");
    let stderr = ctx.log_path(job.slot, "stderr");
    ctx.fetcher
        .ensure(&job.process.code, &[])
        .await
        .context("getting the process code from the grid")?;
    if !job.inputs.is_empty() {
        let _ = events
            .send(RunnerEvent::Fetching {
                key: job.key.clone(),
            })
            .await;
        for (f, holders) in &job.inputs {
            ctx.fetcher
                .ensure(&f.hash, holders)
                .await
                .with_context(|| format!("getting shared file '{}' from the grid", f.name))?;
            let _ = events.send(RunnerEvent::Holding { hash: f.hash }).await;
        }
    }
    // The rank's checkpoint: this node's own copy if it made the newest one,
    // else the newest recorded snapshot, from whoever holds it.
    let saved_here = ctx.saved_checkpoint(&req, rank).is_dir();
    let restore = match &job.restore {
        Some((h, holders, by)) if !(saved_here && *by == job.node) => {
            ctx.fetcher
                .ensure(h, holders)
                .await
                .context("getting the run's checkpoint from the grid")?;
            Some(*h)
        }
        _ => None,
    };
    let small = job.process.kind == ProcessKind::File
        && job.process.size <= SMALL_FS_WORK
        && job.inputs.is_empty()
        && restore.is_none();
    let prep = {
        let ctx = ctx.clone();
        let (slot_dir, process, req) = (slot_dir.clone(), job.process.clone(), req.clone());
        let inputs: Vec<SharedFile> = job.inputs.iter().map(|(f, _)| f.clone()).collect();
        let header = job.header;
        move || {
            prepare(
                &ctx, &slot_dir, &process, header, &req, rank, epoch, &inputs, restore,
            )
        }
    };
    fs_work(small, prep)
        .await
        .context("preparing the app dir")?;
    // The domain's image: built on this node the first time it is needed
    // (its output in the run's stderr log).
    let image = match &job.domain {
        Some(d) => {
            let _ = events
                .send(RunnerEvent::Building {
                    key: job.key.clone(),
                })
                .await;
            Some(ctx.executor.prepare_domain(d, &stderr).await?)
        }
        None => None,
    };

    // Rank 0 listens on the gang's port: taken here, the round starts again
    // with another (the node's fault, not the program's).
    if let Some(g) = &job.gang
        && rank == 0
    {
        port_free(g.port)?;
    }
    let seen = ctx.executor.app_dir_in_run(&app_dir);
    let hctx = RunContext {
        app_dir: seen.display().to_string(),
        checkpoint_dir: seen.join("checkpoint").display().to_string(),
        output_dir: seen.join("output").display().to_string(),
        rank,
        world_size: job.world_size,
        master_addr: master_addr(ctx, &job.node, job.gang.as_ref()),
        master_port: job.gang.as_ref().map_or(DEFAULT_MASTER_PORT, |g| g.port),
        local_rank: job.gang.as_ref().map_or(0, |g| g.local_rank),
        local_world_size: job.gang.as_ref().map_or(1, |g| g.local_world_size),
        parameters: job.parameters.clone(),
        request_id: req.to_string(),
        attempt: epoch,
        node_id: job.node.to_string(),
    };
    let mut argv = job.process.command();
    argv.extend(header_args(&hctx));
    let mut env = header_env(&hctx);
    env.extend(job.env.iter().cloned());
    let exec_job = Job {
        app_dir: app_dir.clone(),
        argv,
        env,
        stdout: stdout.clone(),
        stderr: stderr.clone(),
        image: image.clone(),
        limits: job.limits,
        gpus: job.gpus.clone(),
        shared: job
            .inputs
            .iter()
            .map(|(f, _)| (ctx.blobs.path(&f.hash), f.name.clone()))
            .collect(),
        slot: job.slot,
        // The ranks of a parallel request talk to each other; no other run
        // gets a network.
        network: job.gang.is_some(),
    };
    let _ = events
        .send(RunnerEvent::Started {
            key: job.key.clone(),
        })
        .await;
    let (done_tx, done_rx) = watch::channel(false);
    let snapshots = tokio::spawn(checkpoint::keep_snapshotting(
        ctx.clone(),
        job.key.clone(),
        job.node.clone(),
        app_dir.join("checkpoint"),
        events.clone(),
        done_rx,
    ));
    let progress = tokio::spawn(watch_progress(
        app_dir.join(pesc_protocol::progress::FILE_NAME),
        job.key.clone(),
        events.clone(),
        done_tx.subscribe(),
    ));
    let run = ctx.executor.run(exec_job, stop.clone()).await;
    // The receipt names the image the run used (containers only).
    let image_id = ctx.executor.image_id(image.as_deref()).await;
    let _ = done_tx.send(true);
    let _ = progress.await;
    let mut last_snapshot = snapshots.await.unwrap_or_default();
    // Stopped or failed: a last snapshot, so the next attempt loses nothing.
    let succeeded = matches!(run, Ok(Exit::Code(0)));
    let final_checkpoint = if succeeded {
        None
    } else {
        checkpoint::snapshot(
            ctx,
            &app_dir.join("checkpoint"),
            &mut last_snapshot,
            &job.node,
            &stop,
        )
        .await
        .unwrap_or_else(|e| {
            tracing::warn!("last checkpoint of {req} rank {rank}: {e:#}");
            None
        })
    };

    let ctx2 = ctx.clone();
    let req2 = req.clone();
    let small = !has_entries(&app_dir.join("output"))
        && [&stdout, &stderr].iter().all(|p| {
            std::fs::metadata(p)
                .map(|m| m.len() <= SMALL_FS_WORK)
                .unwrap_or(true)
        });
    let inputs: Vec<String> = job.inputs.iter().map(|(f, _)| f.name.clone()).collect();
    let stored = fs_work(
        small,
        move || -> Result<Stored> {
            // Measured here, off the async threads: a run may leave a
            // great many files.
            let refused = match std::fs::symlink_metadata(app_dir.join("output")) {
                Ok(m) if !m.is_dir() => Some(
                    "the program replaced output/ with something that is not a directory (a link?): nothing of it was kept"
                        .to_string(),
                ),
                _ => caps::over_limits(
                    &ctx2.result_limits,
                    &app_dir,
                    &inputs,
                    [stdout.as_path(), stderr.as_path()],
                ),
            };
            let output_dir = app_dir.join("output");
            let output = if refused.is_none() {
                pack_output(&ctx2.blobs, &output_dir)?
            } else {
                None
            };
            let out = adopt_log(&ctx2.blobs, &stdout)?;
            let err = adopt_log(&ctx2.blobs, &stderr)?;
            // The checkpoint stays with the rank for its next attempt.
            ctx2.save_checkpoint(&app_dir, &req2, rank)?;
            Ok((refused, output, out, err))
        },
    )
    .await
    .context("storing the results")?;
    let (refused, output, stdout, stderr) = stored;
    // The slot's workspace is done with: the next run may have it while
    // other nodes fetch the results.
    let _ = events
        .send(RunnerEvent::Released {
            key: job.key.clone(),
        })
        .await;
    let mut replicas = vec![job.node.clone()];
    if run.is_ok() && !*stop.borrow() {
        // Done only once other nodes keep the results too.
        let blobs: Vec<BlobHash> = [output, stdout, stderr].into_iter().flatten().collect();
        replicas.extend(replicate(ctx, blobs, job.copies, &stop, RESULT_PATIENCE).await);
        if replicas.len() <= job.copies {
            tracing::warn!(
                "results of {req} rank {rank} are kept by {} node(s), not {}: no more peers answered",
                replicas.len(),
                job.copies + 1
            );
        }
    }
    match run {
        Ok(exit) => Ok(RunnerOutcome {
            exit: Some(exit),
            error: None,
            refused,
            output,
            stdout,
            stderr,
            replicas,
            checkpoint: final_checkpoint,
            image: image_id,
        }),
        Err(e) => Ok(RunnerOutcome {
            exit: None,
            error: Some(format!("{e:#}")),
            refused: None,
            output: None,
            stdout,
            stderr,
            replicas,
            checkpoint: final_checkpoint,
            image: image_id,
        }),
    }
}

/// While the program runs: its progress file read every second, what
/// changed sent to the agent; read once more when it ends.
async fn watch_progress(
    path: PathBuf,
    key: AttemptKey,
    events: mpsc::Sender<RunnerEvent>,
    mut done: watch::Receiver<bool>,
) {
    let mut last = (None, None);
    loop {
        let ended = tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => false,
            _ = done.changed() => true,
        };
        if let Some(report) = read_progress(&path).await
            && report != last
        {
            last = report.clone();
            let _ = events
                .send(RunnerEvent::Progress {
                    key: key.clone(),
                    percent: report.0,
                    message: report.1,
                })
                .await;
        }
        if ended {
            return;
        }
    }
}

/// The last report in a progress file (its last 64 KiB). The file is the
/// run's: opened without following a link, skipped unless it is a regular
/// file (a FIFO there must not hang the node).
async fn read_progress(path: &Path) -> Option<(Option<u8>, Option<String>)> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let (dir, name) = (path.parent()?, path.file_name()?);
    let f = crate::confined::open_beneath(dir, Path::new(name)).ok()??;
    let mut f = tokio::fs::File::from_std(f);
    let len = f.metadata().await.ok()?.len();
    let from = len.saturating_sub(64 * 1024);
    f.seek(std::io::SeekFrom::Start(from)).await.ok()?;
    let mut buf = Vec::new();
    f.take(64 * 1024).read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    // A cut first line is not a line.
    let text = if from > 0 {
        text.split_once('\n').map_or("", |(_, rest)| rest)
    } else {
        &text
    };
    Some(pesc_protocol::progress::last_report(text))
}

/// How long a finished run waits for peers to keep its results before it
/// counts as done with fewer copies (with a warning).
const RESULT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(600);

/// File work up to this many bytes runs on the runner's task; more goes to
/// the blocking pool (a thread hop costs more than a small copy).
const SMALL_FS_WORK: u64 = 256 * 1024;

async fn fs_work<T: Send + 'static>(
    small: bool,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    if small {
        f()
    } else {
        tokio::task::spawn_blocking(f).await?
    }
}

/// Readies a slot's workspace for an attempt: `app/` holding only the
/// process's files, an empty `output/`, and `checkpoint/` with the rank's
/// saved checkpoint if it has one.
#[allow(clippy::too_many_arguments)]
fn prepare(
    ctx: &RunnerCtx,
    slot_dir: &Path,
    p: &Process,
    header: HeaderMode,
    req: &RequestId,
    rank: u32,
    epoch: u32,
    shared: &[SharedFile],
    restore: Option<BlobHash>,
) -> Result<()> {
    // Checked on load already; checked again where it becomes a path.
    p.validate().context("the process record")?;
    let app = slot_dir.join("app");
    std::fs::create_dir_all(&app).with_context(|| format!("creating {}", app.display()))?;
    // The owner file says whose checkpoint sits here if the node dies.
    std::fs::write(slot_dir.join("owner"), format!("{req} {rank} {epoch}"))?;
    let keep_file = (p.kind == ProcessKind::File).then_some(p.file_name.as_str());
    let intact = inputs::intact(slot_dir, &app, shared);
    for e in std::fs::read_dir(&app)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let path = e.path();
        let is_dir = is_real_dir(&path);
        match name.as_ref() {
            "output" | "checkpoint" if is_dir => empty_dir(&path)?,
            n if Some(n) == keep_file && e.file_type()?.is_file() => {}
            n if intact.iter().any(|i| i == n) => {}
            _ if is_dir => std::fs::remove_dir_all(&path)?,
            _ => std::fs::remove_file(&path)?,
        }
    }
    for d in ["output", "checkpoint"] {
        if !is_real_dir(&app.join(d)) {
            std::fs::create_dir(app.join(d))?;
        }
    }
    let saved = ctx.saved_checkpoint(req, rank);
    if let Some(h) = restore {
        let _ = std::fs::remove_dir_all(&saved);
        checkpoint::restore(ctx, &h, &app.join("checkpoint"))?;
    } else if saved.is_dir() {
        std::fs::remove_dir(app.join("checkpoint"))?;
        std::fs::rename(&saved, app.join("checkpoint")).context("restoring the checkpoint")?;
    }
    let code = ctx.blobs.path(&p.code);
    match p.kind {
        ProcessKind::File => {
            // The slot's previous run usually ran the same code: keep the
            // copy when it is unchanged, else write over it (same inode).
            let dest = app.join(&p.file_name);
            if !same_small_file(&code, &dest) {
                std::fs::copy(&code, &dest)
                    .with_context(|| format!("copying the process code ({})", p.code))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        ProcessKind::Zip => archive::extract_zip(&code, &app)?,
    }
    // Containers get read-only mounts of the blob store's copies instead.
    if !ctx.executor.runs_containers() {
        inputs::place(&ctx.blobs, slot_dir, &app, shared)?;
    }
    if header == HeaderMode::Auto {
        insert_header(&app, p)?;
    }
    Ok(())
}

/// Puts PESC's header into a Python or R entry file that reads no
/// arguments (`header::with_header`), as the thesis's PESC does.
fn insert_header(app: &Path, p: &Process) -> Result<()> {
    if p.entry_is_command {
        return Ok(());
    }
    let entry = match p.kind {
        ProcessKind::File => p.file_name.as_str(),
        ProcessKind::Zip => p.entry.as_str(),
    };
    // The entry is the node's own copy, just written; never a link.
    let path = app.join(entry);
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return Ok(());
    };
    if !meta.is_file() || meta.len() > 4 << 20 {
        return Ok(());
    }
    let Ok(source) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    if let Some(with) = pesc_protocol::header::with_header(p.language, &source) {
        std::fs::write(&path, with)
            .with_context(|| format!("inserting the header into {entry}"))?;
    }
    Ok(())
}

/// Whether two files (of at most 1 MiB) hold the same bytes and `b` is
/// executable as the copy would be.
fn same_small_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::symlink_metadata(b)) else {
        return false;
    };
    if !mb.is_file()
        || ma.len() != mb.len()
        || ma.len() > 1 << 20
        || mb.permissions().mode() & 0o777 != 0o755
    {
        return false;
    }
    matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y)
}

fn is_real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.is_dir())
        .unwrap_or(false)
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// What storing a run's results gives: why it was refused (a limit), and
/// the hashes of its output archive, stdout and stderr.
type Stored = (
    Option<String>,
    Option<BlobHash>,
    Option<BlobHash>,
    Option<BlobHash>,
);

/// Removes everything inside `dir`, keeping `dir`.
fn empty_dir(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

fn pack_output(blobs: &BlobStore, dir: &Path) -> Result<Option<BlobHash>> {
    if !is_real_dir(dir) {
        return Ok(None);
    }
    if !has_entries(dir) {
        return Ok(Some(blobs.empty_zip()));
    }
    let tmp = blobs.temp_path("output");
    let f = std::fs::File::create(&tmp)?;
    archive::pack_dir(dir, std::io::BufWriter::new(f)).context("packing output/")?;
    Ok(Some(blobs.adopt_file(&tmp)?.0))
}

/// Moves a log into the blob store. An empty log is no blob (`None`) and
/// stays where it is, to be reused by the slot's next run.
fn adopt_log(blobs: &BlobStore, p: &Path) -> Result<Option<BlobHash>> {
    match std::fs::metadata(p) {
        Ok(m) if m.len() == 0 => Ok(None),
        Ok(_) => Ok(Some(blobs.adopt_file(p)?.0)),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::port_free;

    #[test]
    fn a_port_another_program_listens_on_is_not_free() {
        let taken = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = port_free(port).unwrap_err();
        assert!(
            format!("{err:#}").contains("is taken on this node"),
            "{err:#}"
        );
        drop(taken);
        assert!(port_free(port).is_ok());
    }
}
