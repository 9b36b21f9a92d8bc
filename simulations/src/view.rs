//! What one node sees: its replica of a rank's attempts (derived from the
//! shared store and the times writes reached it), its lease judgements (a
//! lease holds until a Down notice about its holder reached the node, and
//! the node's turn (`takeover_delay_ms`) more on a node that did not watch it, as in
//! `protocol::liveness`), and its scheduling decisions (the protocol's own
//! scan, `derive_run` and `pick`).

use std::collections::BTreeMap;

use pesc_protocol::NodeId;
use pesc_protocol::claim_order::{Blocks, DEALT_GRACE_MS, holder, past_dealt_grace, short_runs};
use pesc_protocol::model::{Attempt, AttemptState, RunState};
use pesc_protocol::run_view::{Abandon, RunPolicy, derive_run, should_abandon};
use pesc_protocol::schedule::{Candidate, eligible, pick, scan_position};
use std::borrow::Cow;

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
        let hop = net.hop_ms(from, to, salt, self.sizes.sync_claim, self.nodes.len())
            * f64::from(self.overlay.hops(from, to));
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
            a.backup = x.backup;
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

    /// When a watcher of `a` declares it down, its pongs having stopped at
    /// `from_t` (it went off, or a partition began), and which watcher.
    /// With `near`: only watchers on `near`'s side of any partition count.
    /// Each watcher pings once per heartbeat period (at its own phase) and
    /// judges at its next tick a TTL after the last pong. With no watcher
    /// up, the ring closes over them: one more TTL (`u32::MAX` as watcher).
    pub fn detect_down(&self, a: u32, from_t: u64, near: Option<u32>) -> (u64, u32) {
        let tm = self.sc.timing;
        let hb = tm.heartbeat_ms;
        let net = &self.sc.net;
        let rtt = (2.0 * net.latency_ms).ceil() as u64 + 1;
        let mut best = (NEVER, u32::MAX);
        for &w in &self.overlay.watchers[a as usize] {
            let avail = &self.sc.nodes[w as usize].avail;
            if !avail.is_up(from_t)
                || near.is_some_and(|b| net.separated_until(w, b, from_t).is_some())
            {
                continue;
            }
            let phase = self.nodes[w as usize].hb_phase;
            let last_pong = if from_t >= phase + rtt {
                phase + (from_t - phase - rtt) / hb * hb + rtt
            } else {
                0
            };
            let due = last_pong + tm.lease_ttl_ms;
            let t = phase + due.saturating_sub(phase).div_ceil(hb) * hb;
            if avail.is_up(t) && t < best.0 {
                best = (t, w);
            }
        }
        if best.0 == NEVER {
            best = (from_t + 2 * tm.lease_ttl_ms, u32::MAX);
        }
        best
    }

    /// When a notice `w` published at `t` reaches `b` on gossip (`NEVER`: it
    /// does not: another side of a partition, or `b` off meanwhile).
    pub fn notice_reaches(&self, t: u64, w: u32, b: u32) -> u64 {
        if w == b {
            return t;
        }
        let net = &self.sc.net;
        if w != u32::MAX && net.separated_until(w, b, t).is_some() {
            return NEVER;
        }
        let hops = NetModel::gossip_hops(self.nodes.len()) as f64;
        let d = hops * (net.latency_ms + net.jitter_ms * hash01(net.seed, w as u64, b as u64, t));
        let at = t + d.ceil() as u64;
        let avail = &self.sc.nodes[b as usize].avail;
        if !avail.is_up(t) || avail.back_after_off_between(t, at).is_some() {
            return NEVER;
        }
        at
    }

    /// Whether `b` trusts `ai`'s lease at `t` (`Liveness::trusts`): yes
    /// unless a Down notice about its holder reached `b` and the holder's Up
    /// has not yet; a claim `b` first saw after the notice holds one TTL.
    fn lease_live(&self, b: u32, ai: u32, t: u64) -> bool {
        let x = &self.atts[ai as usize];
        let a = x.node;
        if a == b {
            return x.end_t == NEVER;
        }
        let tm = self.sc.timing;
        let seen = self.write_visible_at(b, ai, false);
        // Claims seen before the notice: a watcher of the holder drops them
        // at once, every other node in its turn.
        let dropped = |known: u64, back: u64| {
            known <= t
                && t < back
                && if seen > known {
                    t - seen >= tm.lease_ttl_ms
                } else {
                    let turn = known.saturating_add(self.takeover_wait(a, b, x.req, x.rank));
                    if t < turn {
                        self.turn_at(turn);
                    }
                    t >= turn
                }
        };
        let held_at = |from: u64| x.end_t == NEVER || x.end_t > from;
        // The holder went off after claiming it, while holding it.
        if let Some(&(d, u)) = self.sc.nodes[a as usize]
            .avail
            .off
            .iter()
            .find(|&&(d, _)| d >= x.claim_t)
            && d <= t
            && held_at(d)
        {
            let (det, w) = self.detect_down(a, d, None);
            let known = if det == NEVER {
                NEVER
            } else {
                self.notice_reaches(det, w, b)
            };
            let back = if u == NEVER {
                NEVER
            } else {
                self.notice_reaches(u + tm.catchup_ms, a, b)
            };
            if dropped(known, back) {
                return false;
            }
        }
        // A partition cut the holder off from `b`: `b`'s side declares it
        // down; after the heal a ping tells it, and its Up refutes.
        for p in &self.sc.net.partitions {
            if p.side[a as usize] == p.side[b as usize] || p.start_ms > t || !held_at(p.start_ms) {
                continue;
            }
            let (det, w) = self.detect_down(a, p.start_ms, Some(b));
            let known = self.notice_reaches(det, w, b);
            let back = self.notice_reaches(p.end_ms + tm.heartbeat_ms, a, b);
            if dropped(known, back) {
                return false;
            }
        }
        true
    }

    /// The epoch `b` would claim `rank` in at `t`, if it sees it queued.
    fn queued_in_view(&self, b: u32, q: u32, rank: u32, t: u64) -> Option<u32> {
        let view = self.view_of(b, q, rank, t);
        let live: Vec<bool> = view
            .iter()
            .map(|(ai, a)| !a.state.is_terminal() && self.lease_live(b, *ai, t))
            .collect();
        let attempts: Vec<Attempt> = view.iter().map(|(_, a)| a.clone()).collect();
        let req = &self.reqs[q as usize];
        let policy = RunPolicy {
            retries: req.spec.retries,
            checkpoint_retries: req.spec.checkpoint_retries,
            cancelled: false,
        };
        // derive_run hands back references into `attempts`: find each by address.
        let at = |a: &Attempt| attempts.iter().position(|x| std::ptr::eq(x, a));
        let v = derive_run(&req.spec.id, &attempts, policy, |a| {
            at(a).is_some_and(|i| live[i])
        });
        if v.state != RunState::Queued {
            return None;
        }
        // `Liveness::may_take`: a run back in the queue goes to its last
        // holder and the holder's ring neighbours first; a holder that went
        // down was ordered by `lease_live`.
        let Some(i) = v.current.and_then(at) else {
            return Some(v.next_epoch);
        };
        if !view[i].1.state.is_terminal() {
            return Some(v.next_epoch);
        }
        let wait = self.takeover_wait(self.atts[view[i].0 as usize].node, b, q, rank);
        if wait == 0 {
            return Some(v.next_epoch);
        }
        let since = view
            .iter()
            .filter(|(_, a)| a.state.is_terminal())
            .map(|&(ai, _)| self.write_visible_at(b, ai, true))
            .max()
            .unwrap_or(t);
        let turn = since.saturating_add(wait);
        if t < turn {
            self.turn_at(turn);
        }
        (t >= turn).then_some(v.next_epoch)
    }

    /// What `b` claims for `free` slots now: the node's own scan and fair share.
    pub fn choose(&mut self, b: u32, free: usize) -> Vec<Claim> {
        let now = self.now;
        let ttl = self.sc.timing.lease_ttl_ms;
        let mut in_progress: BTreeMap<String, u32> = BTreeMap::new();
        for &a in &self.nodes[b as usize].running {
            let owner = &self.reqs[self.atts[a as usize].req as usize].spec.owner;
            *in_progress.entry(owner.clone()).or_default() += 1;
        }
        let partitioned = self.sc.net.partitioned_at(now);
        let lease_quiet = ttl.saturating_sub(self.sc.timing.heartbeat_ms);
        let mut cands = Vec::new();
        // Alone, a node scans in rank order (as `Node::schedule` does).
        let alone = self.nodes.iter().filter(|n| n.up).take(2).count() <= 1;
        for (qi, q) in self.reqs.iter().enumerate() {
            let qi = qi as u32;
            if q.submit_t > now || !eligible(&q.spec, &self.nodes[b as usize].caps) {
                continue;
            }
            let seen = self.visible_at(q.submit_t, q.node, b, u64::from(qi) << 40);
            if seen > now {
                continue;
            }
            let reps = q.spec.repetitions;
            let me = &self.nodes[b as usize].id;
            let members = if alone {
                std::slice::from_ref(me)
            } else {
                &self.ids[..]
            };
            let mut blocks = Blocks::new(me, &q.spec.id, reps, members);
            blocks.short_runs = short_runs(self.nodes[b as usize].last_run_ms.get(&qi).copied());
            blocks.dealt_open = past_dealt_grace(now - seen);
            if !blocks.dealt_open {
                self.turn_at(seen + DEALT_GRACE_MS);
            }
            let len = blocks.len;
            let start = if alone { 0 } else { blocks.start() };
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
            let block_holder = |first: u32| {
                let end = first.saturating_add(len).min(reps);
                holder(me, &q.spec.id, first..end, |r| {
                    Cow::Owned(
                        self.view_of(b, qi, r, now)
                            .into_iter()
                            .map(|(_, a)| a)
                            .collect(),
                    )
                })
            };
            let found = blocks.first_queued(
                tried,
                untried,
                free,
                |rank| self.queued_in_view(b, qi, rank, now),
                block_holder,
                // Whether b has declared a node down: approximated by
                // whether it is on.
                |n: &NodeId| {
                    self.index_of
                        .get(n)
                        .is_some_and(|&i| self.nodes[i as usize].up)
                },
            );
            cands.extend(found.into_iter().map(|(rank, epoch)| Candidate {
                request: q.spec.id.clone(),
                owner: q.spec.owner.clone(),
                created_ms: q.spec.created_ms,
                rank,
                epoch,
            }));
        }
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
