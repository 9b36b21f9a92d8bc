//! The node's configuration: `node.toml` in the data dir, overridden by flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Default port of the API and UI on 127.0.0.1 ("PESC" on a phone keypad).
pub const DEFAULT_API_PORT: u16 = 7372;

/// Which executor runs user code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorChoice {
    /// Docker when a daemon answers, otherwise plain processes.
    Auto,
    /// Sandboxed child processes (own uid, Landlock, namespaces, limits).
    Process,
    /// Docker containers.
    Docker,
}

/// Settings kept in `DATA_DIR/node.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    /// Human name of this node (default: the host name).
    pub name: String,
    /// Runs at once (default: the number of CPUs).
    pub slots: u32,
    pub executor: ExecutorChoice,
    /// Address of the API and UI.
    pub api: SocketAddr,
    /// Host names browsers may use for this node's UI and API besides
    /// 127.0.0.1, localhost and [::1] (others are refused: DNS rebinding).
    pub api_hosts: Vec<String>,
    /// Owner name given to requests submitted with this node's local token.
    pub user: String,
    /// Largest process upload, in MiB.
    pub max_upload_mb: u64,
    /// A lease expires when no heartbeat was received for this long.
    pub lease_ttl_ms: u64,
    /// A finished request leaves memory after this many seconds without a
    /// change (it stays listed, searchable and downloadable).
    pub archive_after_s: u64,
    /// Where to listen for peers (multiaddrs).
    pub listen: Vec<String>,
    /// Peers to dial on other subnets (multiaddrs, with or without /p2p/ID).
    pub peers: Vec<String>,
    /// Find peers on the LAN with mDNS.
    pub mdns: bool,
    /// Nodes that must keep a run's results before it counts as done (fewer
    /// when fewer nodes are alive; 1 on a lone node).
    pub replication: u32,
    /// Snapshot a running run's `checkpoint/` dir this often, in seconds.
    pub checkpoint_interval_s: u64,
    /// Size limit of the blob store (cache) in MiB; least recently used
    /// blobs the grid does not need from this node go first. 0: no limit.
    pub cache_mb: u64,
    /// Largest shared file, in MiB.
    pub max_shared_file_mb: u64,
    /// Rooms this node serves besides General (requests for a room run only
    /// on its nodes).
    pub rooms: Vec<String>,
    /// The desktop owner's policy: `pause_when_others_above`,
    /// `check_concurrent_user`, `concurrent_resources_percent`.
    #[serde(flatten)]
    pub policy: crate::policy::PolicyConfig,
    /// Containers: default image, limits per run, network.
    pub docker: crate::executor::DockerConfig,
    /// The process executor's sandbox: slot uids, extra readable paths, limits.
    pub sandbox: crate::executor::SandboxConfig,
    /// What a run may make the node store: output size and files, logs,
    /// disk per attempt.
    pub results: crate::runner::caps::ResultLimits,
}

/// Default port for peers.
pub const DEFAULT_P2P_PORT: u16 = 7373;

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: hostname(),
            slots: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            executor: ExecutorChoice::Auto,
            api: SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)),
            api_hosts: Vec::new(),
            user: std::env::var("USER")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "user".into()),
            max_upload_mb: 1024,
            lease_ttl_ms: pesc_protocol::lease::DEFAULT_LEASE_TTL_MS,
            archive_after_s: pesc_protocol::node::ARCHIVE_AFTER_MS / 1000,
            listen: vec![
                format!("/ip4/0.0.0.0/tcp/{DEFAULT_P2P_PORT}"),
                format!("/ip6/::/tcp/{DEFAULT_P2P_PORT}"),
            ],
            peers: Vec::new(),
            mdns: true,
            replication: 2,
            checkpoint_interval_s: 60,
            cache_mb: 20 * 1024,
            max_shared_file_mb: 100 * 1024,
            rooms: Vec::new(),
            policy: Default::default(),
            docker: Default::default(),
            sandbox: Default::default(),
            results: Default::default(),
        }
    }
}

impl NodeConfig {
    /// Reads `node.toml`, writing the defaults there on first start.
    pub fn load_or_init(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("node.toml");
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let cfg: NodeConfig = toml::from_str(&text)
                .with_context(|| format!("{} is not a valid node config", path.display()))?;
            if cfg.replication == 0 || cfg.replication > 16 {
                anyhow::bail!("{}: replication must be 1 to 16", path.display());
            }
            if cfg.checkpoint_interval_s == 0 {
                anyhow::bail!(
                    "{}: checkpoint_interval_s must be at least 1",
                    path.display()
                );
            }
            return Ok(cfg);
        }
        let cfg = NodeConfig::default();
        let text = format!(
            "# PESC node settings (see docs/admin-guide.md). Command-line flags override them.\n{}",
            toml::to_string(&cfg)?
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(cfg)
    }
}

/// The data dir: `--data-dir`, else `$PESC_DATA_DIR` (clap fills both), else
/// `$XDG_DATA_HOME/pesc`, else `~/.local/share/pesc`.
pub fn resolve_data_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d);
    }
    let own = if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        PathBuf::from(x).join("pesc")
    } else {
        let home = std::env::var_os("HOME")
            .context("neither --data-dir, PESC_DATA_DIR, XDG_DATA_HOME nor HOME is set")?;
        PathBuf::from(home).join(".local/share/pesc")
    };
    // On a desktop where the package installed the service, an admin's
    // `pesc join`, `pesc doctor` or `pesc status` mean the service's node.
    let system = Path::new(SYSTEM_DATA_DIR);
    if !own.exists() && system.join("node.toml").exists() {
        return Ok(system.to_path_buf());
    }
    Ok(own)
}

/// The service's data dir (the Debian package's `pesc` service).
pub const SYSTEM_DATA_DIR: &str = "/var/lib/pesc";

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "pesc-node".into())
}
