//! Backup copies of stragglers, stepped through the harness: a request
//! whose last run sits on a slow node finishes sooner when an idle node
//! starts a second copy, and the extra work stays bounded.

use pesc_protocol::api::NewRequest;
use pesc_protocol::harness::{Harness, Program};
use pesc_protocol::model::{AttemptState, RunState};
use pesc_protocol::node::Exit;
use pesc_protocol::{NodeId, RequestId};

/// Runs take 1 s, 60 s on node "slow".
fn program() -> Program {
    Box::new(|node: &NodeId, _job| {
        let ms = if node.as_str() == "slow" {
            60_000
        } else {
            1_000
        };
        (ms, Exit::Code(0))
    })
}

fn finished_at(h: &Harness, on: &NodeId, id: &RequestId) -> Option<u64> {
    let i = h.node(on)?.get(h.now(), id.as_str(), true).ok()?;
    if !i.state.is_terminal() {
        return None;
    }
    i.runs?.iter().map(|r| r.finished_ms.unwrap_or(0)).max()
}

fn run(backups: bool) -> (u64, usize, usize, RunState) {
    let mut h = Harness::new(21, program());
    let fast: Vec<NodeId> = (0..3).map(|i| h.add_node(&format!("n{i}"), 1)).collect();
    let slow = h.add_node("slow", 1);
    h.run_for(5_000);
    let req = NewRequest {
        backups: Some(backups),
        ..h.plain_request(&fast[0], "ana", 20)
    };
    let t0 = h.now().wall_ms;
    let id = h.submit_new(&fast[0], "ana", req);
    assert!(h.run_until_true(200_000, |h| finished_at(h, &fast[0], &id).is_some()));
    h.run_for(3_000);
    let end = finished_at(&h, &fast[0], &id).unwrap();
    let info = h
        .node(&fast[0])
        .unwrap()
        .get(h.now(), id.as_str(), true)
        .unwrap();
    let runs = info.runs.unwrap();
    let mut copies = 0;
    let mut on_slow = 0;
    for r in 0..20 {
        let tried = h.node(&fast[0]).unwrap().attempts_of(&id, r);
        copies += tried.iter().filter(|a| a.backup).count();
        on_slow += tried
            .iter()
            .filter(|a| a.node == slow && a.state == AttemptState::Succeeded)
            .count();
        // Never two results.
        assert!(
            tried
                .iter()
                .filter(|a| a.state == AttemptState::Succeeded)
                .count()
                <= 1
        );
    }
    let state = if runs.iter().all(|r| r.state == RunState::Succeeded) {
        RunState::Succeeded
    } else {
        RunState::Failed
    };
    (end - t0, copies, on_slow, state)
}

#[test]
fn a_straggler_on_a_slow_node_gets_a_backup_and_the_request_ends_sooner() {
    let (without, copies0, _, s0) = run(false);
    let (with, copies, on_slow, s1) = run(true);
    assert_eq!((s0, s1), (RunState::Succeeded, RunState::Succeeded));
    assert_eq!(copies0, 0, "no backups when the request says no");
    assert!(
        without >= 60_000,
        "the slow node's run sets the end: {without}"
    );
    assert!(
        with < 20_000,
        "a backup ended it sooner: {with} ms vs {without}"
    );
    assert!((1..=4).contains(&copies), "bounded: {copies} copies");
    assert_eq!(on_slow, 0, "the backup's result won: {on_slow}");
}
