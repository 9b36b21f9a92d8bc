//! A node's disk in the harness: what its `Persist` actions wrote, read
//! back at restart the way the real store reads redb (snapshot, then the
//! chunks after it in order).

use std::collections::BTreeMap;

use crate::node::{DocWrite, SavedDoc, StoredDoc};

#[derive(Default)]
struct Saved {
    snapshot: Vec<u8>,
    chunks: BTreeMap<u64, Vec<u8>>,
}

#[derive(Default)]
pub(super) struct MemStore {
    docs: BTreeMap<String, Saved>,
}

impl MemStore {
    /// Applies one batch (durable at once).
    pub(super) fn apply(&mut self, writes: Vec<DocWrite>) {
        for w in writes {
            match w {
                DocWrite::Snapshot { key, bytes } => {
                    self.docs.insert(
                        key,
                        Saved {
                            snapshot: bytes,
                            chunks: BTreeMap::new(),
                        },
                    );
                }
                DocWrite::Chunk { key, seq, bytes } => {
                    self.docs.entry(key).or_default().chunks.insert(seq, bytes);
                }
            }
        }
    }

    /// Every document as the node loads it.
    pub(super) fn docs(&self) -> Vec<StoredDoc> {
        self.docs
            .iter()
            .map(|(key, s)| {
                let mut bytes = s.snapshot.clone();
                let mut saved = SavedDoc::default();
                for (seq, c) in &s.chunks {
                    bytes.extend_from_slice(c);
                    saved.loaded_chunk(*seq);
                }
                StoredDoc {
                    key: key.clone(),
                    bytes,
                    saved,
                }
            })
            .collect()
    }
}
