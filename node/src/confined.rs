//! Reading what a run leaves behind. Its progress file, `output/`,
//! `checkpoint/` and logs are written by user code: the node opens them
//! without following links, never outside the attempt's directory, and never
//! blocks on a FIFO, socket or device a run put there.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A directory a run filled, opened once (never through a link) to read
/// files beneath it.
pub struct Beneath {
    root: File,
    path: std::path::PathBuf,
}

impl Beneath {
    /// Opens `root`; `Ok(None)` when it is missing or not a real directory.
    pub fn open(root: &Path) -> io::Result<Option<Beneath>> {
        match open_dir_nofollow(root) {
            Ok(f) => Ok(Some(Beneath {
                root: f,
                path: root.to_path_buf(),
            })),
            Err(e) if refused(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens `rel` beneath the root for reading, refusing any link on the
    /// way and any path that leaves the root (`openat2` with
    /// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), without blocking.
    /// `Ok(None)`: nothing there the node may read (missing, a link, not a
    /// regular file).
    pub fn file(&self, rel: &Path) -> io::Result<Option<File>> {
        let c = CString::new(rel.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        // SAFETY: open_how is plain integers; zero is a valid value of each.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
        use std::os::fd::AsRawFd;
        // SAFETY: openat2 with a struct we own and its exact size.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOSYS) {
                // A kernel before 5.6: the last component at least.
                return open_regular(&self.path.join(rel));
            }
            return if refused(&e) { Ok(None) } else { Err(e) };
        }
        // SAFETY: a descriptor we just opened and own.
        let f = File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        regular_only(f)
    }
}

/// Opens `rel` beneath the directory `root` (see [`Beneath::file`]).
pub fn open_beneath(root: &Path, rel: &Path) -> io::Result<Option<File>> {
    match Beneath::open(root)? {
        Some(b) => b.file(rel),
        None => Ok(None),
    }
}

/// Opens `path` for reading if its last component is a regular file and
/// not a link; never blocks.
pub fn open_regular(path: &Path) -> io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => regular_only(f),
        Err(e) if refused(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn open_dir_nofollow(p: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(p)
}

/// Errors that mean "nothing the node may read here".
fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT)
            | Some(libc::ELOOP)
            | Some(libc::EXDEV)
            | Some(libc::ENOTDIR)
            | Some(libc::ENXIO)
            | Some(libc::EACCES)
            | Some(libc::EPERM)
    )
}

fn regular_only(f: File) -> io::Result<Option<File>> {
    if !f.metadata()?.is_file() {
        return Ok(None);
    }
    Ok(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_fifos_and_escapes_are_not_opened() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("app");
        std::fs::create_dir(&root).unwrap();
        let secret = d.path().join("secret");
        std::fs::write(&secret, "token").unwrap();
        std::fs::write(root.join("ok.txt"), "fine").unwrap();
        std::os::unix::fs::symlink(&secret, root.join("link")).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink(d.path(), root.join("up")).unwrap();
        let fifo = CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a path we own.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        let read = |rel: &str| {
            open_beneath(&root, Path::new(rel))
                .unwrap()
                .map(|f| std::io::read_to_string(f).unwrap())
        };
        assert_eq!(read("ok.txt").as_deref(), Some("fine"));
        assert_eq!(read("link"), None);
        assert_eq!(read("up/secret"), None);
        assert_eq!(read("../secret"), None);
        assert_eq!(read("fifo"), None, "a FIFO is skipped without blocking");
        assert_eq!(read("missing"), None);
        assert!(open_regular(&root.join("link")).unwrap().is_none());
        assert!(open_regular(&root.join("fifo")).unwrap().is_none());
        // A root that is itself a link is refused.
        let alias = d.path().join("alias");
        std::os::unix::fs::symlink(&root, &alias).unwrap();
        assert!(open_beneath(&alias, Path::new("ok.txt")).unwrap().is_none());
    }
}
