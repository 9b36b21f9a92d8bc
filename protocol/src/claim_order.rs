//! Which queued ranks a node tries first, so that nodes scanning one request
//! at once rarely claim the same run.
//!
//! Each node starts at its own place (`schedule::scan_start`) and sweeps
//! forward. Alone, a sweep would sooner or later reach the ranks another node
//! started at, and from then on both would chase the same next rank, losing
//! a claim race on one run in four (measured on 4 nodes with 400 short runs).
//! So the ranks are cut into blocks, and a block belongs to the node that
//! claimed its lowest claimed rank first (the same answer on every replica
//! that sees the same attempts). A node takes fresh ranks from blocks that
//! are its own or untouched, in its scan order; a block another node holds is
//! left to it, and only when nothing else is left does the node help there,
//! from the block's end backwards, meeting the holder in the middle once.
//! Ranks that were tried already (to retry, or taken over) are not bound to
//! blocks: they come first, as before.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::ids::{NodeId, RequestId};
use crate::model::Attempt;
use crate::run_view::first_claim;
use crate::schedule::hash64;

/// Blocks a request is cut in per node of the grid: enough that a sweep
/// that ends finds an untouched block to go on with, few enough that a node
/// changes block rarely.
pub const BLOCKS_PER_NODE: u32 = 4;

/// The most ranks in one block.
pub const MAX_BLOCK_LEN: u32 = 64;

/// Ranks per block of a request with `repetitions` runs on a grid of
/// `members` nodes.
pub fn block_len(repetitions: u32, members: usize) -> u32 {
    let members = u32::try_from(members.max(1)).unwrap_or(u32::MAX);
    (repetitions / members.saturating_mul(BLOCKS_PER_NODE)).clamp(1, MAX_BLOCK_LEN)
}

/// Where a node starts its scan: the start of the block holding `start`.
pub fn block_start(start: u32, len: u32) -> u32 {
    start - start % len.max(1)
}

/// Who holds a block, as one node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// No attempt in it yet.
    Nobody,
    /// This node claimed its lowest claimed rank first.
    Me,
    /// Another node did.
    Other,
}

/// Who holds a block, from its ranks' attempts in rank order (`attempts`
/// gives a rank's attempts, empty when none).
pub fn holder<'a>(
    me: &NodeId,
    request: &RequestId,
    ranks: impl IntoIterator<Item = u32>,
    mut attempts: impl FnMut(u32) -> Cow<'a, [Attempt]>,
) -> Holder {
    for rank in ranks {
        if let Some(a) = first_claim(request, &attempts(rank)) {
            return if &a.node == me {
                Holder::Me
            } else {
                Holder::Other
            };
        }
    }
    Holder::Nobody
}

/// How many untouched blocks a node that needs a new one chooses among (by
/// a hash of its id): two nodes whose sweeps end at once rarely pick the
/// same one, and the scan stops once it has seen that many.
pub const BLOCK_CHOICES: usize = 8;

/// Which block of `blocks` node `me` prefers for `request`: its own order,
/// the same on every pass.
fn preference(me: &NodeId, request: &RequestId, block: u32) -> u64 {
    hash64(&format!("{me}/{request}/{block}"))
}

/// Walks `tried` ranks, then `fresh` ranks in scan order, and keeps the
/// first `want` that `queued` says may be claimed (with the epoch the claim
/// must use). `holder` is asked once per block, with its first rank. Fresh
/// ranks come from this node's blocks first, then from an untouched block
/// (one of the first [`BLOCK_CHOICES`] met, in the node's own order), and
/// only then from blocks another node holds, each from its end.
#[allow(clippy::too_many_arguments)]
pub fn first_queued_in_blocks(
    me: &NodeId,
    request: &RequestId,
    tried: impl IntoIterator<Item = u32>,
    fresh: impl IntoIterator<Item = u32>,
    want: usize,
    len: u32,
    mut queued: impl FnMut(u32) -> Option<u32>,
    mut holder: impl FnMut(u32) -> Holder,
) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    if want == 0 {
        return out;
    }
    let mut take = |rank: u32, out: &mut Vec<(u32, u32)>| {
        if let Some(epoch) = queued(rank) {
            out.push((rank, epoch));
        }
        out.len() == want
    };
    for rank in tried {
        if take(rank, &mut out) {
            return out;
        }
    }
    let len = len.max(1);
    // Blocks met in scan order, with their fresh ranks: untouched ones (the
    // first few) and those others hold.
    let mut untouched: Vec<(u32, Vec<u32>)> = Vec::new();
    let mut others: Vec<(u32, Vec<u32>)> = Vec::new();
    let mut held: BTreeMap<u32, Holder> = BTreeMap::new();
    for rank in fresh {
        let first = block_start(rank, len);
        let h = *held.entry(first).or_insert_with(|| holder(first));
        let list = match h {
            Holder::Me => {
                if take(rank, &mut out) {
                    return out;
                }
                continue;
            }
            Holder::Nobody => {
                if untouched.last().is_none_or(|(b, _)| *b != first)
                    && untouched.len() == BLOCK_CHOICES
                {
                    // Enough to choose from; blocks of this node beyond
                    // are found again once these are taken.
                    break;
                }
                &mut untouched
            }
            Holder::Other => &mut others,
        };
        match list.last_mut() {
            Some((b, ranks)) if *b == first => ranks.push(rank),
            _ => list.push((first, vec![rank])),
        }
    }
    untouched.sort_by_key(|(b, _)| preference(me, request, *b));
    for (_, ranks) in untouched {
        for rank in ranks {
            if take(rank, &mut out) {
                return out;
            }
        }
    }
    // Only blocks others hold are left: help from their ends.
    others.sort_by_key(|(b, _)| preference(me, request, *b));
    for (_, ranks) in others {
        for rank in ranks.into_iter().rev() {
            if take(rank, &mut out) {
                return out;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_shrink_with_the_grid_and_stay_within_bounds() {
        assert_eq!(block_len(400, 4), 25);
        assert_eq!(block_len(10, 200), 1);
        assert_eq!(block_len(1_000_000, 4), MAX_BLOCK_LEN);
        assert_eq!(block_len(0, 0), 1);
        assert_eq!(block_start(37, 25), 25);
    }

    /// Ranks 0..20 in blocks of 5; block 5..10 is another node's, block
    /// 10..15 is this node's; all ranks queued.
    fn pick(want: usize, start: u32) -> Vec<u32> {
        let fresh = (start..20).chain(0..start);
        first_queued_in_blocks(
            &NodeId::new("a"),
            &RequestId::from_bytes([1; 8]),
            Vec::new(),
            fresh,
            want,
            5,
            |_| Some(0),
            |first| match first {
                5 => Holder::Other,
                10 => Holder::Me,
                _ => Holder::Nobody,
            },
        )
        .into_iter()
        .map(|(r, _)| r)
        .collect()
    }

    #[test]
    fn a_node_goes_on_with_its_own_block_then_an_untouched_one() {
        let got = pick(7, 3);
        assert_eq!(&got[..5], &[10, 11, 12, 13, 14]);
        assert!(
            got[5..].iter().all(|r| !(5..10).contains(r)),
            "took from another's block while untouched ones remain: {got:?}"
        );
        // The untouched block it moves to is swept in rank order.
        assert_eq!(got[6], got[5] + 1);
    }

    #[test]
    fn with_nothing_else_left_a_node_helps_from_the_blocks_end() {
        assert_eq!(pick(22, 0).len(), 20);
        assert_eq!(&pick(22, 0)[15..], &[9, 8, 7, 6, 5]);
    }

    #[test]
    fn tried_ranks_come_first_wherever_they_are() {
        let got = first_queued_in_blocks(
            &NodeId::new("a"),
            &RequestId::from_bytes([1; 8]),
            vec![6],
            0..10,
            2,
            5,
            |_| Some(1),
            |first| {
                if first == 5 {
                    Holder::Other
                } else {
                    Holder::Nobody
                }
            },
        );
        assert_eq!(got, vec![(6, 1), (0, 1)]);
    }
}
