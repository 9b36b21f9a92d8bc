//! Who to dial, and when: known peers (mDNS, identify, the grid document),
//! static addresses (`--peer`, `peers` in node.toml), with backoff.
//!
//! mDNS announces a peer once; after an outage nothing announces it again,
//! so every wanted peer that is not connected is redialled on a timer. Once
//! the grid's membership is known, the wanted peers are this node's sync
//! links (ring neighbours and a few long links) and pinned static peers, so
//! a node keeps O(1) connections however large the grid.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// A peer only heard of (not static) is forgotten after this many failed dials in a row.
const FORGET_AFTER: u32 = 60;

/// Whether an address is worth dialling or advertising: not unspecified,
/// not Docker's default bridge (the same on every Docker host).
pub fn usable(addr: &Multiaddr) -> bool {
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_unspecified() && ip.octets() != [172, 17, 0, 1],
        Protocol::Ip6(ip) => !ip.is_unspecified(),
        _ => true,
    })
}

fn without_p2p(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut peer = None;
    let a = addr
        .iter()
        .filter(|p| {
            if let Protocol::P2p(id) = p {
                peer = Some(*id);
                false
            } else {
                true
            }
        })
        .collect();
    (a, peer)
}

struct Retry {
    next: Instant,
    failures: u32,
}

impl Retry {
    fn now() -> Retry {
        Retry {
            next: Instant::now(),
            failures: 0,
        }
    }
    /// A dial goes out now: until a connection resets it, the next one
    /// waits twice as long as the last (1 s up to 5 s).
    fn dialled(&mut self) {
        let wait = FIRST_RETRY
            .saturating_mul(1 << self.failures.min(5))
            .min(MAX_RETRY);
        self.next = Instant::now() + wait;
        self.failures += 1;
    }
}

struct Known {
    addrs: BTreeSet<Multiaddr>,
    mdns: BTreeSet<Multiaddr>,
    pinned: bool,
    retry: Retry,
}

struct StaticAddr {
    addr: Multiaddr,
    /// The peer found behind it, once connected.
    peer: Option<PeerId>,
    retry: Retry,
}

pub struct PeerBook {
    me: PeerId,
    known: HashMap<PeerId, Known>,
    statics: Vec<StaticAddr>,
    /// The grid's sync links for this node (see `pesc_protocol::liveness`):
    /// once known, other peers are not dialled (they may dial us).
    links: Option<BTreeSet<PeerId>>,
}

impl PeerBook {
    pub fn new(me: PeerId) -> Self {
        PeerBook {
            me,
            known: HashMap::new(),
            statics: Vec::new(),
            links: None,
        }
    }

    /// The peers to keep connections to, from the grid's membership.
    pub fn set_links(&mut self, links: BTreeSet<PeerId>) {
        self.links = Some(links);
    }

    /// A configured peer address; with `/p2p/ID` it pins that peer.
    pub fn add_static(&mut self, addr: Multiaddr) {
        let (bare, peer) = without_p2p(&addr);
        match peer {
            Some(p) if p != self.me => {
                self.add_known(p, vec![bare], false);
                if let Some(k) = self.known.get_mut(&p) {
                    k.pinned = true;
                }
            }
            Some(_) => {}
            None => self.statics.push(StaticAddr {
                addr: bare,
                peer: None,
                retry: Retry::now(),
            }),
        }
    }

    pub fn add_known(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, from_mdns: bool) {
        if peer == self.me {
            return;
        }
        let k = self.known.entry(peer).or_insert_with(|| Known {
            addrs: BTreeSet::new(),
            mdns: BTreeSet::new(),
            pinned: false,
            retry: Retry::now(),
        });
        for a in addrs {
            let (bare, _) = without_p2p(&a);
            if !usable(&bare) {
                continue;
            }
            if from_mdns {
                k.mdns.insert(bare.clone());
                // Just announced: worth a try now even if it failed before.
                k.retry.next = Instant::now();
            }
            k.addrs.insert(bare);
        }
    }

    pub fn expire_mdns(&mut self, peer: PeerId, addr: &Multiaddr) {
        if let Some(k) = self.known.get_mut(&peer) {
            k.mdns.remove(addr);
        }
    }

    pub fn connected(&mut self, peer: PeerId, endpoint: &ConnectedPoint) {
        if let Some(k) = self.known.get_mut(&peer) {
            k.retry = Retry::now();
        }
        if let ConnectedPoint::Dialer { address, .. } = endpoint {
            let (bare, _) = without_p2p(address);
            for s in self.statics.iter_mut().filter(|s| s.addr == bare) {
                s.peer = Some(peer);
                s.retry = Retry::now();
            }
        }
    }

    pub fn disconnected(&mut self, peer: PeerId) {
        if let Some(k) = self.known.get_mut(&peer) {
            k.retry = Retry::now();
            k.retry.next = Instant::now() + FIRST_RETRY;
        }
    }

    pub fn dial_failed(&mut self, peer: Option<PeerId>) {
        if let Some(p) = peer
            && let Some(k) = self.known.get_mut(&p)
            && !k.pinned
            && k.mdns.is_empty()
            && k.retry.failures >= FORGET_AFTER
        {
            self.known.remove(&p);
        }
    }

    /// Dials that are due now. Each dial uses a new local port, so two
    /// nodes dialling each other at the same moment do not collide.
    /// How to dial a known peer now (to fetch a blob from a node that is
    /// not one of this node's links).
    pub fn dial_now(&self, peer: &PeerId) -> Option<DialOpts> {
        let k = self.known.get(peer)?;
        (!k.addrs.is_empty()).then(|| {
            DialOpts::peer_id(*peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .addresses(k.addrs.iter().cloned().collect())
                .allocate_new_port()
                .build()
        })
    }

    pub fn due(&mut self, connected: &HashMap<PeerId, u32>) -> Vec<DialOpts> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (peer, k) in self.known.iter_mut() {
            // Before the grid's membership is known, everyone found is wanted.
            let wanted = k.pinned || self.links.as_ref().is_none_or(|l| l.contains(peer));
            if !wanted || connected.contains_key(peer) || k.addrs.is_empty() || k.retry.next > now {
                continue;
            }
            k.retry.dialled();
            out.push(
                DialOpts::peer_id(*peer)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .addresses(k.addrs.iter().cloned().collect())
                    .allocate_new_port()
                    .build(),
            );
        }
        for s in self.statics.iter_mut() {
            let up = s.peer.is_some_and(|p| connected.contains_key(&p));
            if up || s.retry.next > now {
                continue;
            }
            s.retry.dialled();
            out.push(
                DialOpts::unknown_peer_id()
                    .address(s.addr.clone())
                    .allocate_new_port()
                    .build(),
            );
        }
        out
    }
}
