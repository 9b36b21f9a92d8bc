//! The node's network task: one libp2p swarm, driven by tokio.
//!
//! It owns the swarm and nothing else: documents stay with the agent, which
//! talks to this task through [`NetHandle`] (commands) and [`NetEvent`]s.
//! Here: listening, dialling (mDNS, static peers, addresses learned from
//! identify and the grid document, redialled on a timer with backoff),
//! gossip, and answering blob range requests from the blob store.

mod behaviour;
mod blob_codec;
mod peers;
mod transport;

pub mod fetch;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, identity::Keypair, mdns};
use pesc_protocol::NodeId;
use pesc_protocol::api::Traffic;
use pesc_protocol::wire::{
    Beat, BlobRequest, BlobResponse, DocKey, Gossip, SyncRequest, SyncResponse,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::blobs::BlobStore;
use behaviour::{Behaviour, BehaviourEvent};
use peers::PeerBook;

/// How the network is set up.
pub struct NetConfig {
    pub key: Keypair,
    pub psk: [u8; 32],
    pub grid_id: String,
    pub listen: Vec<Multiaddr>,
    /// Static peers (with or without `/p2p/ID`).
    pub peers: Vec<Multiaddr>,
    pub mdns: bool,
    /// Where to write the addresses the node listens on (`p2p.addr`).
    pub addr_file: PathBuf,
}

/// Commands to the network task.
pub enum NetCmd {
    /// Sends a sync request; failures come back as [`NetEvent::SyncFailed`]
    /// unless `reply` is given.
    Sync {
        peer: PeerId,
        req: SyncRequest,
        reply: Option<oneshot::Sender<Result<SyncResponse, String>>>,
    },
    RespondSync {
        channel: ResponseChannel<SyncResponse>,
        resp: SyncResponse,
    },
    Blob {
        peer: PeerId,
        req: BlobRequest,
        reply: oneshot::Sender<Result<BlobResponse, String>>,
    },
    RespondBlob {
        channel: ResponseChannel<BlobResponse>,
        resp: BlobResponse,
    },
    Publish(Gossip),
    /// Addresses of a grid node (from the grid document).
    AddPeer {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    /// The grid nodes to keep connections to (this node's sync links).
    Links(BTreeSet<PeerId>),
}

/// What the network task tells the agent.
pub enum NetEvent {
    Connected(NodeId),
    Disconnected(NodeId),
    /// The node's listen addresses changed.
    Listening(Vec<String>),
    Sync {
        from: NodeId,
        req: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    },
    /// A sync message sent without a reply channel was not delivered.
    SyncFailed {
        peer: NodeId,
        doc: DocKey,
    },
    Gossip {
        from: NodeId,
        msg: Gossip,
    },
    /// A neighbour answered this node's ping.
    Pong {
        from: NodeId,
        beat: Box<Beat>,
    },
}

/// Payload bytes per channel, counted where they are sent and received.
#[derive(Default)]
pub struct NetStats {
    sync_sent: AtomicU64,
    sync_received: AtomicU64,
    gossip_sent: AtomicU64,
    gossip_received: AtomicU64,
    blob_sent: AtomicU64,
    blob_received: AtomicU64,
    /// Blocks or trees from peers that failed the hash check.
    pub blob_rejected: AtomicU64,
}

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

impl NetStats {
    pub fn snapshot(&self) -> Traffic {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Traffic {
            sync_sent: g(&self.sync_sent),
            sync_received: g(&self.sync_received),
            gossip_sent: g(&self.gossip_sent),
            gossip_received: g(&self.gossip_received),
            blob_sent: g(&self.blob_sent),
            blob_received: g(&self.blob_received),
            blob_rejected: g(&self.blob_rejected),
        }
    }
}

fn sync_bytes(r: &SyncRequest) -> usize {
    match r {
        SyncRequest::Sync { msg, .. } => msg.len(),
        SyncRequest::Push { data, .. } => data.len(),
        SyncRequest::Ping(_)
        | SyncRequest::Hold { .. }
        | SyncRequest::LogTail { .. }
        | SyncRequest::Status => 0,
    }
}

fn blob_bytes(r: &BlobResponse) -> usize {
    match r {
        BlobResponse::Block { data } => data.len(),
        BlobResponse::Tree { tree, .. } => tree.len(),
        _ => 0,
    }
}

/// How the rest of the node reaches the network task.
#[derive(Clone)]
pub struct NetHandle {
    tx: mpsc::UnboundedSender<NetCmd>,
    connected: watch::Receiver<BTreeSet<PeerId>>,
    pub stats: Arc<NetStats>,
    ips: Arc<std::sync::Mutex<Ips>>,
}

/// The IP addresses connections were made over: each peer's (as this node
/// reaches it) and this node's own (as peers reach it).
#[derive(Default)]
struct Ips {
    peers: std::collections::HashMap<PeerId, std::net::IpAddr>,
    /// Where peers reached this node last (a listener's local address).
    own: Option<std::net::IpAddr>,
    /// Addresses this node listens on.
    listen: Vec<std::net::IpAddr>,
}

/// The IP of a multiaddr, if it has one.
fn ip_of(a: &Multiaddr) -> Option<std::net::IpAddr> {
    a.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    })
}

impl NetHandle {
    pub fn send(&self, cmd: NetCmd) {
        let _ = self.tx.send(cmd);
    }

    /// Peers with an open connection now.
    pub fn connected(&self) -> BTreeSet<PeerId> {
        self.connected.borrow().clone()
    }

    /// The IP this node reaches a peer at (its last connection's).
    pub fn peer_ip(&self, peer: &PeerId) -> Option<std::net::IpAddr> {
        self.ips.lock().ok()?.peers.get(peer).copied()
    }

    /// An IP other nodes reach this node at: the one a peer's connection
    /// came in on, else an address it listens on that names one host.
    pub fn own_ip(&self) -> Option<std::net::IpAddr> {
        let ips = self.ips.lock().ok()?;
        ips.own.or_else(|| {
            ips.listen
                .iter()
                .find(|ip| !ip.is_unspecified() && !ip.is_loopback())
                .or_else(|| ips.listen.iter().find(|ip| !ip.is_unspecified()))
                .copied()
        })
    }

    /// Sends a sync request and waits for the answer.
    pub async fn ask_sync(&self, peer: PeerId, req: SyncRequest) -> Result<SyncResponse, String> {
        let (tx, rx) = oneshot::channel();
        self.send(NetCmd::Sync {
            peer,
            req,
            reply: Some(tx),
        });
        rx.await
            .map_err(|_| "the network task stopped".to_string())?
    }

    /// Asks a peer for a byte range of a blob.
    pub async fn ask_blob(&self, peer: PeerId, req: BlobRequest) -> Result<BlobResponse, String> {
        let (tx, rx) = oneshot::channel();
        self.send(NetCmd::Blob {
            peer,
            req,
            reply: tx,
        });
        rx.await
            .map_err(|_| "the network task stopped".to_string())?
    }
}

/// Parses a node id into a libp2p peer id.
pub fn peer_of(node: &NodeId) -> Option<PeerId> {
    node.as_str().parse().ok()
}

fn node_of(peer: &PeerId) -> NodeId {
    NodeId::new(peer.to_string())
}

/// Starts the swarm and its task.
pub fn start(
    cfg: NetConfig,
    blobs: Arc<BlobStore>,
) -> Result<(NetHandle, mpsc::Receiver<NetEvent>)> {
    let me = cfg.key.public().to_peer_id();
    let transport = transport::build(&cfg.key, cfg.psk)?;
    let behaviour = Behaviour::new(&cfg.key, cfg.mdns)?;
    let mut swarm = Swarm::new(
        transport,
        behaviour,
        me,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(3600)),
    );
    let topic = gossipsub::IdentTopic::new(format!("pesc/{}", cfg.grid_id));
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .context("subscribing to the grid's gossip topic")?;
    let mut listening = 0;
    for addr in &cfg.listen {
        match swarm.listen_on(addr.clone()) {
            Ok(_) => listening += 1,
            Err(e) => {
                // The default port may be taken (a second node on this machine):
                // any free port still works for peers that learn it.
                let fallback = with_port_zero(addr);
                tracing::warn!("cannot listen on {addr}: {e}; trying {fallback}");
                swarm
                    .listen_on(fallback.clone())
                    .with_context(|| format!("cannot listen on {addr} nor on {fallback}"))?;
                listening += 1;
            }
        }
    }
    if listening == 0 {
        anyhow::bail!("the node must listen on at least one address (--listen)");
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::channel(EVENTS);
    let (connected_tx, connected) = watch::channel(BTreeSet::new());
    let stats = Arc::new(NetStats::default());
    let ips = Arc::new(std::sync::Mutex::new(Ips::default()));
    let mut book = PeerBook::new(me);
    for a in &cfg.peers {
        book.add_static(a.clone());
    }
    let task = NetTask {
        swarm,
        topic,
        me,
        book,
        events: events_tx,
        outbox: std::collections::VecDeque::new(),
        cmd_tx: tx.clone(),
        blobs,
        pending_sync: HashMap::new(),
        pending_blob: HashMap::new(),
        connections: HashMap::new(),
        connected_tx,
        listen: BTreeSet::new(),
        addr_file: cfg.addr_file,
        stats: stats.clone(),
        ips: ips.clone(),
    };
    tokio::spawn(task.run(rx));
    Ok((
        NetHandle {
            tx,
            connected,
            stats,
            ips,
        },
        events_rx,
    ))
}

fn with_port_zero(addr: &Multiaddr) -> Multiaddr {
    use libp2p::multiaddr::Protocol;
    addr.iter()
        .map(|p| match p {
            Protocol::Tcp(_) => Protocol::Tcp(0),
            p => p,
        })
        .collect()
}

/// Network events waiting for the agent at most.
const EVENTS: usize = 1024;

type SyncReply = Option<oneshot::Sender<Result<SyncResponse, String>>>;

struct NetTask {
    swarm: Swarm<Behaviour>,
    topic: gossipsub::IdentTopic,
    me: PeerId,
    book: PeerBook,
    events: mpsc::Sender<NetEvent>,
    /// Events of the swarm event being handled, for the agent.
    outbox: std::collections::VecDeque<NetEvent>,
    cmd_tx: mpsc::UnboundedSender<NetCmd>,
    blobs: Arc<BlobStore>,
    /// Sync requests in flight: the peer, the document (none for a ping), the reply.
    pending_sync: HashMap<OutboundRequestId, (PeerId, Option<DocKey>, SyncReply)>,
    pending_blob: HashMap<OutboundRequestId, oneshot::Sender<Result<BlobResponse, String>>>,
    connections: HashMap<PeerId, u32>,
    connected_tx: watch::Sender<BTreeSet<PeerId>>,
    listen: BTreeSet<Multiaddr>,
    addr_file: PathBuf,
    stats: Arc<NetStats>,
    ips: Arc<std::sync::Mutex<Ips>>,
}

impl NetTask {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<NetCmd>) {
        let mut redial = tokio::time::interval(Duration::from_millis(500));
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.swarm_event(ev),
                cmd = commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => break,
                },
                _ = redial.tick() => {
                    for opts in self.book.due(&self.connections) {
                        if let Err(e) = self.swarm.dial(opts) {
                            tracing::debug!("dial: {e}");
                        }
                    }
                }
            }
            // The channel to the agent is bounded: while the agent is
            // behind, the swarm waits (and with it the peers' streams),
            // instead of events piling up in memory.
            while let Some(ev) = self.outbox.pop_front() {
                if self.events.send(ev).await.is_err() {
                    return;
                }
            }
        }
    }

    fn command(&mut self, c: NetCmd) {
        let b = self.swarm.behaviour_mut();
        match c {
            NetCmd::Sync { peer, req, reply } => {
                let doc = match &req {
                    SyncRequest::Sync { doc, .. } | SyncRequest::Push { doc, .. } => {
                        Some(doc.clone())
                    }
                    SyncRequest::Ping(_)
                    | SyncRequest::Hold { .. }
                    | SyncRequest::LogTail { .. }
                    | SyncRequest::Status => None,
                };
                add(&self.stats.sync_sent, sync_bytes(&req));
                let id = b.sync.send_request(&peer, req);
                self.pending_sync.insert(id, (peer, doc, reply));
            }
            NetCmd::RespondSync { channel, resp } => {
                let _ = b.sync.send_response(channel, resp);
            }
            NetCmd::Blob { peer, req, reply } => {
                // Holders named by the documents may not be linked to this
                // node: dial them (the request waits for the connection).
                if !self.connections.contains_key(&peer)
                    && let Some(opts) = self.book.dial_now(&peer)
                {
                    let _ = self.swarm.dial(opts);
                }
                let b = self.swarm.behaviour_mut();
                let id = b.blobs.send_request(&peer, req);
                self.pending_blob.insert(id, reply);
            }
            NetCmd::RespondBlob { channel, resp } => {
                add(&self.stats.blob_sent, blob_bytes(&resp));
                let _ = b.blobs.send_response(channel, resp);
            }
            NetCmd::Publish(msg) => match serde_json::to_vec(&msg) {
                Ok(bytes) => {
                    add(&self.stats.gossip_sent, bytes.len());
                    if let Err(e) = b.gossipsub.publish(self.topic.clone(), bytes) {
                        // No subscribed peer yet is normal for a lone node.
                        tracing::trace!("gossip not sent: {e}");
                    }
                }
                Err(e) => tracing::error!("cannot encode gossip: {e}"),
            },
            NetCmd::AddPeer { peer, addrs } => {
                if peer != self.me {
                    self.book.add_known(peer, addrs, false);
                }
            }
            NetCmd::Links(links) => self.book.set_links(links),
        }
    }

    /// Queues an event for the agent; the run loop hands it over before
    /// it polls the swarm again.
    fn emit(&mut self, ev: NetEvent) {
        self.outbox.push_back(ev);
    }

    /// Records the IPs a connection was made over.
    fn note_ips(&self, peer: PeerId, endpoint: &libp2p::core::ConnectedPoint) {
        let Ok(mut ips) = self.ips.lock() else {
            return;
        };
        if let Some(ip) = ip_of(endpoint.get_remote_address()) {
            ips.peers.insert(peer, ip);
        }
        if let libp2p::core::ConnectedPoint::Listener { local_addr, .. } = endpoint
            && let Some(ip) = ip_of(local_addr).filter(|ip| !ip.is_unspecified())
        {
            ips.own = Some(ip);
        }
    }

    fn publish_connected(&self) {
        let set: BTreeSet<PeerId> = self.connections.keys().copied().collect();
        self.connected_tx.send_replace(set);
    }

    fn listen_changed(&mut self) {
        if let Ok(mut ips) = self.ips.lock() {
            ips.listen = self.listen.iter().filter_map(ip_of).collect();
        }
        let addrs: Vec<String> = self
            .listen
            .iter()
            .map(|a| format!("{a}/p2p/{}", self.me))
            .collect();
        let text = addrs.join("\n") + "\n";
        if let Err(e) = crate::blobs::write_atomic(&self.addr_file, text.as_bytes()) {
            tracing::warn!("cannot write {}: {e}", self.addr_file.display());
        }
        self.emit(NetEvent::Listening(addrs));
    }

    fn swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } if peers::usable(&address) => {
                tracing::info!("listening for peers on {address}/p2p/{}", self.me);
                self.listen.insert(address);
                self.listen_changed();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } if self.listen.remove(&address) => {
                self.listen_changed();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                self.book.connected(peer_id, &endpoint);
                self.note_ips(peer_id, &endpoint);
                let n = self.connections.entry(peer_id).or_default();
                *n += 1;
                if *n == 1 {
                    tracing::info!(
                        "connected to {peer_id} at {}",
                        endpoint.get_remote_address()
                    );
                    self.publish_connected();
                    self.emit(NetEvent::Connected(node_of(&peer_id)));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                if num_established == 0 && self.connections.remove(&peer_id).is_some() {
                    tracing::info!(
                        "disconnected from {peer_id}{}",
                        cause.map(|c| format!(": {c}")).unwrap_or_default()
                    );
                    self.book.disconnected(peer_id);
                    self.publish_connected();
                    self.emit(NetEvent::Disconnected(node_of(&peer_id)));
                } else if let Some(n) = self.connections.get_mut(&peer_id) {
                    *n = num_established;
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!("cannot reach {peer_id:?}: {error}");
                self.book.dial_failed(peer_id);
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                // Wrong grid key, or garbage: the handshake fails here.
                tracing::debug!("refused a connection from {send_back_addr}: {error}");
            }
            SwarmEvent::Behaviour(b) => self.behaviour_event(b),
            _ => {}
        }
    }

    fn behaviour_event(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                for (peer, addr) in list {
                    if peer != self.me && peers::usable(&addr) {
                        tracing::debug!("mDNS found {peer} at {addr}");
                        self.book.add_known(peer, vec![addr], true);
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(list)) => {
                for (peer, addr) in list {
                    self.book.expire_mdns(peer, &addr);
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let addrs = info
                    .listen_addrs
                    .into_iter()
                    .filter(peers::usable)
                    .collect();
                self.book.add_known(peer_id, addrs, false);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. }) => {
                add(&self.stats.gossip_received, message.data.len());
                let Some(source) = message.source else {
                    return;
                };
                match serde_json::from_slice::<Gossip>(&message.data) {
                    Ok(msg) => self.emit(NetEvent::Gossip {
                        from: node_of(&source),
                        msg,
                    }),
                    Err(e) => tracing::debug!("garbled gossip from {source}: {e}"),
                }
            }
            BehaviourEvent::Sync(ev) => self.sync_event(ev),
            BehaviourEvent::Blobs(ev) => self.blob_event(ev),
            _ => {}
        }
    }

    fn sync_event(&mut self, ev: request_response::Event<SyncRequest, SyncResponse>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message { peer, message, .. } => match message {
                Message::Request {
                    request, channel, ..
                } => {
                    add(&self.stats.sync_received, sync_bytes(&request));
                    self.emit(NetEvent::Sync {
                        from: node_of(&peer),
                        req: request,
                        channel,
                    })
                }
                Message::Response {
                    request_id,
                    response,
                } => match (self.pending_sync.remove(&request_id), response) {
                    (Some((_, _, Some(reply))), response) => {
                        let _ = reply.send(Ok(response));
                    }
                    (Some((peer, _, None)), SyncResponse::Pong(beat)) => {
                        self.emit(NetEvent::Pong {
                            from: node_of(&peer),
                            beat,
                        })
                    }
                    _ => {}
                },
            },
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((peer, doc, reply)) = self.pending_sync.remove(&request_id) {
                    match reply {
                        Some(r) => {
                            let _ = r.send(Err(error.to_string()));
                        }
                        // An unanswered ping: the liveness clock judges it.
                        None => {
                            let Some(doc) = doc else { return };
                            tracing::debug!("sync of {doc} with {peer} failed: {error}");
                            self.emit(NetEvent::SyncFailed {
                                peer: node_of(&peer),
                                doc,
                            });
                        }
                    }
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!("sync request from {peer} failed: {error}");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn blob_event(&mut self, ev: request_response::Event<BlobRequest, BlobResponse>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message { message, .. } => match message {
                Message::Request {
                    request, channel, ..
                } => {
                    let blobs = self.blobs.clone();
                    let tx = self.cmd_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let resp = blobs.serve(&request);
                        let _ = tx.send(NetCmd::RespondBlob { channel, resp });
                    });
                }
                Message::Response {
                    request_id,
                    response,
                } => {
                    add(&self.stats.blob_received, blob_bytes(&response));
                    if let Some(reply) = self.pending_blob.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.pending_blob.remove(&request_id) {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
            _ => {}
        }
    }
}
