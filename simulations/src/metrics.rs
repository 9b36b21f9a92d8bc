//! What the simulator counts while it runs.

use std::collections::BTreeMap;

use pesc_protocol::run_view::Abandon;
use serde::Serialize;

use crate::engine::Node;
use crate::net::NetModel;
use crate::scenario::Scenario;
use crate::sizes::{GOSSIPSUB_FRAMING, Sizes, gossip_copies};

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub t_s: f64,
    pub busy: usize,
    pub slots_up: f64,
    pub nodes_up: usize,
    /// Bytes each node received per second over the last period.
    pub sync_bps: f64,
    pub gossip_bps: f64,
}

/// Bytes on the wire, summed over every receiving node.
#[derive(Debug, Default)]
pub struct Traffic {
    pub up: usize,
    sync_total: f64,
    gossip_total: f64,
    last_t: u64,
    last_sync: f64,
    last_gossip: f64,
}

impl Traffic {
    /// One document write by `writer` at `t`: the writer syncs it to every
    /// connected peer, and every peer that merged it answers each of its own
    /// peers (heads and bloom filter), as the node does today. A gossip hint
    /// announces it too.
    pub fn write(
        &mut self,
        net: &NetModel,
        t: u64,
        writer: u32,
        nodes: &[Node],
        bytes: u64,
        s: Sizes,
    ) {
        let n = self.side_size(net, t, writer, nodes) as f64;
        if n < 2.0 {
            return;
        }
        self.sync_total += (n - 1.0) * bytes as f64 + n * (n - 1.0) * s.sync_ack as f64;
        self.gossip_total += (n - 1.0)
            * gossip_copies(n as usize) as f64
            * (s.changed_hint + GOSSIPSUB_FRAMING) as f64;
    }

    fn side_size(&self, net: &NetModel, t: u64, writer: u32, nodes: &[Node]) -> usize {
        if !net.partitioned_at(t) {
            return self.up;
        }
        (0..nodes.len() as u32)
            .filter(|&b| nodes[b as usize].up && net.separated_until(writer, b, t).is_none())
            .count()
    }

    /// Heartbeats since the last sample: every node on publishes one per
    /// period listing its leases; everyone on its side receives it.
    fn heartbeats(
        &mut self,
        dt_ms: u64,
        nodes: &[Node],
        net: &NetModel,
        t: u64,
        hb_ms: u64,
        s: Sizes,
    ) {
        let per = dt_ms as f64 / hb_ms as f64;
        for (i, n) in nodes.iter().enumerate() {
            if !n.up {
                continue;
            }
            let size = s.heartbeat_base
                + s.heartbeat_per_lease * n.running.len() as u64
                + GOSSIPSUB_FRAMING;
            let side = self.side_size(net, t, i as u32, nodes);
            self.gossip_total +=
                per * size as f64 * side.saturating_sub(1) as f64 * gossip_copies(side) as f64;
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub sizes: Option<Sizes>,
    pub claims: u64,
    pub claim_conflicts: u64,
    pub takeovers: u64,
    pub downs: u64,
    pub useful_ms: u64,
    pub duplicate_ms: u64,
    pub lost_ms: u64,
    pub double_results: u64,
    pub abandoned: BTreeMap<String, u64>,
    pub failovers_ms: Vec<u64>,
    pub waits_ms: BTreeMap<String, Vec<u64>>,
    pub violations: u64,
    pub violation_examples: Vec<String>,
    pub traffic: Traffic,
    pub series: Vec<Point>,
}

impl Metrics {
    pub fn new(sc: &Scenario, sizes: Sizes) -> Metrics {
        let mut m = Metrics {
            sizes: Some(sizes),
            ..Default::default()
        };
        m.traffic.up = sc.nodes.iter().filter(|n| n.avail.is_up(0)).count();
        m
    }

    pub fn queue_wait(&mut self, owner: &str, ms: u64) {
        self.waits_ms.entry(owner.to_string()).or_default().push(ms);
    }

    pub fn failover(&mut self, ms: u64) {
        self.failovers_ms.push(ms);
    }

    pub fn abandoned(&mut self, why: Abandon) {
        *self.abandoned.entry(format!("{why:?}")).or_default() += 1;
    }

    pub fn violation(&mut self, what: String) {
        self.violations += 1;
        if self.violation_examples.len() < 10 {
            self.violation_examples.push(what);
        }
    }

    /// Closes a sampling period at `now`: slots in use and traffic per node.
    pub fn sample(&mut self, now: u64, nodes: &[Node], net: &NetModel, hb_ms: u64) {
        let busy: usize = nodes.iter().filter(|n| n.up).map(|n| n.running.len()).sum();
        let slots_up: f64 = nodes.iter().filter(|n| n.up).map(|n| n.slots as f64).sum();
        let up = nodes.iter().filter(|n| n.up).count();
        let sizes = self.sizes.expect("set at start");
        let tr = &mut self.traffic;
        let dt = now.saturating_sub(tr.last_t);
        if dt > 0 {
            tr.heartbeats(dt, nodes, net, now, hb_ms, sizes);
        }
        let secs = dt as f64 / 1000.0;
        let per_node = |total: f64, last: f64| {
            if secs > 0.0 && up > 0 {
                (total - last) / up as f64 / secs
            } else {
                0.0
            }
        };
        let p = Point {
            t_s: now as f64 / 1000.0,
            busy,
            slots_up,
            nodes_up: up,
            sync_bps: per_node(tr.sync_total, tr.last_sync),
            gossip_bps: per_node(tr.gossip_total, tr.last_gossip),
        };
        tr.last_t = now;
        tr.last_sync = tr.sync_total;
        tr.last_gossip = tr.gossip_total;
        if dt > 0 || self.series.is_empty() {
            self.series.push(p);
        }
    }
}
