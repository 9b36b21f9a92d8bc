//! What the simulator counts while it runs.

use std::collections::BTreeMap;

use pesc_protocol::liveness::WATCH_SIDE;
use pesc_protocol::run_view::Abandon;
use serde::Serialize;

use crate::engine::Node;
use crate::net::NetModel;
use crate::scenario::Scenario;
use crate::sizes::{GOSSIPSUB_FRAMING, STREAM_FRAMING, Sizes, gossip_copies};

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
    /// One document write by `writer` at `t`. Every node keeps connections
    /// to its sync links only and forwards what it merged, so the change
    /// crosses each link of the writer's side about once, and each link also
    /// carries the two acknowledgements (heads and bloom) of that exchange.
    /// `degree` is the mean number of links per node.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &mut self,
        net: &NetModel,
        t: u64,
        writer: u32,
        nodes: &[Node],
        bytes: u64,
        s: Sizes,
        degree: f64,
    ) {
        let n = self.side_size(net, t, writer, nodes) as f64;
        if n < 2.0 {
            return;
        }
        let links = (n * degree / 2.0).min(n * (n - 1.0) / 2.0);
        self.sync_total += links * (bytes + 2 * s.sync_ack) as f64;
    }

    /// A liveness notice published by `from` at `t`: gossipsub floods it to
    /// everyone on `from`'s side.
    pub fn notice(&mut self, net: &NetModel, t: u64, from: u32, nodes: &[Node], s: Sizes) {
        let side = self.side_size(net, t, from, nodes);
        self.gossip_total += side.saturating_sub(1) as f64
            * gossip_copies(side) as f64
            * (s.notice + GOSSIPSUB_FRAMING) as f64;
    }

    fn side_size(&self, net: &NetModel, t: u64, writer: u32, nodes: &[Node]) -> usize {
        if !net.partitioned_at(t) {
            return self.up;
        }
        (0..nodes.len() as u32)
            .filter(|&b| nodes[b as usize].up && net.separated_until(writer, b, t).is_none())
            .count()
    }

    /// Liveness traffic since the last sample: every node on pings each of
    /// its ring neighbours once a period and gets a pong; a partition that
    /// began makes each side declare the other's nodes down, and its heal
    /// makes every node refute with an Up notice.
    fn liveness(
        &mut self,
        since: u64,
        now: u64,
        nodes: &[Node],
        net: &NetModel,
        hb_ms: u64,
        s: Sizes,
    ) {
        let per = (now - since) as f64 / hb_ms as f64;
        let k = (2 * WATCH_SIDE).min(self.up.saturating_sub(1)) as f64;
        self.gossip_total += per * self.up as f64 * k * 2.0 * (s.beat + STREAM_FRAMING) as f64;
        for p in &net.partitions {
            let n = nodes.len();
            let on = |side: bool| p.side.iter().filter(|&&x| x == side).count();
            let flood = |m: usize| {
                m.saturating_sub(1) as f64
                    * gossip_copies(m) as f64
                    * (s.notice + GOSSIPSUB_FRAMING) as f64
            };
            if since <= p.start_ms && p.start_ms < now {
                for side in [true, false] {
                    // Each node of one side declared down on the other.
                    self.gossip_total += on(!side) as f64 * flood(on(side));
                }
            }
            if since <= p.end_ms && p.end_ms < now {
                self.gossip_total += n as f64 * flood(n);
            }
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
    /// Backup copies of stragglers started, how many became the result,
    /// and the run time of those that did not.
    pub backup_copies: u64,
    pub backup_wins: u64,
    pub backup_lost_ms: u64,
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
            tr.liveness(tr.last_t, now, nodes, net, hb_ms, sizes);
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
