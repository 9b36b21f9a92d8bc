//! Parallel requests (gangs) stepped through the in-process harness: real
//! `Node`s, virtual time, a simulated link.

use std::cell::RefCell;
use std::rc::Rc;

use pesc_protocol::api::RequestInfo;
use pesc_protocol::harness::{Harness, Program};
use pesc_protocol::model::{AttemptState, RequestState, RunState};
use pesc_protocol::node::{Exit, GangJob};
use pesc_protocol::{NodeId, RequestId};

fn info(h: &Harness, on: &NodeId, id: &RequestId) -> Option<RequestInfo> {
    h.node(on)?.get(h.now(), id.as_str(), true).ok()
}

fn settled_everywhere(h: &Harness, id: &RequestId) -> bool {
    h.ids()
        .iter()
        .filter(|n| h.is_up(n))
        .all(|n| info(h, n, id).is_some_and(|i| i.state.is_terminal()))
}

fn grid(h: &mut Harness, slots: &[u32]) -> Vec<NodeId> {
    slots
        .iter()
        .enumerate()
        .map(|(i, s)| h.add_node(&format!("n{i}"), *s))
        .collect()
}

/// A start the program saw: node, (rank, epoch), where rank 0 is.
type Start = (NodeId, (u32, u32), Option<GangJob>);

/// A program that runs `ms` and exits as `exit(rank, epoch)` says,
/// recording every start.
fn recording(
    ms: u64,
    exit: impl Fn(u32, u32) -> Exit + 'static,
) -> (Program, Rc<RefCell<Vec<Start>>>) {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let log = seen.clone();
    let p: Program = Box::new(move |node, job| {
        log.borrow_mut()
            .push((node.clone(), (job.key.1, job.key.2), job.gang.clone()));
        (ms, exit(job.key.1, job.key.2))
    });
    (p, seen)
}

fn parallel(h: &mut Harness, on: &NodeId, world: u32, same_node: bool, retries: u32) -> RequestId {
    h.submit_gang(on, "ana", world, same_node, retries)
}

/// Per rank, the attempt that stands for it: (state, node, epoch, start).
fn runs(h: &Harness, on: &NodeId, id: &RequestId) -> Vec<(RunState, NodeId, u32, u64)> {
    info(h, on, id)
        .and_then(|i| i.runs)
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            (
                r.state,
                r.node.expect("a node"),
                r.attempt.expect("an attempt"),
                r.started_ms.unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn no_rank_starts_until_every_rank_has_a_slot_then_all_start_together() {
    let (program, seen) = recording(3_000, |_, _| Exit::Code(0));
    let mut h = Harness::new(11, program);
    let n = grid(&mut h, &[1, 1, 1]);
    h.run_for(5_000);
    // One node is busy for 8 s: the gang of 3 must wait for its slot.
    let busy = h.submit(&n[2], "bia", 1);
    h.run_for(200);
    let id = parallel(&mut h, &n[0], 3, false, 0);
    h.run_for(2_000);
    let i = info(&h, &n[0], &id).unwrap();
    assert_eq!(
        i.counts.running, 0,
        "a rank started before the gang gathered"
    );
    assert!(
        i.gang
            .as_deref()
            .is_some_and(|g| g.starts_with("waiting for 1 more slot")),
        "{:?}",
        i.gang
    );
    assert!(h.run_until_true(60_000, |h| settled_everywhere(h, &id)));
    let i = info(&h, &n[0], &id).unwrap();
    assert_eq!(i.state, RequestState::Succeeded, "{i:?}");
    let r = runs(&h, &n[0], &id);
    let starts: Vec<u64> = r.iter().map(|x| x.3).collect();
    let spread = starts.iter().max().unwrap() - starts.iter().min().unwrap();
    assert!(
        spread <= 1_000,
        "ranks started {spread} ms apart: {starts:?}"
    );
    // Every rank was told the same rank 0 and port: rank 0's node.
    let gang_starts: Vec<Start> = seen
        .borrow()
        .iter()
        .filter(|s| s.2.is_some())
        .cloned()
        .collect();
    assert_eq!(gang_starts.len(), 3, "{gang_starts:?}");
    let zero = &r[0].1;
    for (_, _, g) in &gang_starts {
        let g = g.as_ref().unwrap();
        assert_eq!(&g.master, zero);
        assert_eq!(g.port, gang_starts[0].2.as_ref().unwrap().port);
        assert_eq!((g.local_rank, g.local_world_size), (0, 1));
    }
    assert!(info(&h, &n[0], &busy).unwrap().state.is_terminal());
}

#[test]
fn a_failing_rank_stops_the_gang_and_every_rank_starts_again() {
    // Rank 1 fails in round 0; the gang's one retry runs every rank again.
    let (program, seen) = recording(1_000, |rank, epoch| {
        if rank == 1 && epoch == 0 {
            Exit::Code(3)
        } else {
            Exit::Code(0)
        }
    });
    let mut h = Harness::new(12, program);
    let n = grid(&mut h, &[2, 2]);
    h.run_for(5_000);
    let id = parallel(&mut h, &n[0], 3, false, 1);
    assert!(h.run_until_true(60_000, |h| settled_everywhere(h, &id)));
    let i = info(&h, &n[1], &id).unwrap();
    assert_eq!(i.state, RequestState::Succeeded, "{i:?}");
    let r = runs(&h, &n[1], &id);
    assert!(
        r.iter().all(|x| x.2 == 1),
        "every result is from round 1: {r:?}"
    );
    let rounds: Vec<u32> = seen.borrow().iter().map(|s| (s.1).1).collect();
    assert_eq!(rounds.iter().filter(|&&e| e == 1).count(), 3, "{rounds:?}");
    // With no retries left, the gang fails.
    let id = parallel(&mut h, &n[0], 3, false, 0);
    assert!(h.run_until_true(60_000, |h| settled_everywhere(h, &id)));
    // (Round 0 of this request fails again: rank 1, epoch 0.)
    assert_eq!(info(&h, &n[0], &id).unwrap().state, RequestState::Failed);
}

#[test]
fn a_node_dying_mid_gang_restarts_the_gang_elsewhere() {
    let (program, _) = recording(20_000, |_, _| Exit::Code(0));
    let mut h = Harness::new(13, program);
    h.set_lease_ttl(6_000);
    let n = grid(&mut h, &[1, 1, 1, 1]);
    h.run_for(5_000);
    let id = parallel(&mut h, &n[0], 3, false, 0);
    assert!(h.run_until_true(10_000, |h| {
        info(h, &n[0], &id).is_some_and(|i| i.counts.running == 3)
    }));
    let victim = runs(&h, &n[0], &id)
        .into_iter()
        .map(|x| x.1)
        .find(|x| x != &n[0])
        .unwrap();
    h.crash(&victim);
    assert!(h.run_until_true(120_000, |h| settled_everywhere(h, &id)));
    let i = info(&h, &n[0], &id).unwrap();
    assert_eq!(i.state, RequestState::Succeeded, "{i:?}");
    let r = runs(&h, &n[0], &id);
    assert!(r.iter().all(|x| x.1 != victim), "{r:?}");
    let round = r[0].2;
    assert!(
        round >= 1 && r.iter().all(|x| x.2 == round),
        "one round: {r:?}"
    );
    // No rank has two results.
    for run in i.runs.unwrap() {
        let wins = run
            .history
            .iter()
            .filter(|a| a.state == AttemptState::Succeeded)
            .count();
        assert_eq!(wins, 1, "rank {}", run.rank);
    }
}

#[test]
fn two_gangs_that_cannot_run_at_once_both_finish() {
    let (program, _) = recording(2_000, |_, _| Exit::Code(0));
    let mut h = Harness::new(14, program);
    let n = grid(&mut h, &[2, 2]);
    h.run_for(5_000);
    // 4 slots, two gangs of 3, submitted on different nodes at once.
    let a = parallel(&mut h, &n[0], 3, false, 0);
    let b = parallel(&mut h, &n[1], 3, false, 0);
    assert!(h.run_until_true(180_000, |h| {
        settled_everywhere(h, &a) && settled_everywhere(h, &b)
    }));
    for id in [&a, &b] {
        assert_eq!(info(&h, &n[0], id).unwrap().state, RequestState::Succeeded);
    }
    assert!(h.observed.over_slots.is_empty());
}

#[test]
fn a_same_node_gang_runs_on_one_node_with_local_ranks() {
    // Two nodes could hold the gang and claim it at once: rank 0's claim
    // decides, every seed.
    for seed in 0..8 {
        let (program, seen) = recording(1_000, |_, _| Exit::Code(0));
        let mut h = Harness::new(150 + seed, program);
        let n = grid(&mut h, &[1, 4, 4]);
        h.run_for(5_000);
        let id = parallel(&mut h, &n[0], 4, true, 0);
        assert!(h.run_until_true(60_000, |h| settled_everywhere(h, &id)));
        let r = runs(&h, &n[0], &id);
        if std::env::var_os("GANG_DEBUG").is_some() {
            for run in info(&h, &n[0], &id).unwrap().runs.unwrap() {
                eprintln!("rank {}: {:?}", run.rank, run.history);
            }
        }
        assert!(
            r.iter()
                .all(|x| x.0 == RunState::Succeeded && x.1 == r[0].1 && x.1 != n[0]),
            "seed {seed}: {r:?}"
        );
        let mut local: Vec<(u32, u32)> = seen
            .borrow()
            .iter()
            .filter_map(|s| s.2.as_ref().map(|g| (g.local_rank, g.local_world_size)))
            .collect();
        local.sort();
        assert_eq!(
            local,
            vec![(0, 4), (1, 4), (2, 4), (3, 4)],
            "seed {seed}: {:?}",
            seen.borrow()
        );
    }
    let (program, _) = recording(1_000, |_, _| Exit::Code(0));
    let mut h = Harness::new(15, program);
    let n = grid(&mut h, &[1, 4, 1]);
    h.run_for(5_000);
    // More ranks than any node has: it waits, and says why.
    let id = parallel(&mut h, &n[0], 5, true, 0);
    h.run_for(5_000);
    let i = info(&h, &n[0], &id).unwrap();
    assert_eq!(i.counts.queued, 5);
    assert!(
        i.gang
            .as_deref()
            .is_some_and(|g| g.contains("no node of the grid has 5 slots")),
        "{:?}",
        i.gang
    );
}

#[test]
fn a_cancel_stops_every_rank_of_a_running_gang() {
    let (program, _) = recording(60_000, |_, _| Exit::Code(0));
    let mut h = Harness::new(16, program);
    let n = grid(&mut h, &[1, 1, 1]);
    h.run_for(5_000);
    let id = parallel(&mut h, &n[0], 3, false, 0);
    assert!(h.run_until_true(10_000, |h| {
        info(h, &n[0], &id).is_some_and(|i| i.counts.running == 3)
    }));
    let now = h.now();
    h.node_mut(&n[1]).unwrap().cancel(now, id.as_str()).unwrap();
    h.run_for(3_000);
    assert!(n.iter().all(|x| h.running_on(x) == 0), "a rank still runs");
    for x in &n {
        assert_eq!(info(&h, x, &id).unwrap().state, RequestState::Cancelled);
    }
}

#[test]
fn a_stopping_node_hands_back_the_gang_ranks_it_holds_at_once() {
    let (program, _) = recording(8_000, |_, _| Exit::Code(0));
    let mut h = Harness::new(17, program);
    let n = grid(&mut h, &[1, 1, 1, 1, 1]);
    h.run_for(5_000);
    // Two of five nodes busy for 8 s: a gang of 4 holds three slots and
    // waits for a fourth.
    let busy = h.submit(&n[3], "bia", 2);
    h.run_for(500);
    let id = parallel(&mut h, &n[0], 4, false, 0);
    assert!(h.run_until_true(3_000, |h| {
        info(h, &n[0], &id).is_some_and(|i| i.counts.claimed == 3)
    }));
    let holder = runs_claimed_by(&h, &n[0], &id)
        .into_iter()
        .find(|x| x != &n[0])
        .unwrap();
    let t0 = h.now().mono_ms;
    h.stop(&holder);
    assert!(h.run_until_true(5_000, |h| !h.is_up(&holder)));
    assert!(
        h.now().mono_ms - t0 < 2_000,
        "the stop waited for a rank that never started"
    );
    h.restart(&holder);
    assert!(h.run_until_true(120_000, |h| settled_everywhere(h, &id)));
    assert_eq!(info(&h, &n[0], &id).unwrap().state, RequestState::Succeeded);
    assert!(info(&h, &n[0], &busy).unwrap().state.is_terminal());
}

/// Nodes holding a claim on a rank of `id`, as `on` sees it.
fn runs_claimed_by(h: &Harness, on: &NodeId, id: &RequestId) -> Vec<NodeId> {
    info(h, on, id)
        .and_then(|i| i.runs)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.state == RunState::Claimed)
        .filter_map(|r| r.node)
        .collect()
}
