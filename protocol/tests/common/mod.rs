#![allow(dead_code)]
use pesc_protocol::doc::RequestDoc;
use pesc_protocol::model::{Language, Process, ProcessKind, RequestSpec};
use pesc_protocol::{BlobHash, NodeId, RequestId};

pub fn spec(id: u8, owner: &str, repetitions: u32, retries: u32, created_ms: u64) -> RequestSpec {
    let code = BlobHash::of(b"print(1)");
    RequestSpec {
        id: RequestId::from_bytes([id; 8]),
        owner: owner.into(),
        process: Process {
            id: Process::derive_id(
                &code,
                ProcessKind::File,
                "m.py",
                Language::Python,
                "m.py",
                false,
                owner,
            ),
            name: "m".into(),
            kind: ProcessKind::File,
            file_name: "m.py".into(),
            code,
            size: 8,
            language: Language::Python,
            entry: "m.py".into(),
            entry_is_command: false,
            owner: owner.into(),
            created_ms,
            rooms: vec![],
        },
        repetitions,
        parameters: vec![],
        rooms: vec![],
        shared_files: vec![],
        inputs: vec![],
        domain: None,
        limits: Default::default(),
        gpu: Default::default(),
        parallel: false,
        same_node: false,
        header: Default::default(),
        checkpoint_retries: 1,
        retries,
        created_ms,
        sweep: None,
        seed: None,
        backups: true,
    }
}

pub fn actor(node: &str, n: u8) -> automerge::ActorId {
    pesc_protocol::doc::actor_id(&NodeId::new(node), [n; 8])
}

/// A second replica of `doc`, loaded from its save, as a peer would get it.
pub fn replica(doc: &mut RequestDoc, node: &str) -> RequestDoc {
    let bytes = doc.save();
    RequestDoc::load(&bytes, actor(node, 1)).unwrap()
}
