//! What the node answers about the grid: requests and their runs, nodes,
//! files, domains, metrics, the event stream.

use crate::access::{ApiToken, User};
use crate::api::{
    AttemptSpan, GridNode, Metrics, RequestInfo, RunInfo, SharedFileInfo, SkippedEntries,
    SkippedEntry,
};
use crate::domain::Domain;
use crate::model::{Attempt, AttemptState, Process, RequestSpec, SharedFile};
use crate::run_view::RunCounts;
use crate::schedule::NodeOffer;
use crate::{BlobHash, NodeId, RequestId};

use super::{AttemptKey, Node, NodeError, Now};

type Answer<T> = Result<T, NodeError>;

/// What the results archive of a finished request is made of.
#[derive(Debug)]
pub struct ResultPlan {
    pub id: RequestId,
    pub ranks: Vec<RankPlan>,
    /// What was asked (the receipt records it; a sweep names its columns).
    pub spec: RequestSpec,
    /// Each rank's attempt that stands for it.
    pub attempts: Vec<Option<Attempt>>,
}

impl ResultPlan {
    /// A rank's sweep values and repetition (none and the rank itself
    /// without a sweep).
    pub fn point(&self, rank: u32) -> (Vec<String>, u32) {
        match self.spec.point(rank) {
            Some(p) => (p.values.to_vec(), p.repetition),
            None => (Vec::new(), rank),
        }
    }
}

/// Per rank: output archive and stdout blobs, and the nodes that hold them.
pub type RankPlan = (u32, Option<BlobHash>, Option<BlobHash>, Vec<NodeId>);

/// Where a run's log is now.
#[derive(Debug)]
pub enum LogSource {
    /// The attempt ended: its logs are blobs.
    Stored {
        stdout: Option<BlobHash>,
        stderr: Option<BlobHash>,
        /// The nodes that hold the blobs (the one that ran the attempt first).
        holders: Vec<NodeId>,
    },
    /// Running here: the files grow until the attempt ends.
    Live { key: AttemptKey, slot: usize },
    /// Running on another node: ask it for what the run writes
    /// (`wire::SyncRequest::LogTail`).
    Remote { node: NodeId, key: AttemptKey },
    /// Not started yet (or running on another node).
    NotYet,
}

/// Request changes after a version, for the event stream.
#[derive(Debug)]
pub struct EventsPage {
    /// (version, request) in order.
    pub events: Vec<(u64, RequestId)>,
    /// The newest change looked at (shown or filtered out).
    pub scanned: Option<u64>,
    /// The newest version now.
    pub current: u64,
    /// False when changes after `since` were dropped already (or `since`
    /// is from an earlier life of this node): the client must reload.
    pub complete: bool,
}

impl Node {
    pub fn processes(&self) -> Vec<Process> {
        self.grid.processes().unwrap_or_default()
    }

    pub fn user(&self, name: &str) -> Answer<Option<User>> {
        Ok(self.grid.user(name)?)
    }

    pub fn token(&self, id: &str) -> Answer<Option<ApiToken>> {
        Ok(self.grid.token(id)?)
    }

    /// The request an id prefix names.
    pub fn resolve(&self, prefix: &str) -> Answer<RequestId> {
        resolve_in(prefix, self.requests.keys().chain(self.archive.keys()))
    }

    /// Every request, without runs (archived ones too), newest first.
    pub fn list(&self, now: Now) -> Vec<RequestInfo> {
        self.read_model(now).page(None, 0, usize::MAX)
    }

    /// A request by id prefix, with its runs if asked.
    pub fn get(&self, now: Now, prefix: &str, runs: bool) -> Answer<RequestInfo> {
        let id = self.resolve(prefix)?;
        if let Some(a) = self.archive.get(&id) {
            // Its runs need the document: the driver restores it first.
            return Ok(a.info.clone());
        }
        self.info(now, &id, runs)
            .ok_or_else(|| NodeError::NotFound(format!("no request {id} on this grid")))
    }

    /// The owner of a request this node holds.
    /// Every attempt of a request's rank this node knows of.
    pub fn attempts_of(&self, id: &RequestId, rank: u32) -> Vec<Attempt> {
        self.requests
            .get(id)
            .map(|q| q.doc.attempts_of(rank).to_vec())
            .unwrap_or_default()
    }

    pub fn owner_of(&self, id: &RequestId) -> Option<&str> {
        match self.requests.get(id) {
            Some(q) => Some(q.doc.spec().owner.as_str()),
            None => self.archive.get(id).map(|a| a.info.owner.as_str()),
        }
    }

    pub fn info(&self, now: Now, id: &RequestId, with_runs: bool) -> Option<RequestInfo> {
        let q = self.requests.get(id)?;
        let now = now.mono_ms;
        let live = |a: &Attempt| self.is_live(id, a, now);
        let spec = q.doc.spec();
        let counts: RunCounts = q.doc.counts(live);
        let runs = with_runs.then(|| {
            q.doc
                .runs(live)
                .into_iter()
                .zip(0..spec.repetitions)
                .map(|(v, rank)| {
                    let a = v.current;
                    RunInfo {
                        rank,
                        state: v.state,
                        node: a.map(|a| a.node.clone()),
                        attempt: a.map(|a| a.epoch),
                        attempts: q.doc.attempts_of(rank).len() as u32,
                        exit_code: a.and_then(|a| a.exit_code),
                        started_ms: a.and_then(|a| a.started_ms),
                        finished_ms: a.and_then(|a| a.finished_ms),
                        duration_ms: a.and_then(|a| a.duration_ms()),
                        output: a.and_then(|a| a.output),
                        reason: a.and_then(|a| a.reason.clone()),
                        progress: a.and_then(|a| a.progress),
                        message: a.and_then(|a| a.message.clone()),
                        values: spec
                            .point(rank)
                            .map(|p| p.values.to_vec())
                            .unwrap_or_default(),
                        repetition: spec.point(rank).map(|p| p.repetition),
                        peak_memory_mb: a.and_then(|a| a.peak_memory_mb),
                        peak_cpu_percent: a.and_then(|a| a.peak_cpu_percent),
                        replicas: a.map(|a| a.replicas.clone()).unwrap_or_default(),
                        checkpoint: q.doc.latest_checkpoint(rank).and_then(|a| a.checkpoint),
                        history: q
                            .doc
                            .attempts_of(rank)
                            .iter()
                            .map(|a| AttemptSpan {
                                epoch: a.epoch,
                                node: a.node.clone(),
                                state: a.state,
                                claimed_ms: a.claimed_ms,
                                started_ms: a.started_ms,
                                finished_ms: a.finished_ms,
                                backup: a.backup,
                            })
                            .collect(),
                    }
                })
                .collect()
        });
        Some(RequestInfo {
            id: id.clone(),
            state: counts.request_state(q.doc.is_cancelled()),
            owner: spec.owner.clone(),
            process: spec.process.id.clone(),
            process_name: spec.process.name.clone(),
            language: spec.process.language,
            repetitions: spec.repetitions,
            parameters: spec.parameters.clone(),
            created_ms: spec.created_ms,
            parallel: spec.parallel,
            same_node: spec.same_node,
            sweep: spec
                .sweep
                .as_ref()
                .map(|s| s.names.clone())
                .unwrap_or_default(),
            combinations: spec.sweep.as_ref().map_or(0, |s| s.rows.len() as u32),
            gang: self.gang_state(id, now),
            waiting: (counts.queued > 0 && !q.doc.is_cancelled()).then(|| self.why_waiting(spec)),
            counts,
            version: q.version,
            runs,
            held_by_peer: None,
        })
    }

    /// Why a request's queued runs wait, from this node and the nodes it
    /// hears from.
    fn why_waiting(&self, spec: &RequestSpec) -> String {
        let mut offers = vec![NodeOffer {
            name: self.cfg.name.clone(),
            caps: self.caps.clone(),
            slots_free: self.free_slots.len() as u32,
            paused: self.takes_no_runs(),
            owner_here: self.paused.as_ref().is_some_and(super::Pause::owner_here),
            no_room: self.misfit_now.clone(),
        }];
        offers.extend(
            self.repl
                .live_statuses()
                .filter(|(n, _)| !self.liveness.is_down(n))
                .map(|(_, s)| {
                    let mut o = s.offer();
                    o.caps.min_isolation = self.caps.min_isolation;
                    o
                }),
        );
        crate::schedule::why_waiting(spec, &offers)
    }

    /// Entries of the documents this node skips because they failed their
    /// checks (entry, why), and how many there are: the grid's, each
    /// request's attempts, and requests unreadable as a whole.
    pub fn skipped_entries(&self) -> (Vec<(String, String)>, u64) {
        let (mut list, _) = self.grid.skipped().list();
        for (id, q) in &self.requests {
            for (entry, why) in q.doc.skipped() {
                list.push((format!("req/{id}/{entry}"), why.clone()));
            }
        }
        for (id, why) in &self.repl.unreadable {
            list.push((format!("req/{id}"), why.clone()));
        }
        (list, self.skipped_count())
    }

    /// How many entries [`Node::skipped_entries`] counts, without copying
    /// them (the metrics read it after every batch).
    pub fn skipped_count(&self) -> u64 {
        self.grid.skipped().count()
            + self
                .requests
                .values()
                .map(|q| q.doc.skipped().len() as u64)
                .sum::<u64>()
            + self.repl.unreadable.len() as u64
    }

    /// The first `max` skipped entries, and how many there are.
    pub fn skipped(&self, max: usize) -> SkippedEntries {
        let (list, total) = self.skipped_entries();
        SkippedEntries {
            total,
            entries: list
                .into_iter()
                .take(max)
                .map(|(entry, reason)| SkippedEntry { entry, reason })
                .collect(),
        }
    }

    /// Slots in use here now (runs claimed ahead wait outside them).
    pub fn slots_busy(&self) -> u32 {
        self.running.values().filter(|r| r.slot.is_some()).count() as u32
    }

    /// Requests this node holds (archived ones too).
    pub fn request_count(&self) -> u32 {
        (self.requests.len() + self.archive.len()) as u32
    }

    /// The node's metrics (traffic is the driver's to fill in).
    pub fn metrics(&self, now: Now) -> Metrics {
        self.read_model(now).metrics()
    }

    /// What a finished request's results archive is made of.
    pub fn result_plan(&self, now: Now, prefix: &str) -> Answer<ResultPlan> {
        let id = self.resolve(prefix)?;
        let info = self
            .info(now, &id, false)
            .ok_or_else(|| NodeError::NotFound(format!("no request {id} on this grid")))?;
        // Once the request is terminal every rank's result is fixed; a local
        // runner still around (say, one from the losing side of a partition,
        // waiting to be told its rank is done elsewhere) changes nothing.
        if !info.state.is_terminal() {
            return Err(NodeError::Conflict(format!(
                "request {id} is still {} ({} of {} runs finished): wait for it (pesc status {id}) and ask again",
                info.state.as_str(),
                info.counts.finished(),
                info.counts.total
            )));
        }
        let Some(q) = self.requests.get(&id) else {
            return Err(NodeError::NotFound(format!("no request {id} on this grid")));
        };
        let attempts: Vec<Option<Attempt>> = q
            .doc
            .result_attempts()
            .into_iter()
            .map(|a| a.cloned())
            .collect();
        let ranks = (0..q.doc.spec().repetitions)
            .zip(&attempts)
            .map(|(r, a)| {
                (
                    r,
                    a.as_ref().and_then(|a| a.output),
                    a.as_ref().and_then(|a| a.stdout),
                    a.as_ref().map(holders_of_results).unwrap_or_default(),
                )
            })
            .collect();
        Ok(ResultPlan {
            id,
            ranks,
            spec: q.doc.spec().clone(),
            attempts,
        })
    }

    /// Where rank `rank`'s log is now.
    pub fn log_source(&self, now: Now, prefix: &str, rank: u32) -> Answer<LogSource> {
        let id = self.resolve(prefix)?;
        let Some(q) = self.requests.get(&id) else {
            return Err(NodeError::NotFound(format!("no request {id} on this grid")));
        };
        if rank >= q.doc.spec().repetitions {
            return Err(NodeError::Invalid(format!(
                "rank {rank} does not exist: request {id} has ranks 0 to {}",
                q.doc.spec().repetitions - 1
            )));
        }
        if let Some((k, slot)) = self
            .running
            .iter()
            .filter(|(k, _)| k.0 == id && k.1 == rank)
            .max_by_key(|(k, _)| k.2)
            .map(|(k, r)| (k, r.slot.filter(|_| r.waiting.is_none())))
        {
            // Claimed ahead and waiting for a slot, or a gang's rank waiting
            // for the rest of its gang: nothing written yet.
            let Some(slot) = slot else {
                return Ok(LogSource::NotYet);
            };
            return Ok(LogSource::Live {
                key: k.clone(),
                slot,
            });
        }
        let now_ms = now.mono_ms;
        let run = q.doc.run(rank, |a| self.is_live(&id, a, now_ms));
        if run.state == crate::model::RunState::Running
            && let Some(a) = run.current
            && a.node != self.cfg.node
        {
            return Ok(LogSource::Remote {
                node: a.node.clone(),
                key: (id.clone(), rank, a.epoch),
            });
        }
        let latest = q
            .doc
            .attempts_of(rank)
            .iter()
            .filter(|a| a.state.is_terminal() && a.state != AttemptState::Yielded)
            .max_by_key(|a| (a.state == AttemptState::Succeeded, a.epoch));
        Ok(match latest {
            Some(a) => LogSource::Stored {
                stdout: a.stdout,
                stderr: a.stderr,
                holders: holders_of_results(a),
            },
            None => LogSource::NotYet,
        })
    }

    /// Request changes after version `since`; with an owner, only that
    /// user's requests.
    pub fn events(&self, since: u64, owner: Option<&str>) -> EventsPage {
        // Every change after `since` is still in the log.
        let complete =
            since <= self.version && self.event_log.front().is_none_or(|e| since + 1 >= e.0);
        let after: Vec<(u64, RequestId)> = self
            .event_log
            .iter()
            .filter(|e| e.0 > since)
            .cloned()
            .collect();
        let scanned = after.last().map(|e| e.0);
        let events = after
            .into_iter()
            .filter(|(_, id)| owner.is_none_or(|o| self.owner_of(id) == Some(o)))
            .collect();
        EventsPage {
            events,
            scanned,
            current: self.version,
            complete,
        }
    }

    pub fn files(&self) -> Vec<SharedFileInfo> {
        let mut files = self.grid.files().unwrap_or_default();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        files.into_iter().map(|f| self.file_info(f)).collect()
    }

    pub fn file(&self, name: &str) -> Answer<SharedFileInfo> {
        self.shared_file(name).map(|f| self.file_info(f))
    }

    /// A shared file, where it is held, and whether this node holds it.
    pub(super) fn file_info(&self, file: SharedFile) -> SharedFileInfo {
        let holders = self.grid.holders(&file.hash).unwrap_or_default();
        SharedFileInfo {
            here: holders.contains(&self.cfg.node),
            file,
            holders,
        }
    }

    pub fn domains(&self) -> Vec<Domain> {
        let mut v = self.grid.domains().unwrap_or_default();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The grid's nodes: records from the grid document, live state from
    /// heartbeats.
    pub fn grid_nodes(&self, now: Now) -> Vec<GridNode> {
        let now = now.mono_ms;
        let mut out: Vec<GridNode> = self
            .grid
            .nodes()
            .unwrap_or_default()
            .into_iter()
            .map(|n| {
                let me = n.id == self.cfg.node;
                let live = self.repl.live.get(&n.id);
                let status = if me {
                    Some(self.own_status())
                } else {
                    live.map(|(s, _)| s.clone())
                };
                let mut g = GridNode {
                    this_node: me,
                    connected: me || self.repl.connected.contains(&n.id),
                    addrs: n.addrs,
                    name: n.name,
                    executor: n.executor,
                    isolation: n.isolation,
                    meets_minimum: true,
                    slots: n.slots,
                    slots_free: None,
                    load: None,
                    gpus: Vec::new(),
                    builds: Vec::new(),
                    last_seen_ms_ago: if me {
                        Some(0)
                    } else {
                        live.map(|(_, t)| now.saturating_sub(*t))
                    },
                    up: me || !self.liveness.is_down(&n.id),
                    mem_total_mb: None,
                    mem_free_mb: None,
                    mem_room_mb: None,
                    pause: None,
                    owner_here: false,
                    suspended: 0,
                    id: n.id,
                };
                if let Some(s) = &status {
                    g.fill_from_status(s, self.caps.min_isolation);
                }
                g
            })
            .collect();
        out.sort_by(|a, b| (!a.this_node, &a.name, &a.id).cmp(&(!b.this_node, &b.name, &b.id)));
        out
    }

    /// Whether the node takes no new runs now (the owner's policy), and why.
    pub fn paused(&self) -> Option<&super::Pause> {
        self.paused.as_ref()
    }

    /// Whether the node takes no new runs now: its owner's policy, or a
    /// grid document only a newer PESC reads safely.
    pub(super) fn takes_no_runs(&self) -> bool {
        self.paused.is_some() || self.grid_too_new.is_some()
    }

    /// Why it takes no new runs, in words for `pesc nodes` and the Nodes page.
    pub(super) fn why_no_runs(&self) -> Option<String> {
        match (&self.grid_too_new, &self.paused) {
            (Some(e), _) => Some(e.clone()),
            (None, Some(p)) => Some(p.to_string()),
            (None, None) => None,
        }
    }
}

/// The one request among `ids` that an id prefix names.
pub(super) fn resolve_in<'a>(
    prefix: &str,
    ids: impl Iterator<Item = &'a RequestId>,
) -> Answer<RequestId> {
    let prefix = prefix.trim().to_ascii_lowercase();
    if prefix.is_empty() || !prefix.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(NodeError::Invalid(format!(
            "'{prefix}' is not a request id (hex digits)"
        )));
    }
    let mut it = ids.filter(|k| k.as_str().starts_with(&prefix));
    match (it.next(), it.next()) {
        (Some(id), None) => Ok(id.clone()),
        (None, _) => Err(NodeError::NotFound(format!(
            "no request {prefix} on this grid"
        ))),
        (Some(_), Some(_)) => Err(NodeError::Invalid(format!(
            "'{prefix}' matches several requests: give more digits"
        ))),
    }
}

/// Who keeps an attempt's output and logs: its replicas, or at least the
/// node that ran it.
fn holders_of_results(a: &Attempt) -> Vec<NodeId> {
    if a.replicas.is_empty() {
        vec![a.node.clone()]
    } else {
        a.replicas.clone()
    }
}
