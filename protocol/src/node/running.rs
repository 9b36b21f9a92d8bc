//! The attempts running on this node: what the runner reports, and which
//! outcome becomes which attempt state.

use crate::model::{Attempt, AttemptState, BuildState};
use crate::run_view::Abandon;
use crate::{BlobHash, NodeId, RequestId};

use super::action::Job;
use super::{AttemptKey, MAX_BUILDS_SHOWN, Node, Now};
use crate::claim_order::{SHORT_RUN_MS, short_runs};

/// Progress reports go into the documents at most this often per run.
const PROGRESS_EVERY_MS: u64 = 5_000;

/// What a claimed run shows while its node gets the shared files.
pub const FETCHING_INPUTS: &str = "fetching inputs";

/// Linux signal numbers a node's limits send (the reason names them).
const SIGKILL: i32 = 9;
const SIGSEGV: i32 = 11;
const SIGXCPU: i32 = 24;
const SIGXFSZ: i32 = 25;

/// An attempt of this node, as the node tracks it.
pub(super) struct Running {
    pub(super) attempt: Attempt,
    /// The slot it runs in; `None` while it waits for one (claimed ahead,
    /// see `Node::schedule`).
    pub(super) slot: Option<usize>,
    /// The runner's job, kept here until a slot is free for it (with no
    /// slot and no job waiting, it ran and gave its slot back while its
    /// results are copied).
    pub(super) waiting: Option<Box<Job>>,
    /// Its start is not in the document yet: a short run's start is
    /// written only if it is still running [`SHORT_RUN_MS`] later (monotonic
    /// ms of the start).
    pub(super) start_unwritten: Option<u64>,
    pub(super) owner: String,
    /// Why we asked it to stop, if we did: the state to record and why.
    pub(super) stopping: Option<(AttemptState, String)>,
    /// `attempt` has changes not yet in the document.
    pub(super) unwritten: bool,
    /// When progress was last put in the document (monotonic ms).
    pub(super) progress_written: Option<u64>,
    /// What it was expected to take when claimed (`resources`).
    pub(super) expected: crate::resources::Peak,
    /// The most its processes were seen to take, and their memory (MiB)
    /// at the last probe reading.
    pub(super) used: crate::resources::Peak,
    pub(super) now_mb: u64,
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// The kernel killed the run for going over its memory limit (MiB).
    OverMemory(u64),
}

/// How an attempt ended, as the runner saw it.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub exit: Option<Exit>,
    /// Set when the attempt could not be prepared, started or stored.
    pub error: Option<String>,
    /// Set when what the program left behind broke a rule (output/ replaced
    /// by a link): the attempt failed, and it was the program's doing.
    pub refused: Option<String>,
    pub output: Option<BlobHash>,
    pub stdout: Option<BlobHash>,
    pub stderr: Option<BlobHash>,
    /// Nodes keeping the results, this one first.
    pub replicas: Vec<NodeId>,
    /// A last snapshot of `checkpoint/` (taken when the run stopped without
    /// success) and its holders.
    pub checkpoint: Option<(BlobHash, Vec<NodeId>)>,
    /// The container image it ran in (its id), if any.
    pub image: Option<String>,
}

impl Outcome {
    /// The attempt could not be prepared, started or stored.
    pub fn error(e: impl std::fmt::Display) -> Self {
        Outcome {
            error: Some(e.to_string()),
            ..Default::default()
        }
    }
}

/// What the runner of an attempt reports.
#[derive(Debug, Clone)]
pub enum RunEvent {
    /// Getting the request's shared files before starting.
    Fetching {
        key: AttemptKey,
    },
    /// This node now keeps a whole copy of a shared file.
    Holding {
        hash: BlobHash,
    },
    /// Building the image of the request's domain before starting.
    Building {
        key: AttemptKey,
    },
    /// What the program last wrote to its progress file.
    Progress {
        key: AttemptKey,
        percent: Option<u8>,
        message: Option<String>,
    },
    Started {
        key: AttemptKey,
    },
    /// The program ended and its results are stored here: its slot is
    /// free for the next run while other nodes are asked to keep copies.
    Released {
        key: AttemptKey,
    },
    /// A snapshot of the run's `checkpoint/`, kept by `holders`.
    Checkpoint {
        key: AttemptKey,
        hash: BlobHash,
        holders: Vec<NodeId>,
    },
    Finished {
        key: AttemptKey,
        outcome: Box<Outcome>,
    },
}

impl Node {
    /// A runner's report.
    pub fn run_event(&mut self, now: Now, ev: RunEvent) {
        // A finished run frees a slot; a held blob may end a wait for inputs.
        if matches!(
            ev,
            RunEvent::Finished { .. } | RunEvent::Released { .. } | RunEvent::Holding { .. }
        ) {
            self.rescan = true;
        }
        match ev {
            RunEvent::Fetching { key } => {
                if let Some(r) = self.running.get_mut(&key) {
                    r.attempt.reason = Some(FETCHING_INPUTS.into());
                    r.unwritten = true;
                }
            }
            RunEvent::Holding { hash } => self.record_holding(&hash),
            RunEvent::Progress {
                key,
                percent,
                message,
            } => {
                if let Some(r) = self.running.get_mut(&key) {
                    r.attempt.progress = percent.or(r.attempt.progress);
                    r.attempt.message = message.or(r.attempt.message.take());
                    // Into the document at most every few seconds: every
                    // node receives each write.
                    if r.progress_written
                        .is_none_or(|t| now.mono_ms >= t + PROGRESS_EVERY_MS)
                    {
                        r.progress_written = Some(now.mono_ms);
                        r.unwritten = true;
                    }
                }
            }
            RunEvent::Building { key } => {
                self.set_build(&key, |_| Some(BuildState::Building));
                let name = self
                    .requests
                    .get(&key.0)
                    .and_then(|q| q.doc.spec().domain.as_ref().map(|d| d.name.clone()));
                if let Some(r) = self.running.get_mut(&key) {
                    r.attempt.reason =
                        Some(format!("building domain {}", name.unwrap_or_default()));
                    r.unwritten = true;
                }
            }
            RunEvent::Checkpoint { key, hash, holders } => {
                if let Some(r) = self.running.get_mut(&key) {
                    r.attempt.checkpoint = Some(hash);
                    r.attempt.checkpoint_holders = holders;
                    r.unwritten = true;
                }
            }
            RunEvent::Started { key } => {
                self.set_build(&key, |_| Some(BuildState::Built));
                let Some(r) = self.running.get_mut(&key) else {
                    return;
                };
                r.attempt.state = AttemptState::Running;
                r.attempt.started_ms = Some(now.wall_ms);
                r.attempt.reason = None;
                // Written at the end of the batch, unless the run finishes
                // first: one document write instead of two. A run of a
                // request whose runs are short waits longer: most end before
                // anyone needs to read that they started, and every node
                // merges each write.
                let short = self
                    .requests
                    .get(&key.0)
                    .is_some_and(|q| short_runs(q.last_run_ms));
                match self.running.get_mut(&key) {
                    Some(r) if short => r.start_unwritten = Some(now.mono_ms),
                    Some(r) => r.unwritten = true,
                    None => {}
                }
            }
            RunEvent::Released { key } => {
                if let Some(slot) = self.running.get_mut(&key).and_then(|r| r.slot.take()) {
                    self.slot_freed(slot);
                }
            }
            RunEvent::Finished { key, outcome } => {
                // Ended while its image was still being built: the build failed.
                self.set_build(&key, |s| {
                    (s == Some(BuildState::Building)).then_some(BuildState::Failed)
                });
                let Some(r) = self.running.remove(&key) else {
                    return;
                };
                if let Some(slot) = r.slot {
                    self.slot_freed(slot);
                }
                self.gpu_pool.give_back(&key);
                let ran = r.waiting.is_none();
                let mut a = r.attempt;
                finish_attempt(&mut a, *outcome, r.stopping, now.wall_ms);
                if r.used.memory_mb > 0 {
                    a.peak_memory_mb = Some(r.used.memory_mb);
                    a.peak_cpu_percent = Some(r.used.cpu_percent);
                }
                if let (true, Some(q), Some(start), Some(end)) = (
                    ran,
                    self.requests.get_mut(&key.0),
                    a.started_ms,
                    a.finished_ms,
                ) {
                    q.last_run_ms = Some(end.saturating_sub(start));
                }
                if a.state == AttemptState::Succeeded {
                    self.races_lost = 0;
                }
                self.write_attempt(&key.0, &a);
                // The request's last runs: its end must not wait.
                if self
                    .requests
                    .get(&key.0)
                    .is_some_and(|q| q.doc.fresh_from(0).next().is_none())
                {
                    self.repl
                        .urgent
                        .insert(crate::wire::DocKey::Request(key.0.clone()));
                }
                if self
                    .requests
                    .get(&key.0)
                    .is_some_and(|q| q.doc.is_finished())
                {
                    self.request_finished(&key.0);
                }
            }
        }
    }

    /// Writes the running attempts' pending changes into their documents.
    pub(super) fn flush_running(&mut self, now: Now) {
        let pending: Vec<(RequestId, Attempt)> = self
            .running
            .iter_mut()
            .filter(|(_, r)| {
                r.unwritten
                    || r.start_unwritten
                        .is_some_and(|t| now.mono_ms >= t + SHORT_RUN_MS)
            })
            .map(|(k, r)| {
                r.start_unwritten = None;
                r.unwritten = false;
                (k.0.clone(), r.attempt.clone())
            })
            .collect();
        for (req, a) in pending {
            self.write_attempt(&req, &a);
        }
    }

    pub(super) fn write_attempt(&mut self, req: &RequestId, a: &Attempt) {
        if let Some(q) = self.requests.get_mut(req) {
            match q.doc.put_attempt(a) {
                Ok(()) => q.dirty = true,
                Err(e) => tracing::error!("cannot record attempt {}: {e}", a.key()),
            }
        }
    }

    /// Forgets a finished request's bookkeeping once nothing runs here,
    /// and lets the driver drop its working files.
    pub(super) fn request_finished(&mut self, id: &RequestId) {
        if self.running.keys().any(|k| &k.0 == id) {
            return;
        }
        self.sightings.forget_request(id);
        self.first_seen.remove(id);
        self.actions
            .push_back(super::Action::RequestDone(id.clone()));
    }

    /// Updates what this node says of the image of an attempt's domain.
    fn set_build(
        &mut self,
        key: &AttemptKey,
        f: impl FnOnce(Option<BuildState>) -> Option<BuildState>,
    ) {
        let Some(hash) = self
            .requests
            .get(&key.0)
            .and_then(|q| q.doc.spec().domain.as_ref().map(|d| d.hash.clone()))
        else {
            return;
        };
        if let Some(s) = f(self.builds.get(&hash).copied()) {
            if self.builds.len() >= MAX_BUILDS_SHOWN && !self.builds.contains_key(&hash) {
                self.builds.pop_first();
            }
            self.builds.insert(hash, s);
        }
    }

    /// Asks this node's attempt to stop, recording `why` when it ends; one
    /// still waiting for a slot ends now.
    pub(super) fn stop_attempt(&mut self, now: Now, key: &AttemptKey, why: (AttemptState, String)) {
        let Some(r) = self.running.get_mut(key) else {
            return;
        };
        if r.stopping.is_some() {
            return;
        }
        r.stopping = Some(why);
        if r.waiting.is_none() {
            self.wake_to_stop(key);
            self.actions.push_back(super::Action::Stop(key.clone()));
        } else {
            self.ahead.retain(|k| k != key);
            self.run_event(
                now,
                RunEvent::Finished {
                    key: key.clone(),
                    outcome: Box::default(),
                },
            );
        }
    }

    /// Starts the attempts claimed ahead in the free slots, oldest first.
    pub(super) fn start_ahead(&mut self) {
        while !self.free_slots.is_empty() {
            let Some(key) = self.ahead.pop_front() else {
                return;
            };
            let Some(r) = self.running.get_mut(&key) else {
                continue;
            };
            let Some(mut job) = r.waiting.take() else {
                continue;
            };
            let Some(slot) = self.free_slots.pop() else {
                return;
            };
            r.slot = Some(slot);
            job.slot = slot;
            self.actions.push_back(super::Action::Start(job));
        }
    }

    /// Hands back every attempt still waiting for a slot (the node takes no
    /// runs now, or stops).
    pub(super) fn release_ahead(&mut self, now: Now, why: &str) {
        for key in std::mem::take(&mut self.ahead) {
            self.stop_attempt(now, &key, (AttemptState::Yielded, why.to_string()));
        }
    }
}

/// Turns what the runner saw into the attempt's final record.
pub(super) fn finish_attempt(
    a: &mut Attempt,
    o: Outcome,
    stopping: Option<(AttemptState, String)>,
    wall_ms: u64,
) {
    a.finished_ms = Some(wall_ms);
    a.image = o.image.clone();
    a.stdout = o.stdout;
    a.stderr = o.stderr;
    a.replicas = o.replicas;
    a.reason = None;
    if let Some((h, holders)) = o.checkpoint {
        a.checkpoint = Some(h);
        a.checkpoint_holders = holders;
    }
    if a.started_ms.is_none() {
        a.started_ms = a.finished_ms;
    }
    if let Some((s, why)) = stopping {
        a.state = s;
        a.reason = Some(why);
        return;
    }
    if let (Some(exit), None, Some(why)) = (o.exit, &o.error, o.refused) {
        a.state = AttemptState::Failed;
        a.exit_code = Some(match exit {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
            Exit::OverMemory(_) => 128 + SIGKILL,
        });
        a.reason = Some(why);
        return;
    }
    match (o.exit, o.error) {
        (_, Some(err)) => {
            // The node's fault, not the program's: worth an operator's look.
            tracing::warn!(
                "rank {} (epoch {}) could not run here: {err}",
                a.rank,
                a.epoch
            );
            a.state = AttemptState::Error;
            a.reason = Some(err);
        }
        (Some(Exit::Code(0)), None) => {
            a.state = AttemptState::Succeeded;
            a.exit_code = Some(0);
            a.output = o.output;
        }
        (Some(Exit::Code(c)), None) => {
            a.state = AttemptState::Failed;
            a.exit_code = Some(c);
            a.output = o.output;
            a.reason = Some(format!("the program exited with code {c}"));
        }
        (Some(Exit::Signal(s)), None) => {
            a.state = AttemptState::Failed;
            a.exit_code = Some(128 + s);
            a.output = o.output;
            a.reason = Some(signal_reason(s));
        }
        (Some(Exit::OverMemory(mb)), None) => {
            a.state = AttemptState::Failed;
            a.exit_code = Some(128 + SIGKILL);
            a.output = o.output;
            a.reason = Some(format!(
                "the run went over its memory limit ({mb} MiB) and the kernel killed it: ask for more (--memory-mb) or use less"
            ));
        }
        (None, None) => {
            a.state = AttemptState::Error;
            a.reason = Some("the executor reported nothing".into());
        }
    }
}

/// Why a program killed by `sig` ended, in words: the signals a node's
/// limits send say which limit.
fn signal_reason(sig: i32) -> String {
    let why = match sig {
        SIGXFSZ => {
            " (SIGXFSZ: it wrote a file larger than this node allows, [sandbox] file_size_mb)"
        }
        SIGXCPU => " (SIGXCPU: it used more CPU time than allowed)",
        SIGKILL => " (SIGKILL: stopped, or out of memory)",
        SIGSEGV => " (SIGSEGV: it crashed)",
        _ => "",
    };
    format!("the program was killed by signal {sig}{why}")
}

/// What to record when this node stops its own attempt, and why.
pub(super) fn abandon_state(why: Abandon) -> (AttemptState, String) {
    match why {
        Abandon::Cancelled => (AttemptState::Cancelled, "the request was cancelled".into()),
        Abandon::LostRace => (
            AttemptState::Yielded,
            "another node claimed this run at the same moment and has priority".into(),
        ),
        Abandon::AlreadyDone => (
            AttemptState::Yielded,
            "another node already produced this run's result".into(),
        ),
        Abandon::Reassigned => (
            AttemptState::Yielded,
            "the run was given to another node (this node's lease was presumed lost)".into(),
        ),
        Abandon::GangStopped => (
            AttemptState::Yielded,
            "another rank of this parallel request stopped: every rank starts again together"
                .into(),
        ),
    }
}
