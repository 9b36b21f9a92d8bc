//! Domains, processes and shared files.

use axum::Form;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use maud::html;
use pesc_protocol::api::NewDomain;
use pesc_protocol::model::BuildState;
use serde::Deserialize;

use super::{Flash, Page, back, csrf_field, failed, fmt_bytes, layout, when};
use crate::auth::AppState;

type St = State<AppState>;

pub(crate) async fn domains_page(State(st): St, p: Page, flash: Query<Flash>) -> Response {
    let (domains, templates, nodes) =
        match tokio::try_join!(st.svc.list_domains(), st.svc.templates(), st.svc.nodes()) {
            Ok(x) => x,
            Err(e) => return failed(e),
        };
    let docker: Vec<&str> = nodes
        .iter()
        .filter(|n| n.executor == "docker")
        .map(|n| n.name.as_str())
        .collect();
    let body = html! {
        p { "A domain is an execution environment: a Dockerfile (from a template plus packages, or your own). "
            "Each node with Docker builds its image the first time a run needs it, and keeps it. "
            @if docker.is_empty() { b { "No node of this grid runs Docker now: requests naming a domain will wait." } }
            @else { "Nodes that build domains: " (docker.join(", ")) "." } }
        table {
            thead { tr { th { "Name" } th { "Image tag" } th { "Template" } th { "By" } th { "Status" } th { "Created" } th { "Built on" } th { "Dockerfile" } } }
            tbody {
                @for d in &domains {
                    tr {
                        td { (d.name) }
                        td { code { (d.image_tag()) } }
                        td { (d.template.as_deref().unwrap_or("own Dockerfile")) }
                        td { (d.owner) }
                        td {
                            (d.review.describe()) @if !d.rooms.is_empty() { " (rooms " (d.rooms.join(", ")) ")" }
                            @if p.who().may_make_domain() && d.template.is_none() && d.review != pesc_protocol::domain::Review::Approved {
                                form.inline method="post" action={ "/domains/" (d.name) "/review" } {
                                    (csrf_field(&p))
                                    input name="rooms" placeholder="rooms (optional)";
                                    button name="action" value="approve" { "Approve" }
                                    input name="reason" placeholder="why not";
                                    button name="action" value="reject" { "Reject" }
                                }
                            }
                        }
                        td { (when(d.created_ms)) }
                        td.builds {
                            @for n in &nodes {
                                @for b in n.builds.iter().filter(|b| b.hash == d.hash) {
                                    div { (n.name) " " (super::badge(match b.state {
                                        BuildState::Building => "building",
                                        BuildState::Built => "built",
                                        BuildState::Failed => "failed",
                                    })) }
                                }
                            }
                        }
                        td { details { summary { "show" } pre { (d.dockerfile) } @if !d.requirements.is_empty() { pre { (d.requirements) } } } }
                    }
                }
            }
        }
        h2 { "New domain" }
        @if !p.who().may_make_domain() {
            p { "From a template it is yours at once; your own Dockerfile waits for an operator's approval (its status shows above)." }
        }
        form.card method="post" action="/domains" {
            (csrf_field(&p))
            label { "Name " input name="name" required pattern="[A-Za-z0-9._-]+"; }
            label { "Template "
                select name="template" {
                    option value="" { "— my own Dockerfile below —" }
                    @for t in &templates { option value=(t.name) { (t.name) ": " (t.description) " (" (t.base) ")" } }
                }
            }
            label { "Extra packages (space or comma separated) " input name="packages" placeholder="numpy scipy"; }
            label { "Own Dockerfile " textarea name="dockerfile" rows="6" placeholder="FROM python:3.12-slim" {} }
            label { "requirements.txt (optional) " textarea name="requirements" rows="3" {} }
            button type="submit" { "Save domain" }
        }
    };
    layout(&p, "Domains", &flash, body).into_response()
}

#[derive(Deserialize)]
pub(crate) struct DomainForm {
    #[serde(default)]
    csrf: String,
    name: String,
    #[serde(default)]
    template: String,
    #[serde(default)]
    packages: String,
    #[serde(default)]
    dockerfile: String,
    #[serde(default)]
    requirements: String,
}

pub(crate) async fn domain_form(State(st): St, p: Page, Form(f): Form<DomainForm>) -> Response {
    if let Err(r) = p.check_csrf(&f.csrf) {
        return *r;
    }
    let r = async {
        let nonempty = |s: String| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        let d = NewDomain {
            name: f.name.trim().to_string(),
            template: nonempty(f.template),
            packages: f
                .packages
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            dockerfile: nonempty(f.dockerfile),
            requirements: nonempty(f.requirements),
        };
        let d = crate::routes::make_domain(&st, p.who(), d).await?;
        Ok(format!(
            "Domain {} saved (image {}): {}.",
            d.name,
            d.image_tag(),
            d.review.describe()
        ))
    }
    .await;
    back("/domains", r)
}

pub(crate) async fn processes_page(State(st): St, p: Page, flash: Query<Flash>) -> Response {
    let list = match crate::routes::visible_processes(&st, p.who()).await {
        Ok(l) => l,
        Err(e) => return failed(e),
    };
    let body = html! {
        p { "Programs uploaded to the grid (a file, or a zip with an entry). Upload a new one from "
            a href="/requests/new" { "New request" } ", or with " code { "pesc submit" } "." }
        table {
            thead { tr { th { "Name" } th { "Id" } th { "Language" } th { "Entry" } th { "Size" } th { "By" } th { "Uploaded" } } }
            tbody {
                @for pr in &list {
                    tr {
                        td { (pr.name) }
                        td { code { (pr.id.short()) } }
                        td { (pr.language.as_str()) }
                        td { code { (pr.entry) } }
                        td { (fmt_bytes(pr.size)) }
                        td { (pr.owner) }
                        td { (when(pr.created_ms)) }
                    }
                }
            }
        }
    };
    layout(&p, "Processes", &flash, body).into_response()
}

pub(crate) async fn files_page(State(st): St, p: Page, flash: Query<Flash>) -> Response {
    let (files, nodes) =
        match tokio::try_join!(crate::routes::visible_files(&st, p.who()), st.svc.nodes()) {
            Ok(x) => x,
            Err(e) => return failed(e),
        };
    let names = super::node_names(&nodes);
    let body = html! {
        p { "Shared files are inputs many runs read (data sets, models). Runs see them read-only in their app dir; each node fetches a file once, from the nodes that hold it." }
        table {
            thead { tr { th { "Name" } th { "Size" } th { "BLAKE3" } th { "Held by" } th { "By" } th { "Added" } } }
            tbody {
                @for f in &files {
                    tr {
                        td { (f.file.name) }
                        td { (fmt_bytes(f.file.size)) }
                        td { code title=(f.file.hash.to_hex()) { (f.file.hash.to_hex()[..16]) "…" } }
                        td { @for (i, h) in f.holders.iter().enumerate() { @if i > 0 { ", " } (names.get(h.as_str()).copied().unwrap_or(h.as_str())) } }
                        td { (f.file.owner) }
                        td { (when(f.file.created_ms)) }
                    }
                }
            }
        }
        h2 { "Add a shared file" }
        form #file-upload.card {
            label { "File " input type="file" name="file" required; }
            label { "Name runs see it under (default: the file's name) " input name="name"; }
            div.upload-progress hidden { progress max="100" value="0" {} span {} }
            p.flash.error role="alert" hidden {}
            button type="submit" { "Upload" }
        }
    };
    layout(&p, "Shared files", &flash, body).into_response()
}

#[derive(Deserialize)]
pub(crate) struct ReviewForm {
    #[serde(default)]
    csrf: String,
    action: String,
    #[serde(default)]
    rooms: String,
    #[serde(default)]
    reason: String,
}

/// An operator approves or rejects a domain request from the Domains page.
pub(crate) async fn domain_review_form(
    State(st): St,
    p: Page,
    axum::extract::Path(name): axum::extract::Path<String>,
    Form(f): Form<ReviewForm>,
) -> Response {
    if let Err(r) = p.check_csrf(&f.csrf) {
        return *r;
    }
    let review = pesc_protocol::api::DomainReview {
        approve: f.action == "approve",
        reason: Some(f.reason.trim().to_string()).filter(|r| !r.is_empty()),
        rooms: f
            .rooms
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    };
    let r = crate::routes::answer_domain(&st, p.who(), &name, review)
        .await
        .map(|d| format!("Domain {}: {}.", d.name, d.review.describe()));
    back("/domains", r)
}
