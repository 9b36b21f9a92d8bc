//! What this node's runs use, learned per program, and whether one more
//! fits under the owner's memory and CPU limits (rules in
//! `crate::resources`).

use crate::model::RequestSpec;
use crate::resources::{
    Held, Memory, Peak, cpu_room_percent, expected_cpu_percent, expected_memory_mb, memory_room_mb,
    misfit,
};

use super::Node;

/// Requests whose wait for room was logged, at most (then logged again).
const TOLD_MISFITS: usize = 1_000;
use super::probe::RunUse;
use super::scheduling::usage_key;

impl Node {
    /// A probe's reading of the node's runs: each attempt's highest use so
    /// far, and each program's (by [`usage_key`]).
    pub(super) fn read_runs(&mut self, runs: &[RunUse]) {
        for r in self.running.values_mut() {
            r.now_mb = 0;
        }
        for u in runs {
            let Some((_, run)) = self
                .running
                .range_mut((u.request.clone(), u.rank, 0)..=(u.request.clone(), u.rank, u32::MAX))
                .find(|(_, r)| r.slot.is_some())
            else {
                continue;
            };
            let seen = Peak {
                memory_mb: u.peak_mb.max(u.now_mb),
                cpu_percent: u.cpu_percent,
            };
            run.now_mb = u.now_mb;
            run.used = run.used.max(seen);
            let Some(q) = self.requests.get(&u.request) else {
                continue;
            };
            let key = usage_key(q.doc.spec());
            let was = self.peaks.get(&key).copied().unwrap_or_default();
            let now = was.max(seen);
            if now.memory_mb > was.memory_mb + was.memory_mb / 4 {
                tracing::info!(
                    "{} was seen to take {} MiB of memory",
                    q.doc.spec().process.name,
                    now.memory_mb
                );
            }
            self.peaks.insert(key, now);
        }
        // What was learned holds for every run of the program here.
        let expected: Vec<_> = self
            .running
            .keys()
            .filter_map(|k| {
                Some((
                    k.clone(),
                    self.expected(self.requests.get(&k.0)?.doc.spec()),
                ))
            })
            .collect();
        for (k, e) in expected {
            if let Some(r) = self.running.get_mut(&k) {
                r.expected = e;
            }
        }
    }

    /// Says once per request why its runs wait for room here.
    pub(super) fn tell_misfit(&mut self, request: &crate::RequestId, why: String) {
        if self.told_misfit.len() >= TOLD_MISFITS {
            self.told_misfit.clear();
        }
        if self.told_misfit.insert(request.clone()) {
            tracing::info!("runs of {request} wait here: {why}");
        }
        self.misfit_now = Some(why);
    }

    /// What a run of `spec` is expected to take here.
    pub(super) fn expected(&self, spec: &RequestSpec) -> Peak {
        let learned = self.peaks.get(&usage_key(spec));
        Peak {
            memory_mb: expected_memory_mb(
                learned.map(|p| p.memory_mb),
                spec.limits.memory_mb,
                self.cfg.policy.default_run_memory_mb,
            ),
            cpu_percent: expected_cpu_percent(learned.map(|p| p.cpu_percent), spec.limits.cpus),
        }
    }

    /// Memory (MiB) one more run may take here now, when the probes have
    /// read the machine's memory.
    pub(super) fn memory_room(&self) -> Option<u64> {
        let (total_mb, available_mb) = self.memory?;
        let held: Vec<Held> = self
            .running
            .values()
            .filter(|r| r.slot.is_some())
            .map(|r| Held {
                expected_mb: r.expected.memory_mb,
                now_mb: r.now_mb,
            })
            .collect();
        Some(memory_room_mb(
            Memory {
                total_mb,
                available_mb,
            },
            &held,
            self.cfg.policy.memory_percent_limit,
        ))
    }

    /// Why one more run of `spec` does not fit here now; `None` when it
    /// does (or the node cannot tell).
    pub(super) fn misfit(&self, spec: &RequestSpec) -> Option<String> {
        let need = self.expected(spec);
        let running: Vec<u32> = self
            .running
            .values()
            .filter(|r| r.slot.is_some())
            .map(|r| r.expected.cpu_percent)
            .collect();
        // The CPU share binds only when the owner set one and the node
        // knows its CPUs.
        let cpu_room = if self.cfg.policy.max_cpu_share < 100 && self.cpus > 0 {
            cpu_room_percent(self.cpus, &running, self.cfg.policy.max_cpu_share)
        } else {
            u32::MAX
        };
        misfit(
            need.memory_mb,
            self.memory_room(),
            need.cpu_percent,
            cpu_room,
            running.len(),
        )
    }
}
