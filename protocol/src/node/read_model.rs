//! What the API reads without asking the node: the request list, the
//! requests without their runs, the metrics and the grid's nodes. The
//! driver keeps one [`ReadModel`] and has the node bring it up to date
//! after every batch ([`Node::publish_reads`]); API calls read it under a short
//! lock, so none waits behind a merge, a Docker call or a probe.
//!
//! Only what changed is redone per batch (the requests persisted in it,
//! archived or restored); every [`TICK_MS`](super::TICK_MS) the unfinished
//! requests, the nodes and whatever hangs on time alone (a holder's lease
//! running out, why a run waits) are redone too.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};

use crate::RequestId;
use crate::api::{GridNode, Metrics, RequestInfo};
use crate::run_view::RunCounts;

use super::{Node, NodeError, Now};

/// The node's state as the API reads it (see the module documentation).
#[derive(Debug, Default, Clone)]
pub struct ReadModel {
    /// Every request this node holds, archived ones too, without runs.
    infos: HashMap<RequestId, RequestInfo>,
    /// The same, newest first (creation time, then id).
    order: BTreeSet<(Reverse<u64>, RequestId)>,
    /// The runs of every request in `infos`, by state.
    totals: RunCounts,
    metrics: Metrics,
    nodes: Vec<GridNode>,
}

/// What the node redoes at its next publish.
#[derive(Debug, Default)]
pub(super) struct Stale {
    /// Requests changed, archived or restored since the last publish.
    pub requests: HashSet<RequestId>,
    /// Everything, archived requests too: the first publish.
    pub all: bool,
    /// Monotonic ms of the next periodic refresh of what hangs on time.
    pub next_refresh: u64,
}

impl ReadModel {
    /// A page of the requests `owner` may see (all with `None`), newest
    /// first: `limit` of them after skipping `offset`.
    pub fn page(&self, owner: Option<&str>, offset: usize, limit: usize) -> Vec<RequestInfo> {
        self.order
            .iter()
            .filter_map(|(_, id)| self.infos.get(id))
            .filter(|i| owner.is_none_or(|o| i.owner == o))
            .skip(offset)
            .take(limit)
            .cloned()
            .collect()
    }

    /// A request by id prefix, without its runs.
    pub fn request(&self, prefix: &str) -> Result<RequestInfo, NodeError> {
        let id = super::reads::resolve_in(prefix, self.infos.keys())?;
        self.infos
            .get(&id)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("no request {id} on this grid")))
    }

    /// The node's metrics (traffic is the driver's to fill in).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// The grid's nodes, this one first.
    pub fn nodes(&self) -> Vec<GridNode> {
        self.nodes.clone()
    }

    /// Puts (or with `None` removes) one request's entry.
    fn set(&mut self, id: &RequestId, info: Option<RequestInfo>) {
        if let Some(old) = self.infos.remove(id) {
            self.order.remove(&(Reverse(old.created_ms), id.clone()));
            sub_counts(&mut self.totals, &old.counts);
        }
        if let Some(info) = info {
            self.order.insert((Reverse(info.created_ms), id.clone()));
            add_counts(&mut self.totals, &info.counts);
            self.infos.insert(id.clone(), info);
        }
    }
}

fn add_counts(t: &mut RunCounts, c: &RunCounts) {
    t.total += c.total;
    t.queued += c.queued;
    t.claimed += c.claimed;
    t.running += c.running;
    t.succeeded += c.succeeded;
    t.failed += c.failed;
    t.cancelled += c.cancelled;
}

fn sub_counts(t: &mut RunCounts, c: &RunCounts) {
    t.total = t.total.saturating_sub(c.total);
    t.queued = t.queued.saturating_sub(c.queued);
    t.claimed = t.claimed.saturating_sub(c.claimed);
    t.running = t.running.saturating_sub(c.running);
    t.succeeded = t.succeeded.saturating_sub(c.succeeded);
    t.failed = t.failed.saturating_sub(c.failed);
    t.cancelled = t.cancelled.saturating_sub(c.cancelled);
}

impl Node {
    /// Brings `model` up to date (see the module documentation). Call it
    /// after [`Node::end_batch`]; a model only ever published to by this
    /// node reads the same as a fresh one ([`Node::read_model`]).
    pub fn publish_reads(&mut self, now: Now, model: &mut ReadModel) {
        let periodic = self.stale.all || now.mono_ms >= self.stale.next_refresh;
        let mut redo = std::mem::take(&mut self.stale.requests);
        if self.stale.all {
            redo.extend(model.infos.keys().cloned());
            redo.extend(self.archive.keys().cloned());
        }
        if periodic {
            redo.extend(self.requests.keys().cloned());
            self.stale.all = false;
            self.stale.next_refresh = now.mono_ms + super::TICK_MS;
        }
        self.fill(now, model, redo.iter(), periodic);
    }

    /// A model built afresh from the node's state now.
    pub fn read_model(&self, now: Now) -> ReadModel {
        let mut m = ReadModel::default();
        self.fill(
            now,
            &mut m,
            self.requests.keys().chain(self.archive.keys()),
            true,
        );
        m
    }

    /// Redoes the entries of `ids`, the nodes if `nodes`, and the metrics.
    fn fill<'a>(
        &self,
        now: Now,
        model: &mut ReadModel,
        ids: impl Iterator<Item = &'a RequestId>,
        nodes: bool,
    ) {
        for id in ids {
            let info = match self.archive.get(id) {
                Some(a) => Some(a.info.clone()),
                None => self.info(now, id, false),
            };
            model.set(id, info);
        }
        if nodes {
            model.nodes = self.grid_nodes(now);
        }
        model.metrics = Metrics {
            runs: model.totals,
            requests: self.request_count(),
            slots: self.cfg.slots,
            leases: self.running.len() as u32,
            peers: self.repl.connected.len() as u32,
            sync_pending: self.repl.pending() as u32,
            paused: self.takes_no_runs(),
            gpus: self.gpus.len() as u32,
            traffic: Default::default(),
            skipped: self.skipped_count(),
        };
    }

    /// Request `id` reads differently now: redo it at the next publish.
    pub(super) fn read_stale(&mut self, id: &RequestId) {
        self.stale.requests.insert(id.clone());
    }

    /// Something every request's reading may hang on changed (a node's
    /// liveness): redo them all at the next publish.
    pub(super) fn read_stale_all(&mut self) {
        self.stale.next_refresh = 0;
    }
}
