//! `pesc config`: a node's settings, changed from anywhere in the grid
//! (admins): they apply on the node without a restart, its runs go on.

use anyhow::Result;
use pesc_protocol::api::{NodeSetting, NodeSettingValue};
use reqwest::Method;

use super::Client;

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCmd {
    /// Set one of a node's settings (see `pesc config show NODE`).
    Set {
        /// The node's name or id.
        node: String,
        key: String,
        value: String,
    },
    /// Clear a setting: the node's own node.toml decides again.
    Unset { node: String, key: String },
    /// A node's settings: what each means, and the value an admin set.
    Show {
        node: String,
        #[arg(long)]
        json: bool,
    },
}

fn path(node: &str, key: Option<&str>) -> String {
    match key {
        Some(k) => format!("/nodes/{node}/settings/{k}"),
        None => format!("/nodes/{node}/settings"),
    }
}

fn print(list: &[NodeSetting]) {
    for s in list {
        println!(
            "{:<30} {:<10} {}",
            s.key,
            s.value.as_deref().unwrap_or("-"),
            s.meaning
        );
    }
}

pub async fn run(c: &Client, cmd: ConfigCmd) -> Result<i32> {
    match cmd {
        ConfigCmd::Set { node, key, value } => {
            let list: Vec<NodeSetting> = c
                .json(
                    c.request(Method::PUT, &path(&node, Some(&key)))
                        .json(&NodeSettingValue { value }),
                )
                .await?;
            let now = list.iter().find(|s| s.key == key);
            println!(
                "{node}: {key} = {} (applies on the node at once; its runs go on)",
                now.and_then(|s| s.value.as_deref()).unwrap_or("-")
            );
        }
        ConfigCmd::Unset { node, key } => {
            let _: Vec<NodeSetting> = c
                .json(c.request(Method::DELETE, &path(&node, Some(&key))))
                .await?;
            println!("{node}: {key} cleared (its node.toml decides)");
        }
        ConfigCmd::Show { node, json } => {
            let list: Vec<NodeSetting> = c.json(c.request(Method::GET, &path(&node, None))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print(&list);
            }
        }
    }
    Ok(0)
}
