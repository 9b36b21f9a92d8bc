//! Backup copies of stragglers in the fast engine. Every decision is the
//! protocol's (`pesc_protocol::backup`: whether a request is due, its
//! typical run, which straggler a node copies and when its turn comes);
//! what is modelled is when idle nodes look. A node looks every half
//! second; here they look when something can change the answer (a run of
//! the request ended: its tail, its median, a slot came free; a held run
//! crossed the straggler line; a node's turn came), at most every half
//! second. The median is taken again once the finished runs grew by a
//! hundredth (over 30 000 siblings it barely moves, and sorting them at
//! every look would be most of the simulation). A run's age
//! is counted from its claim (a node first sees it one sync hop later),
//! and a straggler's turns from the first look that found it one (each
//! node records that itself, from the same merge). One copy per rank, as
//! the node's "already copied" check gives once the first copy has reached
//! the others, turns being half a second apart.

use pesc_protocol::backup::{LOOK_EVERY_MS, Tail, choose, due, median, straggler_after};
use pesc_protocol::liveness::takeover_delay_ms;
use pesc_protocol::schedule::eligible;

use crate::engine::{Ev, NEVER, Sim};
use crate::view::Claim;

impl Sim {
    /// Queues a look at `q`'s stragglers at `t`, unless one comes sooner.
    pub(crate) fn look_for_stragglers_at(&mut self, q: u32, t: u64) {
        let req = &mut self.reqs[q as usize];
        if !req.spec.backups || req.done_t != NEVER {
            return;
        }
        let t = t.max(req.last_look.saturating_add(LOOK_EVERY_MS));
        if req.next_look <= t && req.next_look >= self.now {
            return;
        }
        req.next_look = t;
        self.push(t, Ev::Backups(q));
    }

    /// Every idle node looks at `q`'s runs now, as `Node::schedule_backups`
    /// does, and copies the straggler whose turn came to it.
    pub(crate) fn look_for_stragglers(&mut self, q: u32) {
        let now = self.now;
        let qi = q as usize;
        if self.reqs[qi].next_look == now {
            self.reqs[qi].next_look = NEVER;
        }
        self.reqs[qi].last_look = now;
        let req = &self.reqs[qi];
        if !req.spec.backups || req.done_t != NEVER || req.submit_t > now {
            return;
        }
        let tail = Tail {
            repetitions: req.spec.repetitions,
            unfinished: req.unfinished.len() as u32,
            queued: !req.open.is_empty(),
            backed_up: req.backed_up.len() as u32,
        };
        if !due(tail) {
            return;
        }
        let n = req.durations.len();
        let typical = match req.typical {
            Some((at, t)) if n <= at + at / 100 => t,
            _ => {
                let Some(t) = median(req.durations.clone()) else {
                    return;
                };
                self.reqs[qi].typical = Some((n, t));
                t
            }
        };
        let req = &self.reqs[qi];
        let line = straggler_after(typical);
        // Held runs not yet copied: (rank, age, holder, epoch); and when the
        // next one crosses the line.
        let mut held = Vec::new();
        let mut next = NEVER;
        for &r in &req.unfinished {
            if req.open.contains(&r) || req.backed_up.contains(&r) {
                continue;
            }
            let cur = req.ranks[r as usize]
                .iter()
                .map(|&a| (a, &self.atts[a as usize]))
                .filter(|(_, x)| x.end_t == NEVER && x.down_t == NEVER && !x.backup)
                .max_by_key(|(_, x)| x.epoch);
            let Some((_, x)) = cur else {
                continue;
            };
            let age = now.saturating_sub(x.claim_t);
            if age >= line {
                held.push((r, age, x.node, x.epoch));
            } else {
                next = next.min(x.claim_t + line);
            }
        }
        let budget = pesc_protocol::backup::budget(req.spec.repetitions) as usize;
        let idle: Vec<u32> = self.idle.iter().copied().collect();
        for b in idle {
            let n = &self.nodes[b as usize];
            let req = &self.reqs[qi];
            if !n.up
                || now < n.ready_t
                || n.running.len() >= n.slots as usize
                || !eligible(&req.spec, &n.caps)
            {
                continue;
            }
            if req.backed_up.len() >= budget {
                break;
            }
            let id = req.spec.id.clone();
            let members = self.nodes.len();
            let me = n.id.clone();
            let since = &mut self.reqs[qi].straggler_since;
            let choice = choose(
                now,
                typical,
                held.iter()
                    .filter(|h| h.2 != b)
                    .map(|&(r, age, _, _)| (r, age)),
                |r| *since.entry(r).or_insert(now),
                |r| takeover_delay_ms(&me, &id, r, members),
            );
            if let Some(t) = choice.next_turn {
                next = next.min(t);
            }
            let Some((rank, _)) = choice.copy else {
                continue;
            };
            let Some(i) = held.iter().position(|h| h.0 == rank) else {
                continue;
            };
            let (_, _, _, epoch) = held.swap_remove(i);
            self.reqs[qi].backed_up.insert(rank);
            self.m.backup_copies += 1;
            self.claim_as(
                b,
                Claim {
                    req: q,
                    rank,
                    epoch,
                },
                true,
            );
            let n = &self.nodes[b as usize];
            if n.running.len() >= n.slots as usize {
                self.idle.remove(&b);
            }
        }
        if next != NEVER {
            self.look_for_stragglers_at(q, next);
        }
    }
}
