//! Shared files in a run's app dir.
//!
//! Every run sees each of its request's shared files read-only under its
//! name. In a container it is a read-only mount of the blob store's copy.
//! With the process executor the file is a private copy (made with
//! `copy_file_range`, a reflink where the filesystem can), because a plain
//! process of the same user could write through a link into the node's only
//! copy. The copy is kept for the slot's next run when its inode status shows
//! nobody touched it (any write or `chmod` changes `ctime`, which user code
//! cannot set back).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use pesc_protocol::model::SharedFile;

use crate::blobs::BlobStore;

/// The record of what a slot's app dir holds: `slots/N/inputs`.
const RECORD: &str = "inputs";

fn stamp(name: &str, f: &SharedFile, m: &std::fs::Metadata) -> String {
    format!(
        "{name}\t{}\t{}\t{}\t{}\t{}\t{}",
        f.hash,
        m.ino(),
        m.len(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000,
        m.ctime_nsec() + m.ctime() * 1_000_000_000,
        m.mode()
    )
}

/// Names of shared files in `app` that are untouched copies of `inputs`
/// (kept when the app dir is cleaned).
pub fn intact(slot_dir: &Path, app: &Path, inputs: &[SharedFile]) -> Vec<String> {
    if inputs.is_empty() {
        return Vec::new();
    }
    let Ok(record) = std::fs::read_to_string(slot_dir.join(RECORD)) else {
        return Vec::new();
    };
    inputs
        .iter()
        .filter(|f| {
            std::fs::symlink_metadata(app.join(&f.name))
                .is_ok_and(|m| m.is_file() && record.lines().any(|l| l == stamp(&f.name, f, &m)))
        })
        .map(|f| f.name.clone())
        .collect()
}

/// Puts every input in `app` read-only (copies unless already intact there)
/// and records what was placed.
pub fn place(blobs: &BlobStore, slot_dir: &Path, app: &Path, inputs: &[SharedFile]) -> Result<()> {
    if inputs.is_empty() {
        // The app dir was cleaned of earlier copies; an old record matches nothing.
        return Ok(());
    }
    let mut record = Vec::new();
    for f in inputs {
        // Checked on load already; checked again where it becomes a path.
        pesc_protocol::model::SharedFile::check_name(&f.name)
            .map_err(|e| anyhow::anyhow!("a shared file of the request: {e}"))?;
        let dest = app.join(&f.name);
        let fresh = std::fs::symlink_metadata(&dest).is_err();
        if fresh {
            std::fs::copy(blobs.path(&f.hash), &dest)
                .with_context(|| format!("placing shared file '{}'", f.name))?;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o444))?;
        }
        let m = std::fs::symlink_metadata(&dest)?;
        record.push(stamp(&f.name, f, &m));
    }
    std::fs::write(slot_dir.join(RECORD), record.join("\n"))?;
    Ok(())
}
