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

use chrono::{TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

use crate::Timestamp;
pub use crate::local_time::local_instant;

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

const MONTHS: [&str; 12] =
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];

/// Checks one crontab field against its range, in the admin's own terms ("hour 24 is out of
/// range 0–23"), before the `cron` crate sees a translated form the admin never wrote.
fn check_field(name: &str, field: &str, min: u32, max: u32, names: &[&str]) -> Result<(), String> {
    let value = |text: &str| -> Result<u32, String> {
        if let Ok(n) = text.parse::<u32>() {
            return if (min..=max).contains(&n) {
                Ok(n)
            } else {
                Err(format!("{name} {n} is out of range {min}–{max}"))
            };
        }
        let upper = text.to_ascii_uppercase();
        match names.iter().position(|n| upper == *n) {
            Some(i) => Ok(i as u32 + min),
            None if names.is_empty() => Err(format!("{name} `{text}` is not a number ({min}–{max})")),
            None => Err(format!(
                "{name} `{text}` is neither a number ({min}–{max}) nor a name ({}, …)",
                names[..3].join(", ")
            )),
        }
    };
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (part, None),
        };
        if let Some(step) = step {
            match step.parse::<u32>() {
                Ok(n) if n >= 1 => {}
                _ => return Err(format!("{name}: step `/{step}` must be a whole number of at least 1")),
            }
        }
        if range == "*" {
            continue;
        }
        match range.split_once('-') {
            Some((a, b)) => {
                let (a, mut b) = (value(a)?, value(b)?);
                // `FRI-SUN`: Sunday at the end of a day-of-week range is day 7.
                if name == "day of week" && b == 0 {
                    b = 7;
                }
                if a > b {
                    return Err(format!(
                        "{name} range `{range}` goes backwards; write it as two parts, e.g. `{a}-{max},{min}-{b}`"
                    ));
                }
            }
            None if range.is_empty() => return Err(format!("{name}: empty value in `{field}`")),
            None => {
                value(range)?;
            }
        }
    }
    Ok(())
}

/// Checks the five crontab fields (minute, hour, day of month, month, day of week).
fn check_fields(fields: &[&str]) -> Result<(), String> {
    check_field("minute", fields[0], 0, 59, &[])?;
    check_field("hour", fields[1], 0, 23, &[])?;
    check_field("day of month", fields[2], 1, 31, &[])?;
    check_field("month", fields[3], 1, 12, &MONTHS)?;
    check_field("day of week", fields[4], 0, 7, &DAYS[..7])
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
        if fields.len() == 6 {
            check_field("second", seconds, 0, 59, &[]).map_err(error)?;
        }
        check_fields(rest).map_err(error)?;
        let dow = day_of_week(rest[4]).map_err(error)?;
        let translated = format!("{seconds} {} {} {} {} {dow}", rest[0], rest[1], rest[2], rest[3]);
        // Anything the checks above let through and `cron` refuses is reported without the
        // translated form (which the admin did not write).
        let inner = cron::Schedule::from_str(&translated).map_err(|_| {
            error(
                "not a crontab expression: minute hour day-of-month month day-of-week, e.g. `0 10 * * 1-5`"
                    .to_owned(),
            )
        })?;
        Ok(Self { expression: trimmed.to_owned(), inner, tz })
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The first firing strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        self.next_after_in(after, self.tz)
    }

    /// The first firing strictly after `after`, with the fields read on the wall clock of
    /// `tz` instead of the schedule's own zone (a nurture step "10:00 in the lead's local
    /// time" parses once and is evaluated in each lead's zone).
    pub fn next_after_in(&self, after: Timestamp, tz: Tz) -> Option<Timestamp> {
        // Walk the schedule on the local wall clock, starting a little before `after`'s local
        // time (an overlap makes local time repeat), and return the first instant past it.
        let local = after.with_timezone(&tz).naive_local() - TimeDelta::hours(3);
        let fake = Utc.from_utc_datetime(&local);
        for candidate in self.inner.after(&fake).take(10_000) {
            let at = local_instant(tz, candidate.naive_utc());
            if at > after {
                return Some(at);
            }
        }
        None
    }
}

/// A calendar interval such as `30d`, `2w`, `3mo` or `1y`, added on the local wall clock of a
/// time zone: `1d` across a DST change keeps the time of day, and months keep the day of the
/// month, clamped to the month's end (31 January + 1 month is 28 or 29 February).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub months: u32,
    pub days: u32,
    pub seconds: u32,
}

impl Interval {
    /// Parses `N` + unit, units `s`, `min`, `h`, `d`, `w`, `mo`, `y`; parts may be combined
    /// (`1mo15d`).
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let error = |reason: &str| ScheduleError { expression: text.to_owned(), reason: reason.to_owned() };
        let mut interval = Interval { months: 0, days: 0, seconds: 0 };
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(error("empty interval"));
        }
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err(error("expected a number, e.g. `30d` or `3mo`"));
            }
            let n: u32 = rest[..digits].parse().map_err(|_| error("number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let unit = rest[..unit_len].trim();
            rest = &rest[unit_len..];
            let add = |a: u32, b: u32| a.checked_add(b).ok_or_else(|| error("interval too large"));
            match unit {
                "s" => interval.seconds = add(interval.seconds, n)?,
                "m" => return Err(error("ambiguous unit `m`: write `min` for minutes or `mo` for months")),
                "min" => interval.seconds = add(interval.seconds, n.saturating_mul(60))?,
                "h" => interval.seconds = add(interval.seconds, n.saturating_mul(3600))?,
                "d" => interval.days = add(interval.days, n)?,
                "w" => interval.days = add(interval.days, n.saturating_mul(7))?,
                "mo" => interval.months = add(interval.months, n)?,
                "y" => interval.months = add(interval.months, n.saturating_mul(12))?,
                "" => return Err(error("missing unit (s, min, h, d, w, mo, y)")),
                _ => return Err(error("unknown unit (use s, min, h, d, w, mo, y)")),
            }
        }
        Ok(interval)
    }

    /// `at` + this interval on `tz`'s wall clock: months first (clamped to the month's end),
    /// then days, then seconds; the local result is mapped to an instant with the DST rules of
    /// [`local_instant`].
    pub fn add_to(&self, at: Timestamp, tz: Tz) -> Timestamp {
        let local = at.with_timezone(&tz).naive_local();
        let date = add_months(local.date(), self.months) + TimeDelta::days(i64::from(self.days));
        let shifted = date.and_time(local.time()) + TimeDelta::seconds(i64::from(self.seconds));
        let out = local_instant(tz, shifted);
        // Never before `at` (an interval of zero, or an overlap folding the result back).
        out.max(at)
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut wrote = false;
        for (n, unit) in [(self.months, "mo"), (self.days, "d"), (self.seconds, "s")] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
                wrote = true;
            }
        }
        if !wrote {
            f.write_str("0s")?;
        }
        Ok(())
    }
}

/// `date` plus `months`, the day clamped to the last day of the target month.
pub fn add_months(date: chrono::NaiveDate, months: u32) -> chrono::NaiveDate {
    use chrono::Datelike;
    let total = date.year() * 12 + date.month0() as i32 + months as i32;
    let (year, month0) = (total.div_euclid(12), total.rem_euclid(12) as u32);
    let mut day = date.day();
    loop {
        if let Some(d) = chrono::NaiveDate::from_ymd_opt(year, month0 + 1, day) {
            return d;
        }
        if day <= 28 {
            return date;
        }
        day -= 1;
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
        // In the admin's terms: the field, the value, the range; never the translated form.
        let reason = |expression: &str| Schedule::parse(expression, utc).expect_err(expression).reason;
        assert_eq!(reason("0 24 * * *"), "hour 24 is out of range 0–23");
        assert_eq!(reason("60 9 * * *"), "minute 60 is out of range 0–59");
        assert_eq!(reason("0 9 0 * *"), "day of month 0 is out of range 1–31");
        assert_eq!(reason("0 9 * 13 *"), "month 13 is out of range 1–12");
        assert_eq!(
            reason("0 9 * foo *"),
            "month `foo` is neither a number (1–12) nor a name (JAN, FEB, MAR, …)"
        );
        assert_eq!(reason("0 9 * * 1/0"), "day of week: step `/0` must be a whole number of at least 1");
        assert_eq!(
            reason("0 17-9 * * *"),
            "hour range `17-9` goes backwards; write it as two parts, e.g. `17-23,0-9`"
        );
        // The edges are valid.
        for ok in ["0 23 * * *", "59 0 31 12 7", "0 9 * * fri-sun", "0 9 * * 5-7", "*/15 8-18 * * mon-fri"] {
            assert!(Schedule::parse(ok, utc).is_ok(), "{ok}");
        }
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

    #[test]
    fn intervals_parse_and_add_months_clamped_to_the_month_end() {
        let mo = Interval::parse("1mo").expect("parses");
        assert_eq!(mo, Interval { months: 1, days: 0, seconds: 0 });
        assert_eq!(Interval::parse("1mo15d").expect("parses"), Interval { months: 1, days: 15, seconds: 0 });
        assert_eq!(Interval::parse("2w").expect("parses").days, 14);
        assert_eq!(Interval::parse("1y").expect("parses").months, 12);
        assert!(Interval::parse("3").expect_err("no unit").reason.contains("missing unit"));
        assert!(Interval::parse("3m").expect_err("ambiguous").reason.contains("ambiguous"));
        assert!(Interval::parse("3q").expect_err("bad unit").reason.contains("unknown unit"));
        assert!(Interval::parse("").is_err());
        let utc = Tz::UTC;
        assert_eq!(mo.add_to(at("2026-01-31T10:00:00Z"), utc), at("2026-02-28T10:00:00Z"));
        assert_eq!(mo.add_to(at("2028-01-31T10:00:00Z"), utc), at("2028-02-29T10:00:00Z"));
        assert_eq!(mo.add_to(at("2026-12-31T10:00:00Z"), utc), at("2027-01-31T10:00:00Z"));
        let three = Interval::parse("3mo").expect("parses");
        assert_eq!(three.add_to(at("2026-11-30T10:00:00Z"), utc), at("2027-02-28T10:00:00Z"));
        assert_eq!(
            Interval::parse("12mo").expect("parses").add_to(at("2028-02-29T10:00:00Z"), utc),
            at("2029-02-28T10:00:00Z")
        );
    }

    #[test]
    fn intervals_keep_the_local_time_across_dst() {
        let ny: Tz = "America/New_York".parse().expect("zone");
        // 10:00 EST on 7 March + 1 day = 10:00 EDT on 8 March (23 hours later).
        let day = Interval::parse("1d").expect("parses");
        assert_eq!(day.add_to(at("2026-03-07T15:00:00Z"), ny), at("2026-03-08T14:00:00Z"));
        // 02:30 on 7 March + 1 day falls in the gap: the gap's end, 03:00 EDT.
        assert_eq!(day.add_to(at("2026-03-07T07:30:00Z"), ny), at("2026-03-08T07:00:00Z"));
        // 01:30 on 31 October + 1 day is in the overlap: the first 01:30 (EDT).
        assert_eq!(day.add_to(at("2026-10-31T05:30:00Z"), ny), at("2026-11-01T05:30:00Z"));
    }
}
