//! The request page's run map (nodes × time, one bar per attempt) and
//! PESC's statistics table, drawn from a request's runs.

use std::collections::BTreeMap;
use std::fmt::Write;

use pesc_protocol::api::RequestInfo;
use pesc_protocol::model::AttemptState;

/// Per node: attempts that succeeded and their mean duration.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStats {
    pub node: String,
    pub runs: u32,
    pub mean_ms: u64,
}

/// PESC's statistics of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub per_node: Vec<NodeStats>,
    /// From the first start to the last end (or `now`).
    pub makespan_ms: u64,
    /// Σ of the successful runs' durations.
    pub total_run_ms: u64,
    /// Σ run time / makespan.
    pub speedup: f64,
}

/// One bar of the run map.
struct Bar {
    rank: u32,
    epoch: u32,
    node: String,
    state: AttemptState,
    from: u64,
    to: u64,
}

fn bars(r: &RequestInfo, name: &dyn Fn(&str) -> String, now_ms: u64) -> Vec<Bar> {
    let mut out = Vec::new();
    for run in r.runs.iter().flatten() {
        for a in &run.history {
            let from = a.started_ms.unwrap_or(a.claimed_ms);
            let to = a.finished_ms.unwrap_or(now_ms).max(from);
            out.push(Bar {
                rank: run.rank,
                epoch: a.epoch,
                node: name(a.node.as_str()),
                state: a.state,
                from,
                to,
            });
        }
    }
    out
}

pub fn stats(r: &RequestInfo, name: &dyn Fn(&str) -> String, now_ms: u64) -> Stats {
    let bars = bars(r, name, now_ms);
    let mut per: BTreeMap<String, (u32, u64)> = BTreeMap::new();
    let mut total = 0;
    for b in bars.iter().filter(|b| b.state == AttemptState::Succeeded) {
        let e = per.entry(b.node.clone()).or_default();
        e.0 += 1;
        e.1 += b.to - b.from;
        total += b.to - b.from;
    }
    let start = bars.iter().map(|b| b.from).min();
    let end = bars.iter().map(|b| b.to).max();
    let makespan = match (start, end) {
        (Some(s), Some(e)) => e - s,
        _ => 0,
    };
    Stats {
        per_node: per
            .into_iter()
            .map(|(node, (runs, sum))| NodeStats {
                node,
                runs,
                mean_ms: sum / u64::from(runs.max(1)),
            })
            .collect(),
        makespan_ms: makespan,
        total_run_ms: total,
        speedup: if makespan > 0 {
            total as f64 / makespan as f64
        } else {
            0.0
        },
    }
}

fn color(s: AttemptState) -> &'static str {
    match s {
        AttemptState::Succeeded => "#2e7d32",
        AttemptState::Running | AttemptState::Claimed => "#1565c0",
        AttemptState::Failed | AttemptState::Error => "#c62828",
        AttemptState::Lost | AttemptState::Yielded => "#ef6c00",
        AttemptState::Cancelled => "#757575",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The run map as SVG: a row per node, a bar per attempt (reassigned ones
/// orange, failed red), time along x from the first start.
pub fn gantt_svg(r: &RequestInfo, name: &dyn Fn(&str) -> String, now_ms: u64) -> String {
    let bars = bars(r, name, now_ms);
    if bars.is_empty() {
        return String::new();
    }
    // A node runs several attempts at once: each gets a lane of the
    // node's row, the first lane free when it starts.
    let mut order: Vec<usize> = (0..bars.len()).collect();
    order.sort_by_key(|&i| (&bars[i].node, bars[i].from, bars[i].rank));
    let mut rows: Vec<(String, u64)> = Vec::new(); // (node, busy until)
    let mut row_of = vec![0usize; bars.len()];
    for i in order {
        let b = &bars[i];
        let free = rows
            .iter()
            .position(|(n, until)| *n == b.node && *until <= b.from);
        let r = match free {
            Some(r) => r,
            None => {
                // Keep a node's lanes together.
                let at = rows
                    .iter()
                    .rposition(|(n, _)| *n == b.node)
                    .map_or(rows.len(), |p| p + 1);
                rows.insert(at, (b.node.clone(), 0));
                for x in row_of.iter_mut() {
                    if *x >= at {
                        *x += 1;
                    }
                }
                at
            }
        };
        rows[r].1 = b.to;
        row_of[i] = r;
    }
    let t0 = bars.iter().map(|b| b.from).min().unwrap_or(0);
    let t1 = bars.iter().map(|b| b.to).max().unwrap_or(t0).max(t0 + 1);
    let (left, width, row, top) = (140.0, 760.0, 26.0, 10.0);
    let height = top + row * rows.len() as f64 + 30.0;
    let x = |t: u64| left + (t - t0) as f64 / (t1 - t0) as f64 * width;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg class="gantt" role="img" aria-label="run map" viewBox="0 0 {w} {height}" width="100%" xmlns="http://www.w3.org/2000/svg">"##,
        w = left + width + 10.0
    );
    for (i, (n, _)) in rows.iter().enumerate() {
        let y = top + row * i as f64;
        let first = i == 0 || rows[i - 1].0 != *n;
        let last = i + 1 == rows.len() || rows[i + 1].0 != *n;
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end" font-size="12">{}</text>"##,
            left - 6.0,
            y + row * 0.65,
            if first { esc(n) } else { String::new() },
        );
        if last {
            let _ = write!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#bbb"/>"##,
                left + width,
                y + row,
                y + row
            );
        }
    }
    for (k, b) in bars.iter().enumerate() {
        let y = top + row * row_of[k] as f64 + 3.0;
        let (x0, x1) = (x(b.from), x(b.to));
        let _ = write!(
            s,
            r##"<rect class="bar {state:?}" x="{x0:.1}" y="{y:.1}" width="{w:.1}" height="{h}" fill="{c}" fill-opacity="0.85" stroke="#fff"><title>rank {rank}, attempt {epoch}, {state:?}, {dur}</title></rect>"##,
            w = (x1 - x0).max(1.5),
            h = row - 6.0,
            c = color(b.state),
            rank = b.rank,
            epoch = b.epoch,
            state = b.state,
            dur = super::fmt_duration(b.to - b.from),
        );
        if x1 - x0 > 22.0 {
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#fff">{}</text>"##,
                x0 + 3.0,
                y + row * 0.5,
                b.rank
            );
        }
    }
    let axis_y = top + row * rows.len() as f64 + 16.0;
    for k in 0..=4 {
        let t = t0 + (t1 - t0) * k / 4;
        let anchor = match k {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{axis_y}" font-size="11" text-anchor="{anchor}">{}</text>"##,
            x(t),
            super::fmt_duration(t - t0)
        );
    }
    s.push_str("</svg>");
    s
}

/// Runs per node as a bar chart (SVG).
pub fn stats_svg(st: &Stats) -> String {
    if st.per_node.is_empty() {
        return String::new();
    }
    let max = st.per_node.iter().map(|n| n.runs).max().unwrap_or(1).max(1);
    let (left, width, row) = (140.0, 400.0, 22.0);
    let height = row * st.per_node.len() as f64 + 8.0;
    let mut s = format!(
        r##"<svg class="stats" role="img" aria-label="runs per node" viewBox="0 0 {} {height}" width="100%" xmlns="http://www.w3.org/2000/svg">"##,
        left + width + 60.0
    );
    for (i, n) in st.per_node.iter().enumerate() {
        let y = row * i as f64 + 4.0;
        let w = width * f64::from(n.runs) / f64::from(max);
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end" font-size="12">{}</text><rect x="{left}" y="{y}" width="{w:.1}" height="{}" fill="#1565c0"/><text x="{:.1}" y="{}" font-size="12">{}</text>"##,
            left - 6.0,
            y + row * 0.6,
            esc(&n.node),
            row - 6.0,
            left + w + 4.0,
            y + row * 0.6,
            n.runs
        );
    }
    s.push_str("</svg>");
    s
}

/// One parameter value's numbers in a sweep plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub value: String,
    pub n: usize,
    pub mean: f64,
    pub sd: f64,
    pub min: f64,
    pub max: f64,
}

/// The mean and spread of `column` for each value of `param`, from a
/// results table (`results.csv`'s header and rows): numeric values of the
/// parameter in numeric order, others in the order they first appear.
/// Cells that are not numbers are left out (counted in the caption).
pub fn sweep_groups(
    header: &[String],
    rows: &[Vec<String>],
    param: &str,
    column: &str,
) -> Result<(Vec<Group>, usize), String> {
    let at = |name: &str| header.iter().position(|h| h == name);
    let p = at(param).ok_or_else(|| format!("no parameter '{param}' in the table"))?;
    let c = at(column).ok_or_else(|| {
        format!(
            "no column '{column}' in results.csv (its columns: {})",
            header.join(", ")
        )
    })?;
    let mut order: Vec<String> = Vec::new();
    let mut values: std::collections::HashMap<String, Vec<f64>> = Default::default();
    let mut skipped = 0;
    for r in rows {
        let (Some(k), Some(v)) = (r.get(p), r.get(c)) else {
            continue;
        };
        match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => {
                if !values.contains_key(k) {
                    order.push(k.clone());
                }
                values.entry(k.clone()).or_default().push(x);
            }
            _ => skipped += 1,
        }
    }
    if order.iter().all(|k| k.trim().parse::<f64>().is_ok()) {
        order.sort_by(|a, b| {
            let (x, y) = (a.trim().parse::<f64>(), b.trim().parse::<f64>());
            x.unwrap_or(0.0).total_cmp(&y.unwrap_or(0.0))
        });
    }
    let groups = order
        .into_iter()
        .map(|k| {
            let v = &values[&k];
            let n = v.len();
            let mean = v.iter().sum::<f64>() / n as f64;
            let var = if n > 1 {
                v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
            } else {
                0.0
            };
            Group {
                value: k,
                n,
                mean,
                sd: var.sqrt(),
                min: v.iter().copied().fold(f64::INFINITY, f64::min),
                max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            }
        })
        .collect();
    Ok((groups, skipped))
}

/// The sweep plot: per parameter value, the mean (a dot), mean ± one
/// standard deviation (a bar) and the range (a thin line).
pub fn sweep_svg(groups: &[Group], param: &str, column: &str, skipped: usize) -> String {
    let (left, top, width, height) = (70.0, 30.0, 520.0, 240.0);
    let lo = groups
        .iter()
        .map(|g| g.min.min(g.mean - g.sd))
        .fold(f64::INFINITY, f64::min);
    let hi = groups
        .iter()
        .map(|g| g.max.max(g.mean + g.sd))
        .fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else if lo.is_finite() {
        (lo - 1.0, lo + 1.0)
    } else {
        (0.0, 1.0)
    };
    let y = |v: f64| top + height - (v - lo) / (hi - lo) * height;
    let step = width / groups.len().max(1) as f64;
    let mut s = format!(
        r##"<svg class="sweep-plot" role="img" aria-label="{} by {}" viewBox="0 0 {} {}" width="100%" xmlns="http://www.w3.org/2000/svg">"##,
        esc(column),
        esc(param),
        left + width + 20.0,
        top + height + 60.0
    );
    let _ = write!(
        s,
        r##"<text x="{left}" y="18" font-size="13">{} by {}: mean (dot), ± 1 sd (bar), range (line){}</text>"##,
        esc(column),
        esc(param),
        if skipped > 0 {
            format!("; {skipped} cell(s) not numbers left out")
        } else {
            String::new()
        }
    );
    for (label, v) in [(format!("{hi:.4}"), hi), (format!("{lo:.4}"), lo)] {
        let _ = write!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##,
            left - 6.0,
            y(v) + 4.0,
            esc(label.trim_end_matches('0').trim_end_matches('.'))
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="#888"/><line x1="{left}" y1="{0}" x2="{}" y2="{0}" stroke="#888"/>"##,
        top + height,
        left + width
    );
    for (i, g) in groups.iter().enumerate() {
        let x = left + step * (i as f64 + 0.5);
        let _ = write!(
            s,
            r##"<g data-value="{}" data-mean="{}" data-n="{}"><line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#90caf9"/><rect x="{:.1}" y="{:.1}" width="8" height="{:.1}" fill="#1565c0" opacity="0.35"/><circle cx="{x:.1}" cy="{:.1}" r="4" fill="#1565c0"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text></g>"##,
            esc(&g.value),
            g.mean,
            g.n,
            y(g.max),
            y(g.min),
            x - 4.0,
            y(g.mean + g.sd),
            (y(g.mean - g.sd) - y(g.mean + g.sd)).max(1.0),
            y(g.mean),
            top + height + 16.0,
            esc(&g.value)
        );
    }
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="12">{}</text></svg>"##,
        left + width / 2.0,
        top + height + 40.0,
        esc(param)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use pesc_protocol::api::{AttemptSpan, RunInfo};
    use pesc_protocol::model::{Language, RequestState, RunState};
    use pesc_protocol::{NodeId, ProcessId, RequestId};

    #[test]
    fn sweep_groups_give_mean_and_spread_per_value_in_numeric_order() {
        let h: Vec<String> = ["n", "rank", "score"].map(String::from).to_vec();
        let row = |n: &str, v: &str| vec![n.to_string(), "0".into(), v.to_string()];
        let rows = vec![
            row("100", "2"),
            row("20", "1"),
            row("100", "4"),
            row("20", "3"),
            row("100", "NA"),
        ];
        let (g, skipped) = sweep_groups(&h, &rows, "n", "score").unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(g[0].value, "20", "numeric order");
        assert_eq!((g[0].mean, g[0].n), (2.0, 2));
        assert_eq!((g[1].mean, g[1].min, g[1].max), (3.0, 2.0, 4.0));
        assert!((g[1].sd - 2f64.sqrt()).abs() < 1e-12);
        let svg = sweep_svg(&g, "n", "score", skipped);
        assert!(svg.contains(r#"data-value="100" data-mean="3""#), "{svg}");
        assert!(svg.contains("1 cell(s) not numbers"));
        let e = sweep_groups(&h, &rows, "n", "nope").unwrap_err();
        assert!(e.contains("its columns: n, rank, score"), "{e}");
    }

    fn span(epoch: u32, node: &str, state: AttemptState, from: u64, to: u64) -> AttemptSpan {
        AttemptSpan {
            epoch,
            node: NodeId::new(node),
            state,
            claimed_ms: from,
            started_ms: Some(from),
            finished_ms: Some(to),
            backup: false,
        }
    }

    fn run(rank: u32, history: Vec<AttemptSpan>) -> RunInfo {
        RunInfo {
            rank,
            state: RunState::Succeeded,
            node: None,
            attempt: None,
            attempts: history.len() as u32,
            exit_code: Some(0),
            started_ms: None,
            finished_ms: None,
            duration_ms: None,
            output: None,
            reason: None,
            replicas: vec![],
            checkpoint: None,
            progress: None,
            message: None,
            values: Vec::new(),
            repetition: None,
            peak_memory_mb: None,
            peak_cpu_percent: None,
            history,
        }
    }

    fn request(runs: Vec<RunInfo>) -> RequestInfo {
        RequestInfo {
            id: RequestId::from_bytes([1; 8]),
            state: RequestState::Succeeded,
            owner: "ana".into(),
            process: ProcessId::from_bytes([2; 8]),
            process_name: "p".into(),
            language: Language::Python,
            repetitions: runs.len() as u32,
            parameters: vec![],
            created_ms: 0,
            parallel: false,
            same_node: false,
            sweep: vec![],
            combinations: 0,
            gang: None,
            counts: Default::default(),
            waiting: None,
            version: 1,
            runs: Some(runs),
            held_by_peer: None,
        }
    }

    #[test]
    fn statistics_follow_pesc_table() {
        // Two nodes; rank 1 was lost on b and redone on a.
        let r = request(vec![
            run(0, vec![span(1, "a", AttemptState::Succeeded, 1000, 5000)]),
            run(
                1,
                vec![
                    span(1, "b", AttemptState::Lost, 1000, 3000),
                    span(2, "a", AttemptState::Succeeded, 5000, 7000),
                ],
            ),
            run(2, vec![span(1, "b", AttemptState::Succeeded, 3000, 9000)]),
        ]);
        let s = stats(&r, &|n| n.to_uppercase(), 10_000);
        assert_eq!(s.makespan_ms, 8000);
        assert_eq!(s.total_run_ms, 4000 + 2000 + 6000);
        assert!((s.speedup - 1.5).abs() < 1e-9);
        assert_eq!(
            s.per_node,
            vec![
                NodeStats {
                    node: "A".into(),
                    runs: 2,
                    mean_ms: 3000
                },
                NodeStats {
                    node: "B".into(),
                    runs: 1,
                    mean_ms: 6000
                },
            ]
        );
        let svg = gantt_svg(&r, &|n| n.to_uppercase(), 10_000);
        // One bar per attempt, the lost one among them.
        assert_eq!(svg.matches("<rect class=\"bar").count(), 4);
        assert!(svg.contains("rank 1, attempt 1, Lost"));
        assert!(svg.contains(">A</text>") && svg.contains(">B</text>"));
        // a ran ranks 0 and 1 one after the other (one lane); b's two
        // attempts did not overlap either: two rows in all.
        assert_eq!(svg.matches("stroke=\"#bbb\"").count(), 2);
        // Four attempts at once on one node: four lanes.
        let busy = request(
            (0..4)
                .map(|r| run(r, vec![span(1, "a", AttemptState::Succeeded, 0, 1000)]))
                .collect(),
        );
        let svg = gantt_svg(&busy, &|n| n.to_string(), 1000);
        let ys: std::collections::BTreeSet<&str> = svg
            .split("<rect class=\"bar")
            .skip(1)
            .map(|r| r.split("y=\"").nth(1).unwrap().split('"').next().unwrap())
            .collect();
        assert_eq!(ys.len(), 4, "{svg}");
        assert_eq!(stats_svg(&s).matches("<rect").count(), 2);
    }

    #[test]
    fn nothing_started_draws_nothing() {
        let r = request(vec![run(0, vec![])]);
        assert_eq!(gantt_svg(&r, &|n| n.to_string(), 0), "");
        assert_eq!(stats(&r, &|n| n.to_string(), 0).speedup, 0.0);
    }
}
