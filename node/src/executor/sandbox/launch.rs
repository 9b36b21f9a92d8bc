//! The sandbox launcher: `pesc __sandbox-exec SPEC` (started by the node,
//! never by users) turns itself into one attempt's program behind every wall
//! the spec asks for.
//!
//! It runs as a fresh, single-threaded process, so everything between its
//! `fork`s and the final `exec` is ordinary code. Three processes when the
//! run gets namespaces of its own:
//! - the *launcher* (the node's child, a process group of its own) makes the
//!   namespaces, forks the init, waits for it and ends the way the program
//!   ended, so the node sees the program's exit code or signal;
//! - the *init* (PID 1 of the run's PID namespace) builds the run's root
//!   (`/proc` of its own namespace included), forks the program, passes SIGTERM on to every process of the run, and
//!   when the program ends, ends — and the kernel kills whatever the program
//!   left behind, `setsid` and double-forked children included;
//! - the *program*: its limits, the slot's uid, no new privileges, Landlock,
//!   a clean environment, then `exec`.
//!
//! Without namespaces (an unprivileged node on a kernel that refuses user
//! namespaces) the launcher becomes the program directly.
//!
//! Standard input is the report pipe: a setup failure is written there as
//! one line and the launcher exits 125; the pipe closes unread when the
//! program starts (close-on-exec), which tells the node it started.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use super::spec::{APP_IN_RUN, LaunchSpec};
use super::start::{Start, failure_text};
use super::{landlock_rules, rootfs};

/// Exit code of a launcher that could not start the program.
pub const SETUP_FAILED: i32 = 125;

/// The report pipe (standard input when the launcher starts).
const REPORT_FD: i32 = 0;

/// Entry point: never returns.
pub fn main(spec_json: &OsStr) -> ! {
    let spec: LaunchSpec = match serde_json::from_slice(spec_json.as_bytes()) {
        Ok(s) => s,
        Err(e) => fail(REPORT_FD, &format!("unreadable sandbox spec: {e}")),
    };
    if spec.serve {
        super::slot_server::serve(&spec)
    } else if spec.namespaces {
        launcher(&spec)
    } else {
        start_program(&spec, &spec.app_dir, std::slice::from_ref(&spec.app_dir))
    }
}

/// Becomes the program (in `app`, writing only `writable`): its setup
/// failures go to the report pipe as text.
fn start_program(spec: &LaunchSpec, app: &Path, writable: &[PathBuf]) -> ! {
    let report = report_apart();
    let rules = if spec.landlock {
        match landlock_rules::ruleset(spec, writable) {
            Ok(fd) => Some(fd),
            Err(e) => fail(report, &e),
        }
    } else {
        None
    };
    let start = match Start::new(
        spec,
        app,
        rules.as_ref().map(|f| f.as_raw_fd()),
        None,
        report,
    ) {
        Ok(s) => s,
        Err(e) => fail(report, &e),
    };
    let (step, errno) = start.exec();
    fail(report, &failure_text(step, errno, start.name()))
}

/// Moves the report pipe (standard input) apart, close-on-exec, and puts
/// /dev/null on standard input: the pipe must close once the program has
/// started.
fn report_apart() -> i32 {
    // SAFETY: duplicating a descriptor we were given.
    let report = unsafe { libc::fcntl(REPORT_FD, libc::F_DUPFD_CLOEXEC, 3) };
    if report < 0 {
        fail(REPORT_FD, &errno_text("report pipe"));
    }
    quiet_stdin();
    report
}

/// Writes `msg` to the report pipe and exits with [`SETUP_FAILED`].
pub(super) fn fail(fd: i32, msg: &str) -> ! {
    let line = format!("{msg}\n");
    // SAFETY: writing a buffer we own to a file descriptor; then exiting
    // without running destructors (some processes here are forks).
    unsafe {
        libc::write(fd, line.as_ptr().cast(), line.len());
        libc::_exit(SETUP_FAILED)
    }
}

pub(super) fn errno_text(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// The launcher: namespaces, the init, and the program's ending mirrored.
fn launcher(spec: &LaunchSpec) -> ! {
    // SAFETY (whole function): plain system calls on values we own; this
    // process is single-threaded, so forking here is ordinary.
    unsafe {
        let (uid, gid) = (libc::getuid(), libc::getgid());
        let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC;
        if !spec.network {
            flags |= libc::CLONE_NEWNET;
        }
        if spec.user_namespace {
            flags |= libc::CLONE_NEWUSER;
        }
        if libc::unshare(flags) != 0 {
            fail(REPORT_FD, &errno_text("cannot make the run's namespaces"));
        }
        if spec.user_namespace
            && let Err(e) = map_ids(uid, gid)
        {
            fail(REPORT_FD, &e);
        }
        // The node stops a run with SIGTERM to this process group: the init
        // passes it on; the launcher stays to report how the program ended.
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::signal(sig, libc::SIG_IGN);
        }
        let mut status_pipe = [0i32; 2];
        if libc::pipe2(status_pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            fail(REPORT_FD, &errno_text("pipe"));
        }
        match libc::fork() {
            -1 => fail(REPORT_FD, &errno_text("cannot fork the run's init")),
            0 => {
                libc::close(status_pipe[0]);
                if let Err(e) = rootfs::build(spec) {
                    fail(REPORT_FD, &e);
                }
                init(spec, status_pipe[1])
            }
            init_pid => {
                libc::close(status_pipe[1]);
                quiet_stdin();
                let mut st = 0;
                while libc::waitpid(init_pid, &mut st, 0) < 0 {
                    if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                        break;
                    }
                }
                let mut raw = [0u8; 4];
                let got = libc::read(status_pipe[0], raw.as_mut_ptr().cast(), 4);
                let program_status = if got == 4 {
                    i32::from_ne_bytes(raw)
                } else {
                    // The init died before the program ended: killed with it.
                    st
                };
                mirror(program_status)
            }
        }
    }
}

/// Maps the node's uid and gid to themselves in the new user namespace.
pub(super) fn map_ids(uid: u32, gid: u32) -> Result<(), String> {
    let write = |path: &str, text: String| {
        std::fs::write(path, text).map_err(|e| format!("cannot write {path}: {e}"))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1"))
}

/// Standard input becomes /dev/null: the report pipe must close once the
/// program has started.
pub(super) fn quiet_stdin() {
    // SAFETY: opening /dev/null and moving it onto fd 0.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::dup2(fd, 0);
            libc::close(fd);
        }
    }
}

/// Ends this process the way the program ended (a wait status).
fn mirror(status: i32) -> ! {
    // SAFETY: resetting a signal's action and sending it to ourselves.
    unsafe {
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig)
        }
        libc::_exit(libc::WEXITSTATUS(status))
    }
}

/// The last stop signal the init received (0: none).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_signal(sig: i32) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

/// PID 1 of the run (its root already in place): starts the program,
/// passes stop signals on, reports the program's wait status on
/// `status_fd`; setup failures go to the report pipe.
fn init(spec: &LaunchSpec, status_fd: i32) -> ! {
    // SAFETY (whole function): system calls on values we own; this process
    // is single-threaded.
    unsafe {
        // Gone with the launcher (the node killed it): and with PID 1 gone,
        // the kernel kills every process of the run.
        // (Its parent is outside the PID namespace, so getppid() reads 0
        // and cannot tell whether the launcher died before this line.)
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = note_signal as *const () as usize;
        // No SA_RESTART: waitpid returns EINTR so the signal is passed on.
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
        let program_pid = match libc::fork() {
            -1 => fail(REPORT_FD, &errno_text("cannot fork the program")),
            0 => {
                for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                    libc::signal(sig, libc::SIG_DFL);
                }
                // A group of its own: the node's signals reach the init,
                // which decides what the run's processes get.
                libc::setpgid(0, 0);
                libc::close(status_fd);
                let writable = [APP_IN_RUN, "/tmp", "/dev/shm"].map(PathBuf::from);
                start_program(spec, Path::new(APP_IN_RUN), &writable)
            }
            p => p,
        };
        // Only the program's copy of the report pipe (standard input) may
        // keep it open: it closes on the program's exec, which tells the
        // node it started.
        quiet_stdin();
        loop {
            let mut st = 0;
            let pid = libc::waitpid(-1, &mut st, 0);
            if pid == program_pid {
                let raw = st.to_ne_bytes();
                libc::write(status_fd, raw.as_ptr().cast(), 4);
                // Returning from PID 1 takes every other process of the run.
                libc::_exit(0);
            }
            if pid < 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => {
                        let sig = STOP_SIGNAL.swap(0, Ordering::SeqCst);
                        if sig != 0 {
                            // Every process of the run but this one.
                            libc::kill(-1, sig);
                        }
                    }
                    _ => libc::_exit(SETUP_FAILED),
                }
            }
        }
    }
}
