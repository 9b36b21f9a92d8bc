//! How a node's documents reach the store: incremental chunks, compacted
//! into snapshots now and then, and a full snapshot after a failed write.

/// A write to apply in one transaction.
#[derive(Debug)]
pub enum DocWrite {
    /// Append an incremental save.
    Chunk {
        key: String,
        seq: u64,
        bytes: Vec<u8>,
    },
    /// Replace everything of this document with a full save (compaction).
    Snapshot { key: String, bytes: Vec<u8> },
    /// Mark this document archived, with its summary (JSON of
    /// [`super::ArchivedRequest`]), or no longer (`None`). An archived
    /// document is not loaded at start; its summary is.
    Archive {
        key: String,
        summary: Option<Vec<u8>>,
    },
}

/// A stored document: its bytes (snapshot then chunks) and where it stands.
pub struct StoredDoc {
    pub key: String,
    pub bytes: Vec<u8>,
    pub saved: SavedDoc,
}

/// Compact a document into a snapshot after this many incremental chunks.
const COMPACT_AFTER_CHUNKS: u64 = 256;

/// Rebuild the grid document in memory after this many writes of it
/// (see [`crate::doc::GridDoc::compact`]).
const GRID_COMPACT_AFTER_WRITES: u64 = 1_000;

/// Where a document stands in the store: the chunks after its snapshot.
#[derive(Debug, Default, Clone, Copy)]
pub struct SavedDoc {
    chunks: u64,
    next_seq: u64,
}

impl SavedDoc {
    /// The next write is a full snapshot.
    pub(super) fn snapshot_next(&mut self) {
        self.chunks = COMPACT_AFTER_CHUNKS;
    }

    /// Chunks stored after the snapshot.
    pub(super) fn chunks(&self) -> u64 {
        self.chunks
    }

    /// A stored chunk with sequence number `seq` was read at load.
    pub fn loaded_chunk(&mut self, seq: u64) {
        self.chunks += 1;
        self.next_seq = seq + 1;
    }

    /// The write that saves a document's new changes: a chunk, or a full
    /// snapshot when the document has none yet or has gathered too many
    /// chunks. `save(true)` gives a full save, `save(false)` an incremental one.
    pub fn next_write(
        &mut self,
        key: String,
        save: impl FnOnce(bool) -> Vec<u8>,
    ) -> Option<DocWrite> {
        let write = if self.next_seq == 0 || self.chunks >= COMPACT_AFTER_CHUNKS {
            self.chunks = 0;
            DocWrite::Snapshot {
                key,
                bytes: save(true),
            }
        } else {
            let bytes = save(false);
            if bytes.is_empty() {
                return None;
            }
            self.chunks += 1;
            DocWrite::Chunk {
                key,
                seq: self.next_seq,
                bytes,
            }
        };
        self.next_seq += 1;
        Some(write)
    }
}

impl super::Node {
    /// Rebuilds the grid document whole in memory; its next write is a
    /// snapshot (which holds whatever was not saved yet).
    pub(super) fn compact_grid(&mut self) {
        self.grid_writes = 0;
        match self.grid.compact() {
            Ok(()) => {
                self.grid_saved.snapshot_next();
                self.grid_dirty = true;
            }
            Err(e) => tracing::error!("rebuilding the grid document failed: {e}"),
        }
    }

    /// A store write failed: that batch's chunks are lost, so every
    /// document is written whole next and nothing stays missing on disk.
    pub fn store_failed(&mut self) {
        tracing::warn!("writing every document whole after a failed write");
        self.grid_saved = SavedDoc::default();
        self.grid_dirty = true;
        for q in self.requests.values_mut() {
            q.saved = SavedDoc::default();
            q.dirty = true;
        }
    }

    /// Writes what changed in this batch (one `Persist` action, empty when
    /// nothing did: the driver still resolves the batch's waiters on it),
    /// marks the changed documents for sync and counts request changes.
    pub(super) fn persist(&mut self) {
        use crate::wire::DocKey;
        let mut writes = Vec::new();
        let committed = self.grid.commit();
        if self.grid_dirty || committed {
            self.grid_dirty = false;
            self.grid_writes += 1;
            if self.grid_writes >= GRID_COMPACT_AFTER_WRITES {
                self.compact_grid();
            }
            self.repl.changed.insert(DocKey::Grid);
            // Accounts, files, rooms, nodes: rare, and read on other nodes
            // right away (a revoked session must end everywhere).
            self.repl.urgent.insert(DocKey::Grid);
            let grid = &mut self.grid;
            writes.extend(self.grid_saved.next_write("grid".into(), |full| {
                if full {
                    grid.save()
                } else {
                    grid.save_incremental()
                }
            }));
        }
        for (id, q) in self.requests.iter_mut() {
            if !q.dirty {
                continue;
            }
            q.dirty = false;
            q.doc.commit();
            self.repl.changed.insert(DocKey::Request(id.clone()));
            self.version += 1;
            q.version = self.version;
            self.stale.requests.insert(id.clone());
            self.actions
                .push_back(super::Action::RequestChanged(id.clone(), self.version));
            self.event_log.push_back((self.version, id.clone()));
            if self.event_log.len() > super::EVENT_LOG {
                self.event_log.pop_front();
            }
            let doc = &mut q.doc;
            writes.extend(q.saved.next_write(format!("req/{id}"), |full| {
                if full {
                    doc.save()
                } else {
                    doc.save_incremental()
                }
            }));
        }
        writes.append(&mut self.archive_writes);
        self.actions.push_back(super::Action::Persist(writes));
        if self.version != self.version_told {
            self.version_told = self.version;
            self.actions.push_back(super::Action::Changed(self.version));
        }
    }
}
