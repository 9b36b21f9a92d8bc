//! What one node sees: its replica of a rank's attempts (derived from the
//! shared store and the times writes reached it), its lease judgements (the
//! protocol's `LeaseTracker`, fed the heartbeats that reached it), and its
//! scheduling decisions (the protocol's own scan, `derive_run` and `pick`).

use std::collections::BTreeMap;

use pesc_protocol::lease::{LeaseKey, LeaseTracker};
use pesc_protocol::model::{Attempt, AttemptState, RunState};
use pesc_protocol::run_view::{Abandon, RunPolicy, derive_run, should_abandon};
use pesc_protocol::schedule::{Candidate, eligible, first_queued, pick, scan_position, scan_start};

use crate::engine::{NEVER, Sim};
use crate::net::NetModel;
use crate::rng::hash01;

/// A run a node decided to claim.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    pub req: u32,
    pub rank: u32,
    pub epoch: u32,
}

/// Salt that tells an attempt's end write from its claim write.
pub const END: u64 = 1 << 62;

impl Sim {
    /// When a write made at `t_w` by `from` is in `to`'s replica (`NEVER`:
    /// `to` is off for good).
    pub fn visible_at(&self, t_w: u64, from: u32, to: u32, salt: u64) -> u64 {
        if from == to {
            return t_w;
        }
        let net = &self.sc.net;
        let hop = net.hop_ms(from, to, salt, self.sizes.sync_claim, self.nodes.len());
        let mut t = t_w as f64 + hop;
        if let Some(heal) = net.separated_until(from, to, t_w) {
            t = heal as f64 + hop;
        }
        let arrive = t.ceil() as u64;
        match self.sc.nodes[to as usize]
            .avail
            .back_after_off_between(t_w, arrive)
        {
            // Off when it came: the node gets it when it syncs after restarting.
            Some(NEVER) => NEVER,
            Some(up) => up + self.sc.timing.catchup_ms,
            None => arrive,
        }
    }

    /// When attempt `ai`'s claim (or, with `end`, its terminal state) is in
    /// `b`'s replica. Automerge delivers changes causally: a write cannot
    /// arrive before the writes of the same rank its writer had merged when
    /// it wrote (a yield never arrives before the claim that caused it).
    pub fn write_visible_at(&self, b: u32, ai: u32, end: bool) -> u64 {
        let x = &self.atts[ai as usize];
        let (t_w, salt) = if end {
            (x.end_t, ai as u64 | END)
        } else {
            (x.claim_t, ai as u64)
        };
        if t_w == NEVER {
            return NEVER;
        }
        let mut at = self.visible_at(t_w, x.node, b, salt);
        if x.node == b {
            return at;
        }
        if end {
            at = at.max(self.visible_at(x.claim_t, x.node, b, ai as u64));
        }
        for &yi in &self.reqs[x.req as usize].ranks[x.rank as usize] {
            if yi == ai {
                continue;
            }
            let y = &self.atts[yi as usize];
            for (t_y, s_y) in [(y.claim_t, yi as u64), (y.end_t, yi as u64 | END)] {
                if t_y == NEVER || t_y > t_w {
                    continue;
                }
                // The writer had merged it before writing: it travels first.
                if y.node == x.node || self.visible_at(t_y, y.node, x.node, s_y) <= t_w {
                    at = at.max(self.visible_at(t_y, y.node, b, s_y));
                }
            }
        }
        at
    }

    /// Node `b`'s replica of one rank at `t`: (attempt index, attempt).
    pub fn view_of(&self, b: u32, q: u32, r: u32, t: u64) -> Vec<(u32, Attempt)> {
        let req = &self.reqs[q as usize];
        let mut out = Vec::with_capacity(req.ranks[r as usize].len());
        for &ai in &req.ranks[r as usize] {
            let x = &self.atts[ai as usize];
            let state = if x.node == b {
                if x.end_t != NEVER {
                    x.state
                } else {
                    AttemptState::Running
                }
            } else if x.end_t != NEVER && self.write_visible_at(b, ai, true) <= t {
                x.state
            } else if self.write_visible_at(b, ai, false) <= t {
                AttemptState::Running
            } else {
                continue;
            };
            let mut a = Attempt::claim(
                x.rank,
                x.epoch,
                self.nodes[x.node as usize].id.clone(),
                x.claim_t,
            );
            a.state = state;
            a.started_ms = Some(x.start_t);
            out.push((ai, a));
        }
        out
    }

    /// Whether `b`'s replica holds any attempt of this rank.
    fn sees_any(&self, b: u32, q: u32, r: u32, t: u64) -> bool {
        self.reqs[q as usize].ranks[r as usize].iter().any(|&ai| {
            let x = &self.atts[ai as usize];
            x.node == b || self.write_visible_at(b, ai, false) <= t
        })
    }

    /// The last heartbeat of `ai`'s holder listing it that reached `b` by `t`,
    /// as `b`'s receive time.
    fn last_heartbeat(&self, ai: u32, b: u32, t: u64) -> Option<u64> {
        let x = &self.atts[ai as usize];
        let a = x.node;
        let hb = self.sc.timing.heartbeat_ms;
        let phase = self.nodes[a as usize].hb_phase;
        let held_until = x.end_t.min(x.down_t).min(t + 1);
        let net = &self.sc.net;
        let hops = NetModel::gossip_hops(self.nodes.len()) as f64;
        let last = held_until.saturating_sub(1);
        if last < phase {
            return None;
        }
        let mut k = (last - phase) / hb;
        for _ in 0..16 {
            let sent = phase + k * hb;
            if sent < x.claim_t {
                return None;
            }
            let d = hops
                * (net.latency_ms + net.jitter_ms * hash01(net.seed, a as u64, b as u64, sent));
            let got = sent + d.ceil() as u64;
            let reached = got <= t
                && net.separated_until(a, b, sent).is_none()
                && self.sc.nodes[b as usize]
                    .avail
                    .back_after_off_between(sent, got)
                    .is_none();
            if reached {
                return Some(got);
            }
            if k == 0 {
                return None;
            }
            k -= 1;
        }
        None
    }

    /// Whether `b` judges `ai`'s lease alive at `t`, by the protocol's tracker.
    fn lease_live(&self, leases: &mut LeaseTracker, b: u32, ai: u32, t: u64) -> bool {
        let x = &self.atts[ai as usize];
        if x.node == b {
            return x.end_t == NEVER;
        }
        let key = LeaseKey {
            request: self.reqs[x.req as usize].spec.id.clone(),
            rank: x.rank,
            epoch: x.epoch,
            node: self.nodes[x.node as usize].id.clone(),
        };
        let seen = self.write_visible_at(b, ai, false).min(t);
        leases.observe(key.clone(), seen);
        if let Some(h) = self.last_heartbeat(ai, b, t) {
            leases.heartbeat(key.clone(), h);
        }
        let live = leases.is_live(&key, t);
        // Both inputs are recomputed on every call: keeping the entry would
        // only cost memory (10 000 trackers).
        leases.forget(&key);
        live
    }

    /// The epoch `b` would claim `rank` in at `t`, if it sees it queued.
    fn queued_in_view(
        &self,
        leases: &mut LeaseTracker,
        b: u32,
        q: u32,
        rank: u32,
        t: u64,
    ) -> Option<u32> {
        let view = self.view_of(b, q, rank, t);
        let live: Vec<bool> = view
            .iter()
            .map(|(ai, a)| !a.state.is_terminal() && self.lease_live(leases, b, *ai, t))
            .collect();
        let attempts: Vec<Attempt> = view.into_iter().map(|(_, a)| a).collect();
        let req = &self.reqs[q as usize];
        let policy = RunPolicy {
            retries: req.spec.retries,
            cancelled: false,
        };
        // derive_run hands back references into `attempts`: find each by address.
        let v = derive_run(&req.spec.id, &attempts, policy, |a| {
            attempts
                .iter()
                .position(|x| std::ptr::eq(x, a))
                .is_some_and(|i| live[i])
        });
        (v.state == RunState::Queued).then_some(v.next_epoch)
    }

    /// What `b` claims for `free` slots now: the node's own scan and fair share.
    pub fn choose(&mut self, b: u32, free: usize) -> Vec<Claim> {
        let now = self.now;
        let ttl = self.sc.timing.lease_ttl_ms;
        let mut leases =
            std::mem::replace(&mut self.nodes[b as usize].leases, LeaseTracker::new(ttl));
        let mut in_progress: BTreeMap<String, u32> = BTreeMap::new();
        for &a in &self.nodes[b as usize].running {
            let owner = &self.reqs[self.atts[a as usize].req as usize].spec.owner;
            *in_progress.entry(owner.clone()).or_default() += 1;
        }
        let partitioned = self.sc.net.partitioned_at(now);
        let lease_quiet = ttl.saturating_sub(self.sc.timing.heartbeat_ms);
        let mut cands = Vec::new();
        for (qi, q) in self.reqs.iter().enumerate() {
            let qi = qi as u32;
            if q.submit_t > now
                || self.visible_at(q.submit_t, q.node, b, u64::from(qi) << 40) > now
                || !eligible(&q.spec, &self.nodes[b as usize].caps)
            {
                continue;
            }
            let reps = q.spec.repetitions;
            let start = scan_start(&self.nodes[b as usize].id, &q.spec.id, reps);
            // The node's scan (`RequestDoc::scan_from`): ranks tried before
            // first, then the others, each from `b`'s own starting point. Of
            // the tried ones, only these can look queued to `b`: open ones to
            // retry, writes `b` has not seen yet, holders off or out of reach.
            let mut tried: Vec<u32> = q
                .retry
                .iter()
                .chain(q.fresh.keys())
                // A holder that went off less than a TTL ago (minus the heartbeat
                // it may have sent just before) is alive to everyone still.
                .chain(
                    q.orphans
                        .iter()
                        .filter(|&(_, &off)| off + lease_quiet <= now)
                        .map(|(r, _)| r),
                )
                .copied()
                .collect();
            if partitioned {
                for (ni, n) in self.nodes.iter().enumerate() {
                    if n.up && self.sc.net.separated_until(ni as u32, b, now).is_some() {
                        tried.extend(
                            n.running
                                .iter()
                                .map(|&a| &self.atts[a as usize])
                                .filter(|x| x.req == qi)
                                .map(|x| x.rank),
                        );
                    }
                }
            }
            tried.sort_unstable_by_key(|&r| scan_position(r, start, reps));
            tried.dedup();
            // What `b` has not seen any attempt of is untried in its replica.
            let (tried, unseen): (Vec<u32>, Vec<u32>) = tried
                .into_iter()
                .partition(|&r| self.sees_any(b, qi, r, now));
            let untried = q
                .open
                .range(start..)
                .chain(q.open.range(..start))
                .copied()
                .filter(|r| !q.retry.contains(r));
            let untried = Merge {
                a: untried.peekable(),
                b: unseen.into_iter().peekable(),
                start,
                reps,
            };
            let ranks = tried.into_iter().chain(untried);
            let found = first_queued(ranks, free, |rank| {
                self.queued_in_view(&mut leases, b, qi, rank, now)
            });
            cands.extend(found.into_iter().map(|(rank, epoch)| Candidate {
                request: q.spec.id.clone(),
                owner: q.spec.owner.clone(),
                created_ms: q.spec.created_ms,
                rank,
                epoch,
            }));
        }
        self.nodes[b as usize].leases = leases;
        pick(cands, &in_progress, free)
            .into_iter()
            .filter_map(|c| {
                let req = self.reqs.iter().position(|q| q.spec.id == c.request)? as u32;
                Some(Claim {
                    req,
                    rank: c.rank,
                    epoch: c.epoch,
                })
            })
            .collect()
    }

    /// Whether the holder of `a` stops it, judging from its replica now.
    pub fn should_stop(&self, a: u32) -> Option<Abandon> {
        let x = &self.atts[a as usize];
        let view = self.view_of(x.node, x.req, x.rank, self.now);
        let mine = view.iter().find(|(i, _)| *i == a)?.1.clone();
        let attempts: Vec<Attempt> = view.into_iter().map(|(_, a)| a).collect();
        should_abandon(&self.reqs[x.req as usize].spec.id, &mine, &attempts, false)
    }
}

/// Two rank streams, each in scan order, merged without repeats.
struct Merge<A: Iterator<Item = u32>, B: Iterator<Item = u32>> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
    start: u32,
    reps: u32,
}

impl<A: Iterator<Item = u32>, B: Iterator<Item = u32>> Iterator for Merge<A, B> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        let pos = |r: &u32| scan_position(*r, self.start, self.reps);
        match (self.a.peek().map(pos), self.b.peek().map(pos)) {
            (Some(x), Some(y)) if x == y => {
                self.b.next();
                self.a.next()
            }
            (Some(x), Some(y)) if x < y => self.a.next(),
            (Some(_), Some(_)) => self.b.next(),
            (Some(_), None) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}
