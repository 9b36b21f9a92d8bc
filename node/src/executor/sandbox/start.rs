//! The program's start: its limits, the slot's uid, no new privileges,
//! Landlock, standard streams, a clean environment, then `exec`.
//!
//! Everything is prepared in [`Start::new`] (strings, the resolved program
//! path, the ruleset's descriptor); what runs after the fork is only system
//! calls. That lets a slot server start each run with a `vfork`-style clone
//! (the child borrows the server's memory until it execs): no page tables
//! copied and torn down per run, which on this machine is most of what a
//! `fork` costs. A setup failure is written to the report pipe as five bytes
//! (the step, the errno) and turned into words by [`report_text`].

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::spec::LaunchSpec;

/// The step of the start that failed (the first byte of a report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Streams = 1,
    Enter = 2,
    Limits = 3,
    Account = 4,
    NoNewPrivs = 5,
    Landlock = 6,
    Exec = 7,
}

/// Standard streams to move onto 0, 1 and 2 (absent: keep them).
#[derive(Debug, Clone, Copy)]
pub struct Streams {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
}

/// One program, ready to start.
pub struct Start {
    name: String,
    app: CString,
    path: CString,
    /// Owns what `argv_p` points to (so do `_sh_argv` and `_env`).
    _argv: Vec<CString>,
    argv_p: Vec<*const libc::c_char>,
    /// `sh PATH ARGS…` for a script without `#!` (what execvp does).
    _sh_argv: Vec<CString>,
    sh_argv_p: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    env_p: Vec<*const libc::c_char>,
    limits: Vec<(u32, u64)>,
    uid: Option<u32>,
    landlock: Option<RawFd>,
    streams: Option<Streams>,
    report: RawFd,
}

fn cstring(b: &[u8]) -> Result<CString, String> {
    CString::new(b).map_err(|_| "an argument or variable holds a NUL byte".to_string())
}

fn pointers(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Where `prog` is: itself when it names a path, else the first regular,
/// executable file of that name on `path_var` (the run's PATH, resolved in
/// the run's own root). `None`: nowhere.
fn resolve(prog: &str, path_var: &str) -> Option<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    if prog.contains('/') {
        return Some(prog.as_bytes().to_vec());
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(prog))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .map(|p| p.as_os_str().as_bytes().to_vec())
}

impl Start {
    /// Prepares `spec`'s program to start in `app`; `landlock`: the
    /// ruleset to enforce (kept open by the caller until the start),
    /// `report`: where a failure is written.
    pub fn new(
        spec: &LaunchSpec,
        app: &Path,
        landlock: Option<RawFd>,
        streams: Option<Streams>,
        report: RawFd,
    ) -> Result<Start, String> {
        let name = spec.argv.first().cloned().ok_or("empty command")?;
        let argv: Vec<CString> = spec
            .argv
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let env: Vec<CString> = spec
            .env
            .iter()
            .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
            .collect::<Result<_, _>>()?;
        let path_var = spec
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or("", |(_, v)| v.as_str());
        // Not found: exec the bare name, which fails with ENOENT and says so.
        let path = cstring(&resolve(&name, path_var).unwrap_or_else(|| name.as_bytes().to_vec()))?;
        let mut sh_argv = vec![c"sh".to_owned(), path.clone()];
        sh_argv.extend(argv.iter().skip(1).cloned());
        let l = spec.limits;
        let limits = [
            (libc::RLIMIT_NPROC, l.processes),
            (libc::RLIMIT_FSIZE, l.file_size),
            (libc::RLIMIT_NOFILE, l.open_files),
            (libc::RLIMIT_DATA, l.memory),
        ]
        .into_iter()
        .filter(|(_, v)| *v > 0)
        // No core files: they would fill the app dir and leak memory.
        .chain(std::iter::once((libc::RLIMIT_CORE, 0)))
        .collect();
        Ok(Start {
            name,
            app: cstring(app.as_os_str().as_bytes())?,
            path,
            argv_p: pointers(&argv),
            _argv: argv,
            sh_argv_p: pointers(&sh_argv),
            _sh_argv: sh_argv,
            env_p: pointers(&env),
            _env: env,
            limits,
            uid: spec.uid,
            landlock: if spec.landlock { landlock } else { None },
            streams,
            report,
        })
    }

    /// The program's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the program up and execs it; returns only on failure, with
    /// the step and errno. Only system calls: safe in a child that shares
    /// its parent's memory.
    pub fn exec(&self) -> (Step, i32) {
        let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // SAFETY (whole function): system calls on values this struct owns;
        // nothing allocates.
        unsafe {
            if let Some(s) = self.streams {
                for (from, to) in [(s.stdin, 0), (s.stdout, 1), (s.stderr, 2)] {
                    if libc::dup2(from, to) < 0 {
                        return (Step::Streams, errno());
                    }
                }
            }
            if libc::chdir(self.app.as_ptr()) != 0 {
                return (Step::Enter, errno());
            }
            for &(res, v) in &self.limits {
                let r = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                if libc::syscall(libc::SYS_prlimit64, 0, res, &r, std::ptr::null::<u8>()) != 0 {
                    return (Step::Limits, errno());
                }
            }
            libc::umask(0o022);
            if let Some(uid) = self.uid {
                // Raw system calls: glibc's setresuid signals every thread
                // of the process, which a child sharing memory must not.
                if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                    || libc::syscall(libc::SYS_setresgid, uid, uid, uid) != 0
                    || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
                {
                    return (Step::Account, errno());
                }
                if libc::getuid() != uid || libc::geteuid() != uid {
                    return (Step::Account, libc::EPERM);
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return (Step::NoNewPrivs, errno());
            }
            if let Some(fd) = self.landlock
                && libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) != 0
            {
                return (Step::Landlock, errno());
            }
            // Nothing of the server's or launcher's reaches the program.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            libc::execve(
                self.path.as_ptr(),
                self.argv_p.as_ptr(),
                self.env_p.as_ptr(),
            );
            if errno() == libc::ENOEXEC {
                libc::execve(
                    c"/bin/sh".as_ptr(),
                    self.sh_argv_p.as_ptr(),
                    self.env_p.as_ptr(),
                );
            }
            (Step::Exec, errno())
        }
    }

    /// [`Start::exec`], and on failure the report written and the process
    /// ended (exit 127).
    pub fn exec_or_report(&self) -> ! {
        let (step, errno) = self.exec();
        let mut msg = [0u8; 5];
        msg[0] = step as u8;
        msg[1..].copy_from_slice(&errno.to_le_bytes());
        // SAFETY: writing a buffer on this stack, then exiting without
        // destructors (the caller may share its parent's memory).
        unsafe {
            libc::write(self.report, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    }

    /// Starts the program as a child that borrows this process's memory
    /// until it execs (`clone(CLONE_VM | CLONE_VFORK)`, as `posix_spawn`
    /// does). Returns its pid once it has exec'd or failed; the report pipe
    /// then holds any failure. The caller must be single-threaded.
    pub fn spawn(&self) -> Result<i32, String> {
        const STACK: usize = 64 * 1024;
        extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
            // SAFETY: `arg` is the `Start` borrowed by `spawn`, alive (and
            // its parent suspended) until this child execs or exits.
            let (start, mask) = unsafe { &*(arg as *const (&Start, libc::sigset_t)) };
            // SAFETY: resetting signal actions and the mask of this child.
            unsafe {
                for sig in [libc::SIGTERM, libc::SIGUSR1, libc::SIGINT, libc::SIGHUP] {
                    libc::signal(sig, libc::SIG_DFL);
                }
                // A group of its own: the node's signals reach the server,
                // which decides what the run's processes get.
                libc::setpgid(0, 0);
                libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
            }
            start.exec_or_report()
        }
        let mut stack = vec![0u8; STACK];
        // SAFETY: blocking signals so none runs a handler in the child
        // before it resets them; clone with a stack we own that outlives the
        // child's use of it (CLONE_VFORK suspends us until it execs or ends).
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old);
            let arg = (self, old);
            let top = stack.as_mut_ptr().add(STACK);
            let top = top.sub(top as usize % 16);
            let pid = libc::clone(
                child,
                top.cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                &arg as *const _ as *mut libc::c_void,
            );
            let err = std::io::Error::last_os_error();
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid < 0 {
                return Err(format!("cannot start the program: {err}"));
            }
            Ok(pid)
        }
    }
}

impl Step {
    const ALL: [Step; 7] = [
        Step::Streams,
        Step::Enter,
        Step::Limits,
        Step::Account,
        Step::NoNewPrivs,
        Step::Landlock,
        Step::Exec,
    ];

    fn what(self) -> &'static str {
        match self {
            Step::Streams => "cannot set up the run's standard streams",
            Step::Enter => "cannot enter the app dir",
            Step::Limits => "cannot set the run's limits",
            Step::Account => "cannot become the slot's account",
            Step::NoNewPrivs => "cannot set no_new_privs",
            Step::Landlock => "landlock",
            Step::Exec => "cannot start",
        }
    }
}

/// A failed start in words: `name` is the program.
pub fn failure_text(step: Step, errno: i32, name: &str) -> String {
    let e = std::io::Error::from_raw_os_error(errno);
    match step {
        Step::Exec => format!(
            "cannot start '{name}': {e} (is it installed on this node, and readable by runs?)"
        ),
        s => format!("{}: {e}", s.what()),
    }
}

/// A report read from the pipe (five bytes: step, errno) in words; `None`
/// when it is not one.
pub fn report_text(report: &[u8], name: &str) -> Option<String> {
    let (&step, errno) = report.split_first()?;
    let step = Step::ALL.into_iter().find(|s| *s as u8 == step)?;
    let errno = i32::from_le_bytes(errno.try_into().ok()?);
    Some(failure_text(step, errno, name))
}
