//! `pesc node`: opens the data dir, starts the agent and serves the API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use libp2p::Multiaddr;
use pesc_protocol::join::JoinToken;

use crate::agent::{Agent, Command, Settings};
use crate::blobs::BlobStore;
use crate::config::{ExecutorChoice, NodeConfig};
use crate::executor::{
    DockerConfig, DockerExecutor, Executor, Sandbox, SandboxConfig, process::kill_orphans,
};
use crate::grid_secret::{self, Joined};
use crate::identity;
use crate::net::{self, NetConfig, fetch::Fetcher};
use crate::runner::RunnerCtx;
use crate::service::Service;
use crate::store::Store;

/// Flags of `pesc node` (each overrides node.toml).
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Address of the API and UI (default 127.0.0.1:7372; port 0 picks a free one).
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// Runs at once on this node (default: number of CPUs); 0 makes a node
    /// that submits and watches but runs nobody's work (a laptop).
    #[arg(long)]
    pub slots: Option<u32>,
    /// The same as --slots 0: a full peer that claims nothing.
    #[arg(long, conflicts_with = "slots")]
    pub client: bool,
    /// Which executor runs user code.
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorChoice>,
    /// Node name shown to users (default: host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Join the grid of this token (printed by `pesc grid token` on one of its nodes).
    #[arg(long, value_name = "TOKEN")]
    pub join: Option<String>,
    /// Listen for peers on this multiaddr (repeatable; replaces node.toml's `listen`).
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Dial this peer (repeatable; adds to node.toml's `peers`), e.g. /ip4/10.0.0.5/tcp/7373.
    #[arg(long, value_name = "MULTIADDR")]
    pub peer: Vec<String>,
    /// Find peers on the LAN with mDNS (default: node.toml's `mdns`, true).
    #[arg(long, value_name = "BOOL")]
    pub mdns: Option<bool>,
    /// Lease TTL in milliseconds (default: node.toml's `lease_ttl_ms`).
    #[arg(long, value_name = "MS")]
    pub lease_ttl_ms: Option<u64>,
    /// Nodes that must keep a run's results (default: node.toml's `replication`).
    #[arg(long, value_name = "N")]
    pub replication: Option<u32>,
    /// Archive a finished request after this many seconds without a change
    /// (default: node.toml's `archive_after_s`, 600).
    #[arg(long, value_name = "S")]
    pub archive_after_s: Option<u64>,
    /// Seconds between checkpoint snapshots (default: `checkpoint_interval_s`).
    #[arg(long, value_name = "S")]
    pub checkpoint_interval_s: Option<u64>,
    /// Blob store size limit in MiB, 0 for none (default: `cache_mb`).
    #[arg(long, value_name = "MIB")]
    pub cache_mb: Option<u64>,
    /// Image for runs that name none (default: `docker.default_image`).
    #[arg(long, value_name = "IMAGE")]
    pub docker_image: Option<String>,
    /// Take no new runs while others use more CPU than this percentage
    /// (default: `pause_when_others_above`; 100: never pause).
    #[arg(long, value_name = "PERCENT", alias = "cpu-percent-limit")]
    pub pause_when_others_above: Option<u32>,
    /// Peak memory expected of a program not seen yet (default:
    /// `default_run_memory_mb`).
    #[arg(long, value_name = "MIB")]
    pub default_run_memory_mb: Option<u64>,
}

/// The owner's policy as flags give it, over node.toml (at start and on
/// SIGHUP alike).
#[derive(Debug, Clone, Copy)]
struct PolicyFlags {
    pause_when_others_above: Option<u32>,
    default_run_memory_mb: Option<u64>,
}

impl PolicyFlags {
    fn apply(&self, p: &mut crate::policy::PolicyConfig) {
        if let Some(c) = self.pause_when_others_above {
            p.pause_when_others_above = c;
        }
        if let Some(m) = self.default_run_memory_mb {
            p.default_run_memory_mb = m;
        }
    }
}

pub async fn run(data_dir: PathBuf, args: NodeArgs) -> Result<()> {
    crate::data_dir::secure(&data_dir)?;
    let mut cfg = NodeConfig::load_or_init(&data_dir)?;
    if let Some(a) = args.api {
        cfg.api = a;
    }
    if let Some(s) = args.slots {
        cfg.slots = s;
    }
    if args.client {
        cfg.slots = 0;
    }
    if let Some(e) = args.executor {
        cfg.executor = e;
    }
    if let Some(n) = args.name.clone() {
        cfg.name = n;
    }
    if !args.listen.is_empty() {
        cfg.listen = args.listen.clone();
    }
    cfg.peers.extend(args.peer.iter().cloned());
    if let Some(m) = args.mdns {
        cfg.mdns = m;
    }
    if let Some(t) = args.lease_ttl_ms {
        if t < 1000 {
            bail!("--lease-ttl-ms must be at least 1000");
        }
        cfg.lease_ttl_ms = t;
    }
    if let Some(a) = args.archive_after_s {
        cfg.archive_after_s = a;
    }
    if let Some(r) = args.replication {
        if !(1..=16).contains(&r) {
            bail!("--replication must be 1 to 16");
        }
        cfg.replication = r;
    }
    if let Some(s) = args.checkpoint_interval_s {
        if s == 0 {
            bail!("--checkpoint-interval-s must be at least 1");
        }
        cfg.checkpoint_interval_s = s;
    }
    if let Some(c) = args.cache_mb {
        cfg.cache_mb = c;
    }
    if let Some(i) = args.docker_image {
        cfg.docker.default_image = i;
    }
    let flags = PolicyFlags {
        pause_when_others_above: args.pause_when_others_above,
        default_run_memory_mb: args.default_run_memory_mb,
    };
    flags.apply(&mut cfg.policy);
    cfg.docker.check().context("node.toml")?;
    cfg.policy.check().context("node.toml")?;
    if let Some(r) = cfg
        .rooms
        .iter()
        .find(|r| r.trim().is_empty() || r.len() > pesc_protocol::limits::MAX_NAME_BYTES)
    {
        bail!(
            "node.toml: room name '{r}' must have 1 to {} bytes",
            pesc_protocol::limits::MAX_NAME_BYTES
        );
    }
    let mut join: Option<JoinToken> = args
        .join
        .as_deref()
        .map(|t| t.parse().map_err(|e| anyhow::anyhow!("--join: {e}")))
        .transpose()?;
    // A token `pesc join` left for this start (`--join` wins over it).
    let join_file = data_dir.join(grid_secret::JOIN_FILE);
    let refused = data_dir.join(format!("{}.refused", grid_secret::JOIN_FILE));
    let pending = if join.is_some() {
        if std::fs::remove_file(&join_file).is_ok() {
            tracing::info!("--join given: the token `pesc join` left is dropped");
        }
        None
    } else {
        match grid_secret::pending_join(&data_dir) {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::rename(&join_file, &refused);
                tracing::error!("not joining: {e:#}; kept as {}", refused.display());
                None
            }
        }
    };
    let from_file = pending.is_some();
    if from_file {
        join = pending;
    }
    let parse_addrs = |list: &[String], what: &str| -> Result<Vec<Multiaddr>> {
        list.iter()
            .map(|a| {
                a.parse::<Multiaddr>().with_context(|| {
                    format!("{what} '{a}' is not a multiaddr (e.g. /ip4/10.0.0.5/tcp/7373)")
                })
            })
            .collect()
    };
    let listen = parse_addrs(&cfg.listen, "listen address")?;
    let mut peers = parse_addrs(&cfg.peers, "peer")?;
    if let Some(t) = &join {
        peers.extend(parse_addrs(&t.addrs, "join token address")?);
    }
    let key = identity::load_or_create_key(&data_dir)?;
    let node = identity::node_id(&key);
    let token = identity::load_or_create_token(&data_dir)?;
    let work_dir = data_dir.join("work");
    let slot_apps: Vec<PathBuf> = (0..cfg.slots as usize)
        .map(|s| crate::runner::slot_app_dir(&work_dir, s))
        .collect();
    let executor = pick_executor(
        cfg.executor,
        node.as_str(),
        &cfg.docker,
        &cfg.sandbox,
        (&work_dir.join("probe"), &slot_apps),
    )
    .await?;
    let orphans = kill_orphans(node.as_str());
    if orphans > 0 {
        tracing::warn!("stopped {orphans} process(es) left running by this node's previous life");
    }
    let store = Store::open(&data_dir.join("node.redb"))?;
    let settled = grid_secret::settle(&data_dir, &store, join.as_ref());
    let (secret, joined) = match (settled, from_file) {
        (Ok(s), _) => {
            if from_file {
                let _ = std::fs::remove_file(&join_file);
            }
            s
        }
        // A token `pesc join` left that cannot be followed: the node stays
        // in its grid, and says why.
        (Err(e), true) => {
            let _ = std::fs::rename(&join_file, &refused);
            tracing::error!(
                "not joining the grid `pesc join` named ({e:#}); the token is kept in {}",
                refused.display()
            );
            grid_secret::settle(&data_dir, &store, None)?
        }
        (Err(e), false) => return Err(e),
    };
    let grid_id = secret.grid_id_hex();
    let blobs = Arc::new(BlobStore::open(data_dir.join("blobs"))?);
    let tmp_dir = data_dir.join("tmp");
    let _ = std::fs::remove_dir_all(&tmp_dir);
    std::fs::create_dir_all(&tmp_dir)?;
    let (net, net_events) = net::start(
        NetConfig {
            key: key.clone(),
            psk: secret.psk,
            grid_id: grid_id.clone(),
            listen,
            peers,
            mdns: cfg.mdns,
            addr_file: data_dir.join(grid_secret::ADDR_FILE),
        },
        blobs.clone(),
    )?;
    let fetcher = Arc::new(Fetcher::new(net.clone(), blobs.clone()));
    let runner = Arc::new(RunnerCtx {
        work_dir,
        blobs: blobs.clone(),
        executor,
        fetcher,
        net: net.clone(),
        checkpoint_every: std::time::Duration::from_secs(cfg.checkpoint_interval_s),
        live_nodes: 1.into(),
        result_limits: cfg.results.clone(),
    });
    runner.recover();
    let settings = Settings {
        node: node.clone(),
        name: cfg.name.clone(),
        slots: cfg.slots,
        lease_ttl_ms: cfg.lease_ttl_ms,
        archive_after_ms: cfg.archive_after_s.saturating_mul(1000),
        data_dir: data_dir.clone(),
        grid_id: grid_id.clone(),
        replication: cfg.replication as usize,
        cache_bytes: cfg.cache_mb.saturating_mul(1 << 20),
        policy: cfg.policy.clone(),
        rooms: cfg.rooms.clone(),
        gpus: {
            let probe = crate::gpu::probe();
            let found = probe.gpus();
            tracing::info!("GPUs: {} ({})", found.len(), probe.describe());
            probe
        },
    };
    let (agent, handle, commands) = Agent::new(settings, store, runner.clone(), net)?;
    let stop_tx = handle.tx.clone();
    reload_on_sighup(
        handle.tx.clone(),
        data_dir.clone(),
        args.name.clone(),
        if args.client { Some(0) } else { args.slots },
        flags,
    );
    let setup_code = hex::encode(rand::random::<[u8; 16]>());
    let service = Arc::new(Service {
        token,
        setup_code: setup_code.clone(),
        agent: handle,
        blobs,
        runner: runner.clone(),
        max_upload_bytes: cfg.max_upload_mb.saturating_mul(1 << 20),
        max_file_bytes: cfg.max_shared_file_mb.saturating_mul(1 << 20),
        owner: cfg.user.clone(),
        tmp_dir,
        template_bases: cfg.docker.template_bases.clone(),
        started_ms: crate::agent::now_ms(),
        session_key: blake3::derive_key("pesc session cookies v1", &secret.psk),
        data_dir: data_dir.clone(),
        far_statuses: Default::default(),
        allowed_hosts: {
            // The address the API listens on is a name for it too.
            let mut h = cfg.api_hosts.clone();
            if !cfg.api.ip().is_unspecified() && !cfg.api.ip().is_loopback() {
                h.push(match cfg.api.ip() {
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                    ip => ip.to_string(),
                });
            }
            h
        },
    });
    let listener = tokio::net::TcpListener::bind(cfg.api)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another node running? use --api)",
                cfg.api
            )
        })?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "the API listens on {addr}, beyond this machine, without TLS: anyone who can reach it and has the token controls this node"
        );
    }
    // Whole or not at all: a CLI reading it meanwhile never sees it empty.
    crate::blobs::write_atomic(&data_dir.join("api.addr"), addr.to_string().as_bytes())
        .context("writing api.addr")?;
    let label = if runner.executor.isolated() {
        ""
    } else {
        " (runs are NOT isolated: plain processes that can read this node's data)"
    };
    tracing::info!(
        "node {} ({}) ready: API on http://{addr}/api/v1, {} slot(s), executor {}, isolation {}{label}, data in {}",
        cfg.name,
        node,
        cfg.slots,
        runner.executor.name(),
        runner.executor.isolation().describe(),
        data_dir.display()
    );
    tracing::info!("web UI: http://{addr}/");
    match joined {
        // The join token is the grid's password: never in the log in full.
        Joined::Created => tracing::info!(
            "created grid {grid_id}. To add a desktop, get the join command with `pesc grid token` on this machine (or from the Nodes page as an admin)"
        ),
        Joined::FromToken => tracing::info!("joined grid {grid_id}"),
        Joined::Again => tracing::info!("grid {grid_id}"),
    }
    let agent_task = tokio::spawn(agent.run(commands, net_events));
    print_setup_link(&service, addr, &setup_code).await;
    let app = pesc_webui::router(service);
    let (signalled_tx, signalled) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(
        // Connection addresses reach the login's per-address limit.
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            let _ = signalled_tx.send(());
        })
        .into_future(),
    );
    if signalled.await.is_err() {
        // The server ended on its own: an error.
        return match server.await {
            Ok(r) => r.context("serving the API"),
            Err(e) => Err(anyhow::anyhow!("the API server stopped: {e}")),
        };
    }
    // Hand this node's runs back to the grid before leaving.
    let (tx, done) = tokio::sync::oneshot::channel();
    if stop_tx.send(Command::Shutdown(tx)).await.is_ok() {
        let limit = Duration::from_millis(SHUTDOWN_LIMIT_MS);
        if tokio::time::timeout(limit, done).await.is_err() {
            tracing::warn!("the node's runs did not stop in time: leaving anyway");
        }
    }
    agent_task.abort();
    // Open API connections (followed logs) get a moment to finish.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    tracing::info!("node stopped");
    Ok(())
}

/// While the grid has no account, the link that makes its first admin: the
/// page with this run's one-time code filled in. (Only the code: neither the
/// API token nor the grid key is ever written to the log.)
async fn print_setup_link(service: &Service, addr: SocketAddr, code: &str) {
    use pesc_webui::NodeService;
    let has_accounts = service.access().await.is_ok_and(|a| !a.users.is_empty());
    if has_accounts {
        return;
    }
    let host = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    tracing::info!(
        "this grid has no admin yet: open http://{host}/setup?code={code} to make its first one (the link works until then, for this run of the node)"
    );
}

/// The longest a stopping node waits for its runs to be handed back.
const SHUTDOWN_LIMIT_MS: u64 = 30_000;

async fn pick_executor(
    choice: ExecutorChoice,
    node: &str,
    docker: &DockerConfig,
    sandbox: &SandboxConfig,
    (scratch, slot_apps): (&std::path::Path, &[PathBuf]),
) -> Result<Arc<dyn Executor>> {
    let sandboxed = || async {
        let s = Sandbox::probe(sandbox.clone(), node, scratch, slot_apps).await?;
        anyhow::Ok(Arc::new(s) as Arc<dyn Executor>)
    };
    let connect = || async {
        let d = DockerExecutor::connect(node, docker.clone()).await?;
        let gone = d.remove_orphans().await;
        if gone > 0 {
            tracing::warn!("removed {gone} container(s) left by this node's previous life");
        }
        anyhow::Ok(Arc::new(d) as Arc<dyn Executor>)
    };
    match choice {
        ExecutorChoice::Process => sandboxed().await,
        ExecutorChoice::Docker => connect().await.context(
            "--executor docker: is the Docker daemon running? (or use --executor process)",
        ),
        ExecutorChoice::Auto => match connect().await {
            Ok(d) => {
                tracing::info!("a Docker daemon answers: runs go in containers");
                Ok(d)
            }
            Err(e) => {
                tracing::info!("no usable Docker daemon ({e:#}): using the process executor");
                sandboxed().await
            }
        },
    }
}

/// Re-reads node.toml on SIGHUP: the name, rooms and the owner's policy
/// apply at once, running runs go on (flags given at start still win). A
/// file that does not parse or check leaves the settings as they were.
fn reload_on_sighup(
    tx: tokio::sync::mpsc::Sender<crate::agent::Command>,
    data_dir: PathBuf,
    name_flag: Option<String>,
    slots_flag: Option<u32>,
    flags: PolicyFlags,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: node.toml is read at start only");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let read = NodeConfig::load_or_init(&data_dir).and_then(|mut c| {
                flags.apply(&mut c.policy);
                c.policy.check()?;
                Ok(c)
            });
            match read {
                Ok(c) => {
                    let cmd = crate::agent::Command::Reconfigure {
                        name: name_flag.clone().unwrap_or(c.name),
                        rooms: c.rooms,
                        slots: slots_flag.unwrap_or(c.slots),
                        policy: c.policy,
                    };
                    if tx.send(cmd).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!("node.toml not re-read, the settings stay: {e:#}"),
            }
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
