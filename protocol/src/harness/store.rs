//! A node's disk in the harness: what its `Persist` actions wrote, read
//! back at restart the way the real store reads redb (snapshot, then the
//! chunks after it in order).

use std::collections::BTreeMap;

use crate::node::{ArchivedRequest, DocWrite, SavedDoc, StoredDoc};

#[derive(Default)]
struct Saved {
    snapshot: Vec<u8>,
    chunks: BTreeMap<u64, Vec<u8>>,
}

#[derive(Default)]
pub(super) struct MemStore {
    docs: BTreeMap<String, Saved>,
    /// Archived documents' summaries (JSON), by key.
    archived: BTreeMap<String, Vec<u8>>,
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
                DocWrite::Archive { key, summary } => match summary {
                    Some(s) => {
                        self.archived.insert(key, s);
                    }
                    None => {
                        self.archived.remove(&key);
                    }
                },
            }
        }
    }

    /// Every document as the node loads it at start (not the archived).
    pub(super) fn docs(&self) -> Vec<StoredDoc> {
        self.docs
            .keys()
            .filter(|k| !self.archived.contains_key(*k))
            .filter_map(|k| self.doc(k))
            .collect()
    }

    /// The summaries of the archived documents.
    pub(super) fn archived(&self) -> Vec<ArchivedRequest> {
        self.archived
            .values()
            .filter_map(|s| serde_json::from_slice(s).ok())
            .collect()
    }

    /// One document, as the driver reads it back to restore it.
    pub(super) fn doc(&self, key: &str) -> Option<StoredDoc> {
        self.docs.get(key).map(|s| (key, s)).map(|(key, s)| {
            let mut bytes = s.snapshot.clone();
            let mut saved = SavedDoc::default();
            for (seq, c) in &s.chunks {
                bytes.extend_from_slice(c);
                saved.loaded_chunk(*seq);
            }
            StoredDoc {
                key: key.to_string(),
                bytes,
                saved,
            }
        })
    }
}
