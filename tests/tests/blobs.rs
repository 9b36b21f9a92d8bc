//! Content-addressed files across real `pesc` processes: shared files
//! fetched once per node and read-only for runs, a corrupting peer caught
//! and avoided, an interrupted download resumed, results that outlive the
//! node that made them, and a checkpointed run resumed on another node.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pesc_tests::grid::Grid;
use pesc_tests::{Node, runs, write_file, zip_text};
use serde_json::Value;

const TTL: &[&str] = &["--lease-ttl-ms", "3000"];

fn all_succeeded(v: &Value) -> bool {
    v["state"] == "succeeded"
}

/// A file of `mib` MiB whose every block differs.
fn data_file(dir: &Path, name: &str, mib: usize) -> (PathBuf, String) {
    let mut data = Vec::with_capacity(mib << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < (mib << 20) + 12_345 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let p = dir.join(name);
    std::fs::write(&p, &data).unwrap();
    (p, blake3::hash(&data).to_hex().to_string())
}

fn blob_path(node: &Node, hash: &str) -> PathBuf {
    node.data_dir.join("blobs").join(&hash[..2]).join(hash)
}

fn traffic(node: &Node) -> Value {
    node.http()
        .get("/node")
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap()["traffic"]
        .clone()
}

fn hash_of(p: &Path) -> String {
    blake3::hash(&std::fs::read(p).unwrap())
        .to_hex()
        .to_string()
}

#[test]
fn shared_files_are_fetched_once_per_node_and_runs_cannot_change_them() {
    let g = Grid::loopback(2, 2, &[]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (path, hash) = data_file(tmp.path(), "data.csv", 3);
    let size = std::fs::metadata(&path).unwrap().len();
    let added = g.nodes[0].cli_json(&["files", "add", path.to_str().unwrap(), "--json"]);
    assert_eq!(added["hash"], hash.as_str(), "{added}");
    assert_eq!(added["name"], "data.csv");
    // Every run prints the checksum of what it sees, then tries to spoil it.
    let prog = write_file(
        tmp.path(),
        "spoil.sh",
        "cksum < data.csv > \"$PESC_OUTPUT_DIR/seen.txt\"\n\
         echo garbage >> data.csv 2>/dev/null\n\
         chmod u+w data.csv 2>/dev/null; echo garbage >> data.csv 2>/dev/null\n\
         rm -f data.csv\n\
         sleep 1\n",
    );
    let want = pesc_tests::stdout(
        &std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cksum < {}", path.display()))
            .output()
            .unwrap(),
    );
    let id = g.nodes[1].submit(&[&prog, "-n", "12", "--shared-file", "data.csv"]);
    let v = g.nodes[1].wait_for(&id, Duration::from_secs(60), all_succeeded);
    let on_n0 = runs(&v)
        .iter()
        .filter(|r| r["node"] == g.nodes[0].node_id().as_str())
        .count();
    assert!(on_n0 > 0 && on_n0 < 12, "both nodes should run some: {v}");
    // Every run saw the original bytes, though earlier runs in the same slot
    // appended to and deleted their copy.
    let zip = g.nodes[1].results_zip(&id, &tmp.path().join("r"));
    for rank in 0..12 {
        let seen = zip_text(&zip, &format!("output_rank_{rank}/seen.txt")).unwrap();
        assert_eq!(seen.trim(), want.trim(), "rank {rank} saw changed data");
    }
    // The nodes' shared copies are intact, and each node fetched it once.
    for n in &g.nodes {
        assert_eq!(hash_of(&blob_path(n, &hash)), hash);
    }
    let received = traffic(&g.nodes[1])["blob_received"].as_u64().unwrap();
    assert!(
        received >= size && received < 2 * size,
        "n1 received {received} bytes of blobs for a {size}-byte file"
    );
    let list = g.nodes[0].cli_json(&["files", "list", "--json"]);
    assert_eq!(list[0]["holders"].as_array().unwrap().len(), 2, "{list}");
    // Bad input: an unknown shared file and a name that is a path.
    let out = g.nodes[0].cli(&["submit", &prog, "--shared-file", "nope.csv"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no shared file 'nope.csv'"));
    let out = g.nodes[0].cli(&["files", "add", path.to_str().unwrap(), "--name", "../x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a plain file name"));
}

#[test]
fn a_peer_sending_bad_blocks_is_caught_and_avoided() {
    let g = Grid::loopback(3, 1, &[]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (path, hash) = data_file(tmp.path(), "big.bin", 24);
    g.nodes[0].cli_json(&["files", "add", path.to_str().unwrap(), "--json"]);
    let fetched = g.nodes[1].cli_json(&["files", "fetch", "big.bin", "--json"]);
    assert_eq!(fetched["here"], true, "{fetched}");
    // n0's copy goes bad on disk: one byte flipped in every block.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(blob_path(&g.nodes[0], &hash))
            .unwrap();
        let len = f.metadata().unwrap().len();
        let mut off = 777;
        while off < len {
            let mut b = [0u8];
            f.read_exact_at(&mut b, off).unwrap();
            f.write_all_at(&[b[0] ^ 0x40], off).unwrap();
            off += 1 << 20;
        }
    }
    let sent_before = traffic(&g.nodes[0])["blob_sent"].as_u64().unwrap();
    let out = g.nodes[2].cli_json(&["files", "fetch", "big.bin", "--json"]);
    assert_eq!(out["here"], true, "{out}");
    assert_eq!(hash_of(&blob_path(&g.nodes[2], &hash)), hash);
    let t = traffic(&g.nodes[2]);
    assert!(t["blob_rejected"].as_u64().unwrap() >= 1, "{t}");
    assert!(g.nodes[2].log().contains("sent bad data"));
    // Avoided after its first bad block: n0 sent at most one pipeline's worth.
    let sent = traffic(&g.nodes[0])["blob_sent"].as_u64().unwrap() - sent_before;
    assert!(
        sent <= 8 << 20 | 1 << 16,
        "the bad peer kept sending: {sent} bytes"
    );
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let mut g = Grid::loopback(2, 1, &[]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (path, hash) = data_file(tmp.path(), "huge.bin", 400);
    let size = std::fs::metadata(&path).unwrap().len();
    g.nodes[0].cli_json(&["files", "add", path.to_str().unwrap(), "--json"]);
    let n1 = g.nodes[1].data_dir.clone();
    let bin = g.nodes[1].bin.clone();
    let mut child = std::process::Command::new(&bin)
        .arg("--data-dir")
        .arg(&n1)
        .args(["files", "fetch", "huge.bin"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Stop n1 once part of the file has arrived.
    let t0 = Instant::now();
    let got = loop {
        let got = traffic(&g.nodes[1])["blob_received"].as_u64().unwrap();
        if got > size / 5 {
            break got;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the download did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    g.nodes[1].kill9();
    let _ = child.kill();
    let _ = child.wait();
    assert!(got < size, "the download finished before it could be cut");
    g.nodes[1] = Node::start_in(n1, 1, bin, None, &["--name", "n1"]).unwrap();
    g.nodes[1].wait_connected(2, Duration::from_secs(30));
    let out = g.nodes[1].cli_json(&["files", "fetch", "huge.bin", "--json"]);
    assert_eq!(out["here"], true, "{out}");
    assert_eq!(hash_of(&blob_path(&g.nodes[1], &hash)), hash);
    let again = traffic(&g.nodes[1])["blob_received"].as_u64().unwrap();
    assert!(
        again < size - got / 2,
        "the restarted node fetched {again} of {size} bytes: it started over"
    );
    assert!(g.nodes[1].log().contains("resuming the download"));
}

#[test]
fn results_outlive_the_node_that_made_them() {
    let mut g = Grid::loopback(3, 1, TTL).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(
        tmp.path(),
        "out.sh",
        "echo \"rank $PESC_RANK made on $PESC_NODE_ID\" > \"$PESC_OUTPUT_DIR/result.txt\"\n",
    );
    let id = g.nodes[0].submit(&[&prog, "-n", "3"]);
    let v = g.nodes[0].wait_for(&id, Duration::from_secs(60), all_succeeded);
    // Each run is kept by its node and one more.
    for r in runs(&v) {
        let reps = r["replicas"].as_array().unwrap();
        assert_eq!(reps.len(), 2, "{r}");
        assert_eq!(reps[0], r["node"], "{r}");
        assert_ne!(reps[0], reps[1], "{r}");
    }
    // Kill the node that ran rank 0 as soon as it is done; fetch from another.
    let maker = runs(&v)[0]["node"].as_str().unwrap().to_string();
    let victim = (0..3).find(|i| g.nodes[*i].node_id() == maker).unwrap();
    g.nodes[victim].kill9();
    let other = (0..3).find(|i| *i != victim).unwrap();
    let zip = g.nodes[other].results_zip(&id, &tmp.path().join("r"));
    let text = zip_text(&zip, "output_rank_0/result.txt").unwrap();
    assert_eq!(text.trim(), format!("rank 0 made on {maker}"));
}

#[test]
fn a_checkpointed_run_resumes_on_another_node() {
    let mut g = Grid::loopback(
        3,
        1,
        &["--lease-ttl-ms", "3000", "--checkpoint-interval-s", "1"],
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(tmp.path(), "count.sh", &counter(60));
    let id = g.nodes[0].submit(&[&prog, "-n", "1"]);
    // Wait for a checkpoint snapshot past 15, then kill the node running it.
    let v = g.nodes[0].wait_for(&id, Duration::from_secs(60), |v| {
        runs(v)[0]["checkpoint"].is_string() && runs(v)[0]["state"] == "running"
    });
    let t_running = Instant::now();
    while t_running.elapsed() < Duration::from_millis(2500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let runner = runs(&v)[0]["node"].as_str().unwrap().to_string();
    let victim = (0..3).find(|i| g.nodes[*i].node_id() == runner).unwrap();
    g.nodes[victim].kill9();
    let other = (0..3).find(|i| *i != victim).unwrap();
    let v = g.nodes[other].wait_for(&id, Duration::from_secs(90), all_succeeded);
    let r = &runs(&v)[0];
    assert_ne!(r["node"], runner.as_str(), "{r}");
    assert!(r["attempt"].as_u64().unwrap() >= 1, "{r}");
    let zip = g.nodes[other].results_zip(&id, &tmp.path().join("r"));
    let (start, reached) = count_result(&zip);
    assert!(
        start >= 10,
        "the run restarted instead of resuming: from {start}"
    );
    assert_eq!(reached, 60);
}

/// A program that counts to `to`, 0.1 s a step, its counter saved
/// atomically in checkpoint/; it writes where it started and ended.
fn counter(to: u32) -> String {
    format!(
        "c=0\n\
         [ -f \"$PESC_CHECKPOINT_DIR/counter\" ] && c=$(cat \"$PESC_CHECKPOINT_DIR/counter\")\n\
         start=$c\n\
         while [ $c -lt {to} ]; do\n\
           sleep 0.1; c=$((c+1))\n\
           echo $c > \"$PESC_CHECKPOINT_DIR/counter.tmp\"\n\
           mv \"$PESC_CHECKPOINT_DIR/counter.tmp\" \"$PESC_CHECKPOINT_DIR/counter\"\n\
         done\n\
         echo \"started at $start, reached $c\" > \"$PESC_OUTPUT_DIR/count.txt\"\n"
    )
}

/// (start, end) of rank 0 of [`counter`]'s results.
fn count_result(zip: &Path) -> (u32, u32) {
    let text = zip_text(zip, "output_rank_0/count.txt").unwrap();
    let nums: Vec<u32> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums[..] {
        [start, end] => (start, end),
        _ => panic!("unexpected output {text:?}"),
    }
}

#[test]
fn a_stopped_node_hands_its_runs_back_with_their_last_checkpoint() {
    // Leases outlive the test: only the hand-back can move the run in time.
    // No periodic snapshots: only the last one, taken at the stop, can carry
    // the counter over.
    let mut g = Grid::loopback(
        2,
        1,
        &[
            "--lease-ttl-ms",
            "120000",
            "--checkpoint-interval-s",
            "3600",
        ],
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(tmp.path(), "count.sh", &counter(80));
    let id = g.nodes[0].submit(&[&prog, "-n", "1"]);
    let running = |v: &Value| runs(v)[0]["state"] == "running";
    g.nodes[0].wait_for(&id, Duration::from_secs(60), running);
    std::thread::sleep(Duration::from_millis(2500));
    // Read again: the node that runs it now.
    let v = g.nodes[0].wait_for(&id, Duration::from_secs(10), running);
    let runner = runs(&v)[0]["node"].as_str().unwrap().to_string();
    let victim = (0..2).find(|i| g.nodes[*i].node_id() == runner).unwrap();
    let other = 1 - victim;
    let (took, clean) = g.nodes[victim].stop(Duration::from_secs(40));
    assert!(
        clean,
        "the node did not exit cleanly: {}",
        g.nodes[victim].log()
    );
    assert!(
        g.nodes[victim].log().contains("handing them back"),
        "{}",
        g.nodes[victim].log()
    );
    let v = g.nodes[other].wait_for(&id, Duration::from_secs(60), all_succeeded);
    let r = &runs(&v)[0];
    assert_eq!(r["node"], g.nodes[other].node_id().as_str(), "{r}");
    assert_eq!(r["attempt"], 1, "{r}");
    let zip = g.nodes[other].results_zip(&id, &tmp.path().join("r"));
    let (start, reached) = count_result(&zip);
    assert!(
        start >= 10,
        "the run restarted instead of resuming from the stop (stop took {took:?}): from {start}\n{r}\nstopped node: {}\nother: {}",
        g.nodes[victim].log(),
        g.nodes[other].log()
    );
    assert_eq!(reached, 80);
}

/// A program that crashes halfway, having saved its progress in
/// `checkpoint/`, goes on from there once by itself (PESC's process
/// monitor), without `--retries`; told not to, it fails.
#[test]
fn a_crash_with_a_checkpoint_is_retried_from_it_once() {
    let node = Node::start(1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(
        tmp.path(),
        "crash.py",
        r#"import os, sys
ck = os.path.join(os.environ["PESC_CHECKPOINT_DIR"], "done_half")
out = os.path.join(os.environ["PESC_OUTPUT_DIR"], "output.txt")
if not os.path.exists(ck):
    open(ck + ".tmp", "w").write("50")
    os.rename(ck + ".tmp", ck)
    sys.exit("crashed halfway")
open(out, "w").write("resumed from " + open(ck).read() + "\n")
"#,
    );
    let id = node.submit(&[&prog]);
    let v = node.wait_for(&id, Duration::from_secs(60), |v| {
        v["state"] == "succeeded" || v["state"] == "failed"
    });
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(runs(&v)[0]["attempts"], 2, "{v:#}");
    let zip = node.results_zip(&id, &tmp.path().join("r"));
    assert_eq!(zip_text(&zip, "output.txt").unwrap(), "resumed from 50\n");
    let id = node.submit(&[&prog, "--checkpoint-retries", "0"]);
    let v = node.wait_for(&id, Duration::from_secs(60), |v| {
        v["state"] == "succeeded" || v["state"] == "failed"
    });
    assert_eq!(v["state"], "failed", "{v:#}");
}
