//! Fuzz entry points: each takes any bytes and must neither panic, hang nor
//! allocate without bound. `fuzz/` runs them under libFuzzer
//! (`cargo +nightly fuzz run TARGET`), and the test suite runs them over
//! their seeds and bounded random mutations on every CI run
//! (`protocol/tests/fuzz_short.rs`).

use crate::blob_tree::VerifiedTree;
use crate::doc::{GridDoc, RequestDoc, actor_id};
use crate::ids::{BlobHash, NodeId};
use crate::wire::{Beat, BlobRequest, BlobResponse, Gossip, SyncRequest, SyncResponse};

fn actor() -> automerge::ActorId {
    actor_id(&NodeId::new("fuzz"), [0; 8])
}

/// What peers send: request-response messages (CBOR), gossip (JSON) and
/// Automerge sync messages.
pub fn wire(data: &[u8]) {
    let _ = cbor4ii::serde::from_slice::<SyncRequest>(data);
    let _ = cbor4ii::serde::from_slice::<SyncResponse>(data);
    let _ = cbor4ii::serde::from_slice::<BlobRequest>(data);
    let _ = cbor4ii::serde::from_slice::<BlobResponse>(data);
    if let Ok(b) = cbor4ii::serde::from_slice::<Beat>(data) {
        let _ = b.status.bounded().offer();
    }
    let _ = serde_json::from_slice::<Gossip>(data);
    let mut doc = automerge::AutoCommit::new();
    let mut state = crate::doc::sync::SyncState::new();
    let _ = crate::doc::sync::receive(&mut doc, &mut state, data);
}

/// A request document as stored or pushed whole, and everything the node
/// reads from it.
pub fn request_doc(data: &[u8]) {
    let Ok(d) = RequestDoc::load(data, actor()) else {
        return;
    };
    let _ = d.counts(|_| true);
    let _ = d.skipped();
    for rank in d.unfinished_ranks().take(64) {
        let _ = d.run(rank, |_| true);
        let _ = d.latest_checkpoint(rank);
        let _ = d.result_attempt(rank);
    }
}

/// The grid document and every map the node reads from it.
pub fn grid_doc(data: &[u8]) {
    let Ok(g) = GridDoc::load(data, actor()) else {
        return;
    };
    let _ = g.access();
    let _ = g.processes();
    let _ = g.files();
    let _ = g.nodes();
    let _ = g.requests();
    let _ = g.domains();
    let _ = g.min_isolation();
    let _ = g.skipped().list();
}

/// A blob's tree as a peer sends it: 32 bytes of root, 8 of size, the rest
/// the tree.
pub fn blob_tree(data: &[u8]) {
    if data.len() < 40 {
        return;
    }
    let mut root = [0u8; 32];
    root.copy_from_slice(&data[..32]);
    let mut total = [0u8; 8];
    total.copy_from_slice(&data[32..40]);
    if let Ok(t) = VerifiedTree::check(BlobHash(root), u64::from_le_bytes(total), &data[40..]) {
        let _ = t.root();
    }
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(d.len().max(1));
        match rng.below(6) {
            0 if !d.is_empty() => d[at] ^= 1 << rng.below(8),
            1 if !d.is_empty() => d[at] = [0x00, 0xff, 0x7f, 0x80, 0x01][rng.below(5)],
            2 => d.truncate(at),
            3 if !d.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(d.len());
                d.drain(at..end);
            }
            4 => {
                let from = rng.below(other.len().max(1));
                let end = (from + 1 + rng.below(64)).min(other.len());
                let piece = other.get(from..end).unwrap_or_default().to_vec();
                d.splice(at.min(d.len())..at.min(d.len()), piece);
            }
            _ => {
                let n = rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(at.min(d.len())..at.min(d.len()), bytes);
            }
        }
    }
    d
}

/// The short run: `target` over every seed, then over `runs` random
/// mutations of them. Deterministic (no clock, a fixed seed): a failure
/// reproduces.
pub fn short_run(name: &str, seeds: &[Vec<u8>], runs: usize, target: fn(&[u8])) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    for s in seeds {
        target(s);
    }
    for _ in 0..runs {
        let a = &seeds[rng.below(seeds.len())];
        let b = &seeds[rng.below(seeds.len())];
        target(&mutate(&mut rng, a, b));
    }
}
