//! `pesc-sim SCENARIO` prints the scenario's metrics as JSON; `pesc-sim all`
//! runs the report's suite and writes JSON and SVG files.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use pesc_sim::scenarios::{ALL, by_name};

fn usage() -> String {
    let mut s = String::from(
        "pesc-sim: PESC's protocol on simulated grids\n\n\
         usage: pesc-sim [--seed N] [--out DIR] [--progress] [--no-backups] [--mode fast|exact [--no-load-order]] SCENARIO | all [--except SCENARIO]...\n\n\
         Prints the scenario's metrics as JSON on stdout (makespan_s, ideal_makespan_s,\n\
         duplicate_work_pct, failover_s, gossip_bytes_per_node_s, ...). With --out, also\n\
         writes DIR/SCENARIO.json and SVG charts. `all` runs every scenario but smoke\n\
         (default --out docs/simulations). --progress prints a line on stderr every\n\
         simulated 10 minutes.\n\n\
         --mode fast (the default) runs the closed-form engine, which reaches 10 000\n\
         nodes; --mode exact makes every virtual node the protocol core itself\n\
         (pesc_protocol::node::Node) over the simulated network and clock: the\n\
         same code the node runs, for grids up to a few hundred nodes.\n\nscenarios:\n",
    );
    for (n, d) in ALL {
        s.push_str(&format!("  {n:<10} {d}\n"));
    }
    s
}

fn main() -> ExitCode {
    let mut seed = 1u64;
    let mut out: Option<PathBuf> = None;
    let mut which: Option<String> = None;
    let mut except: Vec<String> = Vec::new();
    let mut progress = false;
    let mut exact = false;
    let mut load_order = true;
    let mut backups = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{}", usage());
                return ExitCode::SUCCESS;
            }
            "--seed" => match args.next().and_then(|s| s.parse().ok()) {
                Some(s) => seed = s,
                None => {
                    eprintln!("--seed needs a number");
                    return ExitCode::from(2);
                }
            },
            "--progress" => progress = true,
            "--no-load-order" => load_order = false,
            "--no-backups" => backups = false,
            "--mode" => match args.next().as_deref() {
                Some("exact") => exact = true,
                Some("fast") => exact = false,
                _ => {
                    eprintln!("--mode needs fast or exact");
                    return ExitCode::from(2);
                }
            },
            "--except" => match args.next() {
                Some(n) => except.push(n),
                None => {
                    eprintln!("--except needs a scenario name");
                    return ExitCode::from(2);
                }
            },
            "--out" => match args.next() {
                Some(d) => out = Some(d.into()),
                None => {
                    eprintln!("--out needs a directory");
                    return ExitCode::from(2);
                }
            },
            s if which.is_none() && !s.starts_with('-') => which = Some(s.to_string()),
            other => {
                eprintln!("unexpected argument '{other}'\n\n{}", usage());
                return ExitCode::from(2);
            }
        }
    }
    let Some(which) = which else {
        eprint!("{}", usage());
        return ExitCode::from(2);
    };
    let names: Vec<&str> = if which == "all" {
        out.get_or_insert_with(|| "docs/simulations".into());
        ALL.iter()
            .map(|(n, _)| *n)
            .filter(|n| *n != "smoke" && !except.iter().any(|e| e == n))
            .collect()
    } else if by_name(&which, seed).is_some() {
        vec![
            ALL.iter()
                .find(|(n, _)| *n == which)
                .map(|(n, _)| *n)
                .unwrap_or("smoke"),
        ]
    } else {
        eprintln!("no scenario '{which}'\n\n{}", usage());
        return ExitCode::from(2);
    };
    if let Some(dir) = &out
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    if exact {
        return run_exact(&names, seed, progress, load_order, backups);
    }
    if !load_order {
        eprintln!("--no-load-order is for the exact mode (the fast engine models no load)");
        return ExitCode::from(2);
    }
    let mut reports = Vec::new();
    for name in names {
        let mut sc = by_name(name, seed).expect("listed");
        sc.progress = progress;
        sc.backups = backups;
        if sc.has_gangs() {
            // A rule written twice is a defect: gangs are decided by the
            // protocol core, which only the exact mode runs.
            eprintln!(
                "{name}: has parallel requests, which only the exact mode runs (--mode exact {name}); skipped"
            );
            continue;
        }
        let t0 = Instant::now();
        let r = pesc_sim::run(sc);
        eprintln!(
            "{name}: makespan {:.0} s (ideal {:.0} s, ×{:.3}), duplicate work {:.2} %, {} backup copies ({} won, lost work {:.2} %), simulated in {:.1} s",
            r.makespan_s,
            r.ideal_makespan_s,
            r.makespan_over_ideal,
            r.duplicate_work_pct,
            r.backup_copies,
            r.backup_wins,
            r.backup_lost_pct,
            t0.elapsed().as_secs_f64()
        );
        if let Some(dir) = &out {
            let json = serde_json::to_string_pretty(&r).expect("serializable");
            let mut files = vec![(format!("{name}.json"), json + "\n")];
            files.extend(r.charts());
            for (f, body) in files {
                if let Err(e) = std::fs::write(dir.join(&f), body) {
                    eprintln!("cannot write {f}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        reports.push(r);
    }
    if which == "all"
        && let Err(e) = pesc_sim::table::write_section(
            std::path::Path::new("docs/simulations.md"),
            "summary",
            &pesc_sim::table::summary(&reports),
        )
    {
        eprintln!("cannot update docs/simulations.md: {e}");
        return ExitCode::FAILURE;
    }
    print_reports(&reports, |r| r.invariant_violations)
}

/// Runs scenarios in the exact mode and prints their reports.
fn run_exact(
    names: &[&str],
    seed: u64,
    progress: bool,
    load_order: bool,
    backups: bool,
) -> ExitCode {
    let mut reports = Vec::new();
    for name in names {
        let mut sc = by_name(name, seed).expect("listed");
        sc.progress = progress;
        sc.load_order = load_order;
        sc.backups = backups;
        let r = pesc_sim::exact::run(&sc);
        eprintln!(
            "{name} (exact): makespan {:.0} s, duplicate work {:.2} %, {} claims for {} runs, simulated in {:.1} s",
            r.makespan_s, r.duplicate_work_pct, r.claims, r.runs, r.simulated_in_s
        );
        reports.push(r);
    }
    print_reports(&reports, |r| r.invariant_violations)
}

/// Prints the reports as JSON (one, or a list); fails when any broke an
/// invariant.
fn print_reports<R: serde::Serialize>(reports: &[R], violations: impl Fn(&R) -> u64) -> ExitCode {
    let json = if reports.len() == 1 {
        serde_json::to_string_pretty(&reports[0])
    } else {
        serde_json::to_string_pretty(reports)
    };
    println!("{}", json.expect("serializable"));
    if reports.iter().any(|r| violations(r) > 0) {
        eprintln!("invariant violations: see invariant_violations in the output");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
