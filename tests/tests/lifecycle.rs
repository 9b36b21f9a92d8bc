//! Restart safety, cancellation, failures, live logs and the run header,
//! through real `pesc` processes.

use std::time::{Duration, Instant};

use pesc_tests::{Node, read_events, runs, stdout, write_file, zip_text};
use serde_json::Value;

fn count(v: &Value, state: &str) -> usize {
    runs(v).iter().filter(|r| r["state"] == state).count()
}

#[test]
fn kill_9_and_restart_continues_the_request() {
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(
        tmp.path(),
        "slow.sh",
        "sleep 1.5\necho \"rank $PESC_RANK attempt $PESC_ATTEMPT\" > \"$PESC_OUTPUT_DIR/output.txt\"\n",
    );
    let data = tmp.path().join("data");
    let bin = pesc_tests::pesc_bin("debug");
    let mut node = Node::start_in(data.clone(), 2, bin.clone(), None, &[]).unwrap();
    let id = node.submit(&[&prog, "-n", "6"]);
    // Kill the node while some ranks are done and others are running.
    let before = node.wait_for(&id, Duration::from_secs(30), |v| {
        count(v, "succeeded") >= 2 && count(v, "running") >= 1
    });
    let done_before: Vec<u64> = before["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "succeeded")
        .map(|r| r["rank"].as_u64().unwrap())
        .collect();
    let interrupted: Vec<u64> = before["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "running")
        .map(|r| r["rank"].as_u64().unwrap())
        .collect();
    node.kill9();
    drop(node);
    let node = Node::start_in(data, 2, bin, None, &[]).unwrap();
    assert!(node.log().contains("will run again"), "{}", node.log());
    let after = node.wait_for(&id, Duration::from_secs(60), |v| v["state"] == "succeeded");
    let runs = after["runs"].as_array().unwrap();
    for r in &done_before {
        // Finished results intact: the same first attempt is still the result.
        assert_eq!(runs[*r as usize]["attempt"], 0, "rank {r} re-ran: {after}");
    }
    for r in &interrupted {
        assert!(
            runs[*r as usize]["attempt"].as_u64().unwrap() >= 1,
            "rank {r} was not re-run: {after}"
        );
        assert!(runs[*r as usize]["attempts"].as_u64().unwrap() >= 2);
    }
    let out = tempfile::tempdir().unwrap();
    let o = node.cli(&["results", &id, "-o", out.path().to_str().unwrap()]);
    let text = zip_text(std::path::Path::new(&stdout(&o)), "output.txt").unwrap();
    let ranks: Vec<&str> = text.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(ranks, vec!["0", "1", "2", "3", "4", "5"], "{text}");
}

#[test]
fn cancel_stops_every_run_and_its_children() {
    let tmp = tempfile::tempdir().unwrap();
    // Each run starts a grandchild too: cancel must stop the whole run.
    let prog = write_file(tmp.path(), "forever.sh", "sleep 300 &\nwait\n");
    let node = Node::start(3).unwrap();
    let id = node.submit(&[&prog, "-n", "5"]);
    node.wait_for(&id, Duration::from_secs(30), |v| count(v, "running") == 3);
    // The runs' processes as the host sees them: 3 runs × (main, child).
    let t0 = Instant::now();
    while pesc_tests::run_processes(&id).len() < 6 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{:?}",
            pesc_tests::run_processes(&id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = node.cli(&["cancel", &id[..6]]);
    assert!(stdout(&o).contains("cancelled"), "{}", stdout(&o));
    let t0 = Instant::now();
    let v = node.wait_for(&id, Duration::from_secs(10), |v| {
        v["state"] == "cancelled" && count(v, "cancelled") == 5
    });
    // Bounded wait for the kernel to reap.
    while !pesc_tests::run_processes(&id).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "processes survived the cancel: {:?}",
            pesc_tests::run_processes(&id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(count(&v, "cancelled"), 5);
    let r = node
        .http()
        .get(&format!("/requests/{id}/results"))
        .send()
        .unwrap();
    assert!(
        r.status().is_success(),
        "a cancelled request's partial results download"
    );
}

#[test]
fn failures_exit_codes_retries_and_wait_status() {
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(
        tmp.path(),
        "fail.sh",
        "echo oops >&2\nif [ \"$PESC_RANK\" = 1 ]; then exit 3; fi\n",
    );
    let node = Node::start(2).unwrap();
    let o = node.cli(&["submit", &prog, "-n", "3", "--wait", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "--wait exits non-zero when a rank failed"
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "failed");
    assert_eq!(v["runs"][1]["state"], "failed");
    assert_eq!(v["runs"][1]["exit_code"], 3);
    assert!(v["runs"][1]["reason"].as_str().unwrap().contains("code 3"));
    assert_eq!(v["runs"][0]["state"], "succeeded");
    let id = v["id"].as_str().unwrap();
    let err = node.cli(&["logs", id, "--rank", "1", "--stderr"]);
    assert_eq!(stdout(&err), "oops");
    // With retries, a flaky program gets more attempts.
    let flaky = write_file(
        tmp.path(),
        "flaky.sh",
        "if [ \"$PESC_ATTEMPT\" = 0 ]; then exit 1; fi\necho ok > \"$PESC_OUTPUT_DIR/output.txt\"\n",
    );
    let v = node.cli_json(&[
        "submit",
        &flaky,
        "-n",
        "2",
        "--retries",
        "1",
        "--wait",
        "--json",
    ]);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["runs"][0]["attempt"], 1);
    // A program that cannot start is an error with a reason, not a mystery.
    let v = node.cli_json(&[
        "submit",
        &flaky,
        "--entry",
        "no-such-program-xyz",
        "--wait",
        "--json",
    ]);
    assert_eq!(v["state"], "failed");
    assert!(
        v["runs"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot start 'no-such-program-xyz'"),
        "{v}"
    );
}

#[test]
fn header_arguments_environment_and_followed_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("proj");
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    write_file(
        &dir,
        "main.sh",
        "for a in \"$@\"; do echo \"arg:$a\"; done\nenv | grep -E '^(PESC_|RANK=|WORLD_SIZE=|LOCAL_RANK=|MASTER_)' | sort\n. ./lib/util.sh\n[ -d checkpoint ] && [ -d output ] && echo dirs-ok\nfor i in 1 2 3; do echo tick $i; sleep 0.3; done\n",
    );
    write_file(&dir.join("lib"), "util.sh", "echo util-loaded\n");
    let node = Node::start(2).unwrap();
    let id = node.submit(&[
        dir.to_str().unwrap(),
        "-n",
        "2",
        "--parameters",
        "p1",
        "two words",
    ]);
    // Follow rank 1 live: the command ends when the run does.
    let o = node.cli(&["logs", &id, "--rank", "1", "--follow"]);
    let text = stdout(&o);
    let args: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("arg:"))
        .collect();
    assert_eq!(args[0], "--app_dir");
    let app_dir = args[1];
    assert_eq!(
        &args[2..],
        &[
            "--checkpoint_dir",
            &format!("{app_dir}/checkpoint"),
            "--output_dir",
            &format!("{app_dir}/output"),
            "--rank",
            "1",
            "--world_size",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            "29500",
            "--parameters",
            "p1",
            "two words"
        ]
    );
    for needle in [
        "PESC_RANK=1",
        "PESC_WORLD_SIZE=2",
        "RANK=1",
        "WORLD_SIZE=2",
        "LOCAL_RANK=0",
        "MASTER_ADDR=127.0.0.1",
        "MASTER_PORT=29500",
        "util-loaded",
        "dirs-ok",
        "tick 3",
    ] {
        assert!(
            text.lines().any(|l| l == needle),
            "missing '{needle}' in:\n{text}"
        );
    }
    let v = node.wait_for(&id, Duration::from_secs(20), |v| v["state"] == "succeeded");
    assert_eq!(v["runs"][1]["state"], "succeeded");
}

#[test]
fn checkpoint_dir_is_kept_across_attempts() {
    let tmp = tempfile::tempdir().unwrap();
    // Counts to 10 in checkpoint/counter; the first attempt dies at 5.
    let prog = write_file(
        tmp.path(),
        "count.sh",
        r#"c=$(cat checkpoint/counter 2>/dev/null || echo 0)
start=$c
while [ "$c" -lt 10 ]; do
  c=$((c+1)); echo $c > checkpoint/counter
  if [ "$PESC_ATTEMPT" = 0 ] && [ "$c" = 5 ]; then exit 1; fi
done
echo "rank $PESC_RANK resumed at $start" > "$PESC_OUTPUT_DIR/output.txt"
"#,
    );
    let node = Node::start(2).unwrap();
    let v = node.cli_json(&[
        "submit",
        &prog,
        "-n",
        "3",
        "--retries",
        "1",
        "--wait",
        "--json",
    ]);
    assert_eq!(v["state"], "succeeded", "{v}");
    let out = tempfile::tempdir().unwrap();
    let o = node.cli(&[
        "results",
        v["id"].as_str().unwrap(),
        "-o",
        out.path().to_str().unwrap(),
    ]);
    let text = zip_text(std::path::Path::new(&stdout(&o)), "output.txt").unwrap();
    assert_eq!(
        text,
        "rank 0 resumed at 5\nrank 1 resumed at 5\nrank 2 resumed at 5\n"
    );
}

#[test]
fn metrics_count_runs_slots_and_blobs_in_prometheus_text() {
    let node = Node::start(2).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(
        tmp.path(),
        "ok.sh",
        "echo done > \"$PESC_OUTPUT_DIR/output.txt\"\n",
    );
    let v = node.cli_json(&["submit", &prog, "-n", "3", "--wait", "--json"]);
    assert_eq!(v["state"], "succeeded", "{v}");
    let url = node.api_base().replace("/api/v1", "/metrics");
    let resp = reqwest::blocking::get(&url).unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = resp.text().unwrap();
    for line in [
        "pesc_runs{state=\"succeeded\"} 3",
        "pesc_runs{state=\"queued\"} 0",
        "pesc_requests 1",
        "pesc_slots 2",
        "pesc_leases 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    let blobs: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("pesc_blob_bytes{kind=\"kept\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(blobs > 0, "{text}");
}

#[test]
fn programs_report_progress_and_messages_through_a_file() {
    let node = Node::start(1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(
        tmp.path(),
        "steps.sh",
        "echo 'loading data' >> \"$PESC_PROGRESS_FILE\"\n\
         echo '50 half way' >> \"$PESC_PROGRESS_FILE\"\n\
         sleep 3\n\
         echo '100% done' >> \"$PESC_PROGRESS_FILE\"\n",
    );
    let id = node.submit(&[&prog, "-n", "1"]);
    let v = node.wait_for(&id, Duration::from_secs(30), |v| {
        runs(v)[0]["progress"] == 50 && runs(v)[0]["state"] == "running"
    });
    assert_eq!(runs(&v)[0]["message"], "half way", "{v}");
    let v = node.wait_for(&id, Duration::from_secs(30), |v| v["state"] == "succeeded");
    assert_eq!(runs(&v)[0]["progress"], 100, "{v}");
    assert_eq!(runs(&v)[0]["message"], "done", "{v}");
    let table = stdout(&node.cli(&["status", &id]));
    assert!(table.contains("100%") && table.contains("done"), "{table}");
}

#[test]
fn events_stream_every_change_and_resume_after_the_last_id() {
    let node = Node::start(2).unwrap();
    let api = node.http();
    let anon = reqwest::blocking::get(format!("{}/events", node.api_base())).unwrap();
    assert_eq!(anon.status(), 401);
    let mut resp = api.get("/events?since=0").send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(tmp.path(), "ok.sh", "sleep 0.2\n");
    let id = node.submit(&[&prog, "-n", "4"]);
    let seen = |evs: &[(u64, String, String)]| evs.iter().filter(|e| e.2.contains(&id)).count();
    let evs = read_events(&mut resp, |evs| seen(evs) >= 3);
    assert_eq!(evs[0].1, "hello", "{evs:?}");
    let mine: Vec<u64> = evs
        .iter()
        .filter(|e| e.2.contains(&id))
        .map(|e| e.0)
        .collect();
    assert!(mine.windows(2).all(|w| w[0] < w[1]), "ids go up: {mine:?}");
    node.wait_for(&id, Duration::from_secs(30), |v| v["state"] == "succeeded");
    // Reconnect after the first change seen: the later ones come again, and
    // nothing from before.
    let after = mine[0];
    let mut again = api.get(&format!("/events?since={after}")).send().unwrap();
    let replay = read_events(&mut again, |evs| seen(evs) >= 2);
    let ids: Vec<u64> = replay
        .iter()
        .filter(|e| e.1 == "request")
        .map(|e| e.0)
        .collect();
    assert!(
        !ids.is_empty() && ids.iter().all(|i| *i > after),
        "{replay:?}"
    );
    assert!(
        ids.contains(&mine[1]),
        "the change after {after} is replayed: {replay:?}"
    );
    // An id this node never gave: start over.
    let mut future = api.get("/events?since=999999").send().unwrap();
    let evs = read_events(&mut future, |evs| evs.len() >= 2);
    assert_eq!(evs[1].1, "reset", "{evs:?}");
}

/// node.toml re-read on SIGHUP: the new name and policy apply without a
/// restart, and a run that was running goes on untouched.
#[test]
fn sighup_rereads_node_toml_without_stopping_runs() {
    let node = pesc_tests::Node::start(1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = pesc_tests::write_file(
        tmp.path(),
        "job.sh",
        "sleep 2\necho done > \"$PESC_OUTPUT_DIR/output.txt\"\n",
    );
    let id = node.submit(&[&prog]);
    node.wait_for(&id, Duration::from_secs(30), |v| {
        v["counts"]["running"] == 1
    });
    let path = node.data_dir.join("node.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let renamed: String = text
        .lines()
        .map(|l| {
            if l.starts_with("name = ") {
                "name = \"renamed\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(renamed.contains("name = \"renamed\""), "{text}");
    std::fs::write(&path, renamed + "\n").unwrap();
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(node.pid() as i32, libc::SIGHUP) };
    let t0 = std::time::Instant::now();
    loop {
        let nodes = node.cli_json(&["nodes", "--json"]);
        if nodes.to_string().contains("\"renamed\"") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{nodes}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = node.wait_for(&id, Duration::from_secs(30), |v| {
        v["state"] == "succeeded" || v["state"] == "failed"
    });
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(
        pesc_tests::runs(&v)[0]["attempts"],
        1,
        "the run went on: {v}"
    );
    // A node.toml that does not parse leaves the settings as they were.
    std::fs::write(&path, "slots = \"many\"\n").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(node.pid() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        node.cli_json(&["nodes", "--json"])
            .to_string()
            .contains("\"renamed\"")
    );
    assert!(
        node.log().contains("node.toml not re-read"),
        "{}",
        node.log()
    );
}
