//! The process executor's sandbox: user code without Docker, sealed off from
//! the node, its data and other runs.
//!
//! Each slot has a server ([`slot_server`]: `pesc-sandbox`, or `pesc` with
//! [`spec::LAUNCH_ARG`]) that makes the slot's namespaces (mount, PID, IPC,
//! network) and its root (the system paths and the app dir) once, then forks
//! each attempt: the slot's own uid when the node is root, Landlock, resource
//! limits and a clean environment. Runs that need the network, and slots
//! whose server cannot start, get a launcher of their own ([`launch`]). What
//! this node can do is found once at start by starting a real sandboxed
//! program ([`Sandbox::probe`]) and reported as its isolation level.

pub mod cgroup;
pub mod landlock_rules;
pub mod launch;
pub mod rootfs;
pub mod slot_server;
pub mod spec;
pub mod start;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::watch;

use self::spec::{APP_IN_RUN, LAUNCH_ARG, LaunchSpec, Rlimits};
use super::{Executor, Exit, Job};

/// How long a stopped program gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_millis(1000);

/// The sandbox's settings (`[sandbox]` in node.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxConfig {
    /// Sandbox runs of the process executor (false: plain processes, the
    /// isolation level `none`; a grid with the default minimum level then
    /// gives this node no work).
    pub enabled: bool,
    /// When the node runs as root, slot N runs as uid `uid_base + N` (and
    /// the same gid). These need no account; name your own with `uids`.
    pub uid_base: u32,
    /// Uids for the slots, in slot order (overrides `uid_base`).
    pub uids: Vec<u32>,
    /// Paths runs may read and execute besides the system ones (an R or
    /// Python installed elsewhere, e.g. `/srv/R`).
    pub read_paths: Vec<PathBuf>,
    /// Processes and threads per run.
    pub processes: u64,
    /// Largest file a run may write, MiB.
    pub file_size_mb: u64,
    /// Open files per process of a run.
    pub open_files: u64,
    /// Size of a run's private /tmp (and /dev/shm), MiB.
    pub tmp_mb: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            enabled: true,
            uid_base: 61000,
            uids: Vec::new(),
            read_paths: Vec::new(),
            processes: 512,
            file_size_mb: 8192,
            open_files: 4096,
            tmp_mb: 1024,
        }
    }
}

/// The system paths every run may read and execute.
const SYSTEM_PATHS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/sys",
];

/// Device files every run may use.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// The PATH runs get: the system's, never the node user's own (a pyenv
/// shim in root's home is neither readable by runs nor fast).
const RUN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What this node's kernel and account let the sandbox do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxCaps {
    /// Runs get the slot's own uid (the node is root).
    pub uid: bool,
    /// Landlock ABI in force (0: none).
    pub landlock_abi: i32,
    /// Mount, PID, IPC and network namespaces of their own.
    pub namespaces: bool,
    /// The control groups the slots' runs are in (`cgroup v1`, `cgroup
    /// v2`), if any.
    #[serde(default)]
    pub cgroup: Option<String>,
}

impl SandboxCaps {
    /// The isolation detail shown to users: "uid, landlock 7, namespaces, rlimits".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.uid {
            parts.push("uid per slot".to_string());
        }
        if self.landlock_abi > 0 {
            parts.push(format!("landlock {}", self.landlock_abi));
        }
        if self.namespaces {
            parts.push("namespaces".to_string());
        }
        if let Some(c) = &self.cgroup {
            parts.push(c.clone());
        }
        parts.push("rlimits".to_string());
        parts.join(", ")
    }
}

/// The Docker daemon's socket, when this process may connect to it.
fn docker_socket_usable() -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    ["/run/docker.sock", "/var/run/docker.sock"]
        .into_iter()
        .find(|p| {
            let is_socket = std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket());
            let Ok(c) = std::ffi::CString::new(*p) else {
                return false;
            };
            // SAFETY: `c` is a valid C string; access only reads permissions.
            is_socket && unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0
        })
}

/// The process executor: sandboxed child processes.
pub struct Sandbox {
    cfg: SandboxConfig,
    caps: Option<SandboxCaps>,
    /// The launcher: `pesc-sandbox` next to `pesc` (small, quick to start),
    /// or `pesc` itself with [`LAUNCH_ARG`].
    launcher: (PathBuf, Option<&'static str>),
    node_is_root: bool,
    /// Each slot's sandbox server (started on first use, restarted if it
    /// dies); runs that need the network, or whose slot server cannot
    /// start, are launched one by one instead.
    servers: Vec<tokio::sync::Mutex<Option<SlotServer>>>,
    /// The app dir of each slot (what its server's root is built around).
    slot_apps: Vec<PathBuf>,
    /// The node's id: slot servers and runs' inits carry it in their
    /// environment, as runs do, so the node counts their CPU as its own and
    /// finds them after a crash.
    node_id: String,
    /// The node's LANG and TZ, read once: every run gets them.
    locale: Vec<(String, String)>,
    /// What runs may read and execute: the system paths and `read_paths`.
    read_paths: Vec<PathBuf>,
    /// Control groups for the slots' servers and their runs, when this
    /// node can make them.
    cgroups: Option<cgroup::Cgroups>,
}

/// A running slot server: its requests and answers.
struct SlotServer {
    /// The server's host pid (PID 1 of the slot's namespace): stop signals
    /// go there.
    pid: i32,
    child: tokio::process::Child,
    /// The slot's control group (its server and runs are in it).
    group: Option<cgroup::SlotGroup>,
    input: tokio::process::ChildStdin,
    answers: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

/// Name of the small launcher binary, installed next to `pesc`.
const LAUNCHER_BIN: &str = "pesc-sandbox";

fn find_launcher() -> Result<(PathBuf, Option<&'static str>)> {
    let exe = std::env::current_exe().context("finding the pesc binary (the launcher)")?;
    let small = exe.with_file_name(LAUNCHER_BIN);
    if small.is_file() {
        return Ok((small, None));
    }
    tracing::info!(
        "{} is not next to {}: runs are started through pesc itself (slower to start)",
        LAUNCHER_BIN,
        exe.display()
    );
    Ok((exe, Some(LAUNCH_ARG)))
}

impl Sandbox {
    /// Finds what this node can do by starting a sandboxed `true` in
    /// `scratch` with each level, best first. Logs loudly what it could not
    /// enable. With `cfg.enabled` false: plain processes.
    pub async fn probe(
        cfg: SandboxConfig,
        node_id: &str,
        scratch: &Path,
        slot_apps: &[PathBuf],
    ) -> Result<Sandbox> {
        // SAFETY: geteuid has no preconditions.
        let node_is_root = unsafe { libc::geteuid() } == 0;
        let mut sb = Sandbox {
            caps: None,
            launcher: find_launcher()?,
            node_is_root,
            servers: slot_apps
                .iter()
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            slot_apps: slot_apps.to_vec(),
            node_id: node_id.to_string(),
            locale: [
                (
                    "LANG",
                    std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
                ),
                ("TZ", std::env::var("TZ").unwrap_or_default()),
            ]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            read_paths: SYSTEM_PATHS
                .iter()
                .map(PathBuf::from)
                .chain(cfg.read_paths.iter().cloned())
                .collect(),
            cfg,
            cgroups: None,
        };
        if !sb.cfg.enabled {
            tracing::warn!(
                "the sandbox is off ([sandbox] enabled = false): runs are plain processes that can read this node's data; isolation level none"
            );
            return Ok(sb);
        }
        std::fs::create_dir_all(scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        let abi = landlock_rules::abi();
        sb.cgroups = cgroup::Cgroups::detect(node_id);
        let full = SandboxCaps {
            uid: node_is_root,
            landlock_abi: abi,
            namespaces: true,
            cgroup: sb.cgroups.as_ref().map(|c| c.describe().to_string()),
        };
        // Without namespaces a slot uid could not reach its app dir inside
        // the node's 0700 data dir: the fallback keeps the node's uid and
        // relies on Landlock alone.
        let reduced = SandboxCaps {
            namespaces: false,
            uid: false,
            cgroup: None,
            ..full.clone()
        };
        let mut why = Vec::new();
        for caps in [full, reduced] {
            if !caps.namespaces && caps.landlock_abi == 0 {
                why.push("no Landlock either".to_string());
                continue;
            }
            // Without a mount namespace a run sees the host's paths, and
            // Landlock does not govern connecting to a socket: one the
            // node's account may use (the Docker daemon's, through the
            // docker group) would be the run's too, and that is root.
            if !caps.namespaces
                && let Some(sock) = docker_socket_usable()
            {
                why.push(format!(
                    "without namespaces runs could use {sock} (this account may; it is root on this machine)"
                ));
                continue;
            }
            sb.caps = Some(caps.clone());
            match sb.try_true(scratch).await {
                Ok(()) => {
                    if abi == 0 {
                        tracing::error!(
                            "this kernel has no Landlock: runs are only kept apart by {}",
                            caps.describe()
                        );
                    }
                    if !caps.namespaces {
                        tracing::error!(
                            "runs get no namespaces of their own ({}): they see this machine's processes and network",
                            why.join("; ")
                        );
                    }
                    if !caps.uid {
                        tracing::warn!(
                            "runs share the node's uid ({}): only Landlock{} walls them in",
                            if node_is_root {
                                "root without namespaces"
                            } else {
                                "the node is not root"
                            },
                            if caps.namespaces {
                                " and namespaces"
                            } else {
                                ""
                            }
                        );
                    }
                    tracing::info!("sandbox: {}", caps.describe());
                    return Ok(sb);
                }
                Err(e) => why.push(format!("{e:#}")),
            }
        }
        sb.caps = None;
        anyhow::bail!(
            "no sandbox can be set up on this node ({}); set [sandbox] enabled = false in node.toml to run plain processes (isolation none), or use Docker",
            why.join("; ")
        )
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.launcher.0);
        if let Some(arg) = self.launcher.1 {
            cmd.arg(arg);
        }
        cmd.env_clear().current_dir("/");
        cmd
    }

    /// Starts the server of `slot` and waits for its `ready`.
    async fn start_server(&self, caps: &SandboxCaps, slot: usize) -> Result<SlotServer> {
        use tokio::io::AsyncBufReadExt;
        let app = &self.slot_apps[slot];
        std::fs::create_dir_all(app).with_context(|| format!("creating {}", app.display()))?;
        let mut spec = self.spec(caps, &true_job(app.clone(), slot, PathBuf::new()));
        spec.serve = true;
        // Every GPU device is bound into the slot's /dev; Landlock lets
        // only runs that hold GPUs use them.
        spec.devices.extend(nvidia_devices());
        let mut child = self
            .command()
            .env("PESC_NODE_ID", &self.node_id)
            .arg(serde_json::to_string(&spec)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the slot's sandbox server")?;
        let input = child.stdin.take().context("stdin")?;
        let mut answers = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut pid = None;
        // `server PID` (from the launcher) and `ready` (from the server it
        // forked) come in either order: wait for both.
        let started = tokio::time::timeout(Duration::from_secs(20), async {
            let mut ready = false;
            while let Ok(Some(l)) = answers.next_line().await {
                match l.split_once(' ') {
                    Some(("server", p)) => pid = p.parse::<i32>().ok(),
                    None if l == "ready" => ready = true,
                    _ => return false,
                }
                if ready && pid.is_some() {
                    return true;
                }
            }
            false
        })
        .await;
        let pid = match (started, pid) {
            (Ok(true), Some(p)) => p,
            _ => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), e.read_to_string(&mut err))
                            .await;
                }
                let _ = child.kill().await;
                anyhow::bail!("the slot's sandbox server did not start: {}", err.trim());
            }
        };
        let group = match self.cgroups.as_ref().map(|c| c.slot(slot)) {
            Some(Ok(g)) => match g.adopt(pid) {
                Ok(()) => Some(g),
                Err(e) => {
                    let _ = child.kill().await;
                    anyhow::bail!("putting the slot's server in its control group: {e:#}");
                }
            },
            Some(Err(e)) => {
                let _ = child.kill().await;
                anyhow::bail!("the slot's control group: {e:#}");
            }
            None => None,
        };
        Ok(SlotServer {
            pid,
            child,
            group,
            input,
            answers,
        })
    }

    /// Runs `job` through its slot's server. `Ok(None)`: the slot has no
    /// server (run it with a launcher of its own).
    async fn run_served(
        &self,
        caps: &SandboxCaps,
        job: &Job,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<Exit>> {
        use tokio::io::AsyncWriteExt;
        let Some(lock) = self.servers.get(job.slot) else {
            return Ok(None);
        };
        if job.network || self.slot_apps.get(job.slot) != Some(&job.app_dir) {
            return Ok(None);
        }
        let mut guard = lock.lock().await;
        if guard
            .as_mut()
            .is_none_or(|s| s.child.try_wait().ok().flatten().is_some())
        {
            match self.start_server(caps, job.slot).await {
                Ok(s) => *guard = Some(s),
                // With control groups a launched run would escape them:
                // the run fails (and goes elsewhere) instead of running
                // with less than this node reports.
                Err(e) if self.cgroups.is_some() => return Err(e),
                Err(e) => {
                    tracing::warn!("slot {}: {e:#}; its runs are launched one by one", job.slot);
                    return Ok(None);
                }
            }
        }
        let server = guard.as_mut().context("slot server")?;
        let mut spec = self.spec(caps, job);
        // Only a run with a memory limit can be killed for memory: the
        // others read nothing (two file reads per run add up).
        let oom_before = server
            .group
            .as_ref()
            .filter(|_| job.limits.memory_mb.is_some())
            .map(|g| g.oom_kills());
        if let Some(g) = server.group.as_mut() {
            // The group caps the whole run (children included); RLIMIT_DATA
            // would only cap each process, and break programs that reserve
            // large address ranges.
            spec.limits.memory = 0;
            g.set(
                job.limits.memory_mb.map(|m| m << 20),
                self.cfg.processes + 1,
                job.limits.cpus,
            )
            .context("setting the run's limits in its control group")?;
        }
        let mut line = serde_json::to_string(&spec)?;
        line.push('\n');
        if server.input.write_all(line.as_bytes()).await.is_err() {
            *guard = None;
            anyhow::bail!("the slot's sandbox server stopped");
        }
        let first = server.answers.next_line().await?;
        match first
            .as_deref()
            .map(|l| l.split_once(' ').unwrap_or((l, "")))
        {
            Some(("started", _)) => {}
            Some(("error", e)) => anyhow::bail!("{e}"),
            _ => {
                *guard = None;
                anyhow::bail!("the slot's sandbox server stopped");
            }
        }
        // Stop signals go to the server: SIGTERM is passed to every process
        // of the run, SIGUSR1 kills them all.
        let pid = server.pid;
        let ended = tokio::select! {
            l = server.answers.next_line() => l?,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                signal_pid(pid, libc::SIGTERM);
                match tokio::time::timeout(STOP_GRACE, server.answers.next_line()).await {
                    Ok(l) => l?,
                    Err(_) => {
                        signal_pid(pid, libc::SIGUSR1);
                        server.answers.next_line().await?
                    }
                }
            }
        };
        let over_memory = match (&server.group, oom_before, job.limits.memory_mb) {
            (Some(g), Some(before), Some(mb)) if g.oom_kills() > before => Some(mb),
            _ => None,
        };
        match ended.as_deref().and_then(|l| l.split_once(' ')) {
            Some(("exit", _)) if over_memory.is_some() => Ok(over_memory.map(Exit::OverMemory)),
            Some(("exit", st)) => {
                let st: i32 = st.parse().context("the server's answer")?;
                Ok(Some(if libc::WIFSIGNALED(st) {
                    Exit::Signal(libc::WTERMSIG(st))
                } else {
                    Exit::Code(libc::WEXITSTATUS(st))
                }))
            }
            Some(("error", e)) => anyhow::bail!("{e}"),
            _ => {
                *guard = None;
                anyhow::bail!("the slot's sandbox server stopped during the run")
            }
        }
    }

    /// Runs `job` with a launcher of its own (or as a plain process when
    /// the sandbox is off).
    async fn run_launched(
        &self,
        job: &Job,
        logs: (std::fs::File, std::fs::File),
        mut stop: watch::Receiver<bool>,
    ) -> Result<Exit> {
        let (mut cmd, report) = match &self.caps {
            None => (Self::plain_command(job)?, None),
            Some(caps) => {
                let spec = serde_json::to_string(&self.spec(caps, job))?;
                let (reader, writer) = std::io::pipe().context("report pipe")?;
                let mut cmd = self.command();
                cmd.arg(spec)
                    .stdin(Stdio::from(std::os::fd::OwnedFd::from(writer)));
                (cmd, Some(reader))
            }
        };
        cmd.stdout(Stdio::from(logs.0))
            .stderr(Stdio::from(logs.1))
            .process_group(0)
            .kill_on_drop(false);
        let spawned = cmd.spawn();
        // Our copy of the report pipe's writing end goes with the command.
        drop(cmd);
        let mut child = spawned.map_err(|e| {
            anyhow::anyhow!(
                "cannot start '{}': {e} (is it installed on this node?)",
                job.argv.first().map(String::as_str).unwrap_or("")
            )
        })?;
        let pgid = child.id().map(|p| p as i32);
        if let Some(reader) = report {
            let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into())
                .context("report pipe")?;
            let mut msg = Vec::new();
            // Ends when the program has started (the pipe closes on exec)
            // or the launcher has given up.
            let _ = rx.read_to_end(&mut msg).await;
            if !msg.is_empty() {
                let _ = child.wait().await;
                signal_group(pgid, libc::SIGKILL);
                anyhow::bail!("{}", String::from_utf8_lossy(&msg).trim());
            }
        }
        let status = tokio::select! {
            s = child.wait() => s?,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                signal_group(pgid, libc::SIGTERM);
                match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                    Ok(s) => s?,
                    Err(_) => {
                        signal_group(pgid, libc::SIGKILL);
                        child.wait().await?
                    }
                }
            }
        };
        // Whatever the program left running in its group goes with it.
        signal_group(pgid, libc::SIGKILL);
        use std::os::unix::process::ExitStatusExt;
        Ok(match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Code(-1),
        })
    }

    async fn try_true(&self, scratch: &Path) -> Result<()> {
        let app = scratch.join("app");
        let _ = std::fs::remove_dir_all(&app);
        std::fs::create_dir_all(&app)?;
        let job = true_job(app, 0, scratch.to_path_buf());
        let (_tx, rx) = watch::channel(false);
        match self.run(job, rx).await? {
            Exit::Code(0) => Ok(()),
            other => anyhow::bail!("a sandboxed `true` ended with {other:?}"),
        }
    }

    fn uid_of(&self, slot: usize) -> Option<u32> {
        let caps = self.caps.as_ref()?;
        if !caps.uid {
            return None;
        }
        Some(
            self.cfg
                .uids
                .get(slot)
                .copied()
                .unwrap_or(self.cfg.uid_base + slot as u32),
        )
    }

    fn spec(&self, caps: &SandboxCaps, job: &Job) -> LaunchSpec {
        let app_in_run = if caps.namespaces {
            PathBuf::from(APP_IN_RUN)
        } else {
            job.app_dir.clone()
        };
        let mut env = vec![
            ("PATH".to_string(), RUN_PATH.to_string()),
            ("HOME".to_string(), app_in_run.display().to_string()),
            (
                "TMPDIR".to_string(),
                if caps.namespaces {
                    "/tmp".to_string()
                } else {
                    app_in_run.display().to_string()
                },
            ),
        ];
        env.extend(self.locale.iter().cloned());
        env.extend(job.env.iter().cloned());
        env.push(("CUDA_VISIBLE_DEVICES".into(), job.cuda_visible_devices()));
        let mut devices: Vec<PathBuf> = DEVICES.iter().map(PathBuf::from).collect();
        if !job.gpus.is_empty() {
            devices.extend(nvidia_devices());
        }
        let memory = job.limits.memory_mb.unwrap_or(0) << 20;
        LaunchSpec {
            argv: job.argv.clone(),
            env,
            app_dir: job.app_dir.clone(),
            uid: self.uid_of(job.slot),
            namespaces: caps.namespaces,
            user_namespace: caps.namespaces && !self.node_is_root,
            network: job.network,
            read_paths: self.read_paths.clone(),
            devices,
            landlock: caps.landlock_abi > 0,
            limits: Rlimits {
                processes: if caps.uid { self.cfg.processes } else { 0 },
                file_size: self.cfg.file_size_mb << 20,
                open_files: self.cfg.open_files,
                memory,
            },
            tmp_mb: self.cfg.tmp_mb,
            serve: false,
        }
    }

    /// Plain child process (sandbox off): the node's environment minus
    /// nothing, its uid, no walls.
    fn plain_command(job: &Job) -> Result<Command> {
        let (prog, args) = job.argv.split_first().context("empty command")?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .current_dir(&job.app_dir)
            .envs(job.env.iter().map(|(k, v)| (k, v)))
            .env("CUDA_VISIBLE_DEVICES", job.cuda_visible_devices())
            .stdin(Stdio::null());
        Ok(cmd)
    }
}

/// A run of `true` in `app` for `slot`, its logs in `log_dir`: the probe's
/// test run, and the template a slot server's spec is made from.
fn true_job(app: PathBuf, slot: usize, log_dir: PathBuf) -> Job {
    Job {
        stdout: log_dir.join("stdout"),
        stderr: log_dir.join("stderr"),
        app_dir: app,
        argv: vec!["true".into()],
        env: Vec::new(),
        image: None,
        limits: Default::default(),
        gpus: Vec::new(),
        shared: Vec::new(),
        slot,
        network: false,
    }
}

/// Every `/dev/nvidia*` device (runs holding GPUs need them).
fn nvidia_devices() -> Vec<PathBuf> {
    std::fs::read_dir("/dev")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("nvidia"))
                .map(|e| e.path())
                .filter(|p| !p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Gives the app dir to the slot's uid (so the run can write its outputs),
/// except the private copies of shared files, which stay the node's and
/// read-only. Links are changed themselves, never followed.
fn hand_over(app: &Path, uid: u32, keep: &[String]) -> Result<()> {
    for e in walkdir::WalkDir::new(app).follow_links(false) {
        let e = e?;
        if e.depth() == 1 && keep.iter().any(|k| e.file_name() == k.as_str()) {
            continue;
        }
        let m = e.path().symlink_metadata()?;
        if m.uid() != uid || m.gid() != uid {
            std::os::unix::fs::lchown(e.path(), Some(uid), Some(uid))
                .with_context(|| format!("giving {} to uid {uid}", e.path().display()))?;
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl Executor for Sandbox {
    fn name(&self) -> &'static str {
        "process"
    }

    fn isolation(&self) -> super::Isolation {
        match &self.caps {
            Some(c) => super::Isolation::Sandbox(c.describe()),
            None => super::Isolation::None,
        }
    }

    fn app_dir_in_run(&self, host: &Path) -> PathBuf {
        match &self.caps {
            Some(c) if c.namespaces => PathBuf::from(APP_IN_RUN),
            _ => host.to_path_buf(),
        }
    }

    async fn run(&self, job: Job, mut stop: watch::Receiver<bool>) -> Result<Exit> {
        // Empty logs before the run starts: whoever follows them from now
        // on reads this run's output only.
        let create = |p: &Path| {
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))
        };
        let logs = (create(&job.stdout)?, create(&job.stderr)?);
        if let Some(caps) = &self.caps {
            if let Some(uid) = self.uid_of(job.slot) {
                let keep: Vec<String> = job.shared.iter().map(|(_, n)| n.clone()).collect();
                hand_over(&job.app_dir, uid, &keep)?;
            }
            // The slot's server opens the logs itself.
            if caps.namespaces
                && let Some(exit) = self.run_served(caps, &job, &mut stop).await?
            {
                return Ok(exit);
            }
        }
        self.run_launched(&job, logs, stop).await
    }
}

fn signal_pid(pid: i32, sig: i32) {
    if pid > 1 {
        // SAFETY: kill only sends a signal; ESRCH (gone) is expected.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn signal_group(pgid: Option<i32>, sig: i32) {
    if let Some(p) = pgid.filter(|p| *p > 1) {
        // SAFETY: killpg only sends a signal; ESRCH (group gone) is expected.
        unsafe {
            libc::killpg(p, sig);
        }
    }
}
