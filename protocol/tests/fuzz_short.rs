//! The fuzz targets' short run, on every CI run (stable Rust, no coverage
//! guidance): each target gets its seeds, then a bounded number of random
//! mutations of them (bit flips, odd values, cuts, splices). The long, coverage-guided run is `cargo +nightly fuzz run` in
//! `fuzz/` (docs/security.md).

mod common;

use common::*;
use pesc_protocol::access::{Role, User};
use pesc_protocol::blob_tree::TreeHasher;
use pesc_protocol::doc::{GridDoc, RequestDoc};
use pesc_protocol::fuzzing::{self, short_run};
use pesc_protocol::model::{Attempt, AttemptState};
use pesc_protocol::wire::NodeStatus;

/// Mutations per target.
const RUNS: usize = 20_000;

fn request_seed() -> Vec<u8> {
    let mut d = RequestDoc::create(spec(1, "ana", 4, 1, 5), actor("a", 0)).unwrap();
    let mut a = Attempt::claim(1, 0, pesc_protocol::NodeId::new("a"), 7);
    a.state = AttemptState::Failed;
    a.finished_ms = Some(9);
    d.put_attempt(&a).unwrap();
    d.put_attempt(&Attempt::claim(2, 3, pesc_protocol::NodeId::new("b"), 8))
        .unwrap();
    d.save()
}

fn grid_seed() -> Vec<u8> {
    let mut g = GridDoc::genesis("g", actor("a", 0)).unwrap();
    g.put_user(&User {
        name: "ana".into(),
        role: Role::Admin,
        password_hash: "$argon2id$x".into(),
        created_ms: 1,
        disabled: false,
        tokens_after_ms: 0,
    })
    .unwrap();
    g.put_process(&spec(1, "ana", 1, 0, 1).process).unwrap();
    g.save()
}

#[test]
fn wire_messages() {
    let status = NodeStatus {
        name: "n".into(),
        slots: 4,
        addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
        ..Default::default()
    };
    let beat = pesc_protocol::wire::Beat {
        node: pesc_protocol::NodeId::new("a"),
        inc: 3,
        status,
        you_are_down: Some(1),
    };
    let mut doc = automerge::AutoCommit::load(&request_seed()).unwrap();
    let mut state = pesc_protocol::doc::sync::SyncState::new();
    let sync = pesc_protocol::doc::sync::generate(&mut doc, &mut state).unwrap();
    let seeds = vec![
        cbor4ii::serde::to_vec(Vec::new(), &beat).unwrap(),
        sync,
        br#"{"Liveness":{"Up":{"node":"a","inc":1}}}"#.to_vec(),
    ];
    short_run("wire", &seeds, RUNS, fuzzing::wire);
}

#[test]
fn request_documents() {
    short_run("request_doc", &[request_seed()], RUNS, fuzzing::request_doc);
}

#[test]
fn grid_documents() {
    short_run("grid_doc", &[grid_seed()], RUNS, fuzzing::grid_doc);
}

#[test]
fn blob_trees() {
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    let mut h = TreeHasher::new();
    h.update(&data);
    let (root, total, tree) = h.finish();
    let mut seed = root.0.to_vec();
    seed.extend_from_slice(&total.to_le_bytes());
    seed.extend_from_slice(&tree);
    let mut huge = root.0.to_vec();
    huge.extend_from_slice(&u64::MAX.to_le_bytes());
    short_run("blob_tree", &[seed, huge], RUNS, fuzzing::blob_tree);
}
