//! Edits a stopped node's stored documents, as a hostile node holding the
//! grid key could write them: the peer-boundary tests forge entries there
//! and let the real node sync them to the others (or load them itself).

use std::path::Path;

use anyhow::{Context, Result};
use automerge::AutoCommit;
use redb::{Database, ReadableTable, TableDefinition};

// The node's store layout (node/src/store.rs): a snapshot per document and
// incremental chunks after it.
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_snapshots");
const CHUNKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("doc_chunks");

/// Loads document `key` (`grid`, `req/ID`) of the node stored in
/// `data_dir` (stopped), lets `edit` change it, and stores it back as one
/// snapshot. A missing document starts empty.
pub fn edit_doc(data_dir: &Path, key: &str, edit: impl FnOnce(&mut AutoCommit)) -> Result<()> {
    let db = Database::open(data_dir.join("node.redb")).context("opening node.redb")?;
    let tx = db.begin_write()?;
    {
        let mut snaps = tx.open_table(SNAPSHOTS)?;
        let mut chunks = tx.open_table(CHUNKS)?;
        let mut bytes = snaps
            .get(key)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        let mut seqs = Vec::new();
        for item in chunks.range((key, 0)..=(key, u64::MAX))? {
            let (k, v) = item?;
            seqs.push(k.value().1);
            bytes.extend_from_slice(v.value());
        }
        let mut doc = if bytes.is_empty() {
            AutoCommit::new()
        } else {
            AutoCommit::load(&bytes).context("loading the stored document")?
        }
        .with_actor(automerge::ActorId::random());
        edit(&mut doc);
        for s in seqs {
            chunks.remove((key, s))?;
        }
        snaps.insert(key, doc.save().as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// The map object `name` at the root of `doc`.
pub fn root_map(doc: &AutoCommit, name: &str) -> automerge::ObjId {
    use automerge::ReadDoc;
    match doc.get(automerge::ROOT, name) {
        Ok(Some((automerge::Value::Object(automerge::ObjType::Map), id))) => id,
        other => panic!("no map {name}: {other:?}"),
    }
}
