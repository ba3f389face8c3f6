//! Where a config value was written, and the one error type every config
//! failure becomes: it always names the file, and the line and key when known.

use std::collections::BTreeMap;
use std::fmt;

/// A place in a config file. `line` and `column` are 1-based; 0 means the
/// place is not known (a config built in code, or a whole-file problem).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl Location {
    pub fn new(file: impl Into<String>, line: usize, column: usize) -> Self {
        Location {
            file: file.into(),
            line,
            column,
        }
    }

    /// A whole file, with no line.
    pub fn file(file: impl Into<String>) -> Self {
        Location::new(file, 0, 0)
    }

    pub fn is_known(&self) -> bool {
        self.line > 0
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.file.is_empty(), self.line) {
            (true, 0) => f.write_str("<built-in config>"),
            (false, 0) => f.write_str(&self.file),
            _ => write!(f, "{}:{}:{}", self.file, self.line, self.column),
        }
    }
}

/// Where each key of one block was written, by key name. Empty for configs
/// built in code; used so that `validate` and `unsupported` can point at a line.
pub type KeyLocations = BTreeMap<String, Location>;

/// A config problem a user can fix. Displays as `file:line:column: message`,
/// and the message names the key and says what is allowed or what to do.
/// It never holds a configured value that may be secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub location: Location,
    /// The dotted key path, e.g. `listener.tcp.tls_min_version`; empty when the
    /// problem is not about one key (a syntax error, a missing file).
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(location: Location, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            location,
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn file(&self) -> &str {
        &self.location.file
    }

    pub fn line(&self) -> usize {
        self.location.line
    }

    pub fn column(&self) -> usize {
        self.location.column
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

impl std::error::Error for ConfigError {}
