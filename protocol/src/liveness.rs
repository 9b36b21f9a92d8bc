//! Who is alive, without every node hearing from every other node.
//!
//! Flooding a heartbeat to the whole grid costs every node O(nodes) bytes a
//! second (870 KB/s at 1 000 nodes in the simulator). Instead:
//!
//! - **Watching.** The live members of the grid form a ring in node-id order.
//!   Each node pings the [`WATCH_SIDE`] live members on each side of it every
//!   heartbeat period; the answer (a pong) proves the neighbour alive. A
//!   neighbour that answers nothing for the lease TTL is declared down: the
//!   watcher publishes a [`Notice::Down`] on gossip, once.
//! - **Trusting.** Every other node trusts a node's claims until a Down notice
//!   names it: a lease is live while its holder is not known down.
//! - **Taking over in order.** The dead node's ring neighbours may take its
//!   runs at once; every other node waits its turn in a random order per run
//!   ([`takeover_delay_ms`]). When a grid runs dry, thousands of idle nodes
//!   hear the same notice within milliseconds; without the order they would
//!   all claim the same few runs.
//! - **Refuting.** Notices carry the node's *incarnation*, a number only the
//!   node itself raises (at start-up, and whenever it learns it was declared
//!   down while alive). `Up(i)` beats `Down(j)` when `i > j`; `Down(i)` beats
//!   `Up(j)` when `i >= j`. A node learns it was declared down from a notice
//!   about itself or from a neighbour's ping or pong, and answers with
//!   `Up(i + 1)`; a node that restarts announces `Up` with its new
//!   incarnation (it marks its own interrupted attempts lost itself).
//! - **Leaving.** A node stopped on purpose hands its runs back, then
//!   declares itself down ([`Liveness::leave`]).
//!
//! In a grid of at most `2 × WATCH_SIDE + 1` nodes everyone watches everyone,
//! which is what the flooded heartbeats did. Sans-I/O: the node feeds pings,
//! pongs, notices and `now`; it sends what comes back.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, RequestId};

/// Live members each node watches on each side of it in the ring.
pub const WATCH_SIDE: usize = 3;

/// Long links each node adds to its ring neighbours for document sync, so a
/// change crosses the grid in O(log nodes) hops instead of O(nodes).
pub const LONG_LINKS: usize = 4;

/// How many heartbeat periods (with a peer connected) a node announces its
/// start on gossip: the gossip mesh forms only after the first connections.
pub const UP_ANNOUNCEMENTS: u32 = 3;

/// How much longer than the dead node's ring neighbours every other node
/// trusts its claims after the Down notice, at least: time for a
/// neighbour's takeover claim to cross the grid (a tenth of a second at
/// 10 000 nodes).
pub const FAR_TAKEOVER_DELAY_MS: u64 = crate::lease::DEFAULT_HEARTBEAT_MS;

/// The scheduler's tick: the step between two places in a takeover order.
pub const TAKEOVER_STEP_MS: u64 = 500;

/// How long a node that is not a ring neighbour of a run's last holder
/// waits, once the run is free to take, before it claims it:
/// [`FAR_TAKEOVER_DELAY_MS`] plus its place in a random order of the grid's
/// `members` for this run, times [`TAKEOVER_STEP_MS`]. The place is
/// estimated from a hash of the node and the run (a fraction of the member
/// count), so no node needs the others' hashes. The first idle node in the
/// order takes the run and the next ones see its claim before their turn,
/// however many nodes are idle. The order is for nodes that were idle
/// already, which all hear the same change at once: a node looking for a
/// slot that has just come free looks at a moment of its own, and waits
/// [`FAR_TAKEOVER_DELAY_MS`] only (else, in a busy grid, runs taken over
/// would wait for a node whose turn came to free a slot).
pub fn takeover_delay_ms(me: &NodeId, request: &RequestId, rank: u32, members: usize) -> u64 {
    let h = crate::schedule::hash64(&format!("takeover/{me}/{request}/{rank}"));
    let x = (h >> 11) as f64 / (1u64 << 53) as f64;
    FAR_TAKEOVER_DELAY_MS + (x * members as f64 * TAKEOVER_STEP_MS as f64) as u64
}

/// A liveness announcement, carried on gossip to the whole grid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// `by` heard nothing from `node` (incarnation `inc`) for a lease TTL.
    Down { node: NodeId, inc: u64, by: NodeId },
    /// `node` is alive in incarnation `inc`.
    Up { node: NodeId, inc: u64 },
}

/// The `side` live members after `me` and the `side` before it, in id order
/// (fewer when the ring is small). `members` must be sorted and deduplicated;
/// `me` need not be in it.
pub fn ring_neighbours(me: &NodeId, members: &[NodeId], side: usize) -> Vec<NodeId> {
    let others: Vec<&NodeId> = members.iter().filter(|m| *m != me).collect();
    let n = others.len();
    if n <= 2 * side {
        return others.into_iter().cloned().collect();
    }
    // Position of the first member after `me`.
    let after = others.partition_point(|m| *m < me);
    let mut out: Vec<NodeId> = (0..side)
        .map(|i| others[(after + i) % n].clone())
        .chain((1..=side).map(|i| others[(after + n - i) % n].clone()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether, in a grid of `members`, every node's ring neighbours are all
/// the others (then no node has long links, and no change needs
/// forwarding to reach everyone).
pub fn links_everyone(members: usize) -> bool {
    members <= 2 * WATCH_SIDE + 1
}

/// The peers a node keeps connections to for document sync: its ring
/// neighbours and `long` members picked by a hash of its own id, so the
/// links are the same on every node that knows the same members.
pub fn sync_links(me: &NodeId, members: &[NodeId], side: usize, long: usize) -> Vec<NodeId> {
    let mut out = ring_neighbours(me, members, side);
    let n = members.len() as u64;
    if members.len() > 2 * side + 1 {
        for i in 0..long as u64 {
            let m = &members[(fnv(me.as_str().as_bytes(), i) % n) as usize];
            if m != me {
                out.push(m.clone());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// FNV-1a of `bytes` and a salt: stable across builds and machines.
fn fnv(bytes: &[u8], salt: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes.iter().copied().chain(salt.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Mix the high bits down: members are picked by `h % n`.
    h ^ (h >> 29)
}

/// What this node knows of another's incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    inc: u64,
    down: bool,
    /// When this node learned it was down (its own clock).
    since: u64,
    /// Whether this node watched it when it learned: a ring neighbour takes
    /// its runs over first.
    near: bool,
}

/// One node's liveness state machine.
#[derive(Debug, Clone)]
pub struct Liveness {
    me: NodeId,
    inc: u64,
    ttl_ms: u64,
    known: HashMap<NodeId, Known>,
    /// Neighbours watched now, and when each last answered (or when
    /// watching it began, so a new neighbour gets a full TTL).
    watched: HashMap<NodeId, u64>,
    /// This node said it is leaving.
    left: bool,
}

impl Liveness {
    /// `inc` is this start's incarnation: larger than any earlier start's
    /// (the node uses its wall clock in milliseconds at start-up).
    pub fn new(me: NodeId, inc: u64, ttl_ms: u64) -> Self {
        Liveness {
            me,
            inc,
            ttl_ms,
            known: HashMap::new(),
            watched: HashMap::new(),
            left: false,
        }
    }

    pub fn incarnation(&self) -> u64 {
        self.inc
    }

    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// The notice this node publishes when it starts.
    pub fn announce(&self) -> Notice {
        Notice::Up {
            node: self.me.clone(),
            inc: self.inc,
        }
    }

    /// The notice this node publishes when it stops on purpose, after
    /// handing its runs back: it declares itself down, so the others stop
    /// counting on it at once instead of after a lease TTL. A later start
    /// announces `Up` with a larger incarnation, which beats it. From then
    /// on this node no longer refutes being down.
    pub fn leave(&mut self) -> Notice {
        self.left = true;
        Notice::Down {
            node: self.me.clone(),
            inc: self.inc,
            by: self.me.clone(),
        }
    }

    /// Whether `node` is known down: its claims are no longer trusted.
    pub fn is_down(&self, node: &NodeId) -> bool {
        self.known.get(node).is_some_and(|k| k.down)
    }

    /// Whether a claim of `holder` that this node first saw at `first_seen`
    /// holds at `now`. Claims of a node not known down hold. Of a node known
    /// down, the claims seen before this node learned it hold no more (for a
    /// node that did not watch the holder, `far_delay_ms()` later: see
    /// [`takeover_delay_ms`]); one seen *after* is evidence the node lives (a
    /// healed partition, before its Up notice arrives) and holds for one TTL,
    /// so a stale claim delivered late cannot pin a run to a dead node.
    /// `far_delay_ms` is asked only when it matters.
    pub fn trusts(
        &self,
        holder: &NodeId,
        first_seen: u64,
        now: u64,
        far_delay_ms: impl FnOnce() -> u64,
    ) -> bool {
        match self.known.get(holder) {
            Some(k) if k.down && first_seen > k.since => {
                now.saturating_sub(first_seen) < self.ttl_ms
            }
            Some(k) if k.down => !k.near && now < k.since.saturating_add(far_delay_ms()),
            _ => true,
        }
    }

    /// Whether this node may claim now a queued run whose latest attempt was
    /// `holder`'s (`None`: never tried), a run it first saw queued at
    /// `queued_since`. The holder itself and its ring neighbours may at once;
    /// every other node after `far_delay_ms()` ([`takeover_delay_ms`]), so a
    /// run that comes back to the queue (a failed try to retry, a lost one) is
    /// not claimed by every idle node of a large grid at once. A holder known
    /// down was ordered by [`Liveness::trusts`] already.
    pub fn may_take(
        &self,
        holder: Option<&NodeId>,
        queued_since: u64,
        now: u64,
        far_delay_ms: impl FnOnce() -> u64,
    ) -> bool {
        match holder {
            None => true,
            Some(h) if h == &self.me || self.watched.contains_key(h) || self.is_down(h) => true,
            Some(_) => now >= queued_since.saturating_add(far_delay_ms()),
        }
    }

    /// Nodes known down, in id order.
    pub fn down_nodes(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .known
            .iter()
            .filter(|(_, k)| k.down)
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// The incarnation this node holds `node` down at, to tell it in a ping
    /// or pong so it can refute.
    pub fn down_at(&self, node: &NodeId) -> Option<u64> {
        self.known.get(node).and_then(|k| k.down.then_some(k.inc))
    }

    /// `from` proved alive in incarnation `inc` (its ping or its pong reached
    /// this node). Returns the incarnation this node still holds it down at,
    /// if any: the caller tells `from`, which then refutes.
    pub fn heard(&mut self, from: &NodeId, inc: u64, now: u64) -> Option<u64> {
        if from == &self.me {
            return None;
        }
        if let Some(t) = self.watched.get_mut(from) {
            *t = (*t).max(now);
        }
        let k = self.known.entry(from.clone()).or_insert(Known {
            inc,
            down: false,
            since: 0,
            near: false,
        });
        if inc > k.inc {
            *k = Known {
                inc,
                down: false,
                since: 0,
                near: false,
            };
        }
        k.down.then_some(k.inc)
    }

    /// A neighbour said this node is down at `inc`. Returns the `Up` notice
    /// to publish when that is news (the incarnation is raised past it),
    /// unless this node is leaving.
    pub fn told_down(&mut self, inc: u64) -> Option<Notice> {
        if inc < self.inc || self.left {
            return None;
        }
        self.inc = inc + 1;
        Some(self.announce())
    }

    /// Applies a notice from gossip. Returns a notice to publish: the
    /// refutation when the notice declares this node down.
    pub fn notice(&mut self, n: &Notice, now: u64) -> Option<Notice> {
        match n {
            Notice::Down { node, inc, .. } if node == &self.me => self.told_down(*inc),
            Notice::Down { node, inc, .. } => {
                let near = self.watched.contains_key(node);
                let k = self.known.entry(node.clone()).or_insert(Known {
                    inc: *inc,
                    down: false,
                    since: now,
                    near,
                });
                if *inc >= k.inc && !k.down {
                    *k = Known {
                        inc: *inc,
                        down: true,
                        since: now,
                        near,
                    };
                }
                None
            }
            Notice::Up { node, .. } if node == &self.me => None,
            Notice::Up { node, inc } => {
                let k = self.known.entry(node.clone()).or_insert(Known {
                    inc: *inc,
                    down: false,
                    since: 0,
                    near: false,
                });
                if *inc > k.inc || (*inc == k.inc && !k.down) {
                    *k = Known {
                        inc: *inc,
                        down: false,
                        since: 0,
                        near: false,
                    };
                    // Back: a full TTL before a watcher may judge it again.
                    if let Some(t) = self.watched.get_mut(node) {
                        *t = (*t).max(now);
                    }
                }
                None
            }
        }
    }

    /// Called every heartbeat period with the neighbours this node watches
    /// now ([`ring_neighbours`] of the members not known down). Returns the
    /// Down notices to publish for neighbours silent for a TTL.
    pub fn tick(&mut self, neighbours: &[NodeId], now: u64) -> Vec<Notice> {
        self.watched.retain(|n, _| neighbours.contains(n));
        let mut out = Vec::new();
        for n in neighbours {
            if n == &self.me {
                continue;
            }
            let last = *self.watched.entry(n.clone()).or_insert(now);
            if now.saturating_sub(last) < self.ttl_ms || self.is_down(n) {
                continue;
            }
            let k = self.known.entry(n.clone()).or_insert(Known {
                inc: 0,
                down: false,
                since: now,
                near: true,
            });
            k.down = true;
            k.since = now;
            k.near = true;
            out.push(Notice::Down {
                node: n.clone(),
                inc: k.inc,
                by: self.me.clone(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: u64 = FAR_TAKEOVER_DELAY_MS;

    fn ids(n: usize) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = (0..n).map(|i| NodeId::new(format!("n{i:03}"))).collect();
        v.sort();
        v
    }

    #[test]
    fn small_rings_watch_everyone_and_large_ones_a_few() {
        let m = ids(5);
        assert_eq!(ring_neighbours(&m[0], &m, 3).len(), 4);
        let m = ids(100);
        let nb = ring_neighbours(&m[0], &m, 3);
        assert_eq!(
            nb,
            vec![
                m[1].clone(),
                m[2].clone(),
                m[3].clone(),
                m[97].clone(),
                m[98].clone(),
                m[99].clone()
            ]
        );
        // Watching is symmetric: whoever I watch watches me.
        for a in &m {
            for b in ring_neighbours(a, &m, 3) {
                assert!(ring_neighbours(&b, &m, 3).contains(a));
            }
        }
        // A node not in the list sits where its id falls.
        let outsider = NodeId::new("n050x");
        assert!(ring_neighbours(&outsider, &m, 3).contains(&m[50]));
        assert!(ring_neighbours(&outsider, &m, 3).contains(&m[51]));
    }

    #[test]
    fn sync_links_reach_everyone_in_few_hops() {
        let m = ids(1000);
        let links: Vec<Vec<usize>> = m
            .iter()
            .map(|a| {
                sync_links(a, &m, WATCH_SIDE, LONG_LINKS)
                    .iter()
                    .map(|b| m.binary_search(b).expect("member"))
                    .collect()
            })
            .collect();
        assert!(links.iter().all(|l| l.len() <= 2 * WATCH_SIDE + LONG_LINKS));
        // Connections are two-way: breadth-first over the undirected graph.
        let mut adj = vec![Vec::new(); m.len()];
        for (a, l) in links.iter().enumerate() {
            for &b in l {
                adj[a].push(b);
                adj[b].push(a);
            }
        }
        let mut dist = vec![usize::MAX; m.len()];
        dist[0] = 0;
        let mut queue = std::collections::VecDeque::from([0]);
        while let Some(a) = queue.pop_front() {
            for &b in &adj[a] {
                if dist[b] == usize::MAX {
                    dist[b] = dist[a] + 1;
                    queue.push_back(b);
                }
            }
        }
        let far = *dist.iter().max().expect("nodes");
        assert!(far <= 8, "diameter from node 0 is {far}");
    }

    #[test]
    fn a_silent_neighbour_is_declared_down_once() {
        let m = ids(3);
        let mut l = Liveness::new(m[0].clone(), 1, 15_000);
        let nb = vec![m[1].clone(), m[2].clone()];
        assert!(l.tick(&nb, 1_000).is_empty());
        assert_eq!(l.heard(&m[1], 7, 10_000), None);
        let out = l.tick(&nb, 16_000);
        assert_eq!(
            out,
            vec![Notice::Down {
                node: m[2].clone(),
                inc: 0,
                by: m[0].clone()
            }]
        );
        assert!(l.is_down(&m[2]) && !l.is_down(&m[1]));
        assert!(l.tick(&nb, 17_000).is_empty(), "announced once");
        let out = l.tick(&nb, 25_000);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(l.down_nodes(), vec![m[1].clone(), m[2].clone()]);
        // Claims seen before it was declared down are dropped; one seen
        // after holds for a TTL (the node may be back behind a healed link).
        assert!(l.trusts(&m[0], 0, 99_000, || F), "not down");
        assert!(!l.trusts(&m[2], 15_000, 17_000, || F));
        assert!(l.trusts(&m[2], 20_000, 34_999, || F));
        assert!(!l.trusts(&m[2], 20_000, 35_000, || F));
    }

    #[test]
    fn a_node_that_leaves_is_down_until_it_starts_again() {
        let m = ids(3);
        let mut leaving = Liveness::new(m[1].clone(), 40, 15_000);
        let mut l = Liveness::new(m[0].clone(), 1, 15_000);
        l.heard(&m[1], 40, 1_000);
        assert_eq!(l.notice(&leaving.leave(), 2_000), None);
        assert!(l.is_down(&m[1]), "known down at once, not after a TTL");
        // A ping saying "you are down" reaches it before it exits: it does
        // not refute.
        assert_eq!(leaving.told_down(l.down_at(&m[1]).unwrap()), None);
        // The restarted node's Up beats it.
        let back = Liveness::new(m[1].clone(), 90, 15_000);
        l.notice(&back.announce(), 30_000);
        assert!(!l.is_down(&m[1]));
    }

    #[test]
    fn ring_neighbours_take_over_first() {
        let m = ids(20);
        let me = &m[0];
        let mut l = Liveness::new(me.clone(), 1, 15_000);
        let nb = ring_neighbours(me, &m, WATCH_SIDE);
        l.tick(&nb, 0);
        let far = m.iter().find(|x| *x != me && !nb.contains(x)).unwrap();
        let down = |node: &NodeId| Notice::Down {
            node: node.clone(),
            inc: 0,
            by: m[5].clone(),
        };
        l.notice(&down(&nb[0]), 10_000);
        l.notice(&down(far), 10_000);
        // Claims seen before the notice: a watcher drops them at once, any
        // other node a little later.
        assert!(!l.trusts(&nb[0], 5_000, 10_000, || F));
        assert!(l.trusts(far, 5_000, 10_000, || F));
        assert!(l.trusts(far, 5_000, 10_000 + FAR_TAKEOVER_DELAY_MS - 1, || F));
        assert!(!l.trusts(far, 5_000, 10_000 + FAR_TAKEOVER_DELAY_MS, || F));
        // A claim seen after the notice holds a TTL wherever it is.
        assert!(l.trusts(far, 12_000, 26_999, || F));
        assert!(!l.trusts(far, 12_000, 27_000, || F));
        // A run back in the queue: a neighbour of its last holder (or the
        // holder) takes it at once, others after the delay.
        let other = m
            .iter()
            .filter(|x| *x != me && !nb.contains(x))
            .nth(1)
            .unwrap();
        assert!(l.may_take(None, 50_000, 50_000, || F));
        assert!(l.may_take(Some(me), 50_000, 50_000, || F));
        assert!(l.may_take(Some(&nb[1]), 50_000, 50_000, || F));
        assert!(!l.may_take(Some(other), 50_000, 50_000, || F));
        assert!(l.may_take(Some(other), 50_000, 50_000 + FAR_TAKEOVER_DELAY_MS, || F));
        assert!(
            l.may_take(Some(far), 50_000, 50_000, || F),
            "ordered by trusts"
        );
    }

    #[test]
    fn takeover_order_spreads_nodes_over_the_grid() {
        let req = RequestId::from_bytes([7; 8]);
        let members = 10_000;
        let mut delays: Vec<u64> = (0..2_000)
            .map(|i| takeover_delay_ms(&NodeId::new(format!("n{i}")), &req, 42, members))
            .collect();
        let max = FAR_TAKEOVER_DELAY_MS + members as u64 * TAKEOVER_STEP_MS;
        assert!(
            delays
                .iter()
                .all(|&d| (FAR_TAKEOVER_DELAY_MS..max).contains(&d))
        );
        // Spread over the whole range: the first of 2 000 nodes goes early,
        // the median about half way, and they are not in step.
        delays.sort_unstable();
        assert!(delays[0] < FAR_TAKEOVER_DELAY_MS + 20 * TAKEOVER_STEP_MS);
        let mid = delays[1_000] as f64 / max as f64;
        assert!((0.4..0.6).contains(&mid), "{mid}");
        let ties = delays.windows(2).filter(|w| w[1] - w[0] < 100).count();
        assert!(ties < 100, "{ties}");
        // Another run, another order.
        let n = NodeId::new("n0");
        assert_ne!(
            takeover_delay_ms(&n, &req, 42, members),
            takeover_delay_ms(&n, &req, 43, members)
        );
    }

    #[test]
    fn incarnations_order_notices() {
        let m = ids(3);
        let mut l = Liveness::new(m[0].clone(), 1, 15_000);
        let down = |inc| Notice::Down {
            node: m[1].clone(),
            inc,
            by: m[2].clone(),
        };
        let up = |inc| Notice::Up {
            node: m[1].clone(),
            inc,
        };
        l.notice(&up(5), 0);
        l.notice(&down(4), 0);
        assert!(!l.is_down(&m[1]), "a stale Down loses");
        l.notice(&down(5), 0);
        assert!(l.is_down(&m[1]));
        l.notice(&up(5), 0);
        assert!(l.is_down(&m[1]), "Down beats Up of the same incarnation");
        assert_eq!(l.down_at(&m[1]), Some(5));
        // Its ping says it is alive in 5: tell it so it refutes.
        assert_eq!(l.heard(&m[1], 5, 0), Some(5));
        l.notice(&up(6), 0);
        assert!(!l.is_down(&m[1]));
        assert_eq!(l.heard(&m[1], 6, 0), None);
    }

    #[test]
    fn a_node_declared_down_refutes_with_a_higher_incarnation() {
        let m = ids(2);
        let mut l = Liveness::new(m[0].clone(), 10, 15_000);
        let about_me = Notice::Down {
            node: m[0].clone(),
            inc: 10,
            by: m[1].clone(),
        };
        assert_eq!(
            l.notice(&about_me, 0),
            Some(Notice::Up {
                node: m[0].clone(),
                inc: 11
            })
        );
        assert_eq!(l.incarnation(), 11);
        // The same stale notice again changes nothing.
        assert_eq!(l.notice(&about_me, 0), None);
        assert_eq!(l.told_down(9), None);
        assert_eq!(l.told_down(11).map(|_| l.incarnation()), Some(12));
    }
}
