//! What this node's runs use now: one pass over /proc finds every process
//! whose environment names the node (its runs and whatever they started, in
//! containers too) and reads its CPU time and memory.
//!
//! sysinfo lists processes too, but it reads neither a process's
//! environment nor its resident high-water mark (VmHWM), and those are what
//! tie a process to a run and catch a peak between two readings.

use std::collections::HashMap;

/// One process of the node's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proc {
    /// The run it belongs to (request id, rank), when its environment says.
    pub run: Option<(String, u32)>,
    /// utime + stime of the process and its children that ended (jiffies).
    pub cpu: u64,
    /// Resident memory now and at its highest (KiB).
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

/// Every process of node `node_id` but this one, by pid.
pub fn scan(node_id: &str) -> HashMap<u32, Proc> {
    let needle = format!("PESC_NODE_ID={node_id}");
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let mut ours = false;
            let (mut req, mut rank) = (None, None);
            for kv in env.split(|b| *b == 0) {
                if kv == needle.as_bytes() {
                    ours = true;
                } else if let Some(v) = kv.strip_prefix(b"PESC_REQUEST_ID=") {
                    req = std::str::from_utf8(v).ok().map(str::to_string);
                } else if let Some(v) = kv.strip_prefix(b"PESC_RANK=") {
                    rank = std::str::from_utf8(v).ok().and_then(|r| r.parse().ok());
                }
            }
            if !ours {
                return None;
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let (rss_kb, hwm_kb) = parse_status_memory(&status);
            Some((
                pid,
                Proc {
                    run: req.zip(rank),
                    cpu: crate::policy::parse_pid_cpu(&stat)?,
                    rss_kb,
                    hwm_kb,
                },
            ))
        })
        .collect()
}

/// VmRSS and VmHWM (KiB) of a `/proc/PID/status` text (0 when absent: a
/// kernel thread, or a process that is ending).
pub fn parse_status_memory(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What each run used between two scans `elapsed_jiffies` of one CPU apart:
/// (request, rank) → (MiB held now, MiB at its highest, percent of one CPU).
/// A run's memory is the sum over its processes (a high-water mark each:
/// an upper bound of the run's peak, which is what admission wants).
pub fn per_run(
    before: &HashMap<u32, Proc>,
    now: &HashMap<u32, Proc>,
    elapsed_jiffies: u64,
) -> HashMap<(String, u32), (u64, u64, u32)> {
    let mut out: HashMap<(String, u32), (u64, u64, u64)> = HashMap::new();
    for (pid, p) in now {
        let Some(run) = &p.run else {
            continue;
        };
        let used = p
            .cpu
            .saturating_sub(before.get(pid).map_or(0, |b| b.cpu.min(p.cpu)));
        // A process new since the last scan: its whole CPU time is recent.
        let e = out.entry(run.clone()).or_default();
        e.0 += p.rss_kb;
        e.1 += p.hwm_kb.max(p.rss_kb);
        e.2 += used;
    }
    out.into_iter()
        .map(|(k, (rss, hwm, cpu))| {
            let pct = (cpu * 100)
                .checked_div(elapsed_jiffies)
                .map_or(0, |p| p.min(u64::from(u32::MAX)) as u32);
            (k, (rss >> 10, hwm >> 10, pct))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_memory_parses() {
        let t = "Name:\tpython3\nVmPeak:\t  300000 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(parse_status_memory(t), (102_400, 204_800));
        assert_eq!(parse_status_memory("Name:\tkworker\n"), (0, 0));
    }

    #[test]
    fn runs_add_up_their_processes() {
        let p = |run: Option<(&str, u32)>, cpu, rss_kb, hwm_kb| Proc {
            run: run.map(|(r, k)| (r.to_string(), k)),
            cpu,
            rss_kb,
            hwm_kb,
        };
        let before: HashMap<u32, Proc> = [(1, p(Some(("a", 0)), 100, 1024, 1024))].into();
        let now: HashMap<u32, Proc> = [
            (1, p(Some(("a", 0)), 150, 1024, 2048)),
            (2, p(Some(("a", 0)), 20, 4096, 4096)),
            (3, p(Some(("b", 1)), 5, 512, 512)),
            (4, p(None, 1000, 1 << 20, 1 << 20)),
        ]
        .into();
        let u = per_run(&before, &now, 100);
        assert_eq!(u[&("a".to_string(), 0)], (5, 6, 70));
        assert_eq!(u[&("b".to_string(), 1)], (0, 0, 5));
        assert_eq!(u.len(), 2, "a process without a run is not a run's");
    }
}
