//! Keeping the documents in step with peers.
//!
//! - Every document syncs with every connected peer through Automerge's sync
//!   protocol, one state per (peer, document): on connect, whenever the
//!   document changes here, and in answer to each message received. A lost
//!   message resets that state and the exchange starts again, so nothing
//!   depends on any single message arriving.
//! - A node keeps connections to its sync links only (ring neighbours and a
//!   few long links, from the grid's membership): a change reaches every
//!   node in a few hops, each node forwarding what it merged.
//! - A request arriving from a peer may start as a bare document (no spec
//!   yet): it stays aside until the spec arrives.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::AutoCommit;

use crate::doc::RequestDoc;
use crate::doc::sync::{self, SyncState};
use crate::lease::{LeaseKey, Sightings};
use crate::liveness::{LONG_LINKS, WATCH_SIDE, links_everyone, sync_links};
use crate::run_view::{Abandon, should_abandon};
use crate::schedule::race_backoff_ms;
use crate::wire::{DocKey, NodeStatus, SyncResponse};
use crate::{NodeId, RequestId};

use super::action::Action;
use super::persist::SavedDoc;
use super::running::abandon_state;
use super::{Node, Now, Req};

/// Least time between two sync messages for one document to one peer. The
/// first change after a quiet spell goes at once; under load, the changes
/// made meanwhile travel together in the next message instead of one
/// message (and one merge on the other side, which walks the document's
/// history) each.
pub const SYNC_GAP_MS: u64 = 20;

/// Least time between two sync messages for one document to one peer when
/// nothing in them is urgent (see [`Replication::urgent`]).
pub const QUIET_GAP_MS: u64 = 100;

/// Requests known only in part at once: a peer cannot make this node keep
/// documents without end by naming request ids it never completes.
const MAX_PARTIAL: usize = 1024;

/// Partial documents of requests the grid's index does not name (yet).
const MAX_UNINDEXED: usize = 64;

/// Unreadable requests remembered (beyond, they are refused as partial
/// documents are).
const MAX_UNREADABLE: usize = 10_000;

#[derive(Default)]
pub(super) struct Replication {
    pub(super) connected: BTreeSet<NodeId>,
    states: HashMap<(NodeId, DocKey), SyncState>,
    /// Requests known only in part (their spec has not arrived).
    partial: HashMap<RequestId, AutoCommit>,
    /// Documents that changed here since the last sync round.
    pub(super) changed: BTreeSet<DocKey>,
    /// Documents with an urgent change since the last sync round: a claim
    /// (others must see it before they claim the same run), or the news
    /// that ends a request.
    pub(super) urgent: BTreeSet<DocKey>,
    /// (peer, document) pairs to generate a sync message for, and whether
    /// it is urgent.
    due: BTreeMap<(NodeId, DocKey), bool>,
    /// When the last sync message of each (peer, document) left (mono ms).
    sent_at: HashMap<(NodeId, DocKey), u64>,
    /// The earliest time a deferred message may leave.
    pub(super) next_send: Option<u64>,
    /// Last ping or pong of each neighbour: its status and when (mono ms).
    pub(super) live: HashMap<NodeId, (NodeStatus, u64)>,
    /// The sync links last handed to the driver.
    links: BTreeSet<NodeId>,
    /// How many times this start was announced on gossip.
    pub(super) announced: u32,
    /// Where this node listens.
    pub(super) listen: Vec<String>,
    /// Requests whose document cannot be read here (a spec that fails its
    /// checks): never asked for again, shown as skipped.
    pub(super) unreadable: BTreeMap<RequestId, String>,
}

impl Replication {
    /// Replication state at start, with the requests found unreadable in
    /// the store.
    pub(super) fn with_unreadable(unreadable: BTreeMap<RequestId, String>) -> Replication {
        Replication {
            unreadable,
            ..Default::default()
        }
    }

    /// Records that request `id` cannot be read here (at most
    /// [`MAX_UNREADABLE`] are remembered).
    fn mark_unreadable(&mut self, id: &RequestId, why: String) {
        if self.unreadable.len() < MAX_UNREADABLE {
            self.unreadable.insert(id.clone(), why);
        }
    }

    /// The partial document of request `id`, made when first named, unless
    /// the request is unreadable here or too many are partial already.
    fn partial_for(&mut self, id: &RequestId, indexed: bool) -> Result<&mut AutoCommit, String> {
        if let Some(why) = self.unreadable.get(id) {
            return Err(format!("request {id} cannot be read here: {why}"));
        }
        // A request's document may arrive before the grid's index names
        // it (sync order is free), but only a few such strangers are kept.
        if !indexed && !self.partial.contains_key(id) && self.partial.len() >= MAX_UNINDEXED {
            return Err(format!(
                "request {id} is not in the grid's index here yet: send the grid document first"
            ));
        }
        if !self.partial.contains_key(id) && self.partial.len() >= MAX_PARTIAL {
            return Err(format!(
                "{MAX_PARTIAL} requests are already arriving here: try later"
            ));
        }
        Ok(self.partial.entry(id.clone()).or_default())
    }

    /// Drops every per-peer state of a document (it was archived).
    pub(super) fn forget(&mut self, doc: &DocKey) {
        self.states.retain(|(_, d), _| d != doc);
        self.sent_at.retain(|(_, d), _| d != doc);
        self.due.retain(|(_, d), _| d != doc);
        self.changed.remove(doc);
        self.urgent.remove(doc);
    }

    /// (peer, document) pairs with changes not yet sent, and documents
    /// changed since the last round.
    pub(super) fn pending(&self) -> usize {
        self.due.len() + self.changed.len()
    }

    /// The last status heard from each node this one exchanges heartbeats
    /// with.
    pub(super) fn live_statuses(&self) -> impl Iterator<Item = (&NodeId, &NodeStatus)> {
        self.live.iter().map(|(n, (s, _))| (n, s))
    }
}

impl Node {
    /// A peer is connected: every document is offered to it.
    pub fn connected(&mut self, _now: Now, peer: NodeId) {
        self.rescan = true;
        self.read_stale_all();
        // Messages in flight on the old connection may be lost.
        for ((p, _), st) in self.repl.states.iter_mut() {
            if *p == peer {
                *st = sync::reset(st);
            }
        }
        self.repl.sent_at.retain(|(p, _), _| *p != peer);
        for d in self.all_doc_keys() {
            self.repl.due.insert((peer.clone(), d), true);
        }
        // Back after a partition: tell it at once that it was declared down.
        if self.liveness.is_down(&peer) {
            self.ping(&peer);
        }
        self.repl.connected.insert(peer);
    }

    pub fn disconnected(&mut self, _now: Now, peer: &NodeId) {
        self.rescan = true;
        self.read_stale_all();
        self.repl.connected.remove(peer);
    }

    /// The addresses this node listens on (recorded in the grid document,
    /// so a restarted peer can dial it).
    pub fn listening(&mut self, addrs: Vec<String>) {
        self.repl.listen = addrs.clone();
        match self.grid.node(&self.cfg.node) {
            Ok(Some(mut rec)) if rec.addrs != addrs => {
                rec.addrs = addrs;
                if self.grid.put_node(&rec).is_ok() {
                    self.grid_dirty = true;
                }
            }
            _ => {}
        }
    }

    /// Peers connected now.
    pub fn peers(&self) -> &BTreeSet<NodeId> {
        &self.repl.connected
    }

    /// A sync message to a peer was lost: the exchange starts again.
    pub fn sync_failed(&mut self, peer: NodeId, doc: DocKey) {
        if let Some(st) = self.repl.states.get_mut(&(peer.clone(), doc.clone())) {
            *st = sync::reset(st);
        }
        if self.repl.connected.contains(&peer) {
            self.repl.due.insert((peer, doc), true);
        }
    }

    fn all_doc_keys(&self) -> Vec<DocKey> {
        std::iter::once(DocKey::Grid)
            .chain(self.requests.keys().cloned().map(DocKey::Request))
            .chain(self.repl.partial.keys().cloned().map(DocKey::Request))
            .collect()
    }

    /// A peer's sync message: merged, and answered in the next round.
    pub fn receive_sync(
        &mut self,
        now: Now,
        from: &NodeId,
        doc: DocKey,
        msg: &[u8],
    ) -> SyncResponse {
        let key = (from.clone(), doc.clone());
        let mut state = self.repl.states.remove(&key).unwrap_or_default();
        let result = match &doc {
            DocKey::Grid => sync::receive(self.grid.doc_mut(), &mut state, msg).map(|changed| {
                if changed {
                    self.grid_merged();
                }
            }),
            DocKey::Request(id) => match self.requests.get_mut(id) {
                Some(q) => q.doc.receive_sync(&mut state, msg).map(|changed| {
                    if changed {
                        self.request_merged(now, id);
                    }
                }),
                None if self.archive.contains_key(id) => {
                    return SyncResponse::Refused(format!(
                        "request {id} is archived here: restore it first"
                    ));
                }
                None => {
                    // Parsing the index only for a request not yet arriving here.
                    let indexed = self.repl.partial.contains_key(id) || self.indexed(id);
                    let part = match self.repl.partial_for(id, indexed) {
                        Ok(p) => p,
                        Err(e) => return SyncResponse::Refused(e),
                    };
                    sync::receive(part, &mut state, msg).map(|changed| {
                        if changed {
                            self.try_complete(now, id);
                        }
                    })
                }
            },
        };
        self.repl.states.insert(key.clone(), state);
        match result {
            Ok(()) => {
                // Answer: the peer may need our changes, or an acknowledgement.
                self.repl.due.entry(key).or_insert(false);
                SyncResponse::Ack
            }
            Err(e) => {
                tracing::warn!("refused a sync message for {doc} from {from}: {e}");
                SyncResponse::Refused(e.to_string())
            }
        }
    }

    /// A peer pushed a whole document: merge it (the driver then fetches
    /// the blobs and answers once both are on disk).
    pub fn receive_push(
        &mut self,
        now: Now,
        from: &NodeId,
        doc: &DocKey,
        data: &[u8],
    ) -> Result<(), String> {
        let merged = match AutoCommit::load(data) {
            Err(e) => Err(format!("the pushed document cannot be read: {e}")),
            Ok(mut incoming) => match doc {
                DocKey::Grid => self
                    .grid
                    .doc_mut()
                    .merge(&mut incoming)
                    .map(|_| self.grid_merged())
                    .map_err(|e| e.to_string()),
                DocKey::Request(id) if self.archive.contains_key(id) => {
                    Err(format!("request {id} is archived here: restore it first"))
                }
                DocKey::Request(id) => {
                    let r: Result<(), String> = match self.requests.get_mut(id) {
                        Some(q) => {
                            q.doc.track_merge();
                            q.doc.doc_mut().merge(&mut incoming)
                        }
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                        // A push is whole: it completes or is found
                        // unreadable at once, never stays partial.
                        None => self.repl.partial_for(id, true).and_then(|part| {
                            part.merge(&mut incoming)
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        }),
                    };
                    r.and_then(|()| {
                        if self.requests.contains_key(id) {
                            self.request_merged(now, id);
                        } else {
                            self.try_complete(now, id);
                        }
                        if self.requests.contains_key(id) {
                            Ok(())
                        } else {
                            Err("the pushed request has no valid spec".to_string())
                        }
                    })
                }
            },
        };
        if let Err(why) = &merged {
            tracing::warn!("refused a pushed {doc} from {from}: {why}");
        }
        merged
    }

    /// Whether the grid's index names request `id` (partial documents are
    /// kept only for those).
    fn indexed(&self, id: &RequestId) -> bool {
        self.grid
            .requests()
            .unwrap_or_default()
            .iter()
            .any(|r| &r.id == id)
    }

    /// A bare request document got changes: does it hold a spec now?
    fn try_complete(&mut self, now: Now, id: &RequestId) {
        let Some(part) = self.repl.partial.get(id) else {
            return;
        };
        use automerge::ReadDoc;
        if part.get(automerge::ROOT, "spec").ok().flatten().is_none() {
            return;
        }
        let Some(mut doc) = self.repl.partial.remove(id) else {
            return;
        };
        doc.set_actor(self.actor());
        match RequestDoc::from_automerge(doc) {
            Ok(doc) if doc.id() == id => {
                self.requests
                    .insert(id.clone(), Req::new(doc, SavedDoc::default(), true, now));
                // New here: passed on at once, so every node starts on it.
                self.repl.urgent.insert(DocKey::Request(id.clone()));
                tracing::info!(request = %id, "request received from the grid");
                self.request_merged(now, id);
            }
            Ok(_) => self
                .repl
                .mark_unreadable(id, "it holds another request's spec".to_string()),
            Err(e) => self.repl.mark_unreadable(id, e.to_string()),
        }
        self.log_skipped();
    }

    /// The grid document got changes from a peer.
    fn grid_merged(&mut self) {
        self.rescan = true;
        // Checked at every merge: a value the grid removes (or that a
        // rolled-back node stops writing) frees the node again.
        let now_too_new = match crate::doc::check_readable(self.grid.doc_mut(), "grid's document") {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        };
        if now_too_new != self.grid_too_new {
            match &now_too_new {
                Some(e) => tracing::error!("this node takes no new runs: {e}"),
                None => tracing::info!("the grid's document is readable again: taking runs"),
            }
            self.grid_too_new = now_too_new;
        }
        // At once, not at the next heartbeat: a request submitted just after
        // nodes joined is dealt out among all of them.
        self.refresh_members();
        self.grid_dirty = true;
        self.log_skipped();
        self.refresh_caps();
        self.dial_grid_nodes();
        // Requests the index names that this node has not seen: ask for them.
        for r in self.grid.requests().unwrap_or_default() {
            if !self.requests.contains_key(&r.id)
                && !self.archive.contains_key(&r.id)
                && !self.repl.partial.contains_key(&r.id)
                && !self.repl.unreadable.contains_key(&r.id)
                && self.repl.partial.len() < MAX_PARTIAL
            {
                self.repl.partial.insert(r.id.clone(), AutoCommit::new());
                for p in &self.repl.connected {
                    self.repl
                        .due
                        .insert((p.clone(), DocKey::Request(r.id.clone())), true);
                }
            }
        }
    }

    /// Nodes' last known addresses from the grid document: dialled even
    /// without mDNS, so a restarted node finds the grid by itself.
    pub(super) fn dial_grid_nodes(&mut self) {
        for n in self.grid.nodes().unwrap_or_default() {
            if n.id == self.cfg.node || n.addrs.is_empty() {
                continue;
            }
            self.actions.push_back(Action::Dial {
                node: n.id,
                addrs: n.addrs,
            });
        }
        self.update_links();
    }

    /// The grid's members, in id order.
    pub(super) fn members(&self) -> Vec<NodeId> {
        let mut m: Vec<NodeId> = self
            .grid
            .nodes()
            .unwrap_or_default()
            .into_iter()
            .map(|n| n.id)
            .collect();
        m.sort();
        m.dedup();
        m
    }

    /// Reads the grid's members again (after the grid document changed).
    pub(super) fn refresh_members(&mut self) {
        let members = self.members();
        self.members_n = members.len().max(1);
        self.members_list = members;
    }

    /// Of `members`, those not known down.
    pub(super) fn live(&self, members: &[NodeId]) -> Vec<NodeId> {
        let mut m = members.to_vec();
        m.retain(|id| id == &self.cfg.node || !self.liveness.is_down(id));
        m
    }

    /// Tells the driver which peers to keep connected, when that changed.
    pub(super) fn update_links(&mut self) {
        let live = self.live(&self.members());
        self.set_links(&live);
    }

    pub(super) fn set_links(&mut self, live: &[NodeId]) {
        let links: BTreeSet<NodeId> = sync_links(&self.cfg.node, live, WATCH_SIDE, LONG_LINKS)
            .into_iter()
            .collect();
        if links != self.repl.links {
            self.actions.push_back(Action::Links(links.clone()));
            self.repl.links = links;
        }
    }

    /// A request document got changes from a peer: refresh the view, stop
    /// own attempts that lost.
    fn request_merged(&mut self, now: Now, id: &RequestId) {
        self.rescan = true;
        let Some(q) = self.requests.get_mut(id) else {
            return;
        };
        let before = q.doc.skipped().len();
        if let Err(e) = q.doc.rematerialize() {
            tracing::error!("request {id} after a merge: {e}");
        }
        // Attempts are read in key order: the new skips are not always
        // the last ones, so each is logged once by name.
        if q.doc.skipped().len() > before {
            for (entry, why) in q.doc.skipped() {
                let key = format!("req/{id}/{entry}");
                if self.logged_skips.len() < super::LOGGED_SKIPS && self.logged_skips.insert(key) {
                    tracing::warn!("request {id}: skipped a malformed entry, {entry}: {why}");
                }
            }
        }
        q.dirty = true;
        // Others' new claims are forwarded at once where some of this
        // node's peers may not hear them from the claimer itself: they must
        // see them before they claim the same runs.
        if observe_claims(&mut self.sightings, &self.cfg.node, &q.doc, now.mono_ms)
            && !links_everyone(self.members_list.len())
        {
            self.repl.urgent.insert(DocKey::Request(id.clone()));
        }
        self.abandon_lost(now, id);
        if self.requests.get(id).is_some_and(|q| q.doc.is_finished()) {
            self.request_finished(id);
        }
    }

    /// Stops this node's attempts of the request that must not go on:
    /// cancelled, beaten in a claim race, done elsewhere, or reassigned.
    pub(super) fn abandon_lost(&mut self, now: Now, id: &RequestId) {
        let Some(q) = self.requests.get(id) else {
            return;
        };
        let mut lost = false;
        let mut stops = Vec::new();
        let now_ms = now.mono_ms;
        let gang = q
            .doc
            .spec()
            .parallel
            .then(|| q.doc.gang(|a| self.is_live(id, a, now_ms)));
        for (k, r) in self.running.iter() {
            if &k.0 != id || r.stopping.is_some() {
                continue;
            }
            let attempts = q.doc.attempts_of(k.1);
            let why = match &gang {
                Some(g) => g.abandon(id, &r.attempt, attempts),
                None => should_abandon(id, &r.attempt, attempts, q.doc.is_cancelled()),
            };
            if let Some(why) = why {
                tracing::info!(request = %id, rank = k.1, epoch = k.2, "stopping: {why:?}");
                lost |= why == Abandon::LostRace;
                stops.push((k.clone(), abandon_state(why)));
            }
        }
        for (k, why) in stops {
            self.stop_attempt(now, &k, why);
        }
        if lost {
            // Others chase the same runs: pause before claiming again.
            self.races_lost += 1;
            self.claims_paused_until =
                now.mono_ms + race_backoff_ms(&self.cfg.node, self.races_lost, now.mono_ms);
        }
    }

    /// Sends every sync message that is due, but at most one per
    /// [`SYNC_GAP_MS`] for a (peer, document) while the node runs (a
    /// stopping node sends at once).
    pub(super) fn sync_out(&mut self, now: Now) {
        self.repl.next_send = None;
        if self.repl.connected.is_empty() {
            // Alone: nobody to tell; peers sync everything when they connect.
            self.repl.changed.clear();
            self.repl.urgent.clear();
            self.repl.due.clear();
            return;
        }
        let urgent = std::mem::take(&mut self.repl.urgent);
        for d in std::mem::take(&mut self.repl.changed) {
            let u = urgent.contains(&d);
            for p in &self.repl.connected {
                *self.repl.due.entry((p.clone(), d.clone())).or_default() |= u;
            }
        }
        let mut deferred = BTreeMap::new();
        for ((peer, doc), urgent) in std::mem::take(&mut self.repl.due) {
            if !self.repl.connected.contains(&peer) {
                continue;
            }
            let gap = match (self.stopping.is_some(), urgent) {
                (true, _) => 0,
                (false, true) => SYNC_GAP_MS,
                (false, false) => QUIET_GAP_MS,
            };
            let key = (peer, doc);
            if let Some(&t) = self.repl.sent_at.get(&key)
                && now.mono_ms < t + gap
            {
                let at = t + gap;
                self.repl.next_send = Some(self.repl.next_send.map_or(at, |n| n.min(at)));
                deferred.insert(key, urgent);
                continue;
            }
            let (peer, doc) = key;
            let state = self
                .repl
                .states
                .entry((peer.clone(), doc.clone()))
                .or_default();
            let msg = match &doc {
                DocKey::Grid => sync::generate(self.grid.doc_mut(), state),
                DocKey::Request(id) => match self.requests.get_mut(id) {
                    Some(q) => sync::generate(q.doc.doc_mut(), state),
                    None => match self.repl.partial.get_mut(id) {
                        Some(d) => sync::generate(d, state),
                        None => None,
                    },
                },
            };
            if let Some(msg) = msg {
                self.repl
                    .sent_at
                    .insert((peer.clone(), doc.clone()), now.mono_ms);
                self.actions.push_back(Action::Sync { to: peer, doc, msg });
            }
        }
        self.repl.due = deferred;
    }
}

/// Records when each claim of another node was first seen; says whether
/// one was new.
pub(super) fn observe_claims(
    sightings: &mut Sightings,
    me: &NodeId,
    doc: &RequestDoc,
    now: u64,
) -> bool {
    let mut new = false;
    for rank in doc.unfinished_ranks() {
        for a in doc.attempts_of(rank) {
            if &a.node != me && !a.state.is_terminal() {
                new |= sightings.observe(
                    LeaseKey {
                        request: doc.id().clone(),
                        rank: a.rank,
                        epoch: a.epoch,
                        node: a.node.clone(),
                    },
                    now,
                );
            }
        }
    }
    new
}
