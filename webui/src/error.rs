//! API errors: a status code and a sentence that says what to fix.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pesc_protocol::api::ApiError;

/// A failed API call.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
}

impl ApiFailure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiFailure {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn too_large(m: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, m)
    }
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for ApiFailure {}

impl From<pesc_protocol::Error> for ApiFailure {
    fn from(e: pesc_protocol::Error) -> Self {
        // One mapping: the protocol's error is a domain error first.
        pesc_protocol::node::NodeError::from(e).into()
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, "{}", self.message);
        }
        (
            self.status,
            Json(ApiError {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<pesc_protocol::node::NodeError> for ApiFailure {
    fn from(e: pesc_protocol::node::NodeError) -> Self {
        use pesc_protocol::node::NodeError as E;
        match e {
            E::Invalid(m) => ApiFailure::bad_request(m),
            E::Forbidden(m) => ApiFailure::forbidden(m),
            E::NotFound(m) => ApiFailure::not_found(m),
            E::Conflict(m) => ApiFailure::conflict(m),
            E::Internal(m) => ApiFailure::internal(m),
            E::Unavailable(m) => ApiFailure::unavailable(m),
        }
    }
}
