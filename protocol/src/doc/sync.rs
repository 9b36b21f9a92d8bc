//! Automerge's sync protocol, per document and per peer, in bytes in and
//! bytes out: the node moves the bytes, this module keeps the rules.

use automerge::sync::{Message, State, SyncDoc};
use automerge::{AutoCommit, ChangeHash};

use crate::error::{Error, Result};

pub use automerge::sync::State as SyncState;

/// The next message for the peer behind `state`, if it needs one.
pub fn generate(doc: &mut AutoCommit, state: &mut State) -> Option<Vec<u8>> {
    doc.sync().generate_sync_message(state).map(Message::encode)
}

/// Applies a peer's message. Returns whether the document changed.
pub fn receive(doc: &mut AutoCommit, state: &mut State, msg: &[u8]) -> Result<bool> {
    let msg =
        Message::decode(msg).map_err(|e| Error::document(format!("garbled sync message: {e}")))?;
    let before = doc.get_heads();
    doc.sync().receive_sync_message(state, msg)?;
    Ok(doc.get_heads() != before)
}

/// A state fit for a new connection: keeps what the peer is known to have,
/// forgets messages in flight (they may be lost).
pub fn reset(state: &State) -> State {
    State::decode(&state.encode()).unwrap_or_default()
}

/// The document's heads as hex strings (for gossip).
pub fn heads_hex(doc: &mut AutoCommit) -> Vec<String> {
    doc.get_heads().iter().map(|h| h.to_string()).collect()
}

/// Whether the document lacks any of these heads (unparsable ones count as lacking).
pub fn lacks_any(doc: &mut AutoCommit, heads: &[String]) -> bool {
    heads.iter().any(|h| match h.parse::<ChangeHash>() {
        Ok(h) => doc.get_change_by_hash(&h).is_none(),
        Err(_) => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::{ROOT, transaction::Transactable};

    fn exchange(a: &mut AutoCommit, b: &mut AutoCommit) -> usize {
        let (mut sa, mut sb) = (State::new(), State::new());
        let mut rounds = 0;
        loop {
            let m1 = generate(a, &mut sa);
            if let Some(m) = &m1 {
                receive(b, &mut sb, m).unwrap();
            }
            let m2 = generate(b, &mut sb);
            if let Some(m) = &m2 {
                receive(a, &mut sa, m).unwrap();
            }
            if m1.is_none() && m2.is_none() {
                return rounds;
            }
            rounds += 1;
            assert!(rounds < 10, "sync does not converge");
        }
    }

    #[test]
    fn two_replicas_converge_and_garbage_is_an_error() {
        let mut a = AutoCommit::new();
        a.put(ROOT, "x", 1).unwrap();
        let mut b = AutoCommit::new();
        b.put(ROOT, "y", 2).unwrap();
        exchange(&mut a, &mut b);
        assert_eq!(a.get_heads(), b.get_heads());
        let heads = heads_hex(&mut a);
        assert!(!lacks_any(&mut b, &heads));
        a.put(ROOT, "z", 3).unwrap();
        assert!(lacks_any(&mut b, &heads_hex(&mut a)));
        let err = receive(&mut b, &mut State::new(), b"\x42garbage").unwrap_err();
        assert!(err.to_string().contains("garbled"), "{err}");
    }
}
