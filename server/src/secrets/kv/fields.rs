//! Reading request fields the way Vault's field parser does (weakly typed:
//! `"3"` is a fine integer), and writing times and durations the way Go
//! prints them, so responses match Vault's byte for byte where clients look.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::client::go_duration::parse_duration;
use crate::error::{Error, Result};

fn conversion_error(field: &str, value: &Value, expected: &str) -> Error {
    Error::invalid(format!(
        "error converting input {value} for field {field:?}: expected {expected}"
    ))
}

/// An integer field (`TypeInt`): a JSON number or a numeric string.
pub(crate) fn int(data: &Map<String, Value>, field: &str) -> Result<Option<i64>> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => int_value(value)
            .map(Some)
            .ok_or_else(|| conversion_error(field, value, "an integer")),
    }
}

fn int_value(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A boolean field (`TypeBool`): a JSON bool, or what Go's `strconv.ParseBool` takes.
pub(crate) fn boolean(data: &Map<String, Value>, field: &str) -> Result<Option<bool>> {
    let parsed = match data.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) => match s.trim() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
            _ => None,
        },
        Some(Value::Number(n)) => match n.as_i64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Some(_) => None,
    };
    parsed
        .map(Some)
        .ok_or_else(|| conversion_error(field, &data[field], "a boolean"))
}

/// A list of version numbers (`TypeCommaIntSlice`): `[1, "2"]`, `"1,2"` or `3`.
pub(crate) fn versions(data: &Map<String, Value>) -> Result<Vec<u64>> {
    let bad = |v: &Value| conversion_error("versions", v, "a list of version numbers");
    let items: Vec<Value> = match data.get("versions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Value::String(s.to_string()))
            .collect(),
        Some(n @ Value::Number(_)) => vec![n.clone()],
        Some(other) => return Err(bad(other)),
    };
    items
        .iter()
        .map(|item| {
            int_value(item)
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| bad(item))
        })
        .collect()
}

/// A duration in whole seconds (`TypeSignedDurationSecond`): a number of
/// seconds, or a Go duration string, optionally negative (`"-1s"`).
pub(crate) fn signed_duration_secs(data: &Map<String, Value>, field: &str) -> Result<Option<i64>> {
    let bad = |detail: String| Error::invalid(format!("{field}: {detail}"));
    match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| bad(format!("expected a whole number of seconds, got {n}"))),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(Some(0)),
        Some(Value::String(s)) => {
            let s = s.trim();
            let (sign, magnitude) = match s.strip_prefix('-') {
                Some(rest) => (-1, rest),
                None => (1, s.strip_prefix('+').unwrap_or(s)),
            };
            let duration = parse_duration(magnitude).map_err(bad)?;
            let secs = i64::try_from(duration.as_secs())
                .map_err(|_| bad(format!("duration {s:?} is too long")))?;
            Ok(Some(sign * secs))
        }
        Some(other) => Err(bad(format!(
            "expected a duration such as \"30s\" or \"1h\", got {other}"
        ))),
    }
}

/// Seconds printed as Go's `time.Duration.String()` does: `0s`, `1m30s`, `768h0m0s`.
pub(crate) fn go_duration(secs: i64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let sign = if secs < 0 { "-" } else { "" };
    let total = secs.unsigned_abs();
    let (hours, minutes, seconds) = (total / 3600, total % 3600 / 60, total % 60);
    if hours > 0 {
        format!("{sign}{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{sign}{minutes}m{seconds}s")
    } else {
        format!("{sign}{seconds}s")
    }
}

/// A time as Go's RFC 3339 "nano" layout prints it: UTC, `Z`, and the
/// fraction with trailing zeros dropped (`2018-03-22T02:24:06.94531921Z`).
pub(crate) fn timestamp(time: &DateTime<Utc>) -> String {
    let full = time.to_rfc3339_opts(SecondsFormat::Nanos, true);
    // `full` always ends in `.nnnnnnnnnZ`.
    let (stamp, _) = full.split_at(full.len() - 1);
    let trimmed = stamp.trim_end_matches('0').trim_end_matches('.');
    format!("{trimmed}Z")
}

/// An optional time as Vault prints it: `""` when unset.
pub(crate) fn optional_timestamp(time: Option<&DateTime<Utc>>) -> String {
    time.map(timestamp).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn go_durations() {
        for (secs, expected) in [
            (0, "0s"),
            (59, "59s"),
            (90, "1m30s"),
            (3600, "1h0m0s"),
            (768 * 3600, "768h0m0s"),
            (3661, "1h1m1s"),
            (-1, "-1s"),
        ] {
            assert_eq!(go_duration(secs), expected, "{secs}");
        }
    }

    #[test]
    fn timestamps_trim_like_go() {
        for (input, expected) in [
            (
                "2018-03-22T02:24:06.945319214Z",
                "2018-03-22T02:24:06.945319214Z",
            ),
            (
                "2018-03-22T02:24:06.945319210Z",
                "2018-03-22T02:24:06.94531921Z",
            ),
            ("2018-03-22T02:24:06.5Z", "2018-03-22T02:24:06.5Z"),
            ("2018-03-22T02:24:06Z", "2018-03-22T02:24:06Z"),
            ("2018-03-22T04:24:06+02:00", "2018-03-22T02:24:06Z"),
        ] {
            let time = DateTime::parse_from_rfc3339(input)
                .unwrap()
                .with_timezone(&Utc);
            assert_eq!(timestamp(&time), expected, "{input}");
        }
    }

    #[test]
    fn weak_fields() {
        let data = map(json!({
            "n": "3", "f": 4.0, "b": "true", "v1": [1, "2"], "v2": "3, 4", "v3": 5,
            "d1": "1h", "d2": "-1s", "d3": 30, "bad": {"x": 1},
        }));
        assert_eq!(int(&data, "n").unwrap(), Some(3));
        assert_eq!(int(&data, "f").unwrap(), Some(4));
        assert_eq!(int(&data, "missing").unwrap(), None);
        assert!(int(&data, "bad").is_err());
        assert_eq!(boolean(&data, "b").unwrap(), Some(true));
        assert!(boolean(&data, "bad").is_err());
        for (field, expected) in [("v1", vec![1, 2]), ("v2", vec![3, 4]), ("v3", vec![5])] {
            let mut one = Map::new();
            one.insert("versions".into(), data[field].clone());
            assert_eq!(versions(&one).unwrap(), expected, "{field}");
        }
        assert_eq!(signed_duration_secs(&data, "d1").unwrap(), Some(3600));
        assert_eq!(signed_duration_secs(&data, "d2").unwrap(), Some(-1));
        assert_eq!(signed_duration_secs(&data, "d3").unwrap(), Some(30));
        assert!(signed_duration_secs(&data, "bad").is_err());
    }
}
