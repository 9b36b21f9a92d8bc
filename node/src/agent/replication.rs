//! Keeping the documents in step with peers, and leases alive across nodes.
//!
//! - Every document syncs with every connected peer through Automerge's sync
//!   protocol, one state per (peer, document): on connect, whenever the
//!   document changes here, and in answer to each message received. A lost
//!   message resets that state and the exchange starts again, so nothing
//!   depends on any single message arriving.
//! - A node keeps connections to its sync links only (ring neighbours and a
//!   few long links, from the grid's membership): a change reaches every
//!   node in a few hops, each node forwarding what it merged.
//! - Liveness (`pesc_protocol::liveness`): every heartbeat period the node
//!   pings its ring neighbours; the pong carries their status. A neighbour
//!   silent for the lease TTL is declared down on gossip; a lease holds while
//!   its holder is not known down.
//! - A request arriving from a peer may start as a bare document (no spec
//!   yet): it stays aside until the spec arrives.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use automerge::AutoCommit;
use pesc_protocol::api::{GridNode, RequestInfo};
use pesc_protocol::doc::sync::{self, SyncState};
use pesc_protocol::doc::{RequestDoc, actor_id};
use pesc_protocol::liveness::{
    LONG_LINKS, Notice, UP_ANNOUNCEMENTS, WATCH_SIDE, ring_neighbours, sync_links,
};
use pesc_protocol::wire::{Beat, DocKey, Gossip, NodeStatus, SyncRequest, SyncResponse};
use pesc_protocol::{NodeId, RequestId};

use super::{Agent, ApiResult, Reply, Req, abandon_state, should_abandon};
use crate::net::{NetCmd, NetEvent, peer_of};
use crate::store::SavedDoc;
use pesc_protocol::run_view::Abandon;
use pesc_protocol::schedule::race_backoff_ms;

/// How many peers a submit asks to hold a copy.
const PUSH_FANOUT: usize = 3;

/// How long a submit waits for a peer to hold a copy before answering anyway.
const PUSH_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Default)]
pub struct Replication {
    pub connected: BTreeSet<NodeId>,
    states: HashMap<(NodeId, DocKey), SyncState>,
    /// Requests known only in part (their spec has not arrived).
    partial: HashMap<RequestId, AutoCommit>,
    /// Documents that changed here since the last sync round.
    pub changed: BTreeSet<DocKey>,
    /// (peer, document) pairs to generate a sync message for.
    due: BTreeSet<(NodeId, DocKey)>,
    /// Last ping or pong of each neighbour: its status and when (mono ms).
    live: HashMap<NodeId, (NodeStatus, u64)>,
    /// The sync links last handed to the network task.
    links: BTreeSet<NodeId>,
    /// How many times this start was announced on gossip.
    announced: u32,
    /// Where this node listens.
    pub listen: Vec<String>,
    /// Requests whose document cannot be read here (a spec that fails its
    /// checks): never asked for again, shown as skipped.
    pub unreadable: BTreeMap<RequestId, String>,
}

/// Requests known only in part at once: a peer cannot make this node keep
/// documents without end by naming request ids it never completes.
const MAX_PARTIAL: usize = 1024;

/// Partial documents of requests the grid's index does not name (yet).
const MAX_UNINDEXED: usize = 64;

/// Unreadable requests remembered (beyond, they are refused as partial
/// documents are).
const MAX_UNREADABLE: usize = 10_000;

impl Replication {
    /// Records that request `id` cannot be read here (at most
    /// [`MAX_UNREADABLE`] are remembered).
    fn mark_unreadable(&mut self, id: &RequestId, why: String) {
        if self.unreadable.len() < MAX_UNREADABLE {
            self.unreadable.insert(id.clone(), why);
        }
    }

    /// Replication state at start, with the requests found unreadable in
    /// the store.
    pub fn with_unreadable(unreadable: BTreeMap<RequestId, String>) -> Replication {
        Replication {
            unreadable,
            ..Default::default()
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

    /// (peer, document) pairs with changes not yet sent, and documents
    /// changed since the last round.
    pub fn pending(&self) -> usize {
        self.due.len() + self.changed.len()
    }

    /// The last status heard from each node this one exchanges heartbeats
    /// with.
    pub fn live_statuses(&self) -> impl Iterator<Item = (&NodeId, &NodeStatus)> {
        self.live.iter().map(|(n, (s, _))| (n, s))
    }
}

impl Agent {
    pub(super) fn net_event(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Connected(peer) => {
                // Messages in flight on the old connection may be lost.
                for ((p, _), st) in self.repl.states.iter_mut() {
                    if *p == peer {
                        *st = sync::reset(st);
                    }
                }
                for d in self.all_doc_keys() {
                    self.repl.due.insert((peer.clone(), d));
                }
                // Back after a partition: tell it at once that it was declared down.
                if self.liveness.is_down(&peer) {
                    self.ping(&peer);
                }
                self.repl.connected.insert(peer);
            }
            NetEvent::Disconnected(peer) => {
                self.repl.connected.remove(&peer);
            }
            NetEvent::Listening(addrs) => {
                self.repl.listen = addrs.clone();
                self.update_own_record(addrs);
            }
            NetEvent::Sync { from, req, channel } => {
                let resp = match req {
                    SyncRequest::Sync { doc, msg } => self.receive_sync(&from, doc, &msg),
                    SyncRequest::Push { doc, data, blobs } => {
                        return self.receive_push(from, doc, data, blobs, channel);
                    }
                    SyncRequest::Hold { blobs } => {
                        return self.hold(from, blobs, channel);
                    }
                    SyncRequest::Ping(beat) => {
                        if self.beat_received(&from, beat) {
                            SyncResponse::Pong(self.own_beat(&from))
                        } else {
                            SyncResponse::Refused("a ping must come from its node".into())
                        }
                    }
                };
                self.net.send(NetCmd::RespondSync { channel, resp });
            }
            NetEvent::SyncFailed { peer, doc } => {
                if let Some(st) = self.repl.states.get_mut(&(peer.clone(), doc.clone())) {
                    *st = sync::reset(st);
                }
                if self.repl.connected.contains(&peer) {
                    self.repl.due.insert((peer, doc));
                }
            }
            NetEvent::Gossip { from, msg } => self.gossip(from, msg),
            NetEvent::Pong { from, beat } => {
                self.beat_received(&from, beat);
            }
        }
    }

    fn all_doc_keys(&self) -> Vec<DocKey> {
        std::iter::once(DocKey::Grid)
            .chain(self.requests.keys().cloned().map(DocKey::Request))
            .chain(self.repl.partial.keys().cloned().map(DocKey::Request))
            .collect()
    }

    fn update_own_record(&mut self, addrs: Vec<String>) {
        match self.grid.node(&self.s.node) {
            Ok(Some(mut rec)) if rec.addrs != addrs => {
                rec.addrs = addrs;
                if self.grid.put_node(&rec).is_ok() {
                    self.grid_dirty = true;
                }
            }
            _ => {}
        }
    }

    fn receive_sync(&mut self, from: &NodeId, doc: DocKey, msg: &[u8]) -> SyncResponse {
        let key = (from.clone(), doc.clone());
        let mut state = self.repl.states.remove(&key).unwrap_or_default();
        let result = match &doc {
            DocKey::Grid => sync::receive(self.grid.doc_mut(), &mut state, msg).map(|changed| {
                if changed {
                    self.grid_merged();
                }
            }),
            DocKey::Request(id) => match self.requests.get_mut(id) {
                Some(q) => sync::receive(q.doc.doc_mut(), &mut state, msg).map(|changed| {
                    if changed {
                        self.request_merged(id);
                    }
                }),
                None => {
                    // Parsing the index only for a request not yet arriving here.
                    let indexed = self.repl.partial.contains_key(id) || self.indexed(id);
                    let part = match self.repl.partial_for(id, indexed) {
                        Ok(p) => p,
                        Err(e) => return SyncResponse::Refused(e),
                    };
                    sync::receive(part, &mut state, msg).map(|changed| {
                        if changed {
                            self.try_complete(id);
                        }
                    })
                }
            },
        };
        self.repl.states.insert(key.clone(), state);
        match result {
            Ok(()) => {
                // Answer: the peer may need our changes, or an acknowledgement.
                self.repl.due.insert(key);
                SyncResponse::Ack
            }
            Err(e) => {
                tracing::warn!("refused a sync message for {doc} from {from}: {e}");
                SyncResponse::Refused(e.to_string())
            }
        }
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
    fn try_complete(&mut self, id: &RequestId) {
        let Some(part) = self.repl.partial.get(id) else {
            return;
        };
        use automerge::ReadDoc;
        if part.get(automerge::ROOT, "spec").ok().flatten().is_none() {
            return;
        }
        let mut doc = self.repl.partial.remove(id).expect("present");
        doc.set_actor(actor_id(&self.s.node, rand::random()));
        match RequestDoc::from_automerge(doc) {
            Ok(doc) if doc.id() == id => {
                self.requests.insert(
                    id.clone(),
                    Req {
                        doc,
                        version: 0,
                        dirty: true,
                        saved: SavedDoc::default(),
                    },
                );
                tracing::info!(request = %id, "request received from the grid");
                self.request_merged(id);
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
        self.grid_dirty = true;
        self.log_skipped();
        self.refresh_caps();
        self.dial_grid_nodes();
        // Requests the index names that this node has not seen: ask for them.
        for r in self.grid.requests().unwrap_or_default() {
            if !self.requests.contains_key(&r.id)
                && !self.repl.partial.contains_key(&r.id)
                && !self.repl.unreadable.contains_key(&r.id)
                && self.repl.partial.len() < MAX_PARTIAL
            {
                self.repl.partial.insert(r.id.clone(), AutoCommit::new());
                for p in &self.repl.connected {
                    self.repl
                        .due
                        .insert((p.clone(), DocKey::Request(r.id.clone())));
                }
            }
        }
    }

    /// Nodes' last known addresses from the grid document: dialled even
    /// without mDNS, so a restarted node finds the grid by itself.
    pub(super) fn dial_grid_nodes(&mut self) {
        for n in self.grid.nodes().unwrap_or_default() {
            if n.id == self.s.node || n.addrs.is_empty() {
                continue;
            }
            if let Some(peer) = peer_of(&n.id) {
                let addrs = n.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                self.net.send(NetCmd::AddPeer { peer, addrs });
            }
        }
        self.update_links();
    }

    /// The grid's members, in id order.
    fn members(&self) -> Vec<NodeId> {
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

    /// Of `members`, those not known down.
    fn live(&self, members: &[NodeId]) -> Vec<NodeId> {
        let mut m = members.to_vec();
        m.retain(|id| id == &self.s.node || !self.liveness.is_down(id));
        m
    }

    /// Tells the network task which peers to keep connected, when that changed.
    fn update_links(&mut self) {
        let live = self.live(&self.members());
        self.set_links(&live);
    }

    fn set_links(&mut self, live: &[NodeId]) {
        let links: BTreeSet<NodeId> = sync_links(&self.s.node, live, WATCH_SIDE, LONG_LINKS)
            .into_iter()
            .collect();
        if links != self.repl.links {
            self.net
                .send(NetCmd::Links(links.iter().filter_map(peer_of).collect()));
            self.repl.links = links;
        }
    }

    /// A request document got changes from a peer: refresh the view, stop
    /// own attempts that lost.
    pub(super) fn request_merged(&mut self, id: &RequestId) {
        let now = self.mono();
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
                if self.logged_skips.len() < 10_000 && self.logged_skips.insert(key) {
                    tracing::warn!("request {id}: skipped a malformed entry, {entry}: {why}");
                }
            }
        }
        q.dirty = true;
        super::observe_claims(&mut self.sightings, &self.s.node, &q.doc, now);
        self.abandon_lost(id);
        if self.requests.get(id).is_some_and(|q| q.doc.is_finished()) {
            self.request_finished(id);
        }
    }

    /// Stops this node's attempts of the request that must not go on:
    /// cancelled, beaten in a claim race, done elsewhere, or reassigned.
    pub(super) fn abandon_lost(&mut self, id: &RequestId) {
        let Some(q) = self.requests.get(id) else {
            return;
        };
        let mut lost = false;
        for (k, r) in self.running.iter_mut() {
            if &k.0 != id || r.stopping.is_some() {
                continue;
            }
            let attempts = q.doc.attempts_of(k.1);
            if let Some(why) = should_abandon(id, &r.attempt, attempts, q.doc.is_cancelled()) {
                tracing::info!(request = %id, rank = k.1, epoch = k.2, "stopping: {why:?}");
                lost |= why == Abandon::LostRace;
                r.stopping = Some(abandon_state(why));
                let _ = r.stop.send(true);
            }
        }
        if lost {
            // Others chase the same runs: pause before claiming again.
            self.races_lost += 1;
            let now = self.mono();
            self.claims_paused_until = now + race_backoff_ms(&self.s.node, self.races_lost, now);
        }
    }

    /// A peer pushed a whole document and the blobs it needs: merge it,
    /// fetch the blobs, and answer once both are on disk.
    fn receive_push(
        &mut self,
        from: NodeId,
        doc: DocKey,
        data: Vec<u8>,
        blobs: Vec<pesc_protocol::BlobHash>,
        channel: libp2p::request_response::ResponseChannel<SyncResponse>,
    ) {
        let merged = match AutoCommit::load(&data) {
            Err(e) => Err(format!("the pushed document cannot be read: {e}")),
            Ok(mut incoming) => match &doc {
                DocKey::Grid => self
                    .grid
                    .doc_mut()
                    .merge(&mut incoming)
                    .map(|_| self.grid_merged())
                    .map_err(|e| e.to_string()),
                DocKey::Request(id) => {
                    let r: Result<(), String> = match self.requests.get_mut(id) {
                        Some(q) => q
                            .doc
                            .doc_mut()
                            .merge(&mut incoming)
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
                    match r {
                        Ok(()) => {
                            if self.requests.contains_key(id) {
                                self.request_merged(id);
                            } else {
                                self.try_complete(id);
                            }
                            if self.requests.contains_key(id) {
                                Ok(())
                            } else {
                                Err("the pushed request has no valid spec".to_string())
                            }
                        }
                        Err(e) => Err(e),
                    }
                }
            },
        };
        if let Err(why) = merged {
            tracing::warn!("refused a pushed {doc} from {from}: {why}");
            self.net.send(NetCmd::RespondSync {
                channel,
                resp: SyncResponse::Refused(why),
            });
            return;
        }
        let durable = self.durable();
        let runner = self.runner.clone();
        let net = self.net.clone();
        tokio::spawn(async move {
            let mut resp = fetch_all(&runner, &blobs, from).await;
            match durable.await {
                Ok(true) => {}
                Ok(false) => {
                    resp = SyncResponse::Refused("this node could not write it to disk".into())
                }
                Err(_) => resp = SyncResponse::Refused("the node is shutting down".into()),
            }
            net.send(NetCmd::RespondSync { channel, resp });
        });
    }

    /// Fetches blobs a peer asks this node to keep a copy of, then says so.
    fn hold(
        &mut self,
        from: NodeId,
        blobs: Vec<pesc_protocol::BlobHash>,
        channel: libp2p::request_response::ResponseChannel<SyncResponse>,
    ) {
        let runner = self.runner.clone();
        let net = self.net.clone();
        tokio::spawn(async move {
            let resp = fetch_all(&runner, &blobs, from).await;
            net.send(NetCmd::RespondSync { channel, resp });
        });
    }

    /// Answers a submit once the request is durable here and held by one
    /// connected peer (or at once on a lone node, or after a timeout).
    pub(super) fn replicate_then_reply(
        &mut self,
        info: RequestInfo,
        reply: Reply<ApiResult<RequestInfo>>,
    ) {
        // A few peers, picked at random, are asked at once; the first to hold it is enough.
        let mut peers: Vec<_> = self.repl.connected.iter().filter_map(peer_of).collect();
        rand::seq::SliceRandom::shuffle(peers.as_mut_slice(), &mut rand::rng());
        peers.truncate(PUSH_FANOUT);
        let push = self
            .requests
            .get_mut(&info.id)
            .map(|q| (q.doc.save(), q.doc.spec().process.code));
        let net = self.net.clone();
        let id = info.id.clone();
        let durable = self.durable();
        tokio::spawn(async move {
            // Not on disk: the submit fails (the user submits again), it is
            // never answered as kept.
            if !durable.await.unwrap_or(false) {
                let _ = reply.send(Err(pesc_webui::ApiFailure::internal(
                    "the request could not be written to this node's disk: submit it again (and see the node's log)",
                )));
                return;
            }
            let mut info = info;
            info.held_by_peer = Some(false);
            if let (Some((data, code)), false) = (push, peers.is_empty()) {
                let mut asks = futures_util::stream::FuturesUnordered::new();
                for p in peers {
                    let net = net.clone();
                    let req = SyncRequest::Push {
                        doc: DocKey::Request(id.clone()),
                        data: data.clone(),
                        blobs: vec![code],
                    };
                    asks.push(async move { (p, net.ask_sync(p, req).await) });
                }
                let first_holder = async {
                    use futures_util::StreamExt;
                    while let Some((p, r)) = asks.next().await {
                        match r {
                            Ok(SyncResponse::Held) => return Some(p),
                            other => tracing::debug!("push of {id} to {p}: {other:?}"),
                        }
                    }
                    None
                };
                match tokio::time::timeout(PUSH_TIMEOUT, first_holder).await {
                    Ok(Some(p)) => {
                        tracing::debug!(request = %id, "held by {p} too");
                        info.held_by_peer = Some(true);
                    }
                    _ => tracing::warn!(
                        request = %id,
                        "no other node confirmed a copy of the request: it depends on this node until they sync"
                    ),
                }
            }
            let _ = reply.send(Ok(info));
        });
    }

    /// Sends every sync message that is due.
    pub(super) fn sync_out(&mut self) {
        if self.repl.connected.is_empty() {
            // Alone: nobody to tell; peers sync everything when they connect.
            self.repl.changed.clear();
            self.repl.due.clear();
            return;
        }
        for d in std::mem::take(&mut self.repl.changed) {
            for p in &self.repl.connected {
                self.repl.due.insert((p.clone(), d.clone()));
            }
        }
        for (peer, doc) in std::mem::take(&mut self.repl.due) {
            if !self.repl.connected.contains(&peer) {
                continue;
            }
            let Some(p) = peer_of(&peer) else {
                continue;
            };
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
                self.net.send(NetCmd::Sync {
                    peer: p,
                    req: SyncRequest::Sync { doc, msg },
                    reply: None,
                });
            }
        }
    }

    /// Every heartbeat period: judge the ring neighbours, ping them.
    pub(super) fn heartbeat(&mut self) {
        self.evict_if_due();
        self.apply_policy();
        self.read_gpus();
        let now = self.mono();
        let members = self.members();
        self.members_n = members.len().max(1);
        let live = self.live(&members);
        self.live_n = live.len().max(1);
        self.runner
            .live_nodes
            .store(self.live_n, std::sync::atomic::Ordering::Relaxed);
        let neighbours = ring_neighbours(&self.s.node, &live, WATCH_SIDE);
        for n in self.liveness.tick(&neighbours, now) {
            if let Notice::Down { node, .. } = &n {
                tracing::warn!(
                    "node {node} answered nothing for {} ms: declared down",
                    self.liveness.ttl_ms()
                );
            }
            self.publish(n);
        }
        // Neighbours in the whole ring that are held down are pinged too: if
        // one is alive (a partition healed), our ping tells it to refute.
        let down_near: Vec<NodeId> = ring_neighbours(&self.s.node, &members, WATCH_SIDE)
            .into_iter()
            .filter(|n| self.liveness.is_down(n))
            .collect();
        for p in neighbours.iter().chain(&down_near) {
            self.ping(p);
        }
        // Nodes that heard this node declared down before it restarted trust
        // its new claims once they hear it is up.
        if self.repl.announced < UP_ANNOUNCEMENTS && !self.repl.connected.is_empty() {
            self.repl.announced += 1;
            self.publish(self.liveness.announce());
        }
        self.set_links(&live);
    }

    fn ping(&self, to: &NodeId) {
        if let Some(peer) = peer_of(to) {
            self.net.send(NetCmd::Sync {
                peer,
                req: SyncRequest::Ping(self.own_beat(to)),
                reply: None,
            });
        }
    }

    /// Tells the grid this node is leaving (see [`pesc_protocol::liveness::Liveness::leave`]).
    pub(super) fn leave(&mut self) {
        let n = self.liveness.leave();
        self.publish(n);
    }

    fn publish(&self, n: Notice) {
        self.net.send(NetCmd::Publish(Gossip::Liveness(n)));
    }

    /// This node's heartbeat, as sent to (or answered to) `to`.
    fn own_beat(&self, to: &NodeId) -> Beat {
        Beat {
            node: self.s.node.clone(),
            inc: self.liveness.incarnation(),
            status: self.own_status(),
            you_are_down: self.liveness.down_at(to),
        }
    }

    /// A neighbour's ping or pong: it is alive. False when the beat claims
    /// to be from another node than the one that sent it.
    fn beat_received(&mut self, from: &NodeId, beat: Beat) -> bool {
        if &beat.node != from {
            return false;
        }
        let now = self.mono();
        self.liveness.heard(from, beat.inc, now);
        if let Some(inc) = beat.you_are_down
            && let Some(up) = self.liveness.told_down(inc)
        {
            tracing::warn!("{from} held this node down: announcing it is up");
            self.publish(up);
        }
        self.repl
            .live
            .insert(from.clone(), (beat.status.bounded(), now));
        true
    }

    fn own_status(&self) -> NodeStatus {
        NodeStatus {
            name: self.s.name.clone(),
            slots: self.s.slots,
            slots_free: self.free_slots.len() as u32,
            load: load_per_cpu(),
            addrs: self.repl.listen.clone(),
            gpus: self.gpus.clone(),
            rooms: self.caps.rooms.clone(),
            containers: self.caps.containers,
            isolation: self.caps.isolation,
            isolation_detail: self.runner.executor.isolation().describe(),
            paused: self.paused.is_some(),
            builds: self
                .builds
                .iter()
                .map(|(hash, state)| pesc_protocol::model::DomainBuild {
                    hash: hash.clone(),
                    state: *state,
                })
                .collect(),
        }
    }

    fn gossip(&mut self, from: NodeId, msg: Gossip) {
        let now = self.mono();
        match msg {
            Gossip::Liveness(n) => {
                // Signed gossip: a node speaks for itself only.
                let author = match &n {
                    Notice::Down { by, .. } => by,
                    Notice::Up { node, .. } => node,
                };
                if author != &from {
                    return;
                }
                if let Notice::Down { node, .. } = &n
                    && node != &self.s.node
                    && !self.liveness.is_down(node)
                {
                    tracing::info!("{from} declared {node} down: its runs can be taken over");
                }
                if let Some(up) = self.liveness.notice(&n, now) {
                    tracing::warn!("{from} declared this node down: announcing it is up");
                    self.publish(up);
                }
                self.update_links();
            }
        }
    }

    /// The grid's nodes: records from the grid document, live state from heartbeats.
    pub(super) fn grid_nodes(&self) -> Vec<GridNode> {
        let now = self.mono();
        let mut out: Vec<GridNode> = self
            .grid
            .nodes()
            .unwrap_or_default()
            .into_iter()
            .map(|n| {
                let me = n.id == self.s.node;
                let live = self.repl.live.get(&n.id);
                let status = if me {
                    Some(self.own_status())
                } else {
                    live.map(|(s, _)| s.clone())
                };
                GridNode {
                    this_node: me,
                    connected: me || self.repl.connected.contains(&n.id),
                    addrs: status
                        .as_ref()
                        .map(|s| s.addrs.clone())
                        .filter(|a| !a.is_empty())
                        .unwrap_or(n.addrs),
                    name: status.as_ref().map(|s| s.name.clone()).unwrap_or(n.name),
                    executor: n.executor,
                    isolation: status
                        .as_ref()
                        .map(|s| s.isolation_detail.clone())
                        .filter(|d| !d.is_empty())
                        .unwrap_or(n.isolation),
                    meets_minimum: status
                        .as_ref()
                        .map(|s| s.isolation.meets(self.caps.min_isolation))
                        .unwrap_or(true),
                    slots: status.as_ref().map(|s| s.slots).unwrap_or(n.slots),
                    slots_free: status.as_ref().map(|s| s.slots_free),
                    load: status.as_ref().map(|s| s.load),
                    gpus: status.as_ref().map(|s| s.gpus.clone()).unwrap_or_default(),
                    builds: status
                        .as_ref()
                        .map(|s| s.builds.clone())
                        .unwrap_or_default(),
                    last_seen_ms_ago: if me {
                        Some(0)
                    } else {
                        live.map(|(_, t)| now.saturating_sub(*t))
                    },
                    id: n.id,
                }
            })
            .collect();
        out.sort_by(|a, b| (!a.this_node, &a.name, &a.id).cmp(&(!b.this_node, &b.name, &b.id)));
        out
    }
}

/// One-minute load average per CPU (0 where /proc is missing).
fn load_per_cpu() -> f32 {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f32;
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f32>().ok())
        .map(|l| l / cpus)
        .unwrap_or(0.0)
}

/// Fetches every blob (from `from` first): `Held` once all are on disk.
async fn fetch_all(
    runner: &crate::runner::RunnerCtx,
    blobs: &[pesc_protocol::BlobHash],
    from: NodeId,
) -> SyncResponse {
    for h in blobs {
        if let Err(e) = runner.fetcher.ensure(h, std::slice::from_ref(&from)).await {
            return SyncResponse::Refused(format!("{e:#}"));
        }
    }
    SyncResponse::Held
}
