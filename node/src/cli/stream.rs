//! Every rank's output, live, in one terminal: the CLI follows each rank's
//! stdout and stderr through the node's API (which reads a rank running on
//! another node from that node), prints each line prefixed by its rank, and
//! keeps a progress line below.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use futures_util::StreamExt;
use pesc_protocol::api::RequestInfo;
use pesc_protocol::model::RunState;
use reqwest::Method;
use tokio::sync::Semaphore;

use super::Client;

/// Logs followed at once (two per rank); more wait their turn.
const FOLLOWS_AT_ONCE: usize = 64;

/// How the lines look.
pub struct Printer {
    /// ANSI colours per rank (a terminal).
    pub color: bool,
    /// Only the progress line.
    pub quiet: bool,
    pub bar: indicatif::ProgressBar,
}

impl Printer {
    /// Prints one line of rank `rank` (to stderr for its stderr).
    fn line(&self, rank: u32, stderr: bool, text: &str) {
        if self.quiet {
            return;
        }
        let prefix = if self.color {
            // Six colours that read on dark and light terminals.
            format!("\x1b[{}m[{rank}]\x1b[0m", 31 + rank % 6)
        } else {
            format!("[{rank}]")
        };
        self.bar.suspend(|| {
            if stderr {
                let _ = writeln!(std::io::stderr(), "{prefix} {text}");
            } else {
                let _ = writeln!(std::io::stdout(), "{prefix} {text}");
            }
        });
    }

    /// The progress line: done, running, queued, and why runs wait.
    pub fn progress(&self, info: &RequestInfo) {
        let c = &info.counts;
        self.bar.set_length(u64::from(c.total));
        self.bar.set_position(u64::from(c.finished()));
        let mut msg = format!(
            "{} running, {} queued, {} failed",
            c.running,
            c.queued + c.claimed,
            c.failed
        );
        if let Some(g) = &info.gang {
            msg.push_str(&format!(" · {g}"));
        } else if let Some(w) = info.waiting.as_ref().filter(|_| c.queued > 0) {
            msg.push_str(&format!(" · waiting: {w}"));
        }
        self.bar.set_message(msg);
    }
}

/// A progress bar on stderr (hidden when `show` is false).
pub fn bar(show: bool) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(0);
    if show {
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} done · {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb.enable_steady_tick(std::time::Duration::from_millis(200));
    } else {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb
}

/// Follows every rank of request `id` until the request is finished and
/// every log is printed; returns the request as it ended.
pub async fn follow_all(c: &Client, id: &str, p: Arc<Printer>) -> Result<RequestInfo> {
    let limit = Arc::new(Semaphore::new(FOLLOWS_AT_ONCE));
    // (rank, attempt) whose logs are followed or printed.
    let mut seen: BTreeSet<(u32, u32)> = BTreeSet::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut info: RequestInfo = c
        .json(c.request(Method::GET, &format!("/requests/{id}")))
        .await?;
    loop {
        p.progress(&info);
        for r in info.runs.iter().flatten() {
            let Some(attempt) = r.attempt else { continue };
            // Started (running, or already ended) and not yet looked at.
            let started = r.state == RunState::Running || r.state.is_terminal();
            if !started || r.started_ms.is_none() || !seen.insert((r.rank, attempt)) {
                continue;
            }
            let follow = r.state == RunState::Running;
            for stderr in [false, true] {
                let (c, id, p, limit) = (c.clone(), id.to_string(), p.clone(), limit.clone());
                let rank = r.rank;
                tasks.spawn(async move {
                    let Ok(_turn) = limit.acquire_owned().await else {
                        return;
                    };
                    let _ = print_log(&c, &id, rank, stderr, follow, &p).await;
                });
            }
        }
        if info.state.is_terminal() {
            break;
        }
        info = c
            .json(c.request(Method::GET, &format!("/requests/{id}")).query(&[
                ("since_version", info.version.to_string()),
                ("timeout_ms", "5000".to_string()),
            ]))
            .await?;
    }
    while tasks.join_next().await.is_some() {}
    p.progress(&info);
    Ok(info)
}

/// Prints one log of one rank, line by line, as it arrives.
async fn print_log(
    c: &Client,
    id: &str,
    rank: u32,
    stderr: bool,
    follow: bool,
    p: &Printer,
) -> Result<()> {
    let resp = c
        .send(
            c.request(Method::GET, &format!("/requests/{id}/runs/{rank}/logs"))
                .query(&[
                    (
                        "stream",
                        if stderr { "stderr" } else { "stdout" }.to_string(),
                    ),
                    ("follow", follow.to_string()),
                ]),
        )
        .await?;
    let mut body = resp.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { break };
        pending.extend_from_slice(&chunk);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            p.line(
                rank,
                stderr,
                String::from_utf8_lossy(&line[..i]).trim_end_matches('\r'),
            );
        }
    }
    if !pending.is_empty() {
        p.line(rank, stderr, &String::from_utf8_lossy(&pending));
    }
    Ok(())
}
