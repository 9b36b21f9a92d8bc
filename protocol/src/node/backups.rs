//! Backup copies of stragglers (rules in `crate::backup`): a node whose
//! slot would stay idle starts a second copy of a request's slowest last
//! run.

use crate::backup::{LOOK_EVERY_MS, Tail, choose, due, median};
use crate::lease::LeaseKey;
use crate::liveness::takeover_delay_ms;
use crate::model::{AttemptState, RunState};
use crate::schedule::{Candidate, eligible};

use super::{Node, Now};

/// Stragglers whose first sighting is kept, at most (then forgotten).
const MAX_STRAGGLERS_KEPT: usize = 10_000;

impl Node {
    /// With a free slot and nothing queued to claim: a backup copy of the
    /// straggler that has been held longest, if a request has one.
    pub(super) fn schedule_backups(&mut self, at: Now) {
        let now = at.mono_ms;
        if self.free_slots.is_empty() || now < self.next_backup_look || self.takes_no_runs() {
            return;
        }
        // A copy on a node busier than its neighbours would straggle too.
        if self.load_over_beats >= crate::claim_order::LOAD_STEADY_BEATS {
            return;
        }
        self.next_backup_look = now + LOOK_EVERY_MS;
        let mut best: Option<(u64, Candidate)> = None;
        let mut stragglers = std::mem::take(&mut self.stragglers);
        if stragglers.len() > MAX_STRAGGLERS_KEPT {
            stragglers.clear();
        }
        for (id, q) in &self.requests {
            let spec = q.doc.spec();
            if q.doc.is_finished()
                || !spec.backups
                || spec.parallel
                || !eligible(spec, &self.caps)
                || q.doc.fresh_from(0).next().is_some()
            {
                continue;
            }
            let views = q.doc.runs(|a| self.is_live(id, a, now));
            let unfinished = views
                .iter()
                .filter(|v| v.state != RunState::Succeeded)
                .count() as u32;
            // Ranks backed up so far (copies that lost a race among
            // themselves count once).
            let copied = |r: u32| q.doc.attempts_of(r).iter().any(|a| a.backup);
            let tail = Tail {
                repetitions: spec.repetitions,
                unfinished,
                queued: views.iter().any(|v| v.state == RunState::Queued),
                backed_up: (0..spec.repetitions).filter(|r| copied(*r)).count() as u32,
            };
            if !due(tail) {
                continue;
            }
            // Both ends from the clock of the node that ran it.
            let durations = (0..spec.repetitions)
                .flat_map(|r| q.doc.attempts_of(r).iter())
                .filter_map(|a| match (a.state, a.started_ms, a.finished_ms) {
                    (AttemptState::Succeeded, Some(s), Some(f)) => Some(f.saturating_sub(s)),
                    _ => None,
                })
                .collect();
            let Some(typical) = median(durations) else {
                continue;
            };
            let held = views.iter().enumerate().filter_map(|(rank, v)| {
                let cur = v.current?;
                let rank = rank as u32;
                if v.state != RunState::Running || cur.node == self.cfg.node || copied(rank) {
                    return None;
                }
                // How long it has been held, as this node has seen it.
                let seen = self.sightings.first_seen(&LeaseKey {
                    request: id.clone(),
                    rank,
                    epoch: cur.epoch,
                    node: cur.node.clone(),
                });
                Some((rank, now.saturating_sub(seen.unwrap_or(now))))
            });
            let choice = choose(
                now,
                typical,
                held,
                |rank| *stragglers.entry((id.clone(), rank)).or_insert(now),
                |rank| takeover_delay_ms(&self.cfg.node, id, rank, self.members_n),
            );
            let Some((rank, age)) = choice.copy else {
                continue;
            };
            if best.as_ref().is_none_or(|(b, _)| age > *b) {
                let epoch = views[rank as usize].current.map_or(0, |c| c.epoch);
                best = Some((
                    age,
                    Candidate {
                        request: id.clone(),
                        owner: spec.owner.clone(),
                        created_ms: spec.created_ms,
                        rank,
                        epoch,
                    },
                ));
            }
        }
        self.stragglers = stragglers;
        if let Some((age, c)) = best {
            tracing::info!(
                "rank {} of {} has run {} s, well over its siblings: starting a backup copy",
                c.rank,
                c.request,
                age / 1000
            );
            self.claim_as(c, at.wall_ms, true);
        }
    }
}
