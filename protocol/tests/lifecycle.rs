//! Property tests of the lease and scheduling path driven like the node does:
//! several nodes with their own replicas claim through `schedule::pick`, runs
//! finish, nodes die and their leases expire, replicas merge.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use pesc_protocol::NodeId;
use pesc_protocol::doc::RequestDoc;
use pesc_protocol::model::{Attempt, AttemptState};
use pesc_protocol::run_view::should_abandon;
use pesc_protocol::schedule::{Candidate, pick};
use proptest::prelude::*;

struct Node {
    id: NodeId,
    doc: RequestDoc,
    slots: usize,
    running: BTreeSet<(u32, u32)>,
    dead: bool,
}

/// Runs one request over `n` nodes until everything is terminal or the step
/// budget is spent. Returns every claim made, as (rank, epoch, node).
fn drive(
    n: usize,
    reps: u32,
    retries: u32,
    choices: &[u8],
) -> (Vec<(u32, u32, NodeId)>, RequestDoc) {
    let mut origin = RequestDoc::create(spec(7, "ana", reps, retries, 0), actor("o", 0)).unwrap();
    origin.commit();
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| Node {
            id: NodeId::new(format!("node{i}")),
            doc: replica(&mut origin, &format!("node{i}")),
            slots: 1 + i % 3,
            running: BTreeSet::new(),
            dead: false,
        })
        .collect();
    let mut claims = Vec::new();
    let mut c = choices.iter().copied().cycle();
    for _step in 0..1500 {
        let i = c.next().unwrap() as usize % n;
        let action = c.next().unwrap() % 10;
        let dead: BTreeSet<NodeId> = nodes
            .iter()
            .filter(|x| x.dead)
            .map(|x| x.id.clone())
            .collect();
        if nodes[i].dead {
            // A dead node may come back empty-handed (restart).
            if action == 0 {
                nodes[i].dead = false;
                let me = nodes[i].id.clone();
                let stale: Vec<Attempt> = nodes[i]
                    .doc
                    .all_attempts()
                    .filter(|a| a.node == me && !a.state.is_terminal())
                    .cloned()
                    .collect();
                for mut a in stale {
                    a.state = AttemptState::Lost;
                    nodes[i].doc.put_attempt(&a).unwrap();
                }
            }
            continue;
        }
        match action {
            // Claim through the scheduler, like the agent.
            0..=3 => {
                let node = &mut nodes[i];
                let me = node.id.clone();
                let running = node.running.clone();
                let live = |a: &Attempt| {
                    if a.node == me {
                        running.contains(&(a.rank, a.epoch))
                    } else {
                        !dead.contains(&a.node)
                    }
                };
                let free = node.slots.saturating_sub(node.running.len());
                let cands: Vec<Candidate> = node
                    .doc
                    .unfinished_ranks()
                    .filter_map(|r| {
                        let v = node.doc.run(r, live);
                        (v.state == pesc_protocol::model::RunState::Queued).then(|| Candidate {
                            request: node.doc.id().clone(),
                            owner: "ana".into(),
                            created_ms: 0,
                            rank: r,
                            epoch: v.next_epoch,
                        })
                    })
                    .collect();
                for p in pick(cands, &BTreeMap::new(), free) {
                    claims.push((p.rank, p.epoch, me.clone()));
                    node.doc
                        .put_attempt(&Attempt::claim(p.rank, p.epoch, me.clone(), 0))
                        .unwrap();
                    node.running.insert((p.rank, p.epoch));
                }
            }
            // Finish one running attempt with some outcome.
            4..=6 => {
                let node = &mut nodes[i];
                if let Some(&(rank, epoch)) = node.running.iter().next() {
                    node.running.remove(&(rank, epoch));
                    let mut a = Attempt::claim(rank, epoch, node.id.clone(), 0);
                    a.state = match c.next().unwrap() % 4 {
                        0 => AttemptState::Failed,
                        1 => AttemptState::Error,
                        _ => AttemptState::Succeeded,
                    };
                    node.doc.put_attempt(&a).unwrap();
                }
            }
            // Sync with another node, then drop copies that lost.
            7 | 8 => {
                let j = c.next().unwrap() as usize % n;
                if i != j && !nodes[j].dead {
                    let (lo, hi) = (i.min(j), i.max(j));
                    let (left, right) = nodes.split_at_mut(hi);
                    left[lo].doc.merge(&mut right[0].doc).unwrap();
                    right[0].doc.merge(&mut left[lo].doc).unwrap();
                    for k in [i, j] {
                        let node = &mut nodes[k];
                        let mine: Vec<(u32, u32)> = node.running.iter().copied().collect();
                        for (rank, epoch) in mine {
                            let me = Attempt::claim(rank, epoch, node.id.clone(), 0);
                            if should_abandon(
                                node.doc.id(),
                                &me,
                                node.doc.attempts_of(rank),
                                node.doc.is_cancelled(),
                            )
                            .is_some()
                            {
                                node.running.remove(&(rank, epoch));
                                let mut y = me;
                                y.state = AttemptState::Yielded;
                                node.doc.put_attempt(&y).unwrap();
                            }
                        }
                    }
                }
            }
            // Crash: running attempts stay "running" in the documents.
            _ => {
                if nodes.iter().filter(|x| !x.dead).count() > 1 {
                    nodes[i].dead = true;
                    nodes[i].running.clear();
                }
            }
        }
    }
    // Heal: everyone alive, everyone synced, every node keeps working until done.
    for node in nodes.iter_mut() {
        node.dead = false;
    }
    let mut merged = replica(&mut origin, "final");
    for round in 0..200 {
        for node in nodes.iter_mut() {
            merged.merge(&mut node.doc).unwrap();
        }
        if merged.is_finished() {
            break;
        }
        // One node that knows everything finishes the rest sequentially.
        let me = NodeId::new("finisher");
        let ranks: Vec<u32> = merged.unfinished_ranks().collect();
        for r in ranks {
            let v = merged.run(r, |a| a.node == me);
            if v.state == pesc_protocol::model::RunState::Queued {
                claims.push((r, v.next_epoch, me.clone()));
                let mut a = Attempt::claim(r, v.next_epoch, me.clone(), 0);
                a.state = if round % 2 == 0 {
                    AttemptState::Error
                } else {
                    AttemptState::Succeeded
                };
                merged.put_attempt(&a).unwrap();
            }
        }
    }
    (claims, merged)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// No node claims the same run twice in one epoch, and every run ends terminal.
    #[test]
    fn claims_unique_and_runs_terminate(
        n in 1usize..4,
        reps in 1u32..12,
        retries in 0u32..2,
        choices in proptest::collection::vec(any::<u8>(), 16..64),
    ) {
        let (claims, merged) = drive(n, reps, retries, &choices);
        let mut seen = BTreeSet::new();
        for c in &claims {
            prop_assert!(seen.insert(c.clone()), "claimed twice: {:?}", c);
        }
        prop_assert!(merged.is_finished());
        for r in 0..reps {
            prop_assert!(merged.run(r, |_| false).state.is_terminal());
        }
    }

    /// Fair share: a user picked while another user still had candidates never
    /// ends up more than one run ahead of that user.
    #[test]
    fn fair_share_bound(
        users in proptest::collection::vec((0u32..6, 0u32..30), 1..5),
        slots in 0usize..24,
    ) {
        let mut cands = Vec::new();
        let mut busy = BTreeMap::new();
        for (u, (load, queued)) in users.iter().enumerate() {
            let owner = format!("u{u}");
            busy.insert(owner.clone(), *load);
            for rank in 0..*queued {
                cands.push(Candidate {
                    request: pesc_protocol::RequestId::from_bytes([u as u8; 8]),
                    owner: owner.clone(),
                    created_ms: u as u64,
                    rank,
                    epoch: 0,
                });
            }
        }
        let total = cands.len();
        let got = pick(cands, &busy, slots);
        prop_assert_eq!(got.len(), slots.min(total));
        let mut picked: BTreeMap<String, u32> = BTreeMap::new();
        for g in &got {
            *picked.entry(g.owner.clone()).or_default() += 1;
        }
        for (a, (la, _)) in users.iter().enumerate() {
            let pa = picked.get(&format!("u{a}")).copied().unwrap_or(0);
            if pa == 0 { continue; }
            for (b, (lb, qb)) in users.iter().enumerate() {
                let pb = picked.get(&format!("u{b}")).copied().unwrap_or(0);
                if pb < *qb {
                    // b still had runs waiting, so a's last pick was at most b's load.
                    prop_assert!(la + pa - 1 <= lb + pb, "u{a} {la}+{pa} vs u{b} {lb}+{pb}");
                }
            }
        }
    }
}
