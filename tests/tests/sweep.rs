//! Parameter sweeps and the tidy table, through a real node: one request
//! covers every combination, each run sees its values in `--parameters`
//! and `PESC_PARAM_*`, and the results hold one `results.csv`.

use std::time::Duration;

use pesc_tests::{Node, runs, write_file, zip_names, zip_text};

/// Writes what the run was given, and one row of a CSV (rank 5 writes
/// another header: it must be reported, not merged).
const PROG: &str = r#"last2=$(echo "$@" | awk '{print $(NF-1), $NF}')
echo "rank $PESC_RANK alpha=$PESC_PARAM_ALPHA n=$PESC_PARAM_N args=$last2 rep=$PESC_REPETITION seed=$PESC_SEED" > "$PESC_OUTPUT_DIR/output.txt"
if [ "$PESC_RANK" = 5 ]; then
  printf 'score,other\n1,2\n' > "$PESC_OUTPUT_DIR/scores.csv"
else
  printf 'score,label\n%s,"a, b"\n%s,x\n' "$PESC_RANK" "$PESC_SEED" > "$PESC_OUTPUT_DIR/scores.csv"
fi
"#;

#[test]
fn a_sweep_runs_every_combination_and_its_results_merge_into_one_table() {
    let node = Node::start(4).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(tmp.path(), "sweep.sh", PROG);
    let id = node.submit(&[
        &prog,
        "--sweep",
        "alpha=0.1,0.5,0.9",
        "--sweep",
        "n=100..1000:900",
        "-n",
        "2",
    ]);
    let v = node.wait_for(&id, Duration::from_secs(90), |v| {
        v["state"] == "succeeded" || v["state"] == "failed"
    });
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["repetitions"], 12, "3 × 2 combinations × 2: {v}");
    assert_eq!(v["combinations"], 6);
    assert_eq!(v["sweep"], serde_json::json!(["alpha", "n"]));
    let expect = |rank: usize| {
        let combo = rank / 2;
        let alpha = ["0.1", "0.5", "0.9"][combo / 2];
        let n = ["100", "1000"][combo % 2];
        (alpha, n, rank % 2)
    };
    for (r, run) in runs(&v).iter().enumerate() {
        let (alpha, n, rep) = expect(r);
        assert_eq!(run["values"], serde_json::json!([alpha, n]), "rank {r}");
        assert_eq!(run["repetition"], rep as u64, "rank {r}");
    }
    let zip = node.results_zip(&id, &tmp.path().join("r"));
    let out = zip_text(&zip, "output.txt").unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 12, "{out}");
    let mut seeds = std::collections::BTreeSet::new();
    for (r, line) in lines.iter().enumerate() {
        let (alpha, n, rep) = expect(r);
        assert!(
            line.starts_with(&format!(
                "rank {r} alpha={alpha} n={n} args={alpha} {n} rep={rep} seed="
            )),
            "{line}"
        );
        seeds.insert(line.rsplit("seed=").next().unwrap().to_string());
    }
    assert_eq!(seeds.len(), 12, "every rank its own seed: {seeds:?}");
    // One tidy table: parameters, rank, repetition, then the program's
    // columns; rank 5's other header is reported, not dropped silently.
    let csv = zip_text(&zip, "results.csv").unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "alpha,n,rank,repetition,score,label", "{csv}");
    assert_eq!(rows.len(), 1 + 11 * 2, "{csv}");
    assert_eq!(rows[1], "0.1,100,0,0,0,\"a, b\"", "{csv}");
    assert!(
        rows.iter().any(|l| l.starts_with("0.9,1000,11,1,11,")),
        "{csv}"
    );
    assert!(!rows.iter().any(|l| l.contains(",5,1,")), "{csv}");
    let report = zip_text(&zip, "merge-report.txt").unwrap();
    assert!(
        report.contains("rank 5: output/scores.csv has the header \"score,other\""),
        "{report}"
    );
    assert!(
        zip_names(&zip)
            .unwrap()
            .iter()
            .any(|n| n == "output_rank_5/scores.csv")
    );
}

#[test]
fn a_sweep_from_a_csv_file_and_bad_sweeps_are_refused_before_anything_is_sent() {
    let node = Node::start(2).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(
        tmp.path(),
        "p.sh",
        "echo \"$PESC_PARAM_MODEL $PESC_PARAM_K\" > \"$PESC_OUTPUT_DIR/output.txt\"\n",
    );
    let grid = write_file(
        tmp.path(),
        "grid.csv",
        "model,k\nlinear,1\n\"gam, smooth\",4\n",
    );
    let id = node.submit(&[&prog, "--sweep-file", &grid]);
    let v = node.wait_for(&id, Duration::from_secs(60), |v| {
        v["state"] == "succeeded" || v["state"] == "failed"
    });
    assert_eq!(v["state"], "succeeded", "{v}");
    let zip = node.results_zip(&id, &tmp.path().join("r"));
    assert_eq!(
        zip_text(&zip, "output.txt").unwrap(),
        "linear 1\ngam, smooth 4\n"
    );
    for bad in [
        vec!["--sweep", "alpha"],
        vec!["--sweep", "2x=1,2"],
        vec!["--sweep", "a=5..1"],
    ] {
        let mut args = vec!["submit", prog.as_str()];
        args.extend(bad.iter().copied());
        let o = node.cli(&args);
        assert!(!o.status.success(), "{bad:?}");
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(
            err.contains("sweep") || err.contains("swept") || err.contains("range"),
            "{bad:?}: {err}"
        );
    }
}
