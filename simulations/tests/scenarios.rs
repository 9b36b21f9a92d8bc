//! The simulator's guarantees: the same seed gives the same numbers, the
//! invariants hold on every step, and the small scenarios finish as a user
//! of the real grid would expect.

use pesc_sim::scenarios::by_name;

fn json(name: &str, seed: u64) -> String {
    let r = pesc_sim::run(by_name(name, seed).expect("scenario exists"));
    serde_json::to_string(&r).expect("serializable")
}

#[test]
fn same_seed_same_metrics_byte_for_byte() {
    assert_eq!(json("smoke", 7), json("smoke", 7));
    assert_ne!(json("smoke", 7), json("smoke", 8), "the seed matters");
}

#[test]
fn smoke_keeps_every_invariant_on_every_step() {
    // smoke checks slots, results and termination after every event, with
    // churn, a node that never returns, 2 % loss, a partition and GPU runs.
    let sc = by_name("smoke", 3).unwrap();
    assert!(sc.check_every_step);
    let r = pesc_sim::run(sc);
    assert_eq!(r.invariant_violations, 0, "{:?}", r.violation_examples);
    assert!(r.finished, "every run terminates while eligible nodes live");
    assert_eq!(r.unfinished_runs, 0);
    assert_eq!(r.runs, 180);
    // The node that went off for good was holding runs: they moved on.
    assert!(r.failover_s.count > 0);
    assert!(
        r.failover_s.max >= 15.0,
        "not before the lease TTL: {:?}",
        r.failover_s
    );
    // The partition made both sides run some ranks twice; one result each.
    assert!(r.duplicate_work_pct > 0.0);
    assert!(r.makespan_s >= r.ideal_makespan_s);
}

#[test]
fn checkpoints_cut_the_work_crashes_waste() {
    // Runs of 2–12 s cut by crashes: snapshots every second keep most of
    // what they did; the next attempt resumes from there.
    let plain = by_name("smoke", 3).unwrap();
    let mut ck = plain.clone();
    ck.timing.checkpoint_ms = 1_000;
    let (a, b) = (pesc_sim::run(plain), pesc_sim::run(ck));
    assert_eq!(b.invariant_violations, 0, "{:?}", b.violation_examples);
    assert!(b.finished && b.unfinished_runs == 0);
    assert!(
        a.wasted_work_pct > 0.0,
        "crashes cut runs: {}",
        a.wasted_work_pct
    );
    assert!(
        b.wasted_work_pct < a.wasted_work_pct,
        "{} vs {}",
        b.wasted_work_pct,
        a.wasted_work_pct
    );
}

#[test]
fn validation_scenario_is_near_ideal_with_no_waste() {
    let r = pesc_sim::run(by_name("validate", 1).unwrap());
    assert!(r.finished);
    assert_eq!(r.invariant_violations, 0);
    assert_eq!(r.runs_per_node.iter().sum::<u32>(), 64);
    assert!(
        r.makespan_s >= 4.0 && r.makespan_s < 4.6,
        "{}",
        r.makespan_s
    );
    assert_eq!(r.duplicate_work_pct, 0.0);
}

#[test]
fn a_dead_holders_runs_restart_after_the_ttl_not_at_the_end() {
    // Owners reclaim 4 of 40 desktops while the lab is saturated with queued
    // runs: runs they held are taken over after the TTL, not when the queue
    // drains (ranks tried before are scanned first).
    let r = pesc_sim::run(by_name("lab", 1).unwrap());
    assert_eq!(r.invariant_violations, 0);
    assert!(r.failover_s.count > 0);
    assert!(
        r.failover_s.p50 >= 15.0 && r.failover_s.max < 120.0,
        "{:?}",
        r.failover_s
    );
}

#[test]
fn late_small_users_are_not_starved() {
    let r = pesc_sim::run(by_name("fairness", 1).unwrap());
    let ana = &r.queue_wait_s["ana"];
    let bia = &r.queue_wait_s["bia"];
    // bia's 40 runs start within minutes although ana queued 4 000 before.
    assert!(bia.max < 600.0, "{bia:?}");
    assert!(ana.mean > 10.0 * bia.mean, "{ana:?} {bia:?}");
}

/// The fast engine against the exact mode (every node the real protocol
/// core) on a scenario both run: the same work, makespan within 5 %, and
/// the same invariants.
fn fast_matches_exact(name: &str, seed: u64) {
    let sc = by_name(name, seed).unwrap();
    let fast = pesc_sim::run(sc.clone());
    let exact = pesc_sim::exact::run(&sc);
    assert_eq!(
        fast.invariant_violations, 0,
        "{:?}",
        fast.violation_examples
    );
    assert_eq!(
        exact.invariant_violations, 0,
        "{:?}",
        exact.violation_examples
    );
    assert!(fast.finished && exact.finished);
    assert_eq!(fast.runs, exact.runs);
    let gap = (fast.makespan_s - exact.makespan_s).abs() / exact.makespan_s;
    assert!(
        gap <= 0.05,
        "{name}: fast {:.2} s, exact {:.2} s ({:.1} % apart)",
        fast.makespan_s,
        exact.makespan_s,
        gap * 100.0
    );
}

#[test]
fn the_fast_engine_matches_the_exact_mode_on_validate() {
    fast_matches_exact("validate", 1);
}

#[test]
fn backup_copies_cut_a_slow_desktops_tail_in_the_fast_engine() {
    // `validate`'s 4 nodes, one of them 30× slower, 64 runs of 10 s: as the
    // real-node test `stragglers.rs`, through the fast engine's model of
    // the protocol's backup rule.
    let run = |backups: bool| {
        let mut sc = by_name("validate", 1).unwrap();
        sc.nodes[0].speed = 1.0 / 30.0;
        sc.requests[0].durations = pesc_sim::scenario::Durations::Fixed(10.0);
        sc.check_every_step = true;
        sc.backups = backups;
        pesc_sim::run(sc)
    };
    let (with, without) = (run(true), run(false));
    assert_eq!(
        with.invariant_violations, 0,
        "{:?}",
        with.violation_examples
    );
    assert_eq!(without.backup_copies, 0);
    assert!(
        with.backup_wins >= 1 && with.backup_copies <= 4,
        "copies {} (won {}): at most the budget, max(4, 5 %)",
        with.backup_copies,
        with.backup_wins
    );
    assert!(
        with.makespan_s < without.makespan_s / 2.0,
        "with backups {} s, without {} s",
        with.makespan_s,
        without.makespan_s
    );
}
