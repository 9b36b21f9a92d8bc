//! The protocol core stepped through the in-process harness: several real
//! `Node`s, virtual time, a simulated link. One test per decision, then a
//! property test over random schedules of crashes, partitions, losses and
//! duplicates where nothing in the harness forces the answer.

use std::collections::BTreeMap;

use pesc_protocol::api::RequestInfo;
use pesc_protocol::harness::{Harness, Link};
use pesc_protocol::model::{RequestState, RunState};
use pesc_protocol::node::Exit;
use pesc_protocol::{NodeId, RequestId};
use proptest::prelude::*;

/// The request as node `on` sees it, with its runs.
fn info(h: &Harness, on: &NodeId, id: &RequestId) -> Option<RequestInfo> {
    h.node(on)?.get(h.now(), id.as_str(), true).ok()
}

/// Whether every node up sees the request in a terminal state.
fn settled_everywhere(h: &Harness, id: &RequestId) -> bool {
    h.ids()
        .iter()
        .filter(|n| h.is_up(n))
        .all(|n| info(h, n, id).is_some_and(|i| i.state.is_terminal()))
}

/// Per rank: (state, node, epoch) of the run as `on` sees it.
fn outcome(
    h: &Harness,
    on: &NodeId,
    id: &RequestId,
) -> Vec<(RunState, Option<NodeId>, Option<u32>)> {
    info(h, on, id)
        .and_then(|i| i.runs)
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.state, r.node, r.attempt))
        .collect()
}

/// A list as a user compares it: id, state, counts, version.
fn listed(
    list: Vec<RequestInfo>,
) -> Vec<(
    RequestId,
    RequestState,
    pesc_protocol::run_view::RunCounts,
    u64,
)> {
    list.into_iter()
        .map(|i| (i.id, i.state, i.counts, i.version))
        .collect()
}

fn grid(h: &mut Harness, n: usize, slots: u32) -> Vec<NodeId> {
    (0..n)
        .map(|i| h.add_node(&format!("n{i}"), slots))
        .collect()
}

#[test]
fn a_lone_node_runs_every_rank_in_rank_order_within_its_slots() {
    let mut h = Harness::new(1, Harness::fixed(100));
    let n = grid(&mut h, 1, 2);
    let id = h.submit(&n[0], "ana", 8);
    assert!(h.run_until_true(10_000, |h| settled_everywhere(h, &id)));
    let i = info(&h, &n[0], &id).unwrap();
    assert_eq!(i.state, RequestState::Succeeded);
    let runs = i.runs.unwrap();
    // Two at a time, from rank 0 up: rank r starts in wave r / 2.
    let starts: Vec<u64> = runs.iter().map(|r| r.started_ms.unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    assert!(
        starts[7] - starts[0] >= 300,
        "four waves of two: {starts:?}"
    );
    assert!(h.observed.over_slots.is_empty());
}

#[test]
fn three_nodes_share_a_request_and_every_replica_agrees_on_its_results() {
    let mut h = Harness::new(2, Harness::fixed(200));
    let n = grid(&mut h, 3, 2);
    h.run_for(5_000);
    let id = h.submit(&n[0], "ana", 30);
    assert!(h.run_until_true(60_000, |h| settled_everywhere(h, &id)));
    h.run_for(3_000);
    let first = outcome(&h, &n[0], &id);
    assert!(first.iter().all(|r| r.0 == RunState::Succeeded));
    for x in &n[1..] {
        assert_eq!(outcome(&h, x, &id), first, "{x} sees another outcome");
    }
    for x in &n {
        assert!(
            h.observed.started.get(x).copied().unwrap_or(0) > 0,
            "{x} ran nothing"
        );
    }
}

#[test]
fn two_nodes_claiming_one_run_at_once_end_with_one_result() {
    // One rank, both nodes idle and connected when it arrives: whoever
    // claims, the replicas agree on a single result.
    for seed in 0..10 {
        let mut h = Harness::new(100 + seed, Harness::fixed(500));
        let n = grid(&mut h, 2, 1);
        h.run_for(5_000);
        let id = h.submit(&n[0], "ana", 1);
        assert!(h.run_until_true(30_000, |h| settled_everywhere(h, &id)));
        h.run_for(2_000);
        assert_eq!(
            outcome(&h, &n[0], &id),
            outcome(&h, &n[1], &id),
            "seed {seed}"
        );
        assert_eq!(outcome(&h, &n[0], &id)[0].0, RunState::Succeeded);
    }
}

#[test]
fn the_runs_of_a_crashed_node_are_taken_over_after_its_lease() {
    let mut h = Harness::new(3, Harness::fixed(4_000));
    h.set_lease_ttl(6_000);
    let n = grid(&mut h, 3, 2);
    h.run_for(5_000);
    let id = h.submit(&n[0], "ana", 6);
    h.run_for(500);
    assert!(h.running_on(&n[2]) > 0, "n2 took some runs");
    h.crash(&n[2]);
    assert!(h.run_until_true(60_000, |h| settled_everywhere(h, &id)));
    let i = info(&h, &n[0], &id).unwrap();
    assert_eq!(i.state, RequestState::Succeeded);
    for r in i.runs.unwrap() {
        assert_ne!(
            r.node.as_ref(),
            Some(&n[2]),
            "rank {} kept on a dead node",
            r.rank
        );
    }
}

#[test]
fn a_partitioned_grid_heals_into_one_outcome() {
    let mut h = Harness::new(4, Harness::fixed(1_000));
    h.set_lease_ttl(4_000);
    let n = grid(&mut h, 4, 1);
    h.run_for(5_000);
    let id = h.submit(&n[0], "ana", 12);
    h.run_for(300);
    h.partition(&n[2..]);
    h.run_for(20_000);
    h.heal();
    assert!(h.run_until_true(60_000, |h| settled_everywhere(h, &id)));
    h.run_for(5_000);
    let first = outcome(&h, &n[0], &id);
    assert!(
        first.iter().all(|r| r.0 == RunState::Succeeded),
        "{first:?}"
    );
    for x in &n[1..] {
        assert_eq!(outcome(&h, x, &id), first, "{x} disagrees after the heal");
    }
}

#[test]
fn a_restarted_node_reruns_what_it_was_running_from_its_persisted_chunks() {
    let mut h = Harness::new(5, Harness::fixed(1_000));
    let n = grid(&mut h, 1, 2);
    let id = h.submit(&n[0], "ana", 6);
    h.run_for(1_500);
    let before = info(&h, &n[0], &id).unwrap();
    assert_eq!(before.counts.succeeded, 2);
    h.crash(&n[0]);
    h.run_for(1_000);
    h.restart(&n[0]);
    assert!(h.run_until_true(20_000, |h| settled_everywhere(h, &id)));
    let i = info(&h, &n[0], &id).unwrap();
    assert_eq!(i.state, RequestState::Succeeded);
    // Ranks 2 and 3 were running at the crash: lost, then run again.
    let runs = i.runs.unwrap();
    for r in &runs[2..4] {
        assert_eq!(r.attempts, 2, "rank {} ran again", r.rank);
    }
    for r in &runs[..2] {
        assert_eq!(r.attempts, 1, "rank {} kept its result", r.rank);
    }
}

#[test]
fn a_cancel_on_one_node_stops_the_runs_on_every_node() {
    let mut h = Harness::new(6, Harness::fixed(60_000));
    let n = grid(&mut h, 3, 2);
    h.run_for(5_000);
    let id = h.submit(&n[0], "ana", 6);
    h.run_for(2_000);
    let busy: usize = n.iter().map(|x| h.running_on(x)).sum();
    assert_eq!(busy, 6);
    let now = h.now();
    h.node_mut(&n[1]).unwrap().cancel(now, id.as_str()).unwrap();
    h.run_for(3_000);
    let busy: usize = n.iter().map(|x| h.running_on(x)).sum();
    assert_eq!(busy, 0, "every program stopped");
    for x in &n {
        assert_eq!(info(&h, x, &id).unwrap().state, RequestState::Cancelled);
    }
}

/// Runs of `id` that `on` shows claimed (by any node) but not started.
fn claimed_not_started(h: &Harness, on: &NodeId, id: &RequestId) -> usize {
    outcome(h, on, id)
        .iter()
        .filter(|(s, ..)| *s == RunState::Claimed)
        .count()
}

#[test]
fn short_runs_are_claimed_ahead_and_each_starts_as_a_slot_frees() {
    // Runs of 5 ms: short once the node has run one.
    let mut h = Harness::new(8, Harness::fixed(5));
    let n = grid(&mut h, 1, 2);
    let id = h.submit(&n[0], "ana", 60);
    // Claimed ahead: more runs held than the node has slots.
    let mut most_held = 0;
    let done = h.run_until_true(10_000, |h| {
        let held = outcome(h, &n[0], &id)
            .iter()
            .filter(|(s, ..)| matches!(s, RunState::Claimed | RunState::Running))
            .count();
        most_held = most_held.max(held);
        settled_everywhere(h, &id)
    });
    assert!(done);
    assert!(most_held > 2, "no run was ever claimed ahead");
    assert!(
        h.observed.over_slots.is_empty(),
        "{:?}",
        h.observed.over_slots
    );
    let i = info(&h, &n[0], &id).unwrap();
    assert_eq!(i.state, RequestState::Succeeded);
    for r in i.runs.unwrap() {
        assert_eq!(r.attempts, 1, "rank {} ran more than once", r.rank);
    }
}

#[test]
fn the_start_of_a_short_run_is_not_written_unless_it_runs_on() {
    // How many runs the request's document ever shows running.
    let seen_running = |ms: u64| {
        let mut h = Harness::new(12, Harness::fixed(ms));
        let n = grid(&mut h, 1, 1);
        let id = h.submit(&n[0], "ana", 20);
        let mut seen = std::collections::BTreeSet::new();
        // Looked at every millisecond.
        for _ in 0..60_000 {
            if settled_everywhere(&h, &id) {
                return seen.len();
            }
            for (rank, (s, ..)) in outcome(&h, &n[0], &id).into_iter().enumerate() {
                if s == RunState::Running {
                    seen.insert(rank);
                }
            }
            h.run_for(1);
        }
        panic!("the request did not end");
    };
    // 30 ms runs: only the first (the node does not know them short yet).
    assert!(seen_running(30) <= 1, "{}", seen_running(30));
    // 500 ms runs: each is written running.
    assert!(seen_running(500) >= 5, "{}", seen_running(500));
}

#[test]
fn runs_claimed_ahead_end_at_once_when_cancelled_or_handed_back() {
    // Cancelled: nothing claimed ahead stays claimed.
    let mut h = Harness::new(9, Harness::fixed(5));
    let n = grid(&mut h, 2, 2);
    h.run_for(5_000);
    let id = h.submit(&n[0], "ana", 2_000);
    assert!(h.run_until_true(10_000, |h| claimed_not_started(h, &n[0], &id) > 0));
    let now = h.now();
    h.node_mut(&n[0]).unwrap().cancel(now, id.as_str()).unwrap();
    assert!(h.run_until_true(5_000, |h| settled_everywhere(h, &id)));
    for x in &n {
        let i = info(&h, x, &id).unwrap();
        assert_eq!(i.state, RequestState::Cancelled);
        assert_eq!(claimed_not_started(&h, x, &id), 0);
    }
    // Handed back by a stopping node: the other node runs them, long before
    // any lease runs out.
    let mut h = Harness::new(10, Harness::fixed(5));
    h.set_lease_ttl(600_000);
    let n = grid(&mut h, 2, 2);
    h.run_for(5_000);
    let id = h.submit(&n[0], "ana", 2_000);
    assert!(h.run_until_true(10_000, |h| {
        h.node(&n[1]).is_some_and(|x| x.metrics(h.now()).leases > 2)
    }));
    h.stop(&n[1]);
    assert!(h.run_until_true(60_000, |h| settled_everywhere(h, &id)));
    assert_eq!(info(&h, &n[0], &id).unwrap().state, RequestState::Succeeded);
}

#[test]
fn a_slot_takes_its_next_run_while_the_last_ones_results_are_copied() {
    let mut h = Harness::new(11, Harness::fixed(300));
    h.set_copy_ms(200);
    let n = grid(&mut h, 2, 1);
    h.run_for(5_000);
    let id = h.submit(&n[0], "ana", 8);
    assert!(h.run_until_true(20_000, |h| settled_everywhere(h, &id)));
    assert!(
        h.observed.over_slots.is_empty(),
        "{:?}",
        h.observed.over_slots
    );
    let runs = info(&h, &n[0], &id).unwrap().runs.unwrap();
    assert!(runs.iter().all(|r| r.state == RunState::Succeeded));
    // On a node of one slot, a run started before the one before it ended
    // (its results still being copied).
    let overlapped = n.iter().any(|x| {
        let mut spans: Vec<(u64, u64)> = runs
            .iter()
            .filter(|r| r.node.as_ref() == Some(x))
            .map(|r| (r.started_ms.unwrap(), r.finished_ms.unwrap()))
            .collect();
        spans.sort_unstable();
        spans.windows(2).any(|w| w[1].0 < w[0].1)
    });
    assert!(overlapped, "{runs:?}");
}

#[test]
fn a_stopping_node_hands_its_runs_back_before_any_lease_runs_out() {
    let mut h = Harness::new(7, Harness::fixed(3_000));
    h.set_lease_ttl(60_000);
    let n = grid(&mut h, 2, 2);
    h.run_for(5_000);
    let id = h.submit(&n[0], "ana", 4);
    h.run_for(500);
    assert!(h.running_on(&n[1]) > 0);
    h.stop(&n[1]);
    // Far sooner than the 60 s lease: the runs were handed back.
    assert!(h.run_until_true(20_000, |h| settled_everywhere(h, &id)));
    assert!(!h.is_up(&n[1]), "the stopped node exited");
    assert_eq!(info(&h, &n[0], &id).unwrap().state, RequestState::Succeeded);
}

#[test]
fn failures_exhaust_retries_and_end_the_request_failed_everywhere() {
    let mut h = Harness::new(8, Box::new(|_, _| (100, Exit::Code(3))));
    let n = grid(&mut h, 2, 1);
    h.run_for(5_000);
    let id = h.submit(&n[0], "ana", 3);
    assert!(h.run_until_true(30_000, |h| settled_everywhere(h, &id)));
    h.run_for(2_000);
    for x in &n {
        let i = info(&h, x, &id).unwrap();
        assert_eq!(i.state, RequestState::Failed);
        assert!(i.runs.unwrap().iter().all(|r| r.exit_code == Some(3)));
    }
}

/// One step of a random schedule.
#[derive(Debug, Clone)]
enum Step {
    Wait(u64),
    Crash(usize),
    Restart(usize),
    Partition(Vec<usize>),
    Heal,
    Submit(usize, u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (100u64..4_000).prop_map(Step::Wait),
        1 => (0usize..5).prop_map(Step::Crash),
        1 => (0usize..5).prop_map(Step::Restart),
        1 => proptest::collection::vec(0usize..5, 1..3).prop_map(Step::Partition),
        1 => Just(Step::Heal),
        1 => ((0usize..5), (1u32..12)).prop_map(|(n, r)| Step::Submit(n, r)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Whatever happens, once every node is back and the grid is whole:
    /// every replica ends with the same outcome for every rank, every run
    /// ends, and no node ever ran more than its slots.
    #[test]
    fn every_schedule_of_faults_converges_on_one_outcome(
        seed in any::<u64>(),
        loss in 0u64..150_000,
        dup in 0u64..100_000,
        steps in proptest::collection::vec(step(), 1..25),
    ) {
        let mut h = Harness::new(seed, Box::new(|_, job| (300 + u64::from(job.key.1 % 7) * 200, Exit::Code(0))));
        h.set_lease_ttl(5_000);
        h.link = Link { min_delay_ms: 1, max_delay_ms: 40, loss_ppm: loss, duplicate_ppm: dup };
        let n = grid(&mut h, 5, 2);
        h.run_for(3_000);
        let mut requests = Vec::new();
        for s in steps {
            match s {
                Step::Wait(ms) => h.run_for(ms),
                Step::Crash(i) => h.crash(&n[i]),
                Step::Restart(i) => h.restart(&n[i]),
                Step::Partition(side) => {
                    let side: Vec<NodeId> = side.into_iter().map(|i| n[i].clone()).collect();
                    h.partition(&side);
                }
                Step::Heal => h.heal(),
                Step::Submit(i, reps) => {
                    if h.is_up(&n[i]) {
                        requests.push(h.submit(&n[i], "ana", reps));
                    }
                }
            }
        }
        // Everyone back, the grid whole, the link clean: it must settle.
        h.heal();
        for x in &n {
            h.restart(x);
        }
        h.link = Link::default();
        let all = requests.clone();
        let settled = h.run_until_true(300_000, |h| all.iter().all(|id| settled_everywhere(h, id)));
        prop_assert!(settled, "not every request settled on every node");
        h.run_for(5_000);
        for id in &requests {
            let first = outcome(&h, &n[0], id);
            prop_assert!(first.iter().all(|r| r.0 == RunState::Succeeded), "{id}: {first:?}");
            for x in &n[1..] {
                prop_assert_eq!(&outcome(&h, x, id), &first, "{} disagrees on {}", x, id);
            }
        }
        let over: BTreeMap<_, _> = h.observed.over_slots.iter().cloned().collect();
        prop_assert!(over.is_empty(), "a node ran more than its slots: {over:?}");
        // What the API reads (published batch by batch) is what the node
        // holds, read afresh.
        for x in &n {
            let fresh = h.node(x).unwrap().read_model(h.now());
            let published = h.reads(x).unwrap();
            prop_assert_eq!(
                listed(published.page(None, 0, usize::MAX)),
                listed(fresh.page(None, 0, usize::MAX)),
                "{} publishes another list", x
            );
            prop_assert_eq!(published.metrics().runs, fresh.metrics().runs);
        }
    }
}

#[test]
fn finished_requests_are_archived_yet_listed_restored_and_served_to_a_new_node() {
    let mut h = Harness::new(9, Harness::fixed(100));
    h.set_archive_after(30_000);
    let n = grid(&mut h, 2, 2);
    h.run_for(3_000);
    let ids: Vec<RequestId> = (0..3).map(|_| h.submit(&n[0], "ana", 4)).collect();
    assert!(h.run_until_true(20_000, |h| ids.iter().all(|id| settled_everywhere(h, id))));
    h.run_for(45_000);
    for x in &n {
        let node = h.node(x).unwrap();
        for id in &ids {
            assert!(node.is_archived(id), "{id} archived on {x}");
        }
        // Still listed, with their states, newest first, as the API reads it.
        let list = h.reads(x).unwrap().page(None, 0, usize::MAX);
        assert_eq!(list.len(), 3);
        assert!(list.iter().all(|r| r.state == RequestState::Succeeded));
        assert!(list.windows(2).all(|w| w[0].created_ms >= w[1].created_ms));
        assert_eq!(node.metrics(h.now()).runs.succeeded, 12);
    }
    // Archived: no runs until the document is read back.
    assert!(info(&h, &n[0], &ids[0]).unwrap().runs.is_none());
    h.restore(&n[0], &ids[0]);
    assert_eq!(outcome(&h, &n[0], &ids[0]).len(), 4);
    // A restart reads the summaries, not the documents.
    h.crash(&n[1]);
    h.restart(&n[1]);
    h.run_for(2_000);
    assert!(h.node(&n[1]).unwrap().is_archived(&ids[1]));
    assert_eq!(h.node(&n[1]).unwrap().list(h.now()).len(), 3);
    // A node that joins later asks for every request: the others read
    // theirs back to answer it.
    let late = h.add_node("n9", 1);
    assert!(
        h.run_until_true(30_000, |h| ids.iter().all(
            |id| info(h, &late, id).is_some_and(|i| i.state == RequestState::Succeeded)
        ))
    );
    for id in &ids {
        assert_eq!(outcome(&h, &late, id).len(), 4);
    }
}

#[test]
fn after_a_failed_write_the_next_ones_are_whole_so_a_restart_loses_nothing() {
    let mut h = Harness::new(10, Harness::fixed(1_000));
    let n = grid(&mut h, 1, 2);
    let id = h.submit(&n[0], "ana", 6);
    h.run_for(500);
    // The batch that records the first two runs' start is lost on disk.
    h.fail_next_write(&n[0]);
    assert!(h.run_until_true(20_000, |h| settled_everywhere(h, &id)));
    h.run_for(1_000);
    let before = outcome(&h, &n[0], &id);
    h.crash(&n[0]);
    h.restart(&n[0]);
    // Everything the node had recorded is back: no chunk missing after the
    // lost one kept the later changes from loading.
    assert_eq!(outcome(&h, &n[0], &id), before);
    assert_eq!(info(&h, &n[0], &id).unwrap().state, RequestState::Succeeded);
}

#[test]
fn what_the_api_reads_shows_each_change_at_the_end_of_the_batch_that_made_it() {
    let mut h = Harness::new(12, Harness::fixed(60_000));
    let n = grid(&mut h, 2, 2);
    h.run_for(3_000);
    let before = h.reads(&n[0]).unwrap().metrics().requests;
    // The submit's own batch publishes it: listed at once, no tick needed.
    let id = h.submit(&n[0], "ana", 3);
    let reads = h.reads(&n[0]).unwrap();
    assert_eq!(reads.metrics().requests, before + 1);
    assert_eq!(reads.page(None, 0, 1)[0].id, id);
    assert_eq!(
        reads.page(Some("bia"), 0, 10).len(),
        0,
        "bia sees none of ana's"
    );
    assert_eq!(reads.request(&id.as_str()[..6]).unwrap().id, id);
    h.run_for(2_000);
    let reads = h.reads(&n[1]).unwrap();
    assert_eq!(reads.request(id.as_str()).unwrap().counts.running, 3);
    // A cancel reads cancelled on the node that took it, in the same batch.
    let now = h.now();
    h.node_mut(&n[1]).unwrap().cancel(now, id.as_str()).unwrap();
    h.node_mut(&n[1]).unwrap().end_batch(now);
    let mut published = h.reads(&n[1]).unwrap().clone();
    h.node_mut(&n[1])
        .unwrap()
        .publish_reads(now, &mut published);
    assert_eq!(
        published.request(id.as_str()).unwrap().state,
        RequestState::Cancelled
    );
    assert_eq!(published.metrics().runs.cancelled, 3);
}
