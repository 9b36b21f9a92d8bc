//! PESC's HTTP surface: the JSON API under `/api/v1` (pages come later).
//!
//! The router knows nothing about how a node works: it talks to it through
//! the [`NodeService`] trait, which the node implements.

mod auth;
mod error;
mod openapi;
mod routes;
mod service;

pub use error::ApiFailure;
pub use routes::router;
pub use service::{ByteStream, LogStream, NodeService, ResultsFile};
