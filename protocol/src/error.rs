//! Errors of the protocol crate: invalid input and malformed documents.

use thiserror::Error;

/// What went wrong, in words a user or an operator can act on.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// A field of a request, process or id that a user gave is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this (a room not open to them, someone
    /// else's request).
    #[error("{0}")]
    Forbidden(String),
    /// A document (local or from a peer) does not follow the schema.
    #[error("malformed document: {0}")]
    Document(String),
    /// A document written by a newer PESC that this node cannot read
    /// safely (`doc::check_readable`).
    #[error("{0}")]
    TooNew(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
    pub fn document(msg: impl Into<String>) -> Self {
        Error::Document(msg.into())
    }
}

impl From<automerge::AutomergeError> for Error {
    fn from(e: automerge::AutomergeError) -> Self {
        Error::Document(e.to_string())
    }
}
