//! Which blobs the grid needs this node to keep.

use std::collections::HashSet;

use crate::BlobHash;

use super::Node;

impl Node {
    /// Blobs this node must keep: code, shared files and checkpoints of
    /// unfinished requests, and results of which it holds one of the first
    /// two copies.
    pub fn blobs_to_keep(&self) -> HashSet<BlobHash> {
        let me = &self.cfg.node;
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
        for a in self.archive.values() {
            keep.extend(a.keep.iter().copied());
        }
        keep
    }
}
