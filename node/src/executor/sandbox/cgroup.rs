//! A control group per slot: the memory, processes and CPU of a slot's runs,
//! counted and capped by the kernel for the whole group (children,
//! `setsid`-ed and double-forked ones included). cgroup v2 where the
//! machine has the unified hierarchy, v1 (the `memory`, `pids` and `cpu`
//! controllers) where it has that; none when the node cannot create groups
//! (not root, nothing mounted), and the rlimits stay the only limits.
//!
//! The slot's server is put in its group when it starts; every run it
//! starts is its child, so in the group too. Before each run the node sets
//! the group's limits for that run (its request's memory and CPUs).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

const ROOT: &str = "/sys/fs/cgroup";

/// Which hierarchy the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The node's groups: one parent per node, one child per slot.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    /// The node's parent group in each hierarchy used (v1: memory, pids,
    /// cpu; v2: one).
    parents: Vec<PathBuf>,
}

/// The CPU weight of runs against the desktop's own programs (v2 default
/// 100, v1 shares 1024): runs yield to the owner when both want the CPU.
const RUN_WEIGHT_V2: u32 = 25;
const RUN_SHARES_V1: u32 = 256;

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value} to {}", path.display()))
}

impl Cgroups {
    /// The groups this node can make, under a parent named for the node
    /// (`pesc-NODE`); `None` when it can make none.
    pub fn detect(node_id: &str) -> Option<Cgroups> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = format!("pesc-{}", &node_id[node_id.len().saturating_sub(12)..]);
        let root = Path::new(ROOT);
        let found = if root.join("cgroup.controllers").exists() {
            Cgroups {
                version: Version::V2,
                parents: vec![root.join(&name)],
            }
        } else {
            let parents: Vec<PathBuf> = ["memory", "pids", "cpu"]
                .iter()
                .map(|c| root.join(c).join(&name))
                .collect();
            if !parents
                .iter()
                .all(|p| p.parent().is_some_and(|c| c.join("tasks").exists()))
            {
                return None;
            }
            Cgroups {
                version: Version::V1,
                parents,
            }
        };
        match found.make_parents() {
            Ok(()) => Some(found),
            Err(e) => {
                tracing::warn!("no control groups for runs: {e:#}");
                None
            }
        }
    }

    fn make_parents(&self) -> Result<()> {
        for p in &self.parents {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        if self.version == Version::V2 {
            // Controllers must be enabled in the root and in our parent for
            // the slots' groups to have them.
            for dir in [Path::new(ROOT), self.parents[0].as_path()] {
                write(&dir.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
            }
        }
        Ok(())
    }

    /// Which hierarchy, in words.
    pub fn describe(&self) -> &'static str {
        match self.version {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        }
    }

    /// The group of `slot` (made if missing).
    pub fn slot(&self, slot: usize) -> Result<SlotGroup> {
        let dirs: Vec<PathBuf> = self
            .parents
            .iter()
            .map(|p| p.join(format!("slot-{slot}")))
            .collect();
        for d in &dirs {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let g = SlotGroup {
            version: self.version,
            dirs,
            last: None,
        };
        match g.version {
            Version::V2 => write(&g.dirs[0].join("cpu.weight"), &RUN_WEIGHT_V2.to_string())?,
            Version::V1 => write(&g.dirs[2].join("cpu.shares"), &RUN_SHARES_V1.to_string())?,
        }
        Ok(g)
    }
}

/// One slot's group.
#[derive(Debug, Clone)]
pub struct SlotGroup {
    version: Version,
    /// v1: memory, pids, cpu; v2: one.
    dirs: Vec<PathBuf>,
    /// The limits written last (a run like the previous one writes none).
    last: Option<(Option<u64>, u64, Option<u64>)>,
}

impl SlotGroup {
    /// Moves process `pid` (the slot's server) into the group.
    pub fn adopt(&self, pid: i32) -> Result<()> {
        for d in &self.dirs {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Sets the limits for the next run: `memory` bytes (None: no limit),
    /// `processes`, `cpus` (None: no cap, only the lower weight).
    pub fn set(&mut self, memory: Option<u64>, processes: u64, cpus: Option<f64>) -> Result<()> {
        const PERIOD: u64 = 100_000;
        let quota = cpus.map(|c| ((c * PERIOD as f64) as u64).max(1000));
        if self.last == Some((memory, processes, quota)) {
            return Ok(());
        }
        // Unknown until written in full.
        self.last = None;
        match self.version {
            Version::V2 => {
                let d = &self.dirs[0];
                write(
                    &d.join("memory.max"),
                    &memory.map_or("max".into(), |m| m.to_string()),
                )?;
                // No swap past the limit: over it means killed, and said so.
                let swap = d.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, if memory.is_some() { "0" } else { "max" })?;
                }
                write(&d.join("pids.max"), &processes.to_string())?;
                write(
                    &d.join("cpu.max"),
                    &quota.map_or("max".into(), |q| format!("{q} {PERIOD}")),
                )?;
            }
            Version::V1 => {
                // memsw (memory + swap) must stay at or above the memory
                // limit: raise it first, lower it last.
                let memsw = self.dirs[0].join("memory.memsw.limit_in_bytes");
                let limit = memory.map_or("-1".into(), |m| m.to_string());
                if memsw.exists() {
                    write(&memsw, "-1")?;
                }
                write(&self.dirs[0].join("memory.limit_in_bytes"), &limit)?;
                if memsw.exists() {
                    write(&memsw, &limit)?;
                }
                write(&self.dirs[1].join("pids.max"), &processes.to_string())?;
                write(&self.dirs[2].join("cpu.cfs_period_us"), &PERIOD.to_string())?;
                write(
                    &self.dirs[2].join("cpu.cfs_quota_us"),
                    &quota.map_or("-1".into(), |q| q.to_string()),
                )?;
            }
        }
        self.last = Some((memory, processes, quota));
        Ok(())
    }

    /// How many times the kernel killed a process of the group for going
    /// over its memory limit, so far.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match self.version {
            Version::V2 => ("memory.events", "oom_kill"),
            Version::V1 => ("memory.oom_control", "oom_kill"),
        };
        std::fs::read_to_string(self.dirs[0].join(file))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}
