//! Leases: a node's hold on a run, kept as long as the node is alive.
//!
//! A lease is the running attempt a node wrote into the request document. It
//! holds while its node is not known down; who is down is decided by
//! [`crate::liveness`] (ring neighbours ping each other every heartbeat
//! period and declare a node silent for the TTL down). Liveness is judged by
//! each receiver's own monotonic clock: wall clocks of two machines are never
//! compared.

use std::collections::HashMap;

use crate::ids::{NodeId, RequestId};

/// Default time between the pings a node sends its ring neighbours.
pub const DEFAULT_HEARTBEAT_MS: u64 = 2_000;
/// Default time without an answer after which a neighbour is declared down.
pub const DEFAULT_LEASE_TTL_MS: u64 = 15_000;

/// One lease: node `node` holds `rank` of `request` in `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey {
    pub request: RequestId,
    pub rank: u32,
    pub epoch: u32,
    pub node: NodeId,
}

/// When this node first saw each foreign claim (its own monotonic clock):
/// what [`crate::liveness::Liveness::trusts`] weighs against a Down notice.
#[derive(Debug, Clone, Default)]
pub struct Sightings {
    first: HashMap<LeaseKey, u64>,
    /// When this node first saw each run queued for a new try: (request,
    /// rank, epoch of the next claim) → time.
    queued: HashMap<(RequestId, u32, u32), u64>,
}

impl Sightings {
    /// A claim was seen; only the first sighting counts.
    /// Returns whether it is new here.
    pub fn observe(&mut self, key: LeaseKey, now: u64) -> bool {
        match self.first.entry(key) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(now);
                true
            }
            std::collections::hash_map::Entry::Occupied(_) => false,
        }
    }

    /// When the claim was first seen (`None`: never observed).
    pub fn first_seen(&self, key: &LeaseKey) -> Option<u64> {
        self.first.get(key).copied()
    }

    /// When this node first saw the run queued for a claim in `epoch`
    /// (`None`: not before now; see [`Sightings::saw_queued`]).
    pub fn queued_since(&self, request: &RequestId, rank: u32, epoch: u32) -> Option<u64> {
        self.queued.get(&(request.clone(), rank, epoch)).copied()
    }

    /// The run was seen queued for a claim in `epoch`; only the first counts.
    pub fn saw_queued(&mut self, request: RequestId, rank: u32, epoch: u32, now: u64) {
        self.queued.entry((request, rank, epoch)).or_insert(now);
    }

    /// Forgets every claim of a request (it finished, or was dropped).
    pub fn forget_request(&mut self, request: &RequestId) {
        self.first.retain(|k, _| &k.request != request);
        self.queued.retain(|k, _| &k.0 != request);
    }
}
