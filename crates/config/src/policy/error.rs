//! What can be wrong with a policy: the leaf error type of the policy parser.
//!
//! Every variant that points into the policy text carries the (one-based)
//! line, so an operator can find the mistake; the server's HTTP layer sees these only
//! through its `Error::InvalidRequest("failed to parse policy: ...")`.

/// Where in a path stanza a problem sits, shown as Vault shows it: `path "secret/*": ...`.
fn path_prefix(path: &Option<String>) -> String {
    match path {
        Some(p) => format!("path {p:?}: "),
        None => String::new(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is not HCL (or JSON) at all.
    #[error("syntax error on line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// A key the policy language does not have (Vault: `invalid key "x" on line N`).
    #[error("{}invalid key {key:?} on line {line}", path_prefix(path))]
    UnknownKey {
        path: Option<String>,
        key: String,
        line: usize,
    },
    /// A capability outside create, read, update, patch, delete, list, sudo, deny,
    /// subscribe, recover.
    #[error("path {path:?}: invalid capability {capability:?} on line {line} (expected one of create, read, update, patch, delete, list, sudo, deny)")]
    InvalidCapability {
        path: String,
        capability: String,
        line: usize,
    },
    /// A legacy `policy = "..."` value other than deny, read, write, sudo.
    #[error("path {path:?}: invalid policy {value:?} on line {line} (expected deny, read, write or sudo)")]
    InvalidLegacyPolicy {
        path: String,
        value: String,
        line: usize,
    },
    /// A glob in a place Vault's matcher cannot honour (`+*`, `*` before the end).
    #[error("path {path:?}: {reason} on line {line}")]
    InvalidWildcard {
        path: String,
        reason: &'static str,
        line: usize,
    },
    /// A key holds a value of the wrong shape (`capabilities = "read"`).
    #[error("{}{key}: {expected} on line {line}", path_prefix(path))]
    InvalidValue {
        path: Option<String>,
        key: String,
        expected: String,
        line: usize,
    },
    /// The policy name is empty or reserved (`root`).
    #[error("{0}")]
    InvalidName(String),
    /// `root` asked for together with other policies (Vault refuses to build that ACL).
    #[error("other policies present along with root")]
    RootCombined,
}

impl PolicyError {
    /// The line the error points at, when it points into the text.
    pub fn line(&self) -> Option<usize> {
        match self {
            PolicyError::Syntax { line, .. }
            | PolicyError::UnknownKey { line, .. }
            | PolicyError::InvalidCapability { line, .. }
            | PolicyError::InvalidLegacyPolicy { line, .. }
            | PolicyError::InvalidWildcard { line, .. }
            | PolicyError::InvalidValue { line, .. } => Some(*line),
            PolicyError::InvalidName(_) | PolicyError::RootCombined => None,
        }
    }
}
