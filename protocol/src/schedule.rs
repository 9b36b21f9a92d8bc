//! The scheduling policy: which claimable runs this node takes for its free slots.
//!
//! Per-user fair share: each free slot goes to the user with the fewest runs
//! in progress on the grid (counting the ones picked in this round), so a user
//! with 1 200 queued runs does not starve a user who submits 5 later. Within
//! a user, older requests first, then lower ranks.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use crate::ids::RequestId;

/// A run this node could claim now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub request: RequestId,
    pub owner: String,
    pub created_ms: u64,
    pub rank: u32,
    /// The epoch the claim must use.
    pub epoch: u32,
}

impl Candidate {
    fn order_key(&self) -> (u64, &RequestId, u32) {
        (self.created_ms, &self.request, self.rank)
    }
}

/// Picks at most `slots` candidates by per-user fair share.
/// `in_progress` counts each user's runs currently claimed or running on the grid.
pub fn pick(
    mut candidates: Vec<Candidate>,
    in_progress: &BTreeMap<String, u32>,
    slots: usize,
) -> Vec<Candidate> {
    if slots == 0 || candidates.is_empty() {
        return Vec::new();
    }
    candidates.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    let mut queues: BTreeMap<String, VecDeque<Candidate>> = BTreeMap::new();
    for c in candidates {
        queues.entry(c.owner.clone()).or_default().push_back(c);
    }
    // Min-heap on (load, oldest waiting request, owner): deterministic ties.
    let mut heap: BinaryHeap<Reverse<(u32, u64, String)>> = queues
        .iter()
        .map(|(owner, q)| {
            let load = in_progress.get(owner).copied().unwrap_or(0);
            Reverse((load, q[0].created_ms, owner.clone()))
        })
        .collect();
    let mut out = Vec::with_capacity(slots);
    while out.len() < slots {
        let Some(Reverse((load, _, owner))) = heap.pop() else {
            break;
        };
        let Some(q) = queues.get_mut(&owner) else {
            continue;
        };
        let Some(c) = q.pop_front() else { continue };
        out.push(c);
        if let Some(next) = q.front() {
            heap.push(Reverse((load + 1, next.created_ms, owner)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(owner: &str, req: u8, created: u64, n: u32) -> Vec<Candidate> {
        (0..n)
            .map(|rank| Candidate {
                request: RequestId::from_bytes([req; 8]),
                owner: owner.into(),
                created_ms: created,
                rank,
                epoch: 0,
            })
            .collect()
    }

    #[test]
    fn late_small_user_is_not_starved() {
        let mut c = cands("ana", 1, 0, 1200);
        c.extend(cands("bia", 2, 1000, 5));
        let mut busy = BTreeMap::new();
        busy.insert("ana".to_string(), 8);
        let got = pick(c, &busy, 8);
        let bia = got.iter().filter(|c| c.owner == "bia").count();
        assert_eq!(bia, 5, "bia's 5 runs all start before ana gets more");
        assert_eq!(got.len(), 8);
    }

    #[test]
    fn within_a_user_oldest_request_then_rank() {
        let mut c = cands("ana", 2, 50, 3);
        c.extend(cands("ana", 1, 10, 3));
        let got = pick(c, &BTreeMap::new(), 4);
        let order: Vec<_> = got
            .iter()
            .map(|c| (c.request.as_str()[..2].to_string(), c.rank))
            .collect();
        assert_eq!(
            order,
            vec![
                ("01".into(), 0),
                ("01".into(), 1),
                ("01".into(), 2),
                ("02".into(), 0)
            ]
        );
    }

    #[test]
    fn no_slots_no_picks() {
        assert!(pick(cands("a", 1, 0, 3), &BTreeMap::new(), 0).is_empty());
    }
}
