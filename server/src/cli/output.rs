//! How results are printed, as the `vault` CLI prints them: `Key  Value` tables built like
//! Go's columnize, `%v`-style values, human durations, JSON with two-space indents, and the
//! `-field` raw output.

use std::io::{IsTerminal, Write};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::client::Secret;

use super::CliError;

/// The output format picked by `-format` or `VAULT_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, CliError> {
        match s.to_ascii_lowercase().as_str() {
            "" | "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "yaml" | "yml" => Ok(Format::Yaml),
            other => Err(CliError::Usage(format!("Invalid output format: {other}"))),
        }
    }
}

/// Where output goes. Tests capture it in buffers.
pub struct Ui {
    pub out: Box<dyn Write>,
    pub err: Box<dyn Write>,
    pub format: Format,
    /// `-field`: print only this field, raw.
    pub field: Option<String>,
    /// Whether stdout is a terminal (`-field` output ends with a newline only then).
    pub stdout_tty: bool,
}

impl Ui {
    pub fn stdio(format: Format, field: Option<String>) -> Ui {
        Ui {
            out: Box::new(std::io::stdout()),
            err: Box::new(std::io::stderr()),
            format,
            field,
            stdout_tty: std::io::stdout().is_terminal(),
        }
    }

    /// Prints `text` and a newline on stdout. Write errors (a closed pipe) are ignored, as
    /// there is nowhere left to report them.
    pub fn output(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
    }

    /// Prints on stderr: warnings and errors.
    pub fn warn(&mut self, text: &str) {
        let _ = writeln!(self.err, "{text}");
    }

    pub fn is_table(&self) -> bool {
        self.format == Format::Table
    }

    /// Prints `data` in the chosen structured format; `table` is done by the caller.
    pub fn structured<T: Serialize>(&mut self, data: &T) -> Result<(), CliError> {
        let value = serde_json::to_value(data)
            .map_err(|e| CliError::Local(format!("Could not parse output: {e}")))?;
        let text = match self.format {
            Format::Json | Format::Table => to_json(&value),
            Format::Yaml => to_yaml(&value),
        };
        self.output(&text);
        Ok(())
    }

    /// Prints a field's value raw, as `-field` asks.
    pub fn raw_field(&mut self, value: &Value) -> Result<(), CliError> {
        let text = match (value, self.format) {
            (Value::String(s), _) => s.clone(),
            (v, Format::Json) => to_json(v),
            (v, Format::Yaml) => to_yaml(v),
            (v, Format::Table) => go_value(v),
        };
        let _ = if self.stdout_tty {
            writeln!(self.out, "{text}")
        } else {
            write!(self.out, "{text}")
        };
        Ok(())
    }

    /// Prints a logical response the way `vault read` does, honouring `-field` and `-format`.
    pub fn secret(&mut self, secret: &Secret) -> Result<(), CliError> {
        if let Some(field) = self.field.clone() {
            let value = secret_field(secret, &field).ok_or_else(|| {
                CliError::Local(format!("Field \"{field}\" not present in secret"))
            })?;
            return self.raw_field(&value);
        }
        match self.format {
            Format::Table => {
                self.print_warnings(secret.warnings.as_deref().unwrap_or_default());
                let table = secret_table(secret);
                if !table.is_empty() {
                    self.output(&table);
                }
                Ok(())
            }
            _ => self.structured(secret),
        }
    }

    /// Prints a map of values (`-field` picks one) as a `Key Value` table or structured.
    pub fn map(&mut self, data: &Map<String, Value>) -> Result<(), CliError> {
        if let Some(field) = self.field.clone() {
            let value = data.get(&field).ok_or_else(|| {
                CliError::Local(format!("Field \"{field}\" not present in secret"))
            })?;
            return self.raw_field(value);
        }
        match self.format {
            Format::Table => {
                let table = map_table(data);
                if !table.is_empty() {
                    self.output(&table);
                }
                Ok(())
            }
            _ => self.structured(data),
        }
    }

    pub fn print_warnings(&mut self, warnings: &[String]) {
        if warnings.is_empty() {
            return;
        }
        self.warn("WARNING! The following warnings were returned from Vault:\n");
        for w in warnings {
            self.warn(&wrap_at_length_with_padding(&format!("* {w}"), 2));
            self.warn("");
        }
    }
}

/// Looks `field` up in a logical response: the token fields of `auth`, the lease fields,
/// then `data`, as vault's `PrintRawField` does.
pub fn secret_field(secret: &Secret, field: &str) -> Option<Value> {
    if let Some(auth) = &secret.auth {
        let v = match field {
            "token" => Some(Value::from(auth.client_token.clone())),
            "token_accessor" => Some(Value::from(auth.accessor.clone())),
            "token_duration" => Some(Value::from(human_duration(auth.lease_duration))),
            "token_renewable" => Some(Value::from(auth.renewable)),
            "token_policies" => Some(Value::from(auth.token_policies.clone())),
            "identity_policies" => Some(Value::from(
                auth.identity_policies.clone().unwrap_or_default(),
            )),
            "policies" => Some(Value::from(auth.policies.clone())),
            _ => None,
        };
        if v.is_some() {
            return v;
        }
    }
    match field {
        "lease_id" => return Some(Value::from(secret.lease_id.clone())),
        "lease_duration" => return Some(Value::from(human_duration(secret.lease_duration))),
        "lease_renewable" => return Some(Value::from(secret.renewable)),
        "refresh_interval" => return Some(Value::from(human_duration(secret.lease_duration))),
        _ => {}
    }
    secret.data.as_ref()?.get(field).cloned()
}

/// `vault read`'s table: lease rows, token rows, then the data keys sorted.
pub fn secret_table(secret: &Secret) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let row = |k: &str, v: String| vec![k.to_string(), v];
    if secret.lease_duration > 0 {
        if secret.lease_id.is_empty() {
            rows.push(row(
                "refresh_interval",
                human_duration(secret.lease_duration),
            ));
        } else {
            rows.push(row("lease_id", secret.lease_id.clone()));
            rows.push(row("lease_duration", human_duration(secret.lease_duration)));
            rows.push(row("lease_renewable", secret.renewable.to_string()));
        }
    }
    if let Some(auth) = &secret.auth {
        rows.push(row("token", auth.client_token.clone()));
        rows.push(row("token_accessor", auth.accessor.clone()));
        let duration = if auth.lease_duration == 0 {
            "∞".to_string()
        } else {
            human_duration(auth.lease_duration)
        };
        rows.push(row("token_duration", duration));
        rows.push(row("token_renewable", auth.renewable.to_string()));
        rows.push(row("token_policies", go_quoted_list(&auth.token_policies)));
        rows.push(row(
            "identity_policies",
            go_quoted_list(auth.identity_policies.as_deref().unwrap_or_default()),
        ));
        rows.push(row("policies", go_quoted_list(&auth.policies)));
        if let Some(meta) = &auth.metadata {
            for (k, v) in meta {
                rows.push(row(&format!("token_meta_{k}"), go_value(v)));
            }
        }
    }
    if let Some(data) = &secret.data {
        rows.extend(map_rows(data));
    }
    if rows.is_empty() {
        return String::new();
    }
    table(&["Key", "Value"], &rows)
}

/// A `Key Value` table of a map, keys sorted, durations humanised.
pub fn map_table(data: &Map<String, Value>) -> String {
    if data.is_empty() {
        return String::new();
    }
    table(&["Key", "Value"], &map_rows(data))
}

fn map_rows(data: &Map<String, Value>) -> Vec<Vec<String>> {
    let mut keys: Vec<&String> = data.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let v = &data[k];
            let text = if looks_like_duration(k) {
                duration_value(v)
            } else {
                go_value(v)
            };
            vec![k.clone(), text]
        })
        .collect()
}

/// A table with a header, a `---` underline and rows, as vault's `tableOutput`.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut all: Vec<Vec<String>> = Vec::with_capacity(rows.len() + 2);
    all.push(header.iter().map(|h| h.to_string()).collect());
    all.push(
        header
            .iter()
            .map(|h| "-".repeat(h.chars().count()))
            .collect(),
    );
    all.extend(rows.iter().cloned());
    columns(&all)
}

/// Go's columnize with vault's settings: cells trimmed, empty cells shown as `n/a`, columns
/// separated by four spaces, the last column not padded.
pub fn columns(rows: &[Vec<String>]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| {
                    let c = c.trim();
                    if c.is_empty() {
                        "n/a".to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        })
        .collect();
    let ncols = cells.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; ncols];
    for r in &cells {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let lines: Vec<String> = cells
        .iter()
        .map(|r| {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    line.push_str(&" ".repeat(widths[i] - c.chars().count() + 4));
                }
            }
            line
        })
        .collect();
    lines.join("\n")
}

/// vault's `looksLikeDuration`.
pub fn looks_like_duration(k: &str) -> bool {
    k == "period"
        || k.ends_with("_period")
        || k == "ttl"
        || k.ends_with("_ttl")
        || k == "duration"
        || k.ends_with("_duration")
        || k == "lease_max"
        || k == "ttl_max"
}

fn duration_value(v: &Value) -> String {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(human_duration)
            .unwrap_or_else(|| n.to_string()),
        Value::String(s) => s
            .parse::<i64>()
            .map(human_duration)
            .unwrap_or_else(|_| s.clone()),
        other => go_value(other),
    }
}

/// Seconds as Go prints a `time.Duration`, trimmed like vault's `humanDuration`:
/// `0s`, `45s`, `1m30s`, `1h`, `768h`, `1h0m5s` -> `1h5s`.
pub fn human_duration(secs: i64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let sign = if secs < 0 { "-" } else { "" };
    let s = secs.unsigned_abs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    let mut text = if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    };
    if text.ends_with("m0s") {
        text.truncate(text.len() - 2);
    }
    if let Some(idx) = text.find("h0m") {
        text.replace_range(idx + 1..idx + 3, "");
    }
    format!("{sign}{text}")
}

/// A JSON value as Go's `%v` prints the decoded value: `<nil>`, `[a b]`, `map[k:v]`.
pub fn go_value(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(go_value).collect();
            format!("[{}]", parts.join(" "))
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{k}:{}", go_value(&map[k])))
                .collect();
            format!("map[{}]", parts.join(" "))
        }
    }
}

/// A string list as Go's `%q` prints a `[]string`: `["default" "admin"]`.
pub fn go_quoted_list(items: &[String]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", parts.join(" "))
}

pub fn to_json(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A small YAML writer for JSON values: enough for `-format=yaml` of API answers.
pub fn to_yaml(v: &Value) -> String {
    fn scalar(v: &Value) -> String {
        match v {
            Value::Null => "null".into(),
            Value::String(s) => {
                let plain = !s.is_empty()
                    && !s.contains([':', '#', '\n', '"', '\'', '{', '}', '[', ']', ',', '&', '*'])
                    && !s.starts_with([' ', '-', '?', '!', '|', '>', '%', '@', '`'])
                    && !s.ends_with(' ')
                    && !matches!(s.as_str(), "true" | "false" | "null" | "yes" | "no" | "~")
                    && s.parse::<f64>().is_err();
                if plain {
                    s.clone()
                } else {
                    serde_json::to_string(s).unwrap_or_default()
                }
            }
            other => other.to_string(),
        }
    }
    fn write(v: &Value, indent: usize, out: &mut Vec<String>) {
        let pad = " ".repeat(indent);
        match v {
            Value::Object(map) if !map.is_empty() => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                for k in keys {
                    let child = &map[k];
                    match child {
                        Value::Object(m) if !m.is_empty() => {
                            out.push(format!("{pad}{k}:"));
                            write(child, indent + 2, out);
                        }
                        Value::Array(a) if !a.is_empty() => {
                            out.push(format!("{pad}{k}:"));
                            write(child, indent, out);
                        }
                        _ => out.push(format!("{pad}{k}: {}", inline(child))),
                    }
                }
            }
            Value::Array(items) if !items.is_empty() => {
                for item in items {
                    match item {
                        Value::Object(m) if !m.is_empty() => {
                            let mut nested = Vec::new();
                            write(item, indent + 2, &mut nested);
                            if let Some(first) = nested.first_mut() {
                                *first = format!("{pad}- {}", first.trim_start());
                            }
                            out.extend(nested);
                        }
                        Value::Array(a) if !a.is_empty() => {
                            out.push(format!("{pad}-"));
                            write(item, indent + 2, out);
                        }
                        _ => out.push(format!("{pad}- {}", inline(item))),
                    }
                }
            }
            other => out.push(format!("{pad}{}", inline(other))),
        }
    }
    fn inline(v: &Value) -> String {
        match v {
            Value::Object(_) => "{}".into(),
            Value::Array(_) => "[]".into(),
            other => scalar(other),
        }
    }
    let mut out = Vec::new();
    write(v, 0, &mut out);
    out.join("\n")
}

/// Greedy word wrap at 78 columns, each line indented by `pad`, as vault's
/// `wrapAtLengthWithPadding`.
pub fn wrap_at_length_with_padding(text: &str, pad: usize) -> String {
    let width = 78 - pad;
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        for word in paragraph.split(' ').filter(|w| !w.is_empty()) {
            if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
        .into_iter()
        .map(|l| format!("{}{l}", " ".repeat(pad)))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn wrap_at_length(text: &str) -> String {
    wrap_at_length_with_padding(text, 0)
}

/// `== Title ==` centred over `total_len` columns, as vault's `padEqualSigns`.
pub fn pad_equal_signs(header: &str, total_len: usize) -> String {
    let mut signs = total_len as i64 - (header.len() as i64 + 2);
    if signs <= 0 {
        signs = 4;
    }
    if signs % 2 != 0 {
        signs += 1;
    }
    let side = "=".repeat((signs / 2) as usize);
    format!("{side} {header} {side}")
}

/// The header over a map's table: as wide as its longest key plus `    Value`.
pub fn header_for_map(header: &str, data: &Map<String, Value>) -> String {
    let max_key = data.keys().map(String::len).max().unwrap_or(0);
    pad_equal_signs(header, max_key + 4 + 5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn human_durations() {
        for (secs, expect) in [
            (0, "0s"),
            (45, "45s"),
            (90, "1m30s"),
            (120, "2m"),
            (3600, "1h"),
            (3605, "1h5s"),
            (2_764_800, "768h"),
            (86_399, "23h59m59s"),
        ] {
            assert_eq!(human_duration(secs), expect, "{secs}");
        }
    }

    #[test]
    fn go_values() {
        for (v, expect) in [
            (json!(null), "<nil>"),
            (json!("x"), "x"),
            (json!(3), "3"),
            (json!(["a", "b"]), "[a b]"),
            (json!({"b": 1, "a": {"c": true}}), "map[a:map[c:true] b:1]"),
        ] {
            assert_eq!(go_value(&v), expect);
        }
    }

    #[test]
    fn columnize_pads_all_but_the_last_column() {
        let rows = vec![
            vec!["a".to_string(), "1".to_string(), "x".to_string()],
            vec!["long".to_string(), String::new(), "y".to_string()],
        ];
        assert_eq!(columns(&rows), "a       1      x\nlong    n/a    y");
    }

    #[test]
    fn equal_sign_headers() {
        assert_eq!(pad_equal_signs("Secret Path", 15), "= Secret Path =");
        assert_eq!(pad_equal_signs("Data", 4), "== Data ==");
        assert_eq!(pad_equal_signs("Metadata", 24), "======= Metadata =======");
    }

    #[test]
    fn yaml_output() {
        let v = json!({"b": [1, "x: y"], "a": {"c": null}, "d": "plain", "e": []});
        assert_eq!(
            to_yaml(&v),
            "a:\n  c: null\nb:\n- 1\n- \"x: y\"\nd: plain\ne: []"
        );
    }

    #[test]
    fn wraps_at_78() {
        let text = "word ".repeat(20);
        let wrapped = wrap_at_length(text.trim());
        assert!(wrapped.lines().all(|l| l.len() <= 78));
        assert_eq!(wrapped.lines().count(), 2);
    }
}
