//! A slot's sandbox server (`pesc-sandbox` with a spec whose `serve` is
//! set): started once per slot, it makes the slot's mount and network
//! namespaces (and a user namespace when the node is not root), builds the
//! run's root around the slot's app dir, and then starts each attempt of the
//! slot by forking — no launcher to `exec` and no root to build per run,
//! which is what keeps a sandboxed run nearly as cheap as a plain one.
//!
//! Protocol, one line each way (requests on standard input, answers on
//! standard output):
//! - node: a [`LaunchSpec`] as JSON (the attempt: argv, environment, uid,
//!   limits, devices); its logs are `stdout` and `stderr` in the slot dir;
//! - server: `started PID` (the run's init, a host pid the node signals to
//!   stop it) or `error TEXT`; then `exit STATUS` (the program's wait status)
//!   or `error TEXT`.
//!
//! Each attempt gets its own PID namespace and `/proc`; `/tmp`, `/dev/shm`
//! and the slot's System V IPC objects are emptied between runs (one run
//! at a time per slot). It is the same init and program code as the per-run
//! launcher's. The server ends when its standard input closes (the node
//! stopped or died).

use std::ffi::CString;
use std::io::{BufRead, Write};
use std::path::Path;

use super::launch::{errno_text, init, map_ids, quiet_stdin};
use super::rootfs;
use super::spec::LaunchSpec;

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

/// Serves the slot whose app dir is `base.app_dir` until standard input closes.
pub fn serve(base: &LaunchSpec) -> ! {
    // Gone with the node (kill -9 included): its runs' inits then die with
    // this server, and their PID namespaces with them.
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
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC;
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
    if let Err(e) = rootfs::build(base, false) {
        die(&e);
    }
    // Every run of the slot gets the same Landlock ruleset: built once.
    let rules = if base.landlock {
        let writable: Vec<std::path::PathBuf> = ["/app", "/tmp", "/dev/shm"]
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
    answer("ready");
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<LaunchSpec>(&line) {
            Ok(spec) => {
                // The prepared ruleset fits runs that use no extra device.
                let rules = rules.as_ref().filter(|_| spec.devices == base.devices);
                run_one(&spec, slot_fd, rules);
                rootfs::empty(Path::new("/tmp"));
                rootfs::empty(Path::new("/dev/shm"));
            }
            Err(e) => answer(&format!("error unreadable spec: {e}")),
        }
    }
    // SAFETY: exiting without destructors.
    unsafe { libc::_exit(0) }
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

fn pipe() -> Result<[i32; 2], String> {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 into an array we own.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(errno_text("pipe"));
    }
    Ok(p)
}

/// Starts one attempt and answers for it.
fn run_one(spec: &LaunchSpec, slot_fd: i32, rules: Option<&landlock::RulesetCreated>) {
    /// (stdout, stderr), the report pipe, the status pipe.
    type Fds = ([i32; 2], [i32; 2], [i32; 2]);
    let setup = || -> Result<Fds, String> {
        let out = open_log(slot_fd, LOGS[0])?;
        let err = open_log(slot_fd, LOGS[1])?;
        Ok(([out, err], pipe()?, pipe()?))
    };
    let ([out, err], report, status) = match setup() {
        Ok(x) => x,
        Err(e) => return answer(&format!("error {e}")),
    };
    // SAFETY (the rest): fork-like clone of this single-threaded process,
    // and plain system calls on descriptors we own.
    unsafe {
        let flags = libc::CLONE_NEWPID | libc::SIGCHLD;
        let pid = libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        ) as i32;
        if pid == 0 {
            // The run's init: its logs as standard output and error, a
            // fresh /proc, /tmp and /dev/shm, then the program.
            libc::close(report[0]);
            libc::close(status[0]);
            libc::dup2(out, 1);
            libc::dup2(err, 2);
            quiet_stdin();
            if let Err(e) = rootfs::refresh() {
                super::launch::fail(report[1], &e);
            }
            rootfs::clear_sysv_ipc();
            init(spec, status[1], report[1], rules);
        }
        for fd in [out, err, report[1], status[1]] {
            libc::close(fd);
        }
        if pid < 0 {
            libc::close(report[0]);
            libc::close(status[0]);
            return answer(&format!(
                "error {}",
                errno_text("cannot start the run's init")
            ));
        }
        // The report pipe closes unread when the program has exec'd.
        let msg = drain(report[0]);
        libc::close(report[0]);
        if !msg.is_empty() {
            let mut st = 0;
            libc::waitpid(pid, &mut st, 0);
            libc::close(status[0]);
            let text = String::from_utf8_lossy(&msg).replace('\n', " ");
            return answer(&format!("error {}", text.trim()));
        }
        answer(&format!("started {pid}"));
        let mut st = 0;
        while libc::waitpid(pid, &mut st, 0) < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
        let raw = drain(status[0]);
        libc::close(status[0]);
        let program_status = match <[u8; 4]>::try_from(raw.as_slice()) {
            Ok(b) => i32::from_ne_bytes(b),
            // The init was killed (a stop): the program went with it.
            Err(_) => st,
        };
        answer(&format!("exit {program_status}"));
    }
}
