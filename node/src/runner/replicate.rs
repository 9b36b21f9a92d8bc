//! Results that survive their node: before a run counts as done, other
//! nodes fetch and keep its output archive and logs.

use std::time::Duration;

use libp2p::PeerId;
use pesc_protocol::wire::{SyncRequest, SyncResponse};
use pesc_protocol::{BlobHash, NodeId};
use tokio::sync::watch;
use tokio::time::Instant;

use super::RunnerCtx;

/// How long one peer may take to fetch what it is asked to keep.
const HOLD_TIMEOUT: Duration = Duration::from_secs(120);

/// Asks connected peers, in random order, to keep `blobs` until `copies` of
/// them say they do (fewer if fewer other nodes are alive by then), the
/// attempt is stopped, or `patience` has passed without enough holders.
/// Returns the nodes that keep them.
pub async fn replicate(
    ctx: &RunnerCtx,
    blobs: Vec<BlobHash>,
    copies: usize,
    stop: &watch::Receiver<bool>,
    patience: Duration,
) -> Vec<NodeId> {
    let mut holders: Vec<PeerId> = Vec::new();
    if copies == 0 || blobs.is_empty() {
        return Vec::new();
    }
    let give_up = Instant::now() + patience;
    loop {
        let mut peers: Vec<PeerId> = ctx
            .net
            .connected()
            .into_iter()
            .filter(|p| !holders.contains(p))
            .collect();
        rand::seq::SliceRandom::shuffle(peers.as_mut_slice(), &mut rand::rng());
        for p in peers {
            let ask = ctx.net.ask_sync(
                p,
                SyncRequest::Hold {
                    blobs: blobs.clone(),
                },
            );
            match tokio::time::timeout(HOLD_TIMEOUT, ask).await {
                Ok(Ok(SyncResponse::Held)) => holders.push(p),
                other => tracing::debug!("{p} did not keep a copy: {other:?}"),
            }
            if holders.len() >= copies || *stop.borrow() {
                break;
            }
        }
        let enough = holders.len() >= copies.min(ctx.live_others());
        if enough || *stop.borrow() || Instant::now() >= give_up {
            return holders.iter().map(|p| NodeId::new(p.to_string())).collect();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
