//! The summary table `pesc-sim all` writes into docs/simulations.md.

use std::path::Path;

use crate::report::Report;

fn kb(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.1} MB/s", b / 1e6)
    } else {
        format!("{:.1} KB/s", b / 1e3)
    }
}

/// One row per scenario.
pub fn summary(reports: &[Report]) -> String {
    let mut t = String::from(
        "| scenario | nodes | runs | makespan | ideal | × ideal | central queue × ideal | longest first × ideal | duplicate work | wasted work | claim conflicts | failover p50 / max | sync per node | gossip per node | invariants |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for r in reports {
        let fo = if r.failover_s.count == 0 {
            "–".to_string()
        } else {
            format!("{:.1} s / {:.1} s", r.failover_s.p50, r.failover_s.max)
        };
        t.push_str(&format!(
            "| {} | {} | {} | {:.0} s | {:.0} s | {:.3} | {:.3} | {:.3} | {:.3} % | {:.2} % | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.nodes,
            r.runs,
            r.makespan_s,
            r.ideal_makespan_s,
            r.makespan_over_ideal,
            r.central_queue_makespan_s / r.ideal_makespan_s.max(1e-9),
            r.longest_first_makespan_s / r.ideal_makespan_s.max(1e-9),
            r.duplicate_work_pct,
            r.wasted_work_pct,
            r.claim_conflicts,
            fo,
            kb(r.sync_bytes_per_node_s.mean),
            kb(r.gossip_bytes_per_node_s.mean),
            if r.invariant_violations == 0 { "kept".to_string() } else { format!("{} violated", r.invariant_violations) },
        ));
    }
    t
}

/// Replaces the text between the report's markers (or appends it).
pub fn write_section(path: &Path, name: &str, body: &str) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (start, end) = (
        format!("<!-- sim {name}: begin -->"),
        format!("<!-- sim {name}: end -->"),
    );
    let block = format!("{start}\n{body}{end}");
    let new = match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{}{}", &text[..a], block, &text[b + end.len()..]),
        _ => format!("{text}\n{block}\n"),
    };
    std::fs::write(path, new)
}
