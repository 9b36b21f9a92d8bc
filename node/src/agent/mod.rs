//! The agent: the driver of this node's protocol core
//! ([`pesc_protocol::node::Node`]).
//!
//! The core decides everything; the agent carries it out with real time and
//! I/O. One task owns the core and feeds it what arrives (API commands,
//! runner events, network events, probe samples, timeouts); after each
//! batch it ends the batch in the core and does what the core asks: start
//! and stop attempts, send sync messages and beats, write documents to redb
//! (one transaction per batch), dial peers. Probes (/proc, utmp, NVML, the
//! load) run off this task and send samples in.

mod net;
mod probe;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Result;
use pesc_protocol::api::{NewRequest, NodeInfo, RequestInfo, SharedFileInfo};
use pesc_protocol::domain::Domain;
use pesc_protocol::model::{Process, SharedFile};
use pesc_protocol::node::{
    Action, AttemptKey, Config, ExecutorInfo, Node, NodeError, Now, ReadModel, Sample, Submitted,
};
use pesc_protocol::wire::{Gossip, SyncRequest};
use pesc_protocol::{BlobHash, NodeId, RequestId};
use pesc_webui::ApiFailure;
use tokio::sync::{mpsc, oneshot, watch};

pub use pesc_protocol::node::{EventsPage, LogSource, ResultPlan};

use crate::net::{NetCmd, NetEvent, NetHandle, peer_of};
use crate::runner::{RunnerCtx, RunnerEvent, run_attempt};
use crate::store::{AfterCommit, Store, StoreWriter};

type Reply<T> = oneshot::Sender<T>;
type ApiResult<T> = Result<T, ApiFailure>;
/// A command's answer: the core's domain errors (the web layer maps them).
type NodeResult<T> = Result<T, NodeError>;

/// Commands from the API to the agent.
pub enum Command {
    RegisterProcess(Process, Reply<NodeResult<Process>>),
    Processes(Reply<Vec<Process>>),
    /// A new request for this user.
    Submit(NewRequest, String, Reply<NodeResult<RequestInfo>>),
    /// The same request again, exactly, for its owner.
    Rerun {
        id: String,
        owner: pesc_protocol::access::Principal,
        reply: Reply<NodeResult<RequestInfo>>,
    },
    /// Users, tokens, rooms and placements.
    Access(Reply<NodeResult<pesc_protocol::access::AccessState>>),
    ChangeAccess(pesc_protocol::access::AccessChange, Reply<NodeResult<()>>),
    User(
        String,
        Reply<NodeResult<Option<pesc_protocol::access::User>>>,
    ),
    Token(
        String,
        Reply<NodeResult<Option<pesc_protocol::access::ApiToken>>>,
    ),
    /// A request, with its runs if asked (archived ones are read back).
    Get {
        id: String,
        runs: bool,
        reply: Reply<NodeResult<RequestInfo>>,
    },
    Cancel {
        id: String,
        reply: Reply<NodeResult<RequestInfo>>,
    },
    NodeInfo(Reply<NodeInfo>),
    Results {
        id: String,
        reply: Reply<NodeResult<ResultPlan>>,
    },
    Log {
        id: String,
        rank: u32,
        reply: Reply<NodeResult<LogSource>>,
    },
    /// A shared file was stored here: record it in the grid.
    PutFile(SharedFile, Reply<NodeResult<SharedFileInfo>>),
    Files(Reply<Vec<SharedFileInfo>>),
    File(String, Reply<NodeResult<SharedFileInfo>>),
    /// This node now keeps a whole copy of this shared file.
    HoldFile(BlobHash, Reply<()>),
    /// Records a domain (checked already) in the grid.
    PutDomain(Domain, Reply<NodeResult<Domain>>),
    /// node.toml was re-read (SIGHUP): the name, rooms and owner's policy
    /// apply now, without a restart.
    Reconfigure {
        name: String,
        rooms: Vec<String>,
        slots: u32,
        policy: crate::policy::PolicyConfig,
    },
    Domains(Reply<Vec<Domain>>),
    /// Request changes after this version (the event stream); with an
    /// owner, only changes to that user's requests.
    Events(u64, Option<String>, Reply<EventsPage>),
    Domain(String, Reply<NodeResult<Domain>>),
    /// The node is stopping: stop this node's runs (their programs get
    /// SIGTERM, then a last checkpoint snapshot is taken), record them as
    /// handed back so other nodes take them at once, tell the peers, and
    /// answer once that is on disk.
    Shutdown(Reply<()>),
}

pub struct Settings {
    pub node: NodeId,
    pub name: String,
    pub slots: u32,
    pub lease_ttl_ms: u64,
    /// A finished request is archived after this long without a change.
    pub archive_after_ms: u64,
    pub data_dir: PathBuf,
    pub grid_id: String,
    /// Nodes that must hold a run's results before it counts as done.
    pub replication: usize,
    /// Size limit of the blob store in bytes (0: none).
    pub cache_bytes: u64,
    /// The desktop owner's policy.
    pub policy: crate::policy::PolicyConfig,
    /// Where the node learns about its GPUs.
    pub gpus: Box<dyn crate::gpu::GpuProbe>,
    /// Rooms this node serves besides General.
    pub rooms: Vec<String>,
}

pub struct Agent {
    node: Node,
    started: Instant,
    data_dir: PathBuf,
    grid_id: String,
    slots: u32,
    name: String,
    cache_bytes: u64,
    writer: StoreWriter,
    /// For reading archived documents back.
    store: Arc<Store>,
    /// Replies to send once the next batch is durable.
    after_commit: Vec<AfterCommit>,
    runner: Arc<RunnerCtx>,
    /// How to stop each attempt running here.
    stops: HashMap<AttemptKey, watch::Sender<bool>>,
    evicting: Arc<AtomicBool>,
    version_tx: watch::Sender<u64>,
    events_tx: mpsc::Sender<RunnerEvent>,
    events_rx: mpsc::Receiver<RunnerEvent>,
    net: NetHandle,
    /// The probes, until `run` sets them going.
    probes: Option<probe::Probes>,
    /// The owner's policy the probes read (changed by a reload).
    policy_tx: watch::Sender<crate::policy::PolicyConfig>,
    /// Who asked the node to stop.
    stop_reply: Option<Reply<()>>,
    /// The core says the stop is complete.
    stopped: bool,
    watchers: Arc<Watchers>,
    /// What the API reads without asking (see [`ReadModel`]).
    reads: Arc<std::sync::RwLock<ReadModel>>,
    /// Replies to send once this batch's read model is published.
    after_publish: Vec<Box<dyn FnOnce() + Send>>,
}

/// A handle the API uses to reach the agent.
#[derive(Clone)]
pub struct AgentHandle {
    pub tx: mpsc::Sender<Command>,
    pub versions: watch::Receiver<u64>,
    /// Per request: what a long poll on it waits for.
    pub watchers: Arc<Watchers>,
    /// Published after every batch: lists, metrics and nodes are read
    /// here, never queued behind the agent's work.
    pub reads: Arc<std::sync::RwLock<ReadModel>>,
    /// The node's traffic counters (for the metrics).
    pub traffic: Arc<crate::net::NetStats>,
}

/// Long polls wait on the request they ask about, not on every change of
/// the node: one watch per request someone waits on.
#[derive(Default)]
pub struct Watchers(std::sync::Mutex<HashMap<RequestId, watch::Sender<u64>>>);

impl Watchers {
    /// Wakes on each change of request `id`.
    pub fn subscribe(&self, id: &RequestId) -> watch::Receiver<u64> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Request `id` changed: wakes its waiters (and forgets watches nobody
    /// holds any more).
    fn changed(&self, id: &RequestId, version: u64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(id) {
            if tx.receiver_count() == 0 {
                map.remove(id);
            } else {
                let _ = tx.send(version);
            }
        }
    }
}

impl AgentHandle {
    /// The read model as last published (held briefly: the agent waits
    /// for it to publish the next batch).
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, ReadModel> {
        self.reads.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a command and waits for its reply.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> ApiResult<T> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| ApiFailure::unavailable("the node is shutting down"))?;
        rx.await
            .map_err(|_| ApiFailure::unavailable("the node is shutting down"))
    }

    /// Sends a command whose answer may be a domain error, and waits.
    pub async fn call<T>(
        &self,
        make: impl FnOnce(Reply<NodeResult<T>>) -> Command,
    ) -> ApiResult<T> {
        self.ask(make).await?.map_err(ApiFailure::from)
    }
}

/// Wall-clock milliseconds since 1970 (for display; never compared across nodes).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Agent {
    /// Loads the node's documents into its protocol core (which recovers
    /// from an earlier crash: the node's unfinished attempts run again).
    pub fn new(
        s: Settings,
        store: Store,
        runner: Arc<RunnerCtx>,
        net: NetHandle,
    ) -> Result<(Agent, AgentHandle, mpsc::Receiver<Command>)> {
        let started = Instant::now();
        let executor = &runner.executor;
        let cfg = Config {
            node: s.node.clone(),
            name: s.name.clone(),
            slots: s.slots,
            lease_ttl_ms: s.lease_ttl_ms,
            grid_id: s.grid_id.clone(),
            replication: s.replication,
            evict_blobs: s.cache_bytes > 0,
            policy: s.policy.core(),
            rooms: s.rooms.clone(),
            load_order: true,
            executor: ExecutorInfo {
                name: executor.name().to_string(),
                isolation: executor.isolation().level(),
                isolation_detail: executor.isolation().describe(),
                containers: executor.runs_containers(),
            },
            // This start's incarnation: above every earlier start's.
            archive_after_ms: s.archive_after_ms,
            incarnation: now_ms().max(1),
            seed: rand::random(),
        };
        let now = Now {
            mono_ms: 0,
            wall_ms: now_ms(),
        };
        let node = Node::load(cfg, store.load_docs()?, store.archived()?, now)?;
        // Reading the store took far more than the node keeps.
        crate::store::give_back_freed_memory();
        let store = Arc::new(store);
        let (tx, rx) = mpsc::channel(1024);
        let (version_tx, versions) = watch::channel(0);
        // Bounded: a runner that reports faster than the agent reads waits.
        let (events_tx, events_rx) = mpsc::channel(1024);
        let watchers = Arc::new(Watchers::default());
        let reads = Arc::new(std::sync::RwLock::new(ReadModel::default()));
        let traffic = net.stats.clone();
        let (policy_tx, policy_rx) = watch::channel(s.policy.clone());
        let probes = probe::Probes::new(policy_rx, s.gpus, &s.node);
        let agent = Agent {
            node,
            started,
            data_dir: s.data_dir,
            grid_id: s.grid_id,
            slots: s.slots,
            name: s.name,
            cache_bytes: s.cache_bytes,
            writer: StoreWriter::spawn(store.clone())?,
            store,
            after_commit: Vec::new(),
            runner,
            stops: HashMap::new(),
            evicting: Default::default(),
            version_tx,
            events_tx,
            events_rx,
            net,
            probes: Some(probes),
            policy_tx,
            stop_reply: None,
            stopped: false,
            watchers: watchers.clone(),
            reads: reads.clone(),
            after_publish: Vec::new(),
        };
        Ok((
            agent,
            AgentHandle {
                tx,
                versions,
                watchers,
                reads,
                traffic,
            },
            rx,
        ))
    }

    /// Both clocks now.
    fn now(&self) -> Now {
        Now {
            mono_ms: self.started.elapsed().as_millis() as u64,
            wall_ms: now_ms(),
        }
    }

    /// Runs until every command sender is gone or a stop is complete.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut net_events: mpsc::Receiver<NetEvent>,
    ) {
        let (sample_tx, mut samples) = mpsc::channel::<Sample>(4);
        if let Some(p) = self.probes.take() {
            probe::spawn(p, sample_tx);
        }
        self.end_batch();
        loop {
            let wake = self.started + std::time::Duration::from_millis(self.node.poll_timeout());
            tokio::select! {
                c = commands.recv() => match c {
                    Some(c) => self.command(c),
                    None => break,
                },
                Some(ev) = self.events_rx.recv() => self.run_event(ev),
                Some(ev) = net_events.recv() => self.net_event(ev),
                Some(s) = samples.recv() => {
                    let now = self.now();
                    self.node.probe(now, s);
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = self.now();
                    self.node.handle_timeout(now);
                }
            }
            // Take everything already waiting before ending the batch once.
            for _ in 0..256 {
                let mut any = false;
                if let Ok(ev) = self.events_rx.try_recv() {
                    self.run_event(ev);
                    any = true;
                }
                if let Ok(c) = commands.try_recv() {
                    self.command(c);
                    any = true;
                }
                if let Ok(ev) = net_events.try_recv() {
                    self.net_event(ev);
                    any = true;
                }
                if !any {
                    break;
                }
            }
            self.end_batch();
            if self.stopped {
                break;
            }
        }
        for stop in self.stops.values() {
            let _ = stop.send(true);
        }
        if let Some(reply) = self.stop_reply.take() {
            let durable = self.durable();
            self.end_batch();
            let _ = durable.await;
            let _ = reply.send(());
        }
    }

    fn run_event(&mut self, ev: RunnerEvent) {
        if let RunnerEvent::Finished { key, .. } = &ev {
            self.stops.remove(key);
        }
        let now = self.now();
        self.node.run_event(now, ev);
    }

    /// Ends the batch in the core and carries out what it asks.
    fn end_batch(&mut self) {
        if self.writer.take_failure() {
            self.node.store_failed();
        }
        let now = self.now();
        self.node.end_batch(now);
        // Published before the actions are carried out: whoever they wake
        // (event streams, long polls) reads this batch's state.
        {
            let mut model = self.reads.write().unwrap_or_else(|e| e.into_inner());
            self.node.publish_reads(now, &mut model);
        }
        for reply in self.after_publish.drain(..) {
            reply();
        }
        while let Some(a) = self.node.poll_action() {
            self.act(a);
        }
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Start(job) => {
                let (stop, stop_rx) = watch::channel(false);
                self.stops.insert(job.key.clone(), stop);
                tokio::spawn(run_attempt(
                    self.runner.clone(),
                    *job,
                    stop_rx,
                    self.events_tx.clone(),
                ));
            }
            Action::Stop(key) => {
                if let Some(s) = self.stops.get(&key) {
                    let _ = s.send(true);
                }
            }
            Action::Policy(p) => {
                // An admin's setting: the probes watch what it asks.
                self.policy_tx.send_modify(|c| c.set_core(&p));
            }
            Action::Suspend { key, on } => {
                let executor = self.runner.executor.clone();
                let node = self.node.id().as_str().to_string();
                tokio::spawn(async move {
                    if let Err(e) = executor.suspend(&node, &key.0, key.1, on).await {
                        tracing::warn!(
                            "cannot {} rank {} of {}: {e:#}",
                            if on { "suspend" } else { "resume" },
                            key.1,
                            key.0
                        );
                    }
                });
            }
            Action::Sync { to, doc, msg } => {
                if let Some(peer) = peer_of(&to) {
                    self.net.send(NetCmd::Sync {
                        peer,
                        req: SyncRequest::Sync { doc, msg },
                        reply: None,
                    });
                }
            }
            Action::Ping { to, beat } => {
                if let Some(peer) = peer_of(&to) {
                    self.net.send(NetCmd::Sync {
                        peer,
                        req: SyncRequest::Ping(beat),
                        reply: None,
                    });
                }
            }
            Action::Publish(n) => self.net.send(NetCmd::Publish(Gossip::Liveness(n))),
            Action::Dial { node, addrs } => {
                if let Some(peer) = peer_of(&node) {
                    let addrs = addrs.iter().filter_map(|a| a.parse().ok()).collect();
                    self.net.send(NetCmd::AddPeer { peer, addrs });
                }
            }
            Action::Links(links) => self
                .net
                .send(NetCmd::Links(links.iter().filter_map(peer_of).collect())),
            Action::Persist(writes) => self
                .writer
                .send(writes, std::mem::take(&mut self.after_commit)),
            Action::Throttle(share) => {
                let executor = self.runner.executor.clone();
                tokio::spawn(async move { executor.throttle(share).await });
            }
            Action::RequestDone(id) => {
                let dir = self.runner.work_dir.join(id.as_str());
                tokio::task::spawn_blocking(move || {
                    let _ = std::fs::remove_dir_all(dir);
                });
            }
            Action::EvictBlobs(keep) => self.evict(keep),
            Action::LiveNodes(n) => self.runner.live_nodes.store(n, Ordering::Relaxed),
            Action::Changed(v) => {
                let _ = self.version_tx.send(v);
            }
            Action::RequestChanged(id, v) => self.watchers.changed(&id, v),
            Action::Stopped => self.stopped = true,
        }
    }

    /// Resolves once this batch is written: `true` when everything changed
    /// so far is on disk, `false` when the write failed.
    fn durable(&mut self) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        self.after_commit.push(Box::new(move |ok| {
            let _ = tx.send(ok);
        }));
        rx
    }

    /// Evicts least recently used blobs when the store is over its limit
    /// (on a blocking thread; at most one pass at a time).
    fn evict(&mut self, keep: std::collections::HashSet<BlobHash>) {
        let limit = self.cache_bytes;
        if limit == 0 || self.evicting.load(Ordering::Relaxed) {
            return;
        }
        let blobs = self.runner.blobs.clone();
        let busy = self.evicting.clone();
        busy.store(true, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            match blobs.evict(limit, &keep) {
                Ok(e) if !e.evicted.is_empty() || e.kept_over_limit > 0 => tracing::info!(
                    "blob store: {} MiB -> {} MiB, {} blob(s) evicted{}",
                    e.before_bytes >> 20,
                    e.after_bytes >> 20,
                    e.evicted.len(),
                    if e.kept_over_limit > 0 {
                        format!(
                            "; {} MiB over the limit are still needed by the grid",
                            e.kept_over_limit >> 20
                        )
                    } else {
                        String::new()
                    }
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("evicting blobs: {e:#}"),
            }
            busy.store(false, Ordering::Relaxed);
        });
    }

    /// Reads an archived request back into the core before something
    /// needs its document (its runs, results or logs; a peer's sync).
    /// `prefix` is an id or its start, as users give it.
    fn restore(&mut self, prefix: &str) {
        let Ok(id) = self.node.resolve(prefix) else {
            return;
        };
        if !self.node.is_archived(&id) {
            return;
        }
        let now = self.now();
        match self.store.load_doc(&Node::doc_key(&id)) {
            Ok(Some(doc)) => {
                if let Err(e) = self.node.restore(now, doc) {
                    tracing::error!("{e}");
                }
            }
            Ok(None) => tracing::error!("archived request {id} is not in the store"),
            Err(e) => tracing::error!("reading archived request {id}: {e:#}"),
        }
    }

    fn command(&mut self, c: Command) {
        match &c {
            Command::Get { id, runs: true, .. }
            | Command::Results { id, .. }
            | Command::Rerun { id, .. }
            | Command::Log { id, .. } => self.restore(id),
            _ => {}
        }
        let now = self.now();
        let n = &mut self.node;
        match c {
            Command::RegisterProcess(p, reply) => {
                let _ = reply.send(n.put_process(p));
            }
            Command::Processes(reply) => {
                let _ = reply.send(n.processes());
            }
            Command::Access(reply) => {
                let _ = reply.send(n.access());
            }
            Command::ChangeAccess(c, reply) => {
                let _ = reply.send(n.change_access(&c));
            }
            Command::User(name, reply) => {
                let _ = reply.send(n.user(&name));
            }
            Command::Token(id, reply) => {
                let _ = reply.send(n.token(&id));
            }
            Command::Rerun { id, owner, reply } => match n.rerun(now, &id, &owner) {
                Ok(s) => self.replicate_then_reply(s, reply),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Submit(req, owner, reply) => match n.submit(now, req, owner) {
                // Answer once the request is on disk here and on one peer, so
                // an accepted request survives a crash of this node.
                Ok(s) => self.replicate_then_reply(s, reply),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Get { id, runs, reply } => {
                let _ = reply.send(n.get(now, &id, runs));
            }
            Command::Cancel { id, reply } => {
                // Answered once the read model shows it: a list right
                // after the answer sees the request cancelled.
                let r = n.cancel(now, &id);
                self.after_publish.push(Box::new(move || {
                    let _ = reply.send(r);
                }));
            }
            Command::NodeInfo(reply) => {
                let _ = reply.send(self.node_info());
            }
            Command::Results { id, reply } => {
                let _ = reply.send(n.result_plan(now, &id));
            }
            Command::Log { id, rank, reply } => {
                let _ = reply.send(n.log_source(now, &id, rank));
            }
            Command::PutFile(f, reply) => {
                let _ = reply.send(n.put_file(f));
            }
            Command::Files(reply) => {
                let _ = reply.send(n.files());
            }
            Command::File(name, reply) => {
                let _ = reply.send(n.file(&name));
            }
            Command::HoldFile(hash, reply) => {
                n.hold_file(&hash);
                let _ = reply.send(());
            }
            Command::Shutdown(reply) => {
                n.begin_stop(now);
                self.stop_reply = Some(reply);
            }
            Command::PutDomain(d, reply) => {
                let _ = reply.send(n.put_domain(d));
            }
            Command::Reconfigure {
                name,
                rooms,
                slots,
                policy,
            } => {
                self.policy_tx.send_replace(policy.clone());
                n.reconfigure(name.clone(), rooms, slots, policy.core());
                self.name = name;
                tracing::info!(
                    "node.toml re-read: name, rooms, slots and the owner's policy apply now"
                );
            }
            Command::Events(since, owner, reply) => {
                let _ = reply.send(n.events(since, owner.as_deref()));
            }
            Command::Domains(reply) => {
                let _ = reply.send(n.domains());
            }
            Command::Domain(name, reply) => {
                let _ = reply.send(n.domain(&name));
            }
        }
    }

    fn node_info(&self) -> NodeInfo {
        let n = &self.node;
        let executor = &self.runner.executor;
        NodeInfo {
            id: n.id().clone(),
            name: self.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            executor: executor.name().to_string(),
            isolated: executor.isolated(),
            isolation: executor.isolation().describe(),
            slots: self.slots,
            slots_busy: n.slots_busy(),
            data_dir: self.data_dir.display().to_string(),
            requests: n.request_count(),
            grid: self.grid_id.clone(),
            peers: n.peers().len() as u32,
            traffic: self.net.stats.snapshot(),
            skipped: n.skipped(100),
        }
    }

    /// Answers a submit once the request is durable here and held by one
    /// of the peers the core picked (at once on a lone node, or after a
    /// timeout).
    fn replicate_then_reply(&mut self, s: Submitted, reply: Reply<NodeResult<RequestInfo>>) {
        let durable = self.durable();
        let net = self.net.clone();
        tokio::spawn(net::replicate_then_reply(net, s, durable, reply));
    }
}
