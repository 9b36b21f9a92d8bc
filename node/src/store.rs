//! Durable node state in redb: documents as snapshots plus incremental chunks,
//! and small metadata.

use std::path::Path;

use anyhow::{Context, Result};
pub use pesc_protocol::node::{DocWrite, SavedDoc, StoredDoc};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Full saves, one per document.
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_snapshots");
/// Incremental saves appended after the snapshot: (document, sequence) → bytes.
const CHUNKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("doc_chunks");
/// Archived documents: key → summary (JSON). Not loaded at start.
const ARCHIVED: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_archived");
/// Small values: grid id, …
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// redb's page cache.
const CACHE_BYTES: usize = 16 << 20;

pub struct Store {
    db: Database,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        // redb caches up to 1 GiB of pages by default: reading every
        // snapshot at start (archived ones included) would keep history in
        // memory. The OS page cache holds the file anyway.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .with_context(|| format!("opening the node database {}", path.display()))?;
        let tx = db.begin_write()?;
        tx.open_table(SNAPSHOTS)?;
        tx.open_table(CHUNKS)?;
        tx.open_table(META)?;
        tx.open_table(ARCHIVED)?;
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

    /// Names of the stored documents.
    pub fn doc_keys(&self) -> Result<Vec<String>> {
        let tx = self.db.begin_read()?;
        let mut keys = std::collections::BTreeSet::new();
        for item in tx.open_table(SNAPSHOTS)?.iter()? {
            keys.insert(item?.0.value().to_string());
        }
        for item in tx.open_table(CHUNKS)?.iter()? {
            keys.insert(item?.0.value().0.to_string());
        }
        Ok(keys.into_iter().collect())
    }

    /// Drops every document (the data dir joins another grid).
    pub fn clear_docs(&self) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.delete_table(SNAPSHOTS)?;
        tx.delete_table(CHUNKS)?;
        tx.delete_table(ARCHIVED)?;
        tx.open_table(SNAPSHOTS)?;
        tx.open_table(CHUNKS)?;
        tx.open_table(ARCHIVED)?;
        tx.commit()?;
        Ok(())
    }

    /// Every stored document, snapshot followed by its chunks in order.
    /// Every document but the archived ones (their summaries are
    /// [`Store::archived`]).
    pub fn load_docs(&self) -> Result<Vec<StoredDoc>> {
        let tx = self.db.begin_read()?;
        let snaps = tx.open_table(SNAPSHOTS)?;
        let chunks = tx.open_table(CHUNKS)?;
        let archived = tx.open_table(ARCHIVED)?;
        let is_archived = |k: &str| -> Result<bool> { Ok(archived.get(k)?.is_some()) };
        let mut out: Vec<StoredDoc> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = Default::default();
        for item in snaps.iter()? {
            let (k, v) = item?;
            if is_archived(k.value())? {
                continue;
            }
            index.insert(k.value().to_string(), out.len());
            out.push(StoredDoc {
                key: k.value().to_string(),
                bytes: v.value().to_vec(),
                saved: SavedDoc::default(),
            });
        }
        for item in chunks.iter()? {
            let (k, v) = item?;
            let (key, seq) = k.value();
            if is_archived(key)? {
                continue;
            }
            let idx = *index.entry(key.to_string()).or_insert_with(|| {
                out.push(StoredDoc {
                    key: key.to_string(),
                    bytes: Vec::new(),
                    saved: SavedDoc::default(),
                });
                out.len() - 1
            });
            let d = &mut out[idx];
            d.bytes.extend_from_slice(v.value());
            d.saved.loaded_chunk(seq);
        }
        Ok(out)
    }

    /// The summaries of the archived documents (a summary that does not
    /// parse is skipped: its document is loaded at the next start as an
    /// unarchived one would be... once its mark is gone).
    pub fn archived(&self) -> Result<Vec<pesc_protocol::node::ArchivedRequest>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(ARCHIVED)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            match serde_json::from_slice(v.value()) {
                Ok(a) => out.push(a),
                Err(e) => tracing::warn!("archived summary of {} unreadable: {e}", k.value()),
            }
        }
        Ok(out)
    }

    /// One document, snapshot and chunks (to restore an archived one).
    pub fn load_doc(&self, key: &str) -> Result<Option<StoredDoc>> {
        let tx = self.db.begin_read()?;
        let snaps = tx.open_table(SNAPSHOTS)?;
        let chunks = tx.open_table(CHUNKS)?;
        let mut doc = StoredDoc {
            key: key.to_string(),
            bytes: Vec::new(),
            saved: SavedDoc::default(),
        };
        let mut found = false;
        if let Some(v) = snaps.get(key)? {
            doc.bytes.extend_from_slice(v.value());
            found = true;
        }
        for item in chunks.range((key, 0)..=(key, u64::MAX))? {
            let (k, v) = item?;
            doc.bytes.extend_from_slice(v.value());
            doc.saved.loaded_chunk(k.value().1);
            found = true;
        }
        Ok(found.then_some(doc))
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
            let mut archived = tx.open_table(ARCHIVED)?;
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
                    DocWrite::Archive { key, summary } => match summary {
                        Some(s) => {
                            archived.insert(key.as_str(), s.as_slice())?;
                        }
                        None => {
                            archived.remove(key.as_str())?;
                        }
                    },
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Documents just left memory (archived, or read at start): hand the
/// freed pages back to the OS, or glibc keeps them and a node that once
/// held its whole history stays that large.
pub fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is
    // thread-safe and takes no pointer from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Something to do once a batch is durable (e.g. answer a submit).
/// Called once its batch is written: `true` if it is on disk, `false` if
/// the write failed (the caller must not say it is kept).
pub type AfterCommit = Box<dyn FnOnce(bool) + Send>;

/// Writes batches on a thread of its own, in order, so the agent never
/// waits for the disk; callbacks run after their batch is durable.
pub struct StoreWriter {
    tx: std::sync::mpsc::Sender<(Vec<DocWrite>, Vec<AfterCommit>)>,
    /// Set when a write failed: the chunks of that batch are lost, so the
    /// agent's next writes must be full snapshots.
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StoreWriter {
    pub fn spawn(store: std::sync::Arc<Store>) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<(Vec<DocWrite>, Vec<AfterCommit>)>();
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = failed.clone();
        std::thread::Builder::new()
            .name("pesc-store".into())
            .spawn(move || {
                while let Ok((mut writes, mut after)) = rx.recv() {
                    // Coalesce whatever else is already queued into one transaction.
                    while let Ok((w, a)) = rx.try_recv() {
                        writes.extend(w);
                        after.extend(a);
                    }
                    let archived = writes.iter().any(|w| {
                        matches!(
                            w,
                            DocWrite::Archive {
                                summary: Some(_),
                                ..
                            }
                        )
                    });
                    let ok = match store.write(writes) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::error!("writing the node database failed: {e:#}");
                            flag.store(true, std::sync::atomic::Ordering::SeqCst);
                            false
                        }
                    };
                    for f in after {
                        f(ok);
                    }
                    if archived {
                        give_back_freed_memory();
                    }
                }
            })?;
        Ok(StoreWriter { tx, failed })
    }

    /// Whether a write failed since the last call (and forgets it).
    pub fn take_failure(&self) -> bool {
        self.failed.swap(false, std::sync::atomic::Ordering::SeqCst)
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
