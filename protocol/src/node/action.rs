//! What a node asks its driver to do.

use std::collections::{BTreeSet, HashSet};

use crate::domain::Domain;
use crate::liveness::Notice;
use crate::model::{Gpu, Process, RunLimits, SharedFile};
use crate::wire::{Beat, DocKey};
use crate::{BlobHash, NodeId, RequestId};

use super::AttemptKey;
use super::persist::DocWrite;

/// One thing for the driver to do, in the order polled.
#[derive(Debug)]
pub enum Action {
    /// Run this attempt (its events come back as [`super::RunEvent`]s).
    Start(Box<Job>),
    /// Stop this attempt's program (it ends with a `Finished` event).
    Stop(AttemptKey),
    /// Suspend this attempt's program (`on`: its processes stop, its
    /// container pauses) or let it go on.
    Suspend { key: AttemptKey, on: bool },
    /// Send a sync message to a peer.
    Sync {
        to: NodeId,
        doc: DocKey,
        msg: Vec<u8>,
    },
    /// Send a heartbeat to a neighbour (it answers with its own).
    Ping { to: NodeId, beat: Box<Beat> },
    /// Publish a liveness notice on gossip.
    Publish(Notice),
    /// A node's last known addresses: dial it.
    Dial { node: NodeId, addrs: Vec<String> },
    /// Keep connections to these nodes (the sync links).
    Links(BTreeSet<NodeId>),
    /// Write these document changes in one transaction.
    Persist(Vec<DocWrite>),
    /// The owner's policy is now this (an admin's setting for this node
    /// changed it): the probes read by it.
    Policy(super::Policy),
    /// Cut running containers to this CPU share (percent), or give them
    /// back all of it (`None`).
    Throttle(Option<u32>),
    /// A request is finished and nothing of it runs here: its working
    /// files (checkpoints) can go.
    RequestDone(RequestId),
    /// The blob store may evict what it likes except these.
    EvictBlobs(HashSet<BlobHash>),
    /// Grid members believed alive now (this node included).
    LiveNodes(usize),
    /// Requests changed: the node's change counter is now this.
    Changed(u64),
    /// This request changed (its version is now this): whoever waits on
    /// it in particular is woken, nobody else.
    RequestChanged(RequestId, u64),
    /// A stop is complete: runs recorded, the grid told; the node may exit.
    Stopped,
}

/// An attempt to run, with everything the runner needs to know.
#[derive(Debug, Clone)]
pub struct Job {
    pub key: AttemptKey,
    pub node: NodeId,
    pub process: Process,
    pub world_size: u32,
    /// Its `--parameters`: the request's, then its sweep values.
    pub parameters: Vec<String>,
    /// Environment besides the header's: `PESC_SEED`, `PESC_PARAM_*`.
    pub env: Vec<(String, String)>,
    /// Which of the node's slot workspaces to use.
    pub slot: usize,
    /// Shared files the run needs, each with the nodes known to hold it.
    pub inputs: Vec<(SharedFile, Vec<NodeId>)>,
    /// The rank's newest checkpoint recorded in the grid: (blob, holders,
    /// node that made it).
    pub restore: Option<(BlobHash, Vec<NodeId>, NodeId)>,
    /// How many other nodes must keep the results before the run is done.
    pub copies: usize,
    /// The environment to run in (its image is built there if need be).
    pub domain: Option<Domain>,
    /// Memory and CPUs per run, as the request asks.
    pub limits: RunLimits,
    /// The GPUs this attempt holds.
    pub gpus: Vec<Gpu>,
    /// A rank of a parallel request: where its rank 0 is; set when the
    /// gang has gathered and the rank starts.
    pub gang: Option<GangJob>,
    /// Whether to insert PESC's header into a Python or R program that
    /// reads no arguments.
    pub header: crate::header::HeaderMode,
}

/// Where a parallel request's rank finds the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GangJob {
    /// The node running rank 0 (the driver turns it into the address this
    /// node reaches it at).
    pub master: NodeId,
    /// The port rank 0 listens on (`gang::master_port`).
    pub port: u16,
    pub local_rank: u32,
    pub local_world_size: u32,
}

/// A new request to hand whole to a few peers, so it survives this node.
#[derive(Debug, Clone)]
pub struct Push {
    pub peers: Vec<NodeId>,
    pub doc: DocKey,
    pub data: Vec<u8>,
    /// Blobs the peers must hold too (the program's code).
    pub blobs: Vec<BlobHash>,
}
