//! The scenarios the report covers, by name.

use crate::engine::NEVER;
use crate::net::{NetModel, Partition};
use crate::rng::Rng;
use crate::scenario::{Durations, NodeSpec, Reference, RequestPlan, Scenario, Timing};

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;

pub const ALL: [(&str, &str); 12] = [
    (
        "validate",
        "4 nodes × 2 slots, 64 runs of 0.5 s on loopback: the scenario also run with real pesc processes",
    ),
    (
        "thesis",
        "the PESC thesis experiment (§5.3): 1 200 runs on 4 clients",
    ),
    (
        "lab",
        "a lab of 40 desktops, 2 000 runs of 1–10 min, 10 % of desktops reclaimed by their owners",
    ),
    (
        "fairness",
        "40 desktops; a user with 4 000 queued runs, two users who submit later",
    ),
    (
        "overnight",
        "100 desktops from 16:00; half are switched off in the evening and on in the morning",
    ),
    (
        "partition",
        "400 nodes; half the grid cut off for 10 minutes, then healed",
    ),
    (
        "scale-1k",
        "1 000 nodes (10 % with GPUs, two rooms), 100 000 runs",
    ),
    ("scale-10k", "10 000 nodes, 1 000 000 runs, 1 %/min churn"),
    (
        "churn-200",
        "200 desktops × 2 slots, 2 000 runs of 30–90 s, 1 %/min of nodes crash and reboot",
    ),
    (
        "gangs",
        "12 desktops × 2 slots, 2 %/min crash; 16 parallel requests of 2–16 ranks (some on one node) within a minute, among 400 ordinary runs (exact mode only)",
    ),
    (
        "lab-load",
        "40 desktops × 2 slots, half in use by their owners (50–90 % CPU); three requests of 30 runs of 5–10 min, 30 min apart (exact mode)",
    ),
    (
        "smoke",
        "a small mixed scenario for the test suite: 12 nodes, churn, a partition",
    ),
];

pub fn by_name(name: &str, seed: u64) -> Option<Scenario> {
    let sc = match name {
        "validate" => validate(seed),
        "thesis" => thesis(seed),
        "lab" => lab(seed),
        "fairness" => fairness(seed),
        "overnight" => overnight(seed),
        "partition" => partition(seed),
        "scale-1k" => scale(seed, "scale-1k", 1_000, 100_000, 0.0),
        "scale-10k" => scale(seed, "scale-10k", 10_000, 1_000_000, 0.01),
        "smoke" => smoke(seed),
        "churn-200" => churn_200(seed),
        "gangs" => gangs(seed),
        "lab-load" => lab_load(seed),
        _ => return None,
    };
    Some(sc)
}

fn base(name: &str, seed: u64, nodes: Vec<NodeSpec>, net: NetModel) -> Scenario {
    Scenario {
        name: name.into(),
        description: ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| d.to_string())
            .unwrap_or_default(),
        seed,
        nodes,
        requests: Vec::new(),
        net,
        timing: Timing::default(),
        time_limit_ms: 72 * HOUR,
        check_every_step: false,
        sample_ms: MIN,
        reference: None,
        notes: Vec::new(),
        progress: false,
        load_order: true,
        backups: true,
    }
}

/// Desktops of mixed age: speeds uniform in [lo, hi).
fn desktops(rng: &mut Rng, n: usize, slots: u32, lo: f64, hi: f64) -> Vec<NodeSpec> {
    (0..n)
        .map(|_| NodeSpec::new(slots, rng.range(lo, hi)))
        .collect()
}

/// Crashes and reboots: each node fails at `per_min` per minute and is back
/// after a reboot of `down` minutes.
fn crashes(rng: &mut Rng, nodes: &mut [NodeSpec], per_min: f64, down: (f64, f64), horizon: u64) {
    if per_min <= 0.0 {
        return;
    }
    for n in nodes {
        let mut t = rng.exp(MIN as f64 / per_min);
        while (t as u64) < horizon {
            let off = rng.range(down.0, down.1) * MIN as f64;
            n.avail.add(t as u64, (t + off) as u64);
            t += off + rng.exp(MIN as f64 / per_min);
        }
    }
}

fn validate(seed: u64) -> Scenario {
    let mut sc = base(
        "validate",
        seed,
        (0..4).map(|_| NodeSpec::new(2, 1.0)).collect(),
        NetModel::loopback(seed),
    );
    sc.requests
        .push(RequestPlan::new(0, "ana", 64, Durations::Fixed(0.5)));
    sc.sample_ms = 250;
    sc.notes.push("same shape as `bench grid` (W2): 4 pesc processes × 2 slots on 127.0.0.1, 64 × `sleep 0.5`".into());
    sc
}

fn thesis(seed: u64) -> Scenario {
    // Mean run time per client (minutes) and runs per client in the thesis.
    let means = [80.0, 82.0, 31.0, 61.0];
    let runs = [207u32, 202, 567, 224];
    let makespan_min = 12.0 * 60.0 + 39.0;
    let fastest = 31.0;
    let nodes = means
        .iter()
        .zip(runs)
        .map(|(&m, r)| {
            // runs × mean time = busy slot-minutes; over the makespan: runs at once.
            let slots = (r as f64 * m / makespan_min).round() as u32;
            NodeSpec::new(slots, fastest / m)
        })
        .collect();
    let mut sc = base("thesis", seed, nodes, NetModel::lan(seed));
    sc.requests.push(RequestPlan::new(
        0,
        "thesis",
        1200,
        Durations::LogNormal {
            mean: fastest * 60.0,
            sigma: 0.2,
        },
    ));
    sc.reference = Some(Reference {
        source: "PESC thesis §5.3 (measured)".into(),
        makespan_s: makespan_min * 60.0,
        runs_per_node: runs.to_vec(),
    });
    sc.notes.push(
        "concurrency derived from the thesis's numbers: runs × mean run time / 12 h 39 m gives 22, 22, 23 and 18 runs at once"
            .into(),
    );
    sc.notes.push("each client's speed is 31 min / its mean run time; run work varies ±20 % (log-normal σ 0.2), which the thesis does not give".into());
    sc
}

fn lab(seed: u64) -> Scenario {
    let mut rng = Rng::new(seed).fork(10);
    let mut nodes = desktops(&mut rng, 40, 4, 0.8, 1.25);
    // 4 owners come back during the day and take their desktop for 1–2 h.
    for i in 0..4 {
        let k = (i * 10 + rng.below(10) as usize) % 40;
        let at = rng.range(10.0, 50.0) * MIN as f64;
        let back = at + rng.range(60.0, 120.0) * MIN as f64;
        nodes[k].avail.add(at as u64, back as u64);
    }
    let mut sc = base("lab", seed, nodes, NetModel::lan(seed));
    sc.requests.push(RequestPlan::new(
        0,
        "ana",
        2000,
        Durations::Uniform(60.0, 600.0),
    ));
    sc.notes.push("a reclaimed desktop leaves like a switched-off one: its runs are reassigned after the lease TTL (the owner policy of issue 6 will vacate them at once)".into());
    sc
}

fn fairness(seed: u64) -> Scenario {
    let mut rng = Rng::new(seed).fork(11);
    let nodes = desktops(&mut rng, 40, 4, 0.8, 1.25);
    let mut sc = base("fairness", seed, nodes, NetModel::lan(seed));
    sc.requests.push(RequestPlan::new(
        0,
        "ana",
        4000,
        Durations::Uniform(60.0, 600.0),
    ));
    let mut bia = RequestPlan::new(10 * MIN, "bia", 40, Durations::Uniform(60.0, 600.0));
    bia.node = 7;
    let mut caio = RequestPlan::new(20 * MIN, "caio", 200, Durations::Uniform(60.0, 600.0));
    caio.node = 21;
    sc.requests.extend([bia, caio]);
    sc
}

fn overnight(seed: u64) -> Scenario {
    let mut rng = Rng::new(seed).fork(12);
    let mut nodes = desktops(&mut rng, 100, 4, 0.8, 1.25);
    // t = 0 is 16:00. Half the desktops go off between 18:00 and 20:00 and
    // come back between 07:30 and 08:30.
    for n in nodes.iter_mut().take(50) {
        let off = 2.0 * HOUR as f64 + rng.range(0.0, 2.0) * HOUR as f64;
        let on = 15.5 * HOUR as f64 + rng.range(0.0, 1.0) * HOUR as f64;
        n.avail.add(off as u64, on as u64);
    }
    let mut sc = base("overnight", seed, nodes, NetModel::lan(seed));
    sc.requests.push(RequestPlan::new(
        0,
        "ana",
        12_000,
        Durations::Uniform(300.0, 1800.0),
    ));
    sc.sample_ms = 5 * MIN;
    sc
}

fn partition(seed: u64) -> Scenario {
    let mut rng = Rng::new(seed).fork(13);
    let nodes = desktops(&mut rng, 400, 4, 0.8, 1.25);
    let mut sc = base("partition", seed, nodes, NetModel::campus(seed));
    sc.net.partitions.push(Partition {
        start_ms: 20 * MIN,
        end_ms: 30 * MIN,
        side: (0..400).map(|i| i % 2 == 0).collect(),
    });
    sc.requests.push(RequestPlan::new(
        0,
        "ana",
        20_000,
        Durations::LogNormal {
            mean: 300.0,
            sigma: 0.5,
        },
    ));
    sc
}

fn scale(seed: u64, name: &str, n: usize, runs: u32, churn_per_min: f64) -> Scenario {
    let mut rng = Rng::new(seed).fork(14);
    let mut nodes = desktops(&mut rng, n, 4, 0.7, 1.3);
    for (i, node) in nodes.iter_mut().enumerate() {
        if i % 10 == 3 {
            node.gpus = 1;
        }
        if i % 4 == 1 {
            node.rooms.push("stats".into());
        }
    }
    crashes(&mut rng, &mut nodes, churn_per_min, (2.0, 10.0), 24 * HOUR);
    let mut sc = base(name, seed, nodes, NetModel::campus(seed));
    let main = runs - runs / 50 - runs / 100;
    sc.requests.push(RequestPlan::new(
        0,
        "ana",
        main,
        Durations::LogNormal {
            mean: 300.0,
            sigma: 0.5,
        },
    ));
    let mut gpu = RequestPlan::new(
        5 * MIN,
        "bia",
        runs / 50,
        Durations::LogNormal {
            mean: 300.0,
            sigma: 0.5,
        },
    );
    gpu.gpus = 1;
    gpu.node = 3;
    let mut room = RequestPlan::new(
        10 * MIN,
        "caio",
        runs / 100,
        Durations::LogNormal {
            mean: 300.0,
            sigma: 0.5,
        },
    );
    room.rooms = vec!["stats".into()];
    room.node = 5;
    sc.requests.extend([gpu, room]);
    sc.sample_ms = MIN;
    // The programs save their progress in checkpoint/; the node snapshots it
    // every minute (the default) and a cut run resumes from the newest one.
    sc.timing.checkpoint_ms = MIN;
    sc.notes.push(
        "checkpoints: programs save their progress; snapshots every 60 s (the default), so a run cut by a crash loses under a minute of work".into(),
    );
    if churn_per_min > 0.0 {
        sc.notes.push(format!(
            "churn: each node crashes at {:.0} % per minute and reboots in 2–10 min",
            churn_per_min * 100.0
        ));
    }
    sc
}

fn smoke(seed: u64) -> Scenario {
    let mut rng = Rng::new(seed).fork(15);
    let mut nodes = desktops(&mut rng, 12, 2, 0.5, 1.5);
    nodes[1].gpus = 1;
    nodes[2].gpus = 1;
    nodes[3].avail.add(15_000, 70_000);
    nodes[4].avail.add(30_000, NEVER);
    let mut sc = base("smoke", seed, nodes, NetModel::lan(seed));
    sc.net.loss = 0.02;
    sc.net.partitions.push(Partition {
        start_ms: 20_000,
        end_ms: 50_000,
        side: (0..12).map(|i| i < 4).collect(),
    });
    sc.requests.push(RequestPlan::new(
        0,
        "ana",
        150,
        Durations::Uniform(2.0, 12.0),
    ));
    let mut b = RequestPlan::new(5_000, "bia", 20, Durations::Uniform(2.0, 6.0));
    b.node = 6;
    let mut g = RequestPlan::new(8_000, "caio", 10, Durations::Fixed(4.0));
    g.gpus = 1;
    g.node = 9;
    sc.requests.extend([b, g]);
    sc.sample_ms = 1_000;
    sc.time_limit_ms = HOUR;
    sc.check_every_step = true;
    sc
}

fn churn_200(seed: u64) -> Scenario {
    let mut rng = Rng::new(seed).fork(16);
    let mut nodes = desktops(&mut rng, 200, 2, 0.8, 1.25);
    crashes(&mut rng, &mut nodes, 0.01, (1.0, 3.0), 4 * HOUR);
    let mut sc = base("churn-200", seed, nodes, NetModel::lan(seed));
    sc.requests.push(RequestPlan::new(
        0,
        "ana",
        2000,
        Durations::Uniform(30.0, 90.0),
    ));
    sc.time_limit_ms = 4 * HOUR;
    sc
}

/// Gangs of mixed sizes on a grid that cannot hold the largest two at once,
/// among ordinary runs, with desktops crashing: every gang must finish.
fn gangs(seed: u64) -> Scenario {
    let mut rng = Rng::new(seed).fork(17);
    let mut nodes = desktops(&mut rng, 12, 2, 0.9, 1.1);
    crashes(&mut rng, &mut nodes, 0.02, (1.0, 3.0), 2 * HOUR);
    let mut sc = base("gangs", seed, nodes, NetModel::lan(seed));
    // World sizes: the two largest (16 and 12) need 28 of 24 slots together.
    let worlds = [2u32, 16, 4, 12, 3, 8, 2, 6, 4, 2, 10, 3, 5, 2, 8, 4];
    for (i, &w) in worlds.iter().enumerate() {
        let secs = rng.range(60.0, 180.0);
        // Submitted within a minute, from different desktops: nodes start
        // gathering several gangs at once.
        let mut g = RequestPlan::new(i as u64 * 4_000, "ana", w, Durations::Fixed(secs));
        g.parallel = true;
        // The small ones on one node (a desktop has 2 slots).
        g.same_node = w == 2 && i % 2 == 0;
        g.node = (i % 12) as u32;
        sc.requests.push(g);
    }
    for (at, owner, node) in [(0, "bia", 3u32), (60_000, "caio", 7)] {
        let mut r = RequestPlan::new(at, owner, 200, Durations::Uniform(20.0, 60.0));
        r.node = node;
        sc.requests.push(r);
    }
    sc.time_limit_ms = 2 * HOUR;
    sc
}

/// A heterogeneous lab: half the desktops are in use by their owners (who
/// keep 50–90 % of the CPU busy, so runs there go at the rest), and work
/// comes in smaller batches than the lab's free slots. Where runs land
/// decides the makespan: the load order sends them to idle desktops first.
fn lab_load(seed: u64) -> Scenario {
    let mut rng = Rng::new(seed).fork(18);
    let mut nodes = desktops(&mut rng, 40, 2, 0.8, 1.25);
    for n in nodes.iter_mut().step_by(2) {
        n.owner_load = rng.range(0.5, 0.9);
    }
    let mut sc = base("lab-load", seed, nodes, NetModel::lan(seed));
    for (i, owner) in ["ana", "bia", "caio"].iter().enumerate() {
        // The lab has been on for a minute when the first comes.
        let mut r = RequestPlan::new(
            MIN + i as u64 * 30 * MIN,
            owner,
            30,
            Durations::Uniform(300.0, 600.0),
        );
        r.node = (i * 7) as u32;
        sc.requests.push(r);
    }
    sc.notes.push("an owner's load is constant through the run; a run on a desktop whose owner keeps p of its CPU goes at (1 − p) of its speed (runs yield to the owner's programs: lower CPU weight); nodes read their load every 5 simulated seconds".into());
    sc.time_limit_ms = 6 * HOUR;
    sc
}
