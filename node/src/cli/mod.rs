//! The CLI commands: clients of the local node's `/api/v1`.

mod client;
pub mod config;
pub mod domains;
pub mod files;
mod pack;
pub mod run;
mod stream;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use pesc_protocol::api::{NewRequest, RequestInfo};
use pesc_protocol::model::{Process, RequestState, RunState};
use reqwest::Method;

pub use client::Client;

/// `--header`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum HeaderChoice {
    Auto,
    Never,
}

/// `pesc submit` flags.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub req: RequestArgs,
    /// Wait for every run to finish, with a progress bar; exit 1 if any failed.
    #[arg(long)]
    pub wait: bool,
    /// Print JSON (the request, with "id" and "state").
    #[arg(long)]
    pub json: bool,
}

/// What to run and how: the flags `pesc submit` and `pesc run` share.
#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// A program file, or a directory (its files sent as one zip; see --include).
    pub path: PathBuf,
    /// How many times to run it (ranks 0..N-1); with a sweep, how many
    /// times each combination runs.
    #[arg(short = 'n', long, default_value_t = 1)]
    pub repetitions: u32,
    /// A swept parameter: NAME=V1,V2,… or NAME=FROM..TO:STEP; repeat for
    /// more (every combination runs -n times; values go after
    /// --parameters and into PESC_PARAM_NAME).
    #[arg(
        long = "sweep",
        value_name = "NAME=VALUES",
        conflicts_with = "sweep_file"
    )]
    pub sweep: Vec<String>,
    /// The combinations as a CSV file: a header of parameter names, then
    /// one row of values per combination.
    #[arg(long, value_name = "CSV")]
    pub sweep_file: Option<PathBuf>,
    /// No backup copies of this request's last stragglers (by default an
    /// idle node may start a second copy of a run far slower than its
    /// siblings; the first result wins).
    #[arg(long)]
    pub no_backups: bool,
    /// Parameters passed to every run after `--parameters`.
    #[arg(long, num_args = 1.., allow_negative_numbers = true)]
    pub parameters: Vec<String>,
    /// python, r, java, c or shell (default: from the file's extension).
    #[arg(long)]
    pub language: Option<String>,
    /// The file to run inside a directory, or a whole command line (e.g. "true").
    #[arg(long)]
    pub entry: Option<String>,
    /// Extra attempts when the program exits non-zero (for a parallel
    /// request: extra rounds of the whole gang).
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Extra attempts, beyond --retries, for a rank that has a checkpoint:
    /// it goes on from where it stopped.
    #[arg(long, default_value_t = 1)]
    pub checkpoint_retries: u32,
    /// Every rank runs at the same time and finds rank 0 (MASTER_ADDR,
    /// MASTER_PORT): torch.distributed and other programs whose ranks talk.
    #[arg(long)]
    pub parallel: bool,
    /// With --parallel: every rank on one node (it needs that many slots).
    #[arg(long, requires = "parallel")]
    pub same_node: bool,
    /// auto: a Python or R program that reads no arguments gets PESC's
    /// header (`args.rank`, `args$rank`, ...); never: it runs as written.
    #[arg(long, value_enum, default_value = "auto")]
    pub header: HeaderChoice,
    /// Name shown for the process.
    #[arg(long)]
    pub name: Option<String>,
    /// A shared file every run needs (see `pesc files add`); repeat for more.
    #[arg(long = "shared-file", value_name = "NAME")]
    pub shared_files: Vec<String>,
    /// A room whose nodes may run it (default: General); repeat for more.
    #[arg(long = "room", value_name = "NAME")]
    pub rooms: Vec<String>,
    /// The domain (environment) the runs execute in (see `pesc domains`).
    #[arg(long, value_name = "NAME")]
    pub domain: Option<String>,
    /// GPUs each run needs (whole devices, given to one run at a time).
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// Minimum CUDA compute capability of those GPUs, e.g. 8.0.
    #[arg(long, value_name = "X.Y")]
    pub gpu_capability: Option<f32>,
    /// Memory per run in MiB (containers; default: the node's).
    #[arg(long, value_name = "MIB")]
    pub memory_mb: Option<u64>,
    /// CPUs per run (containers; default: the node's).
    #[arg(long, value_name = "N")]
    pub cpus: Option<f64>,
    /// A file of the directory to send although `.gitignore`, `.pescignore`
    /// or the secrets rule (`.env`, keys, `.git/`) leaves it out; repeat for more.
    #[arg(long, value_name = "PATH")]
    pub include: Vec<PathBuf>,
}

pub async fn submit(c: &Client, a: SubmitArgs) -> Result<i32> {
    let info = send_request(c, a.req).await?;
    if !a.wait {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&info)?);
        } else {
            println!("{}", info.id);
            eprintln!(
                "submitted request {} ({} runs); follow it with `pesc status {}`",
                info.id, info.repetitions, info.id
            );
        }
        return Ok(0);
    }
    let done = wait(c, info.id.as_str(), !a.json).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        print_request(&done, true);
    }
    Ok(exit_code(&done))
}

/// Uploads the program (a file, or a directory's files) and makes the
/// request.
/// The sweep the flags ask for, checked before anything is sent.
fn sweep_of(a: &RequestArgs) -> Result<Option<pesc_protocol::sweep::Sweep>> {
    use pesc_protocol::sweep::Sweep;
    if let Some(f) = &a.sweep_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        return Ok(Some(
            Sweep::from_csv(&text).with_context(|| format!("the sweep file {}", f.display()))?,
        ));
    }
    Ok(pesc_protocol::api::SweepAsk::sweep(&a.sweep)?)
}

pub async fn send_request(c: &Client, a: RequestArgs) -> Result<RequestInfo> {
    let sweep = sweep_of(&a)?;
    let meta =
        std::fs::metadata(&a.path).with_context(|| format!("cannot read {}", a.path.display()))?;
    let (upload, file_name, kind, files) = if meta.is_dir() {
        let (tmp, files) = zip_dir(&a.path, &a.include)?;
        let base = a
            .path
            .canonicalize()?
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or("process".into());
        (tmp, format!("{base}.zip"), "zip", files)
    } else {
        let name = a
            .path
            .file_name()
            .context("the path names no file")?
            .to_string_lossy()
            .to_string();
        (a.path.clone(), name.clone(), "file", vec![name])
    };
    // --entry names a file of the upload, or else is a command line.
    let (entry, command) = match &a.entry {
        Some(e) if files.iter().any(|f| f == e.trim_start_matches("./")) => {
            (Some(e.trim_start_matches("./").to_string()), None)
        }
        Some(e) => (None, Some(e.clone())),
        None => (None, None),
    };
    let mut query: Vec<(&str, String)> = vec![("file_name", file_name), ("kind", kind.to_string())];
    for (k, v) in [
        ("language", a.language.clone()),
        ("entry", entry),
        ("command", command),
        ("name", a.name.clone()),
    ] {
        if let Some(v) = v {
            query.push((k, v));
        }
    }
    let file = tokio::fs::File::open(&upload)
        .await
        .with_context(|| format!("opening {}", upload.display()))?;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    let sent = c
        .json::<Process>(
            c.request(Method::POST, "/processes")
                .query(&query)
                .body(body),
        )
        .await;
    if meta.is_dir() {
        let _ = std::fs::remove_file(&upload);
    }
    let process = sent?;
    let req = NewRequest {
        process: process.id,
        repetitions: a.repetitions,
        parameters: a.parameters,
        rooms: a.rooms,
        shared_files: a.shared_files,
        domain: a.domain,
        limits: pesc_protocol::model::RunLimits {
            memory_mb: a.memory_mb,
            cpus: a.cpus,
        },
        gpu: pesc_protocol::model::GpuNeeds {
            count: a.gpus,
            min_capability: a.gpu_capability,
        },
        parallel: a.parallel,
        same_node: a.same_node,
        retries: a.retries,
        checkpoint_retries: Some(a.checkpoint_retries),
        header: match a.header {
            HeaderChoice::Auto => pesc_protocol::header::HeaderMode::Auto,
            HeaderChoice::Never => pesc_protocol::header::HeaderMode::Never,
        },
        sweep,
        seed: None,
        backups: Some(!a.no_backups),
        sweep_params: Vec::new(),
    };
    c.json(c.request(Method::POST, "/requests").json(&req))
        .await
}

fn exit_code(r: &RequestInfo) -> i32 {
    if r.state == RequestState::Succeeded {
        0
    } else {
        1
    }
}

/// Zips the files of a directory that go to the grid (`pack`: ignore
/// files honoured, secrets and version control left out, no links) into a
/// temp file.
fn zip_dir(dir: &Path, include: &[PathBuf]) -> Result<(PathBuf, Vec<String>)> {
    use zip::write::SimpleFileOptions;
    let files = pack::files_to_send(dir, include)?;
    if files.is_empty() {
        bail!("{} holds no files to send", dir.display());
    }
    let tmp = std::env::temp_dir().join(format!(
        "pesc-upload-{}.zip",
        hex::encode(rand::random::<[u8; 8]>())
    ));
    let mut z = zip::ZipWriter::new(std::io::BufWriter::new(std::fs::File::create(&tmp)?));
    let opts = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    for rel in &files {
        let path = dir.join(rel);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::symlink_metadata(&path)?.permissions().mode() & 0o777;
        z.start_file(rel.as_str(), opts.unix_permissions(mode))?;
        std::io::copy(&mut std::fs::File::open(&path)?, &mut z)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    z.finish()?.flush()?;
    Ok((tmp, files))
}

/// Long-polls the request until it is finished, drawing a progress bar.
async fn wait(c: &Client, id: &str, bar: bool) -> Result<RequestInfo> {
    let mut info: RequestInfo = c
        .json(
            c.request(Method::GET, &format!("/requests/{id}"))
                .query(&[("runs", "false")]),
        )
        .await?;
    let pb = indicatif::ProgressBar::new(info.counts.total as u64);
    if bar {
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} runs done {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    while !info.state.is_terminal() {
        pb.set_position(info.counts.finished() as u64);
        pb.set_message(format!(
            "({} running, {} failed)",
            info.counts.running + info.counts.claimed,
            info.counts.failed
        ));
        info = c
            .json(c.request(Method::GET, &format!("/requests/{id}")).query(&[
                ("runs", "false".to_string()),
                ("since_version", info.version.to_string()),
                ("timeout_ms", "30000".to_string()),
            ]))
            .await?;
    }
    pb.set_position(info.counts.finished() as u64);
    pb.finish_and_clear();
    c.json(c.request(Method::GET, &format!("/requests/{id}")))
        .await
}

pub async fn status(c: &Client, id: Option<String>, json: bool) -> Result<i32> {
    match id {
        None => {
            let list: Vec<RequestInfo> = c.json(c.request(Method::GET, "/requests")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no requests yet; submit one with `pesc submit PATH -n N`");
            } else {
                println!(
                    "{:<16}  {:<9}  {:>11}  {:>6}  PROCESS",
                    "ID", "STATE", "DONE/TOTAL", "FAILED"
                );
                for r in &list {
                    println!(
                        "{:<16}  {:<9}  {:>11}  {:>6}  {}",
                        r.id,
                        r.state.as_str(),
                        format!("{}/{}", r.counts.finished(), r.counts.total),
                        r.counts.failed,
                        r.process_name
                    );
                }
            }
        }
        Some(id) => {
            let r: RequestInfo = c
                .json(c.request(Method::GET, &format!("/requests/{id}")))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_request(&r, true);
            }
        }
    }
    Ok(0)
}

fn print_request(r: &RequestInfo, runs: bool) {
    println!(
        "request {}  {}  {} ({})  {}/{} done, {} failed",
        r.id,
        r.state.as_str(),
        r.process_name,
        r.language,
        r.counts.finished(),
        r.counts.total,
        r.counts.failed
    );
    if let Some(w) = &r.waiting {
        println!("waiting: {w}");
    }
    if let (true, Some(list)) = (runs, &r.runs) {
        println!(
            "{:>6}  {:<9}  {:>7}  {:>4}  {:>10}  {:>4}  NODE / REASON / MESSAGE",
            "RANK", "STATE", "ATTEMPT", "EXIT", "DURATION", "PROG"
        );
        for run in list {
            let node = run
                .node
                .as_ref()
                .map(|n| short(n.as_str()))
                .unwrap_or_default();
            let reason = match run.state {
                RunState::Failed | RunState::Cancelled => run.reason.clone().unwrap_or_default(),
                _ => run.message.clone().unwrap_or_default(),
            };
            println!(
                "{:>6}  {:<9}  {:>7}  {:>4}  {:>10}  {:>4}  {} {}",
                run.rank,
                run.state.as_str(),
                run.attempt.map(|a| a.to_string()).unwrap_or_default(),
                run.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                run.duration_ms
                    .map(|d| format!("{:.2}s", d as f64 / 1000.0))
                    .unwrap_or_default(),
                run.progress.map(|p| format!("{p}%")).unwrap_or_default(),
                node,
                reason
            );
        }
    }
}

fn short(node: &str) -> String {
    node.chars()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

pub async fn logs(
    c: &Client,
    id: &str,
    rank: Option<u32>,
    follow: bool,
    stderr: bool,
) -> Result<i32> {
    if follow && rank.is_none() {
        return run::follow_logs(c, id).await;
    }
    let stream = if stderr { "stderr" } else { "stdout" };
    let ranks: Vec<u32> = match rank {
        Some(r) => vec![r],
        None => {
            let r: RequestInfo = c
                .json(
                    c.request(Method::GET, &format!("/requests/{id}"))
                        .query(&[("runs", "false")]),
                )
                .await?;
            (0..r.repetitions).collect()
        }
    };
    let many = ranks.len() > 1;
    let mut out = std::io::stdout();
    for rank in ranks {
        if many {
            writeln!(out, "== rank {rank} ==")?;
        }
        let resp = c
            .send(
                c.request(Method::GET, &format!("/requests/{id}/runs/{rank}/logs"))
                    .query(&[
                        ("stream", stream.to_string()),
                        ("follow", follow.to_string()),
                    ]),
            )
            .await?;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk.context("reading the log")?)?;
            out.flush()?;
        }
    }
    Ok(0)
}

pub async fn results(c: &Client, id: &str, dir: &Path) -> Result<i32> {
    let resp = c
        .send(c.request(Method::GET, &format!("/requests/{id}/results")))
        .await?;
    let name = resp
        .headers()
        .get(reqwest::header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("filename=\"").nth(1))
        .map(|v| v.trim_end_matches('"').to_string())
        .filter(|n| !n.contains('/') && !n.is_empty())
        .unwrap_or_else(|| format!("pesc-results-{id}.zip"));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(&name);
    let part = dir.join(format!("{name}.part"));
    let mut f = tokio::fs::File::create(&part)
        .await
        .with_context(|| format!("creating {}", part.display()))?;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        use tokio::io::AsyncWriteExt;
        f.write_all(&chunk.context("downloading the results")?)
            .await?;
    }
    f.sync_all().await?;
    std::fs::rename(&part, &path)?;
    println!("{}", path.display());
    Ok(0)
}

/// `pesc nodes`: the grid's nodes.
pub async fn nodes(c: &Client, json: bool) -> Result<i32> {
    let list: Vec<pesc_protocol::api::GridNode> = c.json(c.request(Method::GET, "/nodes")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    println!(
        "{:<20} {:<10} {:>5} {:>5} {:>13} {:>5} {:>9}  ADDRESS",
        "NAME", "SLOTS", "FREE", "LOAD", "MEM FREE/ALL", "GPUS", "SEEN"
    );
    for n in list {
        let name = if n.this_node {
            format!("{} (this)", n.name)
        } else {
            n.name.clone()
        };
        // A node whose heartbeats go to other nodes is up all the same.
        let seen = match (n.this_node, n.last_seen_ms_ago, n.up) {
            (true, _, _) => "now".to_string(),
            (false, Some(ms), _) => format!("{:.0}s ago", ms as f64 / 1000.0),
            (false, None, true) => "up".to_string(),
            (false, None, false) => "down".to_string(),
        };
        let gib = |mb: u64| format!("{:.1}", mb as f64 / 1024.0);
        let mem = match (n.mem_free_mb, n.mem_total_mb) {
            (Some(f), Some(t)) => format!("{}/{} GiB", gib(f), gib(t)),
            _ => "-".to_string(),
        };
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:<10} {:>5} {:>5} {:>13} {:>5} {:>9}  {}",
            name,
            format!("{} {}", n.slots, n.executor),
            opt(n.slots_free.map(|f| f.to_string())),
            opt(n.load.map(|l| format!("{l:.2}"))),
            mem,
            n.gpus.len(),
            seen,
            n.addrs.first().cloned().unwrap_or_else(|| "-".into())
        );
        let below = if n.meets_minimum {
            ""
        } else {
            " — below the grid's minimum: takes no runs"
        };
        println!("{:<20} isolation: {}{below}", "", n.isolation);
        if let Some(why) = &n.pause {
            println!("{:<20} takes no runs: {why}", "");
        }
        if n.suspended > 0 {
            println!("{:<20} {} run(s) suspended for its owner", "", n.suspended);
        }
        if let Some(room) = n.mem_room_mb {
            println!(
                "{:<20} room for runs: {} GiB under its owner's memory limit",
                "",
                gib(room)
            );
        }
    }
    Ok(0)
}

pub async fn rerun(c: &Client, id: &str, wait_for: bool) -> Result<i32> {
    let r: RequestInfo = c
        .json(c.request(Method::POST, &format!("/requests/{id}/rerun")))
        .await?;
    if !wait_for {
        println!("{}", r.id);
        eprintln!(
            "request {} runs {id} again ({} runs); follow it with `pesc status {}`",
            r.id, r.repetitions, r.id
        );
        return Ok(0);
    }
    let done = wait(c, r.id.as_str(), true).await?;
    print_request(&done, true);
    Ok(exit_code(&done))
}

pub async fn verify(c: &Client, a: &str, b: &str, json: bool) -> Result<i32> {
    use pesc_protocol::receipt::{Receipt, compare};
    let ra: Receipt = c
        .json(c.request(Method::GET, &format!("/requests/{a}/receipt")))
        .await?;
    let rb: Receipt = c
        .json(c.request(Method::GET, &format!("/requests/{b}/receipt")))
        .await?;
    let cmp = compare(&ra, &rb);
    if json {
        println!("{}", serde_json::to_string_pretty(&cmp)?);
    } else {
        if cmp.same_inputs.is_empty() {
            println!("same inputs: code, domain, shared files, parameters, sweep and seeds");
        } else {
            println!("different inputs: {}", cmp.same_inputs.join(", "));
        }
        if cmp.outputs_differ.is_empty() {
            println!(
                "identical: every one of the {} ranks' outputs is byte for byte the same",
                cmp.ranks
            );
        } else {
            let list: Vec<String> = cmp.outputs_differ.iter().map(u32::to_string).collect();
            println!(
                "{} of {} ranks' outputs differ: rank(s) {}",
                cmp.outputs_differ.len(),
                cmp.ranks,
                list.join(", ")
            );
        }
        if !cmp.stdout_differs.is_empty() {
            println!(
                "standard output differs in {} rank(s)",
                cmp.stdout_differs.len()
            );
        }
    }
    Ok(if cmp.identical() { 0 } else { 1 })
}

pub async fn cancel(c: &Client, id: &str) -> Result<i32> {
    let r: RequestInfo = c
        .json(c.request(Method::POST, &format!("/requests/{id}/cancel")))
        .await?;
    println!("request {} {}", r.id, r.state.as_str());
    Ok(0)
}
