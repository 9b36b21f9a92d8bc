//! Benchmarks that print numbers (never timed assertions).
//!
//! `cargo run --release -p pesc-tests --bin bench -- single-node|grid|blobs [--repeat N] [--write]`
//!
//! blobs: 9 nodes on 127.0.0.1; a 1 GiB shared file node → node, then a
//! fresh 1 GiB file to 8 nodes at once, beside curl from a static server;
//! peak RSS of sender and receivers.
//!
//! grid: 4 nodes × 2 slots on 127.0.0.1 — W2 efficiency, submit → first run
//! started, payload bytes per node per second idle and busy; failover time
//! with the default 15 s lease TTL; catch-up time of a fresh node joining a
//! grid that holds 10 000 finished runs.
//!
//! single-node: one node, process executor, 8 slots. W1 = 400 runs of `true`
//! (runs/s), W2 = 64 runs of `sleep 0.5` (efficiency = 4.0 s / wall), each
//! timed from `pesc submit` until every run's results are stored, beside the
//! same node with its sandbox off, Ray (when `PESC_RAY_PYTHON` names a
//! Python with `ray`), GNU parallel and `xargs -P 8` on the same workloads,
//! all in one invocation. `--write` records the table in docs/performance.md.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use pesc_tests::{Node, workspace};

const SLOTS: u32 = 8;

struct Workload {
    name: &'static str,
    runs: u32,
    pesc_entry: &'static str,
    /// The same program for Ray's subprocess (argv as JSON).
    ray: &'static str,
    parallel: &'static str,
    xargs: &'static str,
    ideal_s: Option<f64>,
}

const WORKLOADS: [Workload; 2] = [
    Workload {
        name: "W1: 400 × true",
        runs: 400,
        pesc_entry: "true",
        ray: r#"["true"]"#,
        parallel: "seq 400 | parallel -j 8 -N0 true",
        xargs: "seq 400 | xargs -P 8 -n 1 true",
        ideal_s: None,
    },
    Workload {
        name: "W2: 64 × sleep 0.5",
        runs: 64,
        pesc_entry: "sh -c 'sleep 0.5'",
        ray: r#"["sleep", "0.5"]"#,
        parallel: "seq 64 | parallel -j 8 -N0 sleep 0.5",
        xargs: "seq 64 | xargs -P 8 -I{} sleep 0.5",
        ideal_s: Some(4.0),
    },
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = args.first().map(String::as_str).unwrap_or("--help");
    let repeat = args
        .iter()
        .position(|a| a == "--repeat")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<usize>())
        .transpose()
        .context("--repeat takes a number")?
        .unwrap_or(3);
    let write = args.iter().any(|a| a == "--write");
    match scenario {
        "single-node" => single_node(repeat, write),
        "grid" => grid(repeat, write),
        // Only the first rows of `grid` (dispatch throughput), printed.
        "grid-w1" => grid_w1_only(repeat),
        "blobs" => blobs(write),
        "docker" => docker(repeat, write),
        "history" => history(write),
        _ => {
            eprintln!(
                "usage: bench single-node|grid|grid-w1|blobs|docker|history [--repeat N] [--write]"
            );
            Ok(())
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time_shell(cmd: &str) -> Result<f64> {
    let t0 = Instant::now();
    let st = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("`{cmd}` failed (is GNU parallel installed? apt-get install parallel)");
    }
    Ok(t0.elapsed().as_secs_f64())
}

fn pesc_bin() -> Result<std::path::PathBuf> {
    if std::env::var_os("PESC_BIN").is_none() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "pesc-node"])
            .current_dir(workspace())
            .status()?;
        if !st.success() {
            bail!("building pesc failed");
        }
    }
    Ok(pesc_tests::pesc_bin("release"))
}

/// Times `pesc submit … --wait` of workload `w` on `node`; returns (wall,
/// results download) seconds.
fn time_pesc(node: &Node, prog: &str, w: &Workload, out: &std::path::Path) -> Result<(f64, f64)> {
    let n = w.runs.to_string();
    let t0 = Instant::now();
    let v = node.cli_json(&[
        "submit",
        prog,
        "--entry",
        w.pesc_entry,
        "-n",
        &n,
        "--wait",
        "--json",
    ]);
    let wall = t0.elapsed().as_secs_f64();
    if v["state"] != "succeeded" {
        bail!("{}: request ended {}: {v}", w.name, v["state"]);
    }
    let t1 = Instant::now();
    let o = node.cli(&[
        "results",
        v["id"].as_str().unwrap_or_default(),
        "-o",
        out.to_str().unwrap_or("."),
    ]);
    if !o.status.success() {
        bail!(
            "results download failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok((wall, t1.elapsed().as_secs_f64()))
}

/// Ray (local, 8 CPUs, a subprocess per task, workers warmed up first),
/// kept running so that its timings interleave with PESC's: on this noisy
/// machine only measurements taken side by side compare.
struct Ray {
    child: std::process::Child,
    input: std::process::ChildStdin,
    answers: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Ray {
    /// Starts Ray when `PESC_RAY_PYTHON` names a Python with `ray`.
    fn start() -> Result<Option<Ray>> {
        use std::io::BufRead;
        let Some(py) = std::env::var_os("PESC_RAY_PYTHON") else {
            return Ok(None);
        };
        let script = format!(
            r#"
import json, ray, subprocess, sys, time
ray.init(num_cpus={SLOTS}, include_dashboard=False, logging_level="ERROR")
@ray.remote
def run(cmd):
    return subprocess.run(cmd).returncode
ray.get([run.remote(["true"]) for _ in range(64)])
print("ready", flush=True)
for line in sys.stdin:
    n, cmd = json.loads(line)
    t0 = time.time(); ray.get([run.remote(cmd) for _ in range(n)]); print(time.time() - t0, flush=True)
"#
        );
        let mut child = Command::new(py)
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting Ray")?;
        let input = child.stdin.take().context("ray stdin")?;
        let mut answers =
            std::io::BufReader::new(child.stdout.take().context("ray stdout")?).lines();
        match answers.next() {
            Some(Ok(l)) if l == "ready" => {}
            other => bail!("ray did not start: {other:?}"),
        }
        Ok(Some(Ray {
            child,
            input,
            answers,
        }))
    }

    /// Ray's wall seconds for `w`.
    fn time(&mut self, w: &Workload) -> Result<f64> {
        use std::io::Write;
        writeln!(self.input, "[{}, {}]", w.runs, w.ray)?;
        let line = self.answers.next().context("ray stopped")??;
        line.trim()
            .parse()
            .with_context(|| format!("ray printed {line:?}"))
    }
}

impl Drop for Ray {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn single_node(repeat: usize, write: bool) -> Result<()> {
    let bin = pesc_bin()?;
    let tmp = tempfile::tempdir()?;
    let node = Node::start_in(tmp.path().join("data"), SLOTS, bin.clone(), None, &[])?;
    // The same node software with the sandbox off (isolation none, allowed
    // by the grid's settings): what the sandbox costs.
    let plain_dir = tmp.path().join("plain");
    std::fs::create_dir_all(&plain_dir)?;
    std::fs::write(plain_dir.join("node.toml"), "[sandbox]\nenabled = false\n")?;
    let plain = Node::start_in(plain_dir, SLOTS, bin, None, &[])?;
    let r = plain
        .http()
        .put("/grid/settings")
        .json(&serde_json::json!({"min_isolation": "none"}))
        .send()?;
    if !r.status().is_success() {
        bail!("setting the plain node's minimum isolation: {}", r.status());
    }
    let prog = tmp.path().join("noop.sh");
    std::fs::write(&prog, "true\n")?;
    let prog = prog.to_str().context("temp path")?.to_string();
    let out = tmp.path().join("results");
    // Both nodes warmed up as Ray's workers are (64 runs first): slot
    // workspaces made, the program fetched once.
    let warm = Workload {
        name: "warm-up",
        runs: 64,
        ..WORKLOADS[0]
    };
    time_pesc(&node, &prog, &warm, &out)?;
    time_pesc(&plain, &prog, &warm, &out)?;
    let mut ray = Ray::start()?;
    let mut rows = Vec::new();
    for w in WORKLOADS.iter() {
        let (mut pesc, mut results, mut off) = (Vec::new(), Vec::new(), Vec::new());
        let (mut rays, mut parallel, mut xargs) = (Vec::new(), Vec::new(), Vec::new());
        // Each repeat times every contender once, one after the other.
        for _ in 0..repeat {
            let (wall, res) = time_pesc(&node, &prog, w, &out)?;
            pesc.push(wall);
            results.push(res);
            off.push(time_pesc(&plain, &prog, w, &out)?.0);
            if let Some(r) = ray.as_mut() {
                rays.push(r.time(w)?);
            }
            parallel.push(time_shell(w.parallel)?);
            xargs.push(time_shell(w.xargs)?);
        }
        rows.push((
            w,
            [
                median(pesc),
                median(off),
                if rays.is_empty() {
                    f64::NAN
                } else {
                    median(rays)
                },
                median(parallel),
                median(xargs),
            ],
            median(results),
        ));
    }
    drop(ray);
    let mut table = String::new();
    table.push_str(&format!(
        "Single node, process executor, {SLOTS} slots; median of {repeat}; wall time from `pesc submit` until every run's results are stored. \\\n`pesc` runs every attempt in the sandbox (uid per slot, namespaces, Landlock); `sandbox off` is the same node with `[sandbox] enabled = false` (isolation none); Ray 2.60 local, {SLOTS} CPUs, a subprocess per task, warm workers, kept running through the whole benchmark (`PESC_RAY_PYTHON`; `-` when not given). Every repeat times each contender once, in turn, so all share the machine's moods; each pesc node runs 64 × `true` first, as Ray warms its workers.\n\n"
    ));
    table.push_str("| workload | metric | pesc | pesc, sandbox off | Ray | GNU parallel -j 8 | xargs -P 8 (floor) | pesc / Ray | pesc / xargs |\n");
    table.push_str("|---|---|---|---|---|---|---|---|---|\n");
    let fmt = |v: f64| {
        if v.is_nan() {
            "-".to_string()
        } else {
            format!("{v:.2}")
        }
    };
    for (w, walls, r) in &rows {
        let (metric, rate): (&str, Box<dyn Fn(f64) -> f64>) = match w.ideal_s {
            None => ("runs/s", Box::new(|x| w.runs as f64 / x)),
            Some(ideal) => ("efficiency (4.0 s / wall)", Box::new(move |x| ideal / x)),
        };
        let v: Vec<f64> = walls.iter().map(|x| rate(*x)).collect();
        table.push_str(&format!(
            "| {} | {metric} | {} | {} | {} | {} | {} | {} | {} |\n",
            w.name,
            fmt(v[0]),
            fmt(v[1]),
            fmt(v[2]),
            fmt(v[3]),
            fmt(v[4]),
            fmt(v[0] / v[2]),
            fmt(v[0] / v[4]),
        ));
        table.push_str(&format!(
            "| {} | wall s (results zip download) | {:.3} ({r:.3}) | {:.3} | {} | {:.3} | {:.3} | | |\n",
            w.name,
            walls[0],
            walls[1],
            if walls[2].is_nan() { "-".to_string() } else { format!("{:.3}", walls[2]) },
            walls[3],
            walls[4],
        ));
    }
    println!("{table}");
    if write {
        record(&table)?;
        println!("recorded in docs/performance.md");
    }
    Ok(())
}

fn record(table: &str) -> Result<()> {
    record_section("single-node", table)
}

/// Replaces a generated section of docs/performance.md.
fn record_section(name: &str, table: &str) -> Result<()> {
    let path = workspace().join("docs/performance.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let (start, end) = (
        format!("<!-- bench {name}: begin -->"),
        format!("<!-- bench {name}: end -->"),
    );
    let (start, end) = (start.as_str(), end.as_str());
    let block = format!("{start}\n{table}{end}");
    let new = match (text.find(start), text.find(end)) {
        (Some(a), Some(b)) if a < b => format!("{}{}{}", &text[..a], block, &text[b + end.len()..]),
        _ => format!("{text}\n{block}\n"),
    };
    std::fs::write(&path, new)?;
    Ok(())
}

/// Payload bytes a node exchanged so far (sync + gossip + blobs, both ways).
fn traffic(node: &Node) -> Result<u64> {
    let v: serde_json::Value = node.http().get("/node").send()?.json()?;
    let t = &v["traffic"];
    Ok([
        "sync_sent",
        "sync_received",
        "gossip_sent",
        "gossip_received",
        "blob_sent",
        "blob_received",
    ]
    .iter()
    .map(|k| t[*k].as_u64().unwrap_or(0))
    .sum())
}

fn total_traffic(nodes: &[Node]) -> Result<u64> {
    nodes.iter().map(traffic).sum()
}

/// The request's counts, through the API.
fn counts(node: &Node, id: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value = node.http().get(&format!("/requests/{id}")).send()?.json()?;
    Ok(v["counts"].clone())
}

fn submit_json(
    node: &Node,
    prog: &str,
    entry: &str,
    n: u32,
    wait: bool,
) -> Result<serde_json::Value> {
    let n = n.to_string();
    let mut args = vec!["submit", prog, "--entry", entry, "-n", &n, "--json"];
    if wait {
        args.push("--wait");
    }
    Ok(node.cli_json(&args))
}

/// Attempts made for a request's runs (more than its runs when claims raced
/// or runs were retried).
fn attempts(node: &Node, id: &str) -> Result<u64> {
    let v: serde_json::Value = node.http().get(&format!("/requests/{id}")).send()?.json()?;
    let runs = v["runs"].as_array().context("runs")?;
    if std::env::var_os("BENCH_DEBUG").is_some() {
        for r in runs
            .iter()
            .filter(|r| r["attempts"].as_u64().unwrap_or(0) > 1)
        {
            eprintln!(
                "dup rank {} attempts {} node {} started {}",
                r["rank"], r["attempts"], r["node"], r["started_ms"]
            );
        }
        let field = |k: &'static str| runs.iter().filter_map(move |r| r[k].as_u64());
        let (Some(first), Some(last)) = (field("started_ms").min(), field("finished_ms").max())
        else {
            return Ok(0);
        };
        eprintln!(
            "first start → last finish {} ms; created {} ms before the first start",
            last - first,
            first.saturating_sub(v["created_ms"].as_u64().unwrap_or(first))
        );
    }
    Ok(runs
        .iter()
        .map(|r| r["attempts"].as_u64().unwrap_or(0))
        .sum())
}

/// Where a W2 request's time went, per node: its first start and last
/// finish after the request was made (`BENCH_DEBUG`).
fn w2_timeline(node: &Node, id: &str, wall: std::time::Duration) -> Result<()> {
    let v: serde_json::Value = node.http().get(&format!("/requests/{id}")).send()?.json()?;
    let created = v["created_ms"].as_u64().unwrap_or(0);
    let mut per: std::collections::BTreeMap<String, (u64, u64, u32)> = Default::default();
    for r in v["runs"].as_array().context("runs")? {
        let n = r["node"].as_str().unwrap_or("?");
        let e = per
            .entry(n.chars().rev().take(6).collect())
            .or_insert((u64::MAX, 0, 0));
        e.0 = e.0.min(r["started_ms"].as_u64().unwrap_or(u64::MAX));
        e.1 = e.1.max(r["finished_ms"].as_u64().unwrap_or(0));
        e.2 += 1;
    }
    for (n, (first, last, runs)) in per {
        eprintln!(
            "W2 node …{n}: {runs} runs, first start +{} ms, last finish +{} ms",
            first.saturating_sub(created),
            last.saturating_sub(created)
        );
    }
    eprintln!("W2 wall {} ms", wall.as_millis());
    Ok(())
}

/// W1 on 4 nodes × 2 slots beside W1 on one node × 8 slots, timed in
/// turn: the grid's dispatch throughput against the single node's.
fn grid_w1(
    bin: &std::path::Path,
    prog: &str,
    tmp: &std::path::Path,
    repeat: usize,
) -> Result<String> {
    use pesc_tests::grid::Grid;
    let w1 = &WORKLOADS[0];
    let single = Node::start_in(tmp.join("single"), SLOTS, bin.to_path_buf(), None, &[])?;
    let g = Grid::loopback_with(bin.to_path_buf(), 4, 2, &[])?;
    // Both warmed up as in single-node: slot workspaces made, program fetched.
    for n in [&single, &g.nodes[0]] {
        let v = submit_json(n, prog, w1.pesc_entry, 64, true)?;
        if v["state"] != "succeeded" {
            bail!("warm-up ended {}: {v}", v["state"]);
        }
    }
    let (mut one, mut four, mut dup, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeat {
        let t0 = Instant::now();
        let v = submit_json(&single, prog, w1.pesc_entry, w1.runs, true)?;
        one.push(t0.elapsed().as_secs_f64());
        if v["state"] != "succeeded" {
            bail!("single-node W1 ended {}: {v}", v["state"]);
        }
        let b0 = total_traffic(&g.nodes)?;
        let t0 = Instant::now();
        let v = submit_json(&g.nodes[0], prog, w1.pesc_entry, w1.runs, true)?;
        four.push(t0.elapsed().as_secs_f64());
        if v["state"] != "succeeded" {
            bail!("grid W1 ended {}: {v}", v["state"]);
        }
        let id = v["id"].as_str().context("id")?;
        let made = attempts(&g.nodes[0], id)?;
        dup.push(made.saturating_sub(u64::from(w1.runs)) as f64 / f64::from(w1.runs));
        // Traffic is counted on both ends: halved, per node, per run.
        let sent = (total_traffic(&g.nodes)? - b0) as f64 / 2.0;
        bytes.push(sent / 4.0 / f64::from(w1.runs));
    }
    if std::env::var_os("BENCH_DEBUG").is_some() {
        for (i, n) in g.nodes.iter().enumerate() {
            for l in n.log().lines().filter(|l| !l.contains("DEBUG")).take(60) {
                eprintln!("node {i}: {l}");
            }
        }
    }
    let (one, four) = (
        f64::from(w1.runs) / median(one),
        f64::from(w1.runs) / median(four),
    );
    Ok(format!(
        "| W1 (400 × true) on 4 nodes × 2 slots, submitted on one | {four:.0} runs/s | |\n\
         | W1 on one node × {SLOTS} slots, same invocation | {one:.0} runs/s | |\n\
         | 4 nodes / one node | {:.3} | ≥ 0.5 |\n\
         | duplicate attempts (attempts − runs) / runs, W1 on 4 nodes | {:.1} % | ≤ 1 % |\n\
         | bytes sent per run per node, W1 on 4 nodes | {:.0} B | |\n",
        four / one,
        median(dup) * 100.0,
        median(bytes)
    ))
}

fn grid_w1_only(repeat: usize) -> Result<()> {
    let bin = pesc_bin()?;
    let tmp = tempfile::tempdir()?;
    let prog = tmp.path().join("noop.sh");
    std::fs::write(&prog, "true\n")?;
    let prog = prog.to_str().context("temp path")?.to_string();
    print!("{}", grid_w1(&bin, &prog, tmp.path(), repeat)?);
    Ok(())
}

fn grid(repeat: usize, write: bool) -> Result<()> {
    use pesc_tests::grid::Grid;
    use std::time::Duration;
    let bin = pesc_bin()?;
    let tmp = tempfile::tempdir()?;
    let prog = tmp.path().join("noop.sh");
    std::fs::write(&prog, "true\n")?;
    let prog = prog.to_str().context("temp path")?.to_string();
    let mut table = String::new();

    table.push_str(&format!(
        "4 nodes × 2 slots on 127.0.0.1, process executor; median of {repeat}.\n\n| metric | value | target |\n|---|---|---|\n"
    ));
    table.push_str(&grid_w1(&bin, &prog, tmp.path(), repeat)?);

    // W2 across 4 nodes × 2 slots, and the time to the first run started.
    let g = Grid::loopback_with(bin.clone(), 4, 2, &[])?;
    let idle0 = total_traffic(&g.nodes)?;
    let idle_s = 20.0;
    std::thread::sleep(Duration::from_secs_f64(idle_s));
    let idle = (total_traffic(&g.nodes)? - idle0) as f64 / idle_s / 4.0;
    let mut walls = Vec::new();
    let mut firsts = Vec::new();
    let busy0 = total_traffic(&g.nodes)?;
    let busy_t0 = Instant::now();
    for _ in 0..repeat {
        let t0 = Instant::now();
        let v = submit_json(&g.nodes[0], &prog, "sh -c 'sleep 0.5'", 64, true)?;
        walls.push(t0.elapsed().as_secs_f64());
        if v["state"] != "succeeded" {
            bail!("W2 ended {}: {v}", v["state"]);
        }
        if std::env::var_os("BENCH_DEBUG").is_some() {
            w2_timeline(
                &g.nodes[0],
                v["id"].as_str().unwrap_or_default(),
                t0.elapsed(),
            )?;
        }
    }
    let busy = (total_traffic(&g.nodes)? - busy0) as f64 / busy_t0.elapsed().as_secs_f64() / 4.0;
    for _ in 0..repeat {
        let t0 = Instant::now();
        let v = submit_json(&g.nodes[0], &prog, "sh -c 'sleep 0.2'", 8, false)?;
        let id = v["id"].as_str().context("id")?.to_string();
        loop {
            let c = counts(&g.nodes[0], &id)?;
            let started = ["running", "succeeded", "failed"]
                .iter()
                .map(|k| c[*k].as_u64().unwrap_or(0))
                .sum::<u64>();
            if started > 0 {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("no run started: {c}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        firsts.push(t0.elapsed().as_secs_f64());
        g.nodes[0].wait_for(&id, Duration::from_secs(30), |v| v["state"] == "succeeded");
    }
    drop(g);
    let w2 = median(walls);
    table.push_str(&format!(
        "| W2 (64 × sleep 0.5) efficiency, 4.0 s / wall | {:.2} ({w2:.2} s) | ≥ 0.97 |\n",
        4.0 / w2
    ));
    table.push_str(&format!(
        "| submit → first run started (submit answers once a peer holds the request) | {:.0} ms | |\n",
        median(firsts) * 1000.0
    ));
    table.push_str(&format!(
        "| payload bytes per node per second, idle | {idle:.0} B/s | |\n| payload bytes per node per second, busy (W2) | {busy:.0} B/s | |\n"
    ));

    // Failover with the default lease TTL (15 s).
    let g = Grid::loopback_with(bin.clone(), 3, 2, &[])?;
    let victim = g.nodes[2].node_id();
    let mut failover = None;
    let mut g = g;
    for _ in 0..5 {
        let v = submit_json(&g.nodes[0], &prog, "sh -c 'sleep 120'", 4, false)?;
        let id = v["id"].as_str().context("id")?.to_string();
        let before = g.nodes[0].wait_for(&id, Duration::from_secs(30), |v| {
            v["runs"]
                .as_array()
                .is_some_and(|r| r.iter().all(|r| r["state"] == "running"))
        });
        let held: Vec<u64> = before["runs"]
            .as_array()
            .context("runs")?
            .iter()
            .filter(|r| r["node"] == victim.as_str())
            .filter_map(|r| r["rank"].as_u64())
            .collect();
        if held.is_empty() {
            g.nodes[0].cli(&["cancel", &id]);
            continue;
        }
        let t0 = Instant::now();
        g.nodes[2].kill9();
        g.nodes[0].wait_for(&id, Duration::from_secs(60), |v| {
            v["runs"].as_array().is_some_and(|runs| {
                runs.iter().all(|r| {
                    !held.contains(&r["rank"].as_u64().unwrap_or(u64::MAX))
                        || (r["state"] == "running" && r["node"] != victim.as_str())
                })
            })
        });
        failover = Some((t0.elapsed().as_secs_f64(), held.len()));
        g.nodes[0].cli(&["cancel", &id]);
        break;
    }
    drop(g);
    let (fo, held) = failover.context("the victim never held a run")?;
    table.push_str(&format!(
        "| failover: kill -9 → last of its {held} runs restarted elsewhere (TTL 15 s) | {fo:.1} s | ≤ 17 s |\n"
    ));

    // Catch-up: a fresh node joins a grid holding 10 000 finished runs.
    let one = Node::start_in(tmp.path().join("big"), SLOTS, bin.clone(), None, &[])?;
    let v = submit_json(&one, &prog, "true", 10_000, true)?;
    let id = v["id"].as_str().context("id")?.to_string();
    let token = one.join_token();
    let t0 = Instant::now();
    let fresh = Node::start_in(tmp.path().join("fresh"), 2, bin, None, &["--join", &token])?;
    loop {
        let done = fresh
            .http()
            .get(&format!("/requests/{id}"))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
            .and_then(|r| r.json::<serde_json::Value>().ok())
            .is_some_and(|v| v["counts"]["succeeded"] == 10_000);
        if done {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("the fresh node did not catch up: {}", fresh.log());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let catch_up = t0.elapsed().as_secs_f64();
    let got = traffic(&fresh)?;
    table.push_str(&format!(
        "| catch-up: fresh node joins a grid with 10 000 finished runs (start → all visible) | {catch_up:.2} s ({:.0} KB received) | < 3 s |\n",
        got as f64 / 1000.0
    ));
    println!("{table}");
    if write {
        record_section("grid", &table)?;
        println!("recorded in docs/performance.md");
    }
    Ok(())
}

/// Peak resident memory of a process (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// A file of `bytes` pseudo-random bytes (different per seed), written in pieces.
fn random_file(path: &std::path::Path, bytes: u64, seed: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn blob_counter(node: &Node, key: &str) -> Result<u64> {
    let v: serde_json::Value = node.http().get("/node").send()?.json()?;
    Ok(v["traffic"][key].as_u64().unwrap_or(0))
}

/// Shared-file distribution: one single transfer (128 MiB, then 1 GiB),
/// then a fresh 1 GiB file to 8 nodes at once; a plain HTTP download of the
/// same file (python's static server, curl) as the single-transfer baseline.
fn blobs(write: bool) -> Result<()> {
    use pesc_tests::grid::Grid;
    const GIB: u64 = 1 << 30;
    let bin = pesc_bin()?;
    let tmp = tempfile::tempdir()?;
    let small = tmp.path().join("small.bin");
    let big = tmp.path().join("big.bin");
    let big2 = tmp.path().join("big2.bin");
    let huge = tmp.path().join("huge.bin");
    random_file(&small, 128 << 20, 1)?;
    random_file(&big, GIB, 2)?;
    random_file(&big2, GIB, 3)?;
    random_file(&huge, 4 * GIB, 4)?;
    // The baseline: curl from a static HTTP server on 127.0.0.1.
    let mut server = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", "18471"])
        .current_dir(tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting python3 -m http.server")?;
    std::thread::sleep(std::time::Duration::from_millis(800));
    let curl = time_shell("curl -sf -o /dev/null http://127.0.0.1:18471/big.bin");
    let _ = server.kill();
    let _ = server.wait();
    let curl = curl?;

    let g = Grid::loopback_with(bin, 9, 1, &["--cache-mb", "0"])?;
    let (origin, one) = (&g.nodes[0], &g.nodes[1]);
    let add = |p: &std::path::Path| -> Result<f64> {
        let t0 = Instant::now();
        let out = origin.cli(&["files", "add", p.to_str().unwrap_or_default()]);
        if !out.status.success() {
            bail!("files add failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(t0.elapsed().as_secs_f64())
    };
    let fetch = |n: &Node, name: &str| -> Result<f64> {
        let t0 = Instant::now();
        let out = n.cli(&["files", "fetch", name]);
        if !out.status.success() {
            bail!(
                "files fetch failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(t0.elapsed().as_secs_f64())
    };
    // Each timed transfer starts with no dirty pages being written back
    // (the files just made or stored would compete for the disk).
    let settle = || {
        let _ = Command::new("sync").status();
    };
    add(&small)?;
    settle();
    let t_small = fetch(one, "small.bin")?;
    let rss_small = (peak_rss_mib(origin.pid()), peak_rss_mib(one.pid()));
    settle();
    let t_add = add(&big)?;
    settle();
    let t_one = fetch(one, "big.bin")?;
    let rss_big = (peak_rss_mib(origin.pid()), peak_rss_mib(one.pid()));
    add(&huge)?;
    settle();
    let t_huge = fetch(one, "huge.bin")?;
    let rss_huge = (peak_rss_mib(origin.pid()), peak_rss_mib(one.pid()));
    add(&big2)?;
    settle();
    let sent_before = blob_counter(origin, "blob_sent")?;
    let t0 = Instant::now();
    let mut children = Vec::new();
    for n in &g.nodes[1..] {
        children.push(
            Command::new(&n.bin)
                .arg("--data-dir")
                .arg(&n.data_dir)
                .args(["files", "fetch", "big2.bin"])
                .stdout(Stdio::null())
                .spawn()?,
        );
    }
    for mut c in children {
        if !c.wait()?.success() {
            bail!("a fetch of big2.bin failed");
        }
    }
    let t_eight = t0.elapsed().as_secs_f64();
    let origin_sent = blob_counter(origin, "blob_sent")? - sent_before;
    let rss_eight_origin = peak_rss_mib(origin.pid());
    let rss_eight_max = g.nodes[1..]
        .iter()
        .map(|n| peak_rss_mib(n.pid()))
        .fold(0.0, f64::max);
    let mbps = |bytes: u64, s: f64| bytes as f64 / s / 1e6;
    let mut table = String::from("| measure | result | target |\n|---|---|---|\n");
    table.push_str(&format!(
        "| one transfer, 1 GiB shared file, node → node (`pesc files fetch`) | {t_one:.2} s = **{:.0} MB/s** | ≥ 500 MB/s |\n",
        mbps(GIB, t_one)
    ));
    table.push_str(&format!(
        "| same file, plain HTTP (`python3 -m http.server` → `curl`) | {curl:.2} s = {:.0} MB/s | baseline |\n",
        mbps(GIB, curl)
    ));
    table.push_str(&format!(
        "| 128 MiB, node → node | {t_small:.2} s = {:.0} MB/s | |\n",
        mbps(128 << 20, t_small)
    ));
    table.push_str(&format!(
        "| 4 GiB, node → node | {t_huge:.2} s = {:.0} MB/s | |\n",
        mbps(4 * GIB, t_huge)
    ));
    table.push_str(&format!(
        "| 1 GiB to 8 nodes at once (all 8 done) | {t_eight:.2} s = **{:.2} × one transfer** | ≤ 1.5 × |\n",
        t_eight / t_one
    ));
    table.push_str(&format!(
        "| bytes the origin sent for those 8 copies | {:.2} GiB ({:.1} copies; the rest came from the other downloaders) | |\n",
        origin_sent as f64 / GIB as f64,
        origin_sent as f64 / GIB as f64
    ));
    table.push_str(&format!(
        "| peak RSS of sender / receiver after 128 MiB | {:.0} / {:.0} MiB | |\n",
        rss_small.0, rss_small.1
    ));
    table.push_str(&format!(
        "| peak RSS of sender / receiver after 1 GiB | {:.0} / {:.0} MiB | flat |\n",
        rss_big.0, rss_big.1
    ));
    table.push_str(&format!(
        "| peak RSS of sender / receiver after 4 GiB | {:.0} / {:.0} MiB | flat |\n",
        rss_huge.0, rss_huge.1
    ));
    table.push_str(&format!(
        "| peak RSS of the origin / largest receiver after 1 GiB × 8 | {rss_eight_origin:.0} / {rss_eight_max:.0} MiB | flat |\n"
    ));
    table.push_str(&format!(
        "| `pesc files add` of 1 GiB (streamed upload, hashed with its tree) | {t_add:.2} s | |\n"
    ));
    println!("{table}");
    if write {
        record_section("blobs", &table)?;
        println!("recorded in docs/performance.md");
    }
    Ok(())
}

/// The Docker executor's cost per run: 64 runs of `true` through a node
/// with 4 slots against 64 bare `docker run --rm` of the same image, 4 at a
/// time, in the same invocation (medians of `repeat`).
fn docker(repeat: usize, write: bool) -> Result<()> {
    const IMAGE: &str = "pesc-offline/python:bookworm";
    const RUNS: u32 = 64;
    const AT_ONCE: u32 = 4;
    let bin = pesc_bin()?;
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data)?;
    // Templates build on the offline base images (no registry here).
    std::fs::write(
        data.join("node.toml"),
        "[docker.template_bases]\npython = \"pesc-offline/python:bookworm\"\ngcc = \"pesc-offline/gcc:bookworm\"\n",
    )?;
    let node = Node::start_in(
        data,
        AT_ONCE,
        bin,
        None,
        &["--executor", "docker", "--docker-image", IMAGE],
    )?;
    let prog = tmp.path().join("noop.sh");
    std::fs::write(&prog, "true\n")?;
    let prog = prog.to_str().context("temp path")?.to_string();
    let n = RUNS.to_string();
    let mut pesc = Vec::new();
    let mut bare = Vec::new();
    for _ in 0..repeat {
        let t0 = Instant::now();
        let v = node.cli_json(&["submit", &prog, "-n", &n, "--wait", "--json"]);
        pesc.push(t0.elapsed().as_secs_f64());
        if v["state"] != "succeeded" {
            bail!("docker bench: request ended {}: {v}", v["state"]);
        }
        bare.push(time_shell(&format!(
            "seq {RUNS} | xargs -P {AT_ONCE} -I{{}} docker run --rm {IMAGE} true"
        ))?);
    }
    let (p, b) = (median(pesc), median(bare));
    // Image builds: the first run of a new domain (build + run) against a
    // run with the image there already. Templates that install packages
    // from PyPI or CRAN cannot be built here (no network for builds).
    let one_run = |extra: &[&str]| -> Result<f64> {
        let mut args = vec!["submit", prog.as_str(), "-n", "1", "--wait", "--json"];
        args.extend_from_slice(extra);
        let t0 = Instant::now();
        let v = node.cli_json(&args);
        if v["state"] != "succeeded" {
            bail!("docker bench: a domain run ended {}: {v}", v["state"]);
        }
        Ok(t0.elapsed().as_secs_f64())
    };
    let mut builds = String::new();
    for template in ["SimplePython", "C"] {
        let name = format!("bench-{}-{}", template.to_lowercase(), std::process::id());
        let out = node.cli(&["domains", "add", &name, "--template", template]);
        if !out.status.success() {
            bail!("domains add: {}", String::from_utf8_lossy(&out.stderr));
        }
        let first = one_run(&["--domain", &name])?;
        let again = one_run(&["--domain", &name])?;
        builds.push_str(&format!(
            "| template {template}: first run (image built) / next run (image there) | {first:.2} s / {again:.2} s → build ≈ {:.2} s | |\n",
            first - again
        ));
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker rmi -f $(docker images -q pesc-domain/{name}) >/dev/null 2>&1"
            ))
            .status();
    }
    let table = format!(
        "| measure | result | target |\n|---|---|---|\n\
         | {RUNS} runs of `true`, node with the Docker executor, {AT_ONCE} slots (`pesc submit --wait`) | {p:.2} s = {:.0} ms per run | |\n\
         | {RUNS} × `docker run --rm {IMAGE} true`, {AT_ONCE} at a time | {b:.2} s = {:.0} ms per run | baseline |\n\
         | ratio | **{:.2}** | ≤ 1.2 |\n{builds}\n",
        p * 1000.0 * f64::from(AT_ONCE) / f64::from(RUNS),
        b * 1000.0 * f64::from(AT_ONCE) / f64::from(RUNS),
        p / b
    );
    println!("{table}");
    if write {
        record_section("docker", &table)?;
        println!("recorded in docs/performance.md");
    }
    Ok(())
}

/// CPU time (user + system) of a process so far, in seconds.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (11 and 12 after the name).
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory of a process now, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// What a node holding `n` finished requests costs at rest.
struct HistoryRow {
    n: usize,
    idle_cpu_pct: f64,
    rss_mib: f64,
    list_ms: f64,
    reconnect_bytes: u64,
    reconnect_s: f64,
    /// Resident memory of the peer after its restart (it loaded summaries,
    /// not documents).
    restarted_rss_mib: f64,
}

/// Two nodes; `n` one-run requests submitted on the first and finished;
/// both archive them; then the costs at rest and when the peer reconnects.
fn history_run(bin: &std::path::Path, n: usize) -> Result<HistoryRow> {
    use pesc_tests::grid::Grid;
    use std::time::Duration;
    let archive_s = 5;
    let a_s = archive_s.to_string();
    let mut g = Grid::loopback_with(bin.to_path_buf(), 2, 2, &["--archive-after-s", &a_s])?;
    let tmp = tempfile::tempdir()?;
    let prog = tmp.path().join("noop.sh");
    std::fs::write(&prog, "true\n")?;
    let prog = prog.to_str().context("temp path")?.to_string();
    let first = submit_json(&g.nodes[0], &prog, "true", 1, true)?;
    let process = first["process"].as_str().context("process id")?.to_string();
    let api = g.nodes[0].http();
    let t0 = Instant::now();
    for i in 1..n {
        let r = api
            .post("/requests")
            .json(&serde_json::json!({"process": process, "repetitions": 1}))
            .send()?;
        if !r.status().is_success() {
            bail!("submit {i}: {}", r.text()?);
        }
    }
    let total = n.max(1) as u64;
    loop {
        // Prometheus text, at the root of the node's address.
        let text =
            reqwest::blocking::get(g.nodes[0].api_base().replace("/api/v1", "/metrics"))?.text()?;
        let done = text
            .lines()
            .find_map(|l| l.strip_prefix("pesc_runs{state=\"succeeded\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if done >= total {
            break;
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("only {done} of {total} runs finished");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "history {n}: submitted and finished in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    // Let both nodes archive what is finished (and the peer sync it all).
    std::thread::sleep(Duration::from_secs(archive_s + 15));
    let pid = g.nodes[0].pid();
    let c0 = cpu_s(pid);
    let idle_s = 20.0;
    std::thread::sleep(Duration::from_secs_f64(idle_s));
    let idle_cpu_pct = (cpu_s(pid) - c0) / idle_s * 100.0;
    let rss = rss_mib(pid);
    let mut lat = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let r = api.get("/requests?limit=50").send()?;
        let v: serde_json::Value = r.json()?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        if v.as_array().map_or(0, |a| a.len()) != n.min(50) {
            bail!(
                "the first page holds {} requests",
                v.as_array().map_or(0, |a| a.len())
            );
        }
    }
    // The peer goes away and comes back: what the two exchange.
    let dir = g.nodes[1].data_dir.clone();
    g.nodes[1].kill9();
    std::thread::sleep(Duration::from_secs(2));
    let before = traffic(&g.nodes[0])?;
    let t = Instant::now();
    let back = Node::start_in(
        dir,
        2,
        bin.to_path_buf(),
        None,
        &["--archive-after-s", &a_s],
    )?;
    back.wait_connected(2, Duration::from_secs(60));
    // Until the exchange is over: no bytes for two seconds.
    let mut last = traffic(&g.nodes[0])?;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(2) && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(200));
        let now = traffic(&g.nodes[0])?;
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let reconnect_s = (quiet_since - t).as_secs_f64();
    let reconnect_bytes = last - before;
    let restarted_rss_mib = rss_mib(back.pid());
    g.nodes[1] = back;
    Ok(HistoryRow {
        n,
        idle_cpu_pct,
        rss_mib: rss,
        list_ms: median(lat),
        reconnect_bytes,
        reconnect_s,
        restarted_rss_mib,
    })
}

fn history(write: bool) -> Result<()> {
    let bin = pesc_bin()?;
    // `HISTORY_N` sets the larger history (10 000 by default).
    let big: usize = std::env::var("HISTORY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rows = [history_run(&bin, 1)?, history_run(&bin, big)?];
    let mut table = String::from(
        "Two nodes × 2 slots on 127.0.0.1; one-run requests of `true` submitted through the API on the first; both archive a finished request after 5 s (`--archive-after-s 5`; 600 s by default). Measured on the first node after the archive (it held every document before archiving), then the second node is killed (-9) and started again: what the two exchange until quiet, and the restarted node's memory (it loads summaries, not documents).\n\n| finished requests | idle CPU | resident memory | `GET /api/v1/requests?limit=50` (median of 30) | bytes exchanged when the peer reconnects | until quiet | restarted peer's memory |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {:.2} % | {:.0} MiB | {:.1} ms | {} B | {:.1} s | {:.0} MiB |\n",
            r.n,
            r.idle_cpu_pct,
            r.rss_mib,
            r.list_ms,
            r.reconnect_bytes,
            r.reconnect_s,
            r.restarted_rss_mib
        ));
    }
    print!("{table}");
    if write {
        record_section("history", &table)?;
    }
    Ok(())
}
