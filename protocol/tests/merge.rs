//! Two replicas that edit concurrently and merge agree on every run's outcome.

mod common;

use common::*;
use pesc_protocol::NodeId;
use pesc_protocol::doc::{GridDoc, RequestDoc};
use pesc_protocol::model::{Attempt, AttemptState, Room, RunState};
use proptest::prelude::*;

fn outcome(doc: &RequestDoc) -> Vec<(RunState, Option<String>)> {
    (0..doc.spec().repetitions)
        .map(|r| {
            let v = doc.run(r, |_| true);
            (v.state, v.current.map(|a| a.key()))
        })
        .collect()
}

#[test]
fn concurrent_claims_and_results_converge() {
    let mut a = RequestDoc::create(spec(1, "ana", 6, 0, 10), actor("a", 0)).unwrap();
    a.commit();
    let mut b = replica(&mut a, "b");
    let (na, nb) = (NodeId::new("a"), NodeId::new("b"));
    // Both claim ranks 2 and 3 in epoch 0; each finishes its copies.
    for r in 0..4 {
        let mut x = Attempt::claim(r, 0, na.clone(), 1);
        x.state = AttemptState::Succeeded;
        x.exit_code = Some(0);
        a.put_attempt(&x).unwrap();
    }
    for r in 2..6 {
        let mut x = Attempt::claim(r, 0, nb.clone(), 1);
        x.state = if r == 5 {
            AttemptState::Failed
        } else {
            AttemptState::Succeeded
        };
        b.put_attempt(&x).unwrap();
    }
    b.cancel(&nb, 5).unwrap();
    a.commit();
    b.commit();
    let mut a2 = replica(&mut a, "c");
    a.merge(&mut b).unwrap();
    b.merge(&mut a2).unwrap();
    assert_eq!(outcome(&a), outcome(&b));
    assert!(a.is_cancelled() && b.is_cancelled());
    let o = outcome(&a);
    assert!(o[..5].iter().all(|(s, _)| *s == RunState::Succeeded));
    // Rank 5 failed before anything else; cancellation does not hide a failure's record.
    assert_eq!(o[5].0, RunState::Cancelled);
    // Exactly one result per rank, the same on both replicas.
    for r in 2..4 {
        assert_eq!(a.result_attempt(r), b.result_attempt(r));
    }
}

#[test]
fn grids_started_apart_merge_into_one() {
    let mut g1 = GridDoc::genesis("grid-x", actor("a", 0)).unwrap();
    let mut g2 = GridDoc::genesis("grid-x", actor("b", 0)).unwrap();
    g1.put_room(&Room {
        name: "Lab1".into(),
        public: false,
        admins: vec![],
        users: vec![],
    })
    .unwrap();
    g2.put_room(&Room {
        name: "Lab2".into(),
        public: false,
        admins: vec![],
        users: vec![],
    })
    .unwrap();
    let p = spec(1, "ana", 1, 0, 0).process;
    g2.put_process(&p).unwrap();
    g1.commit();
    g2.commit();
    g1.merge(&mut g2).unwrap();
    let mut names: Vec<_> = g1.rooms().unwrap().into_iter().map(|r| r.name).collect();
    names.sort();
    assert_eq!(names, vec!["General", "Lab1", "Lab2"]);
    assert_eq!(g1.process(&p.id).unwrap(), Some(p));
}

#[test]
fn accounts_tokens_and_placements_made_on_different_nodes_merge() {
    use pesc_protocol::access::{AccessChange, ApiToken, Role, User};
    let mut g1 = GridDoc::genesis("grid-y", actor("a", 0)).unwrap();
    let mut g2 = GridDoc::genesis("grid-y", actor("b", 0)).unwrap();
    let ana = User {
        disabled: false,
        tokens_after_ms: 0,
        name: "ana".into(),
        role: Role::Admin,
        password_hash: "$argon2id$x".into(),
        created_ms: 1,
    };
    g1.change_access(&AccessChange::PutUser(ana.clone()))
        .unwrap();
    let t = ApiToken {
        id: "ab".repeat(32),
        user: "ana".into(),
        label: "cli".into(),
        created_ms: 2,
    };
    g2.change_access(&AccessChange::PutToken(t.clone()))
        .unwrap();
    g2.change_access(&AccessChange::PlaceNode(
        NodeId::new("n1"),
        Some("Lab".into()),
        false,
    ))
    .unwrap();
    g1.commit();
    g2.commit();
    g1.merge(&mut g2).unwrap();
    let a = g1.access().unwrap();
    assert_eq!(a.users, vec![ana]);
    assert_eq!(g1.token(&t.id).unwrap(), Some(t.clone()));
    assert_eq!(a.placement(&NodeId::new("n1")), Some("Lab"));
    // Taking the node out and revoking the token remove the entries.
    g1.change_access(&AccessChange::PlaceNode(NodeId::new("n1"), None, true))
        .unwrap();
    g1.change_access(&AccessChange::RemoveToken(t.id.clone()))
        .unwrap();
    let a = g1.access().unwrap();
    assert!(a.placements.is_empty() && a.tokens.is_empty());
}

#[test]
fn save_load_and_incremental_round_trip() {
    let mut a = RequestDoc::create(spec(2, "ana", 3, 0, 10), actor("a", 0)).unwrap();
    a.commit();
    let mut bytes = a.save();
    let mut x = Attempt::claim(1, 0, NodeId::new("a"), 7);
    a.put_attempt(&x).unwrap();
    a.commit();
    bytes.extend(a.save_incremental());
    x.state = AttemptState::Running;
    x.started_ms = Some(8);
    a.put_attempt(&x).unwrap();
    a.commit();
    bytes.extend(a.save_incremental());
    let b = RequestDoc::load(&bytes, actor("a", 2)).unwrap();
    assert_eq!(b.attempts_of(1), &[x][..]);
    assert!(RequestDoc::load(b"garbage", actor("a", 3)).is_err());
}

#[derive(Debug, Clone)]
enum Op {
    Claim {
        replica: bool,
        node: u8,
        rank: u32,
        epoch: u32,
    },
    Finish {
        replica: bool,
        node: u8,
        rank: u32,
        epoch: u32,
        state: u8,
    },
    Cancel {
        replica: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<bool>(), 0u8..3, 0u32..4, 0u32..3).prop_map(|(replica, node, rank, epoch)| {
            Op::Claim {
                replica,
                node,
                rank,
                epoch,
            }
        }),
        (any::<bool>(), 0u8..3, 0u32..4, 0u32..3, 0u8..5).prop_map(
            |(replica, node, rank, epoch, state)| Op::Finish {
                replica,
                node,
                rank,
                epoch,
                state
            }
        ),
        any::<bool>().prop_map(|replica| Op::Cancel { replica }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Any concurrent edits, merged in either direction, give the same outcome.
    #[test]
    fn merge_is_order_independent(ops in proptest::collection::vec(op(), 0..40)) {
        let mut a = RequestDoc::create(spec(3, "ana", 4, 1, 0), actor("x", 0)).unwrap();
        a.commit();
        let mut b = replica(&mut a, "y");
        for o in ops {
            let (doc, node, rank, epoch, st) = match o {
                Op::Claim { replica, node, rank, epoch } => (replica, node, rank, epoch, None),
                Op::Finish { replica, node, rank, epoch, state } => (replica, node, rank, epoch, Some(state)),
                Op::Cancel { replica } => {
                    let d = if replica { &mut b } else { &mut a };
                    d.cancel(&NodeId::new("z"), 1).unwrap();
                    continue;
                }
            };
            // Each attempt has one writer: node 0 writes on replica a, others on b.
            let on_a = node == 0 || !doc && node == 1;
            let n = NodeId::new(format!("n{node}-{}", if on_a { "a" } else { "b" }));
            let d = if on_a { &mut a } else { &mut b };
            let mut x = Attempt::claim(rank, epoch, n, 1);
            x.state = match st {
                None => AttemptState::Claimed,
                Some(0) => AttemptState::Succeeded,
                Some(1) => AttemptState::Failed,
                Some(2) => AttemptState::Lost,
                Some(3) => AttemptState::Running,
                _ => AttemptState::Error,
            };
            d.put_attempt(&x).unwrap();
        }
        a.commit();
        b.commit();
        let mut a_copy = replica(&mut a, "p");
        let mut b_copy = replica(&mut b, "q");
        a.merge(&mut b_copy).unwrap();
        b.merge(&mut a_copy).unwrap();
        prop_assert_eq!(outcome(&a), outcome(&b));
        prop_assert_eq!(a.counts(|_| true), b.counts(|_| true));
        // The view a merge updated in place is the view a whole read makes.
        let fresh = replica(&mut a, "r");
        prop_assert_eq!(outcome(&fresh), outcome(&a));
        prop_assert_eq!(fresh.counts(|_| true), a.counts(|_| true));
        prop_assert_eq!(
            fresh.unfinished_ranks().collect::<Vec<_>>(),
            a.unfinished_ranks().collect::<Vec<_>>()
        );
        prop_assert_eq!(
            fresh.all_attempts().cloned().collect::<Vec<_>>(),
            a.all_attempts().cloned().collect::<Vec<_>>()
        );
    }
}

#[test]
fn tried_ranks_are_scanned_first() {
    use pesc_protocol::NodeId;
    use pesc_protocol::model::{Attempt, AttemptState};
    let mut a = RequestDoc::create(spec(9, "ana", 10, 0, 0), actor("a", 0)).unwrap();
    // Rank 2 ran on a node that restarted (lost: to run again), rank 8 is
    // running, rank 5 succeeded.
    let mut lost = Attempt::claim(2, 0, NodeId::new("b"), 1);
    lost.state = AttemptState::Lost;
    a.put_attempt(&lost).unwrap();
    a.put_attempt(&Attempt::claim(8, 0, NodeId::new("c"), 1))
        .unwrap();
    let mut done = Attempt::claim(5, 0, NodeId::new("c"), 1);
    done.state = AttemptState::Succeeded;
    a.put_attempt(&done).unwrap();
    let order: Vec<u32> = a.scan_from(6).collect();
    assert_eq!(order, vec![8, 2, 6, 7, 9, 0, 1, 3, 4]);
}
