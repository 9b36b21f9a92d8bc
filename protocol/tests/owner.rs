//! The desktop's owner comes first, stepped through the harness: memory
//! admission with learned peaks, runs suspended when the owner comes back
//! and handed back when they stay, and settings an admin changes from
//! another node without a restart.

use pesc_protocol::access::AccessChange;
use pesc_protocol::api::RequestInfo;
use pesc_protocol::harness::Harness;
use pesc_protocol::model::{AttemptState, RunState};
use pesc_protocol::node::{Policy, RunUse, Sample};
use pesc_protocol::{NodeId, RequestId};

const MIN: u64 = 60_000;

fn info(h: &Harness, on: &NodeId, id: &RequestId) -> RequestInfo {
    h.node(on)
        .and_then(|n| n.get(h.now(), id.as_str(), true).ok())
        .expect("the request")
}

fn set_policy(h: &mut Harness, on: &NodeId, p: Policy) {
    let n = h.node_mut(on).expect("node");
    let name = on.as_str().to_string();
    let slots = n.slots();
    n.reconfigure(name, Vec::new(), slots, p);
}

/// An 8 GiB desktop whose owner's programs hold 3 GiB, and what the
/// node's runs hold now.
fn desktop(runs: Vec<RunUse>) -> Sample {
    let ours: u64 = runs.iter().map(|r| r.now_mb).sum();
    Sample {
        memory: Some((8192, 8192 - 3072 - ours)),
        cpus: 4,
        runs,
        ..Default::default()
    }
}

#[test]
fn runs_are_admitted_while_their_expected_memory_fits_and_peaks_are_learned() {
    let mut h = Harness::new(7, Harness::fixed(10 * MIN));
    let a = h.add_node("a", 8);
    set_policy(
        &mut h,
        &a,
        Policy {
            memory_percent_limit: 80,
            default_run_memory_mb: 1024,
            ..Policy::default()
        },
    );
    h.probe(&a, desktop(Vec::new()));
    let id = h.submit(&a, "ana", 8);
    h.run_for(5_000);
    // 80 % of 8 GiB is 6 553 MiB; the owner's 3 GiB leave room for three
    // runs of an unknown program at 1 GiB each, not eight.
    assert_eq!(h.running_on(&a), 3);
    let why = info(&h, &a, &id).waiting.unwrap_or_default();
    assert!(why.contains("1024 MiB"), "{why}");

    // The probes see each run hold 200 MiB: that is learned (with 10 %
    // headroom), and more runs fit.
    let running: Vec<u32> = info(&h, &a, &id)
        .runs
        .unwrap()
        .iter()
        .filter(|r| r.state == RunState::Running)
        .map(|r| r.rank)
        .collect();
    let seen = running
        .iter()
        .map(|&rank| RunUse {
            request: id.clone(),
            rank,
            now_mb: 200,
            peak_mb: 200,
            cpu_percent: 98,
        })
        .collect();
    h.probe(&a, desktop(seen));
    h.run_for(2_000);
    assert_eq!(h.running_on(&a), 8, "3 072 + 8 × 220 MiB fit in 6 553");
    // The run's peak goes into its attempt when it ends.
    h.run_for(11 * MIN);
    let i = info(&h, &a, &id);
    assert!(i.state.is_terminal());
    let a0 = h.node(&a).unwrap().attempts_of(&id, running[0]);
    assert!(a0.iter().any(|x| x.peak_memory_mb == Some(200)), "{a0:?}");
}

fn owner_policy() -> Policy {
    Policy {
        idle_minutes: 1,
        vacate_minutes: 3,
        ..Policy::default()
    }
}

fn owner_at(idle_ms: u64) -> Sample {
    Sample {
        idle_ms: Some(idle_ms),
        ..Default::default()
    }
}

#[test]
fn a_returning_owner_suspends_runs_at_once_and_they_go_on_when_the_desktop_is_idle() {
    let mut h = Harness::new(8, Harness::fixed(10 * MIN));
    let a = h.add_node("a", 2);
    set_policy(&mut h, &a, owner_policy());
    // Idle for a while: runs start.
    h.probe(&a, owner_at(5 * MIN));
    let id = h.submit(&a, "ana", 2);
    h.run_for(2_000);
    assert_eq!(h.running_on(&a), 2);
    // The owner touches the mouse: both runs are suspended at once.
    h.probe(&a, owner_at(0));
    let suspended: Vec<_> = h.observed.suspended.iter().filter(|s| s.2).collect();
    assert_eq!(suspended.len(), 2, "{:?}", h.observed.suspended);
    let nodes = h.node(&a).unwrap().grid_nodes(h.now());
    assert!(nodes[0].owner_here, "{nodes:?}");
    assert_eq!(nodes[0].suspended, 2);
    // A minute later nobody has touched it for a minute: they go on.
    h.run_for(MIN);
    h.probe(&a, owner_at(MIN));
    let resumed = h.observed.suspended.iter().filter(|s| !s.2).count();
    assert_eq!(resumed, 2);
    h.run_for(11 * MIN);
    assert!(info(&h, &a, &id).state.is_terminal());
    assert!(
        info(&h, &a, &id)
            .runs
            .unwrap()
            .iter()
            .all(|r| r.state == RunState::Succeeded && r.node.as_ref() == Some(&a))
    );
}

#[test]
fn an_owner_who_stays_gets_the_desktop_back_and_the_runs_go_elsewhere() {
    let mut h = Harness::new(9, Harness::fixed(10 * MIN));
    let a = h.add_node("a", 2);
    set_policy(&mut h, &a, owner_policy());
    h.probe(&a, owner_at(5 * MIN));
    let id = h.submit(&a, "ana", 2);
    h.run_for(2_000);
    assert_eq!(h.running_on(&a), 2);
    let b = h.add_node("b", 2);
    h.run_for(5_000);
    // The owner comes back and stays at the keyboard.
    for _ in 0..4 {
        h.probe(&a, owner_at(1_000));
        h.run_for(MIN);
    }
    h.probe(&a, owner_at(1_000));
    h.run_for(10_000);
    let i = info(&h, &b, &id);
    let runs = i.runs.unwrap();
    assert!(
        runs.iter().all(|r| r.node.as_ref() == Some(&b)),
        "the runs went to b: {runs:?}"
    );
    for r in 0..2 {
        let tried = h.node(&b).unwrap().attempts_of(&id, r);
        let on_a = tried.iter().find(|x| x.node == a).expect("a's attempt");
        assert_eq!(on_a.state, AttemptState::Yielded);
        assert!(
            on_a.reason.as_deref().unwrap_or_default().contains("owner"),
            "{on_a:?}"
        );
    }
    // A suspended run is let go on before it is stopped (so it hears it).
    let last_a: Vec<_> = h
        .observed
        .suspended
        .iter()
        .filter(|s| s.0 == a)
        .map(|s| s.2)
        .collect();
    assert_eq!(last_a, [true, true, false, false]);
    // Why-waiting on a paused owner desktop says so.
    let id2 = h.submit(&a, "ana", 1);
    set_policy(&mut h, &b, owner_policy());
    h.probe(&b, owner_at(0));
    h.run_for(3_000);
    let why = info(&h, &a, &id2).waiting.unwrap_or_default();
    assert!(why.contains("in use by their owners"), "{why}");
}

#[test]
fn an_admin_changes_a_nodes_slots_from_another_node_without_a_restart() {
    let mut h = Harness::new(10, Harness::fixed(10 * MIN));
    let a = h.add_node("a", 1);
    let b = h.add_node("b", 0);
    h.run_for(5_000);
    let id = h.submit(&b, "ana", 4);
    h.run_for(5_000);
    assert_eq!(h.running_on(&a), 1);
    let set = AccessChange::NodeSetting {
        node: a.clone(),
        key: "slots".into(),
        value: Some("3".into()),
    };
    h.node_mut(&b).unwrap().change_access(&set).unwrap();
    h.run_for(5_000);
    assert_eq!(h.running_on(&a), 3, "a took two more runs");
    // Fewer slots: running runs go on, no new one starts until under.
    let set = AccessChange::NodeSetting {
        node: a.clone(),
        key: "slots".into(),
        value: Some("1".into()),
    };
    h.node_mut(&b).unwrap().change_access(&set).unwrap();
    h.run_for(5_000);
    assert_eq!(h.running_on(&a), 3);
    h.run_for(10 * MIN);
    assert_eq!(h.running_on(&a), 1, "the fourth run, alone");
    // A bad value is refused where it is written.
    let bad = AccessChange::NodeSetting {
        node: a.clone(),
        key: "slots".into(),
        value: Some("lots".into()),
    };
    assert!(h.node_mut(&b).unwrap().change_access(&bad).is_err());
    h.run_for(11 * MIN);
    assert!(info(&h, &b, &id).state.is_terminal());
    assert!(h.observed.over_slots.is_empty());
}

#[test]
fn max_cpu_share_counts_the_nodes_own_runs_against_the_cpu() {
    let mut h = Harness::new(11, Harness::fixed(10 * MIN));
    let a = h.add_node("a", 8);
    set_policy(
        &mut h,
        &a,
        Policy {
            max_cpu_share: 50,
            ..Policy::default()
        },
    );
    let mut idle = desktop(Vec::new());
    idle.memory = Some((65_536, 60_000));
    h.probe(&a, idle);
    let id = h.submit(&a, "ana", 8);
    h.run_for(5_000);
    // Half of 4 CPUs: two sequential programs, though 8 slots are free.
    assert_eq!(h.running_on(&a), 2);
    let why = info(&h, &a, &id).waiting.unwrap_or_default();
    assert!(
        why.contains("more CPU than this node's owner lets PESC use"),
        "{why}"
    );
}
