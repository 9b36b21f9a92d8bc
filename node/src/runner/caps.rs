//! What a run may make the node store: the size and file count of its
//! `output/`, its logs, and the disk it leaves in its app dir (`[results]`
//! in node.toml). Measured when the run ends, never following a link; a run
//! over a limit fails with the limit named, and nothing of `output/` is
//! packed. While it runs, `file_size_mb` (sandbox) caps each file.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The limits (`[results]` in node.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ResultLimits {
    /// Bytes of files in `output/`, MiB (what the output archive holds).
    pub output_mb: u64,
    /// Files and folders in `output/`.
    pub output_files: u64,
    /// Each log (stdout, stderr), MiB: a longer one is cut there.
    pub log_mb: u64,
    /// Everything the run leaves in its app dir besides its shared files,
    /// MiB.
    pub disk_mb: u64,
}

impl Default for ResultLimits {
    fn default() -> Self {
        ResultLimits {
            output_mb: 4096,
            output_files: 100_000,
            log_mb: 1024,
            disk_mb: 16384,
        }
    }
}

const MIB: u64 = 1 << 20;

/// The app dir's use: bytes and entries of `output/`, bytes of the rest.
#[derive(Debug, Default)]
struct Use {
    output_bytes: u64,
    output_entries: u64,
    disk_bytes: u64,
}

/// Entries of an app dir walked at most (past them the run is over
/// `disk_mb` whatever their sizes).
const MAX_ENTRIES: u64 = 1_000_000;

/// Walks `app` without following links; stops counting once past the
/// limits (a run that made a million files costs no more than that).
/// Shared files are left out while they are still the node's own copies
/// (a run may replace one, but not with a file the node owns).
fn measure(l: &ResultLimits, app: &Path, inputs: &[String]) -> Use {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let node_uid = unsafe { libc::geteuid() };
    let mut u = Use::default();
    let is_input = |e: &walkdir::DirEntry| {
        e.depth() == 1
            && inputs.iter().any(|n| e.file_name() == n.as_str())
            && e.metadata().is_ok_and(|m| m.uid() == node_uid)
    };
    let walk = walkdir::WalkDir::new(app)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !is_input(e));
    let mut seen = 0u64;
    for e in walk.flatten() {
        seen += 1;
        if seen > MAX_ENTRIES || u.disk_bytes > l.disk_mb * MIB {
            u.disk_bytes = u.disk_bytes.max(l.disk_mb * MIB + 1);
            break;
        }
        let in_output = e
            .path()
            .strip_prefix(app)
            .is_ok_and(|r| r.starts_with("output") && r != Path::new("output"));
        let len = if e.file_type().is_file() {
            e.metadata().map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
        u.disk_bytes += len;
        if in_output {
            u.output_entries += 1;
            u.output_bytes += len;
            if u.output_entries > l.output_files {
                break;
            }
        }
    }
    u
}

/// The first limit the attempt went over, in words (logs over `log_mb`
/// are cut to it). `inputs`: the shared files placed in the app dir.
pub fn over_limits(
    l: &ResultLimits,
    app: &Path,
    inputs: &[String],
    logs: [&Path; 2],
) -> Option<String> {
    let mut why = None;
    for log in logs {
        let Ok(m) = std::fs::symlink_metadata(log) else {
            continue;
        };
        if m.is_file() && m.len() > l.log_mb * MIB {
            let cut = std::fs::OpenOptions::new()
                .write(true)
                .open(log)
                .and_then(|f| f.set_len(l.log_mb * MIB));
            if let Err(e) = cut {
                tracing::warn!("cutting {}: {e}", log.display());
            }
            let name = log.file_name().map(|n| n.to_string_lossy().into_owned());
            why.get_or_insert(format!(
                "its {} went over log_mb = {} MiB ([results] in node.toml): cut there",
                name.unwrap_or_default(),
                l.log_mb
            ));
        }
    }
    let u = measure(l, app, inputs);
    if u.output_entries > l.output_files {
        return Some(format!(
            "output/ holds more than output_files = {} files ([results] in node.toml): nothing of it was kept",
            l.output_files
        ));
    }
    if u.output_bytes > l.output_mb * MIB {
        return Some(format!(
            "output/ holds {} MiB, over output_mb = {} MiB ([results] in node.toml): nothing of it was kept",
            u.output_bytes / MIB,
            l.output_mb
        ));
    }
    if u.disk_bytes > l.disk_mb * MIB {
        return Some(format!(
            "the run left more than disk_mb = {} MiB (or {MAX_ENTRIES} files) in its app dir ([results] in node.toml)",
            l.disk_mb
        ));
    }
    why
}
