//! The Automerge documents: one small grid document and one per request.
//!
//! Layout (schema 1):
//! - grid: `{schema, kind: "grid", rooms: {name: json Room}, processes:
//!   {id: json Process}, requests: {id: json RequestIndex}, nodes: {id: json NodeRecord}}`
//! - request: `{schema, kind: "request", spec: json RequestSpec, cancel:
//!   {node: ms}, attempts: {"rank.epoch.node": {state, claimed_ms, …}}}`
//!
//! Each map key is written by one writer (an attempt by its node, a process
//! by its id) or only ever gets equal values, so concurrent edits merge
//! without losing anything. Nested objects are never created concurrently
//! under the same key (that would hide one of them).

pub mod checked;
mod fields;
pub mod grid;
pub mod request;
pub mod sync;

pub use checked::{Checked, Skipped};
pub use grid::{GridDoc, NodeRecord, RequestIndex};
pub use request::RequestDoc;

/// Schema version written into every document.
pub const SCHEMA: u64 = 1;

/// An Automerge actor id for this process: node id bytes plus a per-start
/// nonce, so a restarted node never reuses a (actor, seq) pair it may have
/// sent before a crash.
pub fn actor_id(node: &crate::NodeId, nonce: [u8; 8]) -> automerge::ActorId {
    let mut h = blake3::Hasher::new();
    h.update(node.as_str().as_bytes());
    let mut bytes = h.finalize().as_bytes()[..8].to_vec();
    bytes.extend_from_slice(&nonce);
    automerge::ActorId::from(bytes)
}
