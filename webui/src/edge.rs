//! The web edge, in front of every page and API call: only Host names this
//! node answers to (no DNS rebinding: a page of evil.example that resolves
//! to 127.0.0.1 is refused), and security headers on every answer (a
//! Content-Security-Policy without inline script, no framing, no MIME
//! sniffing, no referrer beyond this site).

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::AppState;
use crate::error::ApiFailure;

/// Names a browser may use for this node besides the configured ones.
const LOCAL_HOSTS: [&str; 4] = ["127.0.0.1", "localhost", "[::1]", "::1"];

/// The host part of a Host header (without the port).
fn host_name(h: &str) -> &str {
    if h.starts_with('[') {
        return h.find(']').map_or(h, |i| &h[..=i]);
    }
    match h.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && !name.contains(':') =>
        {
            name
        }
        _ => h,
    }
}

/// Whether `host` (a Host header) names this node.
pub fn host_allowed(host: &str, configured: &[String]) -> bool {
    let name = host_name(host.trim()).to_ascii_lowercase();
    LOCAL_HOSTS.contains(&name.as_str())
        || configured
            .iter()
            .any(|c| c.trim().eq_ignore_ascii_case(&name))
}

/// Refuses requests whose Host this node does not answer to; adds the
/// security headers to every answer.
pub async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let mut resp = match host {
        Some(h) if !host_allowed(&h, &st.svc.allowed_hosts()) => ApiFailure::forbidden(format!(
            "this node does not answer to the host name '{}': use 127.0.0.1 or localhost, or add the name to api_hosts in node.toml",
            host_name(&h)
        ))
        .into_response(),
        _ => next.run(req).await,
    };
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "same-origin");
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_and_configured_host_names_pass() {
        let none: Vec<String> = Vec::new();
        for ok in [
            "127.0.0.1:7372",
            "localhost:7372",
            "localhost",
            "[::1]:7372",
            "LOCALHOST",
        ] {
            assert!(host_allowed(ok, &none), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7372",
            "127.0.0.1.evil.example",
            "10.0.0.5:7372",
            "",
        ] {
            assert!(!host_allowed(bad, &none), "{bad}");
        }
        let lab = vec!["lab-pc-17.example.edu".to_string()];
        assert!(host_allowed("lab-pc-17.example.edu:7372", &lab));
        assert!(!host_allowed("lab-pc-18.example.edu:7372", &lab));
    }
}
