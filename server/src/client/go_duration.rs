//! Go's `time.Duration` text, as Vault reads and writes it: `String()` (`10s`, `24h0m0s`,
//! `1.5s`, `500ms`), `time.ParseDuration`, and `parseutil.ParseDurationSecond` (a bare number
//! is seconds, `7d` is days), which Vault's API and CLI flags use for durations.

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

/// Go's `time.ParseDuration` for non-negative durations: `300ms`, `1.5h`, `2h45m`, `0`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..num_end];
        if number.is_empty() || number == "." {
            return None;
        }
        let value: f64 = number.parse().ok()?;
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
            _ => return None,
        };
        total += value * nanos_per_unit;
        rest = &rest[unit_end..];
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(total.round() as u64))
}

/// Vault's `parseutil.ParseDurationSecond` for a string: empty is zero, a bare integer is
/// seconds, `<n>d` is days, anything else is a Go duration.
pub fn parse_duration_second(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return Some(Duration::ZERO);
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Some(days) = s.strip_suffix('d') {
        return days
            .parse::<u64>()
            .ok()
            .map(|d| Duration::from_secs(d * 86_400));
    }
    parse_go_duration(s)
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
}
