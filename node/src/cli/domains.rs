//! `pesc domains`: the environments runs execute in.

use std::path::PathBuf;

use anyhow::{Context, Result};
use pesc_protocol::api::{NewDomain, TemplateInfo};
use pesc_protocol::domain::Domain;
use reqwest::Method;

use super::Client;

#[derive(Debug, clap::Subcommand)]
pub enum DomainsCmd {
    /// Make a domain from a template plus extra packages, or from your own
    /// Dockerfile (and requirements.txt). The same name again replaces it
    /// for new requests.
    Add {
        name: String,
        /// A template (see `pesc domains templates`).
        #[arg(
            long,
            conflicts_with = "dockerfile",
            required_unless_present = "dockerfile"
        )]
        template: Option<String>,
        /// Extra packages for the template (written into requirements.txt).
        #[arg(long, num_args = 1.., requires = "template")]
        packages: Vec<String>,
        /// Your own Dockerfile (it may COPY requirements.txt).
        #[arg(long)]
        dockerfile: Option<PathBuf>,
        /// requirements.txt for your Dockerfile.
        #[arg(long, requires = "dockerfile")]
        requirements: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The grid's domains.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One domain: its Dockerfile and requirements.txt.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve a domain request (a user's own Dockerfile), or reject it
    /// with the reason (operators and admins).
    Review {
        name: String,
        #[arg(long, conflicts_with = "reject", required_unless_present = "reject")]
        approve: bool,
        /// Why it is rejected.
        #[arg(long, value_name = "REASON")]
        reject: Option<String>,
        /// Rooms whose users may use it besides its owner; repeat for more.
        #[arg(long = "room", value_name = "ROOM")]
        rooms: Vec<String>,
    },
    /// The templates that ship with PESC, with this node's base images.
    Templates {
        #[arg(long)]
        json: bool,
    },
}

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub async fn run(c: &Client, cmd: DomainsCmd) -> Result<i32> {
    match cmd {
        DomainsCmd::Add {
            name,
            template,
            packages,
            dockerfile,
            requirements,
            json,
        } => {
            let body = NewDomain {
                name,
                template,
                packages,
                dockerfile: dockerfile.as_ref().map(read).transpose()?,
                requirements: requirements.as_ref().map(read).transpose()?,
            };
            let d: Domain = c
                .json(c.request(Method::POST, "/domains").json(&body))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!(
                    "domain {} ({}): {}; each node builds it the first time it runs it",
                    d.name,
                    d.image_tag(),
                    d.review.describe()
                );
            }
        }
        DomainsCmd::List { json } => {
            let list: Vec<Domain> = c.json(c.request(Method::GET, "/domains")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(0);
            }
            println!(
                "{:<24} {:<18} {:<40} {:<12} STATUS",
                "NAME", "TEMPLATE", "BASE IMAGE", "OWNER"
            );
            for d in list {
                println!(
                    "{:<24} {:<18} {:<40} {:<12} {}",
                    d.name,
                    d.template.as_deref().unwrap_or("-"),
                    d.base_image().unwrap_or_default(),
                    d.owner,
                    d.review.describe()
                );
            }
        }
        DomainsCmd::Review {
            name,
            approve,
            reject,
            rooms,
        } => {
            let body = pesc_protocol::api::DomainReview {
                approve,
                reason: reject,
                rooms,
            };
            let d: Domain = c
                .json(
                    c.request(Method::POST, &format!("/domains/{name}/review"))
                        .json(&body),
                )
                .await?;
            println!("domain {}: {}", d.name, d.review.describe());
        }
        DomainsCmd::Show { name, json } => {
            let d: Domain = c
                .json(c.request(Method::GET, &format!("/domains/{name}")))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!("# domain {} ({}), by {}", d.name, d.image_tag(), d.owner);
                println!("# --- Dockerfile ---\n{}", d.dockerfile.trim_end());
                println!("# --- requirements.txt ---\n{}", d.requirements.trim_end());
            }
        }
        DomainsCmd::Templates { json } => {
            let list: Vec<TemplateInfo> = c.json(c.request(Method::GET, "/templates")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(0);
            }
            for t in list {
                println!("{:<18} {:<45} {}", t.name, t.base, t.description);
            }
        }
    }
    Ok(0)
}
