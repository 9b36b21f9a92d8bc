//! The data dir is the node's alone: 0700, its files 0600 (keys, tokens,
//! the store, blobs), and a node refuses one that others can write.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Makes `dir` (creating it) private to the node's user, and everything the
/// node creates from now on too (umask 077). Refuses a dir that another user
/// owns or that others may write: they could swap the node's keys.
pub fn secure(dir: &Path) -> Result<()> {
    // SAFETY: umask only sets this process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the data dir {}", dir.display()))?;
    let m = std::fs::symlink_metadata(dir)
        .with_context(|| format!("reading the data dir {}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !m.is_dir() {
        bail!(
            "the data dir {} is not a directory (a link?): give the node a real directory",
            dir.display()
        );
    }
    if m.uid() != me {
        bail!(
            "the data dir {} belongs to uid {}, not to this node's user (uid {me}): run `chown -R {me} {}` or pick another --data-dir",
            dir.display(),
            m.uid(),
            dir.display()
        );
    }
    if m.mode() & 0o022 != 0 {
        bail!(
            "others can write the data dir {} (mode {:o}): run `chmod 700 {}` and start again",
            dir.display(),
            m.mode() & 0o777,
            dir.display()
        );
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    // Files of earlier versions, made before the umask.
    for e in std::fs::read_dir(dir)?.flatten() {
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        let mode = if m.is_dir() {
            0o700
        } else if m.is_file() {
            0o600
        } else {
            continue;
        };
        if m.mode() & 0o777 != mode {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("making {} private", e.path().display()))?;
        }
    }
    Ok(())
}
