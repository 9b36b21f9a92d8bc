//! Filling free slots: which queued runs this node claims, and when.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::claim_order::{
    Blocks, DEALT_GRACE_MS, LOAD_STEADY_BEATS, holder, load_delay_ms, past_dealt_grace, short_runs,
};
use crate::lease::LeaseKey;
use crate::liveness::{FAR_TAKEOVER_DELAY_MS, takeover_delay_ms};
use crate::model::{Attempt, RequestSpec, RunState, SharedFile};
use crate::schedule::{Candidate, INPUT_WAIT_MS, eligible, pick, waits_for_inputs};
use crate::{NodeId, RequestId};

use super::action::{Action, Job};
use super::running::Running;
use super::{AttemptKey, Node, Now};

/// What GPU memory is learned for: the program and the domain it runs in.
pub(super) fn usage_key(spec: &RequestSpec) -> String {
    let domain = spec.domain.as_ref().map_or("", |d| d.hash.as_str());
    format!("{}/{domain}", spec.process.id)
}

impl Node {
    /// Whether an attempt holds its rank: this node's while it runs here,
    /// another's while its holder is trusted.
    pub(super) fn is_live(&self, req: &RequestId, a: &Attempt, now: u64) -> bool {
        if a.node == self.cfg.node {
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

    /// Claims queued runs for the free slots (fair share between owners).
    ///
    /// Runs of a request whose runs are short (`claim_order::short_runs`)
    /// are also claimed ahead: once the last run claimed ahead has started,
    /// as many again as the node has slots, each started the moment a slot
    /// frees. A node running runs of a few milliseconds then claims once
    /// per few runs, not once per run: fewer urgent sync messages (see
    /// `Replication::urgent`), fewer scans, and no slot waits for a pass.
    pub(super) fn schedule(&mut self, at: Now) {
        if self.stopping.is_some() {
            return;
        }
        // Paused for the owner, or a grid document only a newer PESC reads:
        // what was claimed ahead or gathered goes back to the grid.
        if self.takes_no_runs() {
            self.release_ahead(at, NOT_STARTED_PAUSED);
            self.release_gathering(at, super::gangs::PAUSED_WHILE_GATHERING);
            return;
        }
        // A gang that gathers gets freed slots before runs claimed ahead.
        let gathering = self.schedule_gangs(at);
        if gathering {
            self.release_ahead(at, FOR_A_GANG);
        }
        self.start_ahead();
        let free = self.free_slots.len();
        let room = if self.ahead.is_empty() && !gathering {
            self.ahead_room()
        } else {
            0
        };
        let now = at.mono_ms;
        if free + room == 0 || now < self.claims_paused_until {
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
        let alone = self.repl.connected.is_empty();
        // When blocks left to their members for now open to this node, and
        // when a wait for less loaded nodes ends.
        let mut dealt_opens: Option<u64> = None;
        let mut load_waits: Option<u64> = None;
        for (id, req) in &self.requests {
            if req.doc.is_finished() {
                continue;
            }
            let spec = req.doc.spec();
            // Gangs are claimed apart (`schedule_gangs`).
            if spec.parallel || !eligible(spec, &self.caps) {
                continue;
            }
            let ahead = if claims_ahead(req.last_run_ms, spec) {
                room
            } else {
                0
            };
            if free + ahead == 0 {
                continue;
            }
            // Busier than a neighbour with room: a new request's runs go
            // there first.
            if !alone && self.cfg.load_order && self.load_over_beats >= LOAD_STEADY_BEATS {
                let wait = load_delay_ms(self.load, self.least_load);
                let until = req.seen_ms.saturating_add(wait);
                if now < until {
                    load_waits = Some(load_waits.map_or(until, |t: u64| t.min(until)));
                    continue;
                }
            }
            if !spec.inputs.is_empty() {
                let seen = *self.first_seen.entry(id.clone()).or_insert(now);
                if self.waits_for_inputs(&spec.inputs, now.saturating_sub(seen)) {
                    continue;
                }
            }
            // Alone, in rank order; with peers, each node from its own place,
            // block by block (see `claim_order`).
            let me = &self.cfg.node;
            let members = if alone {
                std::slice::from_ref(me)
            } else {
                &self.members_list[..]
            };
            let mut blocks = Blocks::new(me, id, spec.repetitions, members);
            blocks.short_runs = short_runs(req.last_run_ms);
            blocks.ahead = ahead;
            blocks.dealt_open = past_dealt_grace(now.saturating_sub(req.seen_ms));
            if !blocks.dealt_open {
                let at = req.seen_ms.saturating_add(DEALT_GRACE_MS);
                dealt_opens = Some(dealt_opens.map_or(at, |t| t.min(at)));
            }
            let len = blocks.len;
            let start = if alone { 0 } else { blocks.start() };
            let block_holder = |first: u32| {
                let end = first.saturating_add(len).min(spec.repetitions);
                holder(me, id, first..end, |r| {
                    Cow::Borrowed(req.doc.attempts_of(r))
                })
            };
            let queued = |rank| {
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
            };
            let found = blocks.first_queued(
                req.doc.tried_from(start),
                req.doc.fresh_from(start),
                free,
                queued,
                block_holder,
                |n| !self.liveness.is_down(n),
            );
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
        for at in dealt_opens.into_iter().chain(load_waits) {
            self.next_tick = self.next_tick.min(at);
        }
        self.misfit_now = None;
        for c in pick(cands, &in_progress, free + room) {
            self.claim(c, at.wall_ms);
        }
        // A slot nothing queued will fill: a straggler's backup copy.
        self.schedule_backups(at);
        self.idle = !self.free_slots.is_empty();
    }

    /// How many runs the node claims ahead at once.
    fn ahead_room(&self) -> usize {
        (self.cfg.slots as usize * AHEAD_PER_SLOT).max(AHEAD_LEAST)
    }

    /// Whether to leave a request's runs to nodes that hold its shared files
    /// for now (see `schedule::waits_for_inputs`). What this node holds is
    /// what the grid document says it holds: it records every whole copy.
    fn waits_for_inputs(&self, inputs: &[SharedFile], seen_for_ms: u64) -> bool {
        if seen_for_ms >= INPUT_WAIT_MS {
            return false;
        }
        let holders_of = |f: &SharedFile| -> BTreeSet<NodeId> {
            self.grid
                .holders(&f.hash)
                .unwrap_or_default()
                .into_iter()
                .collect()
        };
        let lacks = inputs
            .iter()
            .any(|f| !holders_of(f).contains(&self.cfg.node));
        let holder_alive = || {
            let mut holders: Option<BTreeSet<NodeId>> = None;
            for f in inputs {
                let h = holders_of(f);
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

    /// How long after a run is free to take this node waits when it is not
    /// a ring neighbour of its holder: its turn if it was idle already, the
    /// least delay for a slot that has just come free.
    pub(super) fn far_delay(&self, req: &RequestId, rank: u32) -> u64 {
        if self.idle {
            takeover_delay_ms(&self.cfg.node, req, rank, self.members_n)
        } else {
            FAR_TAKEOVER_DELAY_MS
        }
    }

    /// Takes a run: a GPU and a slot, the claim in the document, and a job
    /// for the driver.
    pub(super) fn claim(&mut self, c: Candidate, wall: u64) {
        self.claim_as(c, wall, false);
    }

    /// [`Node::claim`], of a backup copy when `backup` (`crate::backup`).
    pub(super) fn claim_as(&mut self, c: Candidate, wall: u64, backup: bool) {
        let room = self.ahead_room();
        let Some(req) = self.requests.get(&c.request) else {
            return;
        };
        let key: AttemptKey = (c.request.clone(), c.rank, c.epoch);
        // Never an epoch peers would skip, never an attempt of ours twice.
        let mine = crate::model::attempt_key(c.rank, c.epoch, &self.cfg.node);
        if c.epoch > crate::doc::request::MAX_EPOCH
            || self.running.contains_key(&key)
            || req.doc.attempts_of(c.rank).iter().any(|a| a.key() == mine)
        {
            return;
        }
        // Memory and CPU under the owner's limits (a gang's rank holds its
        // slot while the gang gathers; the gang's own check is its slots).
        let gang = req.doc.spec().parallel;
        let expected = self.expected(req.doc.spec());
        if !gang && let Some(why) = self.misfit(req.doc.spec()) {
            self.tell_misfit(&c.request, why);
            return;
        }
        let Some(req) = self.requests.get_mut(&c.request) else {
            return;
        };
        let need = &req.doc.spec().gpu;
        let gpus = if need.count > 0 {
            let peak = self.gpu_peaks.get(&usage_key(req.doc.spec())).copied();
            match self.gpu_pool.take(
                &self.gpus,
                need.count,
                need.min_capability,
                &key,
                peak,
                self.cfg.policy.gpu_percent_memory_limit,
            ) {
                Some(g) => g,
                // Not enough free devices now: another pass, or another node.
                None => return,
            }
        } else {
            Vec::new()
        };
        // A free slot, or a place among the runs claimed ahead (never a
        // gang's rank: it holds its slot while the gang gathers).
        let slot = self.free_slots.pop();
        if slot.is_none()
            && (gang || !(claims_ahead(req.last_run_ms, req.doc.spec()) && self.ahead.len() < room))
        {
            self.gpu_pool.give_back(&key);
            return;
        }
        let mut attempt = Attempt::claim(c.rank, c.epoch, self.cfg.node.clone(), wall);
        attempt.backup = backup;
        if let Err(e) = req.doc.put_attempt(&attempt) {
            tracing::error!("cannot record a claim: {e}");
            self.free_slots.extend(slot);
            self.gpu_pool.give_back(&key);
            return;
        }
        req.dirty = true;
        // Others must see it before they claim the same run.
        self.repl
            .urgent
            .insert(crate::wire::DocKey::Request(c.request.clone()));
        let spec = req.doc.spec();
        let inputs = spec
            .inputs
            .iter()
            .map(|f| (f.clone(), self.grid.holders(&f.hash).unwrap_or_default()))
            .collect();
        let restore = req
            .doc
            .latest_checkpoint(c.rank)
            .and_then(|a| Some((a.checkpoint?, a.checkpoint_holders.clone(), a.node.clone())));
        let job = Job {
            key: key.clone(),
            node: self.cfg.node.clone(),
            process: spec.process.clone(),
            world_size: spec.repetitions,
            parameters: spec.run_parameters(c.rank),
            env: spec.run_env(c.rank),
            slot: slot.unwrap_or_default(),
            inputs,
            restore,
            domain: spec.domain.clone(),
            limits: spec.limits,
            gpus,
            gang: None,
            header: spec.header,
            copies: self
                .cfg
                .replication
                .min(self.live_n.max(self.repl.connected.len() + 1))
                .saturating_sub(1),
        };
        let job = Box::new(job);
        let waiting = match slot {
            // Started once every rank has a claim (`start_gathered`).
            Some(_) if gang => Some(job),
            Some(_) => {
                self.actions.push_back(Action::Start(job));
                None
            }
            None => {
                self.ahead.push_back(key.clone());
                Some(job)
            }
        };
        self.running.insert(
            key,
            Running {
                attempt,
                slot,
                waiting,
                start_unwritten: None,
                owner: c.owner,
                stopping: None,
                unwritten: false,
                progress_written: None,
                expected,
                used: Default::default(),
                now_mb: 0,
            },
        );
    }
}

/// Runs claimed ahead per slot, and at least (see [`Node::schedule`]).
const AHEAD_PER_SLOT: usize = 2;
const AHEAD_LEAST: usize = 4;

/// Why a run claimed ahead went back unstarted while a gang gathers here.
const FOR_A_GANG: &str = "a parallel request gathers slots on this node; the run goes on elsewhere";

/// Why a run claimed ahead went back to the grid unstarted.
const NOT_STARTED_PAUSED: &str =
    "the node paused before a slot came free; the run goes on elsewhere";

/// Whether runs of a request are claimed ahead of free slots: short ones
/// (as this node last ran one), and never those that need GPUs (a device is
/// taken at the claim).
fn claims_ahead(last_run_ms: Option<u64>, spec: &RequestSpec) -> bool {
    short_runs(last_run_ms) && spec.gpu.count == 0
}
