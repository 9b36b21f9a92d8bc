//! The grid across real `pesc` processes: three nodes on 127.0.0.1 sharing
//! a request, submit-and-leave, failover, cancel everywhere, restart, and a
//! node without the grid key kept out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use pesc_tests::grid::{Grid, read};
use pesc_tests::{Node, runs, write_file, zip_names, zip_text};
use serde_json::Value;

/// Short leases so failover tests take seconds, not minutes.
const TTL: &[&str] = &["--lease-ttl-ms", "3000"];

fn all_succeeded(v: &Value) -> bool {
    v["state"] == "succeeded"
}

/// One output dir per rank, and `output.txt` with one line per rank in order.
fn assert_one_result_per_rank(zip: &Path, n: usize) {
    let names = zip_names(zip).unwrap();
    let ranks: BTreeSet<String> = names
        .iter()
        .filter_map(|n| n.strip_prefix("output_rank_"))
        .filter_map(|r| r.split('/').next().map(str::to_string))
        .collect();
    assert_eq!(ranks.len(), n, "{names:?}");
    let text = zip_text(zip, "output.txt").unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), n, "{text}");
    for (i, l) in lines.iter().enumerate() {
        let want = format!("rank {i}");
        assert!(*l == want || l.starts_with(&format!("{want} ")), "{text}");
    }
}

const JOB: &str =
    "sleep 0.3\necho \"rank $PESC_RANK on $PESC_NODE_ID\" > \"$PESC_OUTPUT_DIR/output.txt\"\n";

#[test]
fn three_nodes_share_a_request_and_agree_on_its_results() {
    let g = Grid::loopback(3, 2, &[]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(tmp.path(), "job.sh", JOB);
    let id = g.nodes[0].submit(&[&prog, "-n", "30"]);
    let v = g.nodes[1].wait_for(&id, Duration::from_secs(60), all_succeeded);
    let ids: Vec<String> = g.nodes.iter().map(|n| n.node_id()).collect();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for r in runs(&v) {
        *per_node
            .entry(r["node"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for id in &ids {
        assert!(
            per_node.get(id).copied().unwrap_or(0) > 0,
            "node {id} ran nothing: {per_node:?}"
        );
    }
    // Outputs made on all three nodes, downloaded from B and from C: the same archive.
    let zb = g.nodes[1].results_zip(&id, &tmp.path().join("b"));
    let zc = g.nodes[2].results_zip(&id, &tmp.path().join("c"));
    assert_eq!(read(&zb), read(&zc), "B and C give different archives");
    assert_one_result_per_rank(&zb, 30);
    // Every node lists the grid's three nodes with their names.
    let nodes = g.nodes[2].cli_json(&["nodes", "--json"]);
    let names: BTreeSet<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["n0", "n1", "n2"]));
    let text = pesc_tests::stdout(&g.nodes[2].cli(&["nodes"]));
    assert!(text.contains("n0") && text.contains("(this)"), "{text}");
}

#[test]
fn submit_and_leave_the_others_finish_every_rank() {
    let mut g = Grid::loopback(3, 2, TTL).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(tmp.path(), "job.sh", JOB);
    let id = g.nodes[0].submit(&[&prog, "-n", "12"]);
    // The submit answered: the request and its code are on another node too.
    g.nodes[0].kill9();
    let v = g.nodes[1].wait_for(&id, Duration::from_secs(60), all_succeeded);
    let gone = g.nodes[1].cli_json(&["nodes", "--json"]);
    let a_id = gone
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "n0")
        .unwrap()["id"]
        .clone();
    assert!(
        runs(&v).iter().all(|r| r["node"] != a_id),
        "a dead node holds a result: {v}"
    );
    let z = g.nodes[2].results_zip(&id, &tmp.path().join("c"));
    assert_one_result_per_rank(&z, 12);
}

#[test]
fn runs_of_a_killed_node_are_restarted_elsewhere() {
    let mut g = Grid::loopback(3, 2, TTL).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(
        tmp.path(),
        "slow.sh",
        "sleep 2\necho \"rank $PESC_RANK\" > \"$PESC_OUTPUT_DIR/output.txt\"\n",
    );
    let victim = g.nodes[2].node_id();
    let id = g.nodes[0].submit(&[&prog, "-n", "12"]);
    let before = g.nodes[0].wait_for(&id, Duration::from_secs(30), |v| {
        runs(v)
            .iter()
            .any(|r| r["node"] == victim.as_str() && r["state"] == "running")
    });
    let held: Vec<u64> = runs(&before)
        .iter()
        .filter(|r| r["node"] == victim.as_str() && r["state"] != "succeeded")
        .map(|r| r["rank"].as_u64().unwrap())
        .collect();
    let finished_there = runs(&before)
        .iter()
        .any(|r| r["node"] == victim.as_str() && r["state"] == "succeeded");
    g.nodes[2].kill9();
    let v = g.nodes[0].wait_for(&id, Duration::from_secs(90), all_succeeded);
    for r in runs(&v) {
        if held.contains(&r["rank"].as_u64().unwrap()) {
            assert_ne!(
                r["node"],
                victim.as_str(),
                "rank stayed on the dead node: {r}"
            );
            assert!(r["attempt"].as_u64().unwrap() >= 1, "{r}");
        }
    }
    if !finished_there {
        let z = g.nodes[1].results_zip(&id, &tmp.path().join("b"));
        assert_one_result_per_rank(&z, 12);
    }
}

#[test]
fn cancel_on_one_node_stops_every_run_on_every_node() {
    let g = Grid::loopback(3, 2, &[]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(tmp.path(), "sleepy.sh", "exec sleep 60\n");
    let id = g.nodes[0].submit(&[&prog, "-n", "6"]);
    let ids: Vec<String> = g.nodes.iter().map(|n| n.node_id()).collect();
    g.nodes[0].wait_for(&id, Duration::from_secs(30), |v| {
        let running: BTreeSet<&str> = runs(v)
            .iter()
            .filter(|r| r["state"] == "running")
            .map(|r| r["node"].as_str().unwrap())
            .collect();
        runs(v).iter().all(|r| r["state"] == "running") && running.len() == ids.len()
    });
    // The processes of the 6 running ranks, as the host sees them (a run
    // that lost a claim race may have started too, and is gone already).
    let wait_pids = Instant::now();
    loop {
        let ranks: BTreeSet<u32> = pesc_tests::run_processes(&id)
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        if ranks.len() == 6 {
            break;
        }
        assert!(
            wait_pids.elapsed() < Duration::from_secs(10),
            "expected 6 live runs, found ranks {ranks:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let t0 = Instant::now();
    let out = g.nodes[1].cli(&["cancel", &id]);
    assert!(out.status.success(), "{out:?}");
    while !pesc_tests::run_processes(&id).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "runs still alive 2 s after cancel: {:?}",
            pesc_tests::run_processes(&id)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for n in &g.nodes {
        n.wait_for(&id, Duration::from_secs(10), |v| v["state"] == "cancelled");
    }
}

#[test]
fn a_restarted_node_rejoins_with_its_store_intact() {
    let mut g = Grid::loopback(3, 2, TTL).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(
        tmp.path(),
        "slow.sh",
        "sleep 1\necho \"rank $PESC_RANK\" > \"$PESC_OUTPUT_DIR/output.txt\"\n",
    );
    let first = g.nodes[0].submit(&[&prog, "-n", "2"]);
    g.nodes[1].wait_for(&first, Duration::from_secs(30), all_succeeded);
    let id = g.nodes[0].submit(&[&prog, "-n", "12"]);
    let b = g.nodes[1].node_id();
    g.nodes[1].wait_for(&id, Duration::from_secs(30), |v| {
        runs(v)
            .iter()
            .any(|r| r["node"] == b.as_str() && r["state"] == "running")
    });
    g.nodes[1].kill9();
    // A plain restart: no --join, no --peer; it finds the others from its stored grid.
    let dir = g.dir(1);
    let bin = g.nodes[1].bin.clone();
    g.nodes[1] = Node::start_in(dir, 2, bin, None, &["--name", "n1"]).unwrap();
    g.nodes[1].wait_connected(3, Duration::from_secs(30));
    assert_eq!(g.nodes[1].node_id(), b, "the node changed identity");
    let old = g.nodes[1].cli_json(&["status", &first, "--json"]);
    assert_eq!(old["state"], "succeeded", "{old}");
    let v = g.nodes[1].wait_for(&id, Duration::from_secs(90), all_succeeded);
    assert_eq!(runs(&v).len(), 12);
    let z = g.nodes[1].results_zip(&id, &tmp.path().join("b"));
    assert_one_result_per_rank(&z, 12);
}

#[test]
fn a_node_without_the_grid_key_cannot_connect() {
    let g = Grid::loopback(2, 1, &[]).unwrap();
    let real = g.nodes[0].join_token();
    let addr = g.nodes[0].p2p_addrs()[0].clone();
    // Same grid id, another key; and a node of another grid dialling in.
    let (secret, _) = real.split_once('@').unwrap();
    let forged = format!("{}{}", &secret[..6 + 32], "ab".repeat(32));
    let tmp = tempfile::tempdir().unwrap();
    let bin = pesc_tests::pesc_bin("debug");
    let forger = Node::start_in(
        tmp.path().join("forger"),
        1,
        bin.clone(),
        None,
        &["--join", &forged, "--peer", &addr, "--name", "forger"],
    )
    .unwrap();
    let stranger = Node::start_in(
        tmp.path().join("stranger"),
        1,
        bin,
        None,
        &["--peer", &addr, "--name", "stranger"],
    )
    .unwrap();
    let prog = write_file(tmp.path(), "job.sh", JOB);
    let theirs = forger.submit(&[&prog, "-n", "1"]);
    std::thread::sleep(Duration::from_secs(4));
    for outsider in [&forger, &stranger] {
        let v = outsider.cli_json(&["nodes", "--json"]);
        assert_eq!(v.as_array().unwrap().len(), 1, "an outsider got in: {v}");
        assert!(
            !outsider.log().contains("connected to"),
            "{}",
            outsider.log()
        );
    }
    let v = g.nodes[0].cli_json(&["nodes", "--json"]);
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    let list = g.nodes[0].cli_json(&["status", "--json"]);
    assert!(
        !list.to_string().contains(&theirs),
        "the forger's request reached the grid"
    );
}

/// A lab larger than a node's ring of heartbeat neighbours: every healthy
/// node is shown up (not offline), with its memory and load — the nodes
/// beyond the ring are asked when the list is read.
#[test]
fn every_node_of_a_lab_shows_up_with_its_memory() {
    let g = Grid::loopback(9, 1, &[]).unwrap();
    let t0 = Instant::now();
    loop {
        let list = g.nodes[0].cli_json(&["nodes", "--json"]);
        let nodes = list.as_array().unwrap();
        let me = nodes.iter().find(|n| n["this_node"] == true).unwrap();
        let heard = nodes
            .iter()
            .filter(|n| {
                n["this_node"] == false
                    && n["mem_total_mb"].as_u64().is_some_and(|m| m > 0)
                    && n["load"].as_f64().is_some()
                    && n["slots_free"].as_u64().is_some()
            })
            .count();
        if nodes.len() == 9
            && nodes.iter().all(|n| n["up"] == true)
            && me["mem_total_mb"].as_u64().is_some_and(|m| m > 0)
            && me["mem_free_mb"].as_u64().is_some()
            && heard == 8
        {
            let text = pesc_tests::stdout(&g.nodes[0].cli(&["nodes"]));
            assert!(text.contains("GiB"), "{text}");
            assert!(!text.contains(" down "), "{text}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{list:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
