//! `pesc doctor`: checks a desktop before it is trusted with runs, and says
//! in plain words what it can and cannot offer. It tries what the node
//! would do (starts a sandboxed `true`, asks the Docker daemon, binds the
//! ports, connects to the peers), on the node's own data dir and config;
//! it changes nothing there but what a first start would make. Exit 1 when
//! something stops the node from running work.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::config::NodeConfig;
use crate::executor::docker::DockerExecutor;
use crate::executor::sandbox::Sandbox;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// Works, but less than it could (less isolation, no GPU toolkit…).
    Warn,
    /// Stops the node from running work.
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

fn check(what: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        what,
        verdict,
        detail: detail.into(),
    }
}

/// Free disk below this stops the node (blobs and results cannot land).
const MIN_FREE_MB: u64 = 512;

/// Runs every check on `data_dir` and prints them; the process's exit code.
pub async fn run(data_dir: &Path, json: bool) -> anyhow::Result<i32> {
    let mut checks = Vec::new();
    if let Some(c) = become_the_nodes_user(data_dir)? {
        checks.push(c);
    }
    checks.extend(all(data_dir).await);
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            let tag = match c.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            println!("{tag}  {:<14} {}", c.what, c.detail);
        }
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    if !json {
        if failed == 0 {
            println!("\nThis desktop can run work.");
        } else {
            println!("\n{failed} problem(s) stop this desktop from running work: see FAIL above.");
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

async fn all(data_dir: &Path) -> Vec<Check> {
    let mut out = vec![data_dir_check(data_dir)];
    let cfg = match NodeConfig::load_or_init(data_dir) {
        Ok(c) => c,
        Err(e) => {
            out.push(check("config", Verdict::Fail, format!("{e:#}")));
            return out;
        }
    };
    out.push(check(
        "config",
        Verdict::Ok,
        format!(
            "{} ({} slot(s), executor {:?})",
            data_dir.join("node.toml").display(),
            cfg.slots,
            cfg.executor
        ),
    ));
    out.push(disk_check(data_dir, cfg.cache_mb));
    let docker = docker_check(&cfg).await;
    let docker_ok = docker.verdict == Verdict::Ok;
    out.push(docker);
    out.push(kernel_check());
    out.push(sandbox_check(data_dir, &cfg, docker_ok).await);
    out.extend(gpu_checks(docker_ok));
    let running = running_node(data_dir);
    out.push(api_port_check(&cfg, running));
    out.extend(p2p_port_checks(&cfg, running));
    out.push(peers_check(&cfg));
    if running.is_some() {
        out.push(grid_check(data_dir).await);
    }
    out.push(clock_check());
    out
}

/// Root checking the service's data dir (owned by the `pesc` account):
/// the checks run as that account, with its groups, as the node does, not
/// as root, which would see a sandbox and ports the node never gets (and
/// would write as root into a dir that account controls). Not being able
/// to become it is an error: nothing is checked as root there.
fn become_the_nodes_user(data_dir: &Path) -> anyhow::Result<Option<Check>> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let Ok(m) = std::fs::symlink_metadata(data_dir) else {
        return Ok(None);
    };
    if m.uid() == 0 {
        return Ok(None);
    }
    let (uid, gid) = (m.uid(), m.gid());
    // SAFETY: getpwuid returns a pointer into static storage or null; this
    // runs before anything else here reads the password database.
    let name = unsafe {
        let pw = libc::getpwuid(uid);
        (!pw.is_null()).then(|| std::ffi::CStr::from_ptr((*pw).pw_name).to_owned())
    };
    // SAFETY: plain system calls on this process's credentials; glibc
    // applies them to every thread. Groups first, the uid last.
    let dropped = unsafe {
        let groups = match &name {
            Some(n) => libc::initgroups(n.as_ptr(), gid) == 0,
            None => libc::setgroups(0, std::ptr::null()) == 0,
        };
        groups && libc::setgid(gid) == 0 && libc::setuid(uid) == 0
    };
    // SAFETY: getuid/geteuid have no preconditions.
    if !dropped || unsafe { libc::geteuid() != uid || libc::getuid() != uid } {
        anyhow::bail!(
            "cannot become uid {uid}, the owner of {}: run `pesc doctor` as that user",
            data_dir.display()
        );
    }
    Ok(Some(check(
        "user",
        Verdict::Ok,
        format!(
            "checking as {} (uid {uid}), the owner of {}: the node's user",
            name.as_ref()
                .map_or("?".into(), |n| n.to_string_lossy().into_owned()),
            data_dir.display()
        ),
    )))
}

/// The data dir: the node's own, private, writable.
fn data_dir_check(dir: &Path) -> Check {
    if let Err(e) = crate::data_dir::secure(dir) {
        return check("data dir", Verdict::Fail, format!("{e:#}"));
    }
    let probe = dir.join(".doctor-write-test");
    let written = std::fs::write(&probe, b"x");
    let _ = std::fs::remove_file(&probe);
    match written {
        Ok(()) => check(
            "data dir",
            Verdict::Ok,
            format!("{} (private to this user, writable)", dir.display()),
        ),
        Err(e) => check(
            "data dir",
            Verdict::Fail,
            format!("cannot write in {}: {e}", dir.display()),
        ),
    }
}

/// Free space where blobs, results and the cache land.
fn disk_check(dir: &Path, cache_mb: u64) -> Check {
    let Some(free_mb) = free_mb(dir) else {
        return check(
            "disk",
            Verdict::Warn,
            format!("cannot tell the free space of {}", dir.display()),
        );
    };
    if free_mb < MIN_FREE_MB {
        check(
            "disk",
            Verdict::Fail,
            format!(
                "only {free_mb} MiB free for {}: at least {MIN_FREE_MB} MiB are needed",
                dir.display()
            ),
        )
    } else if free_mb < cache_mb {
        check(
            "disk",
            Verdict::Warn,
            format!(
                "{free_mb} MiB free, less than the file cache may use (cache_mb = {cache_mb}): lower cache_mb in node.toml or free space"
            ),
        )
    } else {
        check(
            "disk",
            Verdict::Ok,
            format!("{free_mb} MiB free (the file cache takes up to {cache_mb} MiB)"),
        )
    }
}

fn free_mb(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64) >> 20)
}

async fn docker_check(cfg: &NodeConfig) -> Check {
    match DockerExecutor::connect("doctor", cfg.docker.clone()).await {
        Ok(d) => check(
            "docker",
            Verdict::Ok,
            format!(
                "the Docker daemon answers (version {}): runs can go in containers",
                d.server_version().await
            ),
        ),
        Err(e) => check(
            "docker",
            Verdict::Warn,
            format!(
                "no Docker ({e:#}): runs use the sandbox; install docker.io for containers and domains"
            ),
        ),
    }
}

/// What the kernel offers the sandbox, as facts.
fn kernel_check() -> Check {
    let abi = crate::executor::sandbox::landlock_rules::abi();
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0);
    let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cgroup v2"
    } else if Path::new("/sys/fs/cgroup/memory").exists() {
        "cgroup v1"
    } else {
        "no cgroups"
    };
    let detail = format!(
        "Landlock ABI {abi}{}, user namespaces {}, {cgroup}",
        if abi == 0 { " (none)" } else { "" },
        if userns { "allowed" } else { "off" }
    );
    let verdict = if abi == 0 || !userns {
        Verdict::Warn
    } else {
        Verdict::Ok
    };
    check("kernel", verdict, detail)
}

/// The sandbox as the node would set it up: a sandboxed `true`.
async fn sandbox_check(data_dir: &Path, cfg: &NodeConfig, docker_ok: bool) -> Check {
    if !cfg.sandbox.enabled {
        return check(
            "sandbox",
            Verdict::Warn,
            "off ([sandbox] enabled = false): without Docker, runs are plain processes that can read this node's data",
        );
    }
    let scratch = data_dir.join("work").join("doctor");
    let app = scratch.join("app");
    let got = Sandbox::probe(cfg.sandbox.clone(), "doctor", &scratch, &[app]).await;
    let _ = std::fs::remove_dir_all(&scratch);
    match got {
        Ok(sb) => {
            let level = crate::executor::Executor::isolation(&sb);
            check(
                "sandbox",
                Verdict::Ok,
                format!("works: {}", level.describe()),
            )
        }
        Err(e) if docker_ok => check(
            "sandbox",
            Verdict::Warn,
            format!("cannot be set up ({e:#}); runs go in Docker containers instead"),
        ),
        Err(e) => check(
            "sandbox",
            Verdict::Fail,
            format!("cannot be set up and there is no Docker: {e:#}"),
        ),
    }
}

fn gpu_checks(docker_ok: bool) -> Vec<Check> {
    let probe = crate::gpu::probe();
    let gpus = probe.gpus();
    if gpus.is_empty() {
        return vec![check(
            "gpu",
            Verdict::Ok,
            format!(
                "none ({}): runs that ask for a GPU go to other desktops",
                probe.describe()
            ),
        )];
    }
    let names: Vec<String> = gpus.iter().map(|g| g.name.clone()).collect();
    let mut out = vec![check(
        "gpu",
        Verdict::Ok,
        format!(
            "{} GPU(s): {} ({})",
            gpus.len(),
            names.join(", "),
            probe.describe()
        ),
    )];
    if docker_ok {
        let toolkit = [
            "nvidia-container-runtime",
            "nvidia-ctk",
            "nvidia-container-cli",
        ]
        .iter()
        .any(|b| which(b));
        out.push(if toolkit {
            check("gpu toolkit", Verdict::Ok, "the NVIDIA container toolkit is installed: containers can use the GPUs")
        } else {
            check(
                "gpu toolkit",
                Verdict::Warn,
                "no NVIDIA container toolkit: GPU runs cannot use the GPUs inside containers (install nvidia-container-toolkit)",
            )
        });
    }
    out
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// The address of a node running on this data dir now, if one answers.
fn running_node(data_dir: &Path) -> Option<SocketAddr> {
    let addr: SocketAddr = std::fs::read_to_string(data_dir.join("api.addr"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    Some(addr)
}

fn api_port_check(cfg: &NodeConfig, running: Option<SocketAddr>) -> Check {
    if let Some(a) = running {
        return check(
            "api port",
            Verdict::Ok,
            format!("a node of this data dir is running and serves http://{a}/"),
        );
    }
    match TcpListener::bind(cfg.api) {
        Ok(_) => check(
            "api port",
            Verdict::Ok,
            format!("{} is free for the API and web UI", cfg.api),
        ),
        Err(e) => check(
            "api port",
            Verdict::Fail,
            format!(
                "cannot listen on {} ({e}): another program holds it; set api in node.toml",
                cfg.api
            ),
        ),
    }
}

/// The TCP ports the node listens on for its peers.
fn p2p_port_checks(cfg: &NodeConfig, running: Option<SocketAddr>) -> Vec<Check> {
    let mut out = Vec::new();
    for a in &cfg.listen {
        let Some(addr) = tcp_of_multiaddr(a) else {
            continue;
        };
        if addr.port() == 0 || running.is_some() {
            continue;
        }
        out.push(match TcpListener::bind(addr) {
            Ok(_) => check("peer port", Verdict::Ok, format!("{a} is free for peers")),
            Err(e) => check(
                "peer port",
                Verdict::Fail,
                format!("cannot listen on {a} ({e}): set listen in node.toml"),
            ),
        });
    }
    out
}

/// `/ip4/A/tcp/P` or `/ip6/A/tcp/P` as a socket address.
fn tcp_of_multiaddr(a: &str) -> Option<SocketAddr> {
    let parts: Vec<&str> = a.split('/').collect();
    match parts.as_slice() {
        ["", "ip4" | "ip6", ip, "tcp", port, ..] => {
            Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
        }
        _ => None,
    }
}

/// Whether the peers in node.toml's `peers` answer on TCP (the rest of the
/// grid a running node knows: `grid_check`).
fn peers_check(cfg: &NodeConfig) -> Check {
    let known: Vec<SocketAddr> = cfg
        .peers
        .iter()
        .filter_map(|p| tcp_of_multiaddr(p))
        .collect();
    if known.is_empty() {
        return check(
            "peers",
            Verdict::Ok,
            "none configured: the node finds desktops on this network by mDNS, or joins with `pesc join TOKEN`",
        );
    }
    let reached: Vec<String> = known
        .iter()
        .filter(|a| TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok())
        .map(|a| a.to_string())
        .collect();
    if reached.is_empty() {
        check(
            "peers",
            Verdict::Warn,
            format!(
                "none of the {} configured peer(s) answers: a firewall, or they are off",
                known.len()
            ),
        )
    } else {
        check(
            "peers",
            Verdict::Ok,
            format!(
                "{} of {} configured peer(s) answer: {}",
                reached.len(),
                known.len(),
                reached.join(", ")
            ),
        )
    }
}

/// The running node's view of its grid: how many nodes it is connected
/// to, and whether it meets the grid's minimum isolation (below it, it
/// takes no runs).
async fn grid_check(data_dir: &Path) -> Check {
    let asked = async {
        let c = crate::cli::Client::from_data_dir(data_dir)?;
        let list: Vec<pesc_protocol::api::GridNode> =
            c.json(c.request(reqwest::Method::GET, "/nodes")).await?;
        anyhow::Ok(list)
    };
    let list = match tokio::time::timeout(Duration::from_secs(5), asked).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            return check(
                "grid",
                Verdict::Warn,
                format!("the running node does not answer: {e:#}"),
            );
        }
        Err(_) => {
            return check(
                "grid",
                Verdict::Warn,
                "the running node does not answer within 5 s",
            );
        }
    };
    let Some(me) = list.iter().find(|n| n.this_node) else {
        return check(
            "grid",
            Verdict::Warn,
            "the running node does not list itself",
        );
    };
    let others = list.len() - 1;
    let connected = list.iter().filter(|n| !n.this_node && n.connected).count();
    if !me.meets_minimum {
        return check(
            "grid",
            Verdict::Fail,
            format!(
                "isolation {} is below the grid's minimum: this node takes no runs (docs: security.md, isolation levels)",
                me.isolation
            ),
        );
    }
    let verdict = if others > 0 && connected == 0 {
        Verdict::Warn
    } else {
        Verdict::Ok
    };
    check(
        "grid",
        verdict,
        format!(
            "the node runs, isolation {}; connected to {connected} of the {others} other node(s) of its grid",
            me.isolation
        ),
    )
}

/// Leases and run times are read from clocks: a clock far off confuses the
/// grid's times (not its safety: leases are judged by heartbeats).
fn clock_check() -> Check {
    let now = crate::agent::now_ms() / 1000;
    // 2025-01-01: a clock before it was never set.
    if now < 1_735_689_600 {
        return check(
            "clock",
            Verdict::Fail,
            "the system clock is before 2025: set it (timedatectl set-ntp true)",
        );
    }
    let synced = Path::new("/run/systemd/timesync/synchronized").exists()
        || std::process::Command::new("timedatectl")
            .args(["show", "-p", "NTPSynchronized", "--value"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "yes");
    if synced {
        check("clock", Verdict::Ok, "synchronized (NTP)")
    } else {
        check(
            "clock",
            Verdict::Warn,
            "not known to be synchronized: run times and the Nodes page's \"last seen\" may be off (timedatectl set-ntp true)",
        )
    }
}
