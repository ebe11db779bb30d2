//! Local time, one rule for every part of leadloop that reads a wall clock: SLA business hours
//! and digests, nurture schedules and quiet hours, calendar holds.
//!
//! - A local time inside a spring-forward gap happens at the gap's end, the first valid
//!   instant after it (02:30 on the change day in New York is 03:00 EDT; 02:30:30 is 03:00:00
//!   too, not 03:00:30).
//! - A local time inside a fall-back overlap happens at its first occurrence.
//!
//! Business hours (`BusinessHours`) are counted on these local instants in the rep's zone.

use std::time::Duration;

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// The instant a local wall-clock time happens in `tz`: a time in a spring-forward gap moves
/// to the first instant after the gap; a time in a fall-back overlap is its first occurrence.
pub fn local_instant(tz: Tz, local: NaiveDateTime) -> Timestamp {
    for minutes in 0..=180 {
        if let Some(at) = tz.from_local_datetime(&(local + TimeDelta::minutes(minutes))).earliest() {
            return if minutes == 0 {
                at.with_timezone(&Utc)
            } else {
                // The first valid instant after the gap: the gap's end.
                let after = at.with_timezone(&Utc);
                let end = (1..=60 * minutes).rev().map(|s| after - TimeDelta::seconds(s)).find(|t| {
                    let naive = t.with_timezone(&tz).naive_local();
                    naive >= local && tz.from_local_datetime(&naive).earliest().is_some()
                });
                end.unwrap_or(after)
            };
        }
    }
    Utc.from_utc_datetime(&local)
}

/// The instant of local `time` on `day` in `tz`, by [`local_instant`]'s rule.
pub fn local_on(tz: Tz, day: NaiveDate, time: NaiveTime) -> Timestamp {
    local_instant(tz, day.and_time(time))
}

/// Working hours in the rep's time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessHours {
    #[serde(default = "nine")]
    pub start: NaiveTime,
    #[serde(default = "five")]
    pub end: NaiveTime,
    #[serde(default = "weekdays", with = "weekday_names")]
    pub days: Vec<Weekday>,
    /// The name of a calendar in `sla.holidays`.
    pub holidays: Option<String>,
}

fn nine() -> NaiveTime {
    NaiveTime::from_hms_opt(9, 0, 0).unwrap_or_default()
}

fn five() -> NaiveTime {
    NaiveTime::from_hms_opt(17, 0, 0).unwrap_or_default()
}

fn weekdays() -> Vec<Weekday> {
    vec![Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri]
}

/// 09:00–17:00, Monday to Friday, no holidays.
impl Default for BusinessHours {
    fn default() -> Self {
        Self { start: nine(), end: five(), days: weekdays(), holidays: None }
    }
}

mod weekday_names {
    use chrono::Weekday;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(days: &[Weekday], s: S) -> Result<S::Ok, S::Error> {
        days.iter().map(|d| d.to_string().to_lowercase()).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Weekday>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|name| {
                name.parse::<Weekday>().map_err(|_| serde::de::Error::custom(format!("unknown day {name:?}")))
            })
            .collect()
    }
}

/// Adds `duration` of working time to `start`, in `tz`. Zero is `start` itself: the first
/// step goes out at hand-off even outside working hours.
pub fn add_business_time(
    start: Timestamp,
    duration: Duration,
    tz: Tz,
    hours: &BusinessHours,
    holidays: &[NaiveDate],
) -> Timestamp {
    if duration.is_zero() {
        return start;
    }
    let mut remaining = TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX);
    let mut day = start.with_timezone(&tz).date_naive();
    // Ten years of days is more than any ladder needs; past that, give up and count calendar time.
    for _ in 0..3660 {
        if hours.days.contains(&day.weekday()) && !holidays.contains(&day) {
            let open = local_on(tz, day, hours.start);
            let close = local_on(tz, day, hours.end);
            let from = open.max(start);
            if from < close {
                let available = close - from;
                if remaining <= available {
                    return from + remaining;
                }
                remaining -= available;
            }
        }
        day = day.succ_opt().unwrap_or(day);
    }
    start + TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

/// The first instant after `now` that is local `time` in `tz` (on `day`, if given).
pub fn next_local(now: Timestamp, tz: Tz, time: NaiveTime, day: Option<Weekday>) -> Timestamp {
    let mut date = now.with_timezone(&tz).date_naive();
    for _ in 0..8 {
        let at = local_on(tz, date, time);
        if at > now && day.is_none_or(|d| date.weekday() == d) {
            return at;
        }
        date = date.succ_opt().unwrap_or(date);
    }
    now + TimeDelta::days(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("instant")
    }

    fn time(h: u32, m: u32, s: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, s).expect("valid time")
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
    }

    const NEW_YORK: Tz = chrono_tz::America::New_York;

    /// The gap rule: the gap's end, also for a time with seconds (stepping by whole minutes
    /// through the gap, as the SLA once did, gave 03:00:30).
    #[test]
    fn a_time_in_the_gap_happens_at_the_gaps_end() {
        // 8 March 2026: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
        assert_eq!(local_on(NEW_YORK, day(2026, 3, 8), time(2, 30, 0)), at("2026-03-08T07:00:00Z"));
        assert_eq!(local_on(NEW_YORK, day(2026, 3, 8), time(2, 30, 30)), at("2026-03-08T07:00:00Z"));
        assert_eq!(local_on(NEW_YORK, day(2026, 3, 8), time(2, 0, 0)), at("2026-03-08T07:00:00Z"));
        // Not in the gap: as written.
        assert_eq!(local_on(NEW_YORK, day(2026, 3, 8), time(3, 0, 30)), at("2026-03-08T07:00:30Z"));
        // Lord Howe moves by half an hour: 02:00 → 02:30 on 4 October 2026.
        let lord_howe = chrono_tz::Australia::Lord_Howe;
        assert_eq!(
            local_on(lord_howe, day(2026, 10, 4), time(2, 10, 15)).with_timezone(&lord_howe).time(),
            time(2, 30, 0)
        );
    }

    #[test]
    fn a_time_in_the_overlap_happens_at_its_first_occurrence() {
        // 1 November 2026: 01:30 happens at 05:30 UTC (EDT) and again at 06:30 UTC (EST).
        assert_eq!(local_on(NEW_YORK, day(2026, 11, 1), time(1, 30, 0)), at("2026-11-01T05:30:00Z"));
    }

    /// SLA business hours use the same rule: hours that open inside the gap open at its end.
    #[test]
    fn business_hours_opening_in_the_gap_open_at_its_end() {
        let hours = BusinessHours {
            start: time(2, 30, 30),
            end: time(10, 0, 0),
            days: vec![Weekday::Sun],
            holidays: None,
        };
        // Sunday 8 March 2026, before opening: one hour of work ends at 04:00 EDT.
        let due =
            add_business_time(at("2026-03-08T05:00:00Z"), Duration::from_secs(3600), NEW_YORK, &hours, &[]);
        assert_eq!(due, at("2026-03-08T08:00:00Z"));
        // Digests at a local time in the gap go out at its end.
        assert_eq!(
            next_local(at("2026-03-07T12:00:00Z"), NEW_YORK, time(2, 30, 30), Some(Weekday::Sun)),
            at("2026-03-08T07:00:00Z")
        );
    }

    #[test]
    fn business_time_skips_nights_weekends_and_holidays_across_dst() {
        // docs/sla.md's example: Friday 6 March 2026 15:00 New York, holiday Monday 9 March;
        // 8 business hours end Tuesday 15:00 EDT (19:00 UTC), 16 end Wednesday 15:00 EDT.
        let hours = BusinessHours::default();
        let holidays = [day(2026, 3, 9)];
        let start = at("2026-03-06T20:00:00Z");
        let hour = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(
            add_business_time(start, hour(8), NEW_YORK, &hours, &holidays),
            at("2026-03-10T19:00:00Z")
        );
        assert_eq!(
            add_business_time(start, hour(16), NEW_YORK, &hours, &holidays),
            at("2026-03-11T19:00:00Z")
        );
        assert_eq!(add_business_time(start, Duration::ZERO, NEW_YORK, &hours, &holidays), start);
    }
}
