//! PESC's HTTP surface: the JSON API under `/api/v1` and the web UI.
//!
//! The router knows nothing about how a node works: it talks to it through
//! the [`NodeService`] trait, which the node implements.

mod accounts;
mod auth;
mod edge;
mod error;
mod openapi;
mod routes;
mod service;
mod ui;

pub use error::ApiFailure;
pub use routes::router;
pub use service::{ByteStream, LogStream, NodeService, ResultsFile};
