//! The desktop's owner comes first, through real nodes: runs stopped with
//! SIGSTOP the moment the owner touches the (simulated) keyboard, resumed
//! when the desktop is idle again, handed back from their checkpoint when
//! the owner stays; peak memory learned from a real program; settings an
//! admin changes on another node without a restart.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use pesc_tests::{Node, run_processes, runs, write_file, zip_text};
use serde_json::Value;

/// The state letter of a process (`T`: stopped).
fn state_of(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit(')').next()?.trim_start().chars().next()
}

/// Sets the keyboard's last use `ago` before now (its access time: what
/// the node reads of an input device).
fn keyboard_used(kbd: &Path, ago: Duration) {
    let at = SystemTime::now() - ago;
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let ok = Command::new("touch")
        .args(["-a", "-d", &format!("@{secs}")])
        .arg(kbd)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn wait_until(what: &str, limit: Duration, node: &Node, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: {}", node.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A node that watches a keyboard of its own (a file this test touches).
fn owner_node(dir: &Path, kbd: &Path, vacate_minutes: u32, extra: &[&str]) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("node.toml"),
        format!(
            "idle_minutes = 1\nvacate_minutes = {vacate_minutes}\nidle_source = \"input\"\ninput_paths = [\"{}\"]\n",
            kbd.display()
        ),
    )
    .unwrap();
    Node::start_in(
        dir.to_path_buf(),
        1,
        pesc_tests::pesc_bin("debug"),
        None,
        extra,
    )
    .unwrap()
}

/// Counts to 40 in 0.25 s steps, keeping the count in its checkpoint; its
/// output says where it started.
const COUNTER: &str = r#"ck="$PESC_CHECKPOINT_DIR/count"
i=0
[ -f "$ck" ] && i=$(cat "$ck")
echo "started at $i" > "$PESC_OUTPUT_DIR/output.txt"
while [ "$i" -lt 40 ]; do
  i=$((i + 1))
  echo "$i" > "$ck.tmp" && mv "$ck.tmp" "$ck"
  sleep 0.25
done
"#;

#[test]
fn the_owner_at_the_keyboard_suspends_runs_and_they_resume_when_the_desktop_is_idle() {
    let tmp = tempfile::tempdir().unwrap();
    let kbd = tmp.path().join("kbd");
    std::fs::write(&kbd, "").unwrap();
    keyboard_used(&kbd, Duration::from_secs(600));
    let node = owner_node(&tmp.path().join("data"), &kbd, 10, &[]);
    let prog = write_file(tmp.path(), "count.sh", COUNTER);
    let id = node.submit(&[&prog]);
    node.wait_for(&id, Duration::from_secs(30), |v| {
        runs(v)[0]["state"] == "running"
    });
    let pids = || run_processes(&id);
    wait_until(
        "the run's processes",
        Duration::from_secs(20),
        &node,
        || !pids().is_empty(),
    );
    assert!(pids().iter().all(|(p, _)| state_of(*p) != Some('T')));

    // The owner touches the keyboard: every process of the run stops.
    keyboard_used(&kbd, Duration::ZERO);
    wait_until("suspended", Duration::from_secs(10), &node, || {
        let p = pids();
        !p.is_empty() && p.iter().all(|(p, _)| state_of(*p) == Some('T'))
    });
    // The node says so (its view is refreshed every heartbeat).
    wait_until("shown", Duration::from_secs(10), &node, || {
        let n = node.cli_json(&["nodes", "--json"]);
        n[0]["owner_here"] == true && n[0]["suspended"] == 1
    });
    let text = node.cli(&["nodes"]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.contains("its owner is using it"), "{text}");
    assert!(text.contains("1 run(s) suspended"), "{text}");
    // A new request waits, and says why.
    let quick = write_file(tmp.path(), "quick.sh", "true\n");
    let second = node.submit(&[&quick]);
    let v = node.wait_for(&second, Duration::from_secs(10), |v| {
        v["waiting"].as_str().is_some_and(|w| w.contains("owner"))
    });
    assert!(
        v["waiting"]
            .as_str()
            .unwrap()
            .contains("1 desktop is in use by its owner"),
        "{v}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        pids().iter().all(|(p, _)| state_of(*p) == Some('T')),
        "still stopped while the owner is there"
    );

    // Idle for over a minute again: the run goes on, and both finish.
    keyboard_used(&kbd, Duration::from_secs(120));
    wait_until("resumed", Duration::from_secs(10), &node, || {
        pids().iter().all(|(p, _)| state_of(*p) != Some('T'))
    });
    let v = node.wait_for(&id, Duration::from_secs(60), |v| v["state"] == "succeeded");
    assert_eq!(runs(&v)[0]["attempts"], 1, "the same attempt went on: {v}");
    node.wait_for(&second, Duration::from_secs(30), |v| {
        v["state"] == "succeeded"
    });
    assert!(node.log().contains("suspended"), "{}", node.log());
}

#[test]
fn an_owner_who_stays_gets_the_desktop_and_the_run_goes_on_elsewhere_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let kbd = tmp.path().join("kbd");
    std::fs::write(&kbd, "").unwrap();
    keyboard_used(&kbd, Duration::from_secs(600));
    let a = owner_node(&tmp.path().join("a"), &kbd, 1, &["--name", "desk"]);
    let prog = write_file(tmp.path(), "count.sh", COUNTER);
    let id = a.submit(&[&prog]);
    a.wait_for(&id, Duration::from_secs(30), |v| {
        runs(v)[0]["state"] == "running"
    });
    // Let it count a little (a checkpoint is snapshotted when it stops).
    std::thread::sleep(Duration::from_secs(3));
    // A second desktop, with no owner policy, joins with no free slot to
    // spare until the run comes back.
    let token = a.join_token();
    let addr = a.p2p_addrs()[0].clone();
    let b = Node::start_in(
        tmp.path().join("b"),
        1,
        pesc_tests::pesc_bin("debug"),
        None,
        &["--join", &token, "--peer", &addr, "--name", "spare"],
    )
    .unwrap();
    b.wait_known(2, Duration::from_secs(30));
    // The owner sits down and stays (touching the keyboard now and then).
    let t0 = Instant::now();
    let v = loop {
        keyboard_used(&kbd, Duration::ZERO);
        let v = b.cli_json(&["status", &id, "--json"]);
        if v["state"] == "succeeded" {
            break v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(150),
            "{v}\n{}\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let run = &runs(&v)[0];
    assert_eq!(run["attempts"], 2, "{v}");
    assert_eq!(run["node"].as_str(), Some(b.node_id().as_str()), "{v}");
    let history = run["history"].as_array().unwrap();
    assert_eq!(history[0]["state"], "yielded", "{v}");
    let zip = b.results_zip(&id, &tmp.path().join("r"));
    let out = zip_text(&zip, "output.txt").unwrap();
    let from: u32 = out
        .trim()
        .strip_prefix("started at ")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(from > 0, "it went on from its checkpoint: {out}");
    assert!(
        a.log().contains("owner came back and stayed"),
        "{}",
        a.log()
    );
}

#[test]
fn a_runs_peak_memory_is_learned_and_a_run_too_large_for_the_desktop_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(1).unwrap();
    let big = write_file(
        tmp.path(),
        "big.py",
        "import time\nx = bytearray(300 * 1024 * 1024)\nfor i in range(0, len(x), 4096):\n    x[i] = 1\ntime.sleep(4)\n",
    );
    let id = node.submit(&[&big]);
    let v = node.wait_for(&id, Duration::from_secs(60), |v| {
        v["state"] == "succeeded" || v["state"] == "failed"
    });
    assert_eq!(v["state"], "succeeded", "{v}");
    let peak = runs(&v)[0]["peak_memory_mb"].as_u64().unwrap_or(0);
    assert!((290..2048).contains(&peak), "peak {peak} MiB: {v}");
    // A run that asks more memory than this machine lets runs have.
    let quick = write_file(tmp.path(), "quick.sh", "true\n");
    let huge = node.submit(&[&quick, "--memory-mb", "10000000"]);
    let v: Value = node.wait_for(&huge, Duration::from_secs(15), |v| {
        v["waiting"].as_str().is_some_and(|w| w.contains("MiB"))
    });
    let why = v["waiting"].as_str().unwrap();
    assert!(why.contains("needs about 10000000 MiB"), "{why}");
    let nodes = node.cli_json(&["nodes", "--json"]);
    assert!(nodes[0]["mem_room_mb"].as_u64().is_some(), "{nodes}");
}

#[test]
fn an_admin_sets_another_nodes_slots_and_idle_time_without_a_restart() {
    let g = pesc_tests::grid::Grid::loopback(2, 1, &[]).unwrap();
    let (a, b) = (&g.nodes[0], &g.nodes[1]);
    let b_id = b.node_id();
    let slow = write_file(g.root.path(), "slow.sh", "sleep 6\n");
    // From a, an admin gives b three slots.
    let o = a.cli(&["config", "set", "n1", "slots", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t0 = Instant::now();
    loop {
        let n = b.cli_json(&["nodes", "--json"]);
        let me = n
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["this_node"] == true)
            .cloned();
        if me.is_some_and(|m| m["slots"] == 3) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{n}\n{}", b.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    // b runs three at once now, without a restart (a has one slot).
    let id = b.submit(&[&slow, "-n", "4"]);
    let v = b.wait_for(&id, Duration::from_secs(30), |v| {
        runs(v)
            .iter()
            .filter(|r| r["state"] == "running" && r["node"] == b_id.as_str())
            .count()
            == 3
    });
    assert!(v["state"] != "failed", "{v}");
    let shown = a.cli_json(&["config", "show", "n1", "--json"]);
    let slots = shown
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "slots")
        .unwrap();
    assert_eq!(slots["value"], "3", "{shown}");
    // Bad keys and values are refused with the reason; users may not.
    let o = a.cli(&["config", "set", "n1", "slots", "many"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("whole number"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = a.cli(&["config", "set", "n1", "utmp_path", "/etc/passwd"]);
    assert!(!o.status.success());
    let user = a.http().add_user("ana", "user");
    let r = user
        .put(&format!("/nodes/{b_id}/settings/slots"))
        .json(&serde_json::json!({"value": "64"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    b.wait_for(&id, Duration::from_secs(60), |v| v["state"] == "succeeded");
    // Cleared: b's own configuration (one slot) decides again.
    let o = a.cli(&["config", "unset", "n1", "slots"]);
    assert!(o.status.success());
    let t0 = Instant::now();
    loop {
        let n = b.cli_json(&["nodes", "--json"]);
        let me = n
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["this_node"] == true)
            .cloned();
        if me.is_some_and(|m| m["slots"] == 1) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{n}");
        std::thread::sleep(Duration::from_millis(300));
    }
}
