//! Environment files (`environments/NAME.hcl`): reading, validation, defaults.
//!
//! The file is Vault-style HCL read by the server's own reader (`keyhold_config::section`),
//! so an unknown key, a wrong type or a bad value is refused the way a `vault.hcl` mistake is:
//! `file:line:column: message`, naming the key and what is allowed. Every mistake is found
//! before anything is created.

mod decode;
mod model;

pub use decode::is_executable;
pub use model::*;

use std::path::{Path, PathBuf};

use keyhold_config::ConfigError;

/// Where environment files live, relative to the working directory.
pub const ENVIRONMENTS_DIR: &str = "environments";

/// The environment used when `--env` is not given.
pub const DEFAULT_ENVIRONMENT: &str = "local";

/// Finds the file for `--env NAME`: a path to a file as given, else `environments/NAME.hcl`.
pub fn resolve(name_or_path: &str) -> PathBuf {
    let given = Path::new(name_or_path);
    if name_or_path.ends_with(".hcl") || name_or_path.contains('/') {
        return given.to_path_buf();
    }
    Path::new(ENVIRONMENTS_DIR).join(format!("{name_or_path}.hcl"))
}

/// Reads, checks and completes the environment in `file`.
pub fn load(file: &Path) -> Result<Environment, ConfigError> {
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "no such environment file; environments are read from {ENVIRONMENTS_DIR}/NAME.hcl \
                 (run provision from the directory that holds {ENVIRONMENTS_DIR}/, or pass a path)"
            )
        } else {
            format!("cannot read the environment file: {e}")
        };
        ConfigError::new(keyhold_config::Location::file(&shown), "", hint)
    })?;
    decode::decode(file, &shown, &text)
}

/// Parses environment text as if read from `file` (paths inside resolve against its directory).
pub fn parse_str(file: &Path, text: &str) -> Result<Environment, ConfigError> {
    decode::decode(file, &file.display().to_string(), text)
}

#[cfg(test)]
mod tests;
