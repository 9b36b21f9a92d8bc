//! Parallel requests across real `pesc` processes: every rank starts
//! together and reaches rank 0 at the address and port the node gives it,
//! on loopback and across network namespaces (distinct addresses).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use pesc_tests::grid::{Grid, namespaces_available};
use pesc_tests::{runs, write_file, zip_text};
use serde_json::Value;

/// Rank 0 listens on MASTER_PORT and waits for every other rank; the others
/// connect to MASTER_ADDR:MASTER_PORT (retrying while rank 0 comes up) and
/// say who they are. Each writes what it saw to output.txt.
const MEET: &str = r#"
import os, socket, sys, time
rank = int(os.environ["RANK"]); world = int(os.environ["WORLD_SIZE"])
addr = os.environ["MASTER_ADDR"]; port = int(os.environ["MASTER_PORT"])
out = os.path.join(os.environ["PESC_OUTPUT_DIR"], "output.txt")
local = (os.environ["LOCAL_RANK"], os.environ["LOCAL_WORLD_SIZE"])
if rank == 0:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(world); s.settimeout(60)
    heard = []
    for _ in range(world - 1):
        c, _ = s.accept()
        heard.append(c.recv(100).decode().strip()); c.close()
    open(out, "w").write("rank 0 at %s:%d heard %s local %s/%s\n" % (addr, port, ",".join(sorted(heard)), *local))
else:
    deadline = time.time() + 60
    while True:
        try:
            c = socket.create_connection((addr, port), timeout=5); break
        except OSError:
            if time.time() > deadline: sys.exit("rank 0 never answered at %s:%d" % (addr, port))
            time.sleep(0.2)
    c.sendall(b"%d\n" % rank); c.close()
    open(out, "w").write("rank %d reached %s:%d local %s/%s\n" % (rank, addr, port, *local))
"#;

fn succeeded(v: &Value) -> bool {
    v["state"] == "succeeded"
}

/// Submits MEET as a parallel request of `world` ranks on node 0, waits,
/// and returns its status and output.txt.
fn meet(g: &Grid, tmp: &Path, world: u32, extra: &[&str]) -> (Value, String) {
    let prog = write_file(tmp, "meet.py", MEET);
    let n = world.to_string();
    let mut args = vec![prog.as_str(), "-n", &n, "--parallel"];
    args.extend_from_slice(extra);
    let id = g.nodes[0].submit(&args);
    let v = g.nodes[0].wait_for(&id, Duration::from_secs(120), |v| {
        v["state"]
            .as_str()
            .is_some_and(|s| s != "queued" && s != "running")
    });
    assert!(
        succeeded(&v),
        "{v:#}\nlogs: {}",
        g.nodes
            .iter()
            .map(|n| n.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    let zip = g.nodes[0].results_zip(&id, &tmp.join("res"));
    (v.clone(), zip_text(&zip, "output.txt").unwrap())
}

/// The runs' start times (ms) lie within a second of each other.
fn started_together(v: &Value) {
    let starts: Vec<u64> = runs(v)
        .iter()
        .map(|r| r["started_ms"].as_u64().unwrap())
        .collect();
    let spread = starts.iter().max().unwrap() - starts.iter().min().unwrap();
    assert!(
        spread <= 1_000,
        "ranks started {spread} ms apart: {starts:?}"
    );
}

#[test]
fn three_ranks_on_three_nodes_meet_at_rank_zero() {
    let g = Grid::loopback(3, 1, &[]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (v, text) = meet(&g, tmp.path(), 3, &[]);
    let nodes: BTreeSet<&str> = runs(&v)
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 3, "one rank per node: {v:#}");
    started_together(&v);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("rank 0 at 127.0.0.1:"), "{text}");
    assert!(lines[0].contains("heard 1,2 local 0/1"), "{text}");
    let port = lines[0]
        .split(':')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    for (i, l) in lines.iter().enumerate().skip(1) {
        assert_eq!(
            *l,
            format!("rank {i} reached 127.0.0.1:{port} local 0/1"),
            "{text}"
        );
    }
    assert_eq!(v["parallel"], true);
}

#[test]
fn a_same_node_gang_runs_on_one_node_and_a_too_large_one_says_why() {
    let g = Grid::loopback(2, 4, &[]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (v, text) = meet(&g, tmp.path(), 4, &["--same-node"]);
    let nodes: BTreeSet<&str> = runs(&v)
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 1, "{v:#}");
    started_together(&v);
    assert!(text.contains("heard 1,2,3 local 0/4"), "{text}");
    for l in ["local 1/4", "local 2/4", "local 3/4"] {
        assert!(text.contains(l), "{text}");
    }
    let prog = write_file(tmp.path(), "meet.py", MEET);
    let id = g.nodes[1].submit(&[&prog, "-n", "5", "--parallel", "--same-node"]);
    let v = g.nodes[0].wait_for(&id, Duration::from_secs(30), |v| {
        v["gang"]
            .as_str()
            .is_some_and(|s| s.contains("no node of the grid has 5 slots"))
    });
    assert_eq!(v["counts"]["queued"], 5, "{v:#}");
    let out = g.nodes[1].cli(&["cancel", &id]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
#[cfg_attr(pesc_skip_netns, ignore = "PESC_SKIP_NETNS is set")]
fn ranks_in_three_network_namespaces_reach_rank_zero_at_its_own_address() {
    assert!(
        namespaces_available(),
        "cannot create network namespaces (run as root with iproute2, or set PESC_SKIP_NETNS=1)"
    );
    let g = Grid::namespaces(3, 1, &[]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (v, text) = meet(&g, tmp.path(), 3, &[]);
    started_together(&v);
    let first = text.lines().next().unwrap();
    let addr = first
        .strip_prefix("rank 0 at ")
        .and_then(|s| s.split(':').next())
        .unwrap();
    assert!(!addr.starts_with("127."), "{text}");
    assert!(first.contains("heard 1,2"), "{text}");
    for l in text.lines().skip(1) {
        assert!(l.contains(&format!("reached {addr}:")), "{text}");
    }
}

/// The Python with torch that the torch tests run their ranks with:
/// `PESC_TORCH_PYTHON`, or CI's venv.
fn torch_python() -> String {
    let py =
        std::env::var("PESC_TORCH_PYTHON").unwrap_or_else(|_| "/opt/pesc-torch/bin/python".into());
    let ok = std::process::Command::new(&py)
        .args(["-c", "import torch.distributed"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no torch at '{py}': python3 -m venv /opt/pesc-torch && /opt/pesc-torch/bin/pip install torch numpy \
         (or set PESC_TORCH_PYTHON, or PESC_SKIP_TORCH=1)"
    );
    py
}

/// A docs/examples program as a directory whose `run.sh` starts it with
/// torch's Python (the sandbox reads /opt and the venv's files).
fn torch_program(tmp: &Path, example: &str) -> String {
    let src = pesc_tests::workspace().join("docs/examples").join(example);
    let dir = tmp.join("prog");
    std::fs::create_dir_all(&dir).unwrap();
    let file = src.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::copy(&src, dir.join(&file)).unwrap();
    write_file(
        &dir,
        "run.sh",
        &format!("exec {} {file} \"$@\"\n", torch_python()),
    );
    dir.to_str().unwrap().to_string()
}

fn run_torch(g: &Grid, prog: &str, world: u32, extra: &[&str], tmp: &Path) -> (Value, String) {
    let n = world.to_string();
    let mut args = vec![
        prog,
        "--entry",
        "run.sh",
        "--language",
        "shell",
        "-n",
        &n,
        "--parallel",
    ];
    args.extend_from_slice(extra);
    let id = g.nodes[0].submit(&args);
    let v = g.nodes[0].wait_for(&id, Duration::from_secs(300), |v| {
        v["state"]
            .as_str()
            .is_some_and(|s| s != "queued" && s != "running")
    });
    if !succeeded(&v) {
        let errs: Vec<String> = (0..world)
            .map(|r| {
                let r = r.to_string();
                pesc_tests::stdout(&g.nodes[0].cli(&["logs", &id, "--rank", &r, "--stderr"]))
            })
            .collect();
        panic!("{v:#}\nthe ranks' stderr:\n{}", errs.join("\n---\n"));
    }
    let zip = g.nodes[0].results_zip(&id, &tmp.join("res"));
    (v.clone(), zip_text(&zip, "output.txt").unwrap())
}

#[test]
#[cfg_attr(pesc_skip_torch, ignore = "PESC_SKIP_TORCH is set")]
fn torch_gloo_all_reduce_across_three_nodes() {
    let g = Grid::loopback(3, 1, &[]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = torch_program(tmp.path(), "torch-allreduce/allreduce.py");
    let (v, text) = run_torch(&g, &prog, 3, &[], tmp.path());
    let nodes: BTreeSet<&str> = runs(&v)
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 3, "{v:#}");
    let want: Vec<String> = (0..3).map(|r| format!("rank {r} of 3: sum 6")).collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), want, "{text}");
}

#[test]
#[cfg_attr(pesc_skip_torch, ignore = "PESC_SKIP_TORCH is set")]
fn the_thesis_agent_and_observers_talk_over_torch_rpc() {
    let g = Grid::loopback(3, 1, &[]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = torch_program(tmp.path(), "torch-rpc/agent_observer.py");
    let (_, text) = run_torch(&g, &prog, 3, &["--parameters", "5"], tmp.path());
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("agent: 2 observers, 5 steps each, 10 actions chosen, rewards "),
        "{text}"
    );
    assert_eq!(
        &lines[1..],
        ["observer 1 served", "observer 2 served"],
        "{text}"
    );
}

/// MEET, then every rank stays 6 s (long enough to kill a node under it).
const MEET_THEN_STAY: &str = "import time\nexec(open('meet.py').read())\ntime.sleep(6)\n";

#[test]
fn a_node_killed_mid_gang_restarts_the_gang_elsewhere_with_one_result_per_rank() {
    let mut g = Grid::loopback(4, 1, &["--lease-ttl-ms", "3000"]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("prog");
    std::fs::create_dir_all(&dir).unwrap();
    write_file(&dir, "meet.py", MEET);
    write_file(&dir, "stay.py", MEET_THEN_STAY);
    let id = g.nodes[0].submit(&[
        dir.to_str().unwrap(),
        "--entry",
        "stay.py",
        "--language",
        "python",
        "-n",
        "3",
        "--parallel",
    ]);
    let v = g.nodes[0].wait_for(&id, Duration::from_secs(60), |v| {
        v["counts"]["running"] == 3
    });
    // A node other than the submitter's, running a rank.
    let ids: Vec<String> = g.nodes.iter().map(|n| n.node_id()).collect();
    let victim = (1..4)
        .find(|&i| runs(&v).iter().any(|r| r["node"] == ids[i].as_str()))
        .unwrap();
    g.nodes[victim].kill9();
    let v = g.nodes[0].wait_for(&id, Duration::from_secs(120), |v| {
        v["state"]
            .as_str()
            .is_some_and(|s| s != "queued" && s != "running")
    });
    assert!(succeeded(&v), "{v:#}");
    let round = runs(&v)[0]["attempt"].as_u64().unwrap();
    assert!(round >= 1, "the gang started again: {v:#}");
    for r in runs(&v) {
        assert_ne!(r["node"], ids[victim].as_str(), "{v:#}");
        assert_eq!(r["attempt"].as_u64(), Some(round), "one round: {v:#}");
        let results = r["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "succeeded")
            .count();
        assert_eq!(results, 1, "{r:#}");
    }
    let zip = g.nodes[0].results_zip(&id, &tmp.path().join("res"));
    let text = zip_text(&zip, "output.txt").unwrap();
    assert!(text.lines().next().unwrap().contains("heard 1,2"), "{text}");
}
