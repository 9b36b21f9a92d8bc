//! The simulated network: per-message delay from latency, jitter, loss and
//! bandwidth, and partitions. Every draw is a hash of the message's identity,
//! so asking twice gives the same answer.

use serde::Serialize;

use crate::rng::hash01;

/// A stretch of time when the nodes marked in `side` cannot reach the others.
#[derive(Debug, Clone, Serialize)]
pub struct Partition {
    pub start_ms: u64,
    pub end_ms: u64,
    #[serde(skip)]
    pub side: Vec<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetModel {
    /// One-way latency between two nodes.
    pub latency_ms: f64,
    /// Extra delay, uniform in [0, jitter).
    pub jitter_ms: f64,
    /// Probability that one message is lost.
    pub loss: f64,
    /// Each node's link, bytes per second (both directions).
    pub bandwidth_bps: f64,
    /// Time a request-response exchange waits before it counts as failed
    /// and is sent again (libp2p request-response default).
    pub retry_ms: f64,
    pub partitions: Vec<Partition>,
    #[serde(skip)]
    pub seed: u64,
}

impl NetModel {
    /// A switched office LAN.
    pub fn lan(seed: u64) -> NetModel {
        NetModel {
            latency_ms: 0.3,
            jitter_ms: 1.0,
            loss: 0.001,
            bandwidth_bps: 100e6 / 8.0,
            retry_ms: 10_000.0,
            partitions: Vec::new(),
            seed,
        }
    }

    /// A campus: several buildings and sites behind routers.
    pub fn campus(seed: u64) -> NetModel {
        NetModel {
            latency_ms: 2.0,
            jitter_ms: 8.0,
            loss: 0.005,
            bandwidth_bps: 100e6 / 8.0,
            retry_ms: 10_000.0,
            partitions: Vec::new(),
            seed,
        }
    }

    /// Loopback on one machine (the validation scenario).
    pub fn loopback(seed: u64) -> NetModel {
        NetModel {
            latency_ms: 0.05,
            jitter_ms: 0.5,
            loss: 0.0,
            bandwidth_bps: 1e9,
            retry_ms: 10_000.0,
            partitions: Vec::new(),
            seed,
        }
    }

    /// One hop for a message of `bytes` from `a` to `b`, identified by `id`.
    /// A lost message is recovered through another peer that relays it (every
    /// node syncs with every peer), which costs a second hop; with a single
    /// peer it is sent again after the retry timeout.
    pub fn hop_ms(&self, a: u32, b: u32, id: u64, bytes: u64, peers: usize) -> f64 {
        let one = |salt: u64| {
            self.latency_ms
                + self.jitter_ms * hash01(self.seed, a as u64, (b as u64) << 1 | 1, id ^ salt)
                + bytes as f64 * 1000.0 / self.bandwidth_bps
        };
        let mut d = one(0);
        if self.loss > 0.0 && hash01(self.seed, b as u64, a as u64, id) < self.loss {
            d += if peers > 2 { one(1) } else { self.retry_ms };
        }
        d
    }

    /// The longest one hop can take without a retry timeout (a lost message
    /// recovered through a relay): two hops of latency and full jitter.
    pub fn max_delay_ms(&self, nodes: usize) -> f64 {
        let hop = self.latency_ms + self.jitter_ms + 2_000.0 * 1000.0 / self.bandwidth_bps;
        if nodes > 2 || self.loss == 0.0 {
            2.0 * hop
        } else {
            hop + self.retry_ms
        }
    }

    /// Gossip reaches everyone through the gossipsub mesh (degree 6): this
    /// many hops from the publisher.
    pub fn gossip_hops(nodes: usize) -> u32 {
        if nodes <= 7 {
            1
        } else {
            ((nodes as f64 / 6.0).ln() / 5f64.ln()).ceil() as u32 + 1
        }
    }

    /// The partition separating `a` from `b` at time `t`, if any: its end.
    pub fn separated_until(&self, a: u32, b: u32, t: u64) -> Option<u64> {
        self.partitions
            .iter()
            .filter(|p| p.start_ms <= t && t < p.end_ms)
            .filter(|p| p.side[a as usize] != p.side[b as usize])
            .map(|p| p.end_ms)
            .max()
    }

    /// Whether any partition is in force at `t`.
    pub fn partitioned_at(&self, t: u64) -> bool {
        self.partitions
            .iter()
            .any(|p| p.start_ms <= t && t < p.end_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_stable_and_partitions_separate() {
        let mut n = NetModel::campus(3);
        let d1 = n.hop_ms(1, 2, 99, 200, 10);
        assert_eq!(d1, n.hop_ms(1, 2, 99, 200, 10));
        assert!(d1 >= n.latency_ms);
        n.partitions.push(Partition {
            start_ms: 100,
            end_ms: 200,
            side: vec![true, false, false],
        });
        assert_eq!(n.separated_until(0, 1, 150), Some(200));
        assert_eq!(n.separated_until(1, 2, 150), None);
        assert_eq!(n.separated_until(0, 1, 200), None);
    }
}
