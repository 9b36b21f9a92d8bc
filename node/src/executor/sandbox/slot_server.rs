//! A slot's sandbox server (`pesc-sandbox` with a spec whose `serve` is
//! set): started once per slot, it becomes PID 1 of the slot's own PID
//! namespace, with the slot's own mount, network and IPC namespaces (and a
//! user namespace when the node is not root), builds the run's root around
//! the slot's app dir once, and then starts each attempt of the slot by
//! forking — no launcher to `exec`, no root or namespace to build per run,
//! which is what keeps a sandboxed run nearly as cheap as a plain one.
//!
//! Protocol, one line each way (requests on standard input, answers on
//! standard output):
//! - on start: `server PID` (the server's host pid, from the launcher that
//!   made its namespaces), then `ready`;
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
use std::path::Path;

use super::launch::{errno_text, map_ids, program, quiet_stdin};
use super::rootfs;
use super::spec::{APP_IN_RUN, LaunchSpec};

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

/// PID 1 of the slot: builds the root, then one run per spec line.
fn server(base: &LaunchSpec, slot_fd: i32) -> ! {
    // SAFETY: prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if let Err(e) = rootfs::build(base) {
        die(&e);
    }
    // Every run of the slot gets the same Landlock ruleset: built once.
    let rules = if base.landlock {
        let writable: Vec<std::path::PathBuf> = [APP_IN_RUN, "/tmp", "/dev/shm"]
            .iter()
            .map(Into::into)
            .collect();
        match super::landlock_rules::ruleset(base, &writable) {
            Ok(r) => Some(r),
            Err(e) => die(&e),
        }
    } else {
        None
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
                // The prepared ruleset fits runs that use no extra device.
                let rules = rules.as_ref().filter(|_| spec.devices == base.devices);
                run_one(&spec, slot_fd, rules);
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

fn open_dir(p: &Path) -> Result<i32, String> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| "bad slot dir".to_string())?;
    // SAFETY: opening a directory by a path we own.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(errno_text(&format!("cannot open {}", p.display())));
    }
    Ok(fd)
}

/// Opens one of the slot's log files (the node made it empty before asking
/// for the run, so a follower never reads the previous run's), never
/// through a link.
fn open_log(slot_fd: i32, name: &str) -> Result<i32, String> {
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
    Ok(fd)
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

/// Starts one attempt and answers for it.
fn run_one(spec: &LaunchSpec, slot_fd: i32, rules: Option<&landlock::RulesetCreated>) {
    let setup = || -> Result<(i32, i32, [i32; 2]), String> {
        let out = open_log(slot_fd, LOGS[0])?;
        let err = open_log(slot_fd, LOGS[1])?;
        let mut report = [0i32; 2];
        // SAFETY: pipe2 into an array we own.
        if unsafe { libc::pipe2(report.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(errno_text("pipe"));
        }
        Ok((out, err, report))
    };
    let (out, err, report) = match setup() {
        Ok(x) => x,
        Err(e) => return answer(&format!("error {e}")),
    };
    // SAFETY (the rest): fork of this single-threaded process, and plain
    // system calls on descriptors we own.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            // The program: the node's signals reach the server, which
            // decides what the run's processes get.
            for sig in [libc::SIGTERM, libc::SIGUSR1, libc::SIGINT, libc::SIGHUP] {
                libc::signal(sig, libc::SIG_DFL);
            }
            libc::setpgid(0, 0);
            libc::close(report[0]);
            libc::dup2(out, 1);
            libc::dup2(err, 2);
            quiet_stdin();
            let e = program(spec, Path::new(APP_IN_RUN), report[1], rules);
            super::launch::fail(report[1], &e)
        }
        for fd in [out, err, report[1]] {
            libc::close(fd);
        }
        if pid < 0 {
            libc::close(report[0]);
            return answer(&format!("error {}", errno_text("cannot fork the program")));
        }
        // The report pipe closes unread when the program has exec'd.
        let msg = drain(report[0]);
        libc::close(report[0]);
        let mut st = 0;
        if !msg.is_empty() {
            libc::waitpid(pid, &mut st, 0);
            let text = String::from_utf8_lossy(&msg).replace('\n', " ");
            return answer(&format!("error {}", text.trim()));
        }
        answer("started");
        while libc::waitpid(pid, &mut st, 0) < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
        answer(&format!("exit {st}"));
    }
}
