//! Why a snapshot pass, a listing or a download failed. Every message says what was being done
//! and, where the user can act, what to do. None ever holds a token, secret ID or object bytes.

use keyhold_client::snapshot::SnapshotError;
use keyhold_config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The config file is wrong: fix it.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The credentials to log in with are missing or unreadable.
    #[error("{0}")]
    Credentials(String),
    /// A local file or directory could not be used.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The node is unreachable, sealed or uninitialised, refused the login or the snapshot.
    #[error("{0}")]
    Node(String),
    /// The archive the node sent is damaged.
    #[error(
        "the snapshot the node sent is not a valid archive ({0}); nothing was uploaded. Look at \
         the node's log, and try again"
    )]
    Archive(SnapshotError),
    /// S3 refused a request or could not be reached.
    #[error("{0}")]
    S3(String),
    /// An object in S3 is not what was uploaded: wrong size, wrong checksum, missing digest.
    #[error("{0}")]
    Integrity(String),
}

impl AgentError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the cause is on this machine (config, files, credentials) rather than at the
    /// node or in S3; the CLI maps the two kinds to exit codes 1 and 2, as `vault` does.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            AgentError::Config(_) | AgentError::Credentials(_) | AgentError::Io { .. }
        )
    }
}
