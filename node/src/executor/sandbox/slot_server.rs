//! A slot's sandbox server (`pesc-sandbox` with a spec whose `serve` is
//! set): started once per slot, it becomes PID 1 of the slot's own PID
//! namespace, with the slot's own mount, network and IPC namespaces (and a
//! user namespace when the node is not root), builds the run's root around
//! the slot's app dir once, and then starts each attempt of the slot by
//! a `vfork`-style clone ([`super::start`]) — no launcher to `exec`, no root
//! or namespace to build, no page tables to copy per run,
//! which is what keeps a sandboxed run nearly as cheap as a plain one.
//!
//! Protocol, one line each way (requests on standard input, answers on
//! standard output):
//! - on start: `server PID` (the server's host pid, from the launcher that
//!   made its namespaces) and `ready` (from the server), in either order;
//! - node: a [`LaunchSpec`] as JSON (the attempt: argv, environment, uid,
//!   limits, devices); its logs are `stdout` and `stderr` in the slot dir;
//! - server: `started` or `error TEXT`; then `exit STATUS` (the program's
//!   wait status) or `error TEXT`.
//!
//! Stopping a run is by signal to the server: SIGTERM passes SIGTERM to
//! every process of the slot, SIGUSR1 kills them all. When the program ends
//! the server, as PID 1, kills whatever it left behind (`setsid` and
//! double-forked children included), empties `/tmp`, `/dev/shm` and the
//! slot's System V IPC objects: nothing a run leaves reaches the next. The
//! server ends when its standard input closes or the node dies.

use std::ffi::CString;
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::launch::{errno_text, map_ids};
use super::rootfs;
use super::spec::{APP_IN_RUN, LaunchSpec};
use super::start::{Start, Streams, report_text};

/// Log files of the attempt running in the slot, in the slot dir.
const LOGS: [&str; 2] = ["stdout", "stderr"];

fn answer(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn die(msg: &str) -> ! {
    eprintln!("pesc-sandbox: {msg}");
    // SAFETY: exiting without destructors.
    unsafe { libc::_exit(super::launch::SETUP_FAILED) }
}

/// SIGTERM: pass it to every process of the slot. SIGUSR1: kill them all.
extern "C" fn pass_on(sig: i32) {
    let to = if sig == libc::SIGUSR1 {
        libc::SIGKILL
    } else {
        sig
    };
    // SAFETY: kill is async-signal-safe; -1 from PID 1 is every other
    // process of its namespace.
    unsafe {
        libc::kill(-1, to);
    }
}

/// Serves the slot whose app dir is `base.app_dir` until standard input closes.
pub fn serve(base: &LaunchSpec) -> ! {
    // SAFETY: prctl on this process; getppid has no preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() == 1 {
            libc::_exit(0);
        }
    }
    let slot_dir = match base.app_dir.parent() {
        Some(p) => p.to_path_buf(),
        None => die("the app dir has no slot dir"),
    };
    // Opened before the root changes: the logs live there.
    let slot_fd = match open_dir(&slot_dir) {
        Ok(fd) => fd,
        Err(e) => die(&e),
    };
    // SAFETY: ids of this process.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWPID;
    if !base.network {
        flags |= libc::CLONE_NEWNET;
    }
    if base.user_namespace {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare on this single-threaded process.
    if unsafe { libc::unshare(flags) } != 0 {
        die(&errno_text("cannot make the slot's namespaces"));
    }
    if base.user_namespace
        && let Err(e) = map_ids(uid, gid)
    {
        die(&e);
    }
    // The server proper is PID 1 of the new PID namespace; this process
    // stays to say its host pid and to end when it ends (the node's
    // parent-death signal reaches it, and through it the server).
    // SAFETY: fork of this single-threaded process.
    match unsafe { libc::fork() } {
        -1 => die(&errno_text("cannot fork the slot's server")),
        0 => server(base, slot_fd),
        pid => {
            answer(&format!("server {pid}"));
            let mut st = 0;
            // SAFETY: waiting for our child.
            unsafe {
                while libc::waitpid(pid, &mut st, 0) < 0
                    && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
                {
                }
                libc::_exit(0)
            }
        }
    }
}

/// What every run of the slot shares, made once.
struct Slot {
    /// The slot dir (its logs live there), opened before the root changed.
    dir: OwnedFd,
    /// /dev/null, the runs' standard input.
    null: OwnedFd,
    /// The runs' Landlock ruleset (absent without Landlock).
    rules: Option<OwnedFd>,
    /// The devices `rules` allows.
    devices: Vec<std::path::PathBuf>,
}

/// Where a run may write, in its own root.
fn writable() -> Vec<std::path::PathBuf> {
    [APP_IN_RUN, "/tmp", "/dev/shm"].map(Into::into).to_vec()
}

/// PID 1 of the slot: builds the root, then one run per spec line.
fn server(base: &LaunchSpec, dir: OwnedFd) -> ! {
    // SAFETY: prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if let Err(e) = rootfs::build(base) {
        die(&e);
    }
    let null = match std::fs::File::open("/dev/null") {
        Ok(f) => OwnedFd::from(f),
        Err(e) => die(&format!("/dev/null: {e}")),
    };
    // Every run of the slot gets the same Landlock ruleset: built once.
    let rules = if base.landlock {
        match super::landlock_rules::ruleset(base, &writable()) {
            Ok(r) => Some(r),
            Err(e) => die(&e),
        }
    } else {
        None
    };
    let slot = Slot {
        dir,
        null,
        rules,
        devices: base.devices.clone(),
    };
    // SAFETY: installing async-signal-safe handlers (SA_RESTART: reads and
    // waits go on).
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = pass_on as *const () as usize;
        act.sa_flags = libc::SA_RESTART;
        for sig in [libc::SIGTERM, libc::SIGUSR1, libc::SIGINT, libc::SIGHUP] {
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
    answer("ready");
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<LaunchSpec>(&line) {
            Ok(spec) => {
                run_one(&spec, &slot);
                clean_up();
            }
            Err(e) => answer(&format!("error unreadable spec: {e}")),
        }
    }
    clean_up();
    // SAFETY: exiting without destructors.
    unsafe { libc::_exit(0) }
}

/// After a run: every process it left is killed and reaped, its files in
/// `/tmp` and `/dev/shm` and its System V IPC objects removed.
fn clean_up() {
    // SAFETY: kill -1 from PID 1 (every other process of the namespace),
    // then reaping them; SIGKILL cannot be ignored, so this ends.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        let mut st = 0;
        loop {
            let r = libc::waitpid(-1, &mut st, 0);
            if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
    }
    rootfs::empty(Path::new("/tmp"));
    rootfs::empty(Path::new("/dev/shm"));
    rootfs::clear_sysv_ipc();
}

fn open_dir(p: &Path) -> Result<OwnedFd, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(p)
        .map(OwnedFd::from)
        .map_err(|e| format!("cannot open {}: {e}", p.display()))
}

/// Opens one of the slot's log files (the node made it empty before asking
/// for the run, so a follower never reads the previous run's), never
/// through a link.
fn open_log(slot_fd: i32, name: &str) -> Result<OwnedFd, String> {
    let c = CString::new(name).map_err(|_| "bad log name".to_string())?;
    // SAFETY: openat relative to a directory we hold.
    let fd = unsafe {
        libc::openat(
            slot_fd,
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(errno_text(&format!("cannot open the {name} log")));
    }
    // SAFETY: a descriptor we just opened and own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads a pipe to its end.
fn drain(fd: i32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reading into a buffer we own.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            out.extend_from_slice(&buf[..n as usize]);
        } else if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        } else {
            return out;
        }
    }
}

/// Starts one attempt and answers for it; `rules`: the slot's Landlock
/// ruleset (a run with other devices gets one of its own).
fn run_one(spec: &LaunchSpec, slot: &Slot) {
    let own_rules;
    let rules = match (&slot.rules, spec.landlock) {
        (_, false) => None,
        (Some(r), true) if spec.devices == slot.devices => Some(r.as_raw_fd()),
        _ => match super::landlock_rules::ruleset(spec, &writable()) {
            Ok(fd) => {
                own_rules = fd;
                Some(own_rules.as_raw_fd())
            }
            Err(e) => return answer(&format!("error {e}")),
        },
    };
    let setup = || -> Result<(OwnedFd, OwnedFd, OwnedFd, OwnedFd), String> {
        let out = open_log(slot.dir.as_raw_fd(), LOGS[0])?;
        let err = open_log(slot.dir.as_raw_fd(), LOGS[1])?;
        let (r, w) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
        Ok((out, err, r.into(), w.into()))
    };
    let (out, err, report_r, report_w) = match setup() {
        Ok(x) => x,
        Err(e) => return answer(&format!("error {e}")),
    };
    let streams = Streams {
        stdin: slot.null.as_raw_fd(),
        stdout: out.as_raw_fd(),
        stderr: err.as_raw_fd(),
    };
    let app = Path::new(APP_IN_RUN);
    let start = match Start::new(spec, app, rules, Some(streams), report_w.as_raw_fd()) {
        Ok(s) => s,
        Err(e) => return answer(&format!("error {e}")),
    };
    // Back here once the program has exec'd or given up.
    let spawned = start.spawn();
    drop((out, err, report_w));
    let pid = match spawned {
        Ok(p) => p,
        Err(e) => return answer(&format!("error {e}")),
    };
    let msg = drain(report_r.as_raw_fd());
    let mut st = 0;
    // SAFETY (the rest): waiting for our own child.
    unsafe {
        if !msg.is_empty() {
            libc::waitpid(pid, &mut st, 0);
            let text = report_text(&msg, start.name())
                .unwrap_or_else(|| String::from_utf8_lossy(&msg).replace('\n', " "));
            return answer(&format!("error {}", text.trim()));
        }
        answer("started");
        while libc::waitpid(pid, &mut st, 0) < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
    answer(&format!("exit {st}"));
}
