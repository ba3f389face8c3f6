//! `keyhold server`: load config, open storage, build the core, serve HTTP
//! until SIGINT/SIGTERM.

use std::path::PathBuf;

/// Arguments of `keyhold server`, parsed by `cli`.
#[derive(Debug, Clone, Default)]
pub struct ServerArgs {
    /// `-config=FILE|DIR`, repeatable.
    pub config: Vec<PathBuf>,
    /// `-dev`: in-memory, TLS off, initialised and unsealed at start.
    pub dev: bool,
    /// `-dev-root-token-id`.
    pub dev_root_token_id: Option<String>,
    /// `-dev-listen-address` (default 127.0.0.1:8200).
    pub dev_listen_address: Option<String>,
    /// `-check`: validate the config and exit.
    pub check: bool,
    /// `-log-level`, overriding the config file.
    pub log_level: Option<String>,
}

/// Runs the server until it is told to stop. `Ok(())` is a clean shutdown.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("the server is still being assembled")
}
