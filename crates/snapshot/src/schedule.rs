//! `-schedule EXPR`: when a long-running agent takes its snapshots. The subset of systemd's
//! `OnCalendar=` a snapshot timer uses (the shorthands, and every N minutes), so one expression
//! in an environment file drives both a systemd timer and the local provider's agent; plus
//! `every DURATION`. Times are UTC; every form is a pure function of the clock (`every 15m`
//! fires at :00, :15, :30 and :45), so restarting the agent does not shift its slots.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, Days, Months, NaiveTime, TimeZone, Timelike, Utc};

/// What `-schedule` accepts, for error messages.
pub const ACCEPTED: &str = "minutely, hourly, daily, weekly, monthly, *:M/N or *-*-* *:M/N:00 \
                            (minute M of each hour, then every N minutes), or every DURATION \
                            (e.g. every 15m; at least 1s)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Minutes `start`, `start + step`, ... (below 60) of every hour, at second 0.
    Minutes { start: u32, step: u32 },
    /// 00:00:00 every day.
    Daily,
    /// Monday 00:00:00.
    Weekly,
    /// The first of the month, 00:00:00.
    Monthly,
    /// Every multiple of this many seconds since the Unix epoch.
    Every(u64),
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let unknown = || format!("unknown schedule {text:?}: use {ACCEPTED}");
        let expr = text.trim();
        match expr.to_ascii_lowercase().as_str() {
            "minutely" => return Ok(Schedule::Minutes { start: 0, step: 1 }),
            "hourly" => return Ok(Schedule::Minutes { start: 0, step: 60 }),
            "daily" => return Ok(Schedule::Daily),
            "weekly" => return Ok(Schedule::Weekly),
            "monthly" => return Ok(Schedule::Monthly),
            _ => {}
        }
        if let Some(duration) = expr.strip_prefix("every ") {
            let d = keyhold_client::go_duration::parse_duration(duration)
                .map_err(|e| format!("schedule {text:?}: {e}; use {ACCEPTED}"))?;
            if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
                return Err(format!(
                    "schedule {text:?}: the interval must be a whole number of seconds, at \
                     least 1s"
                ));
            }
            return Ok(Schedule::Every(d.as_secs()));
        }
        let time = expr.strip_prefix("*-*-* ").unwrap_or(expr);
        let minute = time.strip_prefix("*:").ok_or_else(unknown)?;
        let minute = minute.strip_suffix(":00").unwrap_or(minute);
        let (start, step) = match minute.split_once('/') {
            Some((start, step)) => (start, Some(step)),
            None => (minute, None),
        };
        let number = |s: &str, range: std::ops::RangeInclusive<u32>| {
            (!s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u32>().ok())
                .flatten()
                .filter(|n| range.contains(n))
        };
        let start = number(start, 0..=59).ok_or_else(unknown)?;
        let step = match step {
            Some(step) => number(step, 1..=59).ok_or_else(unknown)?,
            None => 60,
        };
        Ok(Schedule::Minutes { start, step })
    }

    /// The first time this schedule fires strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let midnight =
            |date: chrono::NaiveDate| Utc.from_utc_datetime(&date.and_time(NaiveTime::MIN));
        let today = t.date_naive();
        match *self {
            Schedule::Minutes { start, step } => {
                let hour = t
                    .with_minute(0)
                    .and_then(|h| h.with_second(0))
                    .and_then(|h| h.with_nanosecond(0))
                    .expect("the start of an hour exists in UTC");
                (start..60)
                    .step_by(step as usize)
                    .map(|m| hour + chrono::Duration::minutes(i64::from(m)))
                    .find(|slot| *slot > t)
                    .unwrap_or_else(|| {
                        hour + chrono::Duration::hours(1)
                            + chrono::Duration::minutes(i64::from(start))
                    })
            }
            Schedule::Daily => midnight(today + Days::new(1)),
            Schedule::Weekly => {
                let ahead = 7 - u64::from(today.weekday().num_days_from_monday());
                midnight(today + Days::new(ahead))
            }
            Schedule::Monthly => {
                let first = today.with_day(1).expect("every month has a first day");
                midnight(first + Months::new(1))
            }
            Schedule::Every(secs) => {
                let secs = secs as i64;
                let next = (t.timestamp().div_euclid(secs) + 1) * secs;
                Utc.timestamp_opt(next, 0)
                    .single()
                    .expect("a time after now is in range")
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Minutes { start: 0, step: 1 } => f.write_str("minutely"),
            Schedule::Minutes { start: 0, step: 60 } => f.write_str("hourly"),
            Schedule::Minutes { start, step: 60 } => write!(f, "*-*-* *:{start:02}:00"),
            Schedule::Minutes { start, step } => write!(f, "*-*-* *:{start:02}/{step}:00"),
            Schedule::Daily => f.write_str("daily"),
            Schedule::Weekly => f.write_str("weekly"),
            Schedule::Monthly => f.write_str("monthly"),
            Schedule::Every(secs) => write!(
                f,
                "every {}",
                keyhold_client::go_duration::format_go_duration(Duration::from_secs(*secs))
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// (expression, a time, the next two firings after it); 2026-11-02 is a Monday.
    #[test]
    fn next_firings() {
        let cases: &[(&str, &str, [&str; 2])] = &[
            (
                "minutely",
                "2026-11-02T10:00:00Z",
                ["2026-11-02T10:01:00Z", "2026-11-02T10:02:00Z"],
            ),
            (
                "minutely",
                "2026-11-02T10:59:59.5Z",
                ["2026-11-02T11:00:00Z", "2026-11-02T11:01:00Z"],
            ),
            (
                "hourly",
                "2026-11-02T10:00:00Z",
                ["2026-11-02T11:00:00Z", "2026-11-02T12:00:00Z"],
            ),
            (
                "Hourly",
                "2026-12-31T23:30:00Z",
                ["2027-01-01T00:00:00Z", "2027-01-01T01:00:00Z"],
            ),
            (
                "daily",
                "2026-11-02T00:00:00Z",
                ["2026-11-03T00:00:00Z", "2026-11-04T00:00:00Z"],
            ),
            (
                "weekly",
                "2026-11-02T00:00:00Z",
                ["2026-11-09T00:00:00Z", "2026-11-16T00:00:00Z"],
            ),
            (
                "weekly",
                "2026-11-08T23:59:59Z",
                ["2026-11-09T00:00:00Z", "2026-11-16T00:00:00Z"],
            ),
            (
                "monthly",
                "2026-12-15T08:00:00Z",
                ["2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z"],
            ),
            (
                "*:0/15",
                "2026-11-02T10:07:00Z",
                ["2026-11-02T10:15:00Z", "2026-11-02T10:30:00Z"],
            ),
            (
                "*:0/15",
                "2026-11-02T10:45:00Z",
                ["2026-11-02T11:00:00Z", "2026-11-02T11:15:00Z"],
            ),
            (
                "*-*-* *:00/15:00",
                "2026-11-02T10:44:59Z",
                ["2026-11-02T10:45:00Z", "2026-11-02T11:00:00Z"],
            ),
            (
                "*-*-* *:05/20:00",
                "2026-11-02T10:50:00Z",
                ["2026-11-02T11:05:00Z", "2026-11-02T11:25:00Z"],
            ),
            // systemd restarts the repetition every hour: minutes 0 and 45 only.
            (
                "*:0/45",
                "2026-11-02T10:00:00Z",
                ["2026-11-02T10:45:00Z", "2026-11-02T11:00:00Z"],
            ),
            (
                "*:30",
                "2026-11-02T10:30:00Z",
                ["2026-11-02T11:30:00Z", "2026-11-02T12:30:00Z"],
            ),
            (
                "*-*-* *:07",
                "2026-11-02T10:00:00Z",
                ["2026-11-02T10:07:00Z", "2026-11-02T11:07:00Z"],
            ),
            (
                "every 15m",
                "2026-11-02T10:07:00Z",
                ["2026-11-02T10:15:00Z", "2026-11-02T10:30:00Z"],
            ),
            (
                "every 2s",
                "2026-11-02T10:00:01.9Z",
                ["2026-11-02T10:00:02Z", "2026-11-02T10:00:04Z"],
            ),
            (
                "every 1h",
                "2026-11-02T10:00:00Z",
                ["2026-11-02T11:00:00Z", "2026-11-02T12:00:00Z"],
            ),
        ];
        let mut failures = Vec::new();
        for (expr, start, expected) in cases {
            let schedule = Schedule::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            let first = schedule.next_after(at(start));
            let second = schedule.next_after(first);
            let got = [first, second];
            if got != [at(expected[0]), at(expected[1])] {
                failures.push(format!(
                    "{expr} after {start}: expected {expected:?}, got {got:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn accepted_and_refused_expressions() {
        let cases: &[(&str, Result<Schedule, &str>)] = &[
            ("hourly", Ok(Schedule::Minutes { start: 0, step: 60 })),
            (" daily ", Ok(Schedule::Daily)),
            ("*:0/5", Ok(Schedule::Minutes { start: 0, step: 5 })),
            ("*:00/5:00", Ok(Schedule::Minutes { start: 0, step: 5 })),
            ("*-*-* *:10/30:00", Ok(Schedule::Minutes { start: 10, step: 30 })),
            ("every 90s", Ok(Schedule::Every(90))),
            ("every 1h30m", Ok(Schedule::Every(5400))),
            ("yearly", Err("unknown schedule \"yearly\"")),
            ("*:0/0", Err("unknown schedule \"*:0/0\"")),
            ("*:60", Err("unknown schedule \"*:60\"")),
            ("*:0/15:30", Err("unknown schedule \"*:0/15:30\"")),
            ("Mon *-*-* 00:00:00", Err("unknown schedule \"Mon *-*-* 00:00:00\"")),
            ("*-*-* 03:00:00", Err("unknown schedule \"*-*-* 03:00:00\"")),
            ("", Err("unknown schedule \"\"")),
            ("every 500ms", Err("schedule \"every 500ms\": the interval must be a whole number of seconds, at least 1s")),
            ("every 1.5s", Err("schedule \"every 1.5s\": the interval must be a whole number of seconds, at least 1s")),
            ("every soon", Err("schedule \"every soon\": ")),
        ];
        for (expr, expected) in cases {
            match (Schedule::parse(expr), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{expr}"),
                (Err(got), Err(want)) => {
                    assert!(got.starts_with(want), "{expr}: {got}");
                    if want.starts_with("unknown") {
                        assert!(got.ends_with(ACCEPTED), "{expr}: {got}");
                    }
                }
                (got, want) => panic!("{expr}: expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn display_gives_back_an_accepted_expression() {
        for expr in [
            "minutely", "hourly", "daily", "weekly", "monthly", "*:0/15", "*:30", "every 2s",
            "every 1h",
        ] {
            let schedule = Schedule::parse(expr).unwrap();
            assert_eq!(
                Schedule::parse(&schedule.to_string()),
                Ok(schedule),
                "{expr} -> {schedule}"
            );
        }
    }
}
