//! `pesc run`: this directory on the grid, every rank's output live in the
//! terminal, the results unpacked here at the end. `pesc attach` picks a
//! request up again after Ctrl-C left it running.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use pesc_protocol::api::RequestInfo;
use pesc_protocol::model::RequestState;
use reqwest::Method;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::stream::{Printer, bar, follow_all};
use super::{Client, RequestArgs};

/// `pesc run` flags.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub req: RequestArgs,
    #[command(flatten)]
    pub watch: WatchArgs,
}

/// How a request is watched (`pesc run`, `pesc attach`).
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Where the results are unpacked (default: ./pesc-results/ID).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Only the progress line, not the runs' output.
    #[arg(short, long)]
    pub quiet: bool,
}

pub async fn run(c: &Client, a: RunArgs) -> Result<i32> {
    // Caught from the start: a Ctrl-C while the upload runs is answered
    // once the request exists.
    let sigint = interrupts()?;
    let info = super::send_request(c, a.req).await?;
    eprintln!(
        "request {} ({} runs): Ctrl-C to cancel it or leave it running",
        info.id, info.repetitions
    );
    watch(c, info.id.as_str(), a.watch, sigint).await
}

pub async fn attach(c: &Client, id: &str, a: WatchArgs) -> Result<i32> {
    let sigint = interrupts()?;
    let info: RequestInfo = c
        .json(
            c.request(Method::GET, &format!("/requests/{id}"))
                .query(&[("runs", "false")]),
        )
        .await?;
    watch(c, info.id.as_str(), a, sigint).await
}

fn interrupts() -> Result<Signal> {
    signal(SignalKind::interrupt()).context("listening for Ctrl-C")
}

/// `pesc logs ID --follow` for every rank: their output as it comes, until
/// the request ends.
pub async fn follow_logs(c: &Client, id: &str) -> Result<i32> {
    let p = Arc::new(Printer {
        color: std::io::stdout().is_terminal(),
        quiet: false,
        bar: bar(false),
    });
    let done = follow_all(c, id, p).await?;
    Ok(exit_code(&done))
}

/// Follows every rank until the request ends (or Ctrl-C), then unpacks the
/// results.
async fn watch(c: &Client, id: &str, a: WatchArgs, mut sigint: Signal) -> Result<i32> {
    let p = Arc::new(Printer {
        color: std::io::stdout().is_terminal(),
        quiet: a.quiet,
        bar: bar(std::io::stderr().is_terminal()),
    });
    let done = tokio::select! {
        r = follow_all(c, id, p.clone()) => r?,
        _ = sigint.recv() => {
            p.bar.finish_and_clear();
            return interrupted(c, id, sigint).await;
        }
    };
    p.bar.finish_and_clear();
    let dir = a
        .out
        .unwrap_or_else(|| PathBuf::from("pesc-results").join(id));
    if done.counts.succeeded > 0 || done.state == RequestState::Succeeded {
        unpack_results(c, id, &dir).await?;
        let merged = dir.join("output.txt");
        if merged.exists() {
            println!("{}", merged.display());
        }
    }
    eprintln!(
        "request {id} {}: {} succeeded, {} failed, {} cancelled",
        done.state.as_str(),
        done.counts.succeeded,
        done.counts.failed,
        done.counts.cancelled
    );
    Ok(exit_code(&done))
}

fn exit_code(r: &RequestInfo) -> i32 {
    if r.state == RequestState::Succeeded {
        0
    } else {
        1
    }
}

/// Ctrl-C: asks whether to cancel the request or leave it running; a
/// second Ctrl-C (or "y") cancels.
async fn interrupted(c: &Client, id: &str, mut sigint: Signal) -> Result<i32> {
    eprint!(
        "\nCancel request {id}? [y/N] (no: it keeps running on the grid; `pesc attach {id}` follows it again; Ctrl-C again: cancel) "
    );
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    });
    let cancel = tokio::select! {
        a = answer => a.ok().and_then(|r| r.ok()).is_some_and(|l| {
            matches!(l.trim().to_ascii_lowercase().as_str(), "y" | "yes")
        }),
        _ = sigint.recv() => true,
    };
    if !cancel {
        eprintln!("left running: `pesc attach {id}` to follow it again");
        return Ok(130);
    }
    let r: RequestInfo = c
        .json(c.request(Method::POST, &format!("/requests/{id}/cancel")))
        .await?;
    eprintln!("request {} {}", r.id, r.state.as_str());
    Ok(130)
}

/// Downloads the results zip and unpacks it into `dir` (no entry may leave
/// it).
async fn unpack_results(c: &Client, id: &str, dir: &Path) -> Result<()> {
    let bytes = c
        .send(c.request(Method::GET, &format!("/requests/{id}/results")))
        .await?
        .bytes()
        .await
        .context("downloading the results")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .context("the results are not a zip")?;
        for i in 0..z.len() {
            let mut f = z.by_index(i)?;
            let Some(rel) = f.enclosed_name() else {
                anyhow::bail!(
                    "the results name a path outside their folder: {:?}",
                    f.name().ok()
                );
            };
            let to = dir.join(rel);
            if f.is_dir() {
                std::fs::create_dir_all(&to)?;
                continue;
            }
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut out =
                std::fs::File::create(&to).with_context(|| format!("writing {}", to.display()))?;
            std::io::copy(&mut f, &mut out)?;
        }
        Ok(())
    })
    .await
    .context("unpacking the results")?
}
