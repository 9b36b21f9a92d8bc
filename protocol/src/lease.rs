//! Leases: a node's time-bounded hold on a run, kept alive by heartbeats.
//!
//! Liveness is judged by the receiver's own monotonic clock only: a lease is
//! live while a heartbeat for it was *received* less than the TTL ago. Wall
//! clocks of two machines are never compared.

use std::collections::HashMap;

use crate::ids::{NodeId, RequestId};

/// Default time between heartbeats a node sends for all of its leases.
pub const DEFAULT_HEARTBEAT_MS: u64 = 2_000;
/// Default time without a received heartbeat after which a lease expires.
pub const DEFAULT_LEASE_TTL_MS: u64 = 15_000;

/// One lease: node `node` holds `rank` of `request` in `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey {
    pub request: RequestId,
    pub rank: u32,
    pub epoch: u32,
    pub node: NodeId,
}

/// Tracks when each foreign lease was last heard of, by local monotonic time
/// (milliseconds from any fixed origin the caller picks).
#[derive(Debug, Clone)]
pub struct LeaseTracker {
    ttl_ms: u64,
    last_heard: HashMap<LeaseKey, u64>,
}

impl LeaseTracker {
    pub fn new(ttl_ms: u64) -> Self {
        LeaseTracker {
            ttl_ms,
            last_heard: HashMap::new(),
        }
    }

    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// A claim was seen (in a document or in gossip). The first sighting
    /// starts the clock, so a claim read from a stale document still gets a
    /// full TTL for its holder to prove it is alive.
    pub fn observe(&mut self, key: LeaseKey, now: u64) {
        self.last_heard.entry(key).or_insert(now);
    }

    /// A heartbeat from `key.node` for this lease arrived now.
    pub fn heartbeat(&mut self, key: LeaseKey, now: u64) {
        let t = self.last_heard.entry(key).or_insert(now);
        *t = (*t).max(now);
    }

    /// The attempt ended (or the request is gone): stop tracking it.
    pub fn forget(&mut self, key: &LeaseKey) {
        self.last_heard.remove(key);
    }

    /// Forgets every lease of a request.
    pub fn forget_request(&mut self, request: &RequestId) {
        self.last_heard.retain(|k, _| &k.request != request);
    }

    /// Live if heard of less than the TTL ago. A lease never observed counts
    /// as live: the caller observes claims before it asks.
    pub fn is_live(&self, key: &LeaseKey, now: u64) -> bool {
        match self.last_heard.get(key) {
            Some(&t) => now.saturating_sub(t) < self.ttl_ms,
            None => true,
        }
    }

    /// The leases that expired by `now`, in a deterministic order.
    pub fn expired(&self, now: u64) -> Vec<LeaseKey> {
        let mut v: Vec<_> = self
            .last_heard
            .iter()
            .filter(|(_, t)| now.saturating_sub(**t) >= self.ttl_ms)
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    pub fn len(&self) -> usize {
        self.last_heard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_heard.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rank: u32) -> LeaseKey {
        LeaseKey {
            request: RequestId::from_bytes([1; 8]),
            rank,
            epoch: 0,
            node: NodeId::new("b"),
        }
    }

    #[test]
    fn expires_after_ttl_without_heartbeat() {
        let mut t = LeaseTracker::new(15_000);
        t.observe(key(0), 1_000);
        assert!(t.is_live(&key(0), 15_999));
        assert!(!t.is_live(&key(0), 16_000));
        t.heartbeat(key(0), 14_000);
        assert!(t.is_live(&key(0), 28_999));
        assert_eq!(t.expired(29_000), vec![key(0)]);
        // An old heartbeat delivered late does not move the clock back.
        t.heartbeat(key(0), 2_000);
        assert!(t.is_live(&key(0), 28_999));
        t.forget(&key(0));
        assert!(t.is_empty());
    }

    #[test]
    fn observing_again_does_not_refresh() {
        let mut t = LeaseTracker::new(10);
        t.observe(key(1), 0);
        t.observe(key(1), 9);
        assert!(!t.is_live(&key(1), 10));
    }
}
