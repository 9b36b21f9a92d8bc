//! What goes wrong with a command, as the node's domain sees it (the web
//! layer maps each kind to an HTTP status).

/// A command's failure, with a message for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The input is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// What it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Not now: the thing is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// The node failed (a document it cannot write, a disk error).
    #[error("{0}")]
    Internal(String),
    /// The node is stopping.
    #[error("{0}")]
    Unavailable(String),
}

impl From<crate::Error> for NodeError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Invalid(m) => NodeError::Invalid(m),
            crate::Error::Forbidden(m) => NodeError::Forbidden(m),
            other => NodeError::Internal(other.to_string()),
        }
    }
}
