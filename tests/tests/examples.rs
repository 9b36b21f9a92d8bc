//! End to end through the real binary: the thesis's examples submitted with
//! the CLI, watched, and their results downloaded.

use std::time::Duration;

use pesc_tests::{Node, stdout, workspace, zip_names, zip_text};

#[test]
fn integral_example_ten_ranks_in_rank_order() {
    let node = Node::start(4).unwrap();
    let example = workspace().join("docs/examples/integral/integral.py");
    let v = node.cli_json(&[
        "submit",
        example.to_str().unwrap(),
        "--repetitions",
        "10",
        "--wait",
        "--json",
    ]);
    assert_eq!(v["state"], "succeeded", "{v}\n{}", node.log());
    let id = v["id"].as_str().unwrap().to_string();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 10);
    assert!(
        runs.iter()
            .all(|r| r["state"] == "succeeded" && r["exit_code"] == 0)
    );

    let out_dir = tempfile::tempdir().unwrap();
    let o = node.cli(&["results", &id, "-o", out_dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let zip = std::path::PathBuf::from(stdout(&o));
    assert!(zip.starts_with(out_dir.path()));
    let names = zip_names(&zip).unwrap();
    for r in 0..10 {
        assert!(
            names.contains(&format!("output_rank_{r}/output.txt")),
            "rank {r} missing in {names:?}"
        );
    }
    // output.txt: every rank's lines, ranks in order 0..9, each rank's first field its rank.
    let text = zip_text(&zip, "output.txt").unwrap();
    let ranks: Vec<u32> = text
        .lines()
        .map(|l| l.split(',').next().unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(ranks.len(), 50, "5 precisions per rank:\n{text}");
    assert!(
        ranks.windows(2).all(|w| w[0] <= w[1]),
        "not in rank order: {ranks:?}"
    );
    assert_eq!(ranks.first(), Some(&0));
    assert_eq!(ranks.last(), Some(&9));
    // The trapezoid rule converges on the true integral, 1 - sin(2)/2.
    let last: f64 = text
        .lines()
        .last()
        .unwrap()
        .split(',')
        .nth(3)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((last - (1.0 - (2.0f64).sin() / 2.0)).abs() < 1e-6, "{last}");
    let stdout_txt = zip_text(&zip, "stdout.txt").unwrap();
    assert_eq!(stdout_txt.matches("Tempo de execução").count(), 10);
}

#[test]
fn shell_and_box_muller_examples_in_a_directory() {
    let node = Node::start(2).unwrap();
    // The Hermes workflow: submit the current directory.
    let dir = workspace().join("docs/examples/boxmuller");
    let o = node.cli_in(
        &[
            "submit",
            ".",
            "-n",
            "3",
            "--parameters",
            "50",
            "--wait",
            "--json",
        ],
        Some(&dir),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "succeeded", "{v}");
    let shell = workspace().join("docs/examples/shell/hello.sh");
    let v = node.cli_json(&[
        "submit",
        shell.to_str().unwrap(),
        "-n",
        "2",
        "--parameters",
        "x",
        "y",
        "--wait",
        "--json",
    ]);
    assert_eq!(v["state"], "succeeded");
    let logs = node.cli(&["logs", v["id"].as_str().unwrap(), "--rank", "1"]);
    assert!(
        stdout(&logs).starts_with("rank 1 of 2 on"),
        "{}",
        stdout(&logs)
    );
    assert!(stdout(&logs).ends_with("parameters: x y"));
    let all = node.cli_json(&["status", "--json"]);
    assert_eq!(all.as_array().unwrap().len(), 2);
    let _ = Duration::from_secs(0);
}
