//! The desktop's owner comes first (HTCondor's desktop policy, in plain
//! words). With `idle_minutes` set, the node starts runs only once nobody
//! has touched the keyboard or mouse for that long. When the owner comes
//! back, the node's runs are suspended at once (the driver stops their
//! processes, or pauses their containers); if the owner is still there
//! `vacate_minutes` later, each run is stopped, its checkpoint kept, and
//! handed back to the grid; once the desktop is idle again, suspended runs
//! go on. A GPU the owner starts using suspends the runs on it the same way.

use std::collections::BTreeMap;

use crate::model::AttemptState;

use super::action::Action;
use super::{AttemptKey, Node, Now};

/// The suspended runs (for the owner, or for a GPU the owner uses), since
/// when (monotonic ms).
pub(super) type Suspended = BTreeMap<AttemptKey, u64>;

/// Why a vacated run went back to the grid.
pub const VACATED: &str =
    "its desktop's owner came back and stayed; the run goes on elsewhere from its last checkpoint";

impl Node {
    /// Whether the owner is at the desktop: input seen less than
    /// `idle_minutes` ago (never when the policy does not watch).
    pub(super) fn owner_active(&self, idle_ms: Option<u64>) -> bool {
        let wait = u64::from(self.cfg.policy.idle_minutes) * 60_000;
        wait > 0 && idle_ms.is_some_and(|i| i < wait)
    }

    /// Suspends, resumes and vacates runs as the owner's use says: `owner`
    /// is at the desktop, `gpus_in_use` are the devices the owner's own
    /// programs use.
    pub(super) fn follow_owner(&mut self, now: Now, owner: bool, gpus_in_use: &[u32]) {
        let on_owner_gpu = |n: &Node, key: &AttemptKey| {
            !gpus_in_use.is_empty()
                && n.gpu_pool
                    .devices_of(key)
                    .iter()
                    .any(|d| gpus_in_use.contains(d))
        };
        // Started runs (not those waiting for a slot or for their gang).
        let started: Vec<AttemptKey> = self
            .running
            .iter()
            .filter(|(_, r)| r.slot.is_some() && r.waiting.is_none() && r.stopping.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for key in started {
            let held = owner || on_owner_gpu(self, &key);
            match (held, self.suspended.contains_key(&key)) {
                (true, false) => {
                    self.suspended.insert(key.clone(), now.mono_ms);
                    self.actions.push_back(Action::Suspend { key, on: true });
                }
                (false, true) => {
                    self.suspended.remove(&key);
                    self.actions.push_back(Action::Suspend { key, on: false });
                }
                _ => {}
            }
        }
        self.suspended
            .retain(|k, _| self.running.get(k).is_some_and(|r| r.stopping.is_none()));
        self.vacate_overdue(now);
    }

    /// Hands back the runs suspended for longer than `vacate_minutes`.
    fn vacate_overdue(&mut self, now: Now) {
        let after = u64::from(self.cfg.policy.vacate_minutes) * 60_000;
        let due: Vec<AttemptKey> = self
            .suspended
            .iter()
            .filter(|(_, since)| now.mono_ms >= since.saturating_add(after))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            tracing::info!(
                "rank {} of {} goes back to the grid: {VACATED}",
                key.1,
                key.0
            );
            self.stop_attempt(now, &key, (AttemptState::Yielded, VACATED.to_string()));
        }
    }

    /// A suspended run about to be stopped goes on first, so that it can
    /// hear the stop (a stopped process does not run its handler).
    pub(super) fn wake_to_stop(&mut self, key: &AttemptKey) {
        if self.suspended.remove(key).is_some() {
            self.actions.push_back(Action::Suspend {
                key: key.clone(),
                on: false,
            });
        }
    }

    /// Runs suspended now, for the owner or for a GPU.
    pub fn suspended_runs(&self) -> usize {
        self.suspended.len()
    }
}
