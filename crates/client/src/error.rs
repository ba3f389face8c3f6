//! What can go wrong talking to a Vault-compatible server, worded as the `vault` CLI words it.

use std::fmt;

/// An error from [`super::Client`]. Never carries a token: URLs are built from paths that
/// hold no secrets, and request bodies are not kept.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a status >= 400.
    #[error("{0}")]
    Api(Box<ApiError>),
    /// The request never got an answer: connection refused, TLS failure, timeout...
    #[error(
        "error sending {method} {url}: {cause}\n\nIs a server listening at {address}? Check \
         VAULT_ADDR (or -address), and for a TLS error check that VAULT_CACERT (or -ca-cert) \
         names the CA that signed the server's certificate."
    )]
    Transport {
        method: String,
        url: String,
        address: String,
        cause: String,
    },
    /// The server answered 2xx with a body we could not read.
    #[error("error decoding the response of {method} {url}: {cause}")]
    Decode {
        method: String,
        url: String,
        cause: String,
    },
    /// The client could not be built from its configuration (bad address, unreadable CA file...).
    #[error("{0}")]
    Config(String),
    /// A downloaded snapshot does not end with a non-empty `SHA256SUMS.sealed` (Vault's
    /// `ErrIncompleteSnapshot`): the server failed midway, and the bytes are unusable.
    #[error("incomplete snapshot, unable to read SHA256SUMS.sealed file")]
    IncompleteSnapshot,
    /// Writing a streamed answer (a snapshot) to its destination failed.
    #[error("error writing the snapshot: {0}")]
    Sink(String),
}

impl ClientError {
    /// The HTTP status when the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api(e) => Some(e.status),
            _ => None,
        }
    }

    /// The server's `errors` list (empty for anything but an API error).
    pub fn errors(&self) -> &[String] {
        match self {
            ClientError::Api(e) => &e.errors,
            _ => &[],
        }
    }

    /// True when the server said the barrier is sealed.
    pub fn is_sealed(&self) -> bool {
        self.status() == Some(503) && self.errors().iter().any(|e| e.contains("Vault is sealed"))
    }
}

/// A status >= 400 from the server, with its `{"errors":[...]}` list.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub errors: Vec<String>,
    /// The body was not Vault's error JSON; `errors` then holds the raw body, if any.
    pub raw: bool,
    /// The JSON body, kept because some error answers carry data (a deleted KV version's
    /// metadata, a standby's health).
    pub body: Option<serde_json::Value>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.raw { "Raw Message" } else { "Errors" };
        write!(
            f,
            "Error making API request.\n\nURL: {} {}\nCode: {}. {}:\n\n",
            self.method, self.url, self.status, kind
        )?;
        if self.raw {
            return f.write_str(self.errors.first().map(String::as_str).unwrap_or(""));
        }
        let items: Vec<String> = self.errors.iter().map(|e| format!("* {e}")).collect();
        f.write_str(&items.join("\n"))
    }
}
