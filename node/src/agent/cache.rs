//! Keeping the blob store within its size limit without losing what the
//! grid needs from this node.

use std::collections::HashSet;
use std::time::Duration;

use pesc_protocol::BlobHash;

use super::Agent;

/// How often the store's size is checked.
pub(super) const EVICT_EVERY: Duration = Duration::from_secs(60);

impl Agent {
    /// Blobs this node must keep: code, shared files and checkpoints of
    /// unfinished requests, and results of which it holds one of the first
    /// two copies.
    pub(super) fn blobs_to_keep(&self) -> HashSet<BlobHash> {
        let me = &self.s.node;
        let mut keep = HashSet::new();
        for req in self.requests.values() {
            let doc = &req.doc;
            let spec = doc.spec();
            let open = !doc.is_finished();
            if open {
                keep.insert(spec.process.code);
                keep.extend(spec.inputs.iter().map(|f| f.hash));
            }
            for a in doc.all_attempts() {
                let holds = if a.replicas.is_empty() {
                    &a.node == me
                } else {
                    a.replicas.iter().take(2).any(|n| n == me)
                };
                if holds {
                    keep.extend([a.output, a.stdout, a.stderr].into_iter().flatten());
                }
                if open && a.checkpoint_holders.contains(me) {
                    keep.extend(a.checkpoint);
                }
            }
        }
        keep
    }

    /// Evicts least recently used blobs when the store is over its limit
    /// (on a blocking thread; at most one pass at a time).
    pub(super) fn evict_if_due(&mut self) {
        let limit = self.s.cache_bytes;
        let now = self.mono();
        if limit == 0
            || now < self.next_evict_ms
            || self.evicting.load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        self.next_evict_ms = now + EVICT_EVERY.as_millis() as u64;
        let keep = self.blobs_to_keep();
        let blobs = self.runner.blobs.clone();
        let busy = self.evicting.clone();
        busy.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            match blobs.evict(limit, &keep) {
                Ok(e) if !e.evicted.is_empty() || e.kept_over_limit > 0 => tracing::info!(
                    "blob store: {} MiB -> {} MiB, {} blob(s) evicted{}",
                    e.before_bytes >> 20,
                    e.after_bytes >> 20,
                    e.evicted.len(),
                    if e.kept_over_limit > 0 {
                        format!(
                            "; {} MiB over the limit are still needed by the grid",
                            e.kept_over_limit >> 20
                        )
                    } else {
                        String::new()
                    }
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("evicting blobs: {e:#}"),
            }
            busy.store(false, std::sync::atomic::Ordering::Relaxed);
        });
    }
}
