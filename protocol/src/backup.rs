//! Backup copies of the last stragglers (MapReduce's backup tasks, for a
//! desktop grid): when a request is down to its last few runs and a node
//! has a free slot it can put to nothing else, it starts a second copy of a
//! run that has taken well over the typical run of its siblings (idle nodes
//! take turns, as they do for a run to take over, so one copy starts, not
//! one per idle node). The copy
//! runs beside the holder and never displaces it (`run_view`): the first
//! success is the result, and the other copy stops. At most a few per cent
//! of a request's runs get one.

/// A run is a straggler once it has run this many times its siblings'
/// median…
pub const STRAGGLER_FACTOR: u64 = 2;

/// …and at least this much longer than it (short runs are not worth a
/// second copy).
pub const STRAGGLER_MIN_EXTRA_MS: u64 = 5_000;

/// Siblings that must have finished before a median means anything.
pub const MIN_SIBLINGS: usize = 3;

/// Ranks backed up per request, at most this share of its runs…
pub const BACKUP_SHARE_PERCENT: u32 = 5;

/// …or this many, whichever is more (a small request's last stragglers
/// are few, and each is a large part of its time).
pub const MIN_BACKUPS: u32 = 4;

/// How often a node with an idle slot looks for stragglers (every
/// housekeeping tick: turns are half a second apart).
pub const LOOK_EVERY_MS: u64 = 500;

/// The most backups a request of `repetitions` runs gets.
pub fn budget(repetitions: u32) -> u32 {
    (repetitions.saturating_mul(BACKUP_SHARE_PERCENT) / 100).max(MIN_BACKUPS)
}

/// Whether a request is down to its last few runs: no more unfinished
/// than this (and none waiting for a slot).
pub fn in_tail(unfinished: u32, repetitions: u32) -> bool {
    unfinished <= (repetitions / 10).max(4)
}

/// The median of finished siblings' run times (ms), once there are enough.
pub fn median(mut durations: Vec<u64>) -> Option<u64> {
    if durations.len() < MIN_SIBLINGS {
        return None;
    }
    durations.sort_unstable();
    Some(durations[durations.len() / 2])
}

/// Whether a run that has been held for `age_ms` is a straggler among
/// siblings whose median run took `median_ms`.
pub fn is_straggler(age_ms: u64, median_ms: u64) -> bool {
    age_ms > median_ms.saturating_mul(STRAGGLER_FACTOR)
        && age_ms.saturating_sub(median_ms) >= STRAGGLER_MIN_EXTRA_MS
}

/// What a node knows of a request when it looks for a straggler to copy.
#[derive(Debug, Clone, Copy)]
pub struct Tail {
    pub repetitions: u32,
    /// Runs not yet succeeded.
    pub unfinished: u32,
    /// Whether a run waits for a slot (a free slot takes that first).
    pub queued: bool,
    /// Ranks that have a backup copy already (copies that raced each other
    /// count once).
    pub backed_up: u32,
}

/// Whether a request may get a backup copy now: in its tail, no run
/// queued, budget left. (Which run then: [`choose`], against the typical
/// run, the [`median`] of its finished siblings.)
pub fn due(tail: Tail) -> bool {
    tail.unfinished > 0
        && !tail.queued
        && in_tail(tail.unfinished, tail.repetitions)
        && tail.backed_up < budget(tail.repetitions)
}

/// What a node that looked decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Choice {
    /// The rank to copy now, and how long it has been held (ms).
    pub copy: Option<(u32, u64)>,
    /// The earliest later time a straggler's turn comes to this node.
    pub next_turn: Option<u64>,
}

/// Of a request's runs held by other nodes and not yet copied (`(rank,
/// age_ms)`), the one this node copies at `now`: the oldest straggler whose
/// turn has come to it. Idle nodes take turns (`turn(rank)`, the takeover
/// order), counted from when the node first saw the run a straggler
/// (`since(rank)`, asked only of stragglers; every node learns that from the
/// same merge), so the first one's copy reaches the others before theirs is due.
pub fn choose(
    now: u64,
    typical: u64,
    held: impl IntoIterator<Item = (u32, u64)>,
    mut since: impl FnMut(u32) -> u64,
    turn: impl Fn(u32) -> u64,
) -> Choice {
    let mut out = Choice::default();
    for (rank, age) in held {
        if !is_straggler(age, typical) {
            continue;
        }
        let due_at = since(rank).saturating_add(turn(rank));
        if due_at > now {
            out.next_turn = Some(out.next_turn.map_or(due_at, |t| t.min(due_at)));
        } else if out.copy.is_none_or(|(_, a)| age > a) {
            out.copy = Some((rank, age));
        }
    }
    out
}

/// How long a run must have been held before it is a straggler among
/// siblings whose median run took `typical_ms` (the least age for which
/// [`is_straggler`] holds).
pub fn straggler_after(typical_ms: u64) -> u64 {
    typical_ms
        .saturating_mul(STRAGGLER_FACTOR)
        .saturating_add(1)
        .max(typical_ms.saturating_add(STRAGGLER_MIN_EXTRA_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tail_and_only_well_over_the_median() {
        assert_eq!(budget(10), 4);
        assert_eq!(budget(400), 20);
        assert!(in_tail(4, 10) && !in_tail(5, 10));
        assert!(in_tail(100, 1000) && !in_tail(101, 1000));
        assert_eq!(median(vec![5, 1]), None, "too few siblings");
        assert_eq!(median(vec![9, 1, 5]), Some(5));
        assert!(!is_straggler(9_000, 5_000), "under twice");
        assert!(is_straggler(11_000, 5_000));
        assert!(!is_straggler(300, 100), "short runs are not worth it");
        for typical in [0, 100, 4_999, 5_000, 60_000] {
            let t = straggler_after(typical);
            assert!(is_straggler(t, typical) && !is_straggler(t - 1, typical));
        }
    }

    #[test]
    fn a_request_is_due_only_in_its_tail_with_nothing_queued_and_budget_left() {
        let tail = Tail {
            repetitions: 100,
            unfinished: 10,
            queued: false,
            backed_up: 0,
        };
        assert!(due(tail));
        assert!(!due(Tail {
            unfinished: 11,
            ..tail
        }));
        assert!(!due(Tail {
            queued: true,
            ..tail
        }));
        assert!(!due(Tail {
            backed_up: 5,
            ..tail
        }));
        assert!(!due(Tail {
            unfinished: 0,
            ..tail
        }));
    }

    #[test]
    fn the_oldest_straggler_whose_turn_came_is_copied() {
        // Typical 10 s: stragglers past 20 s. Rank 1 is the oldest but its
        // turn comes at 70 s; rank 2's came at 45 s; rank 3 is not a straggler.
        let held = [(1, 60_000), (2, 40_000), (3, 15_000)];
        let since = |_| 40_000;
        let turn = |r| if r == 1 { 30_000 } else { 5_000 };
        let c = choose(50_000, 10_000, held, since, turn);
        assert_eq!(c.copy, Some((2, 40_000)));
        assert_eq!(c.next_turn, Some(70_000));
        let c = choose(70_000, 10_000, held, since, turn);
        assert_eq!(c.copy, Some((1, 60_000)));
        assert_eq!(c.next_turn, None);
    }
}
