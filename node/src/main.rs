//! `pesc`: the PESC node daemon and its command-line client.

mod agent;
mod archive;
mod blobs;
mod cli;
mod config;
mod confined;
mod daemon;
mod data_dir;
mod doctor;
mod executor;
mod file_watch;
mod gpu;
mod grid_secret;
mod identity;
mod idle;
mod metrics;
mod net;
mod policy;
mod results_csv;
mod runner;
mod service;
mod store;
mod usage;
mod zip_check;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pesc",
    version,
    about = "PESC: run sequential programs many times on a peer-to-peer desktop grid"
)]
struct Cli {
    /// The node's data dir (default: $XDG_DATA_HOME/pesc or ~/.local/share/pesc).
    #[arg(long, global = true, env = "PESC_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a node: runs requests and serves the API.
    Node(daemon::NodeArgs),
    /// Run a program file or a directory N times on the grid.
    Submit(cli::SubmitArgs),
    /// Run a directory (default: this one) on the grid: every rank's output
    /// live, the results unpacked in ./pesc-results/ID at the end.
    Run(cli::run::RunArgs),
    /// Follow a request again (after Ctrl-C left it running), then unpack
    /// its results.
    Attach {
        request: String,
        #[command(flatten)]
        watch: cli::run::WatchArgs,
    },
    /// Show all requests, or one request rank by rank.
    Status {
        request: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print a run's output (all ranks, or one with --rank).
    Logs {
        request: String,
        #[arg(long)]
        rank: Option<u32>,
        /// Keep printing until the run ends (every rank's, prefixed by its
        /// rank, wherever it runs, without --rank).
        #[arg(short, long)]
        follow: bool,
        /// Standard error instead of standard output.
        #[arg(long)]
        stderr: bool,
    },
    /// Download a finished request's results as one zip.
    Results {
        request: String,
        /// Where to save the zip.
        #[arg(short = 'o', long = "output", default_value = ".")]
        dir: PathBuf,
    },
    /// Stop every run of a request.
    Cancel { request: String },
    /// Submit a finished request again, exactly: the same code, domain and
    /// shared files (the same blobs), parameters, sweep and seeds.
    Rerun {
        request: String,
        /// Wait for it and print how it went.
        #[arg(long)]
        wait: bool,
    },
    /// Compare two requests' receipts: whether they ran the same inputs,
    /// and which ranks' outputs differ (exit 1 if any do).
    Verify {
        first: String,
        second: String,
        #[arg(long)]
        json: bool,
    },
    /// List the grid's nodes: name, slots, free slots, load, last seen, address.
    Nodes {
        #[arg(long)]
        json: bool,
    },
    /// Shared files: inputs uploaded once that runs see read-only by name.
    #[command(subcommand)]
    Files(cli::files::FilesCmd),
    /// Domains: the environments (container images) runs execute in.
    #[command(subcommand)]
    Domains(cli::domains::DomainsCmd),
    /// A node's settings (admins): limits, idle times, slots; they apply
    /// at once, without a restart.
    #[command(subcommand)]
    Config(cli::config::ConfigCmd),
    /// The grid this data dir belongs to.
    #[command(subcommand)]
    Grid(GridCmd),
    /// Check this desktop: what isolation, GPUs, disk, ports, peers and
    /// clock it offers runs, in plain words (exit 1 if it cannot run work).
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Join a grid: keep the join token in this data dir so the node (the
    /// `pesc` service, or the next `pesc node`) starts in that grid.
    Join {
        /// What `pesc grid token` printed on a node of the grid; without it
        /// (or `-`) it is read from standard input, out of the shell's
        /// history and the process list.
        token: Option<String>,
    },
}

#[derive(Subcommand)]
enum GridCmd {
    /// Print the join token: `pesc node --join TOKEN` on another desktop adds it.
    Token,
}

/// File blocks move through 1 MiB buffers, one per block. By default glibc
/// gives such buffers back to the kernel as they are freed (mmap, heap
/// trimming), and the next one costs 256 page faults: 5 % of a transfer's
/// CPU. Allocations up to 4 MiB come from the heap instead, and up to 16 MiB
/// of free heap is kept (measured: 1 GiB node to node 2.1 s → 1.9 s, peak
/// RSS +10 MiB). Called before any thread starts.
fn keep_block_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no thread runs yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

fn main() {
    // The sandbox launcher: before anything else (no threads, no runtime).
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new(executor::sandbox::spec::LAUNCH_ARG)) {
        executor::sandbox::launch::main(&args.next().unwrap_or_default());
    }
    let cli = Cli::parse();
    let is_node = matches!(cli.cmd, Cmd::Node(_));
    if is_node {
        keep_block_buffers();
    }
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(is_node))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pesc: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = rt.block_on(async move {
        let data_dir = config::resolve_data_dir(cli.data_dir)?;
        match cli.cmd {
            Cmd::Node(args) => {
                daemon::run(data_dir, args).await?;
                return Ok(0);
            }
            Cmd::Grid(GridCmd::Token) => {
                println!("{}", grid_secret::token(&data_dir)?);
                return Ok(0);
            }
            Cmd::Doctor { json } => return doctor::run(&data_dir, json).await,
            Cmd::Join { token } => {
                grid_secret::join_later(&data_dir, token.as_deref())?;
                return Ok(0);
            }
            _ => {}
        }
        let c = cli::Client::from_data_dir(&data_dir)?;
        match cli.cmd {
            Cmd::Node(_) | Cmd::Grid(_) | Cmd::Doctor { .. } | Cmd::Join { .. } => {
                unreachable!("handled above")
            }
            Cmd::Nodes { json } => cli::nodes(&c, json).await,
            Cmd::Submit(a) => cli::submit(&c, a).await,
            Cmd::Run(a) => cli::run::run(&c, a).await,
            Cmd::Attach { request, watch } => cli::run::attach(&c, &request, watch).await,
            Cmd::Status { request, json } => cli::status(&c, request, json).await,
            Cmd::Logs {
                request,
                rank,
                follow,
                stderr,
            } => cli::logs(&c, &request, rank, follow, stderr).await,
            Cmd::Results { request, dir } => cli::results(&c, &request, &dir).await,
            Cmd::Cancel { request } => cli::cancel(&c, &request).await,
            Cmd::Rerun { request, wait } => cli::rerun(&c, &request, wait).await,
            Cmd::Verify {
                first,
                second,
                json,
            } => cli::verify(&c, &first, &second, json).await,
            Cmd::Files(f) => cli::files::run(&c, f).await,
            Cmd::Domains(d) => cli::domains::run(&c, d).await,
            Cmd::Config(d) => cli::config::run(&c, d).await,
        }
    });
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("pesc: {e:#}");
            std::process::exit(2);
        }
    }
}

/// What the log shows: `RUST_LOG` when set, else `info` for a node and
/// `warn` for the CLI. Automerge's own spans stay off unless `RUST_LOG`
/// names it: they are at INFO and record their arguments with `Debug`, one
/// of which is the whole change graph on every merge (a third of a busy
/// node's CPU, measured with perf on 4 nodes).
fn log_filter(is_node: bool) -> tracing_subscriber::EnvFilter {
    let asked = std::env::var("RUST_LOG").ok();
    let base = match &asked {
        Some(v) => v.clone(),
        None if is_node => "info".to_string(),
        None => "warn".to_string(),
    };
    let quiet = if base.contains("automerge") {
        base
    } else {
        format!("{base},automerge=warn")
    };
    tracing_subscriber::EnvFilter::try_new(&quiet)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,automerge=warn"))
}
