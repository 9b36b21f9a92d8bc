//! Several [`Node`]s in one process, with virtual time and a simulated
//! link that loses, duplicates, delays and partitions (quinn-proto's `Pair`
//! is the model). The tests step the real state machine through claim
//! races, deaths, partitions and restarts from persisted chunks, and the
//! simulator's exact mode runs grids of a few hundred nodes on it.
//!
//! What the harness models, and nothing more: connections (a pair is
//! connected while both are up, on the same side of any partition, and one
//! of them keeps the other as a sync link or joined through it), message
//! delivery (sync, push, ping/pong, gossip), programs (a [`Program`] says
//! how long each attempt runs and how it exits), and the store (every
//! `Persist` is applied at once; a crash keeps what was written). Nothing
//! in it decides what a node does.

mod link;
mod store;

use std::collections::{BTreeMap, BTreeSet};

use crate::api::NewRequest;
use crate::isolation::IsolationLevel;
use crate::model::{Language, Process, ProcessKind};
use crate::node::{
    Action, AttemptKey, Config, ExecutorInfo, Exit, Job, Node, Now, Outcome, Policy, ReadModel,
    RunEvent,
};
use crate::wire::{Beat, DocKey, Gossip, SyncResponse};
use crate::{BlobHash, NodeId, RequestId};

pub use link::Link;
use store::MemStore;

/// How an attempt behaves: (how long it runs in ms, how it exits).
pub type Program = Box<dyn FnMut(&NodeId, &Job) -> (u64, Exit)>;

/// Where virtual wall time starts (a fixed date: runs are reproducible).
const WALL_BASE_MS: u64 = 1_800_000_000_000;

/// How long a request whose answer never comes takes to fail (libp2p's
/// request-response timeout, shortened).
const SYNC_TIMEOUT_MS: u64 = 2_000;

/// One machine: its node (none while down), its disk, its runs.
struct Host {
    cfg: Config,
    node: Option<Node>,
    /// What its API would read, published after each batch as the driver does.
    reads: ReadModel,
    store: MemStore,
    /// Attempts its programs run now.
    running: BTreeSet<AttemptKey>,
    /// Attempts whose programs ended, while their results are copied.
    copying: BTreeSet<AttemptKey>,
    /// The node's sync links, as it last said.
    links: BTreeSet<NodeId>,
    /// Nodes it joined through (kept connected, like a join token's peer).
    boot: BTreeSet<NodeId>,
    /// Peers it is connected to.
    connected: BTreeSet<NodeId>,
    /// Bumped at each crash: what a previous life scheduled is dropped.
    life: u64,
    /// Partition side.
    side: u32,
    /// The next write fails (its chunks are lost).
    fail_next_write: bool,
    /// A write failed: the node is told before its next batch, as the
    /// driver tells it.
    write_failed: bool,
}

/// Something due at a virtual time.
#[derive(Debug)]
enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        /// The sender's life: a failure notice goes back to that life only.
        from_life: u64,
        msg: Msg,
    },
    /// A sync message was not delivered: its sender learns it.
    Failed {
        node: NodeId,
        life: u64,
        peer: NodeId,
        doc: DocKey,
    },
    Run {
        node: NodeId,
        life: u64,
        ev: RunEvent,
    },
}

#[derive(Debug, Clone)]
enum Msg {
    Sync { doc: DocKey, msg: Vec<u8> },
    Push { doc: DocKey, data: Vec<u8> },
    Ping(Box<Beat>),
    Pong(Box<Beat>),
    Gossip(Gossip),
}

/// What the harness saw that a property test checks.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Times a node ran more attempts than it has slots.
    pub over_slots: Vec<(NodeId, u64)>,
    /// Attempts started, per node.
    pub started: BTreeMap<NodeId, u64>,
    /// Messages sent, lost and duplicated.
    pub sent: u64,
    /// Messages sent, by kind (sync, push, ping, pong, gossip).
    pub sent_by_kind: BTreeMap<&'static str, u64>,
    pub lost: u64,
    pub duplicated: u64,
    /// Suspensions asked for (`Action::Suspend`): node, attempt, on. The
    /// harness does not hold a suspended run's end back.
    pub suspended: Vec<(NodeId, AttemptKey, bool)>,
}

/// Several nodes, one virtual clock, one simulated link.
pub struct Harness {
    now: u64,
    seq: u64,
    rng: u64,
    hosts: BTreeMap<NodeId, Host>,
    queue: BTreeMap<(u64, u64), Event>,
    pub link: Link,
    program: Program,
    grid: String,
    lease_ttl_ms: u64,
    archive_after_ms: u64,
    /// Nodes added from now on use the load order.
    load_order: bool,
    /// Plain requests submitted from now on allow backup copies.
    backups: bool,
    /// The connections need looking at again (links, sides or hosts changed).
    topology_changed: bool,
    /// Nodes that took inputs at this instant and have yet to end their
    /// batch: like the driver, which takes everything waiting before
    /// ending one batch, a node ends one batch for all that reached it at
    /// the same millisecond.
    pending: BTreeSet<NodeId>,
    /// Whether nodes publish their read models after each batch, as the
    /// driver does (see [`Harness::skip_read_models`]).
    publish_reads: bool,
    /// How long copying a run's results to other nodes takes, once its
    /// program ended (0: the attempt ends with its program).
    copy_ms: u64,
    pub observed: Observed,
}

impl Harness {
    /// An empty grid; `seed` fixes every choice of the link and the nodes.
    pub fn new(seed: u64, program: Program) -> Harness {
        Harness {
            now: 0,
            seq: 0,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            hosts: BTreeMap::new(),
            queue: BTreeMap::new(),
            link: Link::default(),
            program,
            grid: "harness-grid".into(),
            lease_ttl_ms: crate::lease::DEFAULT_LEASE_TTL_MS,
            archive_after_ms: crate::node::ARCHIVE_AFTER_MS,
            load_order: true,
            backups: true,
            topology_changed: true,
            pending: BTreeSet::new(),
            publish_reads: true,
            copy_ms: 0,
            observed: Observed::default(),
        }
    }

    /// Copying a run's results to other nodes takes `ms` after its
    /// program ends (the slot is free meanwhile, as on a real node); nodes
    /// added from now on keep two copies of results.
    pub fn set_copy_ms(&mut self, ms: u64) {
        self.copy_ms = ms;
    }

    /// Nodes no longer publish read models ([`Harness::reads`] stays
    /// empty): for runs that read nodes only through their own calls, such
    /// as the simulator's exact mode, where publishing after every batch of
    /// every node was a sixth of the time.
    pub fn skip_read_models(&mut self) {
        self.publish_reads = false;
    }

    /// Every program runs `ms` and succeeds.
    pub fn fixed(ms: u64) -> Program {
        Box::new(move |_, _| (ms, Exit::Code(0)))
    }

    /// Sets how long finished requests stay in memory, for nodes added
    /// from now on.
    pub fn set_archive_after(&mut self, ms: u64) {
        self.archive_after_ms = ms;
    }

    /// Whether plain requests submitted from now on allow backup copies of
    /// stragglers (`crate::backup`).
    pub fn set_backups(&mut self, on: bool) {
        self.backups = on;
    }

    /// Whether nodes added from now on use the load order
    /// (`claim_order::load_delay_ms`).
    pub fn set_load_order(&mut self, on: bool) {
        self.load_order = on;
    }

    /// Sets the lease TTL of nodes added from now on.
    pub fn set_lease_ttl(&mut self, ms: u64) {
        self.lease_ttl_ms = ms;
    }

    /// Both clocks now.
    pub fn now(&self) -> Now {
        Now {
            mono_ms: self.now,
            wall_ms: WALL_BASE_MS + self.now,
        }
    }

    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A node with `slots` slots joins the grid (through the first node,
    /// as with a join token). Its id is its name.
    pub fn add_node(&mut self, name: &str, slots: u32) -> NodeId {
        let id = NodeId::new(name);
        let boot = self.hosts.keys().next().cloned().into_iter().collect();
        let cfg = Config {
            node: id.clone(),
            name: name.into(),
            slots,
            lease_ttl_ms: self.lease_ttl_ms,
            grid_id: self.grid.clone(),
            // Results copied to one more node only when copying is modelled.
            replication: if self.copy_ms > 0 { 2 } else { 1 },
            evict_blobs: false,
            policy: Policy {
                pause_when_others_above: 100,
                concurrent_resources_percent: 100,
                ..Policy::default()
            },
            rooms: Vec::new(),
            load_order: self.load_order,
            executor: ExecutorInfo {
                name: "harness".into(),
                isolation: IsolationLevel::default(),
                isolation_detail: "simulated".into(),
                containers: false,
            },
            archive_after_ms: self.archive_after_ms,
            incarnation: 0,
            seed: 0,
        };
        self.hosts.insert(
            id.clone(),
            Host {
                cfg,
                node: None,
                reads: ReadModel::default(),
                store: MemStore::default(),
                running: BTreeSet::new(),
                copying: BTreeSet::new(),
                links: BTreeSet::new(),
                boot,
                connected: BTreeSet::new(),
                life: 0,
                side: 0,
                fail_next_write: false,
                write_failed: false,
            },
        );
        self.start(&id);
        id
    }

    /// Starts (or restarts) a node from what its store holds.
    fn start(&mut self, id: &NodeId) {
        let now = self.now();
        let seed = self.random();
        let Some(h) = self.hosts.get_mut(id) else {
            return;
        };
        h.cfg.incarnation = now.wall_ms;
        h.cfg.seed = seed;
        let node = Node::load(h.cfg.clone(), h.store.docs(), h.store.archived(), now)
            .unwrap_or_else(|e| panic!("node {id} cannot load its store: {e}"));
        h.node = Some(node);
        h.reads = ReadModel::default();
        self.topology_changed = true;
        self.end_batch(id);
    }

    /// Kills a node at once (kill -9): its programs and messages are gone,
    /// its store stays.
    pub fn crash(&mut self, id: &NodeId) {
        if let Some(h) = self.hosts.get_mut(id) {
            h.node = None;
            h.running.clear();
            h.copying.clear();
            h.links.clear();
            h.life += 1;
            self.topology_changed = true;
        }
        self.update_connections();
    }

    /// Starts a crashed node again.
    pub fn restart(&mut self, id: &NodeId) {
        if self.hosts.get(id).is_some_and(|h| h.node.is_none()) {
            self.start(id);
        }
    }

    /// The node's next store write fails: that batch's chunks never reach
    /// the disk.
    pub fn fail_next_write(&mut self, id: &NodeId) {
        if let Some(h) = self.hosts.get_mut(id) {
            h.fail_next_write = true;
        }
    }

    /// Whether a node is up.
    /// A probe reading on a node, now (its batch ends after it).
    pub fn probe(&mut self, id: &NodeId, s: crate::node::Sample) {
        let now = self.now();
        let Some(n) = self.node_mut(id) else {
            return;
        };
        n.probe(now, s);
        self.end_batch(id);
    }

    pub fn is_up(&self, id: &NodeId) -> bool {
        self.hosts.get(id).is_some_and(|h| h.node.is_some())
    }

    /// Asks a node to stop cleanly (it hands its runs back).
    pub fn stop(&mut self, id: &NodeId) {
        let now = self.now();
        if let Some(n) = self.node_mut(id) {
            n.begin_stop(now);
        }
        self.end_batch(id);
    }

    /// Splits the grid: the nodes in `side` on one side, the rest on the
    /// other (messages between them are lost).
    pub fn partition(&mut self, side: &[NodeId]) {
        for (id, h) in self.hosts.iter_mut() {
            h.side = u32::from(side.contains(id));
        }
        self.topology_changed = true;
        self.update_connections();
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        for h in self.hosts.values_mut() {
            h.side = 0;
        }
        self.topology_changed = true;
        self.update_connections();
    }

    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        self.hosts.get(id)?.node.as_ref()
    }

    /// The read model node `id` last published.
    pub fn reads(&self, id: &NodeId) -> Option<&ReadModel> {
        let h = self.hosts.get(id)?;
        h.node.as_ref().map(|_| &h.reads)
    }

    pub fn node_mut(&mut self, id: &NodeId) -> Option<&mut Node> {
        self.hosts.get_mut(id)?.node.as_mut()
    }

    /// The ids of every node, up or not.
    pub fn ids(&self) -> Vec<NodeId> {
        self.hosts.keys().cloned().collect()
    }

    /// Attempts running on a node now.
    pub fn running_on(&self, id: &NodeId) -> usize {
        self.hosts.get(id).map_or(0, |h| h.running.len())
    }

    /// A test program every user can run (registered on `on`).
    pub fn program_of(&mut self, on: &NodeId, owner: &str) -> Process {
        let code = BlobHash::of(b"harness program");
        let p = Process {
            id: Process::derive_id(
                &code,
                ProcessKind::File,
                "m.py",
                Language::Python,
                "m.py",
                false,
                owner,
            ),
            name: "m".into(),
            kind: ProcessKind::File,
            file_name: "m.py".into(),
            code,
            size: 1,
            language: Language::Python,
            entry: "m.py".into(),
            entry_is_command: false,
            owner: owner.into(),
            created_ms: 0,
            rooms: Vec::new(),
        };
        if let Some(n) = self.node_mut(on) {
            n.put_process(p.clone()).expect("a valid process");
        }
        self.end_batch(on);
        p
    }

    /// Submits a request of `repetitions` runs on node `on` (the push to
    /// peers goes over the link like any message).
    pub fn submit(&mut self, on: &NodeId, owner: &str, repetitions: u32) -> RequestId {
        let req = self.plain_request(on, owner, repetitions);
        self.submit_new(on, owner, req)
    }

    /// Submits a parallel request (a gang of `world` ranks) on node `on`.
    pub fn submit_gang(
        &mut self,
        on: &NodeId,
        owner: &str,
        world: u32,
        same_node: bool,
        retries: u32,
    ) -> RequestId {
        let req = NewRequest {
            parallel: true,
            same_node,
            retries,
            ..self.plain_request(on, owner, world)
        };
        self.submit_new(on, owner, req)
    }

    /// A request of `repetitions` runs of `owner`'s program, with nothing
    /// else asked.
    pub fn plain_request(&mut self, on: &NodeId, owner: &str, repetitions: u32) -> NewRequest {
        NewRequest {
            process: self.program_of(on, owner).id,
            repetitions,
            parameters: Vec::new(),
            rooms: Vec::new(),
            shared_files: Vec::new(),
            domain: None,
            limits: Default::default(),
            gpu: Default::default(),
            parallel: false,
            same_node: false,
            retries: 0,
            checkpoint_retries: None,
            header: Default::default(),
            sweep: None,
            seed: None,
            sweep_params: Vec::new(),
            backups: Some(self.backups),
        }
    }

    /// Submits a request as given.
    pub fn submit_new(&mut self, on: &NodeId, owner: &str, req: NewRequest) -> RequestId {
        let now = self.now();
        let node = self.node_mut(on).expect("submitting on a node that is up");
        let s = node
            .submit(now, req, owner.into())
            .expect("a valid request");
        let id = s.info.id.clone();
        if let Some(push) = s.push {
            for p in push.peers {
                self.send(
                    on,
                    &p,
                    Msg::Push {
                        doc: push.doc.clone(),
                        data: push.data.clone(),
                    },
                );
            }
        }
        self.end_batch(on);
        id
    }

    /// Runs the grid until virtual time `until` (ms).
    pub fn run_until(&mut self, until: u64) {
        loop {
            let next_event = self.queue.keys().next().map(|k| k.0);
            // Everything due at this instant is in: end the batches it made.
            if !self.pending.is_empty() && next_event.is_none_or(|e| e > self.now) {
                for id in std::mem::take(&mut self.pending) {
                    self.end_batch(&id);
                }
                continue;
            }
            let next_timer = self
                .hosts
                .iter()
                // A node yet to end its batch sets its timers when it does.
                .filter(|(id, _)| !self.pending.contains(*id))
                .filter_map(|(id, h)| Some((h.node.as_ref()?.poll_timeout(), id.clone())))
                .min();
            let t = match (next_event, &next_timer) {
                (Some(e), Some((t, _))) => e.min(*t),
                (Some(e), None) => e,
                (None, Some((t, _))) => *t,
                (None, None) => u64::MAX,
            };
            if t > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(t);
            match next_timer {
                Some((tt, id)) if tt <= t && next_event.is_none_or(|e| tt < e) => {
                    let now = self.now();
                    if let Some(n) = self.node_mut(&id) {
                        n.handle_timeout(now);
                    }
                    self.pending.insert(id);
                }
                _ => {
                    let Some((_, ev)) = self.queue.pop_first() else {
                        continue;
                    };
                    self.apply(ev);
                }
            }
        }
    }

    /// Runs for `ms` more.
    pub fn run_for(&mut self, ms: u64) {
        self.run_until(self.now + ms);
    }

    /// Runs until `done` holds (checked after each step) or `limit` ms
    /// pass; whether it held.
    pub fn run_until_true(&mut self, limit: u64, mut done: impl FnMut(&Harness) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.run_for(50);
        }
        done(self)
    }

    fn schedule(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn life(&self, id: &NodeId) -> u64 {
        self.hosts.get(id).map_or(0, |h| h.life)
    }

    /// Puts a message on the link: delayed, maybe lost or duplicated.
    fn send(&mut self, from: &NodeId, to: &NodeId, msg: Msg) {
        self.observed.sent += 1;
        let kind = match &msg {
            Msg::Sync { .. } => "sync",
            Msg::Push { .. } => "push",
            Msg::Ping(_) => "ping",
            Msg::Pong(_) => "pong",
            Msg::Gossip(_) => "gossip",
        };
        *self.observed.sent_by_kind.entry(kind).or_default() += 1;
        let from_life = self.life(from);
        let r = self.random();
        if self.link.loses(r) {
            self.observed.lost += 1;
            if let Msg::Sync { doc, .. } = msg {
                self.schedule(
                    self.now + SYNC_TIMEOUT_MS,
                    Event::Failed {
                        node: from.clone(),
                        life: from_life,
                        peer: to.clone(),
                        doc,
                    },
                );
            }
            return;
        }
        let r = self.random();
        let at = self.now + self.link.delay(r);
        let r = self.random();
        if self.link.duplicates(r) {
            self.observed.duplicated += 1;
            let r = self.random();
            let later = at + self.link.delay(r);
            self.schedule(
                later,
                Event::Deliver {
                    from: from.clone(),
                    to: to.clone(),
                    from_life,
                    msg: msg.clone(),
                },
            );
        }
        self.schedule(
            at,
            Event::Deliver {
                from: from.clone(),
                to: to.clone(),
                from_life,
                msg,
            },
        );
    }

    fn apply(&mut self, ev: Event) {
        let now = self.now();
        match ev {
            Event::Deliver {
                from,
                to,
                from_life,
                msg,
            } => {
                let reachable = self
                    .hosts
                    .get(&to)
                    .is_some_and(|h| h.node.is_some() && h.connected.contains(&from));
                if !reachable {
                    if let Msg::Sync { doc, .. } = msg {
                        self.schedule(
                            self.now + SYNC_TIMEOUT_MS,
                            Event::Failed {
                                node: from,
                                life: from_life,
                                peer: to,
                                doc,
                            },
                        );
                    }
                    return;
                }
                // An archived document a peer asks about is read back first,
                // as the node's driver does.
                if let Msg::Sync {
                    doc: DocKey::Request(id),
                    ..
                }
                | Msg::Push {
                    doc: DocKey::Request(id),
                    ..
                } = &msg
                {
                    self.restore(&to, id);
                }
                let Some(node) = self.node_mut(&to) else {
                    return;
                };
                let reply = match msg {
                    Msg::Sync { doc, msg } => {
                        node.receive_sync(now, &from, doc, &msg);
                        None
                    }
                    Msg::Push { doc, data } => {
                        let _ = node.receive_push(now, &from, &doc, &data);
                        None
                    }
                    Msg::Ping(beat) => match node.receive_ping(now, &from, *beat) {
                        SyncResponse::Pong(b) => Some(Msg::Pong(b)),
                        _ => None,
                    },
                    Msg::Pong(beat) => {
                        node.receive_pong(now, &from, *beat);
                        None
                    }
                    Msg::Gossip(g) => {
                        node.gossip(now, &from, g);
                        None
                    }
                };
                self.pending.insert(to.clone());
                if let Some(r) = reply {
                    self.send(&to, &from, r);
                }
            }
            Event::Failed {
                node,
                life,
                peer,
                doc,
            } => {
                if self.life(&node) != life {
                    return;
                }
                if let Some(n) = self.node_mut(&node) {
                    n.sync_failed(peer, doc);
                }
                self.pending.insert(node);
            }
            Event::Run { node, life, ev } => {
                if self.life(&node) != life {
                    return;
                }
                let Some(h) = self.hosts.get_mut(&node) else {
                    return;
                };
                match &ev {
                    RunEvent::Finished { key, .. }
                        if !h.running.remove(key) && !h.copying.remove(key) =>
                    {
                        // Stopped already: its first end was reported.
                        return;
                    }
                    RunEvent::Released { key } => {
                        if !h.running.remove(key) {
                            return;
                        }
                        h.copying.insert(key.clone());
                    }
                    _ => {}
                }
                if let Some(n) = h.node.as_mut() {
                    n.run_event(now, ev);
                }
                self.pending.insert(node);
            }
        }
    }

    /// Ends a node's batch and carries out what it asks.
    fn end_batch(&mut self, id: &NodeId) {
        self.end_batch_quiet(id);
        self.update_connections();
    }

    fn act(&mut self, id: &NodeId, a: Action) {
        let life = self.life(id);
        match a {
            Action::Start(job) => {
                let (ms, exit) = (self.program)(id, &job);
                let Some(h) = self.hosts.get_mut(id) else {
                    return;
                };
                h.running.insert(job.key.clone());
                *self.observed.started.entry(id.clone()).or_default() += 1;
                // Against the slots it has now (an admin may change them).
                let slots = h.node.as_ref().map_or(h.cfg.slots, Node::slots);
                if h.running.len() > slots as usize {
                    self.observed.over_slots.push((id.clone(), self.now));
                }
                let key = job.key;
                self.schedule(
                    self.now + 1,
                    Event::Run {
                        node: id.clone(),
                        life,
                        ev: RunEvent::Started { key: key.clone() },
                    },
                );
                let out = BlobHash::of(format!("{key:?} on {id}").as_bytes());
                // With copies to make, the slot is given back when the
                // program ends, and the attempt ends once they are made.
                let mut end = self.now + ms.max(2);
                if self.copy_ms > 0 && job.copies > 0 {
                    self.schedule(
                        end,
                        Event::Run {
                            node: id.clone(),
                            life,
                            ev: RunEvent::Released { key: key.clone() },
                        },
                    );
                    end += self.copy_ms;
                }
                self.schedule(
                    end,
                    Event::Run {
                        node: id.clone(),
                        life,
                        ev: RunEvent::Finished {
                            key,
                            outcome: Box::new(Outcome {
                                exit: Some(exit),
                                output: Some(out),
                                stdout: Some(out),
                                replicas: vec![id.clone()],
                                ..Default::default()
                            }),
                        },
                    },
                );
            }
            Action::Suspend { key, on } => self.observed.suspended.push((id.clone(), key, on)),
            Action::Policy(_) => {}
            Action::Stop(key) => {
                // SIGTERM: the program ends at once.
                self.schedule(
                    self.now + 1,
                    Event::Run {
                        node: id.clone(),
                        life,
                        ev: RunEvent::Finished {
                            key,
                            outcome: Box::new(Outcome {
                                exit: Some(Exit::Signal(15)),
                                replicas: vec![id.clone()],
                                ..Default::default()
                            }),
                        },
                    },
                );
            }
            Action::Sync { to, doc, msg } => {
                if self.connected(id, &to) {
                    self.send(id, &to, Msg::Sync { doc, msg });
                } else {
                    let from_life = life;
                    self.schedule(
                        self.now + SYNC_TIMEOUT_MS,
                        Event::Failed {
                            node: id.clone(),
                            life: from_life,
                            peer: to,
                            doc,
                        },
                    );
                }
            }
            Action::Ping { to, beat } => {
                if self.connected(id, &to) {
                    self.send(id, &to, Msg::Ping(beat));
                }
            }
            Action::Publish(n) => {
                // Gossip floods the author's side of the grid.
                let side = self.hosts.get(id).map(|h| h.side);
                let to: Vec<NodeId> = self
                    .hosts
                    .iter()
                    .filter(|(o, h)| *o != id && h.node.is_some() && Some(h.side) == side)
                    .map(|(o, _)| o.clone())
                    .collect();
                for o in to {
                    self.send_gossip(id, &o, Gossip::Liveness(n.clone()));
                }
            }
            Action::Links(links) => {
                if let Some(h) = self.hosts.get_mut(id) {
                    h.links = links;
                    self.topology_changed = true;
                }
            }
            Action::Persist(writes) => {
                if let Some(h) = self.hosts.get_mut(id) {
                    if !writes.is_empty() && std::mem::take(&mut h.fail_next_write) {
                        h.write_failed = true;
                    } else {
                        h.store.apply(writes);
                    }
                }
            }
            Action::Stopped => {
                // A clean exit: the process is gone, its disk stays.
                if let Some(h) = self.hosts.get_mut(id) {
                    h.node = None;
                    h.running.clear();
                    h.copying.clear();
                    h.links.clear();
                    h.life += 1;
                    self.topology_changed = true;
                }
            }
            Action::Dial { .. }
            | Action::Throttle(_)
            | Action::RequestDone(_)
            | Action::EvictBlobs(_)
            | Action::LiveNodes(_)
            | Action::Changed(_)
            | Action::RequestChanged(..) => {}
        }
    }

    /// Reads an archived request back into a node's memory, if it is
    /// archived there (what a driver does before anything needs it).
    pub fn restore(&mut self, on: &NodeId, id: &RequestId) {
        let now = self.now();
        let Some(h) = self.hosts.get_mut(on) else {
            return;
        };
        let Some(node) = h.node.as_mut() else {
            return;
        };
        if !node.is_archived(id) {
            return;
        }
        if let Some(doc) = h.store.doc(&Node::doc_key(id)) {
            node.restore(now, doc)
                .expect("an archived document reads back");
        }
    }

    /// Gossip is not tied to sync links: it reaches every node up on the
    /// same side (still lossy and delayed).
    fn send_gossip(&mut self, from: &NodeId, to: &NodeId, g: Gossip) {
        self.observed.sent += 1;
        *self.observed.sent_by_kind.entry("gossip").or_default() += 1;
        let r = self.random();
        if self.link.loses(r) {
            self.observed.lost += 1;
            return;
        }
        let r = self.random();
        let at = self.now + self.link.delay(r);
        let from_life = self.life(from);
        self.schedule(
            at,
            Event::Deliver {
                from: from.clone(),
                to: to.clone(),
                from_life,
                msg: Msg::Gossip(g),
            },
        );
    }

    fn connected(&self, a: &NodeId, b: &NodeId) -> bool {
        self.hosts.get(a).is_some_and(|h| h.connected.contains(b))
    }

    /// Connects and disconnects pairs as links, sides and hosts say.
    fn update_connections(&mut self) {
        if !self.topology_changed {
            return;
        }
        self.topology_changed = false;
        // Only pairs one side wants or has: a node's links, boot peers and
        // connections (every pair of a 200-node grid was too slow).
        let mut pairs: BTreeSet<(&NodeId, &NodeId)> = BTreeSet::new();
        for (a, h) in &self.hosts {
            for b in h.links.iter().chain(&h.boot).chain(&h.connected) {
                if a != b {
                    pairs.insert((a.min(b), a.max(b)));
                }
            }
        }
        let wants = |h: &Host, o: &NodeId| h.links.contains(o) || h.boot.contains(o);
        let mut changes = Vec::new();
        for (a, b) in pairs {
            let (Some(ha), Some(hb)) = (self.hosts.get(a), self.hosts.get(b)) else {
                continue;
            };
            let should = ha.node.is_some()
                && hb.node.is_some()
                && ha.side == hb.side
                && (wants(ha, b) || wants(hb, a));
            let is = ha.connected.contains(b);
            if should != is {
                changes.push((a.clone(), b.clone(), should));
            }
        }
        let now = self.now();
        let mut touched = BTreeSet::new();
        for (a, b, up) in changes {
            touched.insert(a.clone());
            touched.insert(b.clone());
            for (x, y) in [(&a, &b), (&b, &a)] {
                let Some(h) = self.hosts.get_mut(x) else {
                    continue;
                };
                if up {
                    h.connected.insert(y.clone());
                } else {
                    h.connected.remove(y);
                }
                if let Some(n) = h.node.as_mut() {
                    if up {
                        n.connected(now, y.clone());
                    } else {
                        n.disconnected(now, y);
                    }
                }
            }
        }
        // What the new connections call for (every document offered).
        for id in touched {
            self.end_batch_quiet(&id);
        }
    }

    /// Ends a batch without looking at connections again (they were just
    /// settled; links a node changes now are looked at on the next step).
    fn end_batch_quiet(&mut self, id: &NodeId) {
        let now = self.now();
        let Some(h) = self.hosts.get_mut(id) else {
            return;
        };
        let Some(node) = h.node.as_mut() else {
            return;
        };
        // A write failed: the node is told before its next batch, as the
        // driver tells it.
        if std::mem::take(&mut h.write_failed) {
            node.store_failed();
        }
        node.end_batch(now);
        if self.publish_reads {
            node.publish_reads(now, &mut h.reads);
        }
        let mut actions = Vec::new();
        while let Some(a) = node.poll_action() {
            actions.push(a);
        }
        for a in actions {
            self.act(id, a);
        }
    }
}
