//! Liveness across nodes: every heartbeat period the node pings its ring
//! neighbours and the pong carries their status; a neighbour silent for the
//! lease TTL is declared down on gossip; a lease holds while its holder is
//! not known down (see [`crate::liveness`]).

use crate::NodeId;
use crate::liveness::{Notice, UP_ANNOUNCEMENTS, WATCH_SIDE, ring_neighbours};
use crate::model::DomainBuild;
use crate::wire::{Beat, Gossip, NodeStatus, SyncResponse};

use super::action::Action;
use super::{Node, Now};

impl Node {
    /// Every heartbeat period: judge the ring neighbours, ping them.
    pub(super) fn heartbeat(&mut self, now: Now) {
        self.rescan = true;
        self.refresh_members();
        self.least_load = self
            .repl
            .live_statuses()
            .filter(|(n, s)| {
                !self.liveness.is_down(n) && s.slots_free > 0 && !s.paused && s.load.is_finite()
            })
            .map(|(_, s)| s.load)
            .reduce(f32::min);
        self.load_over_beats = if crate::claim_order::load_delay_ms(self.load, self.least_load) > 0
        {
            self.load_over_beats.saturating_add(1)
        } else {
            0
        };
        let members = self.members_list.clone();
        let live = self.live(&members);
        self.live_n = live.len().max(1);
        self.actions.push_back(Action::LiveNodes(self.live_n));
        let neighbours = ring_neighbours(&self.cfg.node, &live, WATCH_SIDE);
        for n in self.liveness.tick(&neighbours, now.mono_ms) {
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
        let down_near: Vec<NodeId> = ring_neighbours(&self.cfg.node, &members, WATCH_SIDE)
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
            let n = self.liveness.announce();
            self.publish(n);
        }
        self.set_links(&live);
    }

    pub(super) fn ping(&mut self, to: &NodeId) {
        let beat = Box::new(self.own_beat(to));
        self.actions.push_back(Action::Ping {
            to: to.clone(),
            beat,
        });
    }

    /// Tells the grid this node is leaving (see
    /// [`crate::liveness::Liveness::leave`]).
    pub(super) fn leave(&mut self) {
        let n = self.liveness.leave();
        self.publish(n);
    }

    fn publish(&mut self, n: Notice) {
        self.actions.push_back(Action::Publish(n));
    }

    /// This node's heartbeat, as sent to (or answered to) `to`.
    fn own_beat(&self, to: &NodeId) -> Beat {
        Beat {
            node: self.cfg.node.clone(),
            inc: self.liveness.incarnation(),
            status: self.own_status(),
            you_are_down: self.liveness.down_at(to),
        }
    }

    /// A neighbour's ping: answered with this node's beat.
    pub fn receive_ping(&mut self, now: Now, from: &NodeId, beat: Beat) -> SyncResponse {
        if self.beat_received(now, from, beat) {
            SyncResponse::Pong(Box::new(self.own_beat(from)))
        } else {
            SyncResponse::Refused("a ping must come from its node".into())
        }
    }

    /// A neighbour's pong.
    pub fn receive_pong(&mut self, now: Now, from: &NodeId, beat: Beat) {
        self.beat_received(now, from, beat);
    }

    /// A neighbour's ping or pong: it is alive. False when the beat claims
    /// to be from another node than the one that sent it.
    fn beat_received(&mut self, now: Now, from: &NodeId, beat: Beat) -> bool {
        if &beat.node != from {
            return false;
        }
        // A node held down is heard again: its claims may hold again.
        self.rescan |= self.liveness.is_down(from);
        self.liveness.heard(from, beat.inc, now.mono_ms);
        if let Some(inc) = beat.you_are_down
            && let Some(up) = self.liveness.told_down(inc)
        {
            tracing::warn!("{from} held this node down: announcing it is up");
            self.publish(up);
        }
        self.repl
            .live
            .insert(from.clone(), (beat.status.bounded(), now.mono_ms));
        true
    }

    /// This node's live state, for a peer that asks
    /// ([`crate::wire::SyncRequest::Status`]).
    pub fn status(&self) -> NodeStatus {
        self.own_status()
    }

    pub(super) fn own_status(&self) -> NodeStatus {
        NodeStatus {
            name: self.cfg.name.clone(),
            slots: self.cfg.slots,
            slots_free: self.free_slots.len() as u32,
            load: self.load,
            mem_total_mb: self.memory.map(|m| m.0),
            mem_free_mb: self.memory.map(|m| m.1),
            addrs: self.repl.listen.clone(),
            gpus: self.gpus.clone(),
            rooms: self.caps.rooms.clone(),
            private: self.caps.private,
            containers: self.caps.containers,
            isolation: self.caps.isolation,
            isolation_detail: self.cfg.executor.isolation_detail.clone(),
            paused: self.takes_no_runs(),
            pause: self.why_no_runs(),
            owner_here: self.paused.as_ref().is_some_and(super::Pause::owner_here),
            mem_room_mb: self.memory_room(),
            suspended: self.suspended_runs() as u32,
            no_room: self.misfit_now.clone(),
            builds: self
                .builds
                .iter()
                .map(|(hash, state)| DomainBuild {
                    hash: hash.clone(),
                    state: *state,
                })
                .collect(),
        }
    }

    /// A gossip message (signed: `from` is its author).
    pub fn gossip(&mut self, now: Now, from: &NodeId, msg: Gossip) {
        self.rescan = true;
        self.read_stale_all();
        match msg {
            Gossip::Liveness(n) => {
                // A node speaks for itself only.
                let author = match &n {
                    Notice::Down { by, .. } => by,
                    Notice::Up { node, .. } => node,
                };
                if author != from {
                    return;
                }
                if let Notice::Down { node, .. } = &n
                    && node != &self.cfg.node
                    && !self.liveness.is_down(node)
                {
                    tracing::info!("{from} declared {node} down: its runs can be taken over");
                }
                if let Some(up) = self.liveness.notice(&n, now.mono_ms) {
                    tracing::warn!("{from} declared this node down: announcing it is up");
                    self.publish(up);
                }
                self.update_links();
            }
        }
    }
}
