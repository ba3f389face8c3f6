//! Readers for the request fields auth methods share, tolerant in the ways
//! Vault's field parser is (a list may arrive as a comma-separated string, a
//! number or bool as a string), plus policy-list sanitising.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::logical::parse_duration_field;

/// A list of strings: a JSON array, or a comma-separated string.
pub fn str_list(data: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>> {
    let items: Vec<String> = match data.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.split(',').map(str::to_string).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(Error::invalid(format!("{key}: expected a list of strings"))),
            })
            .collect::<Result<_>>()?,
        Some(_) => {
            return Err(Error::invalid(format!(
                "{key}: expected a list of strings or a comma-separated string"
            )))
        }
    };
    Ok(Some(
        items
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    ))
}

/// A boolean: JSON bool, or the strings `true`/`false`/`1`/`0`.
pub fn bool_field(data: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "t" => Ok(Some(true)),
            "false" | "0" | "f" => Ok(Some(false)),
            _ => Err(Error::invalid(format!("{key}: expected true or false"))),
        },
        Some(Value::Number(n)) => match n.as_i64() {
            Some(1) => Ok(Some(true)),
            Some(0) => Ok(Some(false)),
            _ => Err(Error::invalid(format!("{key}: expected true or false"))),
        },
        Some(_) => Err(Error::invalid(format!("{key}: expected true or false"))),
    }
}

/// An integer: JSON number or numeric string.
pub fn int_field(data: &Map<String, Value>, key: &str) -> Result<Option<i64>> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| Error::invalid(format!("{key}: expected an integer"))),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Error::invalid(format!("{key}: expected an integer"))),
        Some(_) => Err(Error::invalid(format!("{key}: expected an integer"))),
    }
}

/// A string field (numbers and bools stringified); `None` when absent.
pub fn str_field(data: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(Error::invalid(format!("{key}: expected a string"))),
    }
}

/// A duration in whole seconds (integer seconds or a Go duration string).
pub fn duration_secs(data: &Map<String, Value>, key: &str) -> Result<Option<u64>> {
    Ok(parse_duration_field(data, key)?.map(|d| d.as_secs()))
}

/// A map of strings: a JSON object, or a string holding a JSON object (as
/// AppRole's `metadata` arrives from the CLI).
pub fn string_map(
    data: &Map<String, Value>,
    key: &str,
) -> Result<Option<BTreeMap<String, String>>> {
    let object = match data.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(Some(BTreeMap::new())),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(Error::invalid(format!(
                    "{key}: expected a JSON object of string values"
                )))
            }
        },
        Some(Value::Object(map)) => map.clone(),
        Some(_) => {
            return Err(Error::invalid(format!(
                "{key}: expected an object of string values"
            )))
        }
    };
    object
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            Value::Number(n) => Ok((k, n.to_string())),
            Value::Bool(b) => Ok((k, b.to_string())),
            _ => Err(Error::invalid(format!(
                "{key}: value of {k:?} must be a string"
            ))),
        })
        .collect::<Result<_>>()
        .map(Some)
}

/// Vault's policy-list normal form: trimmed, lower-cased, sorted, no
/// duplicates; `default` added when asked; `root` swallows everything else.
pub fn sanitize_policies(policies: &[String], add_default: bool) -> Vec<String> {
    let mut out: Vec<String> = policies
        .iter()
        .map(|p| p.trim().to_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    if out.iter().any(|p| p == "root") {
        return vec!["root".to_string()];
    }
    if add_default {
        out.push("default".to_string());
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn lists_accept_arrays_and_commas() {
        let cases = [
            (json!({"p": ["a", "b"]}), Some(vec!["a", "b"])),
            (json!({"p": "a, b,,c"}), Some(vec!["a", "b", "c"])),
            (json!({"p": ""}), Some(vec![])),
            (json!({}), None),
        ];
        for (input, want) in cases {
            let got = str_list(&map(input.clone()), "p").unwrap();
            let want = want.map(|w| w.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(got, want, "{input}");
        }
        assert!(str_list(&map(json!({"p": {"a": 1}})), "p").is_err());
    }

    #[test]
    fn policies_sanitised() {
        let s = |v: &[&str], d| {
            sanitize_policies(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>(), d)
        };
        assert_eq!(s(&["B", "a", "a"], true), ["a", "b", "default"]);
        assert_eq!(s(&["root", "a"], true), ["root"]);
        assert_eq!(s(&[], false), Vec::<String>::new());
    }

    #[test]
    fn scalars() {
        let d = map(json!({"b": "true", "n": "3", "m": "{\"k\":\"v\"}", "bad": "x"}));
        assert_eq!(bool_field(&d, "b").unwrap(), Some(true));
        assert_eq!(int_field(&d, "n").unwrap(), Some(3));
        assert_eq!(
            string_map(&d, "m")
                .unwrap()
                .unwrap()
                .get("k")
                .map(String::as_str),
            Some("v")
        );
        assert!(bool_field(&d, "bad").is_err());
        assert!(int_field(&d, "bad").is_err());
    }
}
