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

/// A deterministic program: its output hangs only on its seed, its
/// parameters and a shared file.
const DETERMINISTIC: &str = r#"awk -v s="$PESC_SEED" -v a="$PESC_PARAM_ALPHA" 'BEGIN { srand(s); printf "x,y\n%s,%.6f\n", a, rand() }' > "$PESC_OUTPUT_DIR/draw.csv"
cat weights.txt > "$PESC_OUTPUT_DIR/weights.txt"
"#;

#[test]
fn a_receipt_names_every_hash_and_a_rerun_gives_byte_identical_outputs() {
    let node = Node::start(2).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let weights = write_file(tmp.path(), "weights.txt", "1 2 3\n");
    let added = node.cli_json(&["files", "add", &weights, "--json"]);
    let file_hash = added["hash"].as_str().unwrap().to_string();
    let prog = write_file(tmp.path(), "draw.sh", DETERMINISTIC);
    let done = |v: &serde_json::Value| v["state"] == "succeeded" || v["state"] == "failed";
    let id = node.submit(&[
        &prog,
        "--sweep",
        "alpha=1,2",
        "-n",
        "2",
        "--shared-file",
        "weights.txt",
    ]);
    let v = node.wait_for(&id, Duration::from_secs(60), done);
    assert_eq!(v["state"], "succeeded", "{v}");
    let zip = node.results_zip(&id, &tmp.path().join("a"));
    let receipt: serde_json::Value =
        serde_json::from_str(&zip_text(&zip, "receipt.json").unwrap()).unwrap();
    assert_eq!(receipt["request"], id.as_str());
    assert_eq!(receipt["shared_files"]["weights.txt"], file_hash.as_str());
    assert_eq!(receipt["sweep"]["names"], serde_json::json!(["alpha"]));
    assert_eq!(receipt["repetitions"], 2);
    assert!(
        receipt["process"]["code"]
            .as_str()
            .is_some_and(|h| h.len() == 64)
    );
    let ranks = receipt["ranks"].as_array().unwrap();
    assert_eq!(ranks.len(), 4);
    for (r, rank) in ranks.iter().enumerate() {
        assert_eq!(rank["rank"], r as u64);
        assert_eq!(rank["exit_code"], 0);
        assert!(rank["node"].as_str().is_some(), "{rank}");
        assert!(
            rank["output"].as_str().is_some_and(|h| h.len() == 64),
            "{rank}"
        );
        assert!(rank["seed"].as_u64().is_some());
    }
    // The file under that name changes; a rerun still uses the first bytes.
    std::fs::write(&weights, "9 9 9\n").unwrap();
    let o = node.cli(&["files", "add", &weights]);
    assert!(o.status.success());
    let o = node.cli(&["rerun", &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_ne!(again, id);
    let v = node.wait_for(&again, Duration::from_secs(60), done);
    assert_eq!(v["state"], "succeeded", "{v}");
    let zip2 = node.results_zip(&again, &tmp.path().join("b"));
    assert_eq!(
        zip_text(&zip2, "output_rank_3/weights.txt").unwrap(),
        "1 2 3\n"
    );
    assert_eq!(
        zip_text(&zip, "results.csv").unwrap(),
        zip_text(&zip2, "results.csv").unwrap()
    );
    let o = node.cli(&["verify", &id, &again]);
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "{said}");
    assert!(said.contains("identical"), "{said}");
    // A program that draws from the clock: verify says which ranks differ.
    let clock = write_file(
        tmp.path(),
        "clock.sh",
        "date +%s%N > \"$PESC_OUTPUT_DIR/t.txt\"\n",
    );
    let a = node.submit(&[&clock, "-n", "2"]);
    node.wait_for(&a, Duration::from_secs(60), done);
    let o = node.cli(&["rerun", &a, "--wait"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list = node.cli_json(&["status", "--json"]);
    let b = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .find(|x| *x != a && *x != id && *x != again)
        .unwrap();
    let o = node.cli(&["verify", &a, &b]);
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(1), "{said}");
    assert!(
        said.contains("2 of 2 ranks' outputs differ: rank(s) 0, 1"),
        "{said}"
    );
    // Only its owner reruns a request.
    let user = node.http().add_user("bob", "user");
    let r = user.post(&format!("/requests/{id}/rerun")).send().unwrap();
    assert!(
        r.status().as_u16() == 403 || r.status().as_u16() == 404,
        "{}",
        r.status()
    );
}
