//! Message sizes, measured at start-up with the protocol's own encoders: the
//! Automerge sync messages two replicas of a real request document exchange
//! for a claim and for a result, and the JSON of real gossip messages. The
//! simulator counts these bytes instead of building every message, which is
//! what lets it reach 10 000 nodes.

use automerge::AutoCommit;
use pesc_protocol::doc::{RequestDoc, actor_id, sync};
use pesc_protocol::liveness::Notice;
use pesc_protocol::model::{
    Attempt, AttemptState, GpuNeeds, Language, Process, ProcessKind, RequestSpec,
};
use pesc_protocol::wire::{Beat, Gossip, NodeStatus};
use pesc_protocol::{BlobHash, NodeId, ProcessId, RequestId};
use serde::Serialize;

/// Bytes libp2p gossipsub adds to each published message: protobuf framing,
/// source peer id, sequence number, topic and Ed25519 signature.
pub const GOSSIPSUB_FRAMING: u64 = 170;

/// Bytes a request-response exchange adds per message on a live
/// connection: a new yamux stream, multistream-select negotiation of the
/// protocol name, the length prefix and the Noise tag (an estimate).
pub const STREAM_FRAMING: u64 = 100;

/// How many copies of each gossip message a node receives: gossipsub floods
/// along a mesh of degree 6 and each mesh link carries a message about once,
/// so a node gets about half its mesh degree in copies (messages this small
/// get no IDONTWANT suppression). IHAVE/IWANT control traffic comes on top
/// and is not counted: the gossip figures are a lower bound.
pub fn gossip_copies(nodes: usize) -> u64 {
    (nodes.saturating_sub(1)).clamp(1, 3) as u64
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sizes {
    /// Sync message carrying one claim.
    pub sync_claim: u64,
    /// Sync message carrying one finished attempt (state, exit code, hashes).
    pub sync_end: u64,
    /// The answer that only acknowledges (heads, empty bloom).
    pub sync_ack: u64,
    /// A ping or pong to a ring neighbour (its JSON: the CBOR the node sends
    /// is smaller, so this is an upper bound).
    pub beat: u64,
    /// A Down or Up notice on gossip.
    pub notice: u64,
}

/// A request spec like the ones the node writes (for sizes and for the
/// protocol functions the simulator calls).
pub fn spec(id: RequestId, owner: &str, repetitions: u32, created_ms: u64) -> RequestSpec {
    RequestSpec {
        id,
        owner: owner.to_string(),
        process: Process {
            id: ProcessId::from_bytes([7; 8]),
            name: "sim".into(),
            kind: ProcessKind::File,
            file_name: "main.py".into(),
            code: BlobHash::of(b"print(1)"),
            size: 8,
            language: Language::Python,
            entry: "main.py".into(),
            entry_is_command: false,
            owner: owner.to_string(),
            created_ms,
            rooms: Vec::new(),
        },
        repetitions,
        parameters: Vec::new(),
        rooms: Vec::new(),
        shared_files: Vec::new(),
        inputs: Vec::new(),
        domain: None,
        limits: Default::default(),
        gpu: GpuNeeds::default(),
        parallel: false,
        same_node: false,
        header: Default::default(),
        checkpoint_retries: 1,
        retries: 0,
        created_ms,
        sweep: None,
        seed: None,
        backups: true,
    }
}

/// A node id as long as a real one (a libp2p peer id in base58).
pub fn real_length_node_id(i: u32) -> NodeId {
    NodeId::new(format!("12D3KooW{:044}", i))
}

fn settle(
    a: &mut AutoCommit,
    b: &mut AutoCommit,
    sa: &mut sync::SyncState,
    sb: &mut sync::SyncState,
) {
    for _ in 0..20 {
        let m1 = sync::generate(a, sa);
        if let Some(m) = &m1 {
            let _ = sync::receive(b, sb, m);
        }
        let m2 = sync::generate(b, sb);
        if let Some(m) = &m2 {
            let _ = sync::receive(a, sa, m);
        }
        if m1.is_none() && m2.is_none() {
            return;
        }
    }
}

fn json_len(g: &Gossip) -> u64 {
    serde_json::to_vec(g).map(|v| v.len() as u64).unwrap_or(0)
}

impl Sizes {
    /// Measures with two replicas of a 1 000-rank request document.
    pub fn measure() -> Sizes {
        let writer = real_length_node_id(1);
        let id = RequestId::from_bytes([5; 8]);
        let mut a = RequestDoc::create(spec(id.clone(), "ana", 1000, 1), actor_id(&writer, [1; 8]))
            .expect("a valid spec");
        a.commit();
        let mut b = AutoCommit::load(&a.save()).expect("a saved document loads");
        b.set_actor(actor_id(&real_length_node_id(2), [2; 8]));
        let (mut sa, mut sb) = (sync::SyncState::new(), sync::SyncState::new());
        settle(a.doc_mut(), &mut b, &mut sa, &mut sb);

        let mut att = Attempt::claim(17, 0, writer.clone(), 1_763_000_000_000);
        a.put_attempt(&att).expect("claim");
        a.commit();
        let claim_msg = sync::generate(a.doc_mut(), &mut sa).unwrap_or_default();
        let _ = sync::receive(&mut b, &mut sb, &claim_msg);
        // The receiver's answer once it merged the change: heads and bloom.
        let ack = sync::generate(&mut b, &mut sb)
            .map(|m| m.len())
            .unwrap_or(0);
        settle(a.doc_mut(), &mut b, &mut sa, &mut sb);
        let claim = claim_msg.len();

        att.state = AttemptState::Succeeded;
        att.started_ms = Some(1_763_000_000_050);
        att.finished_ms = Some(1_763_000_300_000);
        att.exit_code = Some(0);
        att.output = Some(BlobHash::of(b"out"));
        att.stdout = Some(BlobHash::of(b"stdout"));
        a.put_attempt(&att).expect("end");
        a.commit();
        let end = sync::generate(a.doc_mut(), &mut sa)
            .map(|m| m.len())
            .unwrap_or(0);

        let status = NodeStatus {
            name: "lab-pc-17".into(),
            slots: 4,
            slots_free: 0,
            load: 0.97,
            addrs: vec![
                "/ip4/10.0.3.17/tcp/7373".into(),
                "/ip6/fe80::17/tcp/7373".into(),
            ],
            gpus: Vec::new(),
            rooms: Vec::new(),
            private: false,
            mem_total_mb: Some(16 * 1024),
            mem_free_mb: Some(12 * 1024),
            containers: true,
            isolation: pesc_protocol::isolation::IsolationLevel::Containers,
            isolation_detail: "containers".into(),
            paused: false,
            builds: Vec::new(),
            mem_room_mb: Some(9 * 1024),
            ..Default::default()
        };
        let beat = serde_json::to_vec(&Beat {
            node: writer.clone(),
            inc: 1_763_000_000_000,
            status,
            you_are_down: None,
        })
        .map(|v| v.len() as u64)
        .unwrap_or(0);
        let notice = json_len(&Gossip::Liveness(Notice::Down {
            node: real_length_node_id(3),
            inc: 1_763_000_000_000,
            by: writer.clone(),
        }));
        Sizes {
            sync_claim: claim as u64,
            sync_end: end as u64,
            sync_ack: ack as u64,
            beat,
            notice,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_sizes_are_plausible() {
        let s = Sizes::measure();
        // A claim is a handful of map entries plus heads and bloom filter.
        assert!((40..2000).contains(&s.sync_claim), "{s:?}");
        assert!(s.sync_end > s.sync_claim / 2, "{s:?}");
        assert!((10..s.sync_claim).contains(&s.sync_ack), "{s:?}");
        assert!((100..800).contains(&s.beat), "{s:?}");
        assert!((60..400).contains(&s.notice), "{s:?}");
    }
}
