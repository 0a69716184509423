//! The one error type of the request path, and its one mapping to
//! `tonic::Status`.
//!
//! Every variant carries a message that is safe to show a client. Details that
//! are not (SQL, driver errors, internals) go to the log where the error is
//! made, never into the variant.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// No, malformed, forged or expired token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// Nothing visible under RLS: another tenant's row looks exactly like a
    /// missing one.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency (the database) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A limit of ours was reached (load shedding, a tenant's share, a
    /// message size); the message names the limit and its setting.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Something we did not expect; logged in full where it happened.
    #[error("internal error")]
    Internal,
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    pub fn not_found(what: &str) -> Self {
        Error::NotFound(format!("{what} not found"))
    }

    pub fn code(&self) -> Code {
        match self {
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::NotFound(_) => Code::NotFound,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Internal => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        Status::new(error.code(), error.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
