//! Messages nodes exchange. Sans-I/O: plain serde types; the node picks the
//! encodings (CBOR for request-response, JSON for gossip).
//!
//! Three channels:
//! - **sync** (request-response): Automerge sync messages, one document per
//!   message; the "push" a node makes before it acknowledges a submit; and
//!   the ping a node sends its ring neighbours every heartbeat period;
//! - **blob** (request-response): who has a blob, its tree, and its blocks,
//!   by BLAKE3 hash;
//! - **gossip** (gossipsub, one topic per grid): liveness notices only (a node
//!   declared down, a node back up; see [`crate::liveness`]). Everything
//!   durable travels through document sync.

use serde::{Deserialize, Serialize};

use crate::ids::{BlobHash, NodeId, RequestId};
use crate::liveness::Notice;

/// Name of a replicated document: `grid` or `req/<request id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DocKey {
    Grid,
    Request(RequestId),
}

impl DocKey {
    /// The key the store files the document under.
    pub fn store_key(&self) -> String {
        match self {
            DocKey::Grid => "grid".into(),
            DocKey::Request(id) => format!("req/{id}"),
        }
    }

    pub fn from_store_key(s: &str) -> Option<DocKey> {
        if s == "grid" {
            return Some(DocKey::Grid);
        }
        s.strip_prefix("req/")
            .and_then(|id| id.parse().ok())
            .map(DocKey::Request)
    }
}

impl std::fmt::Display for DocKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.store_key())
    }
}

/// A request on the sync channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SyncRequest {
    /// One Automerge sync message for one document.
    Sync {
        doc: DocKey,
        #[serde(with = "serde_bytes")]
        msg: Vec<u8>,
    },
    /// "Keep a copy of this": the whole document and the blobs it needs. The
    /// receiver merges the document, fetches the blobs from the sender, and
    /// answers [`SyncResponse::Held`] only once both are on its disk.
    Push {
        doc: DocKey,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        blobs: Vec<BlobHash>,
    },
    /// A heartbeat to a ring neighbour; answered with [`SyncResponse::Pong`].
    Ping(Box<Beat>),
    /// "Keep a copy of these blobs" (a run's results, a checkpoint): the
    /// receiver fetches them (from the sender first) and answers
    /// [`SyncResponse::Held`] once they are all on its disk.
    Hold { blobs: Vec<BlobHash> },
    /// "What has this run written since `offset`": a live log of a run the
    /// receiver runs now, for a user following it on another node.
    /// Answered with [`SyncResponse::Log`].
    LogTail {
        request: RequestId,
        rank: u32,
        /// Standard error instead of standard output.
        stderr: bool,
        offset: u64,
    },
    /// "How are you now": the receiver's live state, for a Nodes page on a
    /// node that is not its ring neighbour (heartbeats go to neighbours
    /// only). Answered with [`SyncResponse::Status`].
    Status,
}

/// The most log bytes one [`SyncResponse::Log`] carries.
pub const LOG_CHUNK: usize = 256 * 1024;

/// The answer on the sync channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SyncResponse {
    /// The sync message was applied (or ignored as stale).
    Ack,
    /// The pushed document and blobs are durable on the receiver.
    Held,
    /// The message was refused, with a sentence saying why.
    Refused(String),
    /// The answer to a ping: the receiver's own heartbeat.
    Pong(Box<Beat>),
    /// Log bytes from the offset asked (at most [`LOG_CHUNK`]), the attempt
    /// they belong to (its epoch), and whether it still runs here (when
    /// not, the rest is in the log's blob, named in the request document).
    Log {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        epoch: u32,
        running: bool,
    },
    /// The receiver's live state (the answer to [`SyncRequest::Status`]).
    Status(Box<NodeStatus>),
}

/// A question on the blob channel. Blobs move in whole blocks of
/// [`crate::blob_tree::BLOCK_LEN`] bytes, each checked on arrival against the
/// blob's tree (see [`crate::blob_tree`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BlobRequest {
    /// "Who has": what the peer holds of this blob.
    Has { hash: BlobHash },
    /// The blob's tree (its block values), to check blocks against.
    Tree { hash: BlobHash },
    /// One block.
    Block { hash: BlobHash, index: u64 },
}

/// What a peer holds of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Holding {
    None,
    /// The whole blob.
    All {
        total: u64,
    },
    /// Some blocks of it, being downloaded: a bitmap, block `i` in bit
    /// `i % 8` of byte `i / 8`.
    Part {
        total: u64,
        #[serde(with = "serde_bytes")]
        have: Vec<u8>,
    },
}

impl Holding {
    /// Whether the holder can serve block `index`.
    pub fn has_block(&self, index: u64) -> bool {
        match self {
            Holding::None => false,
            Holding::All { total } => index < crate::blob_tree::block_count(*total),
            Holding::Part { have, .. } => have
                .get((index / 8) as usize)
                .is_some_and(|b| b & (1 << (index % 8)) != 0),
        }
    }

    pub fn total(&self) -> Option<u64> {
        match self {
            Holding::None => None,
            Holding::All { total } | Holding::Part { total, .. } => Some(*total),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BlobResponse {
    Has(Holding),
    Tree {
        total: u64,
        #[serde(with = "serde_bytes")]
        tree: Vec<u8>,
    },
    Block {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    NotFound,
    Refused(String),
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A node's live state, as announced in its heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub slots: u32,
    pub slots_free: u32,
    /// One-minute load average divided by the number of CPUs.
    pub load: f32,
    /// Its memory (MiB): all, and what programs may still take.
    #[serde(default)]
    pub mem_total_mb: Option<u64>,
    #[serde(default)]
    pub mem_free_mb: Option<u64>,
    /// Addresses the node listens on, as multiaddrs.
    pub addrs: Vec<String>,
    /// Its GPUs now.
    #[serde(default)]
    pub gpus: Vec<crate::model::Gpu>,
    /// Rooms it serves besides General.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Kept to its named room: it does not serve General.
    #[serde(default)]
    pub private: bool,
    /// It runs user code in containers.
    #[serde(default)]
    pub containers: bool,
    /// How it walls runs in.
    #[serde(default)]
    pub isolation: crate::isolation::IsolationLevel,
    /// What its isolation has, in words ("uid per slot, landlock 7, …").
    #[serde(default)]
    pub isolation_detail: String,
    /// The owner's policy keeps it from taking runs now.
    #[serde(default)]
    pub paused: bool,
    /// Why, in words (`Pause`'s display).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
    /// Its owner is at the desktop (the node is paused for them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owner_here: bool,
    /// Memory (MiB) one more run may take under its owner's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_room_mb: Option<u64>,
    /// Its runs suspended for its owner now.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub suspended: u32,
    /// Why its last look left a run for lack of memory or CPU, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_room: Option<String>,
    /// Domain images it built or is building.
    #[serde(default)]
    pub builds: Vec<crate::model::DomainBuild>,
}

impl NodeStatus {
    /// A peer's status made safe to keep and show: free text cut to 256
    /// bytes, lists to 64 entries, free slots to its slots.
    pub fn bounded(mut self) -> NodeStatus {
        const TEXT: usize = 256;
        const ITEMS: usize = 64;
        let cut = |s: &mut String| {
            if s.len() > TEXT {
                let mut end = TEXT;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s.truncate(end);
            }
        };
        cut(&mut self.name);
        cut(&mut self.isolation_detail);
        self.addrs.truncate(ITEMS);
        self.addrs.retain(|a| a.len() <= TEXT);
        self.rooms.truncate(ITEMS);
        self.rooms.retain(|r| r.len() <= TEXT);
        self.gpus.truncate(ITEMS);
        self.builds.truncate(ITEMS);
        for t in [&mut self.pause, &mut self.no_room].into_iter().flatten() {
            cut(t);
        }
        self.slots_free = self.slots_free.min(self.slots);
        if !self.load.is_finite() {
            self.load = 0.0;
        }
        self
    }

    /// What it offers a waiting run.
    pub fn offer(&self) -> crate::schedule::NodeOffer {
        crate::schedule::NodeOffer {
            name: self.name.clone(),
            caps: crate::schedule::NodeCaps {
                rooms: self.rooms.clone(),
                private: self.private,
                gpus: self.gpus.len() as u32,
                containers: self.containers,
                isolation: self.isolation,
                // The grid's minimum is the reader's to fill in.
                min_isolation: Default::default(),
                gpu_capability: self.gpus.iter().map(|g| g.capability).fold(0.0, f32::max),
            },
            slots_free: self.slots_free,
            paused: self.paused,
            owner_here: self.owner_here,
            no_room: self.no_room.clone(),
        }
    }
}

/// A node's heartbeat to a neighbour, and the neighbour's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    pub node: NodeId,
    /// The sender's incarnation (see [`crate::liveness`]).
    pub inc: u64,
    pub status: NodeStatus,
    /// The incarnation the sender holds the receiver down at, if it does:
    /// the receiver is alive, so it refutes.
    pub you_are_down: Option<u64>,
}

/// Messages on the grid's gossip topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Gossip {
    Liveness(Notice),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_keys_round_trip_and_reject_garbage() {
        let id = RequestId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8]);
        for k in [DocKey::Grid, DocKey::Request(id)] {
            assert_eq!(DocKey::from_store_key(&k.store_key()), Some(k));
        }
        for bad in ["", "req/", "req/xyz", "grid2", "req/0102030405060708/.."] {
            assert_eq!(DocKey::from_store_key(bad), None, "{bad}");
        }
    }
}
