//! The content-addressed blob store: every file named by its BLAKE3 hash.
//!
//! Layout: `blobs/ab/abcdef…` (hash in hex). Files are written to `blobs/tmp/`
//! and renamed into place, so a crash never leaves a half blob under a hash.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pesc_protocol::BlobHash;

pub struct BlobStore {
    root: PathBuf,
    empty_zip: BlobHash,
}

/// A file being written into the store, hashed as it is written.
pub struct BlobWriter {
    file: File,
    path: PathBuf,
    hasher: blake3::Hasher,
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
        let mut store = BlobStore {
            root,
            empty_zip: BlobHash::of(b""),
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
            hasher: blake3::Hasher::new(),
            len: 0,
        })
    }

    /// Moves a finished writer's file under its hash.
    pub fn commit(&self, w: BlobWriter) -> Result<(BlobHash, u64)> {
        let h = BlobHash::from(w.hasher.finalize());
        drop(w.file);
        self.place(&w.path, &h)?;
        Ok((h, w.len))
    }

    /// Commits a writer only if its bytes hash to `expected` (data from a
    /// peer); otherwise drops them.
    pub fn commit_expected(&self, w: BlobWriter, expected: &BlobHash) -> Result<u64> {
        let got = BlobHash::from(w.hasher.finalize());
        if &got != expected {
            self.abort(w);
            anyhow::bail!("the data received hashes to {got}, not {expected}");
        }
        Ok(self.commit(w)?.1)
    }

    /// Drops a writer's file.
    pub fn abort(&self, w: BlobWriter) {
        let _ = std::fs::remove_file(&w.path);
    }

    /// Takes ownership of a file on the same filesystem: hashes it and moves
    /// it into the store (no copy).
    pub fn adopt_file(&self, path: &Path) -> Result<(BlobHash, u64)> {
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut hasher = blake3::Hasher::new();
        let len = io::copy(&mut f, &mut hasher)?;
        let h = BlobHash::from(hasher.finalize());
        self.place(path, &h)?;
        Ok((h, len))
    }

    fn place(&self, from: &Path, h: &BlobHash) -> Result<()> {
        let dest = self.path(h);
        if dest.exists() {
            let _ = std::fs::remove_file(from);
            return Ok(());
        }
        let dir = dest.parent().expect("blob path has a parent");
        std::fs::create_dir_all(dir)?;
        std::fs::rename(from, &dest).with_context(|| format!("storing blob {h}"))?;
        Ok(())
    }
}
