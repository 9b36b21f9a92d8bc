//! PESC's sans-I/O protocol core.
//!
//! Everything that decides what happens on the grid lives here as pure code fed
//! `now` and events: the data model, the Automerge document schema, liveness
//! (who is up, whose claims hold, who takes a run over), how a run's state
//! follows from its attempts, which runs a node should claim (fair share), and
//! the run header handed to user programs.
//! There is no tokio, no socket and no clock in this crate: the node drives it
//! with real time and I/O, the simulator with virtual ones.

pub mod access;
pub mod api;
pub mod backup;
pub mod blob_tree;
pub mod claim_order;
pub mod doc;
pub mod domain;
pub mod error;
pub mod fuzzing;
pub mod gang;
pub mod harness;
pub mod header;
pub mod ids;
pub mod isolation;
pub mod join;
pub mod lease;
pub mod limits;
pub mod liveness;
pub mod model;
pub mod node;
pub mod node_settings;
pub mod progress;
pub mod receipt;
pub mod resources;
pub mod run_view;
pub mod schedule;
pub mod sweep;
pub mod wire;

pub use error::{Error, Result};
pub use ids::{BlobHash, NodeId, ProcessId, RequestId};
