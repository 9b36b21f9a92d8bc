//! Parallel requests on this node (see [`crate::gang`]): which gang's ranks
//! it claims, when a claimed rank starts, when it stops because its round
//! broke, and when it hands its slot back to an older gang.
//!
//! Every node serves the oldest gang that still gathers and that it can
//! help (creation time, then id: the same order everywhere), before any
//! other run. A rank claimed for a gang holds its slot without running until
//! every rank of the round has a standing claim; then each node starts its
//! ranks as soon as it sees that, with rank 0's node and port. Slots held for
//! a younger gang while an older one gathers are handed back after
//! [`GATHER_WAIT_MS`], so gangs that cannot run at once never wait on each
//! other forever: the older one always gathers.

use crate::gang::{GATHER_WAIT_MS, GangView, Phase, SETTLE_MS, local_rank, master_port};
use crate::model::{AttemptState, RequestSpec};
use crate::schedule::{Candidate, eligible, hash64};
use crate::{NodeId, RequestId};

use super::action::{Action, GangJob};
use super::{Node, Now};

/// Why a rank claimed for a gang went back unstarted because its node
/// paused (its owner came back, say).
pub(super) const PAUSED_WHILE_GATHERING: &str =
    "the node paused before the gang gathered; the gang gathers again elsewhere";

/// Why a rank claimed for a gang went back unstarted.
const HANDED_TO_OLDER: &str =
    "handed its slot to an older parallel request that was still gathering";

impl Node {
    /// Stops ranks of broken rounds, hands slots back to an older gang,
    /// claims ranks of the gang this node serves, and starts the ranks of
    /// gangs that have gathered. Runs before ordinary claims: a gathering
    /// gang gets a slot as soon as one frees.
    /// Whether this node serves a gang that still gathers (then it claims
    /// no runs ahead: its freed slots are the gang's).
    pub(super) fn schedule_gangs(&mut self, at: Now) -> bool {
        let order = self.gang_order();
        if order.is_empty() {
            return false;
        }
        for id in &order {
            self.abandon_lost(at, id);
        }
        let serve = order.iter().position(|id| self.may_serve(id, at.mono_ms));
        if let Some(i) = serve {
            self.hand_back_younger(at, &order[i + 1..]);
            if !self.takes_no_runs() && at.mono_ms >= self.claims_paused_until {
                self.claim_gang(at, &order[i]);
            }
        }
        self.start_gathered(at);
        serve.is_some()
    }

    /// Unfinished parallel requests this node may run, oldest first.
    fn gang_order(&self) -> Vec<RequestId> {
        let mut gangs: Vec<(u64, &RequestId)> = self
            .requests
            .iter()
            .filter(|(_, q)| {
                let spec = q.doc.spec();
                spec.parallel && !q.doc.is_finished() && eligible(spec, &self.caps)
            })
            .map(|(id, q)| (q.doc.spec().created_ms, id))
            .collect();
        gangs.sort();
        gangs.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// A request's gang as this node sees it now.
    fn gang_view<'a>(&'a self, id: &'a RequestId, now: u64) -> Option<GangView<'a>> {
        let q = self.requests.get(id)?;
        Some(q.doc.gang(|a| self.is_live(id, a, now)))
    }

    /// Whether this node can help gather a request's gang now: it gathers,
    /// the grid can hold it, and (on one node) this node holds its rank 0
    /// or could hold every rank.
    fn may_serve(&self, id: &RequestId, now: u64) -> bool {
        let Some(view) = self.gang_view(id, now) else {
            return false;
        };
        if !matches!(view.phase, Phase::Gathering | Phase::Broken) {
            return false;
        }
        let spec = self.requests[id].doc.spec();
        if !self.gang_fits(spec) {
            return false;
        }
        if !spec.same_node {
            return true;
        }
        match view.holders.first().copied().flatten() {
            Some(h) if view.phase == Phase::Gathering => h.node == self.cfg.node,
            _ => self.cfg.slots >= spec.repetitions,
        }
    }

    /// Whether the grid's live members have slots enough for the gang (on
    /// one of them, for a same-node request).
    pub(super) fn gang_fits(&self, spec: &RequestSpec) -> bool {
        // Every live member's slots, but those of a member this node knows
        // cannot take the runs (room, GPUs, isolation) or is paused; a
        // member it hears nothing from counts (its state is not known here).
        let statuses: std::collections::HashMap<&NodeId, _> = self.repl.live_statuses().collect();
        let slots: Vec<u32> = self
            .grid
            .nodes()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| {
                if n.id == self.cfg.node {
                    return eligible(spec, &self.caps) && !self.takes_no_runs();
                }
                if self.liveness.is_down(&n.id) {
                    return false;
                }
                statuses.get(&n.id).is_none_or(|s| {
                    let mut offer = s.offer();
                    offer.caps.min_isolation = self.caps.min_isolation;
                    !offer.paused && eligible(spec, &offer.caps)
                })
            })
            .map(|n| n.slots)
            .collect();
        if spec.same_node {
            slots.iter().any(|&s| s >= spec.repetitions)
        } else {
            slots.iter().map(|&s| u64::from(s)).sum::<u64>() >= u64::from(spec.repetitions)
        }
    }

    /// Claims queued ranks of the gang for this node's free slots: from a
    /// place of its own in rank order (nodes gathering at once rarely race
    /// for one rank); for a same-node gang, rank 0 first and the rest only
    /// on rank 0's node.
    fn claim_gang(&mut self, at: Now, id: &RequestId) {
        let free = self.free_slots.len();
        if free == 0 {
            return;
        }
        let now = at.mono_ms;
        let Some(view) = self.gang_view(id, now) else {
            return;
        };
        let spec = self.requests[id].doc.spec();
        let world = spec.repetitions;
        let queued: Vec<(u32, u32)> = (0..world)
            .map(|r| (r, view.run(r)))
            .filter(|(_, v)| v.state == crate::model::RunState::Queued)
            .map(|(r, v)| (r, v.next_epoch))
            .collect();
        let ranks: Vec<(u32, u32)> = if spec.same_node {
            let zero_here = view
                .holders
                .first()
                .copied()
                .flatten()
                .is_some_and(|h| h.node == self.cfg.node);
            // Rank 0 decides the node; the rest follow as its slots free
            // (taking rank 0 only with a slot free for every rank starved
            // same-node gangs on nodes busy with ordinary runs, and the
            // younger gangs they held back were handed back round after
            // round: simulated `gangs`, seed 2, 59 → 212 rounds restarted).
            let zero_queued = queued.first().is_some_and(|(r, _)| *r == 0);
            if zero_here || zero_queued {
                queued.into_iter().take(free).collect()
            } else {
                Vec::new()
            }
        } else {
            let start = (hash64(&format!("{}/{id}", self.cfg.node)) % u64::from(world)) as u32;
            let mut q = queued;
            q.sort_by_key(|(r, _)| (r + world - start) % world);
            q.into_iter().take(free).collect()
        };
        let (owner, created_ms) = (spec.owner.clone(), spec.created_ms);
        for (rank, epoch) in ranks {
            self.claim(
                Candidate {
                    request: id.clone(),
                    owner: owner.clone(),
                    created_ms,
                    rank,
                    epoch,
                },
                at.wall_ms,
            );
        }
    }

    /// Hands back the slots this node holds for `younger` gangs still
    /// gathering, once held for [`GATHER_WAIT_MS`].
    fn hand_back_younger(&mut self, at: Now, younger: &[RequestId]) {
        // Only gangs that still gather: one that has gathered starts now.
        let gathering: Vec<&RequestId> = younger
            .iter()
            .filter(|id| {
                self.gang_view(id, at.mono_ms)
                    .is_some_and(|v| v.phase == Phase::Gathering)
            })
            .collect();
        let stale: Vec<_> = self
            .running
            .iter()
            .filter(|(k, r)| {
                gathering.contains(&&k.0)
                    && r.waiting.is_some()
                    && r.stopping.is_none()
                    && at.wall_ms.saturating_sub(r.attempt.claimed_ms) >= GATHER_WAIT_MS
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            tracing::info!(request = %k.0, rank = k.1, "{HANDED_TO_OLDER}");
            self.stop_attempt(at, &k, (AttemptState::Yielded, HANDED_TO_OLDER.into()));
        }
    }

    /// Hands back every gang rank this node holds unstarted (it pauses or
    /// stops): the round gathers again elsewhere instead of waiting for it.
    pub(super) fn release_gathering(&mut self, now: Now, why: &str) {
        let waiting: Vec<_> = self
            .running
            .iter()
            .filter(|(_, r)| r.waiting.is_some() && r.slot.is_some() && r.stopping.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for k in waiting {
            self.stop_attempt(now, &k, (AttemptState::Yielded, why.to_string()));
        }
    }

    /// Starts this node's ranks of every gang that has gathered: each with
    /// rank 0's node and the round's port.
    fn start_gathered(&mut self, at: Now) {
        let mut go: Vec<(super::AttemptKey, GangJob)> = Vec::new();
        let mut gathered_at = std::mem::take(&mut self.gathered_at);
        let mut wake = None;
        // Each gang derived once per pass, however many of its ranks wait.
        let mut views: std::collections::HashMap<&RequestId, Option<GangView>> =
            std::collections::HashMap::new();
        for (k, r) in &self.running {
            if r.waiting.is_none() || r.slot.is_none() || r.stopping.is_some() {
                continue;
            }
            if !self
                .requests
                .get(&k.0)
                .is_some_and(|q| q.doc.spec().parallel)
            {
                continue;
            }
            let Some(view) = views
                .entry(&k.0)
                .or_insert_with(|| self.gang_view(&k.0, at.mono_ms))
                .as_ref()
            else {
                continue;
            };
            if view.phase != Phase::Gathered {
                continue;
            }
            // Claims made at the same moment elsewhere arrive first.
            let seen = *gathered_at
                .entry((k.0.clone(), view.round))
                .or_insert(at.mono_ms);
            if at.mono_ms < seen + SETTLE_MS {
                wake = Some(wake.map_or(seen + SETTLE_MS, |w: u64| w.min(seen + SETTLE_MS)));
                continue;
            }
            let mine = view.holders.get(k.1 as usize).copied().flatten();
            let Some(zero) = view.holders.first().copied().flatten() else {
                continue;
            };
            if mine.is_none_or(|m| m.key() != r.attempt.key()) {
                continue;
            }
            let (local_rank, local_world_size) = local_rank(view, k.1);
            go.push((
                k.clone(),
                GangJob {
                    master: zero.node.clone(),
                    port: master_port(&k.0, view.round),
                    local_rank,
                    local_world_size,
                },
            ));
        }
        // Rounds no rank of which waits here any more are forgotten.
        gathered_at.retain(|(id, _), _| {
            self.running
                .iter()
                .any(|(k, r)| &k.0 == id && r.waiting.is_some())
        });
        self.gathered_at = gathered_at;
        if let Some(w) = wake {
            self.next_tick = self.next_tick.min(w);
        }
        for (k, gang) in go {
            let Some(r) = self.running.get_mut(&k) else {
                continue;
            };
            let Some(mut job) = r.waiting.take() else {
                continue;
            };
            job.gang = Some(gang);
            self.actions.push_back(Action::Start(job));
        }
    }

    /// What the request page says of a parallel request's gang.
    pub(super) fn gang_state(&self, id: &RequestId, now: u64) -> Option<String> {
        let q = self.requests.get(id)?;
        if !q.doc.spec().parallel {
            return None;
        }
        let view = self.gang_view(id, now)?;
        let names = self.grid.nodes().unwrap_or_default();
        let name = |n: &NodeId| {
            names
                .iter()
                .find(|r| &r.id == n)
                .map_or_else(|| n.to_string(), |r| r.name.clone())
        };
        let mut s = view.describe(q.doc.spec().repetitions, name);
        if matches!(view.phase, Phase::Gathering | Phase::Broken) && !self.gang_fits(q.doc.spec()) {
            s = if q.doc.spec().same_node {
                format!(
                    "no node of the grid has {} slots for every rank on one node",
                    q.doc.spec().repetitions
                )
            } else {
                format!(
                    "the grid's nodes have fewer than {} slots in all",
                    q.doc.spec().repetitions
                )
            };
        }
        Some(s)
    }
}
