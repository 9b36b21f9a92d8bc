//! The desktop owner's policy (PESC's client settings): a node takes no new
//! runs while the machine is busy with its owner's work, and when another
//! operating-system user is logged in at the desktop it also cuts its
//! running containers down to a small share of their CPU.
//!
//! Busy means the CPU time of everything but this node and its runs: the
//! node's own programs do not count against it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The owner's settings (top level of `node.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyConfig {
    /// Take no new runs while others' CPU use (everything but this node and
    /// its runs) is above this percentage of the machine (100: never
    /// pause). Called `cpu_percent_limit` before; that name still reads.
    #[serde(alias = "cpu_percent_limit")]
    pub pause_when_others_above: u32,
    /// The share of the machine's CPUs this node's runs may keep busy
    /// together (percent; 100: as many runs as slots): the thesis's other
    /// meaning of a CPU limit, PESC's own use counted.
    pub max_cpu_share: u32,
    /// Take a run only while the machine's memory in use, with every run's
    /// expected peak, stays under this percentage.
    pub memory_percent_limit: u32,
    /// The peak memory (MiB) expected of a program this node has not seen
    /// run yet, when its request asks none.
    pub default_run_memory_mb: u64,
    /// Start runs only after this many minutes without keyboard or mouse
    /// (0: do not watch for the owner). When the owner comes back, runs are
    /// suspended at once.
    pub idle_minutes: u32,
    /// Runs suspended for the owner this many minutes are handed back to
    /// the grid from their checkpoints.
    pub vacate_minutes: u32,
    /// Where idle time is read: `auto` (logind's local sessions, else input
    /// devices), `logind`, or `input`.
    pub idle_source: crate::idle::IdleSource,
    /// The input devices `input` looks at (a directory: its entries).
    pub input_paths: Vec<PathBuf>,
    /// Watch for other users logged in at this desktop.
    pub check_concurrent_user: bool,
    /// While one is: running containers get this percentage of their CPU,
    /// and no new runs are taken.
    pub concurrent_resources_percent: u32,
    /// Login records (utmp).
    pub utmp_path: PathBuf,
    /// Runs share a GPU while their learned peak memory adds up to at most
    /// this percentage of its memory.
    pub gpu_percent_memory_limit: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            pause_when_others_above: 70,
            max_cpu_share: 100,
            memory_percent_limit: 80,
            default_run_memory_mb: 1024,
            idle_minutes: 0,
            vacate_minutes: 10,
            idle_source: Default::default(),
            input_paths: crate::idle::default_input_paths(),
            check_concurrent_user: false,
            concurrent_resources_percent: 10,
            utmp_path: PathBuf::from("/var/run/utmp"),
            gpu_percent_memory_limit: 90,
        }
    }
}

impl PolicyConfig {
    /// What the protocol core decides from.
    pub fn core(&self) -> pesc_protocol::node::Policy {
        pesc_protocol::node::Policy {
            pause_when_others_above: self.pause_when_others_above,
            concurrent_resources_percent: self.concurrent_resources_percent,
            gpu_percent_memory_limit: self.gpu_percent_memory_limit,
            memory_percent_limit: self.memory_percent_limit,
            default_run_memory_mb: self.default_run_memory_mb,
            max_cpu_share: self.max_cpu_share,
            idle_minutes: self.idle_minutes,
            vacate_minutes: self.vacate_minutes,
        }
    }

    /// Takes what the core decides from (an admin's settings laid over
    /// node.toml); what only this machine knows (paths, sources) stays.
    pub fn set_core(&mut self, p: &pesc_protocol::node::Policy) {
        self.pause_when_others_above = p.pause_when_others_above;
        self.concurrent_resources_percent = p.concurrent_resources_percent;
        self.gpu_percent_memory_limit = p.gpu_percent_memory_limit;
        self.memory_percent_limit = p.memory_percent_limit;
        self.default_run_memory_mb = p.default_run_memory_mb;
        self.max_cpu_share = p.max_cpu_share;
        self.idle_minutes = p.idle_minutes;
        self.vacate_minutes = p.vacate_minutes;
    }

    pub fn check(&self) -> anyhow::Result<()> {
        if !(1..=100).contains(&self.pause_when_others_above) {
            anyhow::bail!(
                "pause_when_others_above is {}: 1 to 100",
                self.pause_when_others_above
            );
        }
        if !(1..=100).contains(&self.gpu_percent_memory_limit) {
            anyhow::bail!(
                "gpu_percent_memory_limit is {}: 1 to 100",
                self.gpu_percent_memory_limit
            );
        }
        for (name, v) in [
            ("max_cpu_share", self.max_cpu_share),
            ("memory_percent_limit", self.memory_percent_limit),
        ] {
            if !(1..=100).contains(&v) {
                anyhow::bail!("{name} is {v}: 1 to 100");
            }
        }
        if self.idle_minutes > 24 * 60 || self.vacate_minutes > 24 * 60 {
            anyhow::bail!("idle_minutes and vacate_minutes are at most a day (1440)");
        }
        if self.default_run_memory_mb == 0 {
            anyhow::bail!("default_run_memory_mb is 0: a run takes some memory");
        }
        if !(1..=100).contains(&self.concurrent_resources_percent) {
            anyhow::bail!(
                "concurrent_resources_percent is {}: 1 to 100",
                self.concurrent_resources_percent
            );
        }
        Ok(())
    }
}

/// CPU counters: (busy, total) jiffies of the machine, and the jiffies each
/// process of this node and its runs has used (with its finished children).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuSample {
    pub busy: u64,
    pub total: u64,
    pub ours: std::collections::HashMap<u32, u64>,
}

/// Percentage of the machine's CPU that others used between two samples.
/// A process of ours counts what it used since `a` (all of it if it is new).
pub fn others_percent(a: &CpuSample, b: &CpuSample) -> u32 {
    let total = b.total.saturating_sub(a.total);
    if total == 0 {
        return 0;
    }
    let busy = b.busy.saturating_sub(a.busy);
    let ours: u64 = b
        .ours
        .iter()
        .map(|(pid, t)| t.saturating_sub(a.ours.get(pid).copied().unwrap_or(0)))
        .sum();
    (busy.saturating_sub(ours) * 100 / total).min(100) as u32
}

/// The machine's counters from `/proc/stat`'s first line (every CPU).
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait are not busy.
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// utime + stime + cutime + cstime of a `/proc/PID/stat` line (fields 14
/// to 17: the process and its children that ended; the command name in
/// parentheses may hold spaces).
pub fn parse_pid_cpu(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) is index 11.
    (11..15).map(|i| f.get(i)?.parse::<u64>().ok()).sum()
}

/// Reads the counters now: the machine, this process, and the node's
/// processes as `usage::scan` found them (its runs, in containers too).
pub fn sample(procs: &std::collections::HashMap<u32, crate::usage::Proc>) -> Option<CpuSample> {
    let (busy, total) = parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let mut ours: std::collections::HashMap<u32, u64> =
        procs.iter().map(|(pid, p)| (*pid, p.cpu)).collect();
    if let Some(t) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_pid_cpu(&s))
    {
        ours.insert(std::process::id(), t);
    }
    Some(CpuSample { busy, total, ours })
}

/// glibc's `struct utmp` on Linux: 384 bytes; `ut_type` at 0 (i16),
/// `ut_user` at 44 (32 bytes).
const UTMP_RECORD: usize = 384;
const USER_PROCESS: i16 = 7;

/// Users with a login session in a utmp file's bytes.
pub fn parse_utmp(bytes: &[u8]) -> Vec<String> {
    let mut users: Vec<String> = bytes
        .chunks_exact(UTMP_RECORD)
        .filter(|r| i16::from_ne_bytes([r[0], r[1]]) == USER_PROCESS)
        .filter_map(|r| {
            let raw = &r[44..76];
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            let u = String::from_utf8_lossy(&raw[..end]).trim().to_string();
            (!u.is_empty()).then_some(u)
        })
        .collect();
    users.sort();
    users.dedup();
    users
}

/// Other users logged in: everyone in `utmp` but `me` (the user the node
/// runs as).
pub fn other_users(utmp: &Path, me: &str) -> Vec<String> {
    std::fs::read(utmp)
        .map(|b| parse_utmp(&b))
        .unwrap_or_default()
        .into_iter()
        .filter(|u| u != me)
        .collect()
}

/// One utmp login record (tests simulate logins with it).
#[cfg(test)]
pub fn utmp_record(user: &str, line: &str) -> Vec<u8> {
    let mut r = vec![0u8; UTMP_RECORD];
    r[..2].copy_from_slice(&USER_PROCESS.to_ne_bytes());
    r[4..8].copy_from_slice(&4242i32.to_ne_bytes());
    let l = line.as_bytes();
    r[8..8 + l.len().min(32)].copy_from_slice(&l[..l.len().min(32)]);
    let u = user.as_bytes();
    r[44..44 + u.len().min(32)].copy_from_slice(&u[..u.len().min(32)]);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_cpu_leaves_out_the_nodes_own() {
        let a = CpuSample {
            busy: 1000,
            total: 4000,
            ours: [(10, 100), (11, 50)].into(),
        };
        // 200 jiffies elapsed, 150 busy; ours: pid 10 +60, pid 11 gone,
        // pid 12 new with 60: others 30 of 200 = 15 %.
        let b = CpuSample {
            busy: 1150,
            total: 4200,
            ours: [(10, 160), (12, 60)].into(),
        };
        assert_eq!(others_percent(&a, &b), 15);
        assert_eq!(others_percent(&b, &b), 0);
        assert_eq!(
            others_percent(&b, &a),
            0,
            "counters going back read as idle"
        );
    }

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  100 5 50 800 20 0 5 0 0 0\ncpu0 50 2 25 400 10 0 2 0 0 0\n";
        assert_eq!(parse_proc_stat(stat), Some((160, 980)));
        assert_eq!(parse_proc_stat("nothing"), None);
        let pid = "123 (my prog (x)) S 1 2 3 4 5 6 7 8 9 10 31 17 5 2 20 0";
        assert_eq!(parse_pid_cpu(pid), Some(55));
        assert_eq!(parse_pid_cpu("garbage"), None);
    }

    #[test]
    fn utmp_lists_logged_in_users() {
        let mut bytes = utmp_record("alice", "tty2");
        bytes.extend(utmp_record("pesc", "pts/0"));
        bytes.extend(utmp_record("alice", "pts/1"));
        let mut dead = utmp_record("bob", "tty3");
        dead[0] = 8; // DEAD_PROCESS: logged out
        bytes.extend(dead);
        bytes.extend([1, 2, 3]); // a torn record at the end
        assert_eq!(parse_utmp(&bytes), vec!["alice", "pesc"]);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("utmp");
        std::fs::write(&f, &bytes).unwrap();
        assert_eq!(other_users(&f, "pesc"), vec!["alice"]);
        assert!(other_users(&dir.path().join("none"), "pesc").is_empty());
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        assert!(PolicyConfig::default().check().is_ok());
        let c = PolicyConfig {
            pause_when_others_above: 0,
            ..Default::default()
        };
        assert!(c.check().is_err());
        let c = PolicyConfig {
            concurrent_resources_percent: 101,
            ..Default::default()
        };
        assert!(c.check().is_err());
    }
}
