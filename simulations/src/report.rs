//! The metrics of one finished scenario, as JSON and SVG.

use std::collections::BTreeMap;

use pesc_protocol::model::AttemptState;
use serde::Serialize;

use crate::engine::{NEVER, Sim};
use crate::metrics::Point;
use crate::net::NetModel;
use crate::scenario::{Reference, Timing};
use crate::sizes::Sizes;
use crate::svg;
use crate::yardstick::{Order, central_queue_end};

#[derive(Debug, Clone, Serialize)]
pub struct Distribution {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Distribution {
    /// From milliseconds, in seconds.
    pub fn of_ms(v: &[u64]) -> Distribution {
        let mut s: Vec<u64> = v.to_vec();
        s.sort_unstable();
        let q = |p: f64| {
            if s.is_empty() {
                0.0
            } else {
                s[((s.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
            }
        };
        Distribution {
            count: s.len(),
            mean: if s.is_empty() {
                0.0
            } else {
                s.iter().sum::<u64>() as f64 / s.len() as f64 / 1000.0
            },
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: q(1.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Bandwidth {
    /// Bytes each node received per second, averaged over the run.
    pub mean: f64,
    /// The busiest sampling period.
    pub peak: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub seed: u64,
    pub nodes: usize,
    pub slots: u64,
    pub requests: usize,
    pub runs: u64,
    pub finished: bool,
    pub unfinished_runs: u64,
    pub makespan_s: f64,
    /// Σ work / Σ capacity, with capacity following the nodes that are on.
    pub ideal_makespan_s: f64,
    pub makespan_over_ideal: f64,
    /// A perfect central queue (no latency, learns switch-offs at once)
    /// handing runs out in rank order: the best any scheduler that does not
    /// know run times can expect (`yardstick`).
    pub central_queue_makespan_s: f64,
    /// The same queue handing the longest runs out first (it knows every
    /// run's time in advance).
    pub longest_first_makespan_s: f64,
    pub duplicate_work_pct: f64,
    /// Duplicate work plus work cut by nodes switched off.
    pub wasted_work_pct: f64,
    pub claims: u64,
    pub claim_conflicts: u64,
    /// Runs taken over from a node that was on but out of reach.
    pub takeovers: u64,
    pub double_results: u64,
    /// Backup copies of stragglers started, how many became the result,
    /// and the run time of those that did not over the useful work.
    pub backup_copies: u64,
    pub backup_wins: u64,
    pub backup_lost_pct: f64,
    pub abandoned: BTreeMap<String, u64>,
    pub nodes_switched_off: u64,
    /// Time from a holder switching off to its run being claimed elsewhere.
    pub failover_s: Distribution,
    pub sync_bytes_per_node_s: Bandwidth,
    pub gossip_bytes_per_node_s: Bandwidth,
    /// Peak traffic over each node's link capacity.
    pub link_utilization_peak: f64,
    /// The sync overlay: mean links per node and the most hops between two nodes.
    pub overlay_degree: f64,
    pub overlay_diameter: u32,
    /// Which mechanism does not hold at this size, if any.
    pub breaks: Vec<String>,
    pub queue_wait_s: BTreeMap<String, Distribution>,
    /// Runs finished per node (first 50 nodes).
    pub runs_per_node: Vec<u32>,
    pub reference: Option<Reference>,
    pub invariant_violations: u64,
    pub violation_examples: Vec<String>,
    pub timing: Timing,
    pub net: NetModel,
    pub message_sizes: Sizes,
    pub notes: Vec<String>,
    #[serde(skip)]
    pub series: Vec<Point>,
    #[serde(skip)]
    pub failovers_ms: Vec<u64>,
}

/// When cumulative capacity (slots × speed of the nodes on) from `from`
/// covers `work_ms` of reference-machine work.
fn ideal_end(sim: &Sim, from: u64, work_ms: f64) -> u64 {
    let mut changes: Vec<(u64, f64)> = Vec::new();
    let mut cap = 0.0;
    for n in &sim.sc.nodes {
        let c = n.slots as f64 * n.speed;
        if n.avail.is_up(from) {
            cap += c;
        }
        for &(d, u) in &n.avail.off {
            if d > from {
                changes.push((d, -c));
            }
            if u > from && u != NEVER {
                changes.push((u, c));
            }
        }
    }
    changes.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let (mut t, mut left) = (from as f64, work_ms);
    for (at, dc) in changes {
        let span = at as f64 - t;
        if cap > 0.0 && cap * span >= left {
            return (t + left / cap).ceil() as u64;
        }
        left -= cap * span.max(0.0);
        t = at as f64;
        cap += dc;
    }
    if cap <= 0.0 {
        NEVER
    } else {
        (t + left / cap).ceil() as u64
    }
}

pub fn build(sim: Sim) -> Report {
    let first = sim.reqs.iter().map(|r| r.submit_t).min().unwrap_or(0);
    let last = sim.reqs.iter().map(|r| r.done_t).max().unwrap_or(0);
    let finished = sim.all_done();
    let end = if finished { last } else { sim.now };
    let work: f64 = sim
        .reqs
        .iter()
        .flat_map(|r| r.work.iter())
        .map(|&w| w as f64)
        .sum();
    let ideal = ideal_end(&sim, first, work);
    let makespan_s = (end - first) as f64 / 1000.0;
    let span = |t: u64| {
        if t == NEVER {
            f64::INFINITY
        } else {
            t.saturating_sub(first) as f64 / 1000.0
        }
    };
    let central_s = span(central_queue_end(&sim, Order::Rank));
    let longest_first_s = span(central_queue_end(&sim, Order::LongestFirst));
    let ideal_s = ideal.saturating_sub(first) as f64 / 1000.0;
    let m = &sim.m;
    let pct = |x: u64| {
        if m.useful_ms == 0 {
            0.0
        } else {
            x as f64 * 100.0 / m.useful_ms as f64
        }
    };
    let series = m.series.clone();
    let bw = |f: fn(&Point) -> f64| {
        let span: f64 = series.last().map(|p| p.t_s).unwrap_or(0.0);
        let mut total = 0.0;
        let mut prev = 0.0;
        for p in &series {
            total += f(p) * (p.t_s - prev);
            prev = p.t_s;
        }
        Bandwidth {
            mean: if span > 0.0 { total / span } else { 0.0 },
            peak: series.iter().map(f).fold(0.0, f64::max),
        }
    };
    let sync = bw(|p| p.sync_bps);
    let gossip = bw(|p| p.gossip_bps);
    let util = (sync.peak + gossip.peak) / sim.sc.net.bandwidth_bps;
    let mut breaks = Vec::new();
    if gossip.mean > 10_000.0 {
        breaks.push(format!(
            "gossip: {:.0} B/s per node (target ≤ 10 KB/s): pings to at most {} ring neighbours every {} ms are O(1); Down/Up notices, flooded to every node, grow with nodes × churn",
            gossip.mean,
            2 * pesc_protocol::liveness::WATCH_SIDE,
            sim.sc.timing.heartbeat_ms
        ));
    }
    if util > 1.0 {
        breaks.push(format!(
            "sync: peak {:.0} B/s per node is {:.1}× the link: every change crosses each of the grid's sync links once (full replication: every node holds every request)",
            sync.peak, util
        ));
    }
    let over = if ideal_s > 0.0 {
        makespan_s / ideal_s
    } else {
        0.0
    };
    if over > 1.1 {
        // The tail: the runs started last, and how long the longest ran.
        let last_start = sim.atts.iter().map(|x| x.start_t).max().unwrap_or(first);
        let late = first + ((last_start - first) as f64 * 0.95) as u64;
        let longest = sim
            .atts
            .iter()
            .filter(|x| x.start_t >= late && x.state == AttemptState::Succeeded)
            .map(|x| x.end_t - x.start_t)
            .max()
            .unwrap_or(0);
        breaks.push(format!(
            "makespan ×{over:.3} (target ≤ 1.1): the last run started at {:.0} s ({:.2} × ideal); among the runs started in the last 5 % of that time the longest took {:.0} s. A perfect central queue handing runs out in rank order would reach ×{:.3} (PESC's protocol costs ×{:.3} over it); handing the longest out first, knowing every run time in advance, ×{:.3}: the tail is the run times', and no scheduler that does not know them can avoid it",
            (last_start - first) as f64 / 1000.0,
            (last_start - first) as f64 / 1000.0 / ideal_s.max(1e-9),
            longest as f64 / 1000.0,
            central_s / ideal_s.max(1e-9),
            makespan_s / central_s,
            longest_first_s / ideal_s.max(1e-9),
        ));
    }
    let unfinished: u64 = sim.reqs.iter().map(|r| r.unfinished.len() as u64).sum();
    let mut violations = m.violations;
    let mut examples = m.violation_examples.clone();
    if !finished && sim.nodes.iter().any(|n| n.up) {
        violations += 1;
        examples.push(format!(
            "{unfinished} runs unfinished at the time limit while nodes were on"
        ));
    }
    Report {
        scenario: sim.sc.name.clone(),
        description: sim.sc.description.clone(),
        seed: sim.sc.seed,
        nodes: sim.nodes.len(),
        slots: sim.nodes.iter().map(|n| n.slots as u64).sum(),
        requests: sim.reqs.len(),
        runs: sim.reqs.iter().map(|r| r.spec.repetitions as u64).sum(),
        finished,
        unfinished_runs: unfinished,
        makespan_s,
        ideal_makespan_s: ideal_s,
        makespan_over_ideal: if ideal_s > 0.0 {
            makespan_s / ideal_s
        } else {
            0.0
        },
        central_queue_makespan_s: central_s,
        longest_first_makespan_s: longest_first_s,
        duplicate_work_pct: pct(m.duplicate_ms),
        wasted_work_pct: pct(m.duplicate_ms + m.lost_ms),
        claims: m.claims,
        claim_conflicts: m.claim_conflicts,
        takeovers: m.takeovers,
        double_results: m.double_results,
        backup_copies: m.backup_copies,
        backup_wins: m.backup_wins,
        backup_lost_pct: pct(m.backup_lost_ms),
        abandoned: m.abandoned.clone(),
        nodes_switched_off: m.downs,
        failover_s: Distribution::of_ms(&m.failovers_ms),
        sync_bytes_per_node_s: sync,
        gossip_bytes_per_node_s: gossip,
        link_utilization_peak: util,
        overlay_degree: sim.degree,
        overlay_diameter: sim.overlay.diameter(),
        breaks,
        queue_wait_s: m
            .waits_ms
            .iter()
            .map(|(u, v)| (u.clone(), Distribution::of_ms(v)))
            .collect(),
        runs_per_node: sim.nodes.iter().take(50).map(|n| n.runs_done).collect(),
        reference: sim.sc.reference.clone(),
        invariant_violations: violations,
        violation_examples: examples,
        timing: sim.sc.timing,
        net: sim.sc.net.clone(),
        message_sizes: sim.sizes,
        notes: sim.sc.notes.clone(),
        series,
        failovers_ms: m.failovers_ms.clone(),
    }
}

impl Report {
    /// The scenario's charts: (file name, SVG).
    pub fn charts(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let hours = self.makespan_s > 3.0 * 3600.0;
        let (unit, div) = if hours {
            ("hours", 3600.0)
        } else if self.makespan_s > 600.0 {
            ("minutes", 60.0)
        } else {
            ("seconds", 1.0)
        };
        let pts = |f: fn(&Point) -> f64| {
            self.series
                .iter()
                .map(|p| (p.t_s / div, f(p)))
                .collect::<Vec<_>>()
        };
        out.push((
            format!("{}-slots.svg", self.scenario),
            svg::lines(
                &format!("{}: runs in progress and slots on", self.scenario),
                &format!("time ({unit})"),
                "slots",
                &[
                    svg::Series {
                        name: "slots on".into(),
                        points: pts(|p| p.slots_up),
                    },
                    svg::Series {
                        name: "runs in progress".into(),
                        points: pts(|p| p.busy as f64),
                    },
                ],
            ),
        ));
        out.push((
            format!("{}-traffic.svg", self.scenario),
            svg::lines(
                &format!("{}: bytes received per node per second", self.scenario),
                &format!("time ({unit})"),
                "B/s",
                &[
                    svg::Series {
                        name: "document sync".into(),
                        points: pts(|p| p.sync_bps),
                    },
                    svg::Series {
                        name: "gossip".into(),
                        points: pts(|p| p.gossip_bps),
                    },
                ],
            ),
        ));
        if !self.failovers_ms.is_empty() {
            let v: Vec<f64> = self
                .failovers_ms
                .iter()
                .map(|&x| x as f64 / 1000.0)
                .collect();
            out.push((
                format!("{}-failover.svg", self.scenario),
                svg::histogram(
                    &format!(
                        "{}: node switched off → run claimed elsewhere",
                        self.scenario
                    ),
                    "seconds",
                    &v,
                    30,
                ),
            ));
        }
        out
    }
}
