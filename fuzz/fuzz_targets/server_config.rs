//! The server config parser (`keyhold_config::ServerConfig::parse_str`) on any text, as HCL and
//! as JSON: it answers a config or an error, never panics; every error names the file and a
//! line inside the text, and never quotes a value that may be a secret (the contract of
//! `ConfigError`); a config that parses goes through `validate_semantics`, `problems` and
//! `unsupported`.
#![no_main]

use keyhold_config::{ConfigError, ServerConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for file in ["fuzz.hcl", "fuzz.json"] {
        match ServerConfig::parse_str(text, file) {
            Ok(config) => {
                for e in config
                    .validate_semantics()
                    .err()
                    .into_iter()
                    .chain(config.problems())
                    .chain(config.unsupported())
                {
                    check_error(&e, file, text);
                }
            }
            Err(e) => check_error(&e, file, text),
        }
    }
});

fn check_error(e: &ConfigError, file: &str, text: &str) {
    assert_eq!(e.location.file, file, "{e}");
    let lines = text.split('\n').count();
    assert!(
        e.location.line <= lines,
        "line {} of {lines}: {e}",
        e.location.line
    );
    let shown = e.to_string();
    for value in quoted_values(text) {
        assert!(
            !shown.contains(value),
            "the error quotes the value {value:?}: {shown}"
        );
    }
}

/// The string values assigned in `text` to keys that may hold a secret (`token`, `secret_key`,
/// `password`, ... but not a `*_file` path), written `key = "value"` or `"key": "value"`, those
/// long enough to find and not also written elsewhere (an error may name a key or a label).
fn quoted_values(text: &str) -> Vec<&str> {
    const SECRET: &[&str] = &["token", "secret", "key", "password", "credential", "hmac"];
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('"') {
        let before = rest[..i].trim_end();
        let after = &rest[i + 1..];
        let Some(end) = after.find('"') else { break };
        let value = &after[..end];
        let key = before
            .strip_suffix('=')
            .or_else(|| before.strip_suffix(':'))
            .map(|k| k.trim_end().trim_end_matches('"'))
            .map(|k| {
                k.rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("")
            });
        if let Some(key) = key {
            let key = key.to_ascii_lowercase();
            if SECRET.iter().any(|s| key.contains(s))
                && !key.ends_with("_file")
                && value.len() >= 12
                && value.bytes().all(|b| b.is_ascii_alphanumeric())
                && text.matches(value).count() == 1
            {
                out.push(value);
            }
        }
        rest = &after[end + 1..];
    }
    out
}
