//! Backup copies of stragglers on real nodes: one node is deliberately
//! slow; a request's last run there gets a second copy on an idle node,
//! and the request ends far sooner than with `--no-backups`.

use std::time::{Duration, Instant};

use pesc_tests::grid::Grid;
use pesc_tests::{runs, write_file};

/// Runs take 1 s, 30 s on the node named by the last parameter.
const PROG: &str = r#"for last; do :; done
if [ "$PESC_NODE_ID" = "$last" ]; then sleep 30; else sleep 1; fi
echo "rank $PESC_RANK" > "$PESC_OUTPUT_DIR/output.txt"
"#;

fn took(g: &Grid, args: &[&str]) -> (Duration, serde_json::Value) {
    let t0 = Instant::now();
    let id = g.nodes[0].submit(args);
    let v = g.nodes[0].wait_for(&id, Duration::from_secs(120), |v| {
        v["state"] == "succeeded" || v["state"] == "failed"
    });
    (t0.elapsed(), v)
}

#[test]
fn a_slow_nodes_last_run_gets_a_backup_and_the_request_ends_sooner() {
    let g = Grid::loopback(3, 1, &[]).unwrap();
    let slow = g.nodes[2].node_id();
    let prog = write_file(g.root.path(), "p.sh", PROG);
    let common = [prog.as_str(), "-n", "12", "--parameters", slow.as_str()];
    let mut without_args = common.to_vec();
    without_args.insert(1, "--no-backups");
    let (without, v0) = took(&g, &without_args);
    assert_eq!(v0["state"], "succeeded", "{v0}");
    let (with, v) = took(&g, &common);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert!(without >= Duration::from_secs(30), "{without:?}: {v0}");
    assert!(
        with < without - Duration::from_secs(10),
        "with backups {with:?}, without {without:?}"
    );
    // The copy is in the rank's history, and its result won.
    let copied: Vec<&serde_json::Value> = runs(&v)
        .iter()
        .filter(|r| {
            r["history"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["backup"] == true)
        })
        .collect();
    assert!(!copied.is_empty() && copied.len() <= 4, "{v}");
    for r in copied {
        assert_ne!(r["node"].as_str(), Some(slow.as_str()), "{r}");
    }
    eprintln!("12 runs, one node 30× slower: {with:?} with backups, {without:?} without");
}
