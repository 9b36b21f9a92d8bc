//! The content-addressed blob store: every file named by its BLAKE3 hash.
//!
//! Layout: `blobs/ab/abcdef…` (hash in hex), and next to a blob of more than
//! one block its tree, `abcdef….tree` (see `pesc_protocol::blob_tree`).
//! Files are written to `blobs/tmp/` and renamed into place, so a crash never
//! leaves a half blob under a hash. Downloads in progress live in
//! `blobs/partial/` (see [`partial`]) and survive a restart.

pub mod cache;
pub mod partial;

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pesc_protocol::BlobHash;
use pesc_protocol::blob_tree::{TreeHasher, VerifiedTree, block_count, block_range};
use pesc_protocol::wire::{BlobRequest, BlobResponse, Holding};

pub use partial::Partials;

pub struct BlobStore {
    root: PathBuf,
    empty_zip: BlobHash,
    /// Downloads in progress, served block by block to other downloaders.
    pub partials: Partials,
}

/// A file being written into the store, hashed (tree and root) as it is written.
pub struct BlobWriter {
    file: File,
    path: PathBuf,
    hasher: TreeHasher,
    len: u64,
}

impl BlobWriter {
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Where the bytes are until commit (to inspect them, e.g. open a zip).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobStore {
    pub fn open(root: PathBuf) -> Result<Self> {
        let tmp = root.join("tmp");
        // Leftovers of writes a crash interrupted are never referenced.
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let partials = Partials::open(root.join("partial"))?;
        let mut store = BlobStore {
            root,
            empty_zip: BlobHash::of(b""),
            partials,
        };
        let mut zip = std::io::Cursor::new(Vec::new());
        zip::ZipWriter::new(&mut zip).finish()?;
        store.empty_zip = store.put_bytes(zip.get_ref())?;
        Ok(store)
    }

    /// An empty zip (an empty output dir), always present.
    pub fn empty_zip(&self) -> BlobHash {
        self.empty_zip
    }

    fn put_bytes(&self, data: &[u8]) -> Result<BlobHash> {
        let h = BlobHash::of(data);
        if !self.contains(&h) {
            let mut w = self.writer()?;
            w.write_all(data)?;
            self.commit(w)?;
        }
        Ok(h)
    }

    pub fn path(&self, h: &BlobHash) -> PathBuf {
        let hex = h.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    pub fn contains(&self, h: &BlobHash) -> bool {
        self.path(h).exists()
    }

    /// Where a blob's tree is kept (only blobs of more than one block have one).
    fn tree_path(&self, h: &BlobHash) -> PathBuf {
        self.path(h).with_extension("tree")
    }

    /// A local blob's size and checked tree, computing and keeping the tree
    /// if it is missing (blobs stored before trees existed). None if absent.
    pub fn tree(&self, h: &BlobHash) -> Result<Option<VerifiedTree>> {
        let path = self.path(h);
        let Ok(meta) = std::fs::metadata(&path) else {
            return Ok(None);
        };
        let total = meta.len();
        let tree = match std::fs::read(self.tree_path(h)) {
            Ok(t) => t,
            Err(_) if pesc_protocol::blob_tree::block_count(total) == 1 => Vec::new(),
            Err(_) => {
                let (root, _, tree) = hash_file(&path)?;
                anyhow::ensure!(&root == h, "blob {h} on disk does not match its name");
                write_atomic(&self.tree_path(h), &tree)?;
                tree
            }
        };
        match VerifiedTree::check(*h, total, &tree) {
            Ok(v) => Ok(Some(v)),
            Err(e) => anyhow::bail!("the stored tree of blob {h} is wrong: {e}"),
        }
    }

    /// A fresh temporary path inside the store's filesystem.
    pub fn temp_path(&self, what: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{what}-{}", hex::encode(rand::random::<[u8; 8]>())))
    }

    pub fn writer(&self) -> Result<BlobWriter> {
        let path = self.temp_path("upload");
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(BlobWriter {
            file,
            path,
            hasher: TreeHasher::new(),
            len: 0,
        })
    }

    /// Moves a finished writer's file under its hash.
    pub fn commit(&self, w: BlobWriter) -> Result<(BlobHash, u64)> {
        let (h, len, tree) = w.hasher.finish();
        drop(w.file);
        self.place(&w.path, &h, &tree)?;
        Ok((h, len))
    }

    /// Drops a writer's file.
    pub fn abort(&self, w: BlobWriter) {
        let _ = std::fs::remove_file(&w.path);
    }

    /// Takes ownership of a file on the same filesystem: hashes it and moves
    /// it into the store (no copy).
    pub fn adopt_file(&self, path: &Path) -> Result<(BlobHash, u64)> {
        let (h, len, tree) = hash_file(path)?;
        self.place(path, &h, &tree)?;
        Ok((h, len))
    }

    /// Moves a file whose hash and tree are known under its name (the tree
    /// first, so a blob never lacks its tree).
    fn place(&self, from: &Path, h: &BlobHash, tree: &[u8]) -> Result<()> {
        let dest = self.path(h);
        if dest.exists() {
            let _ = std::fs::remove_file(from);
            return Ok(());
        }
        let dir = dest.parent().expect("blob path has a parent");
        std::fs::create_dir_all(dir)?;
        if !tree.is_empty() {
            write_atomic(&self.tree_path(h), tree)?;
        }
        std::fs::rename(from, &dest).with_context(|| format!("storing blob {h}"))?;
        Ok(())
    }

    /// Answers a peer's question about a blob (runs on a blocking thread).
    pub fn serve(&self, req: &BlobRequest) -> BlobResponse {
        let answer = || -> Result<BlobResponse> {
            Ok(match req {
                BlobRequest::Has { hash } => match std::fs::metadata(self.path(hash)) {
                    Ok(m) => BlobResponse::Has(Holding::All { total: m.len() }),
                    Err(_) => BlobResponse::Has(self.partials.holding(hash)),
                },
                BlobRequest::Tree { hash } => match self.tree(hash)? {
                    Some(t) => BlobResponse::Tree {
                        total: t.total(),
                        tree: t.bytes(),
                    },
                    None => match self.partials.tree(hash) {
                        Some(t) => BlobResponse::Tree {
                            total: t.total(),
                            tree: t.bytes(),
                        },
                        None => BlobResponse::NotFound,
                    },
                },
                BlobRequest::Block { hash, index } => match File::open(self.path(hash)) {
                    Ok(f) => {
                        let total = f.metadata()?.len();
                        if *index >= block_count(total) {
                            return Ok(BlobResponse::Refused(format!(
                                "the blob has {} blocks, not {}",
                                block_count(total),
                                index + 1
                            )));
                        }
                        let (offset, len) = block_range(total, *index);
                        BlobResponse::Block {
                            data: read_owned(f, offset, len)?,
                        }
                    }
                    Err(_) => match self.partials.read_block(hash, *index)? {
                        Some(data) => BlobResponse::Block { data },
                        None => BlobResponse::NotFound,
                    },
                },
            })
        };
        answer().unwrap_or_else(|e| BlobResponse::Refused(format!("cannot read the blob: {e:#}")))
    }
}

/// Reads `len` bytes at `offset` from a file this reader alone uses, into
/// memory that is not zeroed first.
fn read_owned(mut f: File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    f.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut data)?;
    if (data.len() as u64) < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the blob is shorter than its size",
        ));
    }
    Ok(data)
}

/// Reads `len` bytes at `offset`.
pub(crate) fn read_at(f: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut data = vec![0u8; len as usize];
    f.read_exact_at(&mut data, offset)?;
    Ok(data)
}

/// The root hash, length and tree of a file.
fn hash_file(path: &Path) -> Result<(BlobHash, u64, Vec<u8>)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = TreeHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = io::Read::read(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

/// Writes a small file via a temporary name and a rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
