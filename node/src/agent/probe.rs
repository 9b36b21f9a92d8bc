//! The node's probes: who is logged in, others' CPU use, the GPUs, the
//! load. They read /proc, utmp and NVML on a blocking thread every
//! heartbeat period and send a sample to the agent, so no read ever holds
//! up the task that owns the node's state.

use std::time::Duration;

use pesc_protocol::node::Sample;
use tokio::sync::mpsc;

use crate::gpu::{GpuProbe, run_of_pid};
use crate::policy::{self, CpuSample, PolicyConfig};

use pesc_protocol::NodeId;

pub(super) struct Probes {
    /// The owner's policy, as last configured (node.toml can be re-read).
    policy: tokio::sync::watch::Receiver<PolicyConfig>,
    gpus: Box<dyn GpuProbe>,
    /// This node's id (its runs' processes carry it).
    node: String,
    /// The operating-system user this node runs as (not "another user").
    os_user: String,
    /// The last CPU counters (for others' CPU use between samples) and
    /// the node's processes then (for each run's).
    cpu: Option<CpuSample>,
    procs: std::collections::HashMap<u32, crate::usage::Proc>,
    /// Memory and load (sysinfo); `None` where it cannot read them.
    system: Option<sysinfo::System>,
    idle: crate::idle::IdleReader,
}

impl Probes {
    pub(super) fn new(
        policy: tokio::sync::watch::Receiver<PolicyConfig>,
        gpus: Box<dyn GpuProbe>,
        node: &NodeId,
    ) -> Probes {
        Probes {
            policy,
            gpus,
            node: node.as_str().to_string(),
            os_user: std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_default(),
            cpu: None,
            procs: Default::default(),
            idle: crate::idle::IdleReader::new(),
            system: sysinfo::System::new().ok(),
        }
    }

    fn sample(&mut self) -> Sample {
        let p = self.policy.borrow().clone();
        let mut s = Sample {
            load: load_per_cpu(),
            memory: self.system.as_mut().map(|sys| {
                sys.refresh_memory();
                (sys.total_memory() >> 20, sys.available_memory() >> 20)
            }),
            ..Default::default()
        };
        if p.check_concurrent_user {
            s.others_logged_in = policy::other_users(&p.utmp_path, &self.os_user);
        }
        // One pass over /proc: others' CPU use, and each run's memory and CPU.
        let procs = crate::usage::scan(&self.node);
        let now = policy::sample(&procs);
        s.cpus = std::thread::available_parallelism().map_or(0, |n| n.get() as u32);
        if let (Some(a), Some(b)) = (&self.cpu, &now) {
            if p.pause_when_others_above < 100 {
                s.others_cpu_percent = Some(policy::others_percent(a, b));
            }
            // Jiffies of one CPU between the readings.
            let elapsed = b.total.saturating_sub(a.total) / u64::from(s.cpus.max(1));
            for ((req, rank), (now_mb, peak_mb, cpu_percent)) in
                crate::usage::per_run(&self.procs, &procs, elapsed)
            {
                if let Ok(request) = req.parse() {
                    s.runs.push(pesc_protocol::node::RunUse {
                        request,
                        rank,
                        now_mb,
                        peak_mb,
                        cpu_percent,
                    });
                }
            }
        }
        self.cpu = now;
        self.procs = procs;
        if p.idle_minutes > 0 {
            s.idle_ms = self.idle.idle_ms(p.idle_source, &p.input_paths);
        }
        s.gpus = self.gpus.gpus();
        for g in &s.gpus {
            for (pid, mb) in g.processes.iter().flatten() {
                match run_of_pid(*pid, &self.node) {
                    Some((req, _)) => {
                        if let Ok(id) = req.parse() {
                            s.gpu_use.push((id, *mb));
                        }
                    }
                    // Not a run of this node's: the owner's (or another
                    // program's) use of the device. A process whose
                    // environment cannot be read (gone, or not ours to
                    // read) tells nothing.
                    None if !s.owner_gpus.contains(&g.index)
                        && std::fs::read(format!("/proc/{pid}/environ")).is_ok() =>
                    {
                        s.owner_gpus.push(g.index)
                    }
                    None => {}
                }
            }
        }
        s
    }
}

/// Samples every heartbeat period until the agent is gone.
pub(super) fn spawn(mut p: Probes, tx: mpsc::Sender<Sample>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(
            pesc_protocol::lease::DEFAULT_HEARTBEAT_MS,
        ));
        loop {
            every.tick().await;
            let Ok((back, s)) = tokio::task::spawn_blocking(move || {
                let s = p.sample();
                (p, s)
            })
            .await
            else {
                break;
            };
            p = back;
            if tx.send(s).await.is_err() {
                break;
            }
        }
    });
}

/// One-minute load average per CPU (0 where /proc is missing).
fn load_per_cpu() -> f32 {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f32;
    sysinfo::System::load_average()
        .map(|l| l.one as f32 / cpus)
        .unwrap_or(0.0)
}
