//! Wakes when a file is written (Linux inotify), so a followed log reaches
//! its reader as it grows instead of at the next poll.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tokio::io::unix::AsyncFd;

/// Writes to one file, as a stream of wake-ups.
pub struct FileWatch {
    fd: AsyncFd<OwnedFd>,
}

impl FileWatch {
    /// Watches `path` (which must exist) for writes, closes after writing,
    /// and its removal.
    pub fn new(path: &Path) -> io::Result<FileWatch> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: inotify_init1 takes flags only; the descriptor it returns
        // is owned by `fd` from here on.
        let fd = unsafe {
            let raw = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(raw)
        };
        let mask = libc::IN_MODIFY | libc::IN_CLOSE_WRITE | libc::IN_DELETE_SELF;
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is open, owned by the AsyncFd from here on, and
        // always names the same inotify instance.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(FileWatch { fd })
    }

    /// Waits until the file changed since the last call (every event
    /// waiting is taken at once: one wake-up for a burst of writes).
    pub async fn changed(&self) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            let mut ready = self.fd.readable().await?;
            let read = ready.try_io(|fd| {
                // SAFETY: reads at most `buf.len()` bytes into `buf`.
                let n = unsafe {
                    libc::read(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast::<libc::c_void>(),
                        buf.len(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n)
                }
            });
            match read {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    #[tokio::test]
    async fn a_write_to_the_file_wakes_the_watch_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let mut f = std::fs::File::create(&path).unwrap();
        let w = FileWatch::new(&path).unwrap();
        // Nothing written: no wake-up.
        let quiet = tokio::time::timeout(Duration::from_millis(300), w.changed()).await;
        assert!(quiet.is_err(), "woke without a write");
        // Another file in the same directory is not this one.
        std::fs::write(dir.path().join("stderr"), b"other").unwrap();
        let other = tokio::time::timeout(Duration::from_millis(300), w.changed()).await;
        assert!(other.is_err(), "woke for another file");
        f.write_all(b"tick 1\n").unwrap();
        tokio::time::timeout(Duration::from_secs(10), w.changed())
            .await
            .expect("a write wakes the watch")
            .unwrap();
    }

    #[test]
    fn a_missing_file_cannot_be_watched() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _g = rt.enter();
        assert!(FileWatch::new(&dir.path().join("nope")).is_err());
    }
}
