//! `pesc files`: shared input files.

use std::path::PathBuf;

use anyhow::{Context, Result};
use pesc_protocol::api::SharedFileInfo;
use reqwest::Method;

use super::Client;

#[derive(Debug, clap::Subcommand)]
pub enum FilesCmd {
    /// Upload a file once for every run that names it (`pesc submit --shared-file NAME`).
    Add {
        path: PathBuf,
        /// The name runs see it under in their app dir (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        /// Share it with this room (repeat for more): its users may use it
        /// in their requests too. Adding it again changes the sharing.
        #[arg(long = "share-with", value_name = "ROOM")]
        share_with: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the grid's shared files and how many nodes keep each.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Make this node keep a copy now (before runs need it).
    Fetch {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(c: &Client, cmd: FilesCmd) -> Result<i32> {
    match cmd {
        FilesCmd::Add {
            path,
            name,
            share_with,
            json,
        } => {
            let name = match name {
                Some(n) => n,
                None => path
                    .file_name()
                    .context("the path names no file")?
                    .to_string_lossy()
                    .to_string(),
            };
            let file = tokio::fs::File::open(&path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                file,
                1 << 20,
            ));
            let f: SharedFileInfo = c
                .json(
                    c.request(Method::POST, "/files")
                        .query(&[("name", name), ("rooms", share_with.join(","))])
                        .body(body),
                )
                .await?;
            show_one(&f, json)?;
        }
        FilesCmd::List { json } => {
            let list: Vec<SharedFileInfo> = c.json(c.request(Method::GET, "/files")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(0);
            }
            println!("{:<32} {:>12} {:>7}  HASH", "NAME", "SIZE", "COPIES");
            for f in list {
                println!(
                    "{:<32} {:>12} {:>7}  {}",
                    f.file.name,
                    human_size(f.file.size),
                    f.holders.len(),
                    &f.file.hash.to_hex()[..16]
                );
            }
        }
        FilesCmd::Fetch { name, json } => {
            let f: SharedFileInfo = c
                .json(c.request(Method::POST, &format!("/files/{name}/fetch")))
                .await?;
            show_one(&f, json)?;
        }
    }
    Ok(0)
}

fn show_one(f: &SharedFileInfo, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(f)?);
    } else {
        println!(
            "{} ({}, {}) kept by {} node(s)",
            f.file.name,
            human_size(f.file.size),
            f.file.hash,
            f.holders.len()
        );
    }
    Ok(())
}

fn human_size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
