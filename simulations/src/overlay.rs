//! The grid's overlay as the protocol builds it: every node's sync links
//! (`liveness::sync_links`: ring neighbours and long links) and the ring
//! neighbours that watch it (`liveness::ring_neighbours`), computed with the
//! protocol's functions over the nodes' ids. Hop counts between any two nodes
//! come from a breadth-first search of the (two-way) link graph.
//!
//! Modelled, not run: the ring as it is when every node is up. Nodes that are
//! off leave gaps a real ring closes over; with six watchers and long links
//! the distances barely change.

use std::collections::VecDeque;

use pesc_protocol::NodeId;
use pesc_protocol::liveness::{LONG_LINKS, WATCH_SIDE, ring_neighbours, sync_links};

pub struct Overlay {
    n: usize,
    /// Hops from `a` to `b` at `a * n + b`.
    dist: Vec<u8>,
    /// The ring neighbours of each node (who watches it, whom it watches).
    pub watchers: Vec<Vec<u32>>,
    /// Links of the undirected sync graph.
    pub edges: usize,
    diameter: u32,
}

impl Overlay {
    pub fn build(ids: &[NodeId]) -> Overlay {
        let n = ids.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by(|&a, &b| ids[a as usize].cmp(&ids[b as usize]));
        let sorted: Vec<NodeId> = order.iter().map(|&i| ids[i as usize].clone()).collect();
        let index = |id: &NodeId| order[sorted.binary_search(id).expect("a member")];
        let mut adj: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut watchers = Vec::with_capacity(n);
        for (i, id) in ids.iter().enumerate() {
            for l in sync_links(id, &sorted, WATCH_SIDE, LONG_LINKS) {
                let j = index(&l);
                adj[i].push(j);
                adj[j as usize].push(i as u32);
            }
            watchers.push(
                ring_neighbours(id, &sorted, WATCH_SIDE)
                    .iter()
                    .map(index)
                    .collect(),
            );
        }
        let mut edges = 0;
        for a in adj.iter_mut() {
            a.sort_unstable();
            a.dedup();
            edges += a.len();
        }
        let mut dist = vec![u8::MAX; n * n];
        let mut queue = VecDeque::new();
        for s in 0..n {
            let row = &mut dist[s * n..(s + 1) * n];
            row[s] = 0;
            queue.push_back(s as u32);
            while let Some(a) = queue.pop_front() {
                let d = row[a as usize];
                for &b in &adj[a as usize] {
                    if row[b as usize] == u8::MAX {
                        row[b as usize] = d.saturating_add(1);
                        queue.push_back(b);
                    }
                }
            }
        }
        let diameter = dist.iter().copied().max().map(u32::from).unwrap_or(0);
        Overlay {
            n,
            diameter,
            dist,
            watchers,
            edges: edges / 2,
        }
    }

    /// Hops a change takes from `a` to `b`.
    pub fn hops(&self, a: u32, b: u32) -> u32 {
        u32::from(self.dist[a as usize * self.n + b as usize]).max(1)
    }

    /// The farthest any node is from any other.
    pub fn diameter(&self) -> u32 {
        self.diameter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizes::real_length_node_id;

    #[test]
    fn small_grids_are_full_meshes_and_large_ones_are_shallow() {
        let ids: Vec<NodeId> = (0..6).map(real_length_node_id).collect();
        let o = Overlay::build(&ids);
        assert_eq!(o.edges, 15);
        assert_eq!(o.diameter(), 1);
        assert!(o.watchers.iter().all(|w| w.len() == 5));
        let ids: Vec<NodeId> = (0..2000).map(real_length_node_id).collect();
        let o = Overlay::build(&ids);
        assert!(o.diameter() <= 8, "diameter {}", o.diameter());
        assert!(o.watchers.iter().all(|w| w.len() == 2 * WATCH_SIDE));
        assert!(o.edges <= 2000 * (2 * WATCH_SIDE + LONG_LINKS) / 2 + 2000 * LONG_LINKS / 2);
    }
}
