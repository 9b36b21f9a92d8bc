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
use crate::schedule::{hash64, scan_start};

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

/// A block as one node sees it: who holds it and, in a block this node
/// holds, the other nodes helping there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockView {
    pub holder: Holder,
    /// Nodes other than this one with an attempt in the block (filled only
    /// when this node holds it).
    pub helpers: Vec<NodeId>,
    /// The node holding it, when another does (`None` when unknown).
    pub by: Option<NodeId>,
}

impl BlockView {
    /// A block without helpers.
    pub fn held_by(holder: Holder) -> BlockView {
        BlockView {
            holder,
            helpers: Vec::new(),
            by: None,
        }
    }
}

/// Who holds a block, from its ranks' attempts in rank order (`attempts`
/// gives a rank's attempts, empty when none), and who helps in it when this
/// node holds it.
pub fn holder<'a>(
    me: &NodeId,
    request: &RequestId,
    ranks: impl IntoIterator<Item = u32>,
    mut attempts: impl FnMut(u32) -> Cow<'a, [Attempt]>,
) -> BlockView {
    let mut view = BlockView::held_by(Holder::Nobody);
    for rank in ranks {
        let list = attempts(rank);
        if view.holder == Holder::Nobody {
            match first_claim(request, &list) {
                Some(a) if &a.node == me => view.holder = Holder::Me,
                Some(a) => {
                    return BlockView {
                        by: Some(a.node.clone()),
                        ..BlockView::held_by(Holder::Other)
                    };
                }
                None => continue,
            }
        }
        for a in list.iter() {
            if &a.node != me && !view.helpers.contains(&a.node) {
                view.helpers.push(a.node.clone());
            }
        }
    }
    view
}

/// How many untouched blocks a node that needs a new one chooses among (by
/// a hash of its id): two nodes whose sweeps end at once rarely pick the
/// same one, and the scan stops once it has seen that many.
pub const BLOCK_CHOICES: usize = 8;

/// How many blocks held by others a node looks at, in its scan order, to
/// help in: enough to spread helpers over, few enough that a node of a
/// large grid does not scan a million-rank request on every free slot.
pub const HELP_CHOICES: usize = 64;

/// Runs shorter than this (as this node last ran one of the request's) are
/// short: a holder's last ranks cost it little to run itself, and a helper
/// that takes them from the block's end would meet the holder there.
pub const SHORT_RUN_MS: u64 = 100;

/// How many of the lowest queued ranks of a block another live node holds
/// a helper leaves to it when the runs are short: the holder sweeps up
/// through them faster than the helper's claims would reach it (a sync round
/// is tens of short runs), so a helper there would only run them twice.
/// When shares end at once, a node whose share is done waits for the last
/// ranks of the others' instead, which their holders finish in a few
/// milliseconds.
pub const SHORT_HELP_LEAD: usize = 16;

/// Whether a request's runs are short, from how long this node's last run
/// of it took (`None`: none finished here yet, so not known short).
pub fn short_runs(last_run_ms: Option<u64>) -> bool {
    last_run_ms.is_some_and(|ms| ms < SHORT_RUN_MS)
}

/// How long after a node first holds a request it leaves the untouched
/// blocks dealt to other live members to them: their first claims, made as
/// soon as they saw the request, reach this node in a sync round or two.
/// Taken sooner, a request of one run starts on two idle nodes at once
/// (one copy then yields). After it, a member that is busy elsewhere or
/// slow does not hold its share back.
pub const DEALT_GRACE_MS: u64 = 150;

/// Whether a request held for `held_for_ms` is past [`DEALT_GRACE_MS`].
pub fn past_dealt_grace(held_for_ms: u64) -> bool {
    held_for_ms >= DEALT_GRACE_MS
}

/// A node this much busier (load per CPU) than the least busy neighbour
/// with a free slot lets the new request's runs go to the others first:
/// an owner's program keeping half the CPU busy. Less would let nodes on
/// one machine (which share one load average, read moments apart while it
/// climbs in 5 s steps) wait for each other for nothing.
pub const LOAD_MARGIN: f32 = 0.5;

/// Heartbeats in a row a node must have been that much busier before it
/// holds back: an owner's load lasts, while nodes of one machine (which
/// share one load average) differ only for the moment between reading it
/// on each side of one of its 5-second steps.
pub const LOAD_STEADY_BEATS: u32 = 3;

/// The longest a busy node holds back from a new request.
pub const LOAD_DELAY_MAX_MS: u64 = 3_000;

/// How long a node whose load per CPU is `mine` waits, after it first holds
/// a request, before it claims its runs, when the least loaded neighbour
/// that has a free slot is at `least` (thesis §4.3.1.2: work goes to the
/// client with the most free resources). Past [`DEALT_GRACE_MS`] its dealt
/// blocks are open to the others, so less loaded nodes take them first;
/// the busier, the longer. Nodes loaded alike (one machine, or a lab whose
/// desktops are all idle) do not wait at all: nothing is lost where the
/// choice makes no difference.
pub fn load_delay_ms(mine: f32, least: Option<f32>) -> u64 {
    let Some(least) = least.filter(|l| l.is_finite()) else {
        return 0;
    };
    // (`min` would turn NaN into the bound.)
    if !mine.is_finite() {
        return 0;
    }
    let over = mine.min(4.0) - least.max(0.0);
    if !over.is_finite() || over < LOAD_MARGIN {
        return 0;
    }
    (DEALT_GRACE_MS + (over * 1000.0) as u64).min(LOAD_DELAY_MAX_MS)
}

/// How a node cuts one request into blocks and which it takes first.
#[derive(Debug, Clone, Copy)]
pub struct Blocks<'a> {
    pub me: &'a NodeId,
    pub request: &'a RequestId,
    pub repetitions: u32,
    /// Ranks per block.
    pub len: u32,
    /// The grid's members in id order: untouched blocks are dealt out among
    /// them, so that nodes that have not yet seen each other's latest claims
    /// still pick apart.
    members: &'a [NodeId],
    /// This node's place among them.
    index: usize,
    /// The request's runs are short ([`short_runs`]): helpers leave the
    /// ranks dealt to live others to them.
    pub short_runs: bool,
    /// Untouched blocks dealt to other live members may be taken
    /// ([`past_dealt_grace`]); before, they are left to them.
    pub dealt_open: bool,
    /// How many more ranks than asked to take, to claim ahead of free
    /// slots: only from blocks of this node's own share that it holds,
    /// where no other node claims (a block's first claim, a helper's, or
    /// one in a block dealt to another, races others, and a race lost
    /// there would cost every run claimed with it).
    pub ahead: usize,
    /// The request's hash, which every dealing starts from (hashed once:
    /// the end of a large request asks for it per rank).
    request_hash: u64,
}

impl<'a> Blocks<'a> {
    /// `members` in id order; empty or without this node, it counts as the
    /// first.
    pub fn new(
        me: &'a NodeId,
        request: &'a RequestId,
        repetitions: u32,
        members: &'a [NodeId],
    ) -> Blocks<'a> {
        let members = if members.is_empty() {
            std::slice::from_ref(me)
        } else {
            members
        };
        Blocks {
            me,
            request,
            repetitions,
            len: block_len(repetitions, members.len()),
            members,
            index: members.iter().position(|m| m == me).unwrap_or(0),
            request_hash: hash64(request.as_str()),
            short_runs: false,
            dealt_open: true,
            ahead: 0,
        }
    }

    /// The member a block (by its first rank) or a rank is dealt to.
    fn dealt(&self, n: u32) -> usize {
        let offset = self.request_hash;
        (u64::from(n).wrapping_add(offset) % self.members.len() as u64) as usize
    }

    /// How many blocks the request has.
    fn blocks(&self) -> u64 {
        u64::from(self.repetitions.div_ceil(self.len.max(1))).max(1)
    }

    /// Where this node's run of members starts, counted from the one the
    /// request's first blocks go to (a hash of the request).
    fn turn(&self) -> u64 {
        let n = self.members.len() as u64;
        (self.index as u64 + n - self.request_hash % n) % n
    }

    /// Whether the block starting at `first` is dealt to this node.
    fn dealt_to_me(&self, first: u32) -> bool {
        self.block_dealt(first) == self.index
    }

    /// The member the block starting at `first` is dealt to. Blocks are
    /// dealt in runs, an equal share of consecutive blocks per member (from
    /// a member the request's hash picks), so a node sweeps its share in
    /// order and meets another's only at its end.
    fn block_dealt(&self, first: u32) -> usize {
        let (n, k) = (
            self.members.len() as u64,
            u64::from(first / self.len.max(1)),
        );
        let turn = k * n / self.blocks();
        ((turn + self.request_hash % n) % n) as usize
    }

    /// Where this node starts scanning: the first rank of its share of
    /// blocks; with no share (more members than blocks), a place drawn from
    /// its id (`schedule::scan_start`).
    pub fn start(&self) -> u32 {
        let (n, b) = (self.members.len() as u64, self.blocks());
        let first = (self.turn() * b).div_ceil(n);
        if first * n / b == self.turn() && first < b {
            u32::try_from(first).unwrap_or(0) * self.len
        } else {
            block_start(
                scan_start(self.me, self.request, self.repetitions),
                self.len,
            )
        }
    }

    /// Whether `rank` of a block another node holds is this node's to help
    /// with first. The ranks are dealt out too, so that helpers do not chase
    /// the same one: to the first member alive (as this node sees it) in an
    /// order drawn for the rank, the block's holder among them; the ranks
    /// of a holder declared down are spread over the others, not taken by
    /// all. Ranks dealt to others come after, so no slot idles while runs
    /// wait.
    fn rank_dealt_to_me(&self, rank: u32, alive: &impl Fn(&NodeId) -> bool) -> bool {
        self.rank_dealt(rank, alive).is_none_or(|m| m == self.index)
    }

    /// The member a rank of a held block is dealt to: the first in the
    /// rank's draw that is this node or alive; `None` when nobody in the
    /// draw is (then any helper may take it).
    fn rank_dealt(&self, rank: u32, alive: &impl Fn(&NodeId) -> bool) -> Option<usize> {
        const PROBES: u32 = 8;
        let n = self.members.len() as u64;
        (0..PROBES)
            .map(|i| {
                if i == 0 {
                    self.dealt(rank)
                } else {
                    (hash64(&format!("{}/{rank}/{i}", self.request)) % n) as usize
                }
            })
            .find(|&m| m == self.index || alive(&self.members[m]))
    }

    /// Whether the holder of a block leaves `rank` to one of the block's
    /// `helpers` for now: the rank is dealt to a helper already working
    /// there from the block's end, which will reach it. Taken last if
    /// still queued, so a helper that went away leaves nothing behind.
    fn left_to_helper(
        &self,
        rank: u32,
        helpers: &[NodeId],
        alive: &impl Fn(&NodeId) -> bool,
    ) -> bool {
        !helpers.is_empty()
            && self
                .rank_dealt(rank, alive)
                .is_some_and(|m| m != self.index && helpers.contains(&self.members[m]))
    }

    /// This node's order among blocks dealt to others, the same on every pass.
    fn preference(&self, first: u32) -> u64 {
        hash64(&format!("{}/{}/{first}", self.me, self.request))
    }

    /// Walks `tried` ranks, then `fresh` ranks in scan order, and keeps the
    /// first `want` that `queued` says may be claimed (with the epoch the
    /// claim must use). `holder` is asked once per block, with its first
    /// rank. Fresh ranks come from this node's blocks first (held, or
    /// untouched and dealt to it), then from an untouched block dealt to
    /// another (one of the first [`BLOCK_CHOICES`] met, in this node's own
    /// order), and only then from blocks another node holds (those with most
    /// left first), each from its end. In a block it holds, ranks dealt to a
    /// node helping there come last of all (see [`Blocks::left_to_helper`]):
    /// holder and helper do not meet on the same rank. Past `want`, up to
    /// [`Blocks::ahead`] more are kept, from blocks this node holds only.
    pub fn first_queued(
        &self,
        tried: impl IntoIterator<Item = u32>,
        fresh: impl IntoIterator<Item = u32>,
        want: usize,
        queued: impl FnMut(u32) -> Option<u32>,
        mut holder: impl FnMut(u32) -> BlockView,
        alive: impl Fn(&NodeId) -> bool,
    ) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let cap = want + self.ahead;
        if cap == 0 {
            return out;
        }
        // `mine`: the rank is in a block this node holds, and not left to a
        // helper there (the only ranks claimed ahead).
        let queued = std::cell::RefCell::new(queued);
        let take = |rank: u32, mine: bool, out: &mut Vec<(u32, u32)>| {
            if (out.len() < want || mine)
                && let Some(epoch) = (queued.borrow_mut())(rank)
            {
                out.push((rank, epoch));
            }
            out.len() == cap
        };
        for rank in tried {
            if take(rank, false, &mut out) {
                return out;
            }
        }
        let len = self.len.max(1);
        // Blocks met in scan order, with their fresh ranks: untouched ones
        // dealt to others (the first few) and those others hold.
        let mut untouched: Vec<(u32, Vec<u32>)> = Vec::new();
        let mut others: Vec<(u32, Vec<u32>)> = Vec::new();
        let mut held: BTreeMap<u32, BlockView> = BTreeMap::new();
        // Ranks of this node's blocks left to their helpers for now.
        let mut deferred: Vec<u32> = Vec::new();
        // Blocks of short runs held by another live node: their lowest
        // queued ranks are left to it (`SHORT_HELP_LEAD`).
        let mut led: Vec<u32> = Vec::new();
        for rank in fresh {
            let first = block_start(rank, len);
            let view = held.entry(first).or_insert_with(|| holder(first));
            let list = match view.holder {
                Holder::Nobody if self.dealt_to_me(first) => {
                    if take(rank, false, &mut out) {
                        return out;
                    }
                    continue;
                }
                Holder::Me => {
                    if self.left_to_helper(rank, &view.helpers, &alive) {
                        deferred.push(rank);
                        continue;
                    }
                    // Ahead only in its own share: a block dealt to another
                    // may be held, in their replicas, by that node too.
                    if take(rank, self.dealt_to_me(first), &mut out) {
                        return out;
                    }
                    continue;
                }
                // Its member claims it as soon as it sees the request.
                Holder::Nobody
                    if !self.dealt_open && alive(&self.members[self.block_dealt(first)]) =>
                {
                    continue;
                }
                // Enough to choose from: blocks of this node beyond are
                // found again once these are taken.
                Holder::Nobody if opens_past(&untouched, first, BLOCK_CHOICES) => break,
                Holder::Nobody => &mut untouched,
                // Enough to help in: the scan of a large request's every
                // fresh rank on each free slot stops here.
                Holder::Other if opens_past(&others, first, HELP_CHOICES) => break,
                Holder::Other => {
                    if self.short_runs
                        && view.by.as_ref().is_some_and(&alive)
                        && !led.contains(&first)
                    {
                        led.push(first);
                    }
                    &mut others
                }
            };
            match list.last_mut() {
                Some((b, ranks)) if *b == first => ranks.push(rank),
                _ => list.push((first, vec![rank])),
            }
        }
        untouched.sort_by_cached_key(|(b, _)| self.preference(*b));
        for (_, ranks) in untouched {
            for rank in ranks {
                if take(rank, false, &mut out) {
                    return out;
                }
            }
        }
        // Only blocks others hold are left: help from their ends with the
        // ranks dealt to this node, in the blocks with the most ranks left
        // first: their holders are far from the end, and have seen this
        // node's claims there before they come near them.
        for (_, ranks) in others.iter_mut().filter(|(b, _)| led.contains(b)) {
            ranks.sort_unstable();
            let mut lead = SHORT_HELP_LEAD;
            ranks.retain(|&r| {
                let left = lead > 0 && (queued.borrow_mut())(r).is_some();
                lead -= usize::from(left);
                !left
            });
        }
        others
            .sort_by_cached_key(|(b, ranks)| (std::cmp::Reverse(ranks.len()), self.preference(*b)));
        for (_, ranks) in &others {
            for &rank in ranks.iter().rev() {
                if self.rank_dealt_to_me(rank, &alive) && take(rank, false, &mut out) {
                    return out;
                }
            }
        }
        // Then the rest, from the ends too: a busy holder's long runs do not
        // wait for it while this node's slots idle (it cost lab ×1.095 →
        // ×1.181 when they did). Short runs are left to their holder: it
        // gets to them soon, and a helper would meet it on them.
        if self.short_runs {
            others.clear();
        }
        for (_, ranks) in others {
            for rank in ranks.into_iter().rev() {
                if !self.rank_dealt_to_me(rank, &alive) && take(rank, false, &mut out) {
                    return out;
                }
            }
        }
        for rank in deferred {
            if take(rank, false, &mut out) {
                return out;
            }
        }
        out
    }
}

/// Whether the block starting at `first` would be one more than `cap` in
/// `list` (blocks met so far, each with its ranks, in scan order).
fn opens_past(list: &[(u32, Vec<u32>)], first: u32, cap: usize) -> bool {
    list.last().is_none_or(|(b, _)| *b != first) && list.len() == cap
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

    fn ids() -> ([NodeId; 2], RequestId) {
        (
            [NodeId::new("a"), NodeId::new("z")],
            RequestId::from_bytes([1; 8]),
        )
    }

    /// Ranks 0..20 in blocks of 5; block 5..10 is another node's, block
    /// 10..15 is this node's, the others untouched; all ranks queued. Two
    /// members, this node the first.
    fn pick(b: &Blocks, want: usize, start: u32) -> Vec<u32> {
        let fresh = (start..20).chain(0..start);
        b.first_queued(
            Vec::new(),
            fresh,
            want,
            |_| Some(0),
            |first| {
                BlockView::held_by(match first {
                    5 => Holder::Other,
                    10 => Holder::Me,
                    _ => Holder::Nobody,
                })
            },
            // The other member, holder of block 5, is down.
            |n| n.as_str() != "z",
        )
        .into_iter()
        .map(|(r, _)| r)
        .collect()
    }

    fn blocks<'a>(members: &'a [NodeId], r: &'a RequestId) -> Blocks<'a> {
        let mut b = Blocks::new(&members[0], r, 20, members);
        b.len = 5;
        b
    }

    #[test]
    fn a_node_takes_its_own_blocks_then_untouched_ones_then_helps_from_the_end() {
        let (members, r) = ids();
        let b = blocks(&members, &r);
        let got = pick(&b, 20, 3);
        assert_eq!(got.len(), 20);
        // Its own: the block it holds and the untouched ones dealt to it.
        let own = |rank: u32| {
            let first = block_start(rank, 5);
            first == 10 || (first != 5 && b.dealt_to_me(first))
        };
        let n_own = got.iter().filter(|&&r| own(r)).count();
        assert!(got[..n_own].iter().all(|&r| own(r)), "{got:?}");
        assert!(got[..n_own].contains(&10), "{got:?}");
        // Another's block last, from its end: all of it, its holder (the
        // only other member) being down.
        assert_eq!(&got[15..], &[9, 8, 7, 6, 5]);
        // Each untouched block is swept upwards.
        for w in got[..15].windows(2) {
            if block_start(w[0], 5) == block_start(w[1], 5) {
                assert!(w[0] < w[1] || w[1] == 0, "{got:?}");
            }
        }
    }

    /// What `b` takes, `want` at most, from ranks 0..10 all queued in
    /// blocks another node holds, every member alive.
    fn help_in(b: &Blocks, want: usize) -> Vec<u32> {
        b.first_queued(
            Vec::new(),
            0..10,
            want,
            |_| Some(0),
            |_| BlockView::held_by(Holder::Other),
            |_| true,
        )
        .into_iter()
        .map(|(r, _)| r)
        .collect()
    }

    #[test]
    fn helpers_take_their_dealt_ranks_first_and_a_busy_holders_last() {
        let (members, r) = ids();
        let b = blocks(&members, &r);
        let got = help_in(&b, 10);
        let (mine, holders): (Vec<u32>, Vec<u32>) = (0..10)
            .rev()
            .partition(|&r| b.rank_dealt_to_me(r, &|_| true));
        assert!(!mine.is_empty() && !holders.is_empty());
        // Its own first, the holder's only after (far from where the holder
        // works, and no slot stays idle while a busy holder's long runs wait
        // for it); in each block, from the end.
        assert_eq!(got.len(), 10);
        let (first, then) = got.split_at(mine.len());
        assert!(first.iter().all(|r| mine.contains(r)), "{got:?}");
        assert!(then.iter().all(|r| holders.contains(r)), "{got:?}");
        for part in [first, then] {
            for w in part.windows(2) {
                if block_start(w[0], 5) == block_start(w[1], 5) {
                    assert!(w[0] > w[1], "{got:?}");
                }
            }
        }
        // Asked for fewer, it takes only its own.
        let few = help_in(&b, 1);
        assert!(b.rank_dealt_to_me(few[0], &|_| true));
    }

    #[test]
    fn helpers_leave_a_holder_its_short_runs() {
        let (members, r) = ids();
        let mut b = blocks(&members, &r);
        assert!(!short_runs(None) && short_runs(Some(5)) && !short_runs(Some(SHORT_RUN_MS)));
        b.short_runs = true;
        let got = help_in(&b, 10);
        assert!(!got.is_empty());
        assert!(got.iter().all(|&r| b.rank_dealt_to_me(r, &|_| true)));
    }

    /// A block of short runs held by a live node: helpers leave its lowest
    /// queued ranks to it, which it sweeps up through before their claims
    /// could reach it; held by a node that is down, nothing is left.
    #[test]
    fn helpers_leave_the_lowest_queued_short_runs_to_a_live_holder() {
        let (members, r) = ids();
        let mut b = Blocks::new(&members[0], &r, 40, &members);
        b.len = 40;
        b.short_runs = true;
        let run = |alive: bool| -> Vec<u32> {
            b.first_queued(
                Vec::new(),
                0..40,
                40,
                // The holder has run ranks 0..4.
                |r| (r >= 4).then_some(0),
                |_| BlockView {
                    by: Some(members[1].clone()),
                    ..BlockView::held_by(Holder::Other)
                },
                |n| alive || n != &members[1],
            )
            .into_iter()
            .map(|(r, _)| r)
            .collect()
        };
        let got = run(true);
        assert!(!got.is_empty());
        assert!(
            got.iter().all(|&r| r >= 4 + SHORT_HELP_LEAD as u32),
            "{got:?}"
        );
        assert!(
            run(false).contains(&4),
            "a holder that is down leaves it all"
        );
    }

    #[test]
    fn a_holder_leaves_a_helper_its_dealt_ranks_until_nothing_else_is_left() {
        let (members, r) = ids();
        // The holder is the member the block is dealt to (its own share).
        let me = (0..2)
            .find(|&i| {
                let mut b = Blocks::new(&members[i], &r, 10, &members);
                b.len = 10;
                b.dealt_to_me(0)
            })
            .expect("the block is dealt to a member");
        let mut b = Blocks::new(&members[me], &r, 10, &members);
        b.len = 10;
        let helper = members[1 - me].clone();
        let run = |helpers: Vec<NodeId>, want: usize| -> Vec<u32> {
            b.first_queued(
                Vec::new(),
                0..10,
                want,
                |_| Some(0),
                |_| BlockView {
                    holder: Holder::Me,
                    helpers: helpers.clone(),
                    by: None,
                },
                |_| true,
            )
            .into_iter()
            .map(|(r, _)| r)
            .collect()
        };
        let (mine, theirs): (Vec<u32>, Vec<u32>) =
            (0..10).partition(|&r| b.rank_dealt_to_me(r, &|_| true));
        assert!(!mine.is_empty() && !theirs.is_empty());
        // No helper seen: the holder sweeps its block in order.
        assert_eq!(run(Vec::new(), 10), (0..10).collect::<Vec<_>>());
        // A helper works there: its ranks come last, still in order.
        let got = run(vec![helper.clone()], 10);
        assert_eq!(got, [mine.clone(), theirs].concat());
        assert_eq!(run(vec![helper], mine.len()), mine);
    }

    #[test]
    fn a_block_view_names_the_helpers_of_a_block_this_node_holds() {
        let (members, r) = ids();
        let attempt = |node: &NodeId, rank: u32| Attempt::claim(rank, 0, node.clone(), 0);
        let attempts = |rank: u32| -> Cow<'static, [Attempt]> {
            Cow::Owned(match rank {
                2 => vec![attempt(&members[0], 2)],
                8 => vec![attempt(&members[1], 8)],
                _ => Vec::new(),
            })
        };
        let mine = holder(&members[0], &r, 0..10, attempts);
        assert_eq!(mine.holder, Holder::Me);
        assert_eq!(mine.helpers, vec![members[1].clone()]);
        let theirs = holder(&members[1], &r, 0..10, attempts);
        assert_eq!(
            theirs,
            BlockView {
                by: Some(members[0].clone()),
                ..BlockView::held_by(Holder::Other)
            }
        );
    }

    #[test]
    fn untouched_blocks_are_dealt_out_among_the_members() {
        let (r, len) = (RequestId::from_bytes([7; 8]), 4);
        let names: Vec<NodeId> = (0..4).map(|i| NodeId::new(format!("n{i}"))).collect();
        for first in (0..64).step_by(len) {
            let takers = names
                .iter()
                .filter(|me| {
                    let mut b = Blocks::new(me, &r, 64, &names);
                    b.len = len as u32;
                    b.dealt_to_me(first as u32)
                })
                .count();
            assert_eq!(takers, 1, "block {first}");
        }
    }

    #[test]
    fn each_member_starts_at_its_own_share_of_consecutive_blocks() {
        let r = RequestId::from_bytes([9; 8]);
        let names: Vec<NodeId> = (0..4).map(|i| NodeId::new(format!("n{i}"))).collect();
        let mut starts = Vec::new();
        for me in &names {
            let b = Blocks::new(me, &r, 400, &names);
            assert_eq!(b.len, 25);
            let start = b.start();
            assert!(b.dealt_to_me(start), "{me} starts in its own share");
            // Its share: 4 consecutive blocks from its start.
            let own: Vec<u32> = (0..16)
                .map(|k| k * 25)
                .filter(|&f| b.dealt_to_me(f))
                .collect();
            assert_eq!(own, (0..4).map(|k| start + k * 25).collect::<Vec<_>>());
            starts.push(start);
        }
        starts.sort_unstable();
        starts.dedup();
        assert_eq!(starts.len(), 4);
    }

    #[test]
    fn a_one_run_request_waits_for_its_member_within_the_grace() {
        let (members, r) = ids();
        // One run, one block, dealt to one of the two members.
        let [a, z] = [0, 1].map(|i| Blocks::new(&members[i], &r, 1, &members));
        let (dealt, other) = if a.dealt_to_me(0) { (a, z) } else { (z, a) };
        let take = |b: &Blocks, alive: bool| {
            b.first_queued(
                Vec::new(),
                0..1,
                1,
                |_| Some(0),
                |_| BlockView::held_by(Holder::Nobody),
                |_| alive,
            )
        };
        assert_eq!(take(&dealt, true), vec![(0, 0)]);
        let mut waiting = other;
        waiting.dealt_open = false;
        assert_eq!(take(&waiting, true), vec![], "its member claims it");
        assert_eq!(take(&waiting, false), vec![(0, 0)], "its member is down");
        assert_eq!(take(&other, true), vec![(0, 0)], "past the grace");
        assert!(!past_dealt_grace(DEALT_GRACE_MS - 1) && past_dealt_grace(DEALT_GRACE_MS));
    }

    #[test]
    fn ranks_claimed_ahead_come_only_from_blocks_this_node_holds() {
        let (members, r) = ids();
        let mut b = blocks(&members, &r);
        b.ahead = 3;
        // One for a free slot, from anywhere in scan order (here an
        // untouched block of its own); three ahead, all from block 10..15.
        let got = pick(&b, 1, 0);
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[1..].iter().all(|r| (10..15).contains(r)), "{got:?}");
        // Nothing free: only ranks ahead, still only from the held block.
        let got = pick(&b, 0, 0);
        assert_eq!(got, vec![10, 11, 12], "{got:?}");
    }

    #[test]
    fn tried_ranks_come_first_wherever_they_are() {
        let (members, r) = ids();
        let got = blocks(&members, &r).first_queued(
            vec![6],
            0..10,
            2,
            |_| Some(1),
            |first| {
                BlockView::held_by(if first == 5 {
                    Holder::Other
                } else {
                    Holder::Nobody
                })
            },
            |_| true,
        );
        assert_eq!(got[0], (6, 1));
        assert_eq!(got.len(), 2);
    }
}

#[cfg(test)]
mod load_tests {
    use super::*;

    #[test]
    fn only_a_node_busier_than_a_free_neighbour_waits_and_the_busier_the_longer() {
        assert_eq!(load_delay_ms(0.9, None), 0, "no neighbour to leave it to");
        assert_eq!(load_delay_ms(1.0, Some(0.9)), 0, "loaded alike");
        assert_eq!(
            load_delay_ms(0.9, Some(0.6)),
            0,
            "a step of the load average"
        );
        assert_eq!(load_delay_ms(0.5, Some(0.0)), DEALT_GRACE_MS + 500);
        assert!(load_delay_ms(0.9, Some(0.0)) > load_delay_ms(0.5, Some(0.0)));
        assert_eq!(load_delay_ms(50.0, Some(0.0)), LOAD_DELAY_MAX_MS);
        assert_eq!(load_delay_ms(f32::NAN, Some(0.0)), 0);
        assert!(load_delay_ms(0.5, Some(0.0)) > DEALT_GRACE_MS);
    }
}
