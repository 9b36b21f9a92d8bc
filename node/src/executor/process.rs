//! The process executor: each attempt is a child process in its own process
//! group, so cancellation kills everything it started. Not isolated.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;
use tokio::sync::watch;

use super::{Executor, Exit, Job};

/// How long a stopped program gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_millis(1000);

pub struct ProcessExecutor;

#[async_trait::async_trait]
impl Executor for ProcessExecutor {
    fn name(&self) -> &'static str {
        "process"
    }

    fn isolated(&self) -> bool {
        false
    }

    async fn run(&self, job: Job, mut stop: watch::Receiver<bool>) -> anyhow::Result<Exit> {
        let (prog, args) = job.argv.split_first().context("empty command")?;
        let stdout = std::fs::File::create(&job.stdout)
            .with_context(|| format!("creating {}", job.stdout.display()))?;
        let stderr = std::fs::File::create(&job.stderr)
            .with_context(|| format!("creating {}", job.stderr.display()))?;
        let mut child = Command::new(prog)
            .args(args)
            .current_dir(&job.app_dir)
            .envs(job.env.iter().map(|(k, v)| (k, v)))
            .env("CUDA_VISIBLE_DEVICES", job.cuda_visible_devices())
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("cannot start '{prog}': {e} (is it installed on this node?)")
            })?;
        let pgid = child.id().map(|p| p as i32);
        let status = tokio::select! {
            s = child.wait() => s?,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                signal_group(pgid, libc::SIGTERM);
                match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                    Ok(s) => s?,
                    Err(_) => {
                        signal_group(pgid, libc::SIGKILL);
                        child.wait().await?
                    }
                }
            }
        };
        // Whatever the program left running in its group goes with it.
        signal_group(pgid, libc::SIGKILL);
        use std::os::unix::process::ExitStatusExt;
        Ok(match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Code(-1),
        })
    }
}

fn signal_group(pgid: Option<i32>, sig: i32) {
    if let Some(p) = pgid.filter(|p| *p > 1) {
        // SAFETY: killpg only sends a signal; ESRCH (group gone) is expected.
        unsafe {
            libc::killpg(p, sig);
        }
    }
}

/// Processes (other than this one) whose environment names the node
/// `node_id`: its runs and everything they started, in containers too.
pub fn processes_of(node_id: &str) -> Vec<u32> {
    let needle = format!("PESC_NODE_ID={node_id}");
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

/// Kills process groups left by an earlier life of this node (after
/// `kill -9`): every process whose environment names this node's id.
pub fn kill_orphans(node_id: &str) -> usize {
    let pids = processes_of(node_id);
    for pid in &pids {
        // SAFETY: sending SIGKILL to a process of ours that outlived its node.
        unsafe {
            libc::kill(*pid as i32, libc::SIGKILL);
        }
    }
    pids.len()
}
