//! The store as a cache: a size limit, least recently used blobs evicted
//! first, and blobs the grid still needs from this node never evicted.
//!
//! "Used" is the blob file's modification time, set when a run uses it or a
//! peer downloads it ([`BlobStore::touch`]).

use std::collections::HashSet;
use std::time::SystemTime;

use anyhow::Result;
use pesc_protocol::BlobHash;

use super::BlobStore;

/// What an eviction pass found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub before_bytes: u64,
    pub after_bytes: u64,
    pub evicted: Vec<BlobHash>,
    /// Bytes over the limit that could not go because they are kept.
    pub kept_over_limit: u64,
}

struct Entry {
    hash: BlobHash,
    bytes: u64,
    used: SystemTime,
}

impl BlobStore {
    /// Marks a blob as just used.
    pub fn touch(&self, h: &BlobHash) {
        // Setting times needs ownership, not a writable descriptor.
        if let Ok(f) = std::fs::File::open(self.path(h)) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Every stored blob with its size (tree included) and last use.
    fn entries(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        for dir in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = dir.file_name();
            let name = name.to_string_lossy();
            if name.len() != 2 || !dir.path().is_dir() {
                continue;
            }
            for f in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let Some(hash) = f
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<BlobHash>().ok())
                else {
                    continue;
                };
                let Ok(meta) = f.metadata() else { continue };
                let tree = std::fs::metadata(self.tree_path(&hash))
                    .map(|m| m.len())
                    .unwrap_or(0);
                out.push(Entry {
                    hash,
                    bytes: meta.len() + tree,
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        out
    }

    /// Blobs kept and their bytes (trees included; downloads in progress
    /// apart), and the bytes of downloads in progress.
    pub fn usage(&self) -> (usize, u64, u64) {
        let entries = self.entries();
        let bytes = entries.iter().map(|e| e.bytes).sum();
        (entries.len(), bytes, self.partials.disk_bytes())
    }

    /// Evicts least recently used blobs until the store holds at most
    /// `limit` bytes, never one in `keep`.
    pub fn evict(&self, limit: u64, keep: &HashSet<BlobHash>) -> Result<Eviction> {
        let mut entries = self.entries();
        let partial = self.partials.disk_bytes();
        let before = entries.iter().map(|e| e.bytes).sum::<u64>() + partial;
        let mut now = before;
        let mut evicted = Vec::new();
        entries.sort_by_key(|e| e.used);
        for e in &entries {
            if now <= limit {
                break;
            }
            if keep.contains(&e.hash) || e.hash == self.empty_zip {
                continue;
            }
            std::fs::remove_file(self.path(&e.hash))?;
            let _ = std::fs::remove_file(self.tree_path(&e.hash));
            now -= e.bytes;
            evicted.push(e.hash);
        }
        Ok(Eviction {
            before_bytes: before,
            after_bytes: now,
            kept_over_limit: now.saturating_sub(limit),
            evicted,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    fn put(store: &BlobStore, fill: u8, len: usize) -> BlobHash {
        let mut w = store.writer().unwrap();
        w.write_all(&vec![fill; len]).unwrap();
        store.commit(w).unwrap().0
    }

    fn age(store: &BlobStore, h: &BlobHash, secs: u64) {
        let f = std::fs::File::options()
            .write(true)
            .open(store.path(h))
            .unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn evicts_least_recently_used_and_never_kept_blobs() {
        let dir = std::env::temp_dir().join(format!("pesc-cache-{}", rand::random::<u64>()));
        let store = BlobStore::open(dir.clone()).unwrap();
        let a = put(&store, 1, 3 << 20);
        let b = put(&store, 2, 3 << 20);
        let c = put(&store, 3, 3 << 20);
        age(&store, &a, 300);
        age(&store, &b, 200);
        age(&store, &c, 100);
        // `a` is the oldest but kept; `b` goes, then the limit is met.
        store.touch(&c);
        let keep = HashSet::from([a]);
        let ev = store.evict(7 << 20, &keep).unwrap();
        assert_eq!(ev.evicted, vec![b]);
        assert!(store.contains(&a) && !store.contains(&b) && store.contains(&c));
        assert!(ev.after_bytes <= 7 << 20, "{ev:?}");
        // Nothing may go: the rest is kept, and the report says how much over.
        let ev = store.evict(1 << 20, &HashSet::from([a, c])).unwrap();
        assert!(ev.evicted.is_empty());
        assert!(ev.kept_over_limit > 5 << 20);
        let _ = std::fs::remove_dir_all(dir);
    }
}
