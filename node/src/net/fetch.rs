//! Getting a blob this node lacks from a peer that has it, verified against
//! its BLAKE3 hash before it enters the store.
//!
//! Correct, not yet fast: one peer at a time, 1 MiB ranges in order, the
//! hash checked at the end (verified streaming and swarming come with the
//! blobs issue).

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};
use libp2p::PeerId;
use pesc_protocol::wire::{BLOB_CHUNK, BlobRequest, BlobResponse};
use pesc_protocol::{BlobHash, NodeId};

use super::{NetHandle, peer_of};
use crate::blobs::BlobStore;

pub struct Fetcher {
    net: NetHandle,
    blobs: Arc<BlobStore>,
    /// One download per blob at a time; others wait for it.
    inflight: Mutex<HashMap<BlobHash, Arc<tokio::sync::Mutex<()>>>>,
}

impl Fetcher {
    pub fn new(net: NetHandle, blobs: Arc<BlobStore>) -> Self {
        Fetcher {
            net,
            blobs,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Makes sure the blob is in the local store, asking `hint` first (the
    /// node known to have made or uploaded it), then every connected peer.
    pub async fn ensure(&self, h: &BlobHash, hint: Option<&NodeId>) -> Result<()> {
        if self.blobs.contains(h) {
            return Ok(());
        }
        let lock = self
            .inflight
            .lock()
            .expect("fetch lock")
            .entry(*h)
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        let result = self.download(h, hint).await;
        self.inflight.lock().expect("fetch lock").remove(h);
        result
    }

    async fn download(&self, h: &BlobHash, hint: Option<&NodeId>) -> Result<()> {
        if self.blobs.contains(h) {
            return Ok(());
        }
        let mut peers: Vec<PeerId> = self.net.connected().into_iter().collect();
        if let Some(first) = hint.and_then(peer_of)
            && let Some(i) = peers.iter().position(|p| *p == first)
        {
            peers.swap(0, i);
        }
        if peers.is_empty() {
            bail!("file {h} is not on this node and no other node is connected");
        }
        let mut why = Vec::new();
        for p in peers {
            match self.download_from(p, h).await {
                Ok(len) => {
                    tracing::debug!("fetched {h} ({len} bytes) from {p}");
                    return Ok(());
                }
                Err(e) => why.push(format!("{p}: {e:#}")),
            }
        }
        bail!("file {h} is on no connected node ({})", why.join("; "))
    }

    async fn download_from(&self, peer: PeerId, h: &BlobHash) -> Result<u64> {
        let mut w = self.blobs.writer()?;
        let mut offset = 0u64;
        loop {
            let req = BlobRequest {
                hash: *h,
                offset,
                len: BLOB_CHUNK,
            };
            let resp = match self.net.ask_blob(peer, req).await {
                Ok(r) => r,
                Err(e) => {
                    self.blobs.abort(w);
                    bail!("{e}");
                }
            };
            match resp {
                BlobResponse::Range { total, data } => {
                    let done = data.is_empty() || offset + data.len() as u64 >= total;
                    if let Err(e) = w.write_all(&data) {
                        self.blobs.abort(w);
                        return Err(e.into());
                    }
                    offset += data.len() as u64;
                    if done {
                        break;
                    }
                }
                BlobResponse::NotFound => {
                    self.blobs.abort(w);
                    bail!("does not have it");
                }
                BlobResponse::Refused(why) => {
                    self.blobs.abort(w);
                    bail!("refused: {why}");
                }
            }
        }
        w.flush()?;
        self.blobs.commit_expected(w, h)
    }
}
