//! How much memory and CPU a run is expected to take, and whether a node
//! has room for one more under its owner's limits.
//!
//! A program's peak memory and CPU are learned from its runs (the node's
//! probes read every run's processes each heartbeat period; the highest
//! reading is kept per program and domain, and written into the attempt, so
//! a node that never ran the program learns from the grid's). A run of a
//! program not yet seen takes what its request asks (`--memory-mb`), or the
//! node's default. The node then admits a run only if
//!
//!   others' use + Σ(expected or current use of its runs) + this run's
//!   expected peak ≤ memory_percent_limit % of the machine,
//!
//! so the desktop's owner keeps the rest, and a run never starts where it
//! would push the machine into swap. CPU is counted the same way against
//! `max_cpu_share` (a sequential program counts one CPU until learned).

/// Peak readings above this are taken as this (a peer's document may say
/// anything; no desktop has more).
pub const MAX_PEAK_MB: u64 = 16 << 20;

/// Room added to a learned peak: the same program varies a little from
/// one parameter to the next.
pub const LEARNED_HEADROOM_PERCENT: u64 = 10;

/// What a run of one program takes, as learned (the highest seen).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peak {
    /// Resident memory (MiB), all its processes together.
    pub memory_mb: u64,
    /// CPU, in percent of one CPU (150: one and a half).
    pub cpu_percent: u32,
}

impl Peak {
    /// The larger of two readings, field by field.
    pub fn max(self, o: Peak) -> Peak {
        Peak {
            memory_mb: self.memory_mb.max(o.memory_mb).min(MAX_PEAK_MB),
            cpu_percent: self.cpu_percent.max(o.cpu_percent),
        }
    }
}

/// The memory (MiB) a run is expected to take at its peak: what its program
/// was seen to take (with some headroom), else what its request asks, else
/// the node's default.
pub fn expected_memory_mb(learned: Option<u64>, asked: Option<u64>, default_mb: u64) -> u64 {
    match learned.filter(|m| *m > 0) {
        Some(m) => {
            let m = m.min(MAX_PEAK_MB);
            let with_room = m + m * LEARNED_HEADROOM_PERCENT / 100;
            // A limit the kernel enforces bounds it.
            asked.map_or(with_room, |a| with_room.min(a))
        }
        None => asked.unwrap_or(default_mb),
    }
}

/// The CPUs (in percent of one) a run is expected to keep busy: what its
/// program was seen to use (at least one CPU: a program that waits now may
/// compute later; never above its request's cap), else its request's cap,
/// else one: a sequential program.
pub fn expected_cpu_percent(learned: Option<u32>, asked_cpus: Option<f64>) -> u32 {
    let asked = asked_cpus.map(|c| (c * 100.0).ceil().clamp(1.0, 100_000.0) as u32);
    match learned.filter(|c| *c > 0) {
        Some(c) => {
            let c = c.max(100);
            asked.map_or(c, |a| c.min(a))
        }
        None => asked.unwrap_or(100),
    }
}

/// The machine's memory as one reading saw it (MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub total_mb: u64,
    pub available_mb: u64,
}

/// One run on the node, as admission counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// What it is expected to take at its peak.
    pub expected_mb: u64,
    /// What its processes hold now (0 until a probe saw them).
    pub now_mb: u64,
}

/// Memory (MiB) a new run may still take on this node under
/// `limit_percent`: the limit, less what everything else holds now, less
/// what the node's runs hold or may still grow to.
pub fn memory_room_mb(m: Memory, runs: &[Held], limit_percent: u32) -> u64 {
    let budget = m.total_mb * u64::from(limit_percent.min(100)) / 100;
    let in_use = m.total_mb.saturating_sub(m.available_mb);
    let ours_now: u64 = runs.iter().map(|r| r.now_mb).sum();
    let others = in_use.saturating_sub(ours_now);
    let ours: u64 = runs.iter().map(|r| r.expected_mb.max(r.now_mb)).sum();
    budget.saturating_sub(others).saturating_sub(ours)
}

/// CPU (percent of one CPU) the node's runs may still take under
/// `max_share_percent` of a machine of `cpus` CPUs.
pub fn cpu_room_percent(cpus: u32, held: &[u32], max_share_percent: u32) -> u32 {
    let budget = cpus.max(1) * max_share_percent.min(100);
    budget.saturating_sub(held.iter().sum())
}

/// Why a run does not fit on a node now, in words; `None` when it does.
/// A node running nothing of its own still admits a run whose CPU need is
/// above its share (a program that wants more CPUs than the share allows
/// would otherwise never run anywhere); memory has no such exception: a
/// run that cannot fit must not push the desktop into swap.
pub fn misfit(
    need_mb: u64,
    memory_room: Option<u64>,
    need_cpu: u32,
    cpu_room: u32,
    running_here: usize,
) -> Option<String> {
    if let Some(room) = memory_room
        && need_mb > room
    {
        return Some(format!(
            "each run needs about {need_mb} MiB and this node has {room} MiB free under its owner's memory limit"
        ));
    }
    if running_here > 0 && need_cpu > cpu_room {
        return Some(format!(
            "its runs would take more CPU than this node's owner lets PESC use ({cpu_room} % of a CPU left)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_beats_asked_beats_default() {
        assert_eq!(expected_memory_mb(None, None, 1024), 1024);
        assert_eq!(expected_memory_mb(None, Some(300), 1024), 300);
        assert_eq!(expected_memory_mb(Some(200), None, 1024), 220);
        // A kernel-enforced limit bounds what a run can take.
        assert_eq!(expected_memory_mb(Some(290), Some(300), 1024), 300);
        assert_eq!(expected_memory_mb(Some(0), None, 512), 512);
        assert_eq!(
            expected_memory_mb(Some(u64::MAX), None, 512),
            MAX_PEAK_MB + MAX_PEAK_MB / 10
        );
        assert_eq!(expected_cpu_percent(None, None), 100);
        assert_eq!(expected_cpu_percent(Some(40), None), 100);
        assert_eq!(expected_cpu_percent(Some(390), None), 390);
        assert_eq!(expected_cpu_percent(Some(390), Some(2.0)), 200);
        assert_eq!(expected_cpu_percent(None, Some(4.0)), 400);
    }

    #[test]
    fn the_default_never_overcommits_an_8_gb_desktop() {
        // 8 GiB, the owner's programs hold 3 GiB; 80 % limit; 1 GiB a run.
        let m = Memory {
            total_mb: 8192,
            available_mb: 5120,
        };
        let mut runs = Vec::new();
        while memory_room_mb(m, &runs, 80) >= 1024 {
            runs.push(Held {
                expected_mb: 1024,
                now_mb: 0,
            });
        }
        assert_eq!(runs.len(), 3, "6.5 GiB allowed, 3 GiB the owner's");
        let peak: u64 = 3072 + runs.iter().map(|r| r.expected_mb).sum::<u64>();
        assert!(peak <= 8192 * 80 / 100);
    }

    #[test]
    fn runs_are_not_counted_twice() {
        // Our two runs hold 1 GiB each now (in the machine's use too).
        let m = Memory {
            total_mb: 8192,
            available_mb: 4096,
        };
        let runs = [
            Held {
                expected_mb: 1024,
                now_mb: 1024,
            },
            Held {
                expected_mb: 512,
                now_mb: 1024,
            },
        ];
        // Others: 4 GiB − 2 GiB = 2 GiB; ours 2 GiB; budget 8 GiB.
        assert_eq!(memory_room_mb(m, &runs, 100), 8192 - 2048 - 2048);
        assert_eq!(memory_room_mb(m, &runs, 10), 0);
    }

    #[test]
    fn cpu_share_bounds_the_runs_at_once() {
        assert_eq!(cpu_room_percent(4, &[100, 100], 50), 0);
        assert_eq!(cpu_room_percent(4, &[100], 50), 100);
        assert!(misfit(100, Some(1000), 100, 0, 2).is_some());
        assert!(misfit(100, Some(1000), 400, 0, 0).is_none());
        let why = misfit(2000, Some(1000), 100, 100, 0).unwrap();
        assert!(why.contains("2000 MiB"), "{why}");
        assert!(misfit(100, None, 100, 100, 3).is_none());
    }
}
