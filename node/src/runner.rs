//! One attempt from start to stored results: prepare the app dir, run the
//! executor, pack `output/` and the logs into blobs, clean up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use pesc_protocol::header::{DEFAULT_MASTER_PORT, RunContext, header_args, header_env};
use pesc_protocol::model::{Process, ProcessKind};
use pesc_protocol::{BlobHash, NodeId, RequestId};
use tokio::sync::{mpsc, watch};

use crate::archive;
use crate::blobs::BlobStore;
use crate::executor::{Executor, Exit, Job};

/// Which attempt: (request, rank, epoch).
pub type AttemptKey = (RequestId, u32, u32);

/// What to run.
pub struct AttemptJob {
    pub key: AttemptKey,
    pub node: NodeId,
    pub process: Process,
    pub world_size: u32,
    pub parameters: Vec<String>,
}

/// How an attempt ended, as the runner saw it.
#[derive(Debug)]
pub struct RunnerOutcome {
    pub exit: Option<Exit>,
    /// Set when the attempt could not be prepared, started or stored.
    pub error: Option<String>,
    pub output: Option<BlobHash>,
    pub stdout: Option<BlobHash>,
    pub stderr: Option<BlobHash>,
}

/// Events from runners to the agent.
#[derive(Debug)]
pub enum RunnerEvent {
    Started {
        key: AttemptKey,
    },
    Finished {
        key: AttemptKey,
        outcome: RunnerOutcome,
    },
}

/// What every runner shares.
pub struct RunnerCtx {
    pub work_dir: PathBuf,
    pub blobs: Arc<BlobStore>,
    pub executor: Arc<dyn Executor>,
}

impl RunnerCtx {
    pub fn run_dir(&self, req: &RequestId, rank: u32) -> PathBuf {
        self.work_dir.join(req.as_str()).join(rank.to_string())
    }
    /// The live log file of an attempt (moved into the blob store at the end).
    pub fn log_path(&self, key: &AttemptKey, stream: &str) -> PathBuf {
        self.run_dir(&key.0, key.1)
            .join(format!("a{}.{stream}", key.2))
    }
}

/// Runs one attempt and reports to `events`.
pub async fn run_attempt(
    ctx: Arc<RunnerCtx>,
    job: AttemptJob,
    stop: watch::Receiver<bool>,
    events: mpsc::UnboundedSender<RunnerEvent>,
) {
    let key = job.key.clone();
    let outcome = match attempt(&ctx, job, stop, &events).await {
        Ok(o) => o,
        Err(e) => RunnerOutcome {
            exit: None,
            error: Some(format!("{e:#}")),
            output: None,
            stdout: None,
            stderr: None,
        },
    };
    let _ = events.send(RunnerEvent::Finished { key, outcome });
}

async fn attempt(
    ctx: &Arc<RunnerCtx>,
    job: AttemptJob,
    stop: watch::Receiver<bool>,
    events: &mpsc::UnboundedSender<RunnerEvent>,
) -> Result<RunnerOutcome> {
    let (req, rank, epoch) = job.key.clone();
    let run_dir = ctx.run_dir(&req, rank);
    let app_dir = run_dir.join(format!("a{epoch}"));
    let stdout = ctx.log_path(&job.key, "stdout");
    let stderr = ctx.log_path(&job.key, "stderr");
    let prep = {
        let ctx = ctx.clone();
        let (app_dir, run_dir, process) = (app_dir.clone(), run_dir.clone(), job.process.clone());
        tokio::task::spawn_blocking(move || prepare(&ctx.blobs, &run_dir, &app_dir, &process))
    };
    prep.await.context("preparing the app dir")??;

    let hctx = RunContext {
        app_dir: app_dir.display().to_string(),
        checkpoint_dir: app_dir.join("checkpoint").display().to_string(),
        output_dir: app_dir.join("output").display().to_string(),
        rank,
        world_size: job.world_size,
        master_addr: "127.0.0.1".into(),
        master_port: DEFAULT_MASTER_PORT,
        parameters: job.parameters.clone(),
        request_id: req.to_string(),
        attempt: epoch,
        node_id: job.node.to_string(),
    };
    let mut argv = job.process.command();
    argv.extend(header_args(&hctx));
    let exec_job = Job {
        app_dir: app_dir.clone(),
        argv,
        env: header_env(&hctx),
        stdout: stdout.clone(),
        stderr: stderr.clone(),
    };
    let _ = events.send(RunnerEvent::Started {
        key: job.key.clone(),
    });
    let run = ctx.executor.run(exec_job, stop).await;

    let blobs = ctx.blobs.clone();
    let stored = tokio::task::spawn_blocking(
        move || -> Result<(Option<BlobHash>, Option<BlobHash>, Option<BlobHash>)> {
            let output = pack_output(&blobs, &app_dir.join("output"))?;
            let out = adopt_if_exists(&blobs, &stdout)?;
            let err = adopt_if_exists(&blobs, &stderr)?;
            // The app dir goes; checkpoint/ (beside it) stays for the next attempt.
            let _ = std::fs::remove_dir_all(&app_dir);
            Ok((output, out, err))
        },
    )
    .await
    .context("storing the results")??;
    let (output, stdout, stderr) = stored;
    match run {
        Ok(exit) => Ok(RunnerOutcome {
            exit: Some(exit),
            error: None,
            output,
            stdout,
            stderr,
        }),
        Err(e) => Ok(RunnerOutcome {
            exit: None,
            error: Some(format!("{e:#}")),
            output: None,
            stdout,
            stderr,
        }),
    }
}

/// Makes `run_dir/checkpoint/` (kept across attempts) and the attempt's app
/// dir holding the process's files, `output/` and a `checkpoint` link.
fn prepare(blobs: &BlobStore, run_dir: &Path, app_dir: &Path, p: &Process) -> Result<()> {
    let checkpoint = run_dir.join("checkpoint");
    std::fs::create_dir_all(&checkpoint)
        .with_context(|| format!("creating {}", checkpoint.display()))?;
    if app_dir.exists() {
        std::fs::remove_dir_all(app_dir)?;
    }
    std::fs::create_dir_all(app_dir.join("output"))?;
    std::os::unix::fs::symlink("../checkpoint", app_dir.join("checkpoint"))?;
    let code = blobs.path(&p.code);
    match p.kind {
        ProcessKind::File => {
            let dest = app_dir.join(&p.file_name);
            std::fs::copy(&code, &dest)
                .with_context(|| format!("copying the process code ({})", p.code))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
        }
        ProcessKind::Zip => archive::extract_zip(&code, app_dir)?,
    }
    Ok(())
}

fn pack_output(blobs: &BlobStore, dir: &Path) -> Result<Option<BlobHash>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let tmp = blobs.temp_path("output");
    let f = std::fs::File::create(&tmp)?;
    archive::pack_dir(dir, std::io::BufWriter::new(f)).context("packing output/")?;
    Ok(Some(blobs.adopt_file(&tmp)?.0))
}

fn adopt_if_exists(blobs: &BlobStore, p: &Path) -> Result<Option<BlobHash>> {
    if p.exists() {
        Ok(Some(blobs.adopt_file(p)?.0))
    } else {
        Ok(None)
    }
}
