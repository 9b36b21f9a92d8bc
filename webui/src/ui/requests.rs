//! Dashboard, the new-request form and the request page.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use pesc_protocol::api::{GridNode, RequestInfo};

use super::charts::{gantt_svg, stats, stats_svg};
use super::{Flash, Page, failed, fmt_duration, layout, trusted, when};
use crate::accounts::visible_rooms;
use crate::auth::AppState;
use crate::error::ApiFailure;
use crate::routes::visible_request;

type St = State<AppState>;

fn now_ms() -> u64 {
    crate::auth::unix_now() * 1000
}

fn progress_bar(r: &RequestInfo) -> Markup {
    let c = &r.counts;
    let done = c.succeeded + c.failed + c.cancelled;
    let pct = (done * 100).checked_div(c.total).unwrap_or(0);
    html! {
        div.progress title={ (done) " of " (c.total) " runs ended" } {
            div.fill.ok style={ "width:" (c.succeeded * 100 / c.total.max(1)) "%" } {}
            div.fill.bad style={ "width:" ((c.failed + c.cancelled) * 100 / c.total.max(1)) "%" } {}
        }
        span.pct { (pct) "%" }
    }
}

async fn dashboard_body(st: &AppState, p: &Page) -> Result<Markup, ApiFailure> {
    let owner = p.who().request_owner_filter().map(str::to_string);
    let reqs = st.svc.list_requests(owner, 0, usize::MAX).await?;
    let nodes = st.svc.nodes().await?;
    let online: Vec<&GridNode> = nodes
        .iter()
        .filter(|n| n.this_node || n.last_seen_ms_ago.is_some_and(|ms| ms < 30_000))
        .collect();
    let slots: u32 = online.iter().map(|n| n.slots).sum();
    let busy: u32 = online
        .iter()
        .map(|n| n.slots - n.slots_free.unwrap_or(n.slots).min(n.slots))
        .sum();
    let mut recent = reqs.clone();
    recent.sort_by_key(|r| std::cmp::Reverse(r.version));
    Ok(html! {
        section.cards {
            div.card.stat { b { (online.len()) } " node(s) online of " (nodes.len()) }
            div.card.stat { b { (busy) " / " (slots) } " slots busy (grid load "
                ((busy * 100).checked_div(slots).unwrap_or(0)) "%)" }
            div.card.stat { b { (reqs.iter().filter(|r| !r.state.is_terminal()).count()) } " request(s) in progress" }
        }
        h2 { @if p.who().sees_all() { "Requests" } @else { "My requests" } }
        @if reqs.is_empty() {
            p { "No requests yet. " a href="/requests/new" { "Make one" } "." }
        } @else {
            table.requests {
                thead { tr { th { "Request" } th { "Process" } @if p.who().sees_all() { th { "Owner" } } th { "State" } th { "Progress" } th { "Created" } } }
                tbody {
                    @for r in &reqs {
                        tr data-request=(r.id) {
                            td { a href={ "/requests/" (r.id) } { (r.id.short()) } }
                            td { (r.process_name) " × " (r.repetitions) }
                            @if p.who().sees_all() { td { (r.owner) } }
                            td { (super::badge(r.state.as_str())) }
                            td.progress-cell { (progress_bar(r)) }
                            td { (when(r.created_ms)) }
                        }
                    }
                }
            }
        }
        h2 { "Recent events" }
        ul.events {
            @for r in recent.iter().take(8) {
                li { a href={ "/requests/" (r.id) } { (r.process_name) " (" (r.id.short()) ")" } " is " (r.state.as_str())
                    ": " (r.counts.succeeded) " done, " (r.counts.running) " running, " (r.counts.queued) " queued, " (r.counts.failed) " failed" }
            }
        }
    })
}

pub(crate) async fn dashboard(State(st): St, p: Page, flash: Query<Flash>) -> Response {
    match dashboard_body(&st, &p).await {
        Ok(body) => layout(
            &p,
            "Dashboard",
            &flash,
            html! { div #dashboard data-live="/fragments/dashboard" { (body) } },
        )
        .into_response(),
        Err(e) => failed(e),
    }
}

pub(crate) async fn dashboard_fragment(State(st): St, p: Page) -> Response {
    match dashboard_body(&st, &p).await {
        Ok(body) => body.into_response(),
        Err(e) => failed(e),
    }
}

pub(crate) async fn new_page(State(st): St, p: Page, flash: Query<Flash>) -> Response {
    let (processes, domains, files, access) = match tokio::try_join!(
        crate::routes::visible_processes(&st, p.who()),
        st.svc.list_domains(),
        crate::routes::visible_files(&st, p.who()),
        st.svc.access()
    ) {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let rooms = visible_rooms(&access, p.who());
    let body = html! {
        form #new-request.card novalidate {
            fieldset {
                legend { "Program" }
                label { "Process "
                    select name="process" {
                        option value="" { "— upload a new one below —" }
                        @for pr in &processes { option value=(pr.id) { (pr.name) " (" (pr.language.as_str()) ", " (pr.id.short()) ")" } }
                    }
                }
                label { "Upload a file or a zip " input type="file" name="upload"; }
                div.row {
                    label { "Language "
                        select name="language" {
                            option value="" { "guess from the file" }
                            @for l in pesc_protocol::model::Language::ALL { option value=(l.as_str()) { (l.as_str()) } }
                        }
                    }
                    label { "Entry file in the zip " input name="entry" placeholder="main.py"; }
                    label { "Or a command " input name="command" placeholder="python3 -m mypkg"; }
                }
                label { "Domain (execution environment) "
                    select name="domain" {
                        option value="" { "the node's default" }
                        @for d in &domains { option value=(d.name) { (d.name) } }
                    }
                }
            }
            fieldset {
                legend { "Runs" }
                div.row {
                    label { "Repetitions " input type="number" name="repetitions" min="1" max="100000" value="10" required; }
                    label { "Retries per run " input type="number" name="retries" min="0" max="100" value="0"; }
                }
                label { "Parameters (one per line; every run gets them after " code { "--parameters" } ") "
                    textarea name="parameters" rows="3" {} }
                label { "Sweep (one parameter per line: " code { "alpha=0.1,0.5,0.9" } " or " code { "n=100..1000:100" } "; every combination runs Repetitions times, its values after the parameters and in " code { "PESC_PARAM_NAME" } ") "
                    textarea name="sweep" rows="3" placeholder="alpha=0.1,0.5,0.9" {} }
                p #sweep-count.hint aria-live="polite" {}
                div.row {
                    label { "Memory per run (MiB) " input type="number" name="memory_mb" min="16"; }
                    label { "CPUs per run " input type="number" name="cpus" min="0.1" step="0.1"; }
                }
                div.row {
                    label { "GPUs per run " input type="number" name="gpus" min="0" max="16" value="0"; }
                    label { "Minimum GPU capability " input type="number" name="gpu_capability" min="1" max="20" step="0.1" placeholder="e.g. 7.0"; }
                }
                div.row {
                    label.check { input type="checkbox" name="parallel"; " Parallel (ranks talk to each other)" }
                    label.check { input type="checkbox" name="same_node"; " All runs on the same node" }
                }
            }
            fieldset {
                legend { "Where and with what" }
                p { "Rooms (none checked: General)" }
                @for r in &rooms {
                    label.check { input type="checkbox" name="rooms" value=(r.room.name); " " (r.room.name) }
                }
                p { "Shared files (read-only, fetched once per node)" }
                @for f in &files {
                    label.check { input type="checkbox" name="shared_files" value=(f.file.name); " " (f.file.name) " (" (super::fmt_bytes(f.file.size)) ")" }
                }
                label { "Upload another shared file " input type="file" name="shared_upload"; }
            }
            div #upload-progress hidden { progress max="100" value="0" {} span {} }
            p #form-error.flash.error role="alert" hidden {}
            button type="submit" { "Submit" }
        }
    };
    layout(&p, "New request", &flash, body).into_response()
}

/// A run's node, by name where known.
fn namer(nodes: &[GridNode]) -> impl Fn(&str) -> String + '_ {
    let names = super::node_names(nodes);
    move |id: &str| {
        names
            .get(id)
            .map(|s| s.to_string())
            .unwrap_or_else(|| id.chars().take(8).collect())
    }
}

async fn request_body(st: &AppState, p: &Page, r: &RequestInfo) -> Result<Markup, ApiFailure> {
    let nodes = st.svc.nodes().await?;
    let name = namer(&nodes);
    let now = now_ms();
    let s = stats(r, &name, now);
    let gantt = gantt_svg(r, &name, now);
    let can_cancel = p.who().may_cancel_request(&r.owner);
    Ok(html! {
        p.actions {
            @if r.state.is_terminal() || r.counts.succeeded > 0 {
                a.button href={ "/api/v1/requests/" (r.id) "/results" } download { "Download all results (zip)" }
                " " a.button href={ "/requests/" (r.id) "/output.txt" } download { "Download output.txt" }
            }
            @if r.state.is_terminal() {
                " " a.button href={ "/api/v1/requests/" (r.id) "/receipt" } target="_blank" { "Receipt" }
                @if p.who().user == r.owner {
                    " " button data-rerun=(r.id) { "Rerun exactly" }
                }
            }
            @if can_cancel && !r.state.is_terminal() {
                " " button.danger data-cancel=(r.id) { "Cancel request" }
            }
        }
        @if !r.sweep.is_empty() && r.state.is_terminal() {
            section.sweep-plot {
                h2 { "Sweep: " (r.combinations) " combinations of " (r.sweep.join(", ")) }
                img src={ "/requests/" (r.id) "/plot.svg" } alt="mean and spread of the first numeric column of results.csv by the first parameter";
                form.inline method="get" action={ "/requests/" (r.id) "/plot.svg" } target="_blank" {
                    label { "Plot column " input name="column" placeholder="a column of results.csv"; }
                    label { " by " select name="param" { @for n in &r.sweep { option value=(n) { (n) } } } }
                    button type="submit" { "Plot" }
                }
            }
        }
        div.summary {
            (super::badge(r.state.as_str())) " "
            (progress_bar(r))
            span { " " (r.counts.succeeded) " done · " (r.counts.running) " running · "
                (r.counts.queued + r.counts.claimed) " waiting · " (r.counts.failed) " failed · " (r.counts.cancelled) " cancelled" }
        }
        @if let Some(g) = &r.gang { p.gang { b { "Gang: " } (g) } }
        @if let Some(w) = &r.waiting { p.waiting { b { "Why is it waiting? " } (w) } }
        table.runs {
            thead { tr { th { "Rank" } th { "State" } th { "Node" } th { "Attempt" } th { "Duration" } th { "Peak memory" } th { "Exit" } th { "Progress" } th { "Last message" } th { "Logs" } } }
            tbody {
                @for run in r.runs.iter().flatten() {
                    tr data-rank=(run.rank) data-state=(run.state.as_str()) {
                        td { (run.rank) }
                        td { (super::badge(run.state.as_str())) }
                        td { @if let Some(n) = &run.node { (name(n.as_str())) } }
                        td { @if let Some(a) = run.attempt { (a + 1) " of " (run.attempts) } }
                        td { @if let Some(d) = run.duration_ms { (fmt_duration(d)) } }
                        td { @if let Some(m) = run.peak_memory_mb { (m) " MiB" } }
                        td { @if let Some(c) = run.exit_code { (c) } }
                        td { @if let Some(pc) = run.progress { progress max="100" value=(pc) {} " " (pc) "%" } }
                        td.msg { @if let Some(m) = &run.message { (m) } @else if let Some(m) = &run.reason { em { (m) } } }
                        td { a href={ "/api/v1/requests/" (r.id) "/runs/" (run.rank) "/logs?follow=true" } target="_blank" { "stdout" }
                             " " a href={ "/api/v1/requests/" (r.id) "/runs/" (run.rank) "/logs?stream=stderr&follow=true" } target="_blank" { "stderr" } }
                    }
                }
            }
        }
        h2 { "Run map" }
        @if gantt.is_empty() { p { "No run has started yet." } } @else {
            p.legend { span.k.ok {} "succeeded " span.k.run {} "running " span.k.moved {} "lost or handed back (run again elsewhere) " span.k.bad {} "failed" }
            (trusted(gantt))
        }
        h2 { "Statistics" }
        table.stats {
            thead { tr { th { "Node" } th { "Runs" } th { "Mean duration" } } }
            tbody {
                @for n in &s.per_node { tr { td { (n.node) } td { (n.runs) } td { (fmt_duration(n.mean_ms)) } } }
            }
            tfoot {
                tr { th { "Makespan" } td colspan="2" { (fmt_duration(s.makespan_ms)) } }
                tr { th { "Σ run time" } td colspan="2" { (fmt_duration(s.total_run_ms)) } }
                tr { th { "Speedup" } td colspan="2" { (format!("{:.2}", s.speedup)) } }
            }
        }
        (trusted(stats_svg(&s)))
    })
}

pub(crate) async fn request_page(
    State(st): St,
    p: Page,
    Path(id): Path<String>,
    flash: Query<Flash>,
) -> Response {
    let r = match visible_request(&st, p.who(), &id, true).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let body = match request_body(&st, &p, &r).await {
        Ok(b) => b,
        Err(e) => return failed(e),
    };
    let content = html! {
        p.meta { "Process " b { (r.process_name) } " (" (r.language.as_str()) "), " (r.repetitions) " repetition(s)"
            @if !r.parameters.is_empty() { ", parameters " code { (r.parameters.join(" ")) } }
            @if r.parallel { ", parallel (world size " (r.repetitions) @if r.same_node { ", all on one node" } ")" }
            ", by " (r.owner) ", " (when(r.created_ms)) }
        div #request data-live={ "/requests/" (r.id) "/fragment" } data-request=(r.id) { (body) }
    };
    layout(&p, &format!("Request {}", r.id.short()), &flash, content).into_response()
}

pub(crate) async fn request_fragment(State(st): St, p: Page, Path(id): Path<String>) -> Response {
    let r = match visible_request(&st, p.who(), &id, true).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    match request_body(&st, &p, &r).await {
        Ok(b) => b.into_response(),
        Err(e) => failed(e),
    }
}

/// PESC's `output.txt`: every rank's `output/output.txt`, in rank order,
/// taken from the results archive.
pub(crate) async fn output_txt(State(st): St, p: Page, Path(id): Path<String>) -> Response {
    let r = match visible_request(&st, p.who(), &id, false).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let file = match st.svc.results(r.id.as_str()).await {
        Ok(f) => f.file.into_std().await,
        Err(e) => return failed(e),
    };
    let text = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        use std::io::Read;
        let mut z = zip::ZipArchive::new(file).map_err(|e| e.to_string())?;
        let mut entry = z.by_name("output.txt").map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        entry.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
    .await;
    match text {
        Ok(Ok(bytes)) => (
            StatusCode::OK,
            [
                (
                    header::CONTENT_TYPE,
                    "text/plain; charset=utf-8".to_string(),
                ),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"output-{}.txt\"", r.id.short()),
                ),
            ],
            Body::from(bytes),
        )
            .into_response(),
        Ok(Err(e)) => failed(ApiFailure::internal(format!("reading the results: {e}"))),
        Err(e) => failed(ApiFailure::internal(e.to_string())),
    }
}

/// The largest `results.csv` the request page plots.
const MAX_PLOTTED_CSV: u64 = 64 << 20;

#[derive(serde::Deserialize)]
pub(crate) struct PlotQuery {
    param: Option<String>,
    column: Option<String>,
}

/// The sweep's summary plot: one numeric column of `results.csv` against
/// one parameter (defaults: the first parameter, the first numeric column
/// of the program's).
pub(crate) async fn sweep_plot(
    State(st): St,
    p: Page,
    Path(id): Path<String>,
    Query(q): Query<PlotQuery>,
) -> Response {
    let r = match visible_request(&st, p.who(), &id, false).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let Some(param) = q.param.or_else(|| r.sweep.first().cloned()) else {
        return failed(ApiFailure::bad_request("this request is not a sweep"));
    };
    let file = match st.svc.results(r.id.as_str()).await {
        Ok(f) => f.file.into_std().await,
        Err(e) => return failed(e),
    };
    let table = tokio::task::spawn_blocking(move || -> Result<String, String> {
        use std::io::Read;
        let mut z = zip::ZipArchive::new(file).map_err(|e| e.to_string())?;
        let mut entry = z
            .by_name("results.csv")
            .map_err(|_| "the runs left no CSV to plot (results.csv)".to_string())?;
        // The runs decide its size: a table too large to hold is not drawn.
        if entry.size() > MAX_PLOTTED_CSV {
            return Err(format!(
                "results.csv is {} bytes, over {MAX_PLOTTED_CSV}: download the results to plot it",
                entry.size()
            ));
        }
        let mut out = String::new();
        entry.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
    .await;
    let text = match table {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return failed(ApiFailure::not_found(e)),
        Err(e) => return failed(ApiFailure::internal(e.to_string())),
    };
    let mut records = pesc_protocol::sweep::split_csv(&text).into_iter();
    let header = records.next().unwrap_or_default();
    let rows: Vec<Vec<String>> = records.collect();
    // The program's columns start after `rank` and `repetition`.
    let first_own = header
        .iter()
        .position(|h| h == "repetition")
        .map_or(0, |i| i + 1);
    let column = q.column.or_else(|| {
        (first_own..header.len())
            .find(|&c| {
                rows.iter()
                    .filter_map(|r| r.get(c))
                    .any(|v| v.trim().parse::<f64>().is_ok())
            })
            .map(|c| header[c].clone())
    });
    let Some(column) = column else {
        return failed(ApiFailure::not_found(
            "results.csv has no numeric column to plot",
        ));
    };
    match super::charts::sweep_groups(&header, &rows, &param, &column) {
        Ok((groups, skipped)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "image/svg+xml".to_string())],
            super::charts::sweep_svg(&groups, &param, &column, skipped),
        )
            .into_response(),
        Err(e) => failed(ApiFailure::bad_request(e)),
    }
}
