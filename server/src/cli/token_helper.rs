//! `~/.vault-token`, where `login` stores the token and every command finds it, as vault's
//! default token helper does.

use std::io::Write;
use std::path::PathBuf;

use super::CliError;

pub fn token_path() -> Result<PathBuf, CliError> {
    let home = std::env::var("HOME")
        .ok()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| CliError::Local("Error storing token: HOME is not set".into()))?;
    Ok(crate::client::token_file_path(&home))
}

/// Writes the token with mode 0600, replacing any previous one.
pub fn store(token: &str) -> Result<(), CliError> {
    let path = token_path()?;
    let fail = |e: std::io::Error| {
        CliError::Local(format!("Error storing token in {}: {e}", path.display()))
    };
    let _ = std::fs::remove_file(&path);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(&path).map_err(fail)?;
    file.write_all(token.as_bytes()).map_err(fail)?;
    Ok(())
}
