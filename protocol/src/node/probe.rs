//! What the node's probes measure (who is logged in, others' CPU use, the
//! GPUs, the load) and what the node decides from it: the desktop owner's
//! policy pauses claims and cuts running containers down, GPU admission
//! learns each program's peak memory.

use crate::RequestId;
use crate::model::Gpu;

use super::action::Action;
use super::scheduling::usage_key;
use super::{Node, Now};

/// The desktop owner's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Take no new runs while others' CPU use is above this percentage of
    /// the machine (100: never pause).
    pub pause_when_others_above: u32,
    /// While another user is logged in at the desktop: running containers
    /// get this percentage of their CPU, and no new runs are taken.
    pub concurrent_resources_percent: u32,
    /// Runs share a GPU while their learned peak memory adds up to at most
    /// this percentage of its memory.
    pub gpu_percent_memory_limit: u32,
    /// Runs are admitted while everything on the machine, with their
    /// expected peaks, stays under this percentage of its memory
    /// (`crate::resources`).
    pub memory_percent_limit: u32,
    /// What a run of a program never seen here is expected to take (MiB)
    /// when its request asks nothing.
    pub default_run_memory_mb: u64,
    /// The share of the machine's CPUs PESC's runs may keep busy together
    /// (percent; 100: as many runs as slots).
    pub max_cpu_share: u32,
    /// Start runs only after this long without keyboard or mouse input
    /// (0: the node does not watch for its owner).
    pub idle_minutes: u32,
    /// Runs suspended for the owner this long are handed back to the grid
    /// from their checkpoints.
    pub vacate_minutes: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            pause_when_others_above: 70,
            concurrent_resources_percent: 10,
            gpu_percent_memory_limit: 90,
            memory_percent_limit: 80,
            default_run_memory_mb: 1024,
            max_cpu_share: 100,
            idle_minutes: 0,
            vacate_minutes: 10,
        }
    }
}

/// One reading of the probes, taken off the node's task.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Other users logged in at the desktop (when the policy watches).
    pub others_logged_in: Vec<String>,
    /// Percentage of the machine's CPU others used since the last sample
    /// (when the policy watches).
    pub others_cpu_percent: Option<u32>,
    /// The GPUs now.
    pub gpus: Vec<Gpu>,
    /// GPU memory (MiB) in use by this node's runs, by request.
    pub gpu_use: Vec<(RequestId, u64)>,
    /// One-minute load average per CPU.
    pub load: f32,
    /// Memory (MiB): total and available, when known.
    pub memory: Option<(u64, u64)>,
    /// What each of this node's runs uses now.
    pub runs: Vec<RunUse>,
    /// The machine's CPUs (0: unknown).
    pub cpus: u32,
    /// How long nobody has touched the desktop's keyboard or mouse (ms),
    /// when the policy watches and the node can tell.
    pub idle_ms: Option<u64>,
    /// GPUs (by index) that programs other than this node's use.
    pub owner_gpus: Vec<u32>,
}

/// What one run's processes use, as one probe reading saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunUse {
    pub request: RequestId,
    pub rank: u32,
    /// Resident memory (MiB), all its processes, now and at their highest.
    pub now_mb: u64,
    pub peak_mb: u64,
    /// CPU since the last reading, in percent of one CPU.
    pub cpu_percent: u32,
}

/// Why the node takes no new runs now, if it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pause {
    /// Others use this much of the CPU (percent).
    Busy(u32),
    /// These users are logged in at the desktop.
    Owner(Vec<String>),
    /// Someone used the keyboard or mouse less than this many minutes ago
    /// (`owner`).
    Active(u32),
}

impl Pause {
    /// The desktop's owner is at it (rather than busy with other work).
    pub fn owner_here(&self) -> bool {
        matches!(self, Pause::Owner(_) | Pause::Active(_))
    }
}

impl std::fmt::Display for Pause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pause::Busy(p) => write!(f, "the machine is busy ({p} % CPU used by others)"),
            Pause::Owner(u) => write!(f, "{} logged in at this desktop", u.join(", ")),
            Pause::Active(m) => write!(
                f,
                "its owner is using it (runs start after {m} minute(s) without keyboard or mouse)"
            ),
        }
    }
}

impl Node {
    /// A probe reading.
    pub fn probe(&mut self, now: Now, s: Sample) {
        self.rescan = true;
        self.load = s.load;
        self.memory = s.memory;
        self.cpus = s.cpus;
        self.read_runs(&s.runs);
        self.apply_policy(&s);
        let active = self.owner_active(s.idle_ms);
        self.follow_owner(now, active, &s.owner_gpus);
        self.read_gpus(s.gpus, &s.gpu_use);
    }

    /// Why the node pauses now, if it does.
    fn apply_policy(&mut self, s: &Sample) {
        let p = &self.cfg.policy;
        let pause = if !s.others_logged_in.is_empty() {
            Some(Pause::Owner(s.others_logged_in.clone()))
        } else if self.owner_active(s.idle_ms) {
            Some(Pause::Active(p.idle_minutes))
        } else {
            s.others_cpu_percent
                .filter(|used| *used > p.pause_when_others_above)
                .map(Pause::Busy)
        };
        if pause == self.paused {
            return;
        }
        let owner = |x: &Option<Pause>| matches!(x, Some(Pause::Owner(_)));
        if owner(&pause) != owner(&self.paused) {
            let share = owner(&pause).then_some(p.concurrent_resources_percent);
            self.actions.push_back(Action::Throttle(share));
        }
        match &pause {
            Some(why) if self.paused.is_none() => tracing::info!("taking no new runs: {why}"),
            Some(why) => tracing::info!("still taking no new runs: {why}"),
            None => tracing::info!("taking runs again"),
        }
        self.paused = pause;
    }

    /// The GPUs as read now (memory in use changes; a device may go), and
    /// the peak memory of the runs seen on them.
    fn read_gpus(&mut self, gpus: Vec<Gpu>, used: &[(RequestId, u64)]) {
        self.gpus = gpus;
        for (req, mb) in used {
            let Some(q) = self.requests.get(req) else {
                continue;
            };
            let peak = self.gpu_peaks.entry(usage_key(q.doc.spec())).or_default();
            if *mb > *peak {
                *peak = *mb;
                tracing::info!(
                    "GPU memory of {} learned: {mb} MiB",
                    q.doc.spec().process.name
                );
            }
        }
        self.caps.gpus = self.gpus.len() as u32;
        self.caps.gpu_capability = self.gpus.iter().map(|g| g.capability).fold(0.0, f32::max);
    }
}
