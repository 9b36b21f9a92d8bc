//! The exact mode: every virtual node *is* the protocol core
//! ([`pesc_protocol::node::Node`]), stepped by the in-process harness with
//! the scenario's network, clock, work and availability. Nothing here
//! decides what a node does; it only sets the stage and reads the
//! documents afterwards. Good for grids up to a few hundred nodes; the
//! fast engine (closed form) reaches 10 000 and is checked against this.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use pesc_protocol::harness::{Harness, Link};
use pesc_protocol::model::{AttemptState, RunState};
use pesc_protocol::node::Exit;
use pesc_protocol::{NodeId, RequestId};
use serde::Serialize;

use crate::scenario::Scenario;

/// What the exact mode measures.
#[derive(Debug, Clone, Serialize)]
pub struct ExactReport {
    pub scenario: String,
    pub mode: &'static str,
    pub seed: u64,
    pub nodes: usize,
    pub runs: u64,
    pub finished: bool,
    pub unfinished_runs: u64,
    /// First submit to the last result recorded.
    pub makespan_s: f64,
    /// Work of runs that did not become the result (cut by a switch-off,
    /// lost races, copies on both sides of a partition), over the useful
    /// work.
    pub duplicate_work_pct: f64,
    /// Attempts made, over runs.
    pub claims: u64,
    pub messages: u64,
    pub messages_lost: u64,
    pub invariant_violations: u64,
    pub violation_examples: Vec<String>,
    /// Parallel requests (gangs): how many, how many finished, how long
    /// each waited from its submit to the start of the round that
    /// succeeded (median and most), how many rounds were started again
    /// (a rank's node crashed, or slots went to an older gang), and the
    /// slot-time held by gang ranks that waited for the rest of their gang
    /// (claimed, not yet started, or handed back unstarted).
    pub gangs: u64,
    pub gangs_finished: u64,
    pub gang_wait_p50_s: f64,
    pub gang_wait_max_s: f64,
    pub gang_rounds_restarted: u64,
    pub gang_idle_slot_s: f64,
    /// Whether nodes used the load order, and the share of runs whose
    /// result came from a desktop in use by its owner (owner_load > 0).
    pub load_order: bool,
    pub runs_on_busy_desktops_pct: f64,
    /// Whether requests allowed backup copies of stragglers, and how many
    /// were started.
    pub backups: bool,
    pub backup_copies: u64,
    /// Run time of backup copies that did not become the result, over the
    /// useful work: the extra work the backups themselves cost.
    pub backup_lost_pct: f64,
    pub simulated_in_s: f64,
}

/// How often a node of a scenario with owners' load reads its load.
const PROBE_EVERY_MS: u64 = 5_000;

/// Something the scenario does at a time.
enum Cue {
    /// Every node reads its load (scenarios with owners' load).
    Probe,
    Submit(usize),
    Down(usize),
    Up(usize),
    Cut(usize),
    Heal,
}

/// How often (simulated) the exact mode looks whether every request has
/// settled everywhere, once all are submitted: the scenario's remaining
/// cues (crashes, owners coming back) are not simulated past that.
const SETTLE_CHECK_MS: u64 = 1_000;

/// Simulated time the nodes are given to meet before the scenario's clock
/// starts: a few heartbeats, so each knows the grid's members.
const GRID_FORMS_MS: u64 = 5_000;

/// Runs the harness to `until`, or until `done` holds (looked at every
/// [`SETTLE_CHECK_MS`]); printing a line every ten simulated seconds when
/// asked. Whether `done` held.
fn advance(
    h: &mut Harness,
    until: u64,
    progress: bool,
    t0: std::time::Instant,
    done: Option<&dyn Fn(&Harness) -> bool>,
) -> bool {
    const STEP: u64 = 10_000;
    while h.now().mono_ms < until {
        if done.is_some_and(|d| d(h)) {
            return true;
        }
        let mut next = if progress {
            ((h.now().mono_ms / STEP + 1) * STEP).min(until)
        } else {
            until
        };
        if done.is_some() {
            next = next.min(h.now().mono_ms + SETTLE_CHECK_MS);
        }
        h.run_until(next);
        if progress && next % STEP == 0 {
            eprintln!(
                "exact: {} s simulated in {:.0} s, {} messages {:?}",
                next / 1_000,
                t0.elapsed().as_secs_f64(),
                h.observed.sent,
                h.observed.sent_by_kind
            );
        }
    }
    done.is_some_and(|d| d(h))
}

/// Runs a scenario with real protocol cores.
pub fn run(sc: &Scenario) -> ExactReport {
    let t0 = std::time::Instant::now();
    let drawn = sc.drawn_work();
    // The work of each request's runs, by the id its node gave it.
    let work: Rc<RefCell<HashMap<RequestId, Vec<u32>>>> = Default::default();
    let ids: Vec<NodeId> = (0..sc.nodes.len())
        .map(|i| NodeId::new(format!("n{i:04}")))
        .collect();
    // What a run gets of a desktop whose owner keeps part of its CPU busy.
    let speed: HashMap<NodeId, f64> = ids
        .iter()
        .zip(&sc.nodes)
        .map(|(id, n)| (id.clone(), n.speed * (1.0 - n.owner_load.clamp(0.0, 0.95))))
        .collect();
    let overhead = sc.timing.start_overhead_ms;
    // The work of the request being submitted: its node may start runs
    // within the submit itself, before its id is known here.
    let submitting: Rc<RefCell<Option<Vec<u32>>>> = Default::default();
    let program = {
        let work = work.clone();
        let submitting = submitting.clone();
        Box::new(move |node: &NodeId, job: &pesc_protocol::node::Job| {
            if !work.borrow().contains_key(&job.key.0)
                && let Some(w) = submitting.borrow_mut().take()
            {
                work.borrow_mut().insert(job.key.0.clone(), w);
            }
            let w = work
                .borrow()
                .get(&job.key.0)
                .and_then(|w| w.get(job.key.1 as usize).copied())
                .unwrap_or(1_000);
            let s = speed.get(node).copied().unwrap_or(1.0);
            (overhead + (f64::from(w) / s).ceil() as u64, Exit::Code(0))
        })
    };
    let mut h = Harness::new(sc.seed, program);
    h.skip_read_models();
    // The report reads every request's runs at the end: none is archived
    // (an archived request lists no runs until restored).
    h.set_archive_after(u64::MAX / 4);
    h.set_lease_ttl(sc.timing.lease_ttl_ms);
    h.set_load_order(sc.load_order);
    h.set_backups(sc.backups);
    let jitter = sc.net.jitter_ms.ceil() as u64;
    h.link = Link {
        min_delay_ms: sc.net.latency_ms.ceil().max(1.0) as u64,
        max_delay_ms: sc.net.latency_ms.ceil().max(1.0) as u64 + jitter,
        loss_ppm: (sc.net.loss * 1e6) as u64,
        duplicate_ppm: 0,
    };
    for (id, n) in ids.iter().zip(&sc.nodes) {
        h.add_node(id.as_str(), n.slots);
    }
    // The scenario starts on a grid that has formed (as the fast engine
    // assumes, and as a lab's grid runs before anyone submits): its clock
    // starts once the nodes have met.
    let w = GRID_FORMS_MS;
    let mut cues: Vec<(u64, Cue)> = Vec::new();
    for (i, plan) in sc.requests.iter().enumerate() {
        cues.push((w + plan.at_ms, Cue::Submit(i)));
    }
    for (i, n) in sc.nodes.iter().enumerate() {
        for &(d, u) in &n.avail.off {
            cues.push((w + d, Cue::Down(i)));
            if u < sc.time_limit_ms {
                cues.push((w + u, Cue::Up(i)));
            }
        }
    }
    for (p_i, p) in sc.net.partitions.iter().enumerate() {
        cues.push((w + p.start_ms, Cue::Cut(p_i)));
        cues.push((w + p.end_ms, Cue::Heal));
    }
    // Owners' load: each node reads its load as a real one does (its
    // owner's share, plus its own runs), from before the first submit.
    if sc.nodes.iter().any(|n| n.owner_load > 0.0) {
        let mut t = 1_000;
        while t < w + sc.time_limit_ms {
            cues.push((t, Cue::Probe));
            t += PROBE_EVERY_MS;
        }
    }
    cues.sort_by_key(|c| c.0);
    let mut requests: Vec<(RequestId, usize)> = Vec::new();
    let mut first_submit = u64::MAX;
    let mut submits_left = sc.requests.len();
    let mut finished = false;
    for (t, cue) in cues {
        if t > w + sc.time_limit_ms {
            break;
        }
        let submitted: Vec<RequestId> = requests.iter().map(|r| r.0.clone()).collect();
        let settled = move |h: &Harness| submitted.iter().all(|id| settled_everywhere(h, id));
        let done: Option<&dyn Fn(&Harness) -> bool> = (submits_left == 0).then_some(&settled);
        if advance(&mut h, t, sc.progress, t0, done) {
            finished = true;
            break;
        }
        match cue {
            Cue::Submit(i) => {
                submits_left -= 1;
                let plan = &sc.requests[i];
                // On the planned node, or the first one up.
                let on = std::iter::once(plan.node as usize)
                    .chain(0..ids.len())
                    .map(|k| ids[k % ids.len()].clone())
                    .find(|n| h.is_up(n));
                if let Some(on) = on {
                    *submitting.borrow_mut() = Some(drawn[i].1.clone());
                    let id = if plan.parallel {
                        h.submit_gang(&on, &plan.owner, plan.runs, plan.same_node, 0)
                    } else {
                        h.submit(&on, &plan.owner, plan.runs)
                    };
                    if let Some(w) = submitting.borrow_mut().take() {
                        work.borrow_mut().insert(id.clone(), w);
                    }
                    requests.push((id, plan.runs as usize));
                    first_submit = first_submit.min(t);
                }
            }
            Cue::Probe => {
                for (id, n) in ids.iter().zip(&sc.nodes) {
                    if !h.is_up(id) {
                        continue;
                    }
                    let cpus = n.slots.max(1) as f32;
                    let load = n.owner_load as f32 + h.running_on(id) as f32 / cpus;
                    h.probe(
                        id,
                        pesc_protocol::node::Sample {
                            load,
                            cpus: n.slots,
                            ..Default::default()
                        },
                    );
                }
            }
            Cue::Down(i) => h.crash(&ids[i]),
            Cue::Up(i) => h.restart(&ids[i]),
            Cue::Cut(p) => {
                let side: Vec<NodeId> = sc.net.partitions[p]
                    .side
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| **s)
                    .map(|(k, _)| ids[k].clone())
                    .collect();
                h.partition(&side);
            }
            Cue::Heal => h.heal(),
        }
    }
    let all: Vec<RequestId> = requests.iter().map(|r| r.0.clone()).collect();
    let settled = move |h: &Harness| all.iter().all(|id| settled_everywhere(h, id));
    if !finished {
        finished = advance(
            &mut h,
            w + sc.time_limit_ms,
            sc.progress,
            t0,
            Some(&settled),
        );
    }
    // Time for the last results to reach every replica.
    h.run_for(5_000);
    report(sc, &h, &requests, first_submit, finished, t0)
}

fn settled_everywhere(h: &Harness, id: &RequestId) -> bool {
    let now = h.now();
    h.ids().iter().filter(|n| h.is_up(n)).all(|n| {
        h.node(n)
            .and_then(|x| x.get(now, id.as_str(), false).ok())
            .is_some_and(|i| i.state.is_terminal())
    })
}

fn report(
    sc: &Scenario,
    h: &Harness,
    requests: &[(RequestId, usize)],
    first_submit: u64,
    finished: bool,
    t0: std::time::Instant,
) -> ExactReport {
    let now = h.now();
    let wall_base = now.wall_ms - now.mono_ms;
    let up: Vec<NodeId> = h.ids().into_iter().filter(|n| h.is_up(n)).collect();
    let mut violations = Vec::new();
    let (mut last, mut useful, mut wasted, mut claims, mut unfinished) = (0u64, 0u64, 0u64, 0, 0);
    let mut gang = GangStats::default();
    let busy: std::collections::HashSet<String> = sc
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.owner_load > 0.0)
        .map(|(i, _)| format!("n{i:04}"))
        .collect();
    let (mut succeeded, mut on_busy, mut copies, mut backup_lost) = (0u64, 0u64, 0u64, 0u64);
    for (id, _) in requests {
        let views: BTreeMap<&NodeId, _> = up
            .iter()
            .filter_map(|n| Some((n, h.node(n)?.get(now, id.as_str(), true).ok()?)))
            .collect();
        let Some((_, first)) = views.iter().next() else {
            continue;
        };
        let outcome = |i: &pesc_protocol::api::RequestInfo| -> Vec<_> {
            i.runs
                .iter()
                .flatten()
                .map(|r| (r.state, r.node.clone(), r.attempt))
                .collect()
        };
        let reference = outcome(first);
        if first.parallel {
            gang.add(first);
        }
        for (n, v) in &views {
            if outcome(v) != reference {
                violations.push(format!("{n} sees another outcome of request {id}"));
            }
        }
        for r in first.runs.iter().flatten() {
            if r.state != RunState::Succeeded {
                unfinished += 1;
                continue;
            }
            succeeded += 1;
            if r.node.as_ref().is_some_and(|n| busy.contains(n.as_str())) {
                on_busy += 1;
            }
            last = last.max(r.finished_ms.unwrap_or(0).saturating_sub(wall_base));
            for a in &r.history {
                claims += 1;
                copies += u64::from(a.backup);
                let ran = match (a.started_ms, a.finished_ms) {
                    (Some(s), Some(f)) => f.saturating_sub(s),
                    _ => 0,
                };
                if Some(a.epoch) == r.attempt && a.state == AttemptState::Succeeded {
                    useful += ran;
                } else {
                    wasted += ran;
                    if a.backup {
                        backup_lost += ran;
                    }
                }
            }
        }
    }
    if !finished && !up.is_empty() {
        violations.push(format!(
            "{unfinished} runs unfinished at the time limit while nodes were on"
        ));
    }
    for (n, t) in h.observed.over_slots.iter().take(5) {
        violations.push(format!("{n} ran more than its slots at {t} ms"));
    }
    let count = violations.len() as u64 + h.observed.over_slots.len().saturating_sub(5) as u64;
    violations.truncate(10);
    ExactReport {
        scenario: sc.name.clone(),
        mode: "exact",
        seed: sc.seed,
        nodes: sc.nodes.len(),
        runs: requests.iter().map(|r| r.1 as u64).sum(),
        finished,
        unfinished_runs: unfinished,
        makespan_s: last.saturating_sub(first_submit.min(last)) as f64 / 1000.0,
        duplicate_work_pct: if useful == 0 {
            0.0
        } else {
            wasted as f64 * 100.0 / useful as f64
        },
        claims,
        messages: h.observed.sent,
        messages_lost: h.observed.lost,
        invariant_violations: count,
        violation_examples: violations,
        gangs: gang.count,
        gangs_finished: gang.finished,
        gang_wait_p50_s: gang.wait_p50_s(),
        gang_wait_max_s: gang.waits_ms.iter().max().copied().unwrap_or(0) as f64 / 1000.0,
        gang_rounds_restarted: gang.restarted,
        gang_idle_slot_s: gang.idle_ms as f64 / 1000.0,
        load_order: sc.load_order,
        backups: sc.backups,
        backup_copies: copies,
        backup_lost_pct: if useful == 0 {
            0.0
        } else {
            backup_lost as f64 * 100.0 / useful as f64
        },
        runs_on_busy_desktops_pct: if succeeded == 0 {
            0.0
        } else {
            on_busy as f64 * 100.0 / succeeded as f64
        },
        simulated_in_s: t0.elapsed().as_secs_f64(),
    }
}

/// What the gangs of a scenario did.
#[derive(Default)]
struct GangStats {
    count: u64,
    finished: u64,
    waits_ms: Vec<u64>,
    restarted: u64,
    idle_ms: u64,
}

impl GangStats {
    fn add(&mut self, i: &pesc_protocol::api::RequestInfo) {
        self.count += 1;
        let runs = i.runs.as_deref().unwrap_or_default();
        for r in runs {
            for a in &r.history {
                // Unstarted attempts record their end as their start.
                let held_until = a.started_ms.or(a.finished_ms).unwrap_or(a.claimed_ms);
                self.idle_ms += held_until.saturating_sub(a.claimed_ms);
            }
        }
        if !runs.is_empty() && runs.iter().all(|r| r.state == RunState::Succeeded) {
            self.finished += 1;
            if let Some(start) = runs.iter().filter_map(|r| r.started_ms).min() {
                self.waits_ms.push(start.saturating_sub(i.created_ms));
            }
            self.restarted += u64::from(runs.iter().filter_map(|r| r.attempt).max().unwrap_or(0));
        }
    }

    fn wait_p50_s(&self) -> f64 {
        let mut w = self.waits_ms.clone();
        w.sort_unstable();
        w.get(w.len() / 2).copied().unwrap_or(0) as f64 / 1000.0
    }
}
