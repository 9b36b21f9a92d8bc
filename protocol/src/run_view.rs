//! How a run's state follows from its attempts, identically on every node.
//!
//! Every replica that holds the same attempts computes the same answer: who won
//! a claim race, which of two successful attempts is *the* result, whether the
//! run may be claimed again and in which epoch. Only lease liveness is local
//! (each node's own clock), and it only decides whether a live-looking claim is
//! trusted or the run may be taken over in the next epoch.

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, RequestId};
use crate::limits::MAX_INFRA_ATTEMPTS;
use crate::model::{Attempt, AttemptState, RequestState, RunState};

/// The deterministic priority of a claim: lower wins. A hash rather than the
/// node id, so no node wins every race.
pub fn claim_priority(request: &RequestId, rank: u32, epoch: u32, node: &NodeId) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(request.as_str().as_bytes());
    h.update(&rank.to_le_bytes());
    h.update(&epoch.to_le_bytes());
    h.update(node.as_str().as_bytes());
    *h.finalize().as_bytes()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pick {
    First,
    Last,
}

/// The first or last attempt in (epoch, claim priority) order. Hashes only
/// to break ties of epoch, which are rare: this runs for every run view.
fn by_priority<'a>(
    request: &RequestId,
    mut it: impl Iterator<Item = &'a Attempt>,
    pick: Pick,
) -> Option<&'a Attempt> {
    let mut best = it.next()?;
    for a in it {
        let ord = a.epoch.cmp(&best.epoch).then_with(|| {
            claim_priority(request, a.rank, a.epoch, &a.node)
                .cmp(&claim_priority(request, best.rank, best.epoch, &best.node))
        });
        if (pick == Pick::First && ord.is_lt()) || (pick == Pick::Last && ord.is_gt()) {
            best = a;
        }
    }
    Some(best)
}

/// The claim that won the first race for a run: lowest epoch, then claim
/// priority (`None` when nobody claimed it).
pub fn first_claim<'a>(request: &RequestId, attempts: &'a [Attempt]) -> Option<&'a Attempt> {
    by_priority(request, attempts.iter().filter(|a| !a.backup), Pick::First)
}

/// What a run looks like from its attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunView<'a> {
    pub state: RunState,
    /// The attempt that stands for the run: the result when succeeded, the
    /// live claim when claimed or running, the latest attempt otherwise.
    pub current: Option<&'a Attempt>,
    /// The epoch a new claim must use (only meaningful when `Queued`).
    pub next_epoch: u32,
}

/// Limits from the request that decide when a run gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunPolicy {
    /// Extra attempts after the program exits non-zero.
    pub retries: u32,
    /// Extra attempts, beyond `retries`, for a rank that has a checkpoint:
    /// it goes on from where it stopped, as PESC's process monitor does.
    pub checkpoint_retries: u32,
    /// The request was cancelled.
    pub cancelled: bool,
}

impl RunPolicy {
    /// How many failed attempts a rank may have before it has failed.
    pub fn allowed_failures(&self, has_checkpoint: bool) -> u32 {
        self.retries.saturating_add(if has_checkpoint {
            self.checkpoint_retries
        } else {
            0
        })
    }
}

/// Derives one run's state. `attempts` are all attempts of this rank (any
/// order); `live` says whether a non-terminal attempt's lease is alive.
pub fn derive_run<'a>(
    request: &RequestId,
    attempts: &'a [Attempt],
    policy: RunPolicy,
    live: impl Fn(&Attempt) -> bool,
) -> RunView<'a> {
    let latest = by_priority(request, attempts.iter(), Pick::Last);

    // The first success in (epoch, priority) order is the result; never two.
    if let Some(win) = by_priority(
        request,
        attempts
            .iter()
            .filter(|a| a.state == AttemptState::Succeeded),
        Pick::First,
    ) {
        return RunView {
            state: RunState::Succeeded,
            current: Some(win),
            next_epoch: 0,
        };
    }
    if policy.cancelled {
        return RunView {
            state: RunState::Cancelled,
            current: latest,
            next_epoch: 0,
        };
    }
    // A backup copy's end is not the rank's: only its success counts.
    let user_failures = attempts
        .iter()
        .filter(|a| a.state == AttemptState::Failed && !a.backup)
        .count() as u32;
    let infra_failures = attempts
        .iter()
        .filter(|a| matches!(a.state, AttemptState::Error | AttemptState::Lost) && !a.backup)
        .count() as u32;
    let has_checkpoint = attempts.iter().any(|a| a.checkpoint.is_some());
    if user_failures > policy.allowed_failures(has_checkpoint)
        || infra_failures >= MAX_INFRA_ATTEMPTS
    {
        // The failure to show: a yielded copy (stopped because another node
        // held the run) explains nothing.
        let last_failure = by_priority(
            request,
            attempts
                .iter()
                .filter(|a| a.state.is_terminal() && a.state != AttemptState::Yielded),
            Pick::Last,
        );
        return RunView {
            state: RunState::Failed,
            current: last_failure,
            next_epoch: 0,
        };
    }
    let Some(top_epoch) = attempts.iter().filter(|a| !a.backup).map(|a| a.epoch).max() else {
        return RunView {
            state: RunState::Queued,
            current: None,
            next_epoch: 0,
        };
    };
    let holder = by_priority(
        request,
        attempts
            .iter()
            .filter(|a| a.epoch == top_epoch && a.state != AttemptState::Yielded && !a.backup),
        Pick::First,
    );
    match holder {
        Some(h) if !h.state.is_terminal() && live(h) => RunView {
            state: if h.state == AttemptState::Running {
                RunState::Running
            } else {
                RunState::Claimed
            },
            current: Some(h),
            next_epoch: top_epoch.saturating_add(1),
        },
        // Finished without success, expired, or every claimant yielded:
        // anyone may claim the next epoch.
        _ => RunView {
            state: RunState::Queued,
            current: latest,
            next_epoch: top_epoch.saturating_add(1),
        },
    }
}

/// Why a node should stop its own attempt, if it should.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandon {
    /// Another claim in the same epoch has priority.
    LostRace,
    /// The run already has its result from another attempt.
    AlreadyDone,
    /// The request was cancelled.
    Cancelled,
    /// The run was reassigned in a later epoch (our lease was presumed dead).
    Reassigned,
    /// A parallel request's round stopped (another rank ended without
    /// success, or its node went away): every rank starts again together.
    GangStopped,
}

/// Decides whether `mine` (a non-terminal attempt of this node) should stop,
/// given every attempt of the same rank as now merged.
pub fn should_abandon(
    request: &RequestId,
    mine: &Attempt,
    attempts: &[Attempt],
    cancelled: bool,
) -> Option<Abandon> {
    if cancelled {
        return Some(Abandon::Cancelled);
    }
    if attempts
        .iter()
        .any(|a| a.state == AttemptState::Succeeded && a.key() != mine.key())
    {
        return Some(Abandon::AlreadyDone);
    }
    let my_prio = claim_priority(request, mine.rank, mine.epoch, &mine.node);
    // Backups race backups only: a backup never displaces the holder.
    let beaten = attempts.iter().any(|a| {
        a.epoch == mine.epoch
            && a.node != mine.node
            && a.backup == mine.backup
            && a.state != AttemptState::Yielded
            && claim_priority(request, a.rank, a.epoch, &a.node) < my_prio
    });
    if beaten {
        return Some(Abandon::LostRace);
    }
    if attempts
        .iter()
        .any(|a| a.epoch > mine.epoch && !a.state.is_terminal() && !a.backup)
    {
        return Some(Abandon::Reassigned);
    }
    None
}

/// Counts of runs per state, and the request state they add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunCounts {
    pub total: u32,
    pub queued: u32,
    pub claimed: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub cancelled: u32,
}

impl RunCounts {
    pub fn add(&mut self, s: RunState) {
        match s {
            RunState::Queued => self.queued += 1,
            RunState::Claimed => self.claimed += 1,
            RunState::Running => self.running += 1,
            RunState::Succeeded => self.succeeded += 1,
            RunState::Failed => self.failed += 1,
            RunState::Cancelled => self.cancelled += 1,
        }
    }

    /// Takes back one `add(s)`.
    pub fn remove(&mut self, s: RunState) {
        let n = match s {
            RunState::Queued => &mut self.queued,
            RunState::Claimed => &mut self.claimed,
            RunState::Running => &mut self.running,
            RunState::Succeeded => &mut self.succeeded,
            RunState::Failed => &mut self.failed,
            RunState::Cancelled => &mut self.cancelled,
        };
        *n = n.saturating_sub(1);
    }

    pub fn finished(&self) -> u32 {
        self.succeeded + self.failed + self.cancelled
    }

    /// The request's state: terminal once every run is; cancelled wins,
    /// then failed if any rank failed.
    pub fn request_state(&self, cancelled: bool) -> RequestState {
        if self.finished() < self.total {
            if cancelled {
                // Runs still stopping; the request is already cancelled.
                return RequestState::Cancelled;
            }
            if self.queued == self.total {
                return RequestState::Queued;
            }
            return RequestState::Running;
        }
        if cancelled && self.cancelled > 0 {
            RequestState::Cancelled
        } else if self.failed > 0 {
            RequestState::Failed
        } else {
            RequestState::Succeeded
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> RequestId {
        RequestId::from_bytes([9; 8])
    }

    fn att(rank: u32, epoch: u32, node: &str, state: AttemptState) -> Attempt {
        let mut a = Attempt::claim(rank, epoch, NodeId::new(node), 0);
        a.state = state;
        a
    }

    const OPEN: RunPolicy = RunPolicy {
        retries: 0,
        checkpoint_retries: 0,
        cancelled: false,
    };

    #[test]
    fn fresh_run_is_queued_at_epoch_zero() {
        let v = derive_run(&req(), &[], OPEN, |_| true);
        assert_eq!((v.state, v.next_epoch), (RunState::Queued, 0));
    }

    #[test]
    fn claim_race_has_one_deterministic_winner() {
        let a = att(0, 0, "a", AttemptState::Claimed);
        let b = att(0, 0, "b", AttemptState::Claimed);
        let ab = [a.clone(), b.clone()];
        let ba = [b.clone(), a.clone()];
        let v1 = derive_run(&req(), &ab, OPEN, |_| true);
        let v2 = derive_run(&req(), &ba, OPEN, |_| true);
        assert_eq!(v1.current, v2.current);
        let winner = v1.current.unwrap().node.clone();
        let (w, l) = if winner.as_str() == "a" {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert_eq!(
            should_abandon(&req(), l, &[a.clone(), b.clone()], false),
            Some(Abandon::LostRace)
        );
        assert_eq!(
            should_abandon(&req(), w, &[a.clone(), b.clone()], false),
            None
        );
    }

    #[test]
    fn two_successes_give_one_result() {
        let mut a = att(0, 0, "a", AttemptState::Succeeded);
        a.exit_code = Some(0);
        let b = att(0, 1, "b", AttemptState::Succeeded);
        let ba = [b.clone(), a.clone()];
        let v = derive_run(&req(), &ba, OPEN, |_| true);
        assert_eq!(v.state, RunState::Succeeded);
        assert_eq!(v.current, Some(&a), "the earlier epoch is the result");
    }

    #[test]
    fn expired_lease_makes_run_claimable_next_epoch() {
        let a = att(4, 2, "a", AttemptState::Running);
        let v = derive_run(&req(), std::slice::from_ref(&a), OPEN, |_| false);
        assert_eq!((v.state, v.next_epoch), (RunState::Queued, 3));
        let v = derive_run(&req(), std::slice::from_ref(&a), OPEN, |_| true);
        assert_eq!(v.state, RunState::Running);
    }

    #[test]
    fn failures_respect_retries_and_infra_limit() {
        let f0 = att(0, 0, "a", AttemptState::Failed);
        let v = derive_run(&req(), std::slice::from_ref(&f0), OPEN, |_| true);
        assert_eq!(v.state, RunState::Failed);
        let v = derive_run(
            &req(),
            std::slice::from_ref(&f0),
            RunPolicy {
                retries: 1,
                checkpoint_retries: 0,
                cancelled: false,
            },
            |_| true,
        );
        assert_eq!((v.state, v.next_epoch), (RunState::Queued, 1));
        let lost: Vec<_> = (0..MAX_INFRA_ATTEMPTS)
            .map(|e| att(0, e, "a", AttemptState::Lost))
            .collect();
        assert_eq!(
            derive_run(&req(), &lost, OPEN, |_| true).state,
            RunState::Failed
        );
        assert_eq!(
            derive_run(&req(), &lost[..3], OPEN, |_| true).state,
            RunState::Queued
        );
    }

    #[test]
    fn a_failed_run_shows_its_failure_not_a_yielded_copy() {
        let failed = att(0, 0, "a", AttemptState::Failed);
        let yielded = att(0, 0, "b", AttemptState::Yielded);
        for list in [
            vec![failed.clone(), yielded.clone()],
            vec![yielded.clone(), failed.clone()],
        ] {
            let v = derive_run(&req(), &list, OPEN, |_| true);
            assert_eq!(v.state, RunState::Failed);
            assert_eq!(v.current.map(|a| a.state), Some(AttemptState::Failed));
        }
    }

    #[test]
    fn cancel_and_reassignment() {
        let a = att(0, 0, "a", AttemptState::Running);
        let v = derive_run(
            &req(),
            std::slice::from_ref(&a),
            RunPolicy {
                retries: 0,
                checkpoint_retries: 0,
                cancelled: true,
            },
            |_| true,
        );
        assert_eq!(v.state, RunState::Cancelled);
        let b = att(0, 1, "b", AttemptState::Claimed);
        assert_eq!(
            should_abandon(&req(), &a, &[a.clone(), b.clone()], false),
            Some(Abandon::Reassigned)
        );
        assert_eq!(
            should_abandon(&req(), &a, std::slice::from_ref(&a), true),
            Some(Abandon::Cancelled)
        );
    }

    #[test]
    fn request_state_from_counts() {
        let mut c = RunCounts {
            total: 2,
            ..Default::default()
        };
        c.add(RunState::Queued);
        c.add(RunState::Queued);
        assert_eq!(c.request_state(false), RequestState::Queued);
        let c = RunCounts {
            total: 2,
            succeeded: 1,
            running: 1,
            ..Default::default()
        };
        assert_eq!(c.request_state(false), RequestState::Running);
        let c = RunCounts {
            total: 2,
            succeeded: 1,
            failed: 1,
            ..Default::default()
        };
        assert_eq!(c.request_state(false), RequestState::Failed);
        let c = RunCounts {
            total: 2,
            succeeded: 2,
            ..Default::default()
        };
        assert_eq!(c.request_state(false), RequestState::Succeeded);
        let c = RunCounts {
            total: 2,
            succeeded: 1,
            cancelled: 1,
            ..Default::default()
        };
        assert_eq!(c.request_state(true), RequestState::Cancelled);
    }

    #[test]
    fn a_crash_with_a_checkpoint_goes_on_from_it_once() {
        let r = req();
        let policy = RunPolicy {
            retries: 0,
            checkpoint_retries: 1,
            cancelled: false,
        };
        let mut crashed = att(0, 0, "a", AttemptState::Failed);
        // Without a checkpoint: --retries decides (none left).
        let v = derive_run(&r, std::slice::from_ref(&crashed), policy, |_| true);
        assert_eq!(v.state, RunState::Failed);
        // With one: once more, from it.
        crashed.checkpoint = Some(crate::BlobHash::of(b"state"));
        let v = derive_run(&r, std::slice::from_ref(&crashed), policy, |_| true);
        assert_eq!((v.state, v.next_epoch), (RunState::Queued, 1));
        let again = att(0, 1, "b", AttemptState::Failed);
        let both = [crashed.clone(), again];
        let v = derive_run(&r, &both, policy, |_| true);
        assert_eq!(v.state, RunState::Failed, "only once");
        let off = RunPolicy {
            checkpoint_retries: 0,
            ..policy
        };
        let v = derive_run(&r, std::slice::from_ref(&crashed), off, |_| true);
        assert_eq!(v.state, RunState::Failed);
    }
}
