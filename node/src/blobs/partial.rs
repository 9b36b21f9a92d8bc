//! Downloads in progress: a sparse file the size of the blob, its checked
//! tree next to it, and which blocks have arrived (each checked before it is
//! written). Blocks already here are served to other downloaders of the same
//! blob, so a file spreads through the grid instead of all coming from one
//! node. After a restart a download resumes: the blocks on disk are checked
//! again against the tree and only the missing ones are fetched.
//!
//! Layout: `partial/HASH` (data) and `partial/HASH.tree` (8 bytes of length,
//! little-endian, then the tree).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use pesc_protocol::BlobHash;
use pesc_protocol::blob_tree::{VerifiedTree, block_range};
use pesc_protocol::wire::Holding;

use super::{read_at, write_atomic};

pub struct Partials {
    dir: PathBuf,
    active: Mutex<HashMap<BlobHash, Arc<Partial>>>,
}

pub struct Partial {
    tree: VerifiedTree,
    file: File,
    path: PathBuf,
    /// Bitmap of the blocks written (and checked).
    have: Mutex<Vec<u8>>,
}

impl Partials {
    pub fn open(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Partials {
            dir,
            active: Mutex::new(HashMap::new()),
        })
    }

    fn data_path(&self, h: &BlobHash) -> PathBuf {
        self.dir.join(h.to_hex())
    }

    fn get(&self, h: &BlobHash) -> Option<Arc<Partial>> {
        self.active.lock().expect("partials lock").get(h).cloned()
    }

    /// The download of `h` left on disk by an earlier attempt or run, with
    /// the blocks already there checked again. None if there is none.
    pub fn resume(&self, h: &BlobHash) -> Result<Option<Arc<Partial>>> {
        if let Some(p) = self.get(h) {
            return Ok(Some(p));
        }
        let data = self.data_path(h);
        let Ok(meta) = std::fs::read(data.with_extension("tree")) else {
            return Ok(None);
        };
        let Some((len, tree)) = meta.split_first_chunk::<8>() else {
            self.discard(h);
            return Ok(None);
        };
        let Ok(tree) = VerifiedTree::check(*h, u64::from_le_bytes(*len), tree) else {
            self.discard(h);
            return Ok(None);
        };
        let p = self.create(tree, false)?;
        let blocks = p.tree.blocks();
        for i in 0..blocks {
            let (offset, len) = block_range(p.tree.total(), i);
            if let Ok(d) = read_at(&p.file, offset, len)
                && p.tree.check_block(i, &d).is_ok()
            {
                p.mark(i);
            }
        }
        tracing::info!(
            "resuming the download of {h}: {} of {blocks} blocks already here",
            p.have_count()
        );
        Ok(Some(self.register(p)))
    }

    /// Starts a new download of the blob this tree describes.
    pub fn start(&self, tree: VerifiedTree) -> Result<Arc<Partial>> {
        let h = tree.root();
        if let Some(p) = self.get(&h) {
            return Ok(p);
        }
        let mut meta = tree.total().to_le_bytes().to_vec();
        meta.extend_from_slice(&tree.bytes());
        write_atomic(&self.data_path(&h).with_extension("tree"), &meta)?;
        let p = self.create(tree, true)?;
        Ok(self.register(p))
    }

    fn create(&self, tree: VerifiedTree, truncate: bool) -> Result<Partial> {
        let path = self.data_path(&tree.root());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(truncate)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.set_len(tree.total())?;
        let bitmap = vec![0u8; tree.blocks().div_ceil(8) as usize];
        Ok(Partial {
            tree,
            file,
            path,
            have: Mutex::new(bitmap),
        })
    }

    fn register(&self, p: Partial) -> Arc<Partial> {
        let p = Arc::new(p);
        self.active
            .lock()
            .expect("partials lock")
            .insert(p.tree.root(), p.clone());
        p
    }

    /// Forgets a download in memory (its files stay, to resume later).
    pub fn release(&self, h: &BlobHash) {
        self.active.lock().expect("partials lock").remove(h);
    }

    /// Removes a download's files.
    pub fn discard(&self, h: &BlobHash) {
        self.release(h);
        let data = self.data_path(h);
        let _ = std::fs::remove_file(data.with_extension("tree"));
        let _ = std::fs::remove_file(data);
    }

    /// What this node holds of `h` among its downloads.
    pub fn holding(&self, h: &BlobHash) -> Holding {
        match self.get(h) {
            Some(p) => Holding::Part {
                total: p.tree.total(),
                have: p.have.lock().expect("have lock").clone(),
            },
            None => Holding::None,
        }
    }

    pub fn tree(&self, h: &BlobHash) -> Option<VerifiedTree> {
        self.get(h).map(|p| p.tree.clone())
    }

    /// A block of a download, if it has arrived.
    pub fn read_block(&self, h: &BlobHash, index: u64) -> Result<Option<Vec<u8>>> {
        let Some(p) = self.get(h) else {
            return Ok(None);
        };
        if !p.has(index) {
            return Ok(None);
        }
        let (offset, len) = block_range(p.tree.total(), index);
        Ok(Some(read_at(&p.file, offset, len)?))
    }

    /// Bytes kept by downloads in progress (active or left from before).
    pub fn disk_bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}

impl Partial {
    pub fn tree(&self) -> &VerifiedTree {
        &self.tree
    }

    pub fn has(&self, index: u64) -> bool {
        let have = self.have.lock().expect("have lock");
        have.get((index / 8) as usize)
            .is_some_and(|b| b & (1 << (index % 8)) != 0)
    }

    fn mark(&self, index: u64) {
        let mut have = self.have.lock().expect("have lock");
        have[(index / 8) as usize] |= 1 << (index % 8);
    }

    pub fn have_count(&self) -> u64 {
        let have = self.have.lock().expect("have lock");
        have.iter().map(|b| b.count_ones() as u64).sum()
    }

    pub fn is_complete(&self) -> bool {
        self.have_count() == self.tree.blocks()
    }

    /// Checks a block received from a peer and writes it; a wrong block is
    /// dropped and the error says why.
    pub fn put_block(&self, index: u64, data: &[u8]) -> Result<(), String> {
        self.tree
            .check_block(index, data)
            .map_err(|e| e.to_string())?;
        let (offset, _) = block_range(self.tree.total(), index);
        self.file
            .write_all_at(data, offset)
            .map_err(|e| format!("writing block {index}: {e}"))?;
        self.mark(index);
        Ok(())
    }

    /// Moves a complete download into the store under its hash.
    pub fn finish(&self, store: &super::BlobStore) -> Result<()> {
        anyhow::ensure!(self.is_complete(), "the download is not complete");
        let h = self.tree.root();
        store.place(&self.path, &h, &self.tree.bytes())?;
        store.partials.discard(&h);
        Ok(())
    }
}
