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
    pub cpu_percent_limit: u32,
    /// While another user is logged in at the desktop: running containers
    /// get this percentage of their CPU, and no new runs are taken.
    pub concurrent_resources_percent: u32,
    /// Runs share a GPU while their learned peak memory adds up to at most
    /// this percentage of its memory.
    pub gpu_percent_memory_limit: u32,
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
}

/// Why the node takes no new runs now, if it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pause {
    /// Others use this much of the CPU (percent).
    Busy(u32),
    /// These users are logged in at the desktop.
    Owner(Vec<String>),
}

impl std::fmt::Display for Pause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pause::Busy(p) => write!(f, "the machine is busy ({p} % CPU used by others)"),
            Pause::Owner(u) => write!(f, "{} logged in at this desktop", u.join(", ")),
        }
    }
}

impl Node {
    /// A probe reading.
    pub fn probe(&mut self, _now: Now, s: Sample) {
        self.rescan = true;
        self.load = s.load;
        self.memory = s.memory;
        self.apply_policy(&s);
        self.read_gpus(s.gpus, &s.gpu_use);
    }

    /// Why the node pauses now, if it does.
    fn apply_policy(&mut self, s: &Sample) {
        let p = &self.cfg.policy;
        let pause = if !s.others_logged_in.is_empty() {
            Some(Pause::Owner(s.others_logged_in.clone()))
        } else {
            s.others_cpu_percent
                .filter(|used| *used > p.cpu_percent_limit)
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
