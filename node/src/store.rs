//! Durable node state in redb: documents as snapshots plus incremental chunks,
//! and small metadata.

use std::path::Path;

use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Full saves, one per document.
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_snapshots");
/// Incremental saves appended after the snapshot: (document, sequence) → bytes.
const CHUNKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("doc_chunks");
/// Small values: grid id, …
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A write to apply in one transaction.
pub enum DocWrite {
    /// Append an incremental save.
    Chunk {
        key: String,
        seq: u64,
        bytes: Vec<u8>,
    },
    /// Replace everything of this document with a full save (compaction).
    Snapshot { key: String, bytes: Vec<u8> },
}

pub struct Store {
    db: Database,
}

/// A stored document: its bytes (snapshot then chunks) and chunk count.
pub struct StoredDoc {
    pub key: String,
    pub bytes: Vec<u8>,
    pub chunks: u64,
    pub next_seq: u64,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)
            .with_context(|| format!("opening the node database {}", path.display()))?;
        let tx = db.begin_write()?;
        tx.open_table(SNAPSHOTS)?;
        tx.open_table(CHUNKS)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(Store { db })
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(META)?.insert(key, value)?;
        tx.commit()?;
        Ok(())
    }

    /// Every stored document, snapshot followed by its chunks in order.
    pub fn load_docs(&self) -> Result<Vec<StoredDoc>> {
        let tx = self.db.begin_read()?;
        let snaps = tx.open_table(SNAPSHOTS)?;
        let chunks = tx.open_table(CHUNKS)?;
        let mut out: Vec<StoredDoc> = Vec::new();
        for item in snaps.iter()? {
            let (k, v) = item?;
            out.push(StoredDoc {
                key: k.value().to_string(),
                bytes: v.value().to_vec(),
                chunks: 0,
                next_seq: 0,
            });
        }
        for item in chunks.iter()? {
            let (k, v) = item?;
            let (key, seq) = k.value();
            let idx = match out.iter().position(|d| d.key == key) {
                Some(i) => i,
                None => {
                    out.push(StoredDoc {
                        key: key.to_string(),
                        bytes: Vec::new(),
                        chunks: 0,
                        next_seq: 0,
                    });
                    out.len() - 1
                }
            };
            let d = &mut out[idx];
            d.bytes.extend_from_slice(v.value());
            d.chunks += 1;
            d.next_seq = seq + 1;
        }
        Ok(out)
    }

    /// Applies writes in one durable transaction.
    pub fn write(&self, writes: Vec<DocWrite>) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut snaps = tx.open_table(SNAPSHOTS)?;
            let mut chunks = tx.open_table(CHUNKS)?;
            for w in writes {
                match w {
                    DocWrite::Chunk { key, seq, bytes } => {
                        chunks.insert((key.as_str(), seq), bytes.as_slice())?;
                    }
                    DocWrite::Snapshot { key, bytes } => {
                        snaps.insert(key.as_str(), bytes.as_slice())?;
                        chunks
                            .retain_in((key.as_str(), 0)..=(key.as_str(), u64::MAX), |_, _| {
                                false
                            })?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Something to do once a batch is durable (e.g. answer a submit).
pub type AfterCommit = Box<dyn FnOnce() + Send>;

/// Writes batches on a thread of its own, in order, so the agent never
/// waits for the disk; callbacks run after their batch is durable.
pub struct StoreWriter {
    tx: std::sync::mpsc::Sender<(Vec<DocWrite>, Vec<AfterCommit>)>,
}

impl StoreWriter {
    pub fn spawn(store: std::sync::Arc<Store>) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<(Vec<DocWrite>, Vec<AfterCommit>)>();
        std::thread::Builder::new()
            .name("pesc-store".into())
            .spawn(move || {
                while let Ok((mut writes, mut after)) = rx.recv() {
                    // Coalesce whatever else is already queued into one transaction.
                    while let Ok((w, a)) = rx.try_recv() {
                        writes.extend(w);
                        after.extend(a);
                    }
                    if let Err(e) = store.write(writes) {
                        tracing::error!("writing the node database failed: {e:#}");
                    }
                    for f in after {
                        f();
                    }
                }
            })?;
        Ok(StoreWriter { tx })
    }

    pub fn send(&self, writes: Vec<DocWrite>, after: Vec<AfterCommit>) {
        if writes.is_empty() && after.is_empty() {
            return;
        }
        if self.tx.send((writes, after)).is_err() {
            tracing::error!("the database writer is gone");
        }
    }
}
