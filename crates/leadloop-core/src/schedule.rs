//! Schedules as admins write them: standard 5-field crontab (or 6 with seconds), `0` and `7`
//! both Sunday, day and month names, `@daily` and friends, in a named IANA time zone — with
//! decided behaviour across DST changes:
//!
//! - a local time inside the spring-forward gap fires once, at the first valid instant after
//!   the gap (02:30 on the change day fires at 03:00);
//! - a local time inside the fall-back overlap fires once, at its first occurrence;
//! - firing times never go backwards.
//!
//! The `cron` crate underneath reads day-of-week 1 as Sunday and takes 6 or 7 fields; this
//! wrapper translates crontab into its syntax and evaluates it on the local wall clock, then
//! maps each local time to an instant with the rules above.

use std::str::FromStr;

use chrono::{NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

use crate::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule `{expression}`: {reason}")]
pub struct ScheduleError {
    pub expression: String,
    pub reason: String,
}

/// A cron schedule in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    inner: cron::Schedule,
    tz: Tz,
}

const DAYS: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];

/// Rewrites crontab day-of-week numbers (0–7, 0 and 7 Sunday) as names, which `cron` reads
/// unambiguously.
fn day_of_week(field: &str) -> Result<String, String> {
    let number = |text: &str| -> Result<String, String> {
        match text.parse::<usize>() {
            Ok(n) if n <= 7 => Ok(DAYS[n].to_owned()),
            Ok(n) => Err(format!("day of week {n} is out of range (0–7)")),
            Err(_) => Ok(text.to_uppercase()),
        }
    };
    field
        .split(',')
        .map(|part| {
            let (range, step) = match part.split_once('/') {
                Some((range, step)) => (range, Some(step)),
                None => (part, None),
            };
            let range = match range.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (number(a)?, number(b)?);
                    // `5-7` (Friday to Sunday) becomes `FRI-SAT,SUN`-like ranges in names;
                    // `cron` reads `FRI-SUN` as a wrapping range, which it rejects, so split it.
                    if b == "SUN" && a != "SUN" { format!("{a}-SAT,SUN") } else { format!("{a}-{b}") }
                }
                None => number(range)?,
            };
            Ok(match step {
                Some(step) => format!("{range}/{step}"),
                None => range,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|parts| parts.join(","))
}

impl Schedule {
    /// Parses `expression` (5 fields, 6 with seconds, or `@yearly`, `@monthly`, `@weekly`,
    /// `@daily`, `@midnight`, `@hourly`) in time zone `tz`.
    pub fn parse(expression: &str, tz: Tz) -> Result<Self, ScheduleError> {
        let error = |reason: String| ScheduleError { expression: expression.to_owned(), reason };
        let trimmed = expression.trim();
        let expanded = match trimmed {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => return Err(error(format!("unknown shortcut `{other}`"))),
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (seconds, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => return Err(error(format!("expected 5 fields (or 6 with seconds), found {n}"))),
        };
        let dow = day_of_week(rest[4]).map_err(error)?;
        let translated = format!("{seconds} {} {} {} {} {dow}", rest[0], rest[1], rest[2], rest[3]);
        let inner = cron::Schedule::from_str(&translated).map_err(|e| error(e.to_string()))?;
        Ok(Self { expression: trimmed.to_owned(), inner, tz })
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The instant a local wall-clock time happens: a time in a gap moves to the first
    /// instant after it; a time in an overlap is its first occurrence.
    fn instant(&self, local: NaiveDateTime) -> Timestamp {
        for minutes in 0..=180 {
            if let Some(at) = self.tz.from_local_datetime(&(local + TimeDelta::minutes(minutes))).earliest() {
                return if minutes == 0 {
                    at.with_timezone(&Utc)
                } else {
                    // The first valid instant after the gap: the gap's end.
                    let after = at.with_timezone(&Utc);
                    let end = (1..=60 * minutes).rev().map(|s| after - TimeDelta::seconds(s)).find(|t| {
                        let naive = t.with_timezone(&self.tz).naive_local();
                        naive >= local && self.tz.from_local_datetime(&naive).earliest().is_some()
                    });
                    end.unwrap_or(after)
                };
            }
        }
        Utc.from_utc_datetime(&local)
    }

    /// The first firing strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        // Walk the schedule on the local wall clock, starting a little before `after`'s local
        // time (an overlap makes local time repeat), and return the first instant past it.
        let local = after.with_timezone(&self.tz).naive_local() - TimeDelta::hours(3);
        let fake = Utc.from_utc_datetime(&local);
        for candidate in self.inner.after(&fake).take(10_000) {
            let at = self.instant(candidate.naive_utc());
            if at > after {
                return Some(at);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("instant")
    }

    fn fires(expression: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let schedule = Schedule::parse(expression, tz.parse().expect("zone")).expect("parses");
        let mut out = Vec::new();
        let mut cursor = at(from);
        for _ in 0..n {
            cursor = schedule.next_after(cursor).expect("next");
            out.push(cursor.with_timezone(&schedule.time_zone()).format("%Y-%m-%d %H:%M:%S %Z").to_string());
        }
        out
    }

    #[test]
    fn crontab_fields_names_and_sunday_as_0_and_7() {
        // Monday 2026-03-02. "0 9 * * 1" is Monday 09:00, not Sunday.
        assert_eq!(
            fires("0 9 * * 1", "UTC", "2026-03-01T00:00:00Z", 2),
            ["2026-03-02 09:00:00 UTC", "2026-03-09 09:00:00 UTC"]
        );
        assert_eq!(fires("30 8 * * 0", "UTC", "2026-03-02T00:00:00Z", 1), ["2026-03-08 08:30:00 UTC"]);
        assert_eq!(fires("30 8 * * 7", "UTC", "2026-03-02T00:00:00Z", 1), ["2026-03-08 08:30:00 UTC"]);
        assert_eq!(
            fires("0 10 1 jan,jul mon-fri", "UTC", "2026-01-01T00:00:00Z", 1),
            ["2026-01-01 10:00:00 UTC"]
        );
        assert_eq!(
            fires("0 18 * * 5-7", "UTC", "2026-03-02T00:00:00Z", 3),
            ["2026-03-06 18:00:00 UTC", "2026-03-07 18:00:00 UTC", "2026-03-08 18:00:00 UTC"]
        );
        assert_eq!(fires("@daily", "UTC", "2026-03-02T12:00:00Z", 1), ["2026-03-03 00:00:00 UTC"]);
        assert_eq!(fires("15 0 9 * * *", "UTC", "2026-03-02T00:00:00Z", 1), ["2026-03-02 09:00:15 UTC"]);
    }

    #[test]
    fn bad_expressions_are_refused_with_the_reason() {
        let utc = Tz::UTC;
        assert!(Schedule::parse("0 9 * *", utc).expect_err("4 fields").reason.contains("expected 5 fields"));
        assert!(Schedule::parse("0 9 * * 8", utc).expect_err("dow 8").reason.contains("out of range"));
        assert!(
            Schedule::parse("@fortnightly", utc).expect_err("unknown").reason.contains("unknown shortcut")
        );
        assert!(Schedule::parse("61 9 * * *", utc).is_err());
    }

    #[test]
    fn spring_forward_gap_fires_once_at_the_end_of_the_gap() {
        // New York skips 02:00–03:00 on 8 March 2026.
        assert_eq!(
            fires("30 2 * * *", "America/New_York", "2026-03-07T00:00:00Z", 3),
            ["2026-03-07 02:30:00 EST", "2026-03-08 03:00:00 EDT", "2026-03-09 02:30:00 EDT"]
        );
    }

    #[test]
    fn fall_back_overlap_fires_once_at_the_first_occurrence() {
        // New York repeats 01:00–02:00 on 1 November 2026.
        assert_eq!(
            fires("30 1 * * *", "America/New_York", "2026-10-31T00:00:00Z", 3),
            ["2026-10-31 01:30:00 EDT", "2026-11-01 01:30:00 EDT", "2026-11-02 01:30:00 EST"]
        );
        // Every 15 minutes through the overlap: no local time twice, never backwards.
        let every = fires("*/15 * * * *", "America/New_York", "2026-11-01T04:50:00Z", 10);
        assert_eq!(
            every[..3],
            ["2026-11-01 01:00:00 EDT", "2026-11-01 01:15:00 EDT", "2026-11-01 01:30:00 EDT"]
        );
        assert!(every.iter().all(|f| !f.contains("01:15:00 EST")), "{every:?}");
    }
}
