//! The agent: one task that owns the node's documents and drives the
//! protocol's state machines with real time and I/O.
//!
//! Everything that changes state goes through its channels (API commands,
//! runner events, network events); after each batch it schedules free slots,
//! writes the changed documents to redb in one transaction, and sends peers
//! the sync messages the changes call for (see `replication`).

mod cache;
mod owner;
mod replication;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use pesc_protocol::api::{NewRequest, NodeInfo, RequestInfo, RunInfo, SharedFileInfo};
use pesc_protocol::doc::{GridDoc, NodeRecord, RequestDoc, RequestIndex, actor_id};
use pesc_protocol::lease::{LeaseKey, Sightings};
use pesc_protocol::liveness::{FAR_TAKEOVER_DELAY_MS, Liveness, takeover_delay_ms};
use pesc_protocol::model::{
    Attempt, AttemptState, BuildState, Process, RequestSpec, RunState, SharedFile,
};
use pesc_protocol::run_view::{Abandon, RunCounts, should_abandon};
use pesc_protocol::schedule::{
    Candidate, INPUT_WAIT_MS, NodeCaps, eligible, first_queued, pick, scan_start, waits_for_inputs,
};
use pesc_protocol::wire::DocKey;
use pesc_protocol::{BlobHash, NodeId, RequestId};
use pesc_webui::ApiFailure;
use tokio::sync::{mpsc, oneshot, watch};

use crate::executor::Exit;
use crate::net::{NetEvent, NetHandle};
use crate::runner::{AttemptJob, AttemptKey, RunnerCtx, RunnerEvent, RunnerOutcome, run_attempt};
use crate::store::{AfterCommit, SavedDoc, Store, StoreWriter};
use pesc_protocol::domain::Domain;

type Reply<T> = oneshot::Sender<T>;
type ApiResult<T> = Result<T, ApiFailure>;

/// Domain images a node reports at most.
const MAX_BUILDS_SHOWN: usize = 64;

/// Housekeeping period when nothing else happens.
const TICK: Duration = Duration::from_millis(500);

/// Commands from the API to the agent.
pub enum Command {
    RegisterProcess(Process, Reply<ApiResult<Process>>),
    Processes(Reply<Vec<Process>>),
    /// A new request for this user.
    Submit(NewRequest, String, Reply<ApiResult<RequestInfo>>),
    /// Users, tokens, rooms and placements.
    Access(Reply<ApiResult<pesc_protocol::access::AccessState>>),
    ChangeAccess(pesc_protocol::access::AccessChange, Reply<ApiResult<()>>),
    User(
        String,
        Reply<ApiResult<Option<pesc_protocol::access::User>>>,
    ),
    Token(
        String,
        Reply<ApiResult<Option<pesc_protocol::access::ApiToken>>>,
    ),
    List(Reply<Vec<RequestInfo>>),
    Get {
        id: String,
        runs: bool,
        reply: Reply<ApiResult<RequestInfo>>,
    },
    Cancel {
        id: String,
        reply: Reply<ApiResult<RequestInfo>>,
    },
    NodeInfo(Reply<NodeInfo>),
    Results {
        id: String,
        reply: Reply<ApiResult<ResultPlan>>,
    },
    Log {
        id: String,
        rank: u32,
        reply: Reply<ApiResult<LogSource>>,
    },
    Nodes(Reply<Vec<pesc_protocol::api::GridNode>>),
    /// A shared file was stored here: record it in the grid.
    PutFile(SharedFile, Reply<ApiResult<SharedFileInfo>>),
    Files(Reply<Vec<SharedFileInfo>>),
    File(String, Reply<ApiResult<SharedFileInfo>>),
    /// This node now keeps a whole copy of this shared file.
    HoldFile(BlobHash, Reply<()>),
    /// Records a domain (checked already) in the grid.
    PutDomain(Domain, Reply<ApiResult<Domain>>),
    Domains(Reply<Vec<Domain>>),
    Metrics(Reply<pesc_protocol::api::Metrics>),
    /// Request changes after this version (the event stream); with an
    /// owner, only changes to that user's requests.
    Events(u64, Option<String>, Reply<EventsPage>),
    Domain(String, Reply<ApiResult<Domain>>),
    /// The node is stopping: stop this node's runs (their programs get
    /// SIGTERM, then a last checkpoint snapshot is taken), record them as
    /// handed back so other nodes take them at once, tell the peers, and
    /// answer once that is on disk.
    Shutdown(Reply<()>),
}

/// How long a stopping node waits for its runs to end (program grace,
/// last checkpoint snapshot and its copy on a peer) before it gives up on
/// them; their leases then run out as for a crash.
const SHUTDOWN_GRACE_MS: u64 = 20_000;
/// After the last record: time for the peers to sync it before this node
/// declares itself gone (a peer that heard "gone" first would take the runs
/// over without their last checkpoints).
const SHUTDOWN_LINGER_MS: u64 = 1_000;
/// After declaring itself gone: time for the notice to leave.
const SHUTDOWN_LAST_WORD_MS: u64 = 300;
const STOPPED_NODE: &str = "the node running it was stopped; the run goes on elsewhere";

/// A stop in progress.
struct Stopping {
    reply: Reply<()>,
    /// Monotonic ms: stop waiting for runs then.
    give_up_ms: u64,
    /// Monotonic ms: the runs were recorded as handed back.
    recorded_ms: Option<u64>,
    /// Monotonic ms: the node told the grid it is gone; it exits after.
    left_ms: Option<u64>,
}

/// What the results archive of a finished request is made of.
pub struct ResultPlan {
    pub id: RequestId,
    pub ranks: Vec<RankPlan>,
}

/// Per rank: output archive and stdout blobs, and the nodes that hold them.
pub type RankPlan = (u32, Option<BlobHash>, Option<BlobHash>, Vec<NodeId>);

/// Where a run's log is now.
pub enum LogSource {
    /// The attempt ended: its logs are blobs.
    Stored {
        stdout: Option<BlobHash>,
        stderr: Option<BlobHash>,
        /// The nodes that hold the blobs (the one that ran the attempt first).
        holders: Vec<NodeId>,
    },
    /// Running here: the files grow until the attempt ends.
    Live { key: AttemptKey, slot: usize },
    /// Not started yet (or running on another node).
    NotYet,
}

struct Running {
    attempt: Attempt,
    slot: usize,
    owner: String,
    stop: watch::Sender<bool>,
    /// Why we asked it to stop, if we did: the state to record and why.
    stopping: Option<(AttemptState, String)>,
    /// `attempt` has changes not yet in the document.
    unwritten: bool,
    /// When progress was last put in the document (monotonic ms).
    progress_written: Option<u64>,
}

/// Progress reports go into the documents at most this often per run.
const PROGRESS_EVERY_MS: u64 = 5_000;

struct Req {
    doc: RequestDoc,
    version: u64,
    dirty: bool,
    saved: SavedDoc,
}

pub struct Settings {
    pub node: NodeId,
    pub name: String,
    pub slots: u32,
    pub lease_ttl_ms: u64,
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
    s: Settings,
    writer: StoreWriter,
    /// Replies to send once the next batch is durable.
    after_commit: Vec<AfterCommit>,
    runner: Arc<RunnerCtx>,
    grid: GridDoc,
    grid_dirty: bool,
    grid_saved: SavedDoc,
    requests: BTreeMap<RequestId, Req>,
    running: HashMap<AttemptKey, Running>,
    /// Slot workspaces not in use.
    free_slots: Vec<usize>,
    liveness: Liveness,
    /// When each foreign claim was first seen here.
    sightings: Sightings,
    /// Claim races lost in a row, and no claim before this (`race_backoff_ms`).
    races_lost: u32,
    claims_paused_until: u64,
    /// Grid members at the last heartbeat (sizes the takeover order).
    members_n: usize,
    /// Members believed alive (this node included), for how many copies of
    /// results to ask for.
    live_n: usize,
    /// When this node first saw each request with shared files (monotonic ms).
    first_seen: HashMap<RequestId, u64>,
    /// When the blob store's size is checked next (monotonic ms).
    next_evict_ms: u64,
    evicting: Arc<std::sync::atomic::AtomicBool>,
    /// A slot was free at the end of the last scheduling pass: this node is
    /// idle, and waits its turn for runs taken over (`takeover_delay_ms`).
    idle: bool,
    started: Instant,
    version: u64,
    version_tx: watch::Sender<u64>,
    events_tx: mpsc::Sender<RunnerEvent>,
    events_rx: mpsc::Receiver<RunnerEvent>,
    net: NetHandle,
    repl: replication::Replication,
    /// Skipped entries already logged (see [`Agent::log_skipped`]).
    logged_skips: std::collections::HashSet<String>,
    stopping: Option<Stopping>,
    /// What this node offers runs (rooms, GPUs, containers).
    caps: NodeCaps,
    /// Why the node takes no new runs now (the owner's policy), if so.
    paused: Option<crate::policy::Pause>,
    /// The last CPU counters (for others' CPU use between heartbeats).
    cpu: Option<crate::policy::CpuSample>,
    /// The operating-system user this node runs as (not "another user").
    os_user: String,
    /// This node's GPUs as last read, and which runs hold them.
    gpus: Vec<pesc_protocol::model::Gpu>,
    gpu_pool: crate::gpu::GpuPool<AttemptKey>,
    /// Peak GPU memory (MiB) seen per program and domain ([`usage_key`]).
    gpu_peaks: HashMap<String, u64>,
    /// The last request changes, by version: what `/api/v1/events` replays.
    event_log: std::collections::VecDeque<(u64, RequestId)>,
    /// Domain images this node built or builds, by domain hash (sent in
    /// heartbeats: the Domains page shows them per node).
    builds: BTreeMap<String, BuildState>,
}

/// Request changes kept for clients that reconnect to the event stream.
const EVENT_LOG: usize = 10_000;

/// Request changes after a version, for the event stream.
pub struct EventsPage {
    /// (version, request) in order.
    pub events: Vec<(u64, RequestId)>,
    /// The newest change looked at (shown or filtered out).
    pub scanned: Option<u64>,
    /// The newest version now.
    pub current: u64,
    /// False when changes after `since` were dropped already (or `since`
    /// is from an earlier life of this node): the client must reload.
    pub complete: bool,
}

/// What GPU memory is learned for: the program and the domain it runs in.
fn usage_key(spec: &RequestSpec) -> String {
    let domain = spec.domain.as_ref().map_or("", |d| d.hash.as_str());
    format!("{}/{domain}", spec.process.id)
}

/// A handle the API uses to reach the agent.
#[derive(Clone)]
pub struct AgentHandle {
    pub tx: mpsc::Sender<Command>,
    pub versions: watch::Receiver<u64>,
}

impl AgentHandle {
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
}

/// Wall-clock milliseconds since 1970 (for display; never compared across nodes).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Agent {
    /// Loads the node's documents and recovers from an earlier crash: the
    /// node's unfinished attempts are marked lost, so they run again.
    pub fn new(
        s: Settings,
        store: Store,
        runner: Arc<RunnerCtx>,
        net: NetHandle,
    ) -> Result<(Agent, AgentHandle, mpsc::Receiver<Command>)> {
        let actor = || actor_id(&s.node, rand::random());
        let rooms = s.rooms.clone();
        let mut grid = None;
        let mut grid_saved = SavedDoc::default();
        let mut requests = BTreeMap::new();
        let mut unreadable = BTreeMap::new();
        for d in store.load_docs()? {
            if d.key == "grid" {
                // Of this grid, or none: a data dir that joined another grid
                // (or a document without this grid's genesis) starts afresh.
                match GridDoc::load_for(&s.grid_id, &d.bytes, actor()) {
                    Ok(g) => grid = Some(g),
                    Err(e) => tracing::warn!(
                        "the stored grid document is not this grid's ({e}): starting afresh"
                    ),
                }
                grid_saved = d.saved;
            } else if let Some(id) = d.key.strip_prefix("req/") {
                match RequestDoc::load(&d.bytes, actor()) {
                    Ok(doc) => {
                        let req = Req {
                            doc,
                            version: 0,
                            dirty: false,
                            saved: d.saved,
                        };
                        requests.insert(req.doc.id().clone(), req);
                    }
                    Err(e) => {
                        tracing::error!(
                            "request document {id} cannot be loaded and is skipped: {e}"
                        );
                        if let Ok(id) = id.parse::<RequestId>() {
                            unreadable.insert(id, e.to_string());
                        }
                    }
                }
            }
        }
        // A grid document of another grid (the data dir joined a new one).
        if let Some(g) = &grid
            && g.grid_id()?.is_some_and(|id| id != s.grid_id)
        {
            tracing::warn!("the stored grid document belongs to another grid: starting afresh");
            grid = None;
        }
        let fresh_grid = grid.is_none();
        let mut grid = match grid {
            Some(g) => g,
            None => GridDoc::genesis(&s.grid_id, actor())?,
        };
        grid.put_node(&NodeRecord {
            id: s.node.clone(),
            name: s.name.clone(),
            slots: s.slots,
            executor: runner.executor.name().to_string(),
            isolation: runner.executor.isolation().describe(),
            addrs: Vec::new(),
        })?;
        let grid_dirty = grid.commit() || fresh_grid;
        // Attempts this node had in flight when it died: their processes are gone.
        let mut recovered = 0;
        for req in requests.values_mut() {
            let mine: Vec<Attempt> = req
                .doc
                .all_attempts()
                .filter(|a| a.node == s.node && !a.state.is_terminal())
                .cloned()
                .collect();
            for mut a in mine {
                a.state = AttemptState::Lost;
                a.finished_ms = Some(now_ms());
                a.reason = Some("the node restarted while this attempt ran".into());
                req.doc.put_attempt(&a)?;
                req.dirty = true;
                recovered += 1;
            }
        }
        if recovered > 0 {
            tracing::info!("{recovered} interrupted attempt(s) will run again");
        }
        let (tx, rx) = mpsc::channel(1024);
        let (version_tx, versions) = watch::channel(0);
        // Bounded: a runner that reports faster than the agent reads waits.
        let (events_tx, events_rx) = mpsc::channel(1024);
        let s_slots = s.slots as usize;
        // This start's incarnation: above every earlier start's.
        let inc = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let mut sightings = Sightings::default();
        for req in requests.values() {
            observe_claims(&mut sightings, &s.node, &req.doc, 0);
        }
        let mut agent = Agent {
            sightings,
            races_lost: 0,
            claims_paused_until: 0,
            members_n: 1,
            live_n: 1,
            first_seen: HashMap::new(),
            next_evict_ms: cache::EVICT_EVERY.as_millis() as u64,
            evicting: Default::default(),
            idle: false,
            liveness: Liveness::new(s.node.clone(), inc, s.lease_ttl_ms),
            s,
            writer: StoreWriter::spawn(Arc::new(store))?,
            after_commit: Vec::new(),
            stopping: None,
            caps: NodeCaps {
                rooms,
                gpus: 0,
                containers: runner.executor.runs_containers(),
                isolation: runner.executor.isolation().level(),
                min_isolation: grid.min_isolation(),
                gpu_capability: 0.0,
            },
            paused: None,
            cpu: None,
            gpus: Vec::new(),
            gpu_pool: Default::default(),
            gpu_peaks: HashMap::new(),
            event_log: Default::default(),
            builds: BTreeMap::new(),
            os_user: std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_default(),
            runner,
            grid,
            grid_dirty,
            grid_saved,
            requests,
            running: HashMap::new(),
            free_slots: (0..s_slots).rev().collect(),
            started: Instant::now(),
            version: 0,
            version_tx,
            events_tx,
            events_rx,
            net,
            repl: replication::Replication::with_unreadable(unreadable),
            logged_skips: Default::default(),
        };
        agent.refresh_caps();
        agent.log_skipped();
        Ok((agent, AgentHandle { tx, versions }, rx))
    }

    /// Runs until every command sender is gone.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut net_events: mpsc::Receiver<NetEvent>,
    ) {
        self.dial_grid_nodes();
        self.step();
        let mut tick = tokio::time::interval(TICK);
        let mut heartbeat = tokio::time::interval(Duration::from_millis(
            pesc_protocol::lease::DEFAULT_HEARTBEAT_MS,
        ));
        loop {
            tokio::select! {
                c = commands.recv() => match c {
                    Some(c) => self.command(c),
                    None => break,
                },
                Some(ev) = self.events_rx.recv() => self.event(ev),
                Some(ev) = net_events.recv() => self.net_event(ev),
                _ = heartbeat.tick() => self.heartbeat(),
                _ = tick.tick() => {}
            }
            // Take everything already waiting before scheduling and writing once.
            for _ in 0..256 {
                let mut any = false;
                if let Ok(ev) = self.events_rx.try_recv() {
                    self.event(ev);
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
            self.step();
            if self.stop_progress() {
                break;
            }
        }
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
        if let Some(s) = self.stopping.take() {
            let durable = self.durable();
            self.step();
            let _ = durable.await;
            let _ = s.reply.send(());
        }
    }

    /// Starts stopping the node: every run of this node is asked to stop and
    /// will be recorded as handed back.
    fn begin_stop(&mut self, reply: Reply<()>) {
        tracing::info!(
            "stopping: ending {} run(s) here and handing them back to the grid",
            self.running.len()
        );
        for r in self.running.values_mut() {
            if r.stopping.is_none() {
                r.stopping = Some((AttemptState::Yielded, STOPPED_NODE.into()));
            }
            let _ = r.stop.send(true);
        }
        self.stopping = Some(Stopping {
            reply,
            give_up_ms: self.mono() + SHUTDOWN_GRACE_MS,
            recorded_ms: None,
            left_ms: None,
        });
    }

    /// Whether a stop in progress is done: runs ended (or given up on) and
    /// recorded, the peers had time to sync that, and the node said it is
    /// gone.
    fn stop_progress(&mut self) -> bool {
        let now = self.mono();
        let Some(s) = &self.stopping else {
            return false;
        };
        match (s.recorded_ms, s.left_ms) {
            (_, Some(t)) => now >= t + SHUTDOWN_LAST_WORD_MS,
            (Some(t), None) => {
                if now >= t + SHUTDOWN_LINGER_MS {
                    self.leave();
                    if let Some(s) = &mut self.stopping {
                        s.left_ms = Some(now);
                    }
                }
                false
            }
            (None, None) if self.running.is_empty() || now >= s.give_up_ms => {
                // Runs that did not end in time: recorded as handed back
                // all the same; their programs are killed when the node exits.
                let late: Vec<(RequestId, Attempt)> = self
                    .running
                    .drain()
                    .map(|((req, ..), r)| {
                        let mut a = r.attempt;
                        a.state = AttemptState::Yielded;
                        a.reason = Some(STOPPED_NODE.into());
                        a.finished_ms = Some(now_ms());
                        (req, a)
                    })
                    .collect();
                for (req, a) in &late {
                    self.write_attempt(req, a);
                }
                self.step();
                if let Some(s) = &mut self.stopping {
                    s.recorded_ms = Some(now);
                }
                false
            }
            (None, None) => false,
        }
    }

    fn mono(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Schedules free slots, then persists what changed.
    fn step(&mut self) {
        self.flush_running();
        self.schedule();
        if let Err(e) = self.persist() {
            tracing::error!("saving documents failed: {e:#}");
        }
        self.sync_out();
    }

    /// Writes the running attempts' pending changes into their documents.
    fn flush_running(&mut self) {
        let pending: Vec<(RequestId, Attempt)> = self
            .running
            .iter_mut()
            .filter(|(_, r)| r.unwritten)
            .map(|(k, r)| {
                r.unwritten = false;
                (k.0.clone(), r.attempt.clone())
            })
            .collect();
        for (req, a) in pending {
            self.write_attempt(&req, &a);
        }
    }

    fn is_live(&self, req: &RequestId, a: &Attempt, now: u64) -> bool {
        if a.node == self.s.node {
            self.running.contains_key(&(req.clone(), a.rank, a.epoch))
        } else {
            let seen = self.sightings.first_seen(&LeaseKey {
                request: req.clone(),
                rank: a.rank,
                epoch: a.epoch,
                node: a.node.clone(),
            });
            self.liveness.trusts(&a.node, seen.unwrap_or(0), now, || {
                self.far_delay(req, a.rank)
            })
        }
    }

    fn schedule(&mut self) {
        if self.stopping.is_some() || self.paused.is_some() {
            return;
        }
        let free = self.free_slots.len();
        let now = self.mono();
        if free == 0 || now < self.claims_paused_until {
            self.idle = free > 0;
            return;
        }
        let mut in_progress: BTreeMap<String, u32> = BTreeMap::new();
        for r in self.running.values() {
            *in_progress.entry(r.owner.clone()).or_default() += 1;
        }
        let mut cands = Vec::new();
        // Runs seen queued for a new try for the first time: recorded after.
        let mut newly_queued = Vec::new();
        for (id, req) in &self.requests {
            if req.doc.is_finished() {
                continue;
            }
            let spec = req.doc.spec();
            if !eligible(spec, &self.caps) {
                continue;
            }
            if !spec.inputs.is_empty() {
                let seen = *self.first_seen.entry(id.clone()).or_insert(now);
                if self.waits_for_inputs(&spec.inputs, now.saturating_sub(seen)) {
                    continue;
                }
            }
            // Alone, in rank order; with peers, each node from its own place.
            let start = if self.repl.connected.is_empty() {
                0
            } else {
                scan_start(&self.s.node, id, spec.repetitions)
            };
            let found = first_queued(req.doc.scan_from(start), free, |rank| {
                let v = req.doc.run(rank, |a| self.is_live(id, a, now));
                if v.state != RunState::Queued {
                    return None;
                }
                // Back in the queue: its last holder's neighbours go first.
                let holder = v.current.map(|a| &a.node);
                let since = match self.sightings.queued_since(id, rank, v.next_epoch) {
                    Some(t) => t,
                    None if holder.is_some() => {
                        newly_queued.push((id.clone(), rank, v.next_epoch));
                        now
                    }
                    None => now,
                };
                self.liveness
                    .may_take(holder, since, now, || self.far_delay(id, rank))
                    .then_some(v.next_epoch)
            });
            cands.extend(found.into_iter().map(|(rank, epoch)| Candidate {
                request: id.clone(),
                owner: spec.owner.clone(),
                created_ms: spec.created_ms,
                rank,
                epoch,
            }));
        }
        for (id, rank, epoch) in newly_queued {
            self.sightings.saw_queued(id, rank, epoch, now);
        }
        for c in pick(cands, &in_progress, free) {
            self.claim(c);
        }
        self.idle = !self.free_slots.is_empty();
    }

    /// Whether to leave a request's runs to nodes that hold its shared files
    /// for now (see `schedule::waits_for_inputs`).
    fn waits_for_inputs(&self, inputs: &[SharedFile], seen_for_ms: u64) -> bool {
        if seen_for_ms >= INPUT_WAIT_MS {
            return false;
        }
        let lacks = inputs.iter().any(|f| !self.runner.blobs.contains(&f.hash));
        let holder_alive = || {
            let mut holders: Option<BTreeSet<NodeId>> = None;
            for f in inputs {
                let h: BTreeSet<NodeId> = self
                    .grid
                    .holders(&f.hash)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                holders = Some(match holders {
                    None => h,
                    Some(prev) => prev.intersection(&h).cloned().collect(),
                });
            }
            holders
                .unwrap_or_default()
                .iter()
                .any(|n| self.repl.connected.contains(n))
        };
        waits_for_inputs(lacks, lacks && holder_alive(), seen_for_ms)
    }

    /// How long after a run is free to take this node waits when it is not a
    /// ring neighbour of its holder: its turn if it was idle already, the
    /// least delay for a slot that has just come free.
    fn far_delay(&self, req: &RequestId, rank: u32) -> u64 {
        if self.idle {
            takeover_delay_ms(&self.s.node, req, rank, self.members_n)
        } else {
            FAR_TAKEOVER_DELAY_MS
        }
    }

    fn claim(&mut self, c: Candidate) {
        let Some(req) = self.requests.get_mut(&c.request) else {
            return;
        };
        let key: AttemptKey = (c.request.clone(), c.rank, c.epoch);
        let need = &req.doc.spec().gpu;
        let gpus = if need.count > 0 {
            let peak = self.gpu_peaks.get(&usage_key(req.doc.spec())).copied();
            match self.gpu_pool.take(
                &self.gpus,
                need.count,
                need.min_capability,
                &key,
                peak,
                self.s.policy.gpu_percent_memory_limit,
            ) {
                Some(g) => g,
                // Not enough free devices now: another pass, or another node.
                None => return,
            }
        } else {
            Vec::new()
        };
        let Some(slot) = self.free_slots.pop() else {
            self.gpu_pool.give_back(&key);
            return;
        };
        let attempt = Attempt::claim(c.rank, c.epoch, self.s.node.clone(), now_ms());
        if let Err(e) = req.doc.put_attempt(&attempt) {
            tracing::error!("cannot record a claim: {e}");
            self.free_slots.push(slot);
            self.gpu_pool.give_back(&key);
            return;
        }
        req.dirty = true;
        let spec = req.doc.spec();
        let (stop, stop_rx) = watch::channel(false);
        let inputs = spec
            .inputs
            .iter()
            .map(|f| (f.clone(), self.grid.holders(&f.hash).unwrap_or_default()))
            .collect();
        let restore = req
            .doc
            .latest_checkpoint(c.rank)
            .and_then(|a| Some((a.checkpoint?, a.checkpoint_holders.clone(), a.node.clone())));
        let job = AttemptJob {
            key: key.clone(),
            node: self.s.node.clone(),
            process: spec.process.clone(),
            world_size: spec.repetitions,
            parameters: spec.parameters.clone(),
            slot,
            inputs,
            restore,
            domain: spec.domain.clone(),
            limits: spec.limits,
            gpus,
            copies: self
                .s
                .replication
                .min(self.live_n.max(self.repl.connected.len() + 1))
                .saturating_sub(1),
        };
        self.running.insert(
            key,
            Running {
                attempt,
                slot,
                owner: c.owner,
                stop,
                stopping: None,
                unwritten: false,
                progress_written: None,
            },
        );
        tokio::spawn(run_attempt(
            self.runner.clone(),
            job,
            stop_rx,
            self.events_tx.clone(),
        ));
    }

    fn event(&mut self, ev: RunnerEvent) {
        match ev {
            RunnerEvent::Fetching { key } => {
                if let Some(r) = self.running.get_mut(&key) {
                    r.attempt.reason = Some(FETCHING_INPUTS.into());
                    r.unwritten = true;
                }
            }
            RunnerEvent::Holding { hash } => self.record_holding(&hash),
            RunnerEvent::Progress {
                key,
                percent,
                message,
            } => {
                let now = self.mono();
                if let Some(r) = self.running.get_mut(&key) {
                    r.attempt.progress = percent.or(r.attempt.progress);
                    r.attempt.message = message.or(r.attempt.message.take());
                    // Into the document at most every few seconds: every
                    // node receives each write.
                    if r.progress_written
                        .is_none_or(|t| now >= t + PROGRESS_EVERY_MS)
                    {
                        r.progress_written = Some(now);
                        r.unwritten = true;
                    }
                }
            }
            RunnerEvent::Building { key } => {
                self.set_build(&key, |_| Some(BuildState::Building));
                if let Some(r) = self.running.get_mut(&key) {
                    let name = self
                        .requests
                        .get(&key.0)
                        .and_then(|q| q.doc.spec().domain.as_ref().map(|d| d.name.clone()));
                    r.attempt.reason =
                        Some(format!("building domain {}", name.unwrap_or_default()));
                    r.unwritten = true;
                }
            }
            RunnerEvent::Checkpoint { key, hash, holders } => {
                if let Some(r) = self.running.get_mut(&key) {
                    r.attempt.checkpoint = Some(hash);
                    r.attempt.checkpoint_holders = holders;
                    r.unwritten = true;
                }
            }
            RunnerEvent::Started { key } => {
                self.set_build(&key, |_| Some(BuildState::Built));
                let Some(r) = self.running.get_mut(&key) else {
                    return;
                };
                r.attempt.state = AttemptState::Running;
                r.attempt.started_ms = Some(now_ms());
                r.attempt.reason = None;
                // Written at the end of the batch, unless the run finishes first:
                // one document write instead of two for short runs.
                r.unwritten = true;
            }
            RunnerEvent::Finished { key, outcome } => {
                // Ended while its image was still being built: the build failed.
                self.set_build(&key, |s| {
                    (s == Some(BuildState::Building)).then_some(BuildState::Failed)
                });
                let Some(r) = self.running.remove(&key) else {
                    return;
                };
                self.free_slots.push(r.slot);
                self.gpu_pool.give_back(&key);
                let mut a = r.attempt;
                finish_attempt(&mut a, outcome, r.stopping);
                if a.state == AttemptState::Succeeded {
                    self.races_lost = 0;
                }
                self.write_attempt(&key.0, &a);
                if self
                    .requests
                    .get(&key.0)
                    .is_some_and(|q| q.doc.is_finished())
                {
                    self.request_finished(&key.0);
                }
            }
        }
    }

    /// Updates what this node says of the image of an attempt's domain.
    fn set_build(
        &mut self,
        key: &AttemptKey,
        f: impl FnOnce(Option<BuildState>) -> Option<BuildState>,
    ) {
        let Some(hash) = self
            .requests
            .get(&key.0)
            .and_then(|q| q.doc.spec().domain.as_ref().map(|d| d.hash.clone()))
        else {
            return;
        };
        if let Some(s) = f(self.builds.get(&hash).copied()) {
            if self.builds.len() >= MAX_BUILDS_SHOWN && !self.builds.contains_key(&hash) {
                self.builds.pop_first();
            }
            self.builds.insert(hash, s);
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

    fn write_attempt(&mut self, req: &RequestId, a: &Attempt) {
        if let Some(q) = self.requests.get_mut(req) {
            match q.doc.put_attempt(a) {
                Ok(()) => q.dirty = true,
                Err(e) => tracing::error!("cannot record attempt {}: {e}", a.key()),
            }
        }
    }

    /// Drops the request's working files (checkpoints) once nothing runs here.
    fn request_finished(&mut self, id: &RequestId) {
        if self.running.keys().any(|k| &k.0 == id) {
            return;
        }
        self.sightings.forget_request(id);
        self.first_seen.remove(id);
        let dir = self.runner.work_dir.join(id.as_str());
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(dir);
        });
    }

    fn persist(&mut self) -> Result<()> {
        if self.writer.take_failure() {
            // The failed batch's chunks are lost: every document is written
            // whole next, so nothing stays missing on disk.
            tracing::warn!("writing every document whole after a failed write");
            self.grid_saved = SavedDoc::default();
            self.grid_dirty = true;
            for q in self.requests.values_mut() {
                q.saved = SavedDoc::default();
                q.dirty = true;
            }
        }
        let mut writes = Vec::new();
        let mut changed = false;
        let committed = self.grid.commit();
        if self.grid_dirty || committed {
            self.grid_dirty = false;
            self.repl.changed.insert(DocKey::Grid);
            let grid = &mut self.grid;
            writes.extend(self.grid_saved.next_write("grid".into(), |full| {
                if full {
                    grid.save()
                } else {
                    grid.save_incremental()
                }
            }));
        }
        for (id, q) in self.requests.iter_mut() {
            if !q.dirty {
                continue;
            }
            q.dirty = false;
            q.doc.commit();
            self.repl.changed.insert(DocKey::Request(id.clone()));
            changed = true;
            self.version += 1;
            q.version = self.version;
            self.event_log.push_back((self.version, id.clone()));
            if self.event_log.len() > EVENT_LOG {
                self.event_log.pop_front();
            }
            let doc = &mut q.doc;
            writes.extend(q.saved.next_write(format!("req/{id}"), |full| {
                if full {
                    doc.save()
                } else {
                    doc.save_incremental()
                }
            }));
        }
        self.writer
            .send(writes, std::mem::take(&mut self.after_commit));
        if changed {
            let _ = self.version_tx.send(self.version);
        }
        Ok(())
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::RegisterProcess(p, reply) => {
                let r = self
                    .grid
                    .put_process(&p)
                    .map(|_| p)
                    .map_err(ApiFailure::from);
                self.grid_dirty = true;
                let _ = reply.send(r);
            }
            Command::Processes(reply) => {
                let _ = reply.send(self.grid.processes().unwrap_or_default());
            }
            Command::Access(reply) => {
                let _ = reply.send(self.grid.access().map_err(ApiFailure::from));
            }
            Command::ChangeAccess(c, reply) => {
                let r = self.grid.change_access(&c).map_err(ApiFailure::from);
                if r.is_ok() {
                    self.grid_dirty = true;
                    self.refresh_caps();
                }
                let _ = reply.send(r);
            }
            Command::User(name, reply) => {
                let _ = reply.send(self.grid.user(&name).map_err(ApiFailure::from));
            }
            Command::Token(id, reply) => {
                let _ = reply.send(self.grid.token(&id).map_err(ApiFailure::from));
            }
            Command::Submit(n, owner, reply) => match self.submit(n, owner) {
                // Answer once the request is on disk here and on one peer, so an
                // accepted request survives a crash of this node.
                Ok(info) => self.replicate_then_reply(info, reply),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::List(reply) => {
                let list = self
                    .requests
                    .keys()
                    .filter_map(|id| self.info(id, false))
                    .collect();
                let _ = reply.send(list);
            }
            Command::Get { id, runs, reply } => {
                let r = self
                    .resolve(&id)
                    .map(|id| self.info(&id, runs).expect("resolved"));
                let _ = reply.send(r);
            }
            Command::Cancel { id, reply } => {
                let _ = reply.send(self.cancel(&id));
            }
            Command::NodeInfo(reply) => {
                let _ = reply.send(NodeInfo {
                    id: self.s.node.clone(),
                    name: self.s.name.clone(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    executor: self.runner.executor.name().to_string(),
                    isolated: self.runner.executor.isolated(),
                    isolation: self.runner.executor.isolation().describe(),
                    slots: self.s.slots,
                    slots_busy: self.running.len() as u32,
                    data_dir: self.s.data_dir.display().to_string(),
                    requests: self.requests.len() as u32,
                    grid: self.s.grid_id.clone(),
                    peers: self.repl.connected.len() as u32,
                    traffic: self.net.stats.snapshot(),
                    skipped: {
                        let (list, total) = self.skipped_entries();
                        pesc_protocol::api::SkippedEntries {
                            total,
                            entries: list
                                .into_iter()
                                .take(100)
                                .map(|(entry, reason)| pesc_protocol::api::SkippedEntry {
                                    entry,
                                    reason,
                                })
                                .collect(),
                        }
                    },
                });
            }
            Command::Results { id, reply } => {
                let _ = reply.send(self.result_plan(&id));
            }
            Command::Log { id, rank, reply } => {
                let _ = reply.send(self.log_source(&id, rank));
            }
            Command::Nodes(reply) => {
                let _ = reply.send(self.grid_nodes());
            }
            Command::PutFile(f, reply) => {
                let r = self.grid.put_file(&f).map_err(ApiFailure::from).map(|_| {
                    self.record_holding(&f.hash);
                    self.file_info(f)
                });
                self.grid_dirty = true;
                let _ = reply.send(r);
            }
            Command::Files(reply) => {
                let mut files = self.grid.files().unwrap_or_default();
                files.sort_by(|a, b| a.name.cmp(&b.name));
                let _ = reply.send(files.into_iter().map(|f| self.file_info(f)).collect());
            }
            Command::File(name, reply) => {
                let _ = reply.send(self.shared_file(&name).map(|f| self.file_info(f)));
            }
            Command::HoldFile(hash, reply) => {
                self.record_holding(&hash);
                let _ = reply.send(());
            }
            Command::Shutdown(reply) => self.begin_stop(reply),
            Command::PutDomain(d, reply) => {
                let r = self
                    .grid
                    .put_domain(&d)
                    .map(|_| d)
                    .map_err(ApiFailure::from);
                self.grid_dirty = true;
                let _ = reply.send(r);
            }
            Command::Events(since, owner, reply) => {
                // Every change after `since` is still in the log.
                let complete = since <= self.version
                    && self.event_log.front().is_none_or(|e| since + 1 >= e.0);
                let after: Vec<(u64, RequestId)> = self
                    .event_log
                    .iter()
                    .filter(|e| e.0 > since)
                    .cloned()
                    .collect();
                let scanned = after.last().map(|e| e.0);
                let events = after
                    .into_iter()
                    .filter(|(_, id)| {
                        owner.as_ref().is_none_or(|o| {
                            self.requests
                                .get(id)
                                .is_some_and(|q| &q.doc.spec().owner == o)
                        })
                    })
                    .collect();
                let _ = reply.send(EventsPage {
                    events,
                    scanned,
                    current: self.version,
                    complete,
                });
            }
            Command::Metrics(reply) => {
                let _ = reply.send(self.metrics());
            }
            Command::Domains(reply) => {
                let mut v = self.grid.domains().unwrap_or_default();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                let _ = reply.send(v);
            }
            Command::Domain(name, reply) => {
                let _ = reply.send(self.domain(&name));
            }
        }
    }

    /// Records in the grid that this node keeps a whole copy of a shared file.
    fn record_holding(&mut self, hash: &BlobHash) {
        match self.grid.set_holder(hash, &self.s.node, true) {
            Ok(()) => self.grid_dirty = true,
            Err(e) => tracing::error!("cannot record holding {hash}: {e}"),
        }
    }

    /// A shared file by name, or an error that says how to add it.
    fn shared_file(&self, name: &str) -> ApiResult<SharedFile> {
        match self.grid.file(name) {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Err(ApiFailure::not_found(format!(
                "there is no shared file '{name}': add it with `pesc files add PATH --name {name}` (see `pesc files list`)"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// A domain by name, or an error that says how to make it.
    fn domain(&self, name: &str) -> ApiResult<Domain> {
        match self.grid.domain(name) {
            Ok(Some(d)) => Ok(d),
            Ok(None) => Err(ApiFailure::not_found(format!(
                "there is no domain '{name}': make it with `pesc domains add {name} --template T` (see `pesc domains list`)"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// What the grid document says of this node's offer: the rooms it
    /// serves (its node.toml's and the one a room admin put it in) and the
    /// grid's minimum isolation.
    fn refresh_caps(&mut self) {
        let mut rooms = self.s.rooms.clone();
        if let Ok(Some(r)) = self.grid.placement(&self.s.node)
            && !rooms.contains(&r)
        {
            rooms.push(r);
        }
        self.caps.rooms = rooms;
        self.caps.min_isolation = self.grid.min_isolation();
    }

    fn file_info(&self, file: SharedFile) -> SharedFileInfo {
        let holders = self.grid.holders(&file.hash).unwrap_or_default();
        SharedFileInfo {
            here: self.runner.blobs.contains(&file.hash),
            file,
            holders,
        }
    }

    fn submit(&mut self, n: NewRequest, owner: String) -> ApiResult<RequestInfo> {
        let process = self.grid.process(&n.process).map_err(ApiFailure::from)?.ok_or_else(|| {
            ApiFailure::not_found(format!(
                "process {} does not exist: upload it first (pesc submit PATH, or POST /api/v1/processes)",
                n.process
            ))
        })?;
        let spec = RequestSpec {
            id: RequestId::from_bytes(rand::random()),
            owner,
            process,
            repetitions: n.repetitions,
            parameters: n.parameters,
            rooms: n.rooms,
            inputs: n
                .shared_files
                .iter()
                .map(|name| self.shared_file(name))
                .collect::<ApiResult<Vec<_>>>()?,
            shared_files: n.shared_files,
            domain: n.domain.as_deref().map(|d| self.domain(d)).transpose()?,
            limits: n.limits,
            gpu: n.gpu,
            parallel: n.parallel,
            same_node: n.same_node,
            retries: n.retries,
            created_ms: now_ms(),
        };
        spec.validate()?;
        if spec.parallel || spec.same_node {
            return Err(ApiFailure::bad_request(
                "parallel and same-node requests are not supported by this node yet",
            ));
        }
        let rooms = self.grid.rooms().map_err(ApiFailure::from)?;
        if let Some(room) = spec
            .rooms
            .iter()
            .find(|r| !rooms.iter().any(|x| &x.name == *r))
        {
            return Err(ApiFailure::bad_request(format!(
                "room '{room}' does not exist"
            )));
        }
        let doc = RequestDoc::create(spec.clone(), actor_id(&self.s.node, rand::random()))?;
        self.grid
            .put_request(&RequestIndex {
                id: spec.id.clone(),
                owner: spec.owner.clone(),
                process: spec.process.id.clone(),
                repetitions: spec.repetitions,
                created_ms: spec.created_ms,
            })
            .map_err(ApiFailure::from)?;
        self.grid_dirty = true;
        self.requests.insert(
            spec.id.clone(),
            Req {
                doc,
                version: 0,
                dirty: true,
                saved: SavedDoc::default(),
            },
        );
        tracing::info!(request = %spec.id, repetitions = spec.repetitions, "request submitted");
        Ok(self.info(&spec.id, false).expect("just inserted"))
    }

    fn resolve(&self, prefix: &str) -> ApiResult<RequestId> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.is_empty() || !prefix.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(ApiFailure::bad_request(format!(
                "'{prefix}' is not a request id (hex digits)"
            )));
        }
        let mut it = self
            .requests
            .range(RequestId::from_bytes([0; 8])..)
            .map(|(k, _)| k)
            .filter(|k| k.as_str().starts_with(&prefix));
        match (it.next(), it.next()) {
            (Some(id), None) => Ok(id.clone()),
            (None, _) => Err(ApiFailure::not_found(format!(
                "no request {prefix} on this grid"
            ))),
            (Some(_), Some(_)) => Err(ApiFailure::bad_request(format!(
                "'{prefix}' matches several requests: give more digits"
            ))),
        }
    }

    /// Entries of the documents this node skips because they failed their
    /// checks (entry, why), and how many there are: the grid's, each
    /// request's attempts, and requests unreadable as a whole.
    fn skipped_entries(&self) -> (Vec<(String, String)>, u64) {
        let (mut list, mut count) = self.grid.skipped().list();
        for (id, q) in &self.requests {
            for (entry, why) in q.doc.skipped() {
                list.push((format!("req/{id}/{entry}"), why.clone()));
                count += 1;
            }
        }
        for (id, why) in &self.repl.unreadable {
            list.push((format!("req/{id}"), why.clone()));
            count += 1;
        }
        (list, count)
    }

    /// Logs each skipped entry once: what a peer (or a bug) wrote that this
    /// node will not use.
    fn log_skipped(&mut self) {
        const LOGGED: usize = 10_000;
        // Reading every map records what fails its checks.
        let _ = self.grid.access();
        let _ = self.grid.processes();
        let _ = self.grid.files();
        let _ = self.grid.domains();
        let _ = self.grid.nodes();
        for (entry, why) in self.skipped_entries().0 {
            if self.logged_skips.len() < LOGGED && self.logged_skips.insert(entry.clone()) {
                tracing::warn!("skipped a malformed entry of the grid's documents, {entry}: {why}");
            }
        }
    }

    fn metrics(&self) -> pesc_protocol::api::Metrics {
        let now = self.mono();
        let mut runs = RunCounts::default();
        for (id, q) in &self.requests {
            let c = q.doc.counts(|a: &Attempt| self.is_live(id, a, now));
            runs.total += c.total;
            runs.queued += c.queued;
            runs.claimed += c.claimed;
            runs.running += c.running;
            runs.succeeded += c.succeeded;
            runs.failed += c.failed;
            runs.cancelled += c.cancelled;
        }
        pesc_protocol::api::Metrics {
            runs,
            requests: self.requests.len() as u32,
            slots: self.s.slots,
            leases: self.running.len() as u32,
            peers: self.repl.connected.len() as u32,
            sync_pending: self.repl.pending() as u32,
            paused: self.paused.is_some(),
            gpus: self.gpus.len() as u32,
            traffic: self.net.stats.snapshot(),
            skipped: self.skipped_entries().1,
        }
    }

    fn info(&self, id: &RequestId, with_runs: bool) -> Option<RequestInfo> {
        let q = self.requests.get(id)?;
        let now = self.mono();
        let live = |a: &Attempt| self.is_live(id, a, now);
        let spec = q.doc.spec();
        let counts: RunCounts = q.doc.counts(live);
        let runs = with_runs.then(|| {
            (0..spec.repetitions)
                .map(|rank| {
                    let v = q.doc.run(rank, live);
                    let a = v.current;
                    RunInfo {
                        rank,
                        state: v.state,
                        node: a.map(|a| a.node.clone()),
                        attempt: a.map(|a| a.epoch),
                        attempts: q.doc.attempts_of(rank).len() as u32,
                        exit_code: a.and_then(|a| a.exit_code),
                        started_ms: a.and_then(|a| a.started_ms),
                        finished_ms: a.and_then(|a| a.finished_ms),
                        duration_ms: a.and_then(|a| a.duration_ms()),
                        output: a.and_then(|a| a.output),
                        reason: a.and_then(|a| a.reason.clone()),
                        progress: a.and_then(|a| a.progress),
                        message: a.and_then(|a| a.message.clone()),
                        replicas: a.map(|a| a.replicas.clone()).unwrap_or_default(),
                        checkpoint: q.doc.latest_checkpoint(rank).and_then(|a| a.checkpoint),
                        history: q
                            .doc
                            .attempts_of(rank)
                            .iter()
                            .map(|a| pesc_protocol::api::AttemptSpan {
                                epoch: a.epoch,
                                node: a.node.clone(),
                                state: a.state,
                                claimed_ms: a.claimed_ms,
                                started_ms: a.started_ms,
                                finished_ms: a.finished_ms,
                            })
                            .collect(),
                    }
                })
                .collect()
        });
        Some(RequestInfo {
            id: id.clone(),
            state: counts.request_state(q.doc.is_cancelled()),
            owner: spec.owner.clone(),
            process: spec.process.id.clone(),
            process_name: spec.process.name.clone(),
            language: spec.process.language,
            repetitions: spec.repetitions,
            parameters: spec.parameters.clone(),
            created_ms: spec.created_ms,
            waiting: (counts.queued > 0 && !q.doc.is_cancelled()).then(|| self.why_waiting(spec)),
            counts,
            version: q.version,
            runs,
            held_by_peer: None,
        })
    }

    /// Why a request's queued runs wait, from this node and the nodes it
    /// hears from.
    fn why_waiting(&self, spec: &RequestSpec) -> String {
        let mut offers = vec![pesc_protocol::schedule::NodeOffer {
            name: self.s.name.clone(),
            caps: self.caps.clone(),
            slots_free: self.free_slots.len() as u32,
            paused: self.paused.is_some(),
        }];
        offers.extend(
            self.repl
                .live_statuses()
                .filter(|(n, _)| !self.liveness.is_down(n))
                .map(|(_, s)| {
                    let mut o = s.offer();
                    o.caps.min_isolation = self.caps.min_isolation;
                    o
                }),
        );
        pesc_protocol::schedule::why_waiting(spec, &offers)
    }

    fn cancel(&mut self, prefix: &str) -> ApiResult<RequestInfo> {
        let id = self.resolve(prefix)?;
        let q = self.requests.get_mut(&id).expect("resolved");
        if !q.doc.is_finished() {
            q.doc
                .cancel(&self.s.node, now_ms())
                .map_err(ApiFailure::from)?;
            q.dirty = true;
            self.abandon_lost(&id);
            tracing::info!(request = %id, "request cancelled");
        }
        self.step();
        Ok(self.info(&id, false).expect("resolved"))
    }

    fn result_plan(&self, prefix: &str) -> ApiResult<ResultPlan> {
        let id = self.resolve(prefix)?;
        let q = &self.requests[&id];
        let info = self.info(&id, false).expect("resolved");
        // Once the request is terminal every rank's result is fixed; a local
        // runner still around (say, one from the losing side of a partition,
        // waiting to be told its rank is done elsewhere) changes nothing.
        if !info.state.is_terminal() {
            return Err(ApiFailure::conflict(format!(
                "request {id} is still {} ({} of {} runs finished): wait for it (pesc status {id}) and ask again",
                info.state.as_str(),
                info.counts.finished(),
                info.counts.total
            )));
        }
        let ranks = (0..q.doc.spec().repetitions)
            .map(|r| {
                let a = q.doc.result_attempt(r);
                (
                    r,
                    a.and_then(|a| a.output),
                    a.and_then(|a| a.stdout),
                    a.map(holders_of_results).unwrap_or_default(),
                )
            })
            .collect();
        Ok(ResultPlan { id, ranks })
    }

    fn log_source(&self, prefix: &str, rank: u32) -> ApiResult<LogSource> {
        let id = self.resolve(prefix)?;
        let q = &self.requests[&id];
        if rank >= q.doc.spec().repetitions {
            return Err(ApiFailure::bad_request(format!(
                "rank {rank} does not exist: request {id} has ranks 0 to {}",
                q.doc.spec().repetitions - 1
            )));
        }
        if let Some((k, r)) = self
            .running
            .iter()
            .filter(|(k, _)| k.0 == id && k.1 == rank)
            .max_by_key(|(k, _)| k.2)
        {
            return Ok(LogSource::Live {
                key: k.clone(),
                slot: r.slot,
            });
        }
        let latest = q
            .doc
            .attempts_of(rank)
            .iter()
            .filter(|a| a.state.is_terminal() && a.state != AttemptState::Yielded)
            .max_by_key(|a| (a.state == AttemptState::Succeeded, a.epoch));
        Ok(match latest {
            Some(a) => LogSource::Stored {
                stdout: a.stdout,
                stderr: a.stderr,
                holders: holders_of_results(a),
            },
            None => LogSource::NotYet,
        })
    }
}

/// Who keeps an attempt's output and logs: its replicas, or at least the
/// node that ran it.
fn holders_of_results(a: &Attempt) -> Vec<NodeId> {
    if a.replicas.is_empty() {
        vec![a.node.clone()]
    } else {
        a.replicas.clone()
    }
}

/// What a claimed run shows while its node gets the shared files.
pub const FETCHING_INPUTS: &str = "fetching inputs";

/// Turns what the runner saw into the attempt's final record.
fn finish_attempt(a: &mut Attempt, o: RunnerOutcome, stopping: Option<(AttemptState, String)>) {
    a.finished_ms = Some(now_ms());
    a.stdout = o.stdout;
    a.stderr = o.stderr;
    a.replicas = o.replicas;
    a.reason = None;
    if let Some((h, holders)) = o.checkpoint {
        a.checkpoint = Some(h);
        a.checkpoint_holders = holders;
    }
    if a.started_ms.is_none() {
        a.started_ms = a.finished_ms;
    }
    if let Some((s, why)) = stopping {
        a.state = s;
        a.reason = Some(why);
        return;
    }
    if let (Some(exit), None, Some(why)) = (o.exit, &o.error, o.refused) {
        a.state = AttemptState::Failed;
        a.exit_code = Some(match exit {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
            Exit::OverMemory(_) => 128 + libc::SIGKILL,
        });
        a.reason = Some(why);
        return;
    }
    match (o.exit, o.error) {
        (_, Some(err)) => {
            // The node's fault, not the program's: worth an operator's look.
            tracing::warn!(
                "rank {} (epoch {}) could not run here: {err}",
                a.rank,
                a.epoch
            );
            a.state = AttemptState::Error;
            a.reason = Some(err);
        }
        (Some(Exit::Code(0)), None) => {
            a.state = AttemptState::Succeeded;
            a.exit_code = Some(0);
            a.output = o.output;
        }
        (Some(Exit::Code(c)), None) => {
            a.state = AttemptState::Failed;
            a.exit_code = Some(c);
            a.output = o.output;
            a.reason = Some(format!("the program exited with code {c}"));
        }
        (Some(Exit::Signal(s)), None) => {
            a.state = AttemptState::Failed;
            a.exit_code = Some(128 + s);
            a.output = o.output;
            a.reason = Some(signal_reason(s));
        }
        (Some(Exit::OverMemory(mb)), None) => {
            a.state = AttemptState::Failed;
            a.exit_code = Some(128 + libc::SIGKILL);
            a.output = o.output;
            a.reason = Some(format!(
                "the run went over its memory limit ({mb} MiB) and the kernel killed it: ask for more (--memory-mb) or use less"
            ));
        }
        (None, None) => {
            a.state = AttemptState::Error;
            a.reason = Some("the executor reported nothing".into());
        }
    }
}

/// Why a program killed by `sig` ended, in words: the signals a node's
/// limits send say which limit.
fn signal_reason(sig: i32) -> String {
    let why = match sig {
        libc::SIGXFSZ => {
            " (SIGXFSZ: it wrote a file larger than this node allows, [sandbox] file_size_mb)"
        }
        libc::SIGXCPU => " (SIGXCPU: it used more CPU time than allowed)",
        libc::SIGKILL => " (SIGKILL: stopped, or out of memory)",
        libc::SIGSEGV => " (SIGSEGV: it crashed)",
        _ => "",
    };
    format!("the program was killed by signal {sig}{why}")
}

/// Records when each claim of another node was first seen.
fn observe_claims(sightings: &mut Sightings, me: &NodeId, doc: &RequestDoc, now: u64) {
    for rank in doc.unfinished_ranks() {
        for a in doc.attempts_of(rank) {
            if &a.node != me && !a.state.is_terminal() {
                sightings.observe(
                    LeaseKey {
                        request: doc.id().clone(),
                        rank: a.rank,
                        epoch: a.epoch,
                        node: a.node.clone(),
                    },
                    now,
                );
            }
        }
    }
}

/// What to record when this node stops its own attempt, and why.
fn abandon_state(why: Abandon) -> (AttemptState, String) {
    match why {
        Abandon::Cancelled => (AttemptState::Cancelled, "the request was cancelled".into()),
        Abandon::LostRace => (
            AttemptState::Yielded,
            "another node claimed this run at the same moment and has priority".into(),
        ),
        Abandon::AlreadyDone => (
            AttemptState::Yielded,
            "another node already produced this run's result".into(),
        ),
        Abandon::Reassigned => (
            AttemptState::Yielded,
            "the run was given to another node (this node's lease was presumed lost)".into(),
        ),
    }
}
