//! The discrete-event core: virtual nodes that claim, run, finish and abandon
//! runs with the protocol's own functions (`scan_start`,
//! `Blocks::first_queued`, `pick`, `derive_run`, `should_abandon`, the liveness overlay), a virtual
//! clock, and a network that decides when each node sees each write.
//!
//! Scale comes from one idea: every attempt is stored once, with the time it
//! was written, and each node's replica is *derived* from it: node B sees a
//! write of node A once `visible_at(write, A, B)` has passed (latency, jitter,
//! loss, partitions, B being off). Nothing is copied per node, so 10 000 nodes
//! and 1 000 000 runs fit in memory, and the answers are exactly what a replica
//! that received those messages at those times would hold.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use pesc_protocol::liveness::{FAR_TAKEOVER_DELAY_MS, UP_ANNOUNCEMENTS, takeover_delay_ms};
use pesc_protocol::model::{AttemptState, RequestSpec};
use pesc_protocol::schedule::{NodeCaps, race_backoff_ms};
use pesc_protocol::{NodeId, RequestId};

use crate::metrics::Metrics;
use crate::overlay::Overlay;
use crate::rng::Rng;
use crate::scenario::Scenario;
use crate::sizes::Sizes;
use crate::view::END;

pub const NEVER: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ev {
    Submit(u32),
    /// The node looks for runs to claim.
    Wake(u32),
    /// An attempt's program exits.
    End(u32),
    /// A node re-derives one of its running attempts after a merge.
    Check(u32),
    Down(u32),
    Up(u32),
    /// Idle nodes look for a straggler of a request to copy
    /// (`pesc_protocol::backup`).
    Backups(u32),
    Sample,
}

/// One attempt, stored once for the whole grid.
#[derive(Debug, Clone)]
pub struct Att {
    pub req: u32,
    pub rank: u32,
    pub epoch: u32,
    pub node: u32,
    pub claim_t: u64,
    pub start_t: u64,
    /// When the terminal state was written (`NEVER`: not yet).
    pub end_t: u64,
    pub state: AttemptState,
    /// Set when the holder went off while running it (for failover times).
    pub down_t: u64,
    /// Work (reference ms) the rank's checkpoint held when this attempt
    /// started from it.
    pub base: u32,
    /// A backup copy of a straggler: it never displaces the holder.
    pub backup: bool,
}

pub struct Node {
    pub id: NodeId,
    pub caps: NodeCaps,
    pub slots: u32,
    pub speed: f64,
    pub up: bool,
    /// Attempts running here.
    pub running: Vec<u32>,
    /// Attempts cut by a crash, to be recorded lost when the node is back.
    pub cut: Vec<u32>,
    /// When in each heartbeat period this node pings its neighbours.
    pub hb_phase: u64,
    /// No claims before this (catching up after a restart, or pausing
    /// after lost claim races).
    pub ready_t: u64,
    /// Claim races lost in a row (`schedule::race_backoff_ms`).
    pub races_lost: u32,
    pub runs_done: u32,
    /// How long its last finished run of each request took
    /// (`claim_order::short_runs`), by request index.
    pub last_run_ms: HashMap<u32, u64>,
}

pub struct Req {
    pub spec: RequestSpec,
    pub node: u32,
    pub submit_t: u64,
    /// Work per rank, milliseconds on the reference machine.
    pub work: Vec<u32>,
    /// Work per rank its newest checkpoint snapshot holds (see
    /// [`crate::scenario::Timing::checkpoint_ms`]).
    pub saved: Vec<u32>,
    pub ranks: Vec<Vec<u32>>,
    pub unfinished: BTreeSet<u32>,
    /// Unfinished ranks with no unfinished attempt.
    pub open: BTreeSet<u32>,
    /// Open ranks that had an attempt already (scanned first, as the node does).
    pub retry: BTreeSet<u32>,
    /// Unfinished ranks whose only unfinished attempts are on nodes that are off.
    /// (rank → when its last holder went off).
    pub orphans: BTreeMap<u32, u64>,
    /// Ranks with a write not yet seen by every node that is on: rank → until.
    pub fresh: BTreeMap<u32, u64>,
    pub first_claim: Vec<u64>,
    pub result: Vec<u32>,
    pub done_t: u64,
    /// Ranks that have a backup copy.
    pub backed_up: BTreeSet<u32>,
    /// Run times of successful attempts (the siblings' median).
    pub durations: Vec<u64>,
    /// When each straggler was first seen one, by rank (the turns count
    /// from it).
    pub straggler_since: HashMap<u32, u64>,
    /// The next `Ev::Backups` already queued for this request, and the
    /// last one.
    pub next_look: u64,
    pub last_look: u64,
    /// The siblings' median run and how many runs it was taken over.
    pub typical: Option<(usize, u64)>,
}

pub struct Sim {
    pub sc: Scenario,
    pub now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    pub nodes: Vec<Node>,
    /// Each node's index, by id.
    pub index_of: HashMap<NodeId, u32>,
    /// Node ids in index order, which is id order (the grid's members as
    /// every node lists them).
    pub ids: Vec<NodeId>,
    pub reqs: Vec<Req>,
    pub atts: Vec<Att>,
    pub sizes: Sizes,
    pub overlay: Overlay,
    /// Mean sync links per node.
    pub degree: f64,
    pub m: Metrics,
    /// Nodes on, with free slots, that found nothing last time they looked.
    pub(crate) idle: BTreeSet<u32>,
    /// Fresh entries to drop once seen everywhere: (until, req, rank).
    fresh_expiry: BinaryHeap<Reverse<(u64, u32, u32)>>,
    pending_submits: usize,
    /// The earliest turn (`takeover_delay_ms`) the last `choose` waited for.
    turn: std::cell::Cell<u64>,
    /// Events handled (for progress lines).
    events: u64,
    started: std::time::Instant,
}

impl Sim {
    pub fn new(sc: Scenario) -> Sim {
        let mut phase_rng = Rng::new(sc.seed).fork(1);
        let nodes: Vec<Node> = sc
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| Node {
                id: crate::sizes::real_length_node_id(i as u32),
                caps: NodeCaps {
                    rooms: n.rooms.clone(),
                    gpus: n.gpus,
                    containers: true,
                    gpu_capability: if n.gpus > 0 { 8.0 } else { 0.0 },
                    ..Default::default()
                },
                slots: n.slots,
                speed: n.speed,
                up: n.avail.is_up(0),
                running: Vec::new(),
                cut: Vec::new(),
                hb_phase: phase_rng.below(sc.timing.heartbeat_ms),
                ready_t: 0,
                races_lost: 0,
                runs_done: 0,
                last_run_ms: HashMap::new(),
            })
            .collect();
        let sizes = Sizes::measure();
        let m = Metrics::new(&sc, sizes);
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.id.clone()).collect();
        let overlay = Overlay::build(&ids);
        let degree = 2.0 * overlay.edges as f64 / nodes.len().max(1) as f64;
        let index_of = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        let mut sim = Sim {
            index_of,
            ids: ids.clone(),
            overlay,
            degree,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            reqs: Vec::new(),
            atts: Vec::new(),
            sizes,
            m,
            idle: BTreeSet::new(),
            fresh_expiry: BinaryHeap::new(),
            pending_submits: sc.requests.len(),
            turn: std::cell::Cell::new(NEVER),
            events: 0,
            started: std::time::Instant::now(),
            sc,
        };
        let drawn = sim.sc.drawn_work();
        for (i, (plan, (id, work))) in sim.sc.requests.clone().into_iter().zip(drawn).enumerate() {
            let mut spec = crate::sizes::spec(
                RequestId::from_bytes(id),
                &plan.owner,
                plan.runs,
                plan.at_ms,
            );
            spec.gpu.count = plan.gpus;
            spec.rooms = plan.rooms.clone();
            spec.backups = sim.sc.backups;
            sim.reqs.push(Req {
                spec,
                node: plan.node,
                submit_t: plan.at_ms,
                work,
                ranks: vec![Vec::new(); plan.runs as usize],
                unfinished: (0..plan.runs).collect(),
                open: (0..plan.runs).collect(),
                retry: BTreeSet::new(),
                orphans: BTreeMap::new(),
                fresh: BTreeMap::new(),
                first_claim: vec![NEVER; plan.runs as usize],
                saved: vec![0; plan.runs as usize],
                result: vec![u32::MAX; plan.runs as usize],
                done_t: NEVER,
                backed_up: BTreeSet::new(),
                durations: Vec::new(),
                straggler_since: HashMap::new(),
                next_look: NEVER,
                last_look: 0,
                typical: None,
            });
            sim.push(plan.at_ms, Ev::Submit(i as u32));
        }
        for (i, n) in sim.sc.nodes.iter().enumerate() {
            for &(d, u) in &n.avail.off {
                sim.queue.push(Reverse((d, 0, Ev::Down(i as u32))));
                if u != NEVER {
                    sim.queue.push(Reverse((u, 0, Ev::Up(i as u32))));
                }
            }
        }
        sim.push(0, Ev::Sample);
        sim
    }

    pub fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t.max(self.now), self.seq, ev)));
    }

    /// Runs to the end: every request finished, or the time limit.
    pub fn run(mut self) -> crate::report::Report {
        while let Some(Reverse((t, _, ev))) = self.queue.pop() {
            if t > self.sc.time_limit_ms {
                self.now = self.sc.time_limit_ms;
                break;
            }
            self.now = t;
            self.events += 1;
            self.expire_fresh();
            match ev {
                Ev::Submit(q) => self.submit(q),
                Ev::Wake(b) => self.wake(b),
                Ev::End(a) => self.end(a),
                Ev::Check(a) => self.check(a),
                Ev::Down(b) => self.down(b),
                Ev::Up(b) => self.up(b),
                Ev::Backups(q) => self.look_for_stragglers(q),
                Ev::Sample => {
                    self.sample();
                    if !self.all_done() {
                        self.push(self.now + self.sc.sample_ms, Ev::Sample);
                    }
                }
            }
            if self.sc.check_every_step {
                self.check_invariants();
            }
            if self.all_done() {
                break;
            }
        }
        self.sample();
        crate::report::build(self)
    }

    pub fn all_done(&self) -> bool {
        self.pending_submits == 0 && self.reqs.iter().all(|r| r.done_t != NEVER)
    }

    fn expire_fresh(&mut self) {
        while let Some(&Reverse((until, q, r))) = self.fresh_expiry.peek() {
            if until > self.now {
                break;
            }
            self.fresh_expiry.pop();
            let f = &mut self.reqs[q as usize].fresh;
            if f.get(&r) == Some(&until) {
                f.remove(&r);
            }
        }
    }

    /// Records a write of `a` (claim or end) at `now`: sync traffic, and the
    /// rank stays "fresh" until every node on has seen it.
    fn wrote(&mut self, a: u32, bytes: u64) {
        let (q, r, node) = {
            let x = &self.atts[a as usize];
            (x.req, x.rank, x.node)
        };
        self.m.traffic.write(
            &self.sc.net,
            self.now,
            node,
            &self.nodes,
            bytes,
            self.sizes,
            self.degree,
        );
        let until = self.settled_by(self.now);
        let f = &mut self.reqs[q as usize].fresh;
        let e = f.entry(r).or_insert(until);
        *e = (*e).max(until);
        self.fresh_expiry.push(Reverse((until, q, r)));
    }

    /// When a write at `t` has reached every node that is on (and
    /// every node off has it once it has caught up).
    fn settled_by(&self, t: u64) -> u64 {
        let bound = (self.sc.net.max_delay_ms(self.nodes.len())
            * f64::from(self.overlay.diameter().max(1)))
        .ceil() as u64
            + 1;
        let heal = self
            .sc
            .net
            .partitions
            .iter()
            .filter(|p| p.start_ms <= t && t < p.end_ms)
            .map(|p| p.end_ms)
            .max()
            .unwrap_or(t);
        heal + bound
    }

    fn submit(&mut self, q: u32) {
        self.pending_submits -= 1;
        let (node, t) = (self.reqs[q as usize].node, self.now);
        self.m.traffic.write(
            &self.sc.net,
            t,
            node,
            &self.nodes,
            self.sizes.sync_claim * 4,
            self.sizes,
            self.degree,
        );
        for b in 0..self.nodes.len() as u32 {
            let seen = self.visible_at(t, node, b, u64::from(q) << 40);
            if seen != NEVER {
                self.push(seen, Ev::Wake(b));
            }
        }
    }

    /// A run the node looking now may take at `t`, in its turn.
    pub fn turn_at(&self, t: u64) {
        self.turn.set(self.turn.get().min(t));
    }

    /// How long `b` waits, once `holder`'s run of `q` at `rank` is free to
    /// take: nothing for the holder and its ring neighbours; for another node
    /// its turn (`takeover_delay_ms`) if it was idle already, the least delay
    /// for a slot that has just come free.
    pub fn takeover_wait(&self, holder: u32, b: u32, q: u32, rank: u32) -> u64 {
        if holder == b || self.overlay.watchers[holder as usize].contains(&b) {
            return 0;
        }
        if !self.idle.contains(&b) {
            return FAR_TAKEOVER_DELAY_MS;
        }
        takeover_delay_ms(
            &self.nodes[b as usize].id,
            &self.reqs[q as usize].spec.id,
            rank,
            self.nodes.len(),
        )
    }

    /// Wakes every idle node once `t_w`'s write from `from` reached it: the
    /// write put `from`'s run of `q` at `rank` back in the queue, which
    /// `from`'s ring neighbours may take at once and others in their turn
    /// (`Liveness::may_take`).
    fn wake_idle(&mut self, t_w: u64, from: u32, salt: u64, q: u32, rank: u32) {
        let idle: Vec<u32> = self.idle.iter().copied().collect();
        for b in idle {
            let at = self.visible_at(t_w, from, b, salt);
            if at != NEVER {
                let wait = self.takeover_wait(from, b, q, rank);
                self.push(at + wait, Ev::Wake(b));
            }
        }
    }

    fn wake(&mut self, b: u32) {
        let n = &self.nodes[b as usize];
        if !n.up {
            return;
        }
        if self.now < n.ready_t {
            let t = n.ready_t;
            self.push(t, Ev::Wake(b));
            return;
        }
        let free = n.slots as usize - n.running.len();
        if free == 0 {
            self.idle.remove(&b);
            return;
        }
        self.turn.set(NEVER);
        let picked = self.choose(b, free);
        for c in picked {
            self.claim(b, c);
        }
        let n = &self.nodes[b as usize];
        let slot_left = n.running.len() < n.slots as usize;
        // A run it may take in its turn: it looks again then (the node
        // rescans every tick).
        let turn = self.turn.get();
        if turn != NEVER && slot_left {
            self.push(turn, Ev::Wake(b));
        }
        let has_work = self
            .reqs
            .iter()
            .any(|r| r.done_t == NEVER && r.submit_t <= self.now);
        if slot_left && has_work {
            self.idle.insert(b);
        } else {
            self.idle.remove(&b);
        }
    }

    fn claim(&mut self, b: u32, c: crate::view::Claim) {
        self.claim_as(b, c, false);
    }

    pub(crate) fn claim_as(&mut self, b: u32, c: crate::view::Claim, backup: bool) {
        let ai = self.atts.len() as u32;
        let speed = self.nodes[b as usize].speed;
        let (work, base) = {
            let q = &self.reqs[c.req as usize];
            (q.work[c.rank as usize], q.saved[c.rank as usize])
        };
        let start_t = self.now + self.sc.timing.start_overhead_ms;
        let end_t = start_t + ((work - base) as f64 / speed).ceil() as u64;
        self.atts.push(Att {
            req: c.req,
            rank: c.rank,
            epoch: c.epoch,
            node: b,
            claim_t: self.now,
            start_t,
            end_t: NEVER,
            state: AttemptState::Claimed,
            down_t: NEVER,
            base,
            backup,
        });
        let q = &mut self.reqs[c.req as usize];
        let rank = c.rank as usize;
        let owner = q.spec.owner.clone();
        if q.first_claim[rank] == NEVER {
            q.first_claim[rank] = self.now;
            self.m.queue_wait(&owner, self.now - q.submit_t);
        }
        let others: Vec<u32> = q.ranks[rank].clone();
        // A takeover: the rank's previous holder went off or is out of reach.
        for &x in &others {
            let y = &self.atts[x as usize];
            if y.end_t != NEVER || y.node == b || y.backup != backup {
                continue;
            }
            if y.epoch < c.epoch {
                if y.down_t != NEVER {
                    self.m.failover(self.now - y.down_t);
                } else {
                    self.m.takeovers += 1;
                }
            } else if y.epoch == c.epoch {
                self.m.claim_conflicts += 1;
            }
        }
        q.ranks[rank].push(ai);
        q.open.remove(&c.rank);
        q.retry.remove(&c.rank);
        q.orphans.remove(&c.rank);
        self.nodes[b as usize].running.push(ai);
        self.m.claims += 1;
        if self.nodes[b as usize].running.len() > self.nodes[b as usize].slots as usize {
            self.m
                .violation(format!("node {b} runs more than its slots"));
        }
        self.wrote(ai, self.sizes.sync_claim);
        self.push(end_t, Ev::End(ai));
        // Every other running attempt of the rank re-derives once it sees this
        // claim, and this one once it sees each write of the others.
        for x in others {
            let (y_node, y_claim, y_end) = {
                let y = &self.atts[x as usize];
                (y.node, y.claim_t, y.end_t)
            };
            if y_node == b {
                continue;
            }
            if self.running_here(x) {
                let at = self.write_visible_at(y_node, ai, false);
                if at != NEVER {
                    self.push(at, Ev::Check(x));
                }
            }
            for (t_w, end) in [(y_claim, false), (y_end, true)] {
                if t_w == NEVER {
                    continue;
                }
                let at = self.write_visible_at(b, x, end);
                if at != NEVER {
                    self.push(at, Ev::Check(ai));
                }
            }
        }
    }

    fn running_here(&self, a: u32) -> bool {
        let x = &self.atts[a as usize];
        x.end_t == NEVER && x.down_t == NEVER && self.nodes[x.node as usize].up
    }

    fn end(&mut self, a: u32) {
        if !self.running_here(a) {
            return;
        }
        let (q, r, b) = {
            let x = &self.atts[a as usize];
            (x.req, x.rank, x.node)
        };
        // The node must not write a second result it could already see.
        let seen_other = self
            .view_of(b, q, r, self.now)
            .iter()
            .any(|(i, v)| *i != a && v.state == AttemptState::Succeeded);
        if seen_other {
            self.m.violation(format!(
                "node {b} finished rank {r} though it saw its result"
            ));
        }
        self.finish_attempt(a, AttemptState::Succeeded);
    }

    /// Writes `a`'s terminal state, frees its slot, and tells the rank's other
    /// holders.
    fn finish_attempt(&mut self, a: u32, state: AttemptState) {
        let now = self.now;
        let (q, r, b, start) = {
            let x = &mut self.atts[a as usize];
            x.end_t = now;
            x.state = state;
            (x.req, x.rank, x.node, x.start_t)
        };
        let ran = now.saturating_sub(start);
        let backup = self.atts[a as usize].backup;
        let node = &mut self.nodes[b as usize];
        node.running.retain(|&x| x != a);
        node.last_run_ms.insert(q, ran);
        let req = &mut self.reqs[q as usize];
        match state {
            AttemptState::Succeeded => {
                node.runs_done += 1;
                node.races_lost = 0;
                req.durations.push(ran);
                if req.result[r as usize] == u32::MAX {
                    req.result[r as usize] = a;
                    self.m.useful_ms += ran;
                    self.m.backup_wins += u64::from(backup);
                    req.unfinished.remove(&r);
                    if req.unfinished.is_empty() {
                        req.done_t = now;
                    }
                } else {
                    // Two successes: the result rule (`derive_run`: first in
                    // (epoch, claim priority) order, not first in time) keeps
                    // one; the other was for nothing.
                    let old = req.result[r as usize];
                    let id = req.spec.id.clone();
                    let rank_of = |x: &Att, node: &NodeId| {
                        (
                            x.epoch,
                            pesc_protocol::run_view::claim_priority(&id, r, x.epoch, node),
                        )
                    };
                    let (o, n) = (&self.atts[old as usize], &self.atts[a as usize]);
                    let new_wins = rank_of(n, &self.nodes[n.node as usize].id)
                        < rank_of(o, &self.nodes[o.node as usize].id);
                    if new_wins {
                        let old_ran = o.end_t.saturating_sub(o.start_t);
                        if o.backup {
                            self.m.backup_lost_ms += old_ran;
                        }
                        self.reqs[q as usize].result[r as usize] = a;
                        self.m.useful_ms = self.m.useful_ms - old_ran.min(self.m.useful_ms) + ran;
                        self.m.duplicate_ms += old_ran;
                    } else {
                        if backup {
                            self.m.backup_lost_ms += ran;
                        }
                        self.m.duplicate_ms += ran;
                    }
                    self.m.double_results += 1;
                }
            }
            AttemptState::Yielded => self.m.duplicate_ms += ran,
            _ => self.m.lost_ms += ran,
        }
        if backup && !matches!(state, AttemptState::Succeeded) {
            self.m.backup_lost_ms += ran;
        }
        self.wrote(a, self.sizes.sync_end);
        self.reclassify(q, r);
        let others: Vec<u32> = self.reqs[q as usize].ranks[r as usize]
            .iter()
            .copied()
            .filter(|&x| x != a && self.running_here(x))
            .collect();
        for x in others {
            let y = self.atts[x as usize].node;
            let at = self.write_visible_at(y, a, true);
            if at != NEVER {
                self.push(at, Ev::Check(x));
            }
        }
        if self.reqs[q as usize].open.contains(&r) {
            self.wake_idle(now, b, a as u64 | END, q, r);
        }
        self.push(now, Ev::Wake(b));
        // After the wake: the node that just freed a slot may be the one
        // to copy a straggler.
        self.look_for_stragglers_at(q, now);
    }

    fn check(&mut self, a: u32) {
        if !self.running_here(a) {
            return;
        }
        if let Some(why) = self.should_stop(a) {
            self.m.abandoned(why);
            if why == pesc_protocol::run_view::Abandon::LostRace {
                // The node pauses before claiming again, as it does.
                let now = self.now;
                let n = &mut self.nodes[self.atts[a as usize].node as usize];
                n.races_lost += 1;
                let pause = race_backoff_ms(&n.id, n.races_lost, now);
                n.ready_t = n.ready_t.max(now + pause);
            }
            let state = match why {
                pesc_protocol::run_view::Abandon::Cancelled => AttemptState::Cancelled,
                _ => AttemptState::Yielded,
            };
            self.finish_attempt(a, state);
        }
    }

    /// Sorts a rank into open / orphaned / held, from the attempts as stored.
    fn reclassify(&mut self, q: u32, r: u32) {
        let req = &self.reqs[q as usize];
        if !req.unfinished.contains(&r) {
            let req = &mut self.reqs[q as usize];
            req.open.remove(&r);
            req.retry.remove(&r);
            req.orphans.remove(&r);
            return;
        }
        let mut any = false;
        let mut on_live_node = false;
        let mut went_off = 0;
        for &x in &req.ranks[r as usize] {
            let y = &self.atts[x as usize];
            // A backup copy never holds the rank (`run_view`): with its
            // holder gone the run is free again, and the copy stops once
            // another node claims it.
            if y.end_t == NEVER && !y.backup {
                any = true;
                if y.down_t == NEVER {
                    on_live_node = true;
                } else {
                    went_off = went_off.max(y.down_t);
                }
            }
        }
        let req = &mut self.reqs[q as usize];
        req.open.remove(&r);
        req.retry.remove(&r);
        req.orphans.remove(&r);
        if !any {
            req.open.insert(r);
            if !req.ranks[r as usize].is_empty() {
                req.retry.insert(r);
            }
        } else if !on_live_node {
            req.orphans.insert(r, went_off);
        }
    }

    fn down(&mut self, b: u32) {
        let n = &mut self.nodes[b as usize];
        if !n.up {
            return;
        }
        n.up = false;
        self.m.traffic.up -= 1;
        self.idle.remove(&b);
        let running = std::mem::take(&mut self.nodes[b as usize].running);
        let now = self.now;
        let mut held = Vec::with_capacity(running.len());
        let speed = self.nodes[b as usize].speed;
        for &a in &running {
            let x = &mut self.atts[a as usize];
            x.down_t = now;
            // The newest snapshot keeps the work up to it; the rest is lost.
            let ran = now.saturating_sub(x.start_t);
            let kept = self.sc.timing.kept_ms(ran);
            self.m.lost_ms += ran - kept;
            let (q, r) = (x.req, x.rank);
            let q_ = &mut self.reqs[q as usize];
            let saved = (x.base as f64 + kept as f64 * speed) as u32;
            let saved = saved.min(q_.work[r as usize].saturating_sub(1));
            let slot = &mut q_.saved[r as usize];
            *slot = (*slot).max(saved);
            held.push((q, r));
            self.reclassify(q, r);
        }
        self.nodes[b as usize].cut.extend(running);
        self.m.downs += 1;
        // A watcher declares it down; idle nodes look again once they heard.
        let (detected, watcher) = self.detect_down(b, now, None);
        if detected != NEVER {
            self.m
                .traffic
                .notice(&self.sc.net, detected, b, &self.nodes, self.sizes);
            // With nothing it held, the notice frees no run: no need to look.
            let idle: Vec<u32> = if held.is_empty() {
                Vec::new()
            } else {
                self.idle.iter().copied().collect()
            };
            for i in idle {
                let at = self.notice_reaches(detected, watcher, i);
                if at != NEVER {
                    // Its ring neighbours take its runs over first, then
                    // every other node in its turn for each run.
                    let wait = held
                        .iter()
                        .map(|&(q, r)| self.takeover_wait(b, i, q, r))
                        .min()
                        .unwrap_or(0);
                    self.push(at + wait + self.sc.timing.tick_ms, Ev::Wake(i));
                }
            }
        }
    }

    fn up(&mut self, b: u32) {
        let now = self.now;
        let t = self.sc.timing;
        let n = &mut self.nodes[b as usize];
        if n.up {
            return;
        }
        n.up = true;
        self.m.traffic.up += 1;
        n.ready_t = now + t.catchup_ms;
        // The node announces its start on gossip, as it does.
        for _ in 0..UP_ANNOUNCEMENTS {
            self.m
                .traffic
                .notice(&self.sc.net, now, b, &self.nodes, self.sizes);
        }
        // The restarted node records what it was running as lost.
        for a in std::mem::take(&mut self.nodes[b as usize].cut) {
            if self.atts[a as usize].end_t == NEVER {
                self.atts[a as usize].down_t = NEVER;
                self.finish_attempt_quiet(a);
            }
        }
        self.push(now + t.catchup_ms, Ev::Wake(b));
    }

    /// Records a crashed attempt as lost (its time was already counted).
    fn finish_attempt_quiet(&mut self, a: u32) {
        let now = self.now;
        let (q, r, b) = {
            let x = &mut self.atts[a as usize];
            x.end_t = now;
            x.state = AttemptState::Lost;
            (x.req, x.rank, x.node)
        };
        self.wrote(a, self.sizes.sync_end);
        self.reclassify(q, r);
        if self.reqs[q as usize].open.contains(&r) {
            self.wake_idle(now, b, a as u64 | END, q, r);
        }
    }

    fn sample(&mut self) {
        let hb = self.sc.timing.heartbeat_ms;
        self.m.sample(self.now, &self.nodes, &self.sc.net, hb);
        if self.sc.progress && self.now % (10 * 60_000) < self.sc.sample_ms {
            let done: usize = self.reqs.iter().map(|r| r.unfinished.len()).sum::<usize>();
            let (most, q, r) = self
                .reqs
                .iter()
                .enumerate()
                .flat_map(|(q, req)| {
                    req.ranks
                        .iter()
                        .enumerate()
                        .map(move |(r, a)| (a.len(), q, r))
                })
                .max()
                .unwrap_or((0, 0, 0));
            eprintln!(
                "{}: {:.0} min simulated, {:.1} s elapsed, {} events, {} attempts, {} runs unfinished, {} idle nodes, {most} attempts of request {q} rank {r}",
                self.sc.name,
                self.now as f64 / 60_000.0,
                self.started.elapsed().as_secs_f64(),
                self.events,
                self.atts.len(),
                done,
                self.idle.len()
            );
        }
    }

    /// Every invariant that must hold after any event.
    pub fn check_invariants(&mut self) {
        for (i, n) in self.nodes.iter().enumerate() {
            if n.running.len() > n.slots as usize {
                self.m.violation(format!(
                    "node {i} runs {} > {} slots",
                    n.running.len(),
                    n.slots
                ));
            }
            if !n.up && !n.running.is_empty() {
                self.m
                    .violation(format!("node {i} is off but runs attempts"));
            }
        }
        for (qi, q) in self.reqs.iter().enumerate() {
            for (r, &res) in q.result.iter().enumerate() {
                if res != u32::MAX && q.unfinished.contains(&(r as u32)) {
                    self.m.violation(format!(
                        "request {qi} rank {r} has a result but is unfinished"
                    ));
                }
            }
        }
    }
}
