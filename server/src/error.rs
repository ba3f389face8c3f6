//! The server's error type. Every failure a request can meet is one of these;
//! `http::respond` is the one place that turns them into Vault's
//! `{"errors":[...]}` bodies and status codes.

use crate::physical::StorageError;
use crate::policy::PolicyError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// 400: the caller sent something wrong; the message says what.
    #[error("{0}")]
    InvalidRequest(String),
    /// 403: missing, unknown or insufficient token.
    #[error("permission denied")]
    PermissionDenied,
    /// 404 with `{"errors":[]}`: nothing stored at the path.
    #[error("not found")]
    NotFound,
    /// 404: no mount or handler serves the path.
    #[error("no handler for route {0:?}. route entry not found.")]
    UnsupportedPath(String),
    /// 405: the path exists but not for this operation.
    #[error("unsupported operation")]
    UnsupportedOperation,
    /// 503: the barrier is sealed.
    #[error("Vault is sealed")]
    Sealed,
    /// 400: the server has not been initialised yet.
    #[error("Vault is not initialized")]
    NotInitialized,
    /// 500: no audit device could record the request or response.
    #[error("internal error")]
    AuditFailed,
    /// 413.
    #[error("http: request body too large")]
    TooLarge,
    /// 503 while a standby has no active node to forward to.
    #[error("node not active but active cluster node not found")]
    NoActiveNode,
    /// 412: the request's `X-Vault-Index` names a state this node has not applied within the
    /// wait (Vault's answer; its clients retry a 412).
    #[error("{0}")]
    IndexNotApplied(String),
    /// A standby cannot serve this request itself (it would write, or it needs the active
    /// node's view): the HTTP layer forwards it. Answered 503 if it ever reaches a client.
    #[error("this request must be handled by the active node")]
    ForwardToActive,
    /// 500, with a message that is safe to show (never a secret).
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidRequest(msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }

    /// The HTTP status Vault uses for this error.
    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidRequest(_) | Error::NotInitialized => 400,
            Error::PermissionDenied => 403,
            Error::NotFound | Error::UnsupportedPath(_) => 404,
            Error::UnsupportedOperation => 405,
            Error::TooLarge => 413,
            Error::IndexNotApplied(_) => 412,
            Error::Sealed | Error::NoActiveNode | Error::ForwardToActive => 503,
            Error::AuditFailed | Error::Internal(_) => 500,
            Error::Storage(StorageError::Sealed)
            | Error::Storage(StorageError::NotLeader { .. }) => 503,
            Error::Storage(StorageError::NoSpace { .. }) => 507,
            Error::Storage(_) => 500,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<PolicyError> for Error {
    fn from(err: PolicyError) -> Self {
        match err {
            // Not a parse problem: Vault fails the request while building the ACL.
            PolicyError::RootCombined => Error::internal(format!("failed to construct ACL: {err}")),
            PolicyError::InvalidName(msg) => Error::InvalidRequest(msg),
            other => Error::InvalidRequest(format!("failed to parse policy: {other}")),
        }
    }
}
