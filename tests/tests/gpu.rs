//! GPUs through the scripted probe (`PESC_FAKE_GPUS`): no GPU here, so the
//! driver's answers come from a file; everything after the probe — the
//! report, placement, exclusive devices, what a run sees — is the real code.

use std::time::Duration;

use pesc_tests::{Node, runs, write_file, zip_text};
use serde_json::{Value, json};

fn finished(v: &Value) -> bool {
    v["state"] == "succeeded" || v["state"] == "failed"
}

#[test]
fn runs_get_their_own_gpus_and_requests_wait_for_matching_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let gpus = tmp.path().join("gpus.json");
    let dev = |i: u32| {
        json!({"index": i, "uuid": format!("GPU-fake-{i}"), "name": "Fake A100",
               "memory_total_mb": 40960, "memory_free_mb": 40000, "capability": 8.0})
    };
    std::fs::write(&gpus, serde_json::to_vec(&json!([dev(0), dev(1)])).unwrap()).unwrap();
    // SAFETY: this test binary runs this one test; the node inherits the variable.
    unsafe { std::env::set_var("PESC_FAKE_GPUS", &gpus) };
    let node = Node::start(4).unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let v = node.cli_json(&["nodes", "--json"]);
        if v[0]["gpus"].as_array().map(Vec::len) == Some(2) {
            assert_eq!(v[0]["gpus"][1]["name"], "Fake A100", "{v}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "GPUs not reported: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Six runs of one GPU each on 4 slots: never more than 2 at once, each
    // seeing exactly its own device.
    let prog = write_file(
        tmp.path(),
        "gpu.sh",
        "echo \"$CUDA_VISIBLE_DEVICES $(date +%s.%N)\" > \"$PESC_OUTPUT_DIR/output.txt\"\n\
         sleep 0.6\n\
         echo \"$(date +%s.%N)\" >> \"$PESC_OUTPUT_DIR/output.txt\"\n",
    );
    let id = node.submit(&[&prog, "-n", "6", "--gpus", "1"]);
    let v = node.wait_for(&id, Duration::from_secs(60), finished);
    assert_eq!(v["state"], "succeeded", "{v}");
    let zip = node.results_zip(&id, &tmp.path().join("r"));
    let mut spans = Vec::new();
    for r in 0..6 {
        let text = zip_text(&zip, &format!("output_rank_{r}/output.txt")).unwrap();
        let w: Vec<&str> = text.split_whitespace().collect();
        assert!(w[0] == "0" || w[0] == "1", "rank {r} saw {text:?}");
        spans.push((w[1].parse::<f64>().unwrap(), w[2].parse::<f64>().unwrap()));
    }
    // Runs going at the moment each one started.
    for (i, a) in spans.iter().enumerate() {
        let going = spans.iter().filter(|b| b.0 <= a.0 && a.0 < b.1).count();
        assert!(
            going <= 2,
            "{going} runs going when run {i} started: {spans:?}"
        );
    }
    // A run that asks for no GPU sees none.
    let plain = write_file(
        tmp.path(),
        "plain.sh",
        "echo \"[$CUDA_VISIBLE_DEVICES]\" > \"$PESC_OUTPUT_DIR/output.txt\"\n",
    );
    let id = node.submit(&[&plain, "-n", "1"]);
    node.wait_for(&id, Duration::from_secs(30), finished);
    let zip = node.results_zip(&id, &tmp.path().join("p"));
    assert_eq!(zip_text(&zip, "output.txt").unwrap(), "[]\n");
    // More capability, or more devices, than the node has: left queued.
    let big = node.submit(&[&plain, "-n", "1", "--gpus", "1", "--gpu-capability", "9.0"]);
    let many = node.submit(&[&plain, "-n", "1", "--gpus", "3"]);
    std::thread::sleep(Duration::from_secs(3));
    for id in [&big, &many] {
        let v = node.cli_json(&["status", id, "--json"]);
        assert_eq!(runs(&v)[0]["state"], "queued", "{v}");
    }
    // And they say why, in plain words.
    let v = node.cli_json(&["status", &big, "--json"]);
    assert_eq!(
        v["waiting"], "no node in room General has 1 GPU(s) of compute capability ≥ 9",
        "{v}"
    );
    let text = pesc_tests::stdout(&node.cli(&["status", &many]));
    assert!(
        text.contains("waiting: no node in room General has 3 GPU(s)"),
        "{text}"
    );
}

#[test]
fn runs_share_a_gpu_once_their_peak_memory_is_known() {
    let tmp = tempfile::tempdir().unwrap();
    let gpus = tmp.path().join("gpus.json");
    let write_gpus = |processes: Value| {
        let dev = json!([{"index": 0, "uuid": "GPU-fake-0", "name": "Fake 16G",
            "memory_total_mb": 16384, "memory_free_mb": 16000, "capability": 8.6,
            "processes": processes}]);
        std::fs::write(&gpus, serde_json::to_vec(&dev).unwrap()).unwrap();
    };
    write_gpus(json!([]));
    // SAFETY: the variable is set before the node starts; nextest runs each
    // test in its own process.
    unsafe { std::env::set_var("PESC_FAKE_GPUS", &gpus) };
    let node = Node::start(4).unwrap();
    let prog = write_file(
        tmp.path(),
        "train.sh",
        "echo \"$CUDA_VISIBLE_DEVICES $(date +%s.%N)\" > \"$PESC_OUTPUT_DIR/output.txt\"\n\
         sleep \"$PESC_PARAMETERS\"\n\
         echo \"$(date +%s.%N)\" >> \"$PESC_OUTPUT_DIR/output.txt\"\n",
    );
    // The first run's peak is unknown: it gets the device to itself, and the
    // driver (here, the script) shows its process — by its host pid, as
    // NVML does — using 4 000 MiB.
    let first = node.submit(&[&prog, "-n", "1", "--gpus", "1", "--parameters", "3"]);
    let t0 = std::time::Instant::now();
    let pid = loop {
        if let Some((pid, _)) = pesc_tests::run_processes(&first).first() {
            break *pid;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    write_gpus(json!([[pid, 4000]]));
    node.wait_for(&first, Duration::from_secs(30), finished);
    assert!(node.log().contains("learned: 4000 MiB"), "{}", node.log());
    write_gpus(json!([]));
    // Four more of the same program: 3 × 4 000 MiB fit in 90 % of 16 GiB,
    // a fourth does not.
    let id = node.submit(&[&prog, "-n", "4", "--gpus", "1", "--parameters", "5"]);
    let v = node.wait_for(&id, Duration::from_secs(60), finished);
    assert_eq!(v["state"], "succeeded", "{v}");
    let zip = node.results_zip(&id, &tmp.path().join("r"));
    let mut spans = Vec::new();
    for r in 0..4 {
        let text = zip_text(&zip, &format!("output_rank_{r}/output.txt")).unwrap();
        let w: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(w[0], "0", "rank {r}: {text:?}");
        spans.push((w[1].parse::<f64>().unwrap(), w[2].parse::<f64>().unwrap()));
    }
    let most = spans
        .iter()
        .map(|a| spans.iter().filter(|b| b.0 <= a.0 && a.0 < b.1).count())
        .max()
        .unwrap();
    assert_eq!(most, 3, "runs on the one GPU at once: {spans:?}");
}

/// The `CUDA_VISIBLE_DEVICES` a process was started with.
fn devices_of(pid: i32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0).find_map(|kv| {
        Some(String::from_utf8_lossy(kv.strip_prefix(b"CUDA_VISIBLE_DEVICES=")?).to_string())
    })
}

fn stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

#[test]
fn a_gpu_its_owner_starts_using_suspends_only_the_runs_on_it() {
    let tmp = tempfile::tempdir().unwrap();
    let gpus = tmp.path().join("gpus.json");
    let dev = |i: u32, procs: Value| {
        json!({"index": i, "uuid": format!("GPU-fake-{i}"), "name": "Fake A100",
               "memory_total_mb": 40960, "memory_free_mb": 40000, "capability": 8.0,
               "processes": procs})
    };
    let write = |procs1: Value| {
        let list = json!([dev(0, json!([])), dev(1, procs1)]);
        std::fs::write(&gpus, serde_json::to_vec(&list).unwrap()).unwrap();
    };
    write(json!([]));
    // SAFETY: this test runs alone in its process (nextest); the node inherits it.
    unsafe { std::env::set_var("PESC_FAKE_GPUS", &gpus) };
    let node = Node::start(2).unwrap();
    let prog = write_file(tmp.path(), "gpu.sh", "sleep 120\n");
    let id = node.submit(&[&prog, "-n", "2", "--gpus", "1"]);
    node.wait_for(&id, Duration::from_secs(60), |v| {
        runs(v).iter().all(|r| r["state"] == "running")
    });
    let on = |d: &str| -> Vec<i32> {
        pesc_tests::run_processes(&id)
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| devices_of(*p).as_deref() == Some(d))
            .collect()
    };
    let t0 = std::time::Instant::now();
    while on("0").is_empty() || on("1").is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", node.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // The desktop's owner starts a program on GPU 1.
    let mut owner = std::process::Command::new("sleep")
        .arg("120")
        .spawn()
        .unwrap();
    write(json!([[owner.id(), 2048]]));
    let t0 = std::time::Instant::now();
    while !on("1").iter().all(|p| stopped(*p)) {
        assert!(t0.elapsed() < Duration::from_secs(15), "{}", node.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        on("0").iter().all(|p| !stopped(*p)),
        "the run on GPU 0 goes on"
    );
    // The owner's program ends: the run on GPU 1 goes on.
    write(json!([]));
    let _ = owner.kill();
    let _ = owner.wait();
    let t0 = std::time::Instant::now();
    while on("1").iter().any(|p| stopped(*p)) {
        assert!(t0.elapsed() < Duration::from_secs(15), "{}", node.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(node.cli(&["cancel", &id]).status.success());
}
