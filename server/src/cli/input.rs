//! Reading secrets the user types: key shares, tokens, passwords. From a prompt without echo
//! when stdin is a terminal, else from stdin, so they never need to be in argv.

use std::io::{IsTerminal, Read};

use super::CliError;

/// Reads one secret value: `-` or a non-terminal stdin reads stdin (trimmed), a terminal
/// gets a prompt without echo.
pub fn read_secret(prompt: &str, arg: Option<&str>) -> Result<String, CliError> {
    match arg {
        Some("-") => read_stdin(),
        Some(v) => Ok(v.to_string()),
        None if std::io::stdin().is_terminal() => {
            let v = rpassword::prompt_password(prompt).map_err(|e| {
                CliError::Local(format!(
                    "Failed to read {}: {e}",
                    prompt.trim_end_matches([':', ' '])
                ))
            })?;
            Ok(v.trim().to_string())
        }
        None => read_stdin(),
    }
}

fn read_stdin() -> Result<String, CliError> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| CliError::Local(format!("Failed to read stdin: {e}")))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(CliError::Usage("Nothing was read from stdin".into()));
    }
    Ok(text)
}
