//! What people's calendars tell routing and the SLA, as a snapshot: per person, the meetings
//! in the look-ahead window with the domains of their attendees, the time they are away, and
//! the time they are busy. The engine keeps the latest snapshot (read by the calendar poller)
//! in the [`OrgChart`](crate::OrgChart) it gives every decision, so decisions stay pure.
//!
//! An empty snapshot (no calendar configured, or none read yet) changes nothing: routing falls
//! back to its rules, the SLA runs as if everyone were in.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate, TimeDelta};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::ids::PersonId;
use crate::local_time::{BusinessHours, local_on};

/// Mail domains anyone can have an address at: a meeting with someone there says nothing
/// about a company.
pub const PUBLIC_MAIL_DOMAINS: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "yahoo.com",
    "icloud.com",
    "me.com",
    "aol.com",
    "proton.me",
    "protonmail.com",
    "gmx.de",
    "gmx.net",
    "web.de",
];

/// A calendar entry, reduced to what routing and the SLA need. Recurring events arrive
/// expanded: one entry per occurrence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalendarEvent {
    /// The iCalendar `UID` (shared by every occurrence of a recurring event).
    pub uid: String,
    pub start: Timestamp,
    pub end: Timestamp,
    /// A whole-day event (`DTSTART;VALUE=DATE`), placed in the person's time zone.
    pub all_day: bool,
    pub summary: String,
    /// Attendee and organizer addresses, lowercased.
    pub attendees: Vec<String>,
    /// Takes time (`TRANSP:OPAQUE`, the default); transparent entries block nothing.
    pub busy: bool,
    /// Time away: an all-day busy entry, or one marked out of office.
    pub away: bool,
}

/// A meeting in the look-ahead window, with the other parties' domains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meeting {
    pub start: Timestamp,
    pub end: Timestamp,
    /// Attendee and organizer domains, lowercased, without the person's own.
    pub domains: Vec<String>,
}

/// One person's calendar, as routing and the SLA need it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonSignals {
    pub meetings: Vec<Meeting>,
    /// Away intervals (all-day busy or out of office), merged and sorted.
    pub away: Vec<(Timestamp, Timestamp)>,
    /// Busy intervals (every opaque entry), merged and sorted.
    pub busy: Vec<(Timestamp, Timestamp)>,
}

/// The snapshot: every mapped person's signals, and how far ahead meetings count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalendarSignals {
    pub look_ahead: TimeDelta,
    /// When the snapshot was last refreshed.
    pub taken_at: Option<Timestamp>,
    pub people: BTreeMap<PersonId, PersonSignals>,
}

fn merge(mut spans: Vec<(Timestamp, Timestamp)>) -> Vec<(Timestamp, Timestamp)> {
    spans.sort();
    let mut out: Vec<(Timestamp, Timestamp)> = Vec::new();
    for (start, end) in spans {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

fn domain(address: &str) -> Option<String> {
    address.rsplit_once('@').map(|(_, d)| d.trim().to_ascii_lowercase()).filter(|d| !d.is_empty())
}

impl PersonSignals {
    /// Reduces a person's events; `own` is the person's address (its domain is not a
    /// customer's).
    pub fn from_events(events: &[CalendarEvent], own: Option<&str>) -> Self {
        let own_domain = own.and_then(domain);
        let mut meetings = Vec::new();
        let mut away = Vec::new();
        let mut busy = Vec::new();
        for event in events {
            if event.away {
                away.push((event.start, event.end));
            }
            if event.busy && event.end > event.start {
                busy.push((event.start, event.end));
            }
            let mut domains: Vec<String> = event
                .attendees
                .iter()
                .filter_map(|a| domain(a))
                .filter(|d| Some(d) != own_domain.as_ref())
                .collect();
            domains.sort();
            domains.dedup();
            if !domains.is_empty() && !event.all_day {
                meetings.push(Meeting { start: event.start, end: event.end, domains });
            }
        }
        meetings.sort_by_key(|m| m.start);
        Self { meetings, away: merge(away), busy: merge(busy) }
    }
}

impl CalendarSignals {
    /// Until when `person` is away at `now` (the end of the away span that holds `now`).
    pub fn away_until(&self, person: &PersonId, now: Timestamp) -> Option<Timestamp> {
        let signals = self.people.get(person)?;
        signals.away.iter().find(|(start, end)| *start <= now && now < *end).map(|(_, end)| *end)
    }

    /// The first meeting of `person` with someone at `domain` starting in
    /// `[now, now + look_ahead]`.
    pub fn meeting_with(&self, person: &PersonId, domain: &str, now: Timestamp) -> Option<Timestamp> {
        let domain = domain.to_ascii_lowercase();
        if PUBLIC_MAIL_DOMAINS.contains(&domain.as_str()) {
            return None;
        }
        let until = now + self.look_ahead;
        self.people
            .get(person)?
            .meetings
            .iter()
            .filter(|m| m.start >= now && m.start <= until)
            .find(|m| m.domains.contains(&domain))
            .map(|m| m.start)
    }

    /// The first `length` from `now` (rounded up to the quarter hour) inside `hours` in `tz`
    /// on which `person` is neither busy nor away, within the look-ahead window. `None` if the
    /// person has no calendar here or no slot is free.
    pub fn next_free_slot(
        &self,
        person: &PersonId,
        now: Timestamp,
        length: TimeDelta,
        tz: Tz,
        hours: &BusinessHours,
        holidays: &[NaiveDate],
    ) -> Option<(Timestamp, Timestamp)> {
        let signals = self.people.get(person)?;
        let quarter = 15 * 60;
        let secs = now.timestamp();
        let mut at =
            chrono::DateTime::from_timestamp(secs + (quarter - secs.rem_euclid(quarter)) % quarter, 0)?;
        let until = now + self.look_ahead.max(TimeDelta::days(7));
        let blocked: Vec<(Timestamp, Timestamp)> =
            merge(signals.busy.iter().chain(&signals.away).copied().collect());
        while at < until {
            let local = at.with_timezone(&tz);
            let day = local.date_naive();
            let open = local_on(tz, day, hours.start);
            let close = local_on(tz, day, hours.end);
            if !hours.days.contains(&day.weekday()) || holidays.contains(&day) || at >= close {
                at = local_on(tz, day.succ_opt()?, hours.start);
                continue;
            }
            if at < open {
                at = open;
                continue;
            }
            let end = at + length;
            if end > close {
                at = local_on(tz, day.succ_opt()?, hours.start);
                continue;
            }
            match blocked.iter().find(|(s, e)| *s < end && *e > at) {
                // Try again where the clash ends, on the quarter hour.
                Some((_, e)) => {
                    let secs = e.timestamp();
                    at = chrono::DateTime::from_timestamp(
                        secs + (quarter - secs.rem_euclid(quarter)) % quarter,
                        0,
                    )?;
                }
                None => return Some((at, end)),
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

    fn event(start: &str, end: &str, attendees: &[&str], all_day: bool, away: bool) -> CalendarEvent {
        CalendarEvent {
            uid: start.into(),
            start: at(start),
            end: at(end),
            all_day,
            summary: String::new(),
            attendees: attendees.iter().map(|a| a.to_string()).collect(),
            busy: true,
            away,
        }
    }

    fn snapshot(events: &[CalendarEvent]) -> CalendarSignals {
        CalendarSignals {
            look_ahead: TimeDelta::weeks(2),
            taken_at: None,
            people: BTreeMap::from([(
                PersonId::new("rep"),
                PersonSignals::from_events(events, Some("rep@us.example")),
            )]),
        }
    }

    #[test]
    fn meetings_count_within_the_look_ahead_and_not_for_public_mail_or_our_own_domain() {
        let s = snapshot(&[
            event(
                "2026-11-30T15:00:00Z",
                "2026-11-30T16:00:00Z",
                &["ana@acme.example", "rep@us.example"],
                false,
                false,
            ),
            event("2026-12-20T15:00:00Z", "2026-12-20T16:00:00Z", &["bo@far.example"], false, false),
            event("2026-11-25T15:00:00Z", "2026-11-25T16:00:00Z", &["x@gmail.com"], false, false),
        ]);
        let rep = PersonId::new("rep");
        let now = at("2026-11-23T09:00:00Z");
        assert_eq!(s.meeting_with(&rep, "ACME.example", now), Some(at("2026-11-30T15:00:00Z")));
        assert_eq!(s.meeting_with(&rep, "far.example", now), None, "beyond two weeks");
        assert_eq!(s.meeting_with(&rep, "gmail.com", now), None);
        assert_eq!(s.meeting_with(&rep, "us.example", now), None);
        assert_eq!(s.meeting_with(&rep, "acme.example", at("2026-12-01T00:00:00Z")), None, "in the past");
    }

    #[test]
    fn away_spans_merge_and_say_when_the_person_is_back() {
        let s = snapshot(&[
            event("2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z", &[], true, true),
            event("2026-11-24T00:00:00Z", "2026-11-25T00:00:00Z", &[], true, true),
        ]);
        let rep = PersonId::new("rep");
        assert_eq!(s.away_until(&rep, at("2026-11-23T10:00:00Z")), Some(at("2026-11-25T00:00:00Z")));
        assert_eq!(s.away_until(&rep, at("2026-11-25T00:00:00Z")), None);
        assert_eq!(s.away_until(&PersonId::new("nobody"), at("2026-11-23T10:00:00Z")), None);
    }

    #[test]
    fn the_free_slot_skips_busy_time_closed_hours_and_weekends() {
        let hours = BusinessHours {
            start: chrono::NaiveTime::from_hms_opt(9, 0, 0).expect("time"),
            end: chrono::NaiveTime::from_hms_opt(17, 0, 0).expect("time"),
            days: vec![
                chrono::Weekday::Mon,
                chrono::Weekday::Tue,
                chrono::Weekday::Wed,
                chrono::Weekday::Thu,
                chrono::Weekday::Fri,
            ],
            holidays: None,
        };
        let tz: Tz = "Europe/Berlin".parse().expect("zone");
        let s = snapshot(&[
            // Friday 27 Nov, Berlin: busy 09:00-10:10 local.
            event("2026-11-27T08:00:00Z", "2026-11-27T09:10:00Z", &[], false, false),
        ]);
        let rep = PersonId::new("rep");
        let slot = |now: &str| s.next_free_slot(&rep, at(now), TimeDelta::minutes(30), tz, &hours, &[]);
        // 07:52 UTC = 08:52 Berlin, busy until 10:10: the slot is at 10:15 local.
        assert_eq!(
            slot("2026-11-27T07:52:00Z"),
            Some((at("2026-11-27T09:15:00Z"), at("2026-11-27T09:45:00Z")))
        );
        // Friday 16:45 local: too late for 30 minutes; the weekend is closed; Monday 09:00.
        assert_eq!(
            slot("2026-11-27T15:45:00Z"),
            Some((at("2026-11-30T08:00:00Z"), at("2026-11-30T08:30:00Z")))
        );
        assert_eq!(
            s.next_free_slot(
                &PersonId::new("x"),
                at("2026-11-27T07:52:00Z"),
                TimeDelta::minutes(30),
                tz,
                &hours,
                &[]
            ),
            None
        );
    }
}
