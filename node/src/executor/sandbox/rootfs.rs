//! The run's own root, built by its init inside a fresh mount namespace: the
//! system paths it may read (bound from the host), its app dir at `/app`,
//! private `/tmp` and `/dev/shm`, a `/dev` holding only the devices it may
//! use, a `/proc` of its own PID namespace — and nothing else: no data dir,
//! no home directories, no other slot, no `/run` with the host's sockets.
//!
//! Sources are opened before anything is mounted (a host path under `/tmp`
//! would otherwise be hidden by the new root), then bound through
//! `/proc/self/fd`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::spec::{APP_IN_RUN, LaunchSpec};

/// Where the new root is assembled (inside the run's mount namespace only).
const BASE: &str = "/tmp";

enum Source {
    /// An open `O_PATH` descriptor of a directory or file to bind.
    Bind { fd: i32, dir: bool },
    /// A symbolic link to recreate (merged-/usr systems: /bin -> usr/bin).
    Link(PathBuf),
}

fn c(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("bad path {}", p.display()))
}

fn os_err(what: String) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn open_source(p: &Path) -> Result<Option<Source>, String> {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return Ok(None);
    };
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(p).map_err(|e| format!("{}: {e}", p.display()))?;
        return Ok(Some(Source::Link(target)));
    }
    let cp = c(p)?;
    // SAFETY: opening a path we own the name of.
    let fd = unsafe { libc::open(cp.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os_err(format!("cannot open {}", p.display())));
    }
    Ok(Some(Source::Bind {
        fd,
        dir: meta.is_dir(),
    }))
}

fn mount(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let cs = src.map(|s| CString::new(s).unwrap_or_default());
    let ct = c(target)?;
    let cf = fstype.map(|s| CString::new(s).unwrap_or_default());
    let cd = data.map(|s| CString::new(s).unwrap_or_default());
    let ptr = |o: &Option<CString>| o.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: mount(2) with NUL-terminated strings we own.
    let r = unsafe {
        libc::mount(
            ptr(&cs),
            ct.as_ptr(),
            ptr(&cf),
            flags,
            ptr(&cd).cast::<libc::c_void>(),
        )
    };
    if r != 0 {
        return Err(os_err(format!(
            "cannot mount {} on {}",
            src.or(fstype).unwrap_or("-"),
            target.display()
        )));
    }
    Ok(())
}

/// Binds an opened source at `target` (created as a directory or an empty
/// file), read-only where the kernel lets us.
fn bind(fd: i32, dir: bool, target: &Path, read_only: bool) -> Result<(), String> {
    if dir {
        std::fs::create_dir_all(target).map_err(|e| format!("{}: {e}", target.display()))?;
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(target, b"").map_err(|e| format!("{}: {e}", target.display()))?;
    }
    let src = format!("/proc/self/fd/{fd}");
    mount(Some(&src), target, None, libc::MS_BIND | libc::MS_REC, None)?;
    if read_only {
        // Landlock keeps these read-only in any case; where the bind can be
        // made read-only too (not always in a user namespace, whose mounts
        // keep the flags they were locked with), it is.
        let _ = mount(
            None,
            target,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID,
            None,
        );
    }
    Ok(())
}

fn inside(base: &Path, p: &Path) -> PathBuf {
    base.join(p.strip_prefix("/").unwrap_or(p))
}

/// Builds the root and enters it (`pivot_root`), with the working directory
/// at `/`. Called by PID 1 of the namespace whose processes `/proc` shows.
pub fn build(spec: &LaunchSpec) -> Result<(), String> {
    // Nothing mounted here may reach the host's mount table.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    let app = match open_source(&spec.app_dir)? {
        Some(Source::Bind { fd, dir: true }) => fd,
        _ => return Err(format!("{} is not a directory", spec.app_dir.display())),
    };
    let mut system = Vec::new();
    for p in &spec.read_paths {
        if let Some(s) = open_source(p)? {
            system.push((p.clone(), s));
        }
    }
    let mut devices = Vec::new();
    for d in &spec.devices {
        if let Some(Source::Bind { fd, dir: false }) = open_source(d)? {
            devices.push((d.clone(), fd));
        }
    }
    let base = Path::new(BASE);
    mount(
        Some("pesc-root"),
        base,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755,size=1m"),
    )?;
    for (p, s) in &system {
        let target = inside(base, p);
        match s {
            Source::Bind { fd, dir } => bind(*fd, *dir, &target, true)?,
            Source::Link(to) => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| format!("{}: {e}", parent.display()))?;
                }
                std::os::unix::fs::symlink(to, &target)
                    .map_err(|e| format!("{}: {e}", target.display()))?;
            }
        }
    }
    bind(app, true, &inside(base, Path::new(APP_IN_RUN)), false)?;
    let tmp_opts = format!("mode=1777,size={}m", spec.tmp_mb.max(1));
    let tmp = inside(base, Path::new("/tmp"));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    mount(
        Some("pesc-tmp"),
        &tmp,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&tmp_opts),
    )?;
    build_dev(base, &devices, &tmp_opts)?;
    let proc_dir = inside(base, Path::new("/proc"));
    std::fs::create_dir_all(&proc_dir).map_err(|e| format!("{}: {e}", proc_dir.display()))?;
    mount_proc(&proc_dir)?;
    enter(base)
}

fn mount_proc(at: &Path) -> Result<(), String> {
    mount(
        Some("proc"),
        at,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
}

/// Removes everything inside `dir` (links themselves, never followed).
pub fn empty(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = match e.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
                _ => std::fs::remove_file(&p),
            };
        }
    }
}

/// Removes every System V message queue, semaphore set and shared memory
/// segment of this IPC namespace (a slot's runs share one, one at a time:
/// nothing a run leaves there reaches the next).
pub fn clear_sysv_ipc() {
    for (file, kind) in [
        ("/proc/sysvipc/shm", 0),
        ("/proc/sysvipc/sem", 1),
        ("/proc/sysvipc/msg", 2),
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for id in text
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<i32>().ok())
        {
            // SAFETY: removing IPC objects by id; errors (gone) are fine.
            unsafe {
                match kind {
                    0 => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                    1 => libc::semctl(id, 0, libc::IPC_RMID),
                    _ => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                };
            }
        }
    }
}
/// `/dev`: the allowed device files bound from the host, the usual links,
/// and a private `/dev/shm`.
fn build_dev(base: &Path, devices: &[(PathBuf, i32)], tmp_opts: &str) -> Result<(), String> {
    let dev = inside(base, Path::new("/dev"));
    std::fs::create_dir_all(&dev).map_err(|e| format!("{}: {e}", dev.display()))?;
    mount(
        Some("pesc-dev"),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )?;
    for (path, fd) in devices {
        bind(*fd, false, &inside(base, path), false)?;
    }
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(name)).map_err(|e| format!("/dev/{name}: {e}"))?;
    }
    let shm = dev.join("shm");
    std::fs::create_dir(&shm).map_err(|e| format!("/dev/shm: {e}"))?;
    mount(
        Some("pesc-shm"),
        &shm,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(tmp_opts),
    )
}

/// Makes `base` the root and drops the old one.
fn enter(base: &Path) -> Result<(), String> {
    let cb = c(base)?;
    // SAFETY: chdir/pivot_root/umount2 on paths we own; "." twice is the
    // documented way to pivot without a directory for the old root.
    unsafe {
        if libc::chdir(cb.as_ptr()) != 0 {
            return Err(os_err("cannot enter the run's root".into()));
        }
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0 {
            return Err(os_err("pivot_root".into()));
        }
        if libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(os_err("cannot drop the host's root".into()));
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Err(os_err("chdir /".into()));
        }
    }
    // The root itself: read-only, so a run can add nothing beside /app and /tmp.
    let _ = mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    );
    Ok(())
}
