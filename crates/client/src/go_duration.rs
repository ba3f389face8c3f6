//! Durations as Vault reads and writes them, one parser for all: config files and API fields
//! ([`parse_duration`]), Go's `time.Duration` text (`String()`: `10s`, `24h0m0s`, `1.5s`,
//! `500ms`; `time.ParseDuration`), and `parseutil.ParseDurationSecond` (a bare number is
//! seconds, `7d` is days), which Vault's API and CLI flags use.

use std::time::Duration;

use serde_json::Value;

/// `d` as Go's `Duration.String()` prints it.
pub fn format_go_duration(d: Duration) -> String {
    const NS: u128 = 1;
    const US: u128 = 1_000 * NS;
    const MS: u128 = 1_000 * US;
    const S: u128 = 1_000 * MS;
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < US {
        return format!("{ns}ns");
    }
    if ns < MS {
        return format!("{}µs", decimal(ns, US));
    }
    if ns < S {
        return format!("{}ms", decimal(ns, MS));
    }
    let secs = ns / S;
    let (h, m) = (secs / 3600, (secs % 3600) / 60);
    let s = decimal(ns % (60 * S), S);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// `v / unit` with the fraction Go prints: no trailing zeros, no point when whole.
fn decimal(v: u128, unit: u128) -> String {
    let (whole, rem) = (v / unit, v % unit);
    if rem == 0 {
        return whole.to_string();
    }
    let digits = unit.to_string().len() - 1;
    let frac = format!("{rem:0digits$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// The one duration parser behind the three entry points below: a sum of `<number><unit>`
/// terms (`1h30m`, `1.5s`), Go's units plus `d` for days when `days` is set.
fn parse_terms(s: &str, days: bool) -> Result<Duration, String> {
    // The common units; `ms`, `us`, `ns` (and `d` where allowed) work too.
    let units = "s, m or h";
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut rest = s;
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return Err(format!(
                "invalid duration {s:?}: expected a number before the unit"
            ));
        }
        let number: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_end] {
            "ns" => 1e0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" if days => 86_400e9,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit (use {units})"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?} (use {units})"
                ))
            }
        };
        nanos += number * nanos_per_unit;
        rest = &rest[unit_end..];
    }
    if !nanos.is_finite() || nanos > u64::MAX as f64 {
        return Err(format!("invalid duration {s:?}: too long"));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

/// A duration in Vault's config files and API fields: bare seconds (`"3600"`) or terms with
/// the units `ns us ms s m h d` (`"768h"`, `"1h30m"`, `"7d"`). The error says what is wrong.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    parse_terms(s, true)
}

/// Go's `time.ParseDuration` for non-negative durations: `300ms`, `1.5h`, `2h45m`, `0`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    parse_terms(rest, false).ok()
}

/// Vault's `parseutil.ParseDurationSecond` for a string: empty is zero, a bare integer is
/// seconds, `<n>d` is days, anything else is a Go duration.
pub fn parse_duration_second(s: &str) -> Option<Duration> {
    if s.trim().is_empty() {
        return Some(Duration::ZERO);
    }
    parse_duration(s).ok()
}

/// [`parse_duration_second`] of a JSON value: numbers are seconds, null is zero.
pub fn duration_from_value(v: &Value) -> Option<Duration> {
    match v {
        Value::Null => Some(Duration::ZERO),
        Value::Number(n) => n
            .as_f64()
            .filter(|f| *f >= 0.0 && f.is_finite())
            .map(Duration::from_secs_f64),
        Value::String(s) => parse_duration_second(s),
        _ => None,
    }
}

/// Serde adapter for a duration field carried as Go text (`"10s"`) or seconds.
pub mod serde_go {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_go_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = Value::deserialize(d)?;
        super::duration_from_value(&v)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {v}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_go() {
        for (d, expect) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(86_400), "24h0m0s"),
            (Duration::from_secs(3_605), "1h0m5s"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1_500), "1.5ms"),
            (Duration::from_nanos(516_495_950), "516.49595ms"),
            (Duration::from_micros(100), "100µs"),
            (Duration::from_nanos(10), "10ns"),
        ] {
            assert_eq!(format_go_duration(d), expect, "{d:?}");
        }
    }

    #[test]
    fn parses_like_go_and_parseutil() {
        for (s, expect) in [
            ("10s", Some(Duration::from_secs(10))),
            ("24h", Some(Duration::from_secs(86_400))),
            ("24h0m0s", Some(Duration::from_secs(86_400))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("1.5h", Some(Duration::from_secs(5_400))),
            ("300ms", Some(Duration::from_millis(300))),
            ("0", Some(Duration::ZERO)),
            ("", Some(Duration::ZERO)),
            ("45", Some(Duration::from_secs(45))),
            ("7d", Some(Duration::from_secs(7 * 86_400))),
            ("10", Some(Duration::from_secs(10))),
            ("soon", None),
            ("10x", None),
            ("-5s", None),
            ("h", None),
        ] {
            assert_eq!(parse_duration_second(s), expect, "{s:?}");
        }
        assert_eq!(
            duration_from_value(&serde_json::json!(30)),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn parses_config_durations_with_a_reason_for_mistakes() {
        for (input, secs) in [
            ("30s", 30),
            ("1h", 3600),
            ("768h", 768 * 3600),
            ("1h30m", 5400),
            ("3600", 3600),
            ("10m", 600),
            ("7d", 7 * 86_400),
        ] {
            assert_eq!(
                parse_duration(input).unwrap(),
                Duration::from_secs(secs),
                "{input}"
            );
        }
        for bad in ["", "h", "10x", "1.5.5s", "1e400h"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
        assert_eq!(parse_go_duration("1d"), None, "Go has no day unit");
    }
}
