//! Results that survive their node: before a run counts as done, other
//! nodes fetch and keep its output archive and logs.

use std::time::Duration;

use pesc_protocol::wire::{SyncRequest, SyncResponse};
use pesc_protocol::{BlobHash, NodeId};
use tokio::sync::watch;
use tokio::time::Instant;

use super::RunnerCtx;
use crate::net::peer_of;

/// How long one peer may take to fetch what it is asked to keep.
const HOLD_TIMEOUT: Duration = Duration::from_secs(120);

/// Asks connected peers, in random order, to keep `blobs` until `copies` of
/// them say they do, the attempt is stopped, or `patience` has passed
/// without enough holders. Returns the nodes that keep them.
pub async fn replicate(
    ctx: &RunnerCtx,
    blobs: Vec<BlobHash>,
    copies: usize,
    stop: &watch::Receiver<bool>,
    patience: Duration,
) -> Vec<NodeId> {
    let mut holders: Vec<NodeId> = Vec::new();
    if copies == 0 || blobs.is_empty() {
        return holders;
    }
    let give_up = Instant::now() + patience;
    loop {
        let mut peers: Vec<NodeId> = ctx
            .net
            .connected()
            .iter()
            .map(|p| NodeId::new(p.to_string()))
            .filter(|n| !holders.contains(n))
            .collect();
        rand::seq::SliceRandom::shuffle(peers.as_mut_slice(), &mut rand::rng());
        for n in peers {
            let Some(p) = peer_of(&n) else { continue };
            let ask = ctx.net.ask_sync(
                p,
                SyncRequest::Hold {
                    blobs: blobs.clone(),
                },
            );
            match tokio::time::timeout(HOLD_TIMEOUT, ask).await {
                Ok(Ok(SyncResponse::Held)) => holders.push(n),
                other => tracing::debug!("{n} did not keep a copy: {other:?}"),
            }
            if holders.len() >= copies || *stop.borrow() {
                return holders;
            }
        }
        if *stop.borrow() || Instant::now() >= give_up {
            return holders;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
