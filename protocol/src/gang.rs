//! Parallel requests: their ranks run as one gang, every rank at once.
//!
//! A gang runs in rounds, and a round is an epoch shared by every rank:
//! round `g`'s attempts all have epoch `g`. Nodes claim ranks of the current
//! round as they would any run (a claim race is decided per rank, by
//! `run_view::claim_priority`), but no rank starts until every rank of the
//! round has a standing claim (PESC's "wait for the signal"). A round breaks
//! when a rank's standing attempt ends without success or its holder stops
//! being trusted: every rank of it stops, and the gang gathers again in the
//! next round, from each rank's checkpoint (torchrun's elastic restart).
//! Retries are counted per round, not per rank.
//!
//! Every replica with the same attempts derives the same view; only
//! liveness is local, as for any run.

use crate::ids::{NodeId, RequestId};
use crate::limits::MAX_INFRA_ATTEMPTS;
use crate::model::{Attempt, AttemptState, RunState};
use crate::run_view::{Abandon, RunPolicy, RunView, claim_priority};
use crate::schedule::hash64;

/// The most ranks of a parallel request: every rank's view is derived from
/// every other's, and a gang of desktops larger than this would rarely
/// gather at all.
pub const MAX_GANG: u32 = 256;

/// How long a node keeps slots claimed for a gang that is still gathering
/// while an older parallel request also gathers: then it hands them back, so
/// the older gang (the order every node agrees on: creation time, then id)
/// gets them, and two gangs that cannot both run never hold each other's
/// slots forever.
pub const GATHER_WAIT_MS: u64 = 10_000;

/// How long a node waits after it first sees a gang's round gathered
/// before it starts its ranks: claims made at the same moment elsewhere
/// (two nodes that could each hold the whole gang, say) reach it, and the
/// node that lost them hands them back before anything ran twice. A request
/// just pushed to two nodes takes them two or three sync exchanges at the
/// quiet gap (100 ms) to learn each other's claims: 200 ms was too short in
/// the harness (both nodes of a same-node race started the whole gang).
pub const SETTLE_MS: u64 = 600;

/// The ports rank 0's node gives a gang: `MASTER_PORT` is drawn from these
/// for each request and round, so a gang that starts again after a port
/// was taken gets another.
pub const PORT_BASE: u16 = 29_500;
pub const PORT_SPAN: u16 = 2_000;

/// The port of a gang's rank 0 in a round.
pub fn master_port(request: &RequestId, round: u32) -> u16 {
    let h = hash64(&format!("{request}/port/{round}"));
    PORT_BASE + (h % u64::from(PORT_SPAN)) as u16
}

/// Where a gang stands in its current round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Some ranks have no standing claim yet.
    Gathering,
    /// Every rank has a standing claim: they start (or run).
    Gathered,
    /// A rank's attempt ended without success or its holder is gone: every
    /// rank stops, and the next round gathers.
    Broken,
    /// Every rank of one round succeeded.
    Succeeded,
    /// Too many rounds failed.
    Failed,
    Cancelled,
}

/// A gang as one node sees it.
#[derive(Debug, Clone)]
pub struct GangView<'a> {
    pub round: u32,
    pub phase: Phase,
    /// Each rank's standing attempt in the round (or in the round that
    /// succeeded), `None` where none stands.
    pub holders: Vec<Option<&'a Attempt>>,
    /// The attempt whose end broke the round or failed the gang.
    pub broke: Option<&'a Attempt>,
    /// Each rank's latest attempt.
    latest: Vec<Option<&'a Attempt>>,
    /// Every rank on one node: rank 0's.
    same_node: bool,
}

/// The most rounds a gang gets: past them it has failed. Rounds handed
/// back to an older gang count too (one every [`GATHER_WAIT_MS`] at most
/// per node), so this is far above what a gang that can run needs; it
/// bounds what a peer writing one round after another can make every node
/// derive and restart.
pub const MAX_ROUNDS: u32 = 10_000;

/// What one round's attempts add up to (derived in one pass over them).
#[derive(Default)]
struct Round {
    /// Ranks with a success in the round.
    succeeded: u32,
    /// A program failed in it.
    failed: bool,
    /// A node could not run, or lost, an attempt of it.
    infra: bool,
    /// Every attempt of it not handed back has ended.
    ended: bool,
    /// The attempt whose end counts against the gang (the first seen).
    failure: Option<usize>,
}

/// Derives a gang of `world` ranks from every rank's attempts
/// (`attempts(rank)`); `live` says whether a non-terminal attempt's holder
/// is trusted. With `same_node`, a rank stands only on rank 0's node: a
/// claim elsewhere lost to rank 0's claim.
///
/// Rounds are read from 0 up and must follow each other: attempts past a
/// missing round are ignored (no honest node claims round g + 1 before
/// round g broke), so a crafted attempt far ahead moves nothing.
pub fn derive<'a>(
    request: &RequestId,
    world: u32,
    same_node: bool,
    attempts: impl Fn(u32) -> &'a [Attempt],
    policy: RunPolicy,
    live: impl Fn(&Attempt) -> bool,
) -> GangView<'a> {
    let ranks: Vec<&'a [Attempt]> = (0..world).map(&attempts).collect();
    // One pass: each round's sums, and the rounds that exist.
    let mut rounds: std::collections::BTreeMap<u32, Round> = Default::default();
    let mut flat: Vec<&'a Attempt> = Vec::new();
    for list in &ranks {
        let mut won: Vec<u32> = Vec::new();
        for a in list.iter() {
            let r = rounds.entry(a.epoch).or_insert_with(|| Round {
                ended: true,
                ..Default::default()
            });
            match a.state {
                AttemptState::Succeeded if !won.contains(&a.epoch) => {
                    won.push(a.epoch);
                    r.succeeded += 1;
                }
                AttemptState::Failed => r.failed = true,
                AttemptState::Error | AttemptState::Lost => r.infra = true,
                _ => {}
            }
            if matches!(
                a.state,
                AttemptState::Failed | AttemptState::Error | AttemptState::Lost
            ) && r.failure.is_none()
            {
                r.failure = Some(flat.len());
            }
            if !a.state.is_terminal() {
                r.ended = false;
            }
            flat.push(a);
        }
    }
    // Contiguous from round 0.
    let last = rounds
        .keys()
        .enumerate()
        .take_while(|(i, g)| **g as usize == *i)
        .last()
        .map(|(_, g)| *g);
    let in_range = |a: &&Attempt| last.is_some_and(|l| a.epoch <= l);
    let latest: Vec<Option<&'a Attempt>> = ranks
        .iter()
        .map(|list| {
            list.iter()
                .filter(in_range)
                .max_by_key(|a| (a.epoch, a.claimed_ms))
        })
        .collect();
    let view = |round, phase, holders, broke| GangView {
        round,
        phase,
        holders,
        broke,
        latest: latest.clone(),
        same_node,
    };
    let round = last.unwrap_or(0);
    // The first round whose every rank succeeded (on rank 0's node, for a
    // same-node gang) is the gang's result.
    for (&g, r) in rounds.range(..=round) {
        if r.succeeded < world {
            continue;
        }
        let win = |list: &'a [Attempt], on: Option<&NodeId>| {
            list.iter()
                .filter(|a| a.epoch == g && a.state == AttemptState::Succeeded)
                .filter(|a| on.is_none_or(|n| &a.node == n))
                .min_by_key(|a| claim_priority(request, a.rank, a.epoch, &a.node))
        };
        let zero = ranks.first().and_then(|l| win(l, None));
        let on = zero.map(|z| &z.node).filter(|_| same_node);
        let wins: Vec<Option<&'a Attempt>> = ranks.iter().map(|l| win(l, on)).collect();
        if wins.iter().all(Option::is_some) {
            return view(g, Phase::Succeeded, wins, None);
        }
    }
    if policy.cancelled {
        return view(round, Phase::Cancelled, vec![None; world as usize], None);
    }
    // Retries count rounds: one a program failed in (once every attempt of
    // it ended and no node lost one: a rank whose peer died fails too), or
    // one the nodes could not run.
    let (mut user, mut infra) = (0u32, 0u32);
    let mut last_failure: Option<&'a Attempt> = None;
    for r in rounds.range(..=round).map(|(_, r)| r) {
        if r.infra {
            infra += 1;
        } else if r.failed && r.ended {
            user += 1;
        } else {
            continue;
        }
        last_failure = r.failure.map(|i| flat[i]).or(last_failure);
    }
    // A gang is as exposed to its nodes' failures as its ranks together:
    // each rank may cost one round on top of what one run may.
    let has_checkpoint = flat.iter().any(|a| a.checkpoint.is_some());
    if user > policy.allowed_failures(has_checkpoint)
        || infra >= MAX_INFRA_ATTEMPTS + world
        || round >= MAX_ROUNDS
    {
        return view(
            round,
            Phase::Failed,
            vec![None; world as usize],
            last_failure,
        );
    }
    // A rank's first claim in the round by rank order, among those not
    // handed back.
    let first_of = |list: &'a [Attempt], on: Option<&NodeId>| {
        list.iter()
            .filter(|a| a.epoch == round && a.state != AttemptState::Yielded)
            .filter(|a| on.is_none_or(|n| &a.node == n))
            .min_by_key(|a| rank_key(request, a))
    };
    // On one node, rank 0's claim says which: claims elsewhere lost to it.
    let zero_node = if same_node {
        ranks
            .first()
            .and_then(|l| first_of(l, None))
            .map(|a| &a.node)
    } else {
        None
    };
    let mut holders = Vec::with_capacity(world as usize);
    let mut broke = None;
    for (rank, list) in ranks.iter().enumerate() {
        let on = zero_node.filter(|_| rank > 0);
        let Some(first) = first_of(list, on) else {
            // Unclaimed in this round, or every claim of it handed back:
            // handed back breaks the round (its slot went to another gang).
            // A claim on a node other than rank 0's (same node) was a race
            // lost, not a hand-back.
            let handed = list
                .iter()
                .find(|a| a.epoch == round && on.is_none_or(|n| &a.node == n));
            broke = broke.or(handed);
            holders.push(None);
            continue;
        };
        let stands =
            first.state == AttemptState::Succeeded || (!first.state.is_terminal() && live(first));
        if stands {
            holders.push(Some(first));
        } else {
            broke = broke.or(Some(first));
            holders.push(None);
        }
    }
    let phase = if broke.is_some() {
        Phase::Broken
    } else if holders.iter().all(Option::is_some) {
        Phase::Gathered
    } else {
        Phase::Gathering
    };
    view(round, phase, holders, broke)
}

impl<'a> GangView<'a> {
    /// Ranks with a standing claim in the round.
    pub fn gathered(&self) -> u32 {
        self.holders.iter().filter(|h| h.is_some()).count() as u32
    }

    /// The nodes holding the round's ranks, each once, in rank order.
    pub fn nodes(&self) -> Vec<&'a NodeId> {
        let mut out: Vec<&NodeId> = Vec::new();
        for h in self.holders.iter().flatten() {
            if !out.contains(&&h.node) {
                out.push(&h.node);
            }
        }
        out
    }

    /// One rank's run, as the gang makes it.
    pub fn run(&self, rank: u32) -> RunView<'a> {
        let i = rank as usize;
        let holder = self.holders.get(i).copied().flatten();
        let latest = self.latest.get(i).copied().flatten();
        let (state, current, next_epoch) = match self.phase {
            Phase::Succeeded => (RunState::Succeeded, holder, 0),
            Phase::Cancelled => (RunState::Cancelled, latest, 0),
            // Each rank's own last attempt (the one that broke the gang is
            // named in the request's reason).
            Phase::Failed => (RunState::Failed, latest, 0),
            Phase::Broken => (RunState::Queued, latest, self.round.saturating_add(1)),
            Phase::Gathering | Phase::Gathered => match holder {
                Some(h) => (
                    match h.state {
                        AttemptState::Running => RunState::Running,
                        AttemptState::Succeeded => RunState::Succeeded,
                        _ => RunState::Claimed,
                    },
                    Some(h),
                    self.round.saturating_add(1),
                ),
                None => (RunState::Queued, latest, self.round),
            },
        };
        RunView {
            state,
            current,
            next_epoch,
        }
    }

    /// Whether this node's attempt `mine` must stop, and why.
    pub fn abandon(
        &self,
        request: &RequestId,
        mine: &Attempt,
        attempts: &[Attempt],
    ) -> Option<Abandon> {
        match self.phase {
            Phase::Cancelled => return Some(Abandon::Cancelled),
            Phase::Succeeded
                if self
                    .holders
                    .get(mine.rank as usize)
                    .copied()
                    .flatten()
                    .is_some_and(|h| h.key() != mine.key()) =>
            {
                return Some(Abandon::AlreadyDone);
            }
            Phase::Failed => return Some(Abandon::GangStopped),
            _ => {}
        }
        if mine.epoch < self.round {
            return Some(Abandon::GangStopped);
        }
        if mine.epoch == self.round && self.phase == Phase::Broken {
            return Some(Abandon::GangStopped);
        }
        // On one node: rank 0's claim decides which node holds every rank.
        if self.same_node
            && mine.rank != 0
            && let Some(zero) = self.holders.first().copied().flatten()
            && zero.epoch == mine.epoch
        {
            return (zero.node != mine.node).then_some(Abandon::LostRace);
        }
        let mine_key = rank_key(request, mine);
        let beaten = attempts.iter().any(|a| {
            a.epoch == mine.epoch
                && a.node != mine.node
                && a.state != AttemptState::Yielded
                && rank_key(request, a) < mine_key
        });
        beaten.then_some(Abandon::LostRace)
    }

    /// What the request page says of the gang.
    pub fn describe(&self, world: u32, name: impl Fn(&NodeId) -> String) -> String {
        match self.phase {
            Phase::Gathering => {
                let missing = world - self.gathered();
                format!(
                    "waiting for {missing} more slot{}",
                    if missing == 1 { "" } else { "s" }
                )
            }
            Phase::Gathered => {
                let all_running = self
                    .holders
                    .iter()
                    .flatten()
                    .all(|h| h.state != AttemptState::Claimed);
                let on: Vec<String> = self.nodes().into_iter().map(name).collect();
                if all_running {
                    format!("running on {}", on.join(", "))
                } else {
                    format!("starting on {}", on.join(", "))
                }
            }
            Phase::Broken => "a rank stopped: every rank starts again".into(),
            Phase::Succeeded => "every rank succeeded".into(),
            Phase::Failed => "failed".into(),
            Phase::Cancelled => "cancelled".into(),
        }
    }
}

/// Which of two claims of a rank in one round holds it: one that started
/// first (a node that claimed the rank late, from an old copy of the
/// request, must not stop a gang that already runs), then claim priority.
fn rank_key(request: &RequestId, a: &Attempt) -> (bool, [u8; 32]) {
    (
        a.state == AttemptState::Claimed,
        claim_priority(request, a.rank, a.epoch, &a.node),
    )
}

/// Ranks numbered per node, as torchrun does: (local rank, local world
/// size) of `rank` among the ranks its node holds.
pub fn local_rank(view: &GangView, rank: u32) -> (u32, u32) {
    let Some(Some(me)) = view.holders.get(rank as usize) else {
        return (0, 1);
    };
    let same: Vec<u32> = view
        .holders
        .iter()
        .flatten()
        .filter(|h| h.node == me.node)
        .map(|h| h.rank)
        .collect();
    let local = same.iter().filter(|&&r| r < rank).count() as u32;
    (local, same.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> RequestId {
        RequestId::from_bytes([4; 8])
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

    fn by_rank(all: &[Attempt], world: u32) -> Vec<Vec<Attempt>> {
        (0..world)
            .map(|r| all.iter().filter(|a| a.rank == r).cloned().collect())
            .collect()
    }

    #[test]
    fn a_gang_gathers_before_any_rank_starts() {
        let r = req();
        let all = by_rank(
            &[
                att(0, 0, "a", AttemptState::Claimed),
                att(1, 0, "b", AttemptState::Claimed),
            ],
            3,
        );
        let v = derive(&r, 3, false, |k| &all[k as usize], OPEN, |_| true);
        assert_eq!(v.phase, Phase::Gathering);
        assert_eq!(v.gathered(), 2);
        assert_eq!(v.run(2).state, RunState::Queued);
        assert_eq!(v.run(2).next_epoch, 0, "the missing rank joins this round");
        assert_eq!(v.describe(3, |n| n.to_string()), "waiting for 1 more slot");
        let all = by_rank(
            &[
                att(0, 0, "a", AttemptState::Claimed),
                att(1, 0, "b", AttemptState::Claimed),
                att(2, 0, "b", AttemptState::Claimed),
            ],
            3,
        );
        let v = derive(&r, 3, false, |k| &all[k as usize], OPEN, |_| true);
        assert_eq!(v.phase, Phase::Gathered);
        assert_eq!(v.describe(3, |n| n.to_string()), "starting on a, b");
        assert_eq!(local_rank(&v, 2), (1, 2));
        assert_eq!(local_rank(&v, 0), (0, 1));
    }

    #[test]
    fn a_failed_rank_stops_the_round_and_every_rank_starts_again() {
        let r = req();
        let policy = RunPolicy {
            retries: 1,
            checkpoint_retries: 0,
            cancelled: false,
        };
        let all = by_rank(
            &[
                att(0, 0, "a", AttemptState::Succeeded),
                att(1, 0, "b", AttemptState::Failed),
                att(2, 0, "c", AttemptState::Running),
            ],
            3,
        );
        let v = derive(&r, 3, false, |k| &all[k as usize], policy, |_| true);
        assert_eq!(v.phase, Phase::Broken);
        for k in 0..3 {
            assert_eq!(v.run(k).state, RunState::Queued);
            assert_eq!(v.run(k).next_epoch, 1);
        }
        let mine = &all[2][0];
        assert_eq!(v.abandon(&r, mine, &all[2]), Some(Abandon::GangStopped));
        // Rank 2 stopped with its gang; a second failing round uses the one
        // retry up.
        let mut flat: Vec<Attempt> = all.concat();
        flat.retain(|a| a.rank != 2);
        flat.extend([
            att(2, 0, "c", AttemptState::Yielded),
            att(0, 1, "a", AttemptState::Failed),
            att(1, 1, "b", AttemptState::Yielded),
            att(2, 1, "c", AttemptState::Yielded),
        ]);
        let all = by_rank(&flat, 3);
        let v = derive(&r, 3, false, |k| &all[k as usize], policy, |_| true);
        assert_eq!(v.phase, Phase::Failed);
        assert_eq!(v.run(1).state, RunState::Failed);
    }

    #[test]
    fn a_rank_failing_because_its_peer_died_is_not_the_programs_failure() {
        // Rank 1's node died; rank 0's program failed when its peer went
        // away. The dead node's attempt never ends in the documents: the
        // round breaks, but no retry is spent.
        let r = req();
        let all = by_rank(
            &[
                att(0, 0, "a", AttemptState::Failed),
                att(1, 0, "dead", AttemptState::Running),
            ],
            2,
        );
        let v = derive(
            &r,
            2,
            false,
            |k| &all[k as usize],
            OPEN,
            |a| a.node.as_str() != "dead",
        );
        assert_eq!(v.phase, Phase::Broken);
        assert_eq!(v.run(0).next_epoch, 1);
    }

    #[test]
    fn rounds_must_follow_each_other_and_are_bounded() {
        let r = req();
        // A crafted attempt far ahead of round 0 moves nothing.
        let all = by_rank(
            &[
                att(0, 0, "a", AttemptState::Running),
                att(1, 0, "b", AttemptState::Running),
                att(0, 1 << 24, "evil", AttemptState::Yielded),
            ],
            2,
        );
        let v = derive(&r, 2, false, |k| &all[k as usize], OPEN, |_| true);
        assert_eq!((v.round, v.phase), (0, Phase::Gathered));
        // Past MAX_ROUNDS rounds, the gang has failed.
        let flat: Vec<Attempt> = (0..=MAX_ROUNDS)
            .map(|g| att(0, g, "a", AttemptState::Yielded))
            .collect();
        let all = by_rank(&flat, 1);
        let v = derive(&r, 1, false, |k| &all[k as usize], OPEN, |_| true);
        assert_eq!(v.phase, Phase::Failed);
    }

    #[test]
    fn a_holder_gone_breaks_the_round_and_a_round_of_successes_wins() {
        let r = req();
        let all = by_rank(
            &[
                att(0, 0, "a", AttemptState::Running),
                att(1, 0, "dead", AttemptState::Running),
            ],
            2,
        );
        let v = derive(
            &r,
            2,
            false,
            |k| &all[k as usize],
            OPEN,
            |a| a.node.as_str() != "dead",
        );
        assert_eq!(v.phase, Phase::Broken);
        assert_eq!(v.broke.map(|a| a.node.as_str()), Some("dead"));
        // Lost counts as an infrastructure round, not a user failure.
        let all = by_rank(
            &[
                att(0, 0, "a", AttemptState::Yielded),
                att(1, 0, "dead", AttemptState::Lost),
                att(0, 1, "a", AttemptState::Succeeded),
                att(1, 1, "b", AttemptState::Succeeded),
            ],
            2,
        );
        let v = derive(&r, 2, false, |k| &all[k as usize], OPEN, |_| true);
        assert_eq!(v.phase, Phase::Succeeded);
        assert_eq!(v.run(1).current.map(|a| a.node.as_str()), Some("b"));
    }

    #[test]
    fn a_rank_handed_back_breaks_its_round() {
        let r = req();
        let all = by_rank(
            &[
                att(0, 0, "a", AttemptState::Claimed),
                att(1, 0, "b", AttemptState::Yielded),
            ],
            2,
        );
        let v = derive(&r, 2, false, |k| &all[k as usize], OPEN, |_| true);
        assert_eq!(v.phase, Phase::Broken);
        assert_eq!(v.run(0).next_epoch, 1);
        // A claim race lost is not a hand-back: the winner stands.
        let all = by_rank(
            &[
                att(0, 0, "a", AttemptState::Claimed),
                att(1, 0, "b", AttemptState::Yielded),
                att(1, 0, "c", AttemptState::Claimed),
            ],
            2,
        );
        let v = derive(&r, 2, false, |k| &all[k as usize], OPEN, |_| true);
        assert_eq!(v.phase, Phase::Gathered);
    }

    #[test]
    fn on_one_node_only_rank_zeros_node_holds_ranks() {
        let r = req();
        let all = by_rank(
            &[
                att(0, 0, "a", AttemptState::Claimed),
                att(1, 0, "a", AttemptState::Claimed),
                att(1, 0, "b", AttemptState::Claimed),
                att(2, 0, "b", AttemptState::Claimed),
            ],
            3,
        );
        let v = derive(&r, 3, true, |k| &all[k as usize], OPEN, |_| true);
        assert_eq!(v.phase, Phase::Gathering, "rank 2 is on the wrong node");
        assert_eq!(v.abandon(&r, &all[2][0], &all[2]), Some(Abandon::LostRace));
        assert_eq!(v.nodes(), vec![&NodeId::new("a")]);
    }

    #[test]
    fn ports_differ_between_rounds_and_stay_in_range() {
        let r = req();
        let ports: Vec<u16> = (0..8).map(|g| master_port(&r, g)).collect();
        assert!(
            ports
                .iter()
                .all(|p| (PORT_BASE..PORT_BASE + PORT_SPAN).contains(p))
        );
        assert!(ports.windows(2).any(|w| w[0] != w[1]));
    }
}
