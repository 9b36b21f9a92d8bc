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
    }
}
