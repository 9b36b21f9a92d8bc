//! Nodes in network namespaces on a private bridge (10.99.0.x addresses that
//! exist only inside the namespaces): discovery by mDNS alone, and a
//! partition that heals. Needs root and iproute2, as CI has; set
//! PESC_SKIP_NETNS=1 to skip on a machine without them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pesc_tests::grid::{Grid, namespaces_available, read};
use pesc_tests::{runs, write_file, zip_names};
use serde_json::Value;

fn can_run() -> bool {
    if std::env::var_os("PESC_SKIP_NETNS").is_some() {
        eprintln!("skipped: PESC_SKIP_NETNS is set");
        return false;
    }
    assert!(
        namespaces_available(),
        "cannot create network namespaces (run as root with iproute2, or set PESC_SKIP_NETNS=1)"
    );
    true
}

/// Rank by rank: (state, node, attempt) — what every replica must agree on.
fn view(v: &Value) -> Vec<(String, String, u64)> {
    runs(v)
        .iter()
        .map(|r| {
            (
                r["state"].as_str().unwrap_or("").to_string(),
                r["node"].as_str().unwrap_or("").to_string(),
                r["attempt"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
#[cfg_attr(pesc_skip_netns, ignore = "PESC_SKIP_NETNS is set")]
fn three_nodes_find_each_other_by_mdns_and_share_a_request() {
    if !can_run() {
        return;
    }
    let g = Grid::namespaces(3, 2, &[]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(
        tmp.path(),
        "job.sh",
        "sleep 0.3\necho \"rank $PESC_RANK\" > \"$PESC_OUTPUT_DIR/output.txt\"\n",
    );
    let id = g.nodes[1].submit(&[&prog, "-n", "18"]);
    let v = g.nodes[2].wait_for(&id, Duration::from_secs(60), |v| v["state"] == "succeeded");
    let used: BTreeSet<&str> = runs(&v)
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert_eq!(used.len(), 3, "not every node ran: {v}");
    // Their addresses are the namespaces' private ones.
    let nodes = g.nodes[0].cli_json(&["nodes", "--json"]);
    for n in nodes.as_array().unwrap() {
        let addrs = n["addrs"].to_string();
        assert!(addrs.contains("/ip4/10.99.0."), "{n}");
    }
}

#[test]
#[cfg_attr(pesc_skip_netns, ignore = "PESC_SKIP_NETNS is set")]
fn a_partitioned_node_converges_after_the_link_heals() {
    if !can_run() {
        return;
    }
    let g = Grid::namespaces(3, 2, &["--lease-ttl-ms", "3000"]).unwrap();
    let lan = g.lan.as_ref().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(
        tmp.path(),
        "slow.sh",
        "sleep 2\necho \"rank $PESC_RANK\" > \"$PESC_OUTPUT_DIR/output.txt\"\n",
    );
    let cut = g.nodes[2].node_id();
    let id = g.nodes[0].submit(&[&prog, "-n", "12"]);
    g.nodes[0].wait_for(&id, Duration::from_secs(30), |v| {
        runs(v)
            .iter()
            .any(|r| r["node"] == cut.as_str() && r["state"] == "running")
    });
    lan.set_link(2, false).unwrap();
    let t0 = Instant::now();
    // The majority side takes over the cut node's runs and finishes.
    g.nodes[0].wait_for(&id, Duration::from_secs(60), |v| v["state"] == "succeeded");
    let rest = Duration::from_secs(30).saturating_sub(t0.elapsed());
    std::thread::sleep(rest);
    lan.set_link(2, true).unwrap();
    // Every replica ends with the same view: one result per rank.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let views: Vec<_> = g
            .nodes
            .iter()
            .map(|n| n.cli_json(&["status", &id, "--json"]))
            .collect();
        let same = views.iter().all(|v| view(v) == view(&views[0]));
        if same && views.iter().all(|v| v["state"] == "succeeded") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge: {:?}",
            views.iter().map(view).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let zips: Vec<_> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| n.results_zip(&id, &tmp.path().join(format!("r{i}"))))
        .collect();
    for z in &zips[1..] {
        assert_eq!(read(z), read(&zips[0]), "results differ between nodes");
    }
    let outputs = zip_names(&zips[0])
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with("/output.txt"))
        .count();
    assert_eq!(outputs, 12);
}
