//! What a scenario is made of: nodes, the work users submit, the network.

use serde::Serialize;

use crate::churn::Availability;
use crate::net::NetModel;
use crate::rng::Rng;

/// One virtual node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Runs at once.
    pub slots: u32,
    /// Work per second of wall time (1.0: the reference machine).
    pub speed: f64,
    pub gpus: u32,
    /// Rooms besides General.
    pub rooms: Vec<String>,
    pub avail: Availability,
    /// The share of its CPU the desktop's owner keeps busy (0 to 1): runs
    /// there go at the rest, and the node's load says so (exact mode).
    pub owner_load: f64,
}

impl NodeSpec {
    pub fn new(slots: u32, speed: f64) -> Self {
        NodeSpec {
            slots,
            speed,
            gpus: 0,
            rooms: Vec::new(),
            avail: Availability::always(),
            owner_load: 0.0,
        }
    }
}

/// How long a run's work takes on the reference machine, in seconds.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durations {
    Fixed(f64),
    Uniform(f64, f64),
    /// Log-normal with this mean and shape σ.
    LogNormal {
        mean: f64,
        sigma: f64,
    },
}

impl Durations {
    pub fn draw(&self, rng: &mut Rng) -> f64 {
        match *self {
            Durations::Fixed(s) => s,
            Durations::Uniform(a, b) => rng.range(a, b),
            Durations::LogNormal { mean, sigma } => {
                let mu = mean.ln() - sigma * sigma / 2.0;
                (mu + sigma * rng.normal()).exp()
            }
        }
    }
}

/// A request a user submits at `at_ms` on node `node`.
#[derive(Debug, Clone, Serialize)]
pub struct RequestPlan {
    pub at_ms: u64,
    pub node: u32,
    pub owner: String,
    pub runs: u32,
    pub durations: Durations,
    pub gpus: u32,
    pub rooms: Vec<String>,
    /// A gang (`pesc_protocol::gang`): every rank at once; `same_node`, all
    /// on one node. Only the exact mode runs gangs.
    pub parallel: bool,
    pub same_node: bool,
}

impl RequestPlan {
    pub fn new(at_ms: u64, owner: &str, runs: u32, durations: Durations) -> Self {
        RequestPlan {
            at_ms,
            node: 0,
            owner: owner.into(),
            runs,
            durations,
            gpus: 0,
            rooms: Vec::new(),
            parallel: false,
            same_node: false,
        }
    }
}

/// Protocol timing, as configured on real nodes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub lease_ttl_ms: u64,
    /// A node's housekeeping tick: an expired lease is noticed at the next one.
    pub tick_ms: u64,
    /// Claim to program start (prepare the slot, start the process).
    pub start_overhead_ms: u64,
    /// A node that comes back claims nothing until it has caught up.
    pub catchup_ms: u64,
    /// How often a run's `checkpoint/` is snapshotted and kept by another
    /// node (`checkpoint_interval_s`), for programs that save their
    /// progress there: a run cut by a crash resumes from its newest
    /// snapshot wherever it runs next. 0: programs keep no checkpoint, a
    /// cut run starts again from zero.
    pub checkpoint_ms: u64,
}

impl Timing {
    /// Of `ran_ms` of wall time of a run cut by a crash, how much its newest
    /// checkpoint snapshot kept.
    pub fn kept_ms(&self, ran_ms: u64) -> u64 {
        match self.checkpoint_ms {
            0 => 0,
            c => ran_ms / c * c,
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: pesc_protocol::lease::DEFAULT_HEARTBEAT_MS,
            lease_ttl_ms: pesc_protocol::lease::DEFAULT_LEASE_TTL_MS,
            tick_ms: 500,
            start_overhead_ms: 15,
            catchup_ms: 2_000,
            checkpoint_ms: 0,
        }
    }
}

/// Numbers published elsewhere that the report shows beside ours.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    pub source: String,
    pub makespan_s: f64,
    pub runs_per_node: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub nodes: Vec<NodeSpec>,
    pub requests: Vec<RequestPlan>,
    pub net: NetModel,
    pub timing: Timing,
    /// Give up after this much simulated time.
    pub time_limit_ms: u64,
    /// Check every invariant after every event (slow; tests turn it on).
    pub check_every_step: bool,
    /// Metrics sampling period for the time series.
    pub sample_ms: u64,
    pub reference: Option<Reference>,
    /// Free-form notes the report prints (assumptions, derivations).
    pub notes: Vec<String>,
    /// Print a progress line on stderr every simulated 10 minutes.
    pub progress: bool,
    /// Nodes use the load order (`claim_order::load_delay_ms`); off only to
    /// measure what it gives (exact mode, `--no-load-order`).
    pub load_order: bool,
    /// Requests allow backup copies of stragglers (`crate::backup` in the
    /// protocol); off only to measure what they give (`--no-backups`).
    pub backups: bool,
}

impl Scenario {
    /// Each request's id bytes and the work of each of its runs (ms on the
    /// reference machine), drawn from the seed: both modes run the same work.
    /// Whether a request of the scenario is a gang (only the exact mode
    /// runs those: the fast engine does not model them).
    pub fn has_gangs(&self) -> bool {
        self.requests.iter().any(|r| r.parallel)
    }

    pub fn drawn_work(&self) -> Vec<([u8; 8], Vec<u32>)> {
        let mut rng = Rng::new(self.seed);
        // The engine's first fork draws heartbeat phases.
        let _phases = rng.fork(1);
        let mut work_rng = rng.fork(2);
        self.requests
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                let mut id = [0u8; 8];
                id.copy_from_slice(&work_rng.next_u64().to_le_bytes());
                let mut wr = work_rng.fork(i as u64);
                let work = (0..plan.runs)
                    .map(|_| {
                        (plan.durations.draw(&mut wr) * 1000.0).clamp(1.0, u32::MAX as f64) as u32
                    })
                    .collect();
                (id, work)
            })
            .collect()
    }
}
