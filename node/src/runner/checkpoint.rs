//! Checkpoints that move with a run: `checkpoint/` snapshotted as a blob
//! while the run runs (every `checkpoint_interval_s`) and when it stops
//! without success, kept by a second node, recorded in the attempt, and
//! restored by whichever node runs the rank next.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use pesc_protocol::{BlobHash, NodeId};
use tokio::sync::{mpsc, watch};

use super::{AttemptKey, RunnerCtx, RunnerEvent, has_entries, replicate};

/// What a checkpoint dir looks like (paths, sizes, modification times), to
/// tell whether it changed since the last snapshot without reading it.
/// At most `max_entries` entries are read (one more tells it is over).
pub fn signature(dir: &Path, max_entries: u64) -> Option<Vec<(String, u64, u128)>> {
    if !super::is_real_dir(dir) || !has_entries(dir) {
        return None;
    }
    let mut sig: Vec<(String, u64, u128)> = walkdir::WalkDir::new(dir)
        .follow_root_links(false)
        .into_iter()
        .take(max_entries.saturating_add(1) as usize)
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            let t = m
                .modified()
                .ok()?
                .duration_since(UNIX_EPOCH)
                .ok()?
                .as_nanos();
            Some((e.path().display().to_string(), m.len(), t))
        })
        .collect();
    sig.sort();
    Some(sig)
}

/// Packs `dir` into a blob.
fn pack(ctx: &RunnerCtx, dir: &Path) -> Result<BlobHash> {
    let tmp = ctx.blobs.temp_path("checkpoint");
    let f = std::fs::File::create(&tmp)?;
    crate::archive::pack_dir(dir, std::io::BufWriter::new(f)).context("packing checkpoint/")?;
    Ok(ctx.blobs.adopt_file(&tmp)?.0)
}

/// Snapshots `dir` if it changed since `last`, and has another node keep a
/// copy. Returns the snapshot and its holders (this node first).
pub async fn snapshot(
    ctx: &Arc<RunnerCtx>,
    dir: &Path,
    last: &mut Option<Vec<(String, u64, u128)>>,
    me: &NodeId,
    stop: &watch::Receiver<bool>,
) -> Result<Option<(BlobHash, Vec<NodeId>)>> {
    // `checkpoint/` is the run's, like `output/`: capped by the same
    // limits before the node packs and copies it anywhere.
    let l = ctx.result_limits.clone();
    let d = dir.to_path_buf();
    let sig = tokio::task::spawn_blocking(move || signature(&d, l.output_files)).await?;
    if let Some(s) = &sig {
        let l = &ctx.result_limits;
        let bytes: u64 = s.iter().map(|(_, len, _)| *len).sum();
        if s.len() as u64 > l.output_files || bytes > l.output_mb << 20 {
            anyhow::bail!(
                "checkpoint/ is over output_files = {} or output_mb = {} MiB ([results] in node.toml): not kept",
                l.output_files,
                l.output_mb
            );
        }
    }
    if sig.is_none() || sig == *last {
        return Ok(None);
    }
    let (c, d) = (ctx.clone(), dir.to_path_buf());
    let h = tokio::task::spawn_blocking(move || pack(&c, &d)).await??;
    *last = sig;
    let mut holders = vec![me.clone()];
    holders.extend(
        replicate(
            ctx,
            vec![h],
            1.min(ctx.peers()),
            stop,
            Duration::from_secs(30),
        )
        .await,
    );
    Ok(Some((h, holders)))
}

/// While the program runs: a snapshot every `checkpoint_every`, reported to the agent.
pub async fn keep_snapshotting(
    ctx: Arc<RunnerCtx>,
    key: AttemptKey,
    me: NodeId,
    dir: std::path::PathBuf,
    events: mpsc::Sender<RunnerEvent>,
    mut done: watch::Receiver<bool>,
) -> Option<Vec<(String, u64, u128)>> {
    let mut last = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ctx.checkpoint_every) => {}
            _ = done.changed() => return last,
        }
        match snapshot(&ctx, &dir, &mut last, &me, &done).await {
            Ok(Some((hash, holders))) => {
                let _ = events
                    .send(RunnerEvent::Checkpoint {
                        key: key.clone(),
                        hash,
                        holders,
                    })
                    .await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("checkpoint of {} rank {}: {e:#}", key.0, key.1),
        }
    }
}

/// Unpacks a checkpoint blob into an empty `checkpoint/` dir.
pub fn restore(ctx: &RunnerCtx, h: &BlobHash, dir: &Path) -> Result<()> {
    crate::archive::extract_zip(&ctx.blobs.path(h), dir).context("restoring the checkpoint")
}
