//! The web UI: pages rendered on the server (maud), a small embedded script
//! for live updates (server-sent events) and uploads with progress. Pages
//! change things through plain forms (with the session's CSRF token) or
//! through `/api/v1` (with the `X-CSRF-Token` header).

mod admin;
mod catalog;
pub(crate) mod charts;
mod docs;
mod requests;
mod session;

use std::collections::HashMap;

use axum::Router;
use axum::extract::{FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use pesc_protocol::access::Principal;

use crate::auth::{AppState, Caller, caller, constant_time_eq};
use crate::error::ApiFailure;

const CSS: &str = include_str!("../../assets/app.css");
const JS: &str = include_str!("../../assets/app.js");

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(requests::dashboard))
        .route("/fragments/dashboard", get(requests::dashboard_fragment))
        .route("/login", get(session::login_page).post(session::login_form))
        .route("/setup", get(session::setup_page).post(session::setup_form))
        .route("/logout", post(session::logout_form))
        .route("/requests/new", get(requests::new_page))
        .route("/requests/{id}", get(requests::request_page))
        .route("/requests/{id}/fragment", get(requests::request_fragment))
        .route("/requests/{id}/output.txt", get(requests::output_txt))
        .route("/requests/{id}/plot.svg", get(requests::sweep_plot))
        .route(
            "/domains",
            get(catalog::domains_page).post(catalog::domain_form),
        )
        .route(
            "/domains/{name}/review",
            axum::routing::post(catalog::domain_review_form),
        )
        .route("/processes", get(catalog::processes_page))
        .route("/files", get(catalog::files_page))
        .route("/rooms", get(admin::rooms_page).post(admin::room_form))
        .route("/rooms/{name}/members", post(admin::member_form))
        .route("/rooms/{name}/nodes", post(admin::node_form))
        .route("/nodes", get(admin::nodes_page))
        .route("/nodes/isolation", post(admin::isolation_form))
        .route("/nodes/settings", post(admin::node_setting_form))
        .route("/users", get(admin::users_page).post(admin::user_form))
        .route("/users/{name}", post(admin::user_change_form))
        .route("/users/{name}/delete", post(admin::user_delete_form))
        .route("/tokens", get(admin::tokens_page).post(admin::token_form))
        .route("/tokens/{id}/revoke", post(admin::revoke_form))
        .route("/docs", get(docs::index))
        .route("/docs/api", get(docs::api_reference))
        .route("/docs/{page}", get(docs::page))
        .route("/assets/app.css", get(|| asset(CSS, "text/css")))
        .route("/assets/app.js", get(|| asset(JS, "text/javascript")))
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The logged-in caller of a page; anyone else is sent to log in (or to
/// set up the grid's first admin).
pub(crate) struct Page(pub Caller);

impl FromRequestParts<AppState> for Page {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Response> {
        if let Some(c) = caller(st, &parts.headers, None).await {
            return Ok(Page(c));
        }
        let no_users = st
            .svc
            .access()
            .await
            .map(|a| a.users.is_empty())
            .unwrap_or(false);
        if no_users {
            return Err(Redirect::to("/setup").into_response());
        }
        let uri = OriginalUri::from_request_parts(parts, st)
            .await
            .map(|u| u.0.to_string())
            .unwrap_or_else(|_| "/".into());
        Err(Redirect::to(&format!("/login?next={}", urlencode(&uri))).into_response())
    }
}

impl Page {
    pub fn who(&self) -> &Principal {
        &self.0.who
    }
    /// Checks the CSRF field of a form this caller sent.
    pub fn check_csrf(&self, given: &str) -> Result<(), Box<Response>> {
        match &self.0.csrf {
            Some(expected) if constant_time_eq(expected.as_bytes(), given.as_bytes()) => Ok(()),
            None => Ok(()),
            _ => Err(Box::new(error_page(
                StatusCode::FORBIDDEN,
                "This form is stale or came from another site (CSRF check failed): reload the page and try again.",
            ))),
        }
    }
    fn csrf(&self) -> &str {
        self.0.csrf.as_deref().unwrap_or("")
    }
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A message carried to the next page by a redirect (`?ok=` / `?error=`).
#[derive(serde::Deserialize, Default)]
pub(crate) struct Flash {
    #[serde(default)]
    pub ok: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

impl Flash {
    fn render(&self) -> Markup {
        html! {
            @if let Some(m) = &self.ok { p.flash.ok role="status" { (m) } }
            @if let Some(m) = &self.error { p.flash.error role="alert" { (m) } }
        }
    }
}

/// Back to `to` with a message.
pub(crate) fn back(to: &str, r: Result<String, ApiFailure>) -> Response {
    let (k, m) = match r {
        Ok(m) => ("ok", m),
        Err(e) => ("error", e.message),
    };
    Redirect::to(&format!("{to}?{k}={}", urlencode(&m))).into_response()
}

/// A whole page: header with the menu, the flash message, the content.
pub(crate) fn layout(p: &Page, title: &str, flash: &Flash, content: Markup) -> Markup {
    let who = p.who();
    let menu: &[(&str, &str)] = &[
        ("/", "Dashboard"),
        ("/requests/new", "New request"),
        ("/domains", "Domains"),
        ("/processes", "Processes"),
        ("/files", "Files"),
        ("/rooms", "Rooms"),
        ("/nodes", "Nodes"),
        ("/tokens", "Tokens"),
        ("/docs", "Docs"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, Some(p.csrf())))
            body {
                header.top {
                    a.brand href="/" { "PESC" }
                    nav {
                        @for (href, label) in menu { a href=(href) { (label) } }
                        @if who.is_admin() { a href="/users" { "Users" } }
                    }
                    form.whoami method="post" action="/logout" {
                        span { (who.user) " (" (who.role.as_str()) ")" }
                        input type="hidden" name="csrf" value=(p.csrf());
                        button type="submit" { "Log out" }
                    }
                }
                main {
                    h1 { (title) }
                    (flash.render())
                    (content)
                }
            }
        }
    }
}

/// A page's head; pages for logged-in callers carry the CSRF token and the script.
fn head(title: &str, csrf: Option<&str>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            @if let Some(c) = csrf { meta name="csrf" content=(c); }
            title { (title) " · PESC" }
            link rel="stylesheet" href="/assets/app.css";
            @if csrf.is_some() { script src="/assets/app.js" defer {} }
        }
    }
}

/// A page for someone not logged in (login, setup).
pub(crate) fn bare(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, None))
            body.bare { main { h1 { (title) } (content) } }
        }
    }
}

pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    (
        status,
        bare(
            "Something went wrong",
            html! { p.flash.error role="alert" { (message) } p { a href="/" { "Back to the dashboard" } } },
        ),
    )
        .into_response()
}

/// A failed call, as a page.
pub(crate) fn failed(e: ApiFailure) -> Response {
    error_page(e.status, &e.message)
}

/// Node names by id, for showing nodes by name.
pub(crate) fn node_names(nodes: &[pesc_protocol::api::GridNode]) -> HashMap<&str, &str> {
    nodes
        .iter()
        .map(|n| (n.id.as_str(), n.name.as_str()))
        .collect()
}

pub(crate) fn badge(s: &str) -> Markup {
    html! { span class={ "badge " (s) } { (s) } }
}

/// The hidden CSRF field of a form.
pub(crate) fn csrf_field(p: &Page) -> Markup {
    html! { input type="hidden" name="csrf" value=(p.csrf()); }
}

pub(crate) fn when(ms: u64) -> Markup {
    html! { time data-ms=(ms) { (fmt_utc(ms)) } }
}

/// `2026-11-21 14:03:09 UTC` (the page's script shows local time).
pub(crate) fn fmt_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

pub(crate) fn fmt_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

pub(crate) fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Raw HTML that was made safe already (rendered Markdown of our own docs, SVG).
pub(crate) fn trusted(s: String) -> PreEscaped<String> {
    PreEscaped(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_sizes_read_well() {
        assert_eq!(fmt_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(fmt_utc(1_795_000_000_000), "2026-11-18 11:06:40 UTC");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(3 << 20), "3.0 MiB");
        assert_eq!(fmt_duration(61_000), "1m 01s");
        assert_eq!(urlencode("/requests/ab?x=1"), "/requests/ab%3Fx%3D1");
    }
}
