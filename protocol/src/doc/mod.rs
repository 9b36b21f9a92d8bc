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

/// Schema version written into every document: the layout this version of
/// PESC writes and reads.
pub const SCHEMA: u64 = 1;

/// Whether this node can use a document safely. A newer PESC that adds
/// fields writes a higher `schema` and nothing else: older nodes read what
/// they know, and the fields they do not know stay in the document (they
/// never delete them) and travel on to the nodes that do. A change an
/// older node would misread (a field whose meaning changed, a state it
/// does not know must not be run) also writes `min_reader`, the oldest
/// schema that reads the document safely; a node below it refuses that
/// document, and only it, saying to upgrade. Absent: 1.
pub fn check_readable(doc: &impl automerge::ReadDoc, what: &str) -> crate::error::Result<()> {
    let get = |key: &str| -> Option<u64> {
        match doc.get(automerge::ROOT, key).ok().flatten() {
            Some((automerge::Value::Scalar(s), _)) => match s.as_ref() {
                automerge::ScalarValue::Uint(n) => Some(*n),
                automerge::ScalarValue::Int(n) => u64::try_from(*n).ok(),
                _ => None,
            },
            _ => None,
        }
    };
    let min_reader = get("min_reader").unwrap_or(1);
    if min_reader > SCHEMA {
        let schema = get("schema").unwrap_or(min_reader);
        return Err(crate::error::Error::TooNew(format!(
            "this {what} was written by a newer PESC (schema {schema}, readable from schema {min_reader} on) and this node reads schema {SCHEMA}: upgrade PESC on this node (admin guide, \"Upgrading a grid\")"
        )));
    }
    Ok(())
}

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
