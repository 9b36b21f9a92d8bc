//! One node's whole protocol state, as a sans-I/O state machine.
//!
//! [`Node`] owns the grid and request documents, liveness, claim
//! sightings, the table of attempts running here, race back-off, per-peer
//! sync state, GPU and slot admission and the shutdown phase. It is driven
//! like quinn-proto's `Connection`: inputs are methods that take [`Now`]
//! (a merged sync message, a beat, a runner event, a command, a probe
//! sample, a timeout); after a batch of inputs the driver calls
//! [`Node::end_batch`], then takes what to do from [`Node::poll_action`]
//! until it yields `None`, and calls [`Node::handle_timeout`] at
//! [`Node::poll_timeout`]. Every decision is made here: the node's agent
//! only carries actions out (sockets, executors, the store), and the
//! in-process harness and the simulator run this same code with virtual
//! time.

mod action;
mod archive;
mod backups;
mod commands;
mod error;
mod gangs;
mod gpu_pool;
mod heartbeat;
mod keep;
mod owner;
mod persist;
mod probe;
mod read_model;
mod reads;
mod replication;
mod resources;
mod running;
mod scheduling;
mod settings;
mod shutdown;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

pub use action::{Action, GangJob, Job, Push};
pub use archive::ArchivedRequest;
pub use commands::Submitted;
pub use error::NodeError;
pub use gpu_pool::GpuPool;
pub use persist::{DocWrite, SavedDoc, StoredDoc};
pub use probe::{Pause, Policy, RunUse, Sample};
pub use read_model::ReadModel;
pub use reads::{EventsPage, LogSource, RankPlan, ResultPlan};
pub use running::{Exit, FETCHING_INPUTS, Outcome, RunEvent};

use crate::doc::{GridDoc, NodeRecord, RequestDoc, actor_id};
use crate::isolation::IsolationLevel;
use crate::lease::Sightings;
use crate::liveness::Liveness;
use crate::model::{AttemptState, BuildState, Gpu};
use crate::schedule::NodeCaps;
use crate::{BlobHash, NodeId, RequestId, Result};

use replication::Replication;
use running::Running;
use shutdown::Stopping;

/// An attempt: (request, rank, epoch).
pub type AttemptKey = (RequestId, u32, u32);

/// The two clocks a node reads: monotonic (for every comparison) and wall
/// time (only recorded for display, never compared across nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono_ms: u64,
    pub wall_ms: u64,
}

/// How the node's executor walls runs in (reported to peers and users).
#[derive(Debug, Clone, Default)]
pub struct ExecutorInfo {
    pub name: String,
    pub isolation: IsolationLevel,
    /// The isolation in words.
    pub isolation_detail: String,
    /// It runs user code in containers (it can build domains).
    pub containers: bool,
}

/// What a node is told at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: NodeId,
    pub name: String,
    pub slots: u32,
    pub lease_ttl_ms: u64,
    pub grid_id: String,
    /// Nodes that must hold a run's results before it counts as done.
    pub replication: usize,
    /// Whether the blob store has a size limit (then the node says what
    /// to keep every [`EVICT_EVERY_MS`]).
    pub evict_blobs: bool,
    pub policy: Policy,
    /// Rooms this node serves besides General.
    pub rooms: Vec<String>,
    pub executor: ExecutorInfo,
    /// A finished request is archived after this long without a change
    /// (see `archive`).
    pub archive_after_ms: u64,
    /// This start's incarnation: above every earlier start's (wall ms at
    /// start will do).
    pub incarnation: u64,
    /// Seeds the node's choices that need chance (actor and request ids,
    /// which peers get a push): a harness replays a schedule exactly.
    pub seed: u64,
    /// Busier nodes leave new requests to less loaded ones first
    /// (`claim_order::load_delay_ms`); off only to measure what it gives.
    pub load_order: bool,
}

/// Housekeeping period when nothing else happens.
pub const TICK_MS: u64 = 500;

/// How often the blob store's size is checked.
pub const EVICT_EVERY_MS: u64 = 60_000;

/// How long a finished request stays in memory without a change before
/// it is archived.
pub const ARCHIVE_AFTER_MS: u64 = 10 * 60_000;

/// Request changes kept for clients that reconnect to the event stream.
const EVENT_LOG: usize = 10_000;

/// Skipped entries logged at most (each once).
const LOGGED_SKIPS: usize = 10_000;

/// Domain images a node reports at most.
const MAX_BUILDS_SHOWN: usize = 64;

/// A request this node holds: its document and where it stands.
struct Req {
    /// How long this node's last finished run of it took
    /// (`claim_order::short_runs`).
    last_run_ms: Option<u64>,
    /// When this node first held it (monotonic ms): blocks dealt to other
    /// nodes wait for their claims until [`claim_order::DEALT_GRACE_MS`]
    /// after.
    seen_ms: u64,
    doc: RequestDoc,
    /// The node's change counter when this request last changed.
    version: u64,
    dirty: bool,
    saved: SavedDoc,
}

impl Req {
    /// A request first held now; `dirty` when it is not on disk yet.
    fn new(doc: RequestDoc, saved: SavedDoc, dirty: bool, now: Now) -> Req {
        Req {
            last_run_ms: None,
            seen_ms: now.mono_ms,
            doc,
            version: 0,
            dirty,
            saved,
        }
    }
}

/// One node's protocol state (see the module documentation).
pub struct Node {
    cfg: Config,
    rng: u64,
    grid: GridDoc,
    grid_dirty: bool,
    grid_saved: SavedDoc,
    /// Writes of the grid document since it was last rebuilt whole.
    grid_writes: u64,
    requests: BTreeMap<RequestId, Req>,
    /// Finished requests whose documents are on disk only.
    archive: BTreeMap<RequestId, ArchivedRequest>,
    /// Archive marks to write with the next batch.
    archive_writes: Vec<DocWrite>,
    /// When each finished request was first seen finished and quiet.
    finished_since: HashMap<RequestId, u64>,
    running: BTreeMap<AttemptKey, Running>,
    /// Attempts claimed ahead of a free slot, in claim order (each also in
    /// `running`, without a slot).
    ahead: VecDeque<AttemptKey>,
    /// When this node first saw each gang round gathered (monotonic ms):
    /// its ranks start [`crate::gang::SETTLE_MS`] later.
    gathered_at: HashMap<(RequestId, u32), u64>,
    /// Slot workspaces not in use.
    free_slots: Vec<usize>,
    liveness: Liveness,
    /// When each foreign claim was first seen here.
    sightings: Sightings,
    /// Claim races lost in a row, and no claim before this.
    races_lost: u32,
    claims_paused_until: u64,
    /// Grid members at the last heartbeat (sizes the takeover order).
    members_n: usize,
    /// The grid's members in id order (as of the last heartbeat).
    members_list: Vec<NodeId>,
    /// Members believed alive (this node included).
    live_n: usize,
    /// When this node first saw each request with shared files.
    first_seen: HashMap<RequestId, u64>,
    /// A slot was free at the end of the last scheduling pass.
    idle: bool,
    /// The node's change counter (requests), and the last one announced.
    version: u64,
    version_told: u64,
    /// The last request changes, by version (the event stream's replay).
    event_log: VecDeque<(u64, RequestId)>,
    repl: Replication,
    logged_skips: HashSet<String>,
    stopping: Option<Stopping>,
    caps: NodeCaps,
    paused: Option<Pause>,
    /// The grid's document came to need a newer PESC (`min_reader`): why.
    /// The node takes no new runs until it is upgraded.
    grid_too_new: Option<String>,
    gpus: Vec<Gpu>,
    gpu_pool: GpuPool<AttemptKey>,
    /// Peak GPU memory (MiB) seen per program and domain.
    gpu_peaks: HashMap<String, u64>,
    /// Peak memory and CPU seen per program and domain (`resources`).
    peaks: HashMap<String, crate::resources::Peak>,
    /// The machine's CPUs, as last sampled (0: unknown).
    cpus: u32,
    /// The node's own policy and slots (its configuration), under the
    /// grid's settings for it (`settings`).
    base: (Policy, u32),
    /// Runs hold slots above the node's count (an admin cut its slots):
    /// freed slots are counted afresh until none does.
    slots_cut: bool,
    /// When this node next looks for stragglers to back up (monotonic ms),
    /// and when it first saw each a straggler.
    next_backup_look: u64,
    stragglers: HashMap<(RequestId, u32), u64>,
    /// Runs suspended for the desktop's owner (`owner`).
    suspended: owner::Suspended,
    /// Requests whose runs were said to wait for memory or CPU here.
    told_misfit: HashSet<RequestId>,
    /// Why the last scheduling pass left a run for lack of room, if it did.
    misfit_now: Option<String>,
    /// Domain images this node built or builds, by domain hash.
    builds: BTreeMap<String, BuildState>,
    /// One-minute load per CPU, as last sampled.
    load: f32,
    /// The least load per CPU among live neighbours with a free slot that
    /// take runs, as their last heartbeats said.
    least_load: Option<f32>,
    /// Heartbeats in a row this node was busier than that by the margin
    /// (`claim_order::LOAD_STEADY_BEATS`).
    load_over_beats: u32,
    /// Memory (MiB) as last sampled: total and available.
    memory: Option<(u64, u64)>,
    /// Monotonic ms of the next heartbeat, scheduling pass and eviction.
    next_heartbeat: u64,
    next_tick: u64,
    /// Something that may free or fill a slot happened since the last
    /// scheduling pass (a merge, a finished run, a liveness notice…): scan
    /// at the end of this batch rather than at the next tick. Decisions that
    /// hang on time alone (takeover turns, leases, waiting for inputs) are
    /// looked at every tick.
    rescan: bool,
    next_evict: u64,
    next_archive: u64,
    /// What the next [`Node::publish_reads`] redoes.
    stale: read_model::Stale,
    actions: VecDeque<Action>,
}

impl Node {
    /// Loads the node's stored documents and recovers from an earlier
    /// crash: the node's unfinished attempts are marked lost, so they run
    /// again. `docs` are the store's documents ("grid", "req/ID") but the
    /// archived ones, whose summaries are `archived`.
    pub fn load(
        cfg: Config,
        docs: Vec<StoredDoc>,
        archived: Vec<ArchivedRequest>,
        now: Now,
    ) -> Result<Node> {
        let mut rng = cfg.seed | 1;
        let mut actor = || actor_id(&cfg.node, next_random(&mut rng).to_le_bytes());
        let mut grid = None;
        let mut grid_saved = SavedDoc::default();
        let mut requests = BTreeMap::new();
        let mut unreadable = BTreeMap::new();
        for d in docs {
            if d.key == "grid" {
                // Of this grid, or none: a data dir that joined another grid
                // (or a document without this grid's genesis) starts afresh.
                match GridDoc::load_for(&cfg.grid_id, &d.bytes, actor()) {
                    Ok(g) => grid = Some(g),
                    Err(e) => tracing::warn!(
                        "the stored grid document is not this grid's ({e}): starting afresh"
                    ),
                }
                grid_saved = d.saved;
            } else if let Some(id) = d.key.strip_prefix("req/") {
                match RequestDoc::load(&d.bytes, actor()) {
                    Ok(doc) => {
                        let req = Req::new(doc, d.saved, false, now);
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
        if let Some(g) = &grid
            && g.grid_id()?.is_some_and(|id| id != cfg.grid_id)
        {
            tracing::warn!("the stored grid document belongs to another grid: starting afresh");
            grid = None;
        }
        let fresh_grid = grid.is_none();
        let mut grid = match grid {
            Some(g) => g,
            None => GridDoc::genesis(&cfg.grid_id, actor())?,
        };
        grid.put_node(&NodeRecord {
            id: cfg.node.clone(),
            name: cfg.name.clone(),
            slots: cfg.slots,
            executor: cfg.executor.name.clone(),
            isolation: cfg.executor.isolation_detail.clone(),
            addrs: Vec::new(),
        })?;
        let grid_dirty = grid.commit() || fresh_grid;
        // A grid document only a newer PESC reads safely: the node starts
        // (it keeps syncing, so the grid can undo it) but takes no runs.
        let grid_too_new = too_new(&mut grid);
        // Attempts this node had in flight when it died: their processes are gone.
        let mut recovered = 0;
        for req in requests.values_mut() {
            let mine: Vec<_> = req
                .doc
                .all_attempts()
                .filter(|a| a.node == cfg.node && !a.state.is_terminal())
                .cloned()
                .collect();
            let gang = req.doc.spec().parallel;
            for mut a in mine {
                // A gang's rank that had not started lost nothing: it was
                // only holding a slot (not a failure of the round).
                if gang && a.started_ms.is_none() {
                    a.state = AttemptState::Yielded;
                    a.reason = Some("the node restarted before the gang started".into());
                } else {
                    a.state = AttemptState::Lost;
                    a.reason = Some("the node restarted while this attempt ran".into());
                }
                a.finished_ms = Some(now.wall_ms);
                req.doc.put_attempt(&a)?;
                req.dirty = true;
                recovered += 1;
            }
        }
        if recovered > 0 {
            tracing::info!("{recovered} interrupted attempt(s) will run again");
        }
        let mut sightings = Sightings::default();
        for req in requests.values() {
            replication::observe_claims(&mut sightings, &cfg.node, &req.doc, now.mono_ms);
        }
        let caps = NodeCaps {
            rooms: cfg.rooms.clone(),
            private: false,
            gpus: 0,
            containers: cfg.executor.containers,
            isolation: cfg.executor.isolation,
            min_isolation: grid.min_isolation(),
            gpu_capability: 0.0,
        };
        let mut node = Node {
            rng,
            grid,
            grid_dirty,
            grid_saved,
            grid_writes: 0,
            requests,
            archive: archived
                .into_iter()
                .map(|a| (a.info.id.clone(), a))
                .collect(),
            archive_writes: Vec::new(),
            finished_since: HashMap::new(),
            running: BTreeMap::new(),
            free_slots: (0..cfg.slots as usize).rev().collect(),
            ahead: VecDeque::new(),
            gathered_at: HashMap::new(),
            liveness: Liveness::new(cfg.node.clone(), cfg.incarnation, cfg.lease_ttl_ms),
            sightings,
            races_lost: 0,
            claims_paused_until: 0,
            members_n: 1,
            members_list: Vec::new(),
            live_n: 1,
            first_seen: HashMap::new(),
            idle: false,
            version: 0,
            version_told: 0,
            event_log: VecDeque::new(),
            repl: Replication::with_unreadable(unreadable),
            logged_skips: HashSet::new(),
            stopping: None,
            caps,
            paused: None,
            grid_too_new,
            gpus: Vec::new(),
            gpu_pool: GpuPool::default(),
            gpu_peaks: HashMap::new(),
            peaks: HashMap::new(),
            cpus: 0,
            told_misfit: HashSet::new(),
            suspended: Default::default(),
            next_backup_look: 0,
            stragglers: HashMap::new(),
            base: (cfg.policy.clone(), cfg.slots),
            slots_cut: false,
            misfit_now: None,
            builds: BTreeMap::new(),
            load: 0.0,
            least_load: None,
            load_over_beats: 0,
            memory: None,
            next_heartbeat: now.mono_ms,
            next_tick: now.mono_ms,
            rescan: true,
            next_evict: now.mono_ms + EVICT_EVERY_MS,
            next_archive: now.mono_ms,
            stale: read_model::Stale {
                all: true,
                ..Default::default()
            },
            actions: VecDeque::new(),
            cfg,
        };
        // Read as a snapshot and its chunks: held many times larger than
        // whole, so rebuilt whole at once.
        if node.grid_saved.chunks() > 0 {
            node.compact_grid();
        }
        node.refresh_caps();
        node.log_skipped();
        node.dial_grid_nodes();
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.cfg.node
    }

    /// Runs at once it takes now.
    pub fn slots(&self) -> u32 {
        self.cfg.slots
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Node::handle_timeout`] is to be called next (monotonic ms).
    pub fn poll_timeout(&self) -> u64 {
        let mut t = self
            .next_heartbeat
            .min(self.next_tick)
            .min(self.next_archive);
        if self.cfg.evict_blobs {
            t = t.min(self.next_evict);
        }
        if let Some(s) = &self.stopping {
            t = t.min(s.next_deadline());
        }
        if let Some(at) = self.repl.next_send {
            t = t.min(at);
        }
        t
    }

    /// Time passed: heartbeats, eviction, and the housekeeping pass are
    /// done when due (the driver ends the batch after).
    pub fn handle_timeout(&mut self, now: Now) {
        if now.mono_ms >= self.next_heartbeat {
            self.next_heartbeat = now.mono_ms + crate::lease::DEFAULT_HEARTBEAT_MS;
            self.heartbeat(now);
        }
        self.archive_quiet(now);
        if self.cfg.evict_blobs && now.mono_ms >= self.next_evict {
            self.next_evict = now.mono_ms + EVICT_EVERY_MS;
            let keep = self.blobs_to_keep();
            self.actions.push_back(Action::EvictBlobs(keep));
        }
    }

    /// Ends a batch of inputs: running attempts' news go into their
    /// documents, free slots are filled, what changed is persisted and sent
    /// to peers, and a stop in progress moves on.
    pub fn end_batch(&mut self, now: Now) {
        self.flush_running(now);
        if self.rescan || now.mono_ms >= self.next_tick {
            self.rescan = false;
            self.next_tick = now.mono_ms + TICK_MS;
            self.schedule(now);
        }
        self.persist();
        self.sync_out(now);
        self.stop_progress(now);
    }

    /// A fresh random number (xorshift: ids and choices, not secrets).
    fn random(&mut self) -> u64 {
        next_random(&mut self.rng)
    }

    fn actor(&mut self) -> automerge::ActorId {
        let r = self.random();
        actor_id(&self.cfg.node, r.to_le_bytes())
    }

    /// Logs each skipped entry once: what a peer (or a bug) wrote that this
    /// node will not use.
    fn log_skipped(&mut self) {
        // Reading every map records what fails its checks.
        let _ = self.grid.access();
        let _ = self.grid.processes();
        let _ = self.grid.files();
        let _ = self.grid.domains();
        let _ = self.grid.nodes();
        for (entry, why) in self.skipped_entries().0 {
            if self.logged_skips.len() < LOGGED_SKIPS && self.logged_skips.insert(entry.clone()) {
                tracing::warn!("skipped a malformed entry of the grid's documents, {entry}: {why}");
            }
        }
    }

    /// What the grid document says of this node's offer: the rooms it
    /// serves (its configuration's and the one a room admin put it in) and
    /// the grid's minimum isolation.
    fn refresh_caps(&mut self) {
        let mut rooms = self.cfg.rooms.clone();
        if let Ok(Some(r)) = self.grid.placement(&self.cfg.node)
            && !rooms.contains(&r)
        {
            rooms.push(r);
        }
        self.caps.rooms = rooms;
        self.caps.private = !self.grid.in_general(&self.cfg.node).unwrap_or(true);
        self.caps.min_isolation = self.grid.min_isolation();
        self.apply_settings();
    }

    /// Records in the grid that this node keeps a whole copy of a blob.
    fn record_holding(&mut self, hash: &BlobHash) {
        match self.grid.set_holder(hash, &self.cfg.node, true) {
            Ok(()) => self.grid_dirty = true,
            Err(e) => tracing::error!("cannot record holding {hash}: {e}"),
        }
    }
}

/// xorshift64*: a small, seedable generator (never zero).
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Why this node cannot use the grid's document safely, if so (logged).
fn too_new(grid: &mut GridDoc) -> Option<String> {
    let e = crate::doc::check_readable(grid.doc_mut(), "grid's document").err()?;
    tracing::error!("this node takes no new runs: {e}");
    Some(e.to_string())
}
