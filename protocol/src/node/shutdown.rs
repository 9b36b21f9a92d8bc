//! Stopping a node: its runs are handed back to the grid, the peers get
//! the record, then the node says it is gone.

use crate::RequestId;
use crate::model::{Attempt, AttemptState};

use super::action::Action;
use super::{Node, Now};

/// How long a stopping node waits for its runs to end (program grace,
/// last checkpoint snapshot and its copy on a peer) before it gives up on
/// them; their leases then run out as for a crash.
pub const SHUTDOWN_GRACE_MS: u64 = 20_000;
/// After the last record: time for the peers to sync it before this node
/// declares itself gone (a peer that heard "gone" first would take the runs
/// over without their last checkpoints).
const SHUTDOWN_LINGER_MS: u64 = 1_000;
/// After declaring itself gone: time for the notice to leave.
const SHUTDOWN_LAST_WORD_MS: u64 = 300;
const STOPPED_NODE: &str = "the node running it was stopped; the run goes on elsewhere";

/// A stop in progress (monotonic ms).
pub(super) struct Stopping {
    /// Stop waiting for runs then.
    give_up_ms: u64,
    /// The runs were recorded as handed back.
    recorded_ms: Option<u64>,
    /// The node told the grid it is gone; it exits after.
    left_ms: Option<u64>,
    done: bool,
}

impl Stopping {
    /// When the stop moves on by itself.
    pub(super) fn next_deadline(&self) -> u64 {
        match (self.recorded_ms, self.left_ms) {
            (_, Some(t)) => t + SHUTDOWN_LAST_WORD_MS,
            (Some(t), None) => t + SHUTDOWN_LINGER_MS,
            (None, None) => self.give_up_ms,
        }
    }
}

impl Node {
    /// Starts stopping the node: every run of this node is asked to stop
    /// and will be recorded as handed back, so other nodes take them at
    /// once. [`Action::Stopped`] says when it is done.
    pub fn begin_stop(&mut self, now: Now) {
        if self.stopping.is_some() {
            return;
        }
        tracing::info!(
            "stopping: ending {} run(s) here and handing them back to the grid",
            self.running.len()
        );
        self.release_ahead(now, STOPPED_NODE);
        self.release_gathering(now, STOPPED_NODE);
        let keys: Vec<_> = self.running.keys().cloned().collect();
        for k in keys {
            if let Some(r) = self.running.get_mut(&k)
                && r.stopping.is_none()
            {
                r.stopping = Some((AttemptState::Yielded, STOPPED_NODE.into()));
            }
            self.actions.push_back(Action::Stop(k));
        }
        self.stopping = Some(Stopping {
            give_up_ms: now.mono_ms + SHUTDOWN_GRACE_MS,
            recorded_ms: None,
            left_ms: None,
            done: false,
        });
    }

    /// Whether the node is stopping.
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// Moves a stop in progress on: runs ended (or given up on) and
    /// recorded, the peers had time to sync that, the node said it is gone.
    pub(super) fn stop_progress(&mut self, now: Now) {
        let t = now.mono_ms;
        let Some(s) = &self.stopping else {
            return;
        };
        match (s.recorded_ms, s.left_ms, s.done) {
            (_, _, true) => {}
            (_, Some(left), false) => {
                if t >= left + SHUTDOWN_LAST_WORD_MS {
                    if let Some(s) = &mut self.stopping {
                        s.done = true;
                    }
                    self.actions.push_back(Action::Stopped);
                }
            }
            (Some(rec), None, _) => {
                if t >= rec + SHUTDOWN_LINGER_MS {
                    self.leave();
                    if let Some(s) = &mut self.stopping {
                        s.left_ms = Some(t);
                    }
                }
            }
            (None, None, _) if self.running.is_empty() || t >= s.give_up_ms => {
                // Runs that did not end in time: recorded as handed back all
                // the same; their programs are killed when the node exits.
                let late: Vec<(RequestId, Attempt)> = std::mem::take(&mut self.running)
                    .into_iter()
                    .map(|((req, ..), r)| {
                        let mut a = r.attempt;
                        a.state = AttemptState::Yielded;
                        a.reason = Some(STOPPED_NODE.into());
                        a.finished_ms = Some(now.wall_ms);
                        (req, a)
                    })
                    .collect();
                for (req, a) in &late {
                    self.write_attempt(req, a);
                }
                self.persist();
                self.sync_out(now);
                if let Some(s) = &mut self.stopping {
                    s.recorded_ms = Some(t);
                }
            }
            (None, None, _) => {}
        }
    }
}
