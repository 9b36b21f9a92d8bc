//! Logging in and out, and the first run's setup of the grid's admin.

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use pesc_protocol::access::Role;
use pesc_protocol::api::NewUser;
use serde::Deserialize;

use super::{Page, bare, failed};
use crate::accounts::{add_user, start_session};
use crate::auth::{AppState, constant_time_eq, session_cookie};

#[derive(Deserialize, Default)]
pub(crate) struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// Where to go after logging in: only paths of this site. Browsers drop
/// tabs and newlines from URLs and read `\\` as `/`, so `/%09/evil.example`
/// would be `//evil.example`: any control character, space or backslash,
/// or a second leading slash, sends the user home instead.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n[1..].starts_with('/')
                && !n
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace() || c == '\\') =>
        {
            n.into()
        }
        _ => "/".into(),
    }
}

/// The login form's CSRF cookie: a random value the form repeats, so a
/// page of another site cannot log a browser in (to the attacker's account).
const LOGIN_CSRF_COOKIE: &str = "pesc_login";

fn login_csrf_cookie(token: &str) -> String {
    format!("{LOGIN_CSRF_COOKIE}={token}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600")
}

fn login_markup(next: &str, error: Option<&str>, user: &str, csrf: &str) -> Markup {
    bare(
        "Log in",
        html! {
            @if let Some(e) = error { p.flash.error role="alert" { (e) } }
            form.card method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                label { "User" input name="user" value=(user) required autofocus autocomplete="username"; }
                label { "Password" input type="password" name="password" required autocomplete="current-password"; }
                button type="submit" { "Log in" }
            }
        },
    )
}

pub(crate) async fn login_page(State(st): State<AppState>, q: Query<LoginQuery>) -> Response {
    if st.svc.access().await.is_ok_and(|a| a.users.is_empty()) {
        return Redirect::to("/setup").into_response();
    }
    let next = safe_next(q.next.as_deref());
    let csrf = crate::auth::new_token();
    (
        [(header::SET_COOKIE, login_csrf_cookie(&csrf))],
        login_markup(&next, q.error.as_deref(), "", &csrf),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    user: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn login_form(
    State(st): State<AppState>,
    client: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: axum::http::HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    let expected = crate::auth::cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !constant_time_eq(expected.as_bytes(), f.csrf.as_bytes()) {
        let csrf = crate::auth::new_token();
        return (
            StatusCode::FORBIDDEN,
            [(header::SET_COOKIE, login_csrf_cookie(&csrf))],
            login_markup(
                &next,
                Some("This login form is not from this page (or it expired): log in again."),
                &f.user,
                &csrf,
            ),
        )
            .into_response();
    }
    let client = client.map(|axum::Extension(axum::extract::ConnectInfo(a))| a.ip());
    match start_session(&st, &f.user, &f.password, client).await {
        Ok((value, _)) => (
            [(header::SET_COOKIE, session_cookie(&value))],
            Redirect::to(&next),
        )
            .into_response(),
        Err(e) => (
            e.status,
            login_markup(&next, Some(&e.message), &f.user, &f.csrf),
        )
            .into_response(),
    }
}

pub(crate) async fn logout_form(p: Page, Form(f): Form<CsrfOnly>) -> Response {
    if let Err(r) = p.check_csrf(&f.csrf) {
        return *r;
    }
    (
        [(header::SET_COOKIE, session_cookie(""))],
        Redirect::to("/login"),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    pub csrf: String,
}

#[derive(Deserialize, Default)]
pub(crate) struct SetupQuery {
    #[serde(default)]
    code: Option<String>,
}

fn setup_markup(code: &str, error: Option<&str>) -> Markup {
    bare(
        "Set up PESC",
        html! {
            p { "This grid has no accounts yet. Make its first admin. The node printed a setup link "
                "when it started (in its log: " code { "journalctl -u pesc" } " for the service); it fills "
                "the code in. The node's API token (the file " code { "api-token" } " of its data dir) "
                "works as the code too." }
            @if let Some(e) = error { p.flash.error role="alert" { (e) } }
            form.card method="post" action="/setup" {
                label { "Setup code" input name="code" value=(code) required; }
                label { "Admin user name" input name="user" required autocomplete="username"; }
                label { "Password (8 characters or more)" input type="password" name="password" minlength="8" required autocomplete="new-password"; }
                button type="submit" { "Create the admin" }
            }
        },
    )
}

pub(crate) async fn setup_page(State(st): State<AppState>, q: Query<SetupQuery>) -> Response {
    if st.svc.access().await.is_ok_and(|a| !a.users.is_empty()) {
        return Redirect::to("/login").into_response();
    }
    setup_markup(q.code.as_deref().unwrap_or(""), None).into_response()
}

#[derive(Deserialize)]
pub(crate) struct SetupForm {
    code: String,
    user: String,
    password: String,
}

pub(crate) async fn setup_form(
    State(st): State<AppState>,
    client: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Form(f): Form<SetupForm>,
) -> Response {
    let a = match st.svc.access().await {
        Ok(a) => a,
        Err(e) => return failed(e),
    };
    if !a.users.is_empty() {
        return Redirect::to("/login?error=The+grid+has+an+admin+already%3A+log+in")
            .into_response();
    }
    let code = f.code.trim().as_bytes();
    // The printed code is in the log, which more people may read than the
    // data dir: it works only from this machine. The API token works from
    // anywhere, as it does for the API.
    let local =
        client.is_some_and(|axum::Extension(axum::extract::ConnectInfo(a))| a.ip().is_loopback());
    let by_link = local && constant_time_eq(code, st.svc.setup_code().as_bytes());
    if !by_link && !constant_time_eq(code, st.svc.api_token().as_bytes()) {
        return (
            StatusCode::FORBIDDEN,
            setup_markup(&f.code, Some("Wrong setup code: use the link the node printed at start, or the node's API token (file api-token in its data dir).")),
        )
            .into_response();
    }
    let new = NewUser {
        name: f.user.clone(),
        password: f.password.clone(),
        role: Role::Admin,
    };
    if let Err(e) = add_user(&st, new).await {
        return (e.status, setup_markup(&f.code, Some(&e.message))).into_response();
    }
    match start_session(&st, &f.user, &f.password, None).await {
        Ok((value, _)) => (
            [(header::SET_COOKIE, session_cookie(&value))],
            Redirect::to("/?ok=Welcome%21+You+are+the+grid%27s+admin."),
        )
            .into_response(),
        Err(e) => failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_goes_only_to_paths_of_this_site() {
        assert_eq!(safe_next(Some("/requests/abc")), "/requests/abc");
        for bad in [
            "//evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\\evil.example",
            "https://evil.example",
            "/ /evil.example",
            "evil",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
