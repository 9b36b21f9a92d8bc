//! The API token check: `Authorization: Bearer TOKEN` (or `?token=` for downloads).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiFailure;
use crate::service::NodeService;

pub(crate) async fn require_token(
    State(svc): State<Arc<dyn NodeService>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiFailure> {
    let from_header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token=").map(str::to_string))
    });
    let given = from_header.or(from_query).unwrap_or_default();
    if !constant_time_eq(given.as_bytes(), svc.api_token().as_bytes()) {
        return Err(ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API token: send 'Authorization: Bearer TOKEN' (the token is in the node's data dir, file api-token)",
        ));
    }
    Ok(next.run(req).await)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || a.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
