//! Benchmarks that print numbers (never timed assertions).
//!
//! `cargo run --release -p pesc-tests --bin bench -- single-node [--repeat N] [--write]`
//!
//! single-node: one node, process executor, 8 slots. W1 = 400 runs of `true`
//! (runs/s), W2 = 64 runs of `sleep 0.5` (efficiency = 4.0 s / wall), each
//! timed from `pesc submit` until every run's results are stored, beside GNU
//! parallel and `xargs -P 8` on the same workloads. `--write` records the
//! table in docs/performance.md.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use pesc_tests::{Node, workspace};

const SLOTS: u32 = 8;

struct Workload {
    name: &'static str,
    runs: u32,
    pesc_entry: &'static str,
    parallel: &'static str,
    xargs: &'static str,
    ideal_s: Option<f64>,
}

const WORKLOADS: [Workload; 2] = [
    Workload {
        name: "W1: 400 × true",
        runs: 400,
        pesc_entry: "true",
        parallel: "seq 400 | parallel -j 8 -N0 true",
        xargs: "seq 400 | xargs -P 8 -n 1 true",
        ideal_s: None,
    },
    Workload {
        name: "W2: 64 × sleep 0.5",
        runs: 64,
        pesc_entry: "sh -c 'sleep 0.5'",
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
        _ => {
            eprintln!("usage: bench single-node [--repeat N] [--write]");
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

fn single_node(repeat: usize, write: bool) -> Result<()> {
    let bin = pesc_bin()?;
    let tmp = tempfile::tempdir()?;
    let node = Node::start_in(tmp.path().join("data"), SLOTS, bin, None, &[])?;
    let prog = tmp.path().join("noop.sh");
    std::fs::write(&prog, "true\n")?;
    let prog = prog.to_str().context("temp path")?.to_string();
    let mut rows = Vec::new();
    for w in &WORKLOADS {
        let mut pesc = Vec::new();
        let mut results = Vec::new();
        for _ in 0..repeat {
            let n = w.runs.to_string();
            let t0 = Instant::now();
            let v = node.cli_json(&[
                "submit",
                &prog,
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
            pesc.push(wall);
            let out = tmp.path().join("results");
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
            results.push(t1.elapsed().as_secs_f64());
        }
        let parallel = (0..repeat)
            .map(|_| time_shell(w.parallel))
            .collect::<Result<Vec<_>>>()?;
        let xargs = (0..repeat)
            .map(|_| time_shell(w.xargs))
            .collect::<Result<Vec<_>>>()?;
        rows.push((
            w,
            median(pesc),
            median(parallel),
            median(xargs),
            median(results),
        ));
    }
    let mut table = String::new();
    table.push_str(&format!(
        "Single node, process executor, {SLOTS} slots; median of {repeat}; wall time from `pesc submit` until every run's results are stored.\n\n"
    ));
    table.push_str("| workload | metric | pesc | GNU parallel -j 8 | xargs -P 8 (floor) | pesc / parallel | pesc / xargs |\n");
    table.push_str("|---|---|---|---|---|---|---|\n");
    for (w, p, gp, x, r) in &rows {
        let (metric, fp, fg, fx) = match w.ideal_s {
            None => (
                "runs/s",
                w.runs as f64 / p,
                w.runs as f64 / gp,
                w.runs as f64 / x,
            ),
            Some(ideal) => (
                "efficiency (4.0 s / wall)",
                ideal / p,
                ideal / gp,
                ideal / x,
            ),
        };
        table.push_str(&format!(
            "| {} | {metric} | {fp:.2} | {fg:.2} | {fx:.2} | {:.2} | {:.2} |\n",
            w.name,
            fp / fg,
            fp / fx
        ));
        table.push_str(&format!(
            "| {} | wall s (results zip download) | {p:.3} ({r:.3}) | {gp:.3} | {x:.3} | | |\n",
            w.name
        ));
    }
    println!("{table}");
    if write {
        record(&table)?;
        println!("recorded in docs/performance.md");
    }
    Ok(())
}

/// Replaces the generated section of docs/performance.md.
fn record(table: &str) -> Result<()> {
    let path = workspace().join("docs/performance.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let (start, end) = (
        "<!-- bench single-node: begin -->",
        "<!-- bench single-node: end -->",
    );
    let block = format!("{start}\n{table}{end}");
    let new = match (text.find(start), text.find(end)) {
        (Some(a), Some(b)) if a < b => format!("{}{}{}", &text[..a], block, &text[b + end.len()..]),
        _ => format!("{text}\n{block}\n"),
    };
    std::fs::write(&path, new)?;
    Ok(())
}
