//! The typed reader of one block body: checks the keys against those allowed there
//! (unknown key -> error naming the line and the allowed keys, with a did-you-mean), and
//! reads values as strings, booleans, numbers, durations, lists and labelled blocks.
//!
//! Shared by the server's config decoder and the provisioner's environment files, so both
//! speak Vault's HCL the same way and report mistakes the same way.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use super::error::{ConfigError, KeyLocations};
use super::syntax::{Entry, Node, Source, Value};
use super::TlsVersion;
use keyhold_client::go_duration::parse_duration;

/// One labelled block: `listener "tcp" { body }` or `{"listener": {"tcp": {...}}}`.
pub struct Labelled<'n> {
    pub label: &'n str,
    pub label_pos: usize,
    pub body: &'n Node,
    /// Where the stanza starts (the key in HCL, the label in JSON).
    pub pos: usize,
}

/// The entries of one block body, checked against the keys allowed there.
pub struct Section<'s, 'n> {
    pub src: &'s Source<'s>,
    /// Where the keys are, for messages: `in listener "tcp"`.
    place: Cow<'static, str>,
    /// Key path prefix: `listener.tcp`.
    path: Cow<'static, str>,
    entries: Vec<&'n Entry>,
    /// Where the block starts.
    pub pos: usize,
}

impl<'s, 'n> Section<'s, 'n> {
    pub fn new(
        src: &'s Source<'s>,
        node: &'n Node,
        place: impl Into<Cow<'static, str>>,
        path: impl Into<Cow<'static, str>>,
        allowed: &[&str],
        repeatable: &[&str],
    ) -> Result<Self, ConfigError> {
        let (place, path) = (place.into(), path.into());
        let Value::Object(object) = &node.value else {
            return Err(src.error(
                node.pos,
                &path,
                format!("{path}: expected a block, got {}", node.value.kind()),
            ));
        };
        let section = Section {
            src,
            place,
            path,
            entries: object.entries.iter().collect(),
            pos: node.pos,
        };
        for (i, entry) in object.entries.iter().enumerate() {
            let key = entry.key.as_str();
            if !allowed.contains(&key) {
                return Err(src.error(
                    entry.key_pos,
                    &section.key_path(key),
                    unknown_key_message(key, &section.place, allowed),
                ));
            }
            if !repeatable.contains(&key) {
                if let Some(first) = object.entries[..i].iter().find(|e| e.key == key) {
                    return Err(src.error(
                        entry.key_pos,
                        &section.key_path(key),
                        format!(
                            "{key:?} is set twice {}; the first is at line {}",
                            section.place,
                            src.location(first.key_pos).line
                        ),
                    ));
                }
            }
        }
        Ok(section)
    }

    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn locations(&self) -> KeyLocations {
        self.entries
            .iter()
            .map(|e| (e.key.clone(), self.src.location(e.key_pos)))
            .collect()
    }

    pub fn one(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
            .filter(|node| node.value != Value::Null)
    }

    pub fn value_error(&self, key: &str, message: impl std::fmt::Display) -> ConfigError {
        let pos = self.one(key).map_or(0, |n| n.pos);
        let path = self.key_path(key);
        self.src.error(pos, &path, format!("{path}: {message}"))
    }

    pub fn type_error(&self, key: &str, node: &Node, expected: &str) -> ConfigError {
        let path = self.key_path(key);
        self.src.error(
            node.pos,
            &path,
            format!("{path}: expected {expected}, got {}", node.value.kind()),
        )
    }

    /// A string; an empty string counts as not set, as in Vault.
    pub fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.one(key) {
            None => Ok(None),
            Some(Node {
                value: Value::Str(s),
                ..
            }) => Ok(Some(s.clone()).filter(|s| !s.is_empty())),
            Some(node) => Err(self.type_error(key, node, "a string")),
        }
    }

    pub fn required_string(&self, key: &str, what: &str) -> Result<String, ConfigError> {
        self.string(key)?.ok_or_else(|| self.missing(key, what))
    }

    pub fn missing(&self, key: &str, what: &str) -> ConfigError {
        let path = self.key_path(key);
        // The key may be present but empty (`path = ""`).
        let pos = self
            .entries
            .iter()
            .find(|e| e.key == key)
            .map_or(self.pos, |e| e.key_pos);
        self.src.error(
            pos,
            &path,
            format!(
                "{key} is required {}: set it to {what}",
                self.place.trim_start_matches("at ")
            ),
        )
    }

    pub fn path(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self.string(key)?.map(PathBuf::from))
    }

    pub fn required_path(&self, key: &str, what: &str) -> Result<PathBuf, ConfigError> {
        self.path(key)?.ok_or_else(|| self.missing(key, what))
    }

    /// A bool, or a string Go's `strconv.ParseBool` accepts, or 0/1: Vault
    /// takes all of these, and configs written for it use them.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        let Some(node) = self.one(key) else {
            return Ok(None);
        };
        match &node.value {
            Value::Bool(b) => Ok(Some(*b)),
            Value::Int(0) => Ok(Some(false)),
            Value::Int(1) => Ok(Some(true)),
            Value::Str(s) => match s.as_str() {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(Some(true)),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(Some(false)),
                _ => Err(self.type_error(key, node, "true or false")),
            },
            _ => Err(self.type_error(key, node, "true or false")),
        }
    }

    /// A whole number, or a string holding one.
    pub fn int(&self, key: &str) -> Result<Option<i64>, ConfigError> {
        let Some(node) = self.one(key) else {
            return Ok(None);
        };
        match &node.value {
            Value::Int(i) => Ok(Some(*i)),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(*f as i64)),
            Value::Str(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| self.type_error(key, node, "a whole number")),
            _ => Err(self.type_error(key, node, "a whole number")),
        }
    }

    pub fn uint(&self, key: &str, max: u64) -> Result<Option<u64>, ConfigError> {
        match self.int(key)? {
            None => Ok(None),
            Some(i) if i < 0 => Err(self.value_error(key, "must not be negative")),
            Some(i) if i.unsigned_abs() > max => {
                Err(self.value_error(key, format!("must be at most {max}")))
            }
            Some(i) => Ok(Some(i.unsigned_abs())),
        }
    }

    pub fn u32(&self, key: &str) -> Result<Option<u32>, ConfigError> {
        Ok(self
            .uint(key, u32::MAX.into())?
            .and_then(|n| u32::try_from(n).ok()))
    }

    pub fn port(&self, key: &str) -> Result<Option<u16>, ConfigError> {
        match self.uint(key, u16::MAX.into())? {
            Some(0) => Err(self.value_error(key, "must be a port number from 1 to 65535")),
            n => Ok(n.and_then(|n| u16::try_from(n).ok())),
        }
    }

    /// A Go-style duration string, or a number of seconds (HCL1 habit).
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        const EXPECTED: &str = "a duration such as \"90s\" or \"1h\"";
        let Some(node) = self.one(key) else {
            return Ok(None);
        };
        match &node.value {
            Value::Int(i) if *i >= 0 => Ok(Some(Duration::from_secs(i.unsigned_abs()))),
            Value::Float(f) if *f >= 0.0 && f.is_finite() => Ok(Some(Duration::from_secs_f64(*f))),
            Value::Int(_) | Value::Float(_) => Err(self.value_error(key, "must not be negative")),
            Value::Str(s) if s.trim().is_empty() => Ok(None),
            Value::Str(s) => parse_duration(s)
                .map(Some)
                .map_err(|e| self.value_error(key, format!("{e}; expected {EXPECTED}"))),
            _ => Err(self.type_error(key, node, EXPECTED)),
        }
    }

    /// A list of strings, or one comma-separated string (Vault's form for
    /// `tls_cipher_suites`).
    pub fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        const EXPECTED: &str = "a comma-separated string or a list of strings";
        let Some(node) = self.one(key) else {
            return Ok(None);
        };
        let items: Vec<String> = match &node.value {
            Value::Str(s) => s.split(',').map(|s| s.trim().to_string()).collect(),
            Value::List(items) => items
                .iter()
                .map(|item| match &item.value {
                    Value::Str(s) => Ok(s.trim().to_string()),
                    _ => Err(self.type_error(key, item, EXPECTED)),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(self.type_error(key, node, EXPECTED)),
        };
        Ok(Some(items.into_iter().filter(|s| !s.is_empty()).collect()))
    }

    pub fn tls_version(&self, key: &str) -> Result<Option<TlsVersion>, ConfigError> {
        match self.string(key)?.as_deref() {
            None => Ok(None),
            Some("tls12") => Ok(Some(TlsVersion::Tls12)),
            Some("tls13") => Ok(Some(TlsVersion::Tls13)),
            Some(old @ ("tls10" | "tls11")) => Err(self.value_error(
                key,
                format!("{old:?} is insecure and not supported; use \"tls12\" or \"tls13\""),
            )),
            Some(other) => Err(self.value_error(
                key,
                format!("unknown TLS version {other:?}; use \"tls12\" or \"tls13\""),
            )),
        }
    }

    /// Every body given for an unlabelled block key such as `telemetry` or
    /// `retry_join`: one block, repeated blocks, or a JSON list of objects.
    pub fn blocks(&self, key: &str) -> Result<Vec<&'n Node>, ConfigError> {
        let mut out = Vec::new();
        for entry in self.entries.iter().filter(|e| e.key == key) {
            match &entry.value.value {
                Value::Object(_) => out.push(&entry.value),
                Value::List(items) => {
                    for item in items {
                        match item.value {
                            Value::Object(_) => out.push(item),
                            _ => return Err(self.type_error(key, item, "a block")),
                        }
                    }
                }
                _ => return Err(self.type_error(key, &entry.value, "a block")),
            }
        }
        Ok(out)
    }

    /// Every labelled block under `key`, in the order written.
    pub fn labelled(&self, key: &str, example: &str) -> Result<Vec<Labelled<'n>>, ConfigError> {
        let mut out = Vec::new();
        for entry in self.entries.iter().filter(|e| e.key == key) {
            self.collect_labelled(key, example, &entry.value, entry.key_pos, &mut out)?;
        }
        Ok(out)
    }

    fn collect_labelled(
        &self,
        key: &str,
        example: &str,
        node: &'n Node,
        pos: usize,
        out: &mut Vec<Labelled<'n>>,
    ) -> Result<(), ConfigError> {
        match &node.value {
            Value::Object(object) if object.is_block_body => Err(self.src.error(
                pos,
                key,
                format!("a {key} block needs a type label, e.g. {example}"),
            )),
            Value::Object(object) => {
                for labelled in &object.entries {
                    let body = &labelled.value;
                    let bodies: Vec<&Node> = match &body.value {
                        Value::List(items) => items.iter().collect(),
                        _ => vec![body],
                    };
                    for body in bodies {
                        if !matches!(body.value, Value::Object(_)) {
                            return Err(self.type_error(key, body, "a block"));
                        }
                        out.push(Labelled {
                            label: &labelled.key,
                            label_pos: labelled.key_pos,
                            body,
                            pos: pos.min(labelled.key_pos),
                        });
                    }
                }
                Ok(())
            }
            Value::List(items) => {
                for item in items {
                    self.collect_labelled(key, example, item, item.pos, out)?;
                }
                Ok(())
            }
            _ => Err(self.type_error(key, node, &format!("a block such as {example}"))),
        }
    }
}

fn unknown_key_message(key: &str, place: &str, allowed: &[&str]) -> String {
    let suggestion = allowed
        .iter()
        .map(|a| (edit_distance(key, a), a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min()
        .map(|(_, a)| format!(" (did you mean {a:?}?)"))
        .unwrap_or_default();
    if allowed.is_empty() {
        format!("unknown key {key:?} {place}{suggestion}; this block takes no keys")
    } else {
        format!(
            "unknown key {key:?} {place}{suggestion}; allowed: {}",
            allowed.join(", ")
        )
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j] + 1).min(row[j + 1] + 1).min(prev + cost);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}
