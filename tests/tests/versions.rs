//! Desktops of two PESC versions in one grid, with a document crafted to
//! look newer: a peer's grid document that only a newer PESC reads safely
//! (`min_reader` 2) reaches a node of this version, which keeps running
//! what it runs, takes no new runs and says to upgrade; when the value is
//! gone again it takes runs. A newer document that only adds fields is
//! read as usual (`protocol/tests/peer_input.rs`).

use std::time::{Duration, Instant};

use automerge::ROOT;
use automerge::transaction::Transactable;
use pesc_tests::Node;
use pesc_tests::forge::edit_doc;
use serde_json::Value;

const JOB: &str = "echo rank $PESC_RANK\n";

/// What `pesc nodes` on `node` says of itself: why it takes no runs.
fn why_no_runs(node: &Node) -> Option<String> {
    let v = node.cli_json(&["nodes", "--json"]);
    v.as_array()?.iter().find(|n| n["this_node"] == true)?["pause"]
        .as_str()
        .map(str::to_string)
}

fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_grid_document_needing_a_newer_pesc_stops_claims_says_upgrade_and_lets_go() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = pesc_tests::pesc_bin("debug");
    let old = Node::start_in(tmp.path().join("old"), 2, bin.clone(), None, &[]).unwrap();
    // The "newer" desktop: a node of the grid whose stored grid document
    // is then edited as a newer version would write it.
    let n_dir = tmp.path().join("newer");
    let token = old.join_token();
    let addr = old.p2p_addrs()[0].clone();
    let args = [
        "--join",
        token.as_str(),
        "--peer",
        addr.as_str(),
        "--name",
        "newer",
    ];
    let mut newer = Node::start_in(n_dir.clone(), 0, bin.clone(), None, &args).unwrap();
    newer.wait_known(2, Duration::from_secs(30));
    old.wait_known(2, Duration::from_secs(30));
    newer.stop(Duration::from_secs(10));
    edit_doc(&n_dir, "grid", |d| {
        d.put(ROOT, "schema", 2u64).unwrap();
        d.put(ROOT, "min_reader", 2u64).unwrap();
    })
    .unwrap();
    let mut newer = Node::start_in(n_dir.clone(), 0, bin.clone(), None, &args).unwrap();

    // It reaches the old node: no new runs, and the reason says to upgrade.
    wait(
        "the old node to refuse the grid document",
        Duration::from_secs(30),
        || why_no_runs(&old).is_some_and(|w| w.contains("newer PESC") && w.contains("upgrade")),
    );
    assert!(
        old.log().contains("this node takes no new runs"),
        "{}",
        old.log()
    );
    let r: Value = old.http().submit_script(JOB, 2, &[]).json().unwrap();
    let id = r["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(3));
    let v = old.cli_json(&["status", &id, "--json"]);
    assert_eq!(v["state"], "queued", "nothing is claimed: {v}");

    // Restarted on the stored document, it starts (it does not leave its
    // grid) and still takes nothing.
    let mut old = old;
    old.stop(Duration::from_secs(20));
    let old = Node::start_in(old.data_dir.clone(), 2, bin.clone(), None, &[]).unwrap();
    wait(
        "the restarted node to say why",
        Duration::from_secs(20),
        || why_no_runs(&old).is_some_and(|w| w.contains("newer PESC")),
    );

    // The newer desktop goes back (the value is removed): runs go on.
    newer.stop(Duration::from_secs(10));
    edit_doc(&n_dir, "grid", |d| {
        d.delete(ROOT, "min_reader").unwrap();
    })
    .unwrap();
    let _newer = Node::start_in(n_dir, 0, bin, None, &args).unwrap();
    wait("the request to finish", Duration::from_secs(60), || {
        old.cli_json(&["status", &id, "--json"])["state"] == "succeeded"
    });
    // The node's own line in `pesc nodes` follows at its next heartbeat.
    wait("the reason to go", Duration::from_secs(10), || {
        why_no_runs(&old).is_none()
    });
}
