//! The desktop owner's policy, applied every heartbeat (see
//! [`crate::policy`]): pause claims while the machine is busy with others'
//! work or another user is logged in, and cut running containers down while
//! that user is.

use crate::policy::{self, Pause};

use super::Agent;

impl Agent {
    pub(super) fn apply_policy(&mut self) {
        let p = &self.s.policy;
        let mut pause = None;
        if p.check_concurrent_user {
            let others = policy::other_users(&p.utmp_path, &self.os_user);
            if !others.is_empty() {
                pause = Some(Pause::Owner(others));
            }
        }
        if p.cpu_percent_limit < 100 {
            let now = policy::sample(self.s.node.as_str());
            if let (Some(a), Some(b)) = (&self.cpu, &now) {
                let used = policy::others_percent(a, b);
                if pause.is_none() && used > p.cpu_percent_limit {
                    pause = Some(Pause::Busy(used));
                }
            }
            self.cpu = now;
        }
        if pause == self.paused {
            return;
        }
        let owner = |x: &Option<Pause>| matches!(x, Some(Pause::Owner(_)));
        if owner(&pause) != owner(&self.paused) {
            let share = owner(&pause).then_some(p.concurrent_resources_percent);
            let executor = self.runner.executor.clone();
            tokio::spawn(async move { executor.throttle(share).await });
        }
        match &pause {
            Some(why) if self.paused.is_none() => tracing::info!("taking no new runs: {why}"),
            Some(why) => tracing::info!("still taking no new runs: {why}"),
            None => tracing::info!("taking runs again"),
        }
        self.paused = pause;
    }
}

impl Agent {
    /// Reads the GPUs again (memory in use changes; a device may go), and
    /// learns the peak memory of the runs it sees on them.
    pub(super) fn read_gpus(&mut self) {
        self.gpus = self.s.gpus.gpus();
        for g in &self.gpus {
            for (pid, mb) in g.processes.iter().flatten() {
                let Some((req, _rank)) = crate::gpu::run_of_pid(*pid, self.s.node.as_str()) else {
                    continue;
                };
                let Some(q) = req.parse().ok().and_then(|id| self.requests.get(&id)) else {
                    continue;
                };
                let peak = self
                    .gpu_peaks
                    .entry(super::usage_key(q.doc.spec()))
                    .or_default();
                if *mb > *peak {
                    *peak = *mb;
                    tracing::info!(
                        "GPU memory of {} learned: {mb} MiB",
                        q.doc.spec().process.name
                    );
                }
            }
        }
        self.caps.gpus = self.gpus.len() as u32;
        self.caps.gpu_capability = self.gpus.iter().map(|g| g.capability).fold(0.0, f32::max);
    }
}
