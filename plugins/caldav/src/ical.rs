//! iCalendar (RFC 5545) in and out: VEVENTs parsed through `icalendar`'s parser, reduced to
//! [`CalendarEvent`]s within a window with recurring events expanded through `rrule`
//! (RRULE, RDATE, EXDATE and RECURRENCE-ID overrides), and the hold leadloop books.
//!
//! Time zones: a `TZID` must be an IANA name; floating times and all-day dates are placed in
//! the person's time zone. A component that cannot be read is an error for its resource only.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use icalendar::parser::{Component, Property, read_calendar, unfold};
use leadloop_core::Timestamp;
use leadloop_core::connector::CalendarEvent;
use rrule::{RRule, RRuleSet, Unvalidated};

/// The most occurrences one recurring event may yield in a window.
const MAX_OCCURRENCES: u16 = 1000;

/// A `DTSTART`/`DTEND`/`RECURRENCE-ID` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Date(NaiveDate),
    Utc(DateTime<Utc>),
    Local(NaiveDateTime, Tz),
}

fn param<'a>(prop: &'a Property<'_>, key: &str) -> Option<&'a str> {
    prop.params
        .iter()
        .find(|p| p.key.as_str().eq_ignore_ascii_case(key))
        .and_then(|p| p.val.as_ref())
        .map(|v| v.as_str())
}

fn prop<'a>(component: &'a Component<'_>, name: &str) -> Option<&'a Property<'a>> {
    component.properties.iter().find(|p| p.name.as_str().eq_ignore_ascii_case(name))
}

fn props<'a>(component: &'a Component<'_>, name: &'a str) -> impl Iterator<Item = &'a Property<'a>> {
    component.properties.iter().filter(move |p| p.name.as_str().eq_ignore_ascii_case(name))
}

fn zone(tzid: &str) -> Result<Tz, String> {
    // Some servers write `/Europe/Berlin` or quote the name.
    let name = tzid.trim_matches('"').trim_start_matches('/');
    name.parse::<Tz>().map_err(|_| format!("unknown time zone `{tzid}` (an IANA name is expected)"))
}

/// One value of a date or date-time property (`raw` is a single value, not a list).
fn parse_value(raw: &str, tzid: Option<&str>, date_only: bool, local: Tz) -> Result<When, String> {
    let raw = raw.trim();
    if date_only || raw.len() == 8 {
        return NaiveDate::parse_from_str(raw, "%Y%m%d")
            .map(When::Date)
            .map_err(|_| format!("`{raw}` is not a date"));
    }
    if let Some(utc) = raw.strip_suffix('Z') {
        return NaiveDateTime::parse_from_str(utc, "%Y%m%dT%H%M%S")
            .map(|n| When::Utc(Utc.from_utc_datetime(&n)))
            .map_err(|_| format!("`{raw}` is not a date-time"));
    }
    let naive = NaiveDateTime::parse_from_str(raw, "%Y%m%dT%H%M%S")
        .map_err(|_| format!("`{raw}` is not a date-time"))?;
    let tz = match tzid {
        Some(id) => zone(id)?,
        None => local,
    };
    Ok(When::Local(naive, tz))
}

fn parse_when(prop: &Property<'_>, local: Tz) -> Result<When, String> {
    let date_only = param(prop, "VALUE").is_some_and(|v| v.eq_ignore_ascii_case("DATE"));
    parse_value(prop.val.as_str(), param(prop, "TZID"), date_only, local)
}

/// Every value of a list property (`EXDATE:a,b`).
fn parse_list(prop: &Property<'_>, local: Tz) -> Result<Vec<When>, String> {
    let date_only = param(prop, "VALUE").is_some_and(|v| v.eq_ignore_ascii_case("DATE"));
    prop.val
        .as_str()
        .split(',')
        .filter(|v| !v.trim().is_empty())
        .map(|v| parse_value(v, param(prop, "TZID"), date_only, local))
        .collect()
}

/// The instant of local `naive` in `tz`; a time in a DST gap moves past the gap.
fn local_instant<T: TimeZone>(tz: &T, naive: NaiveDateTime) -> Option<DateTime<T>> {
    (0..=180).find_map(|m| tz.from_local_datetime(&(naive + TimeDelta::minutes(m))).earliest())
}

impl When {
    fn instant(self, local: Tz) -> Option<Timestamp> {
        match self {
            When::Date(d) => local_instant(&local, d.and_time(chrono::NaiveTime::MIN)).map(|t| t.to_utc()),
            When::Utc(t) => Some(t),
            When::Local(n, tz) => local_instant(&tz, n).map(|t| t.to_utc()),
        }
    }

    /// The same value in rrule's zone type, so recurrences follow the event's own zone
    /// across DST changes.
    fn rrule(self, local: Tz) -> Option<DateTime<rrule::Tz>> {
        match self {
            When::Date(d) => local_instant(&rrule::Tz::Tz(local), d.and_time(chrono::NaiveTime::MIN)),
            When::Utc(t) => Some(t.with_timezone(&rrule::Tz::UTC)),
            When::Local(n, tz) => local_instant(&rrule::Tz::Tz(tz), n),
        }
    }
}

/// `P1D`, `PT1H30M`, `P2W`, `-PT15M`.
fn parse_duration(raw: &str) -> Result<TimeDelta, String> {
    let bad = || format!("`{raw}` is not a duration");
    let (sign, rest) = match raw.trim().strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, raw.trim().trim_start_matches('+')),
    };
    let rest = rest.strip_prefix('P').ok_or_else(bad)?;
    let mut total = TimeDelta::zero();
    let mut number = String::new();
    let mut in_time = false;
    for c in rest.chars() {
        match c {
            'T' => in_time = true,
            '0'..='9' => number.push(c),
            unit => {
                let n: i64 = number.parse().map_err(|_| bad())?;
                number.clear();
                total += match (unit, in_time) {
                    ('W', false) => TimeDelta::weeks(n),
                    ('D', false) => TimeDelta::days(n),
                    ('H', true) => TimeDelta::hours(n),
                    ('M', true) => TimeDelta::minutes(n),
                    ('S', true) => TimeDelta::seconds(n),
                    _ => return Err(bad()),
                };
            }
        }
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(total * sign)
}

/// What one VEVENT says, before expansion.
struct Master {
    uid: String,
    start: When,
    /// Exact length for timed events; whole days for all-day ones.
    length: Length,
    summary: String,
    attendees: Vec<String>,
    busy: bool,
    out_of_office: bool,
    recurrence_id: Option<When>,
    rrule: Option<String>,
    rdates: Vec<When>,
    exdates: Vec<When>,
}

#[derive(Clone, Copy)]
enum Length {
    Exact(TimeDelta),
    Days(i64),
}

fn address(prop: &Property<'_>) -> Option<String> {
    let value = prop.val.as_str().trim();
    let lower = value.to_ascii_lowercase();
    let bare = lower.strip_prefix("mailto:").unwrap_or(&lower);
    bare.contains('@').then(|| bare.to_owned())
}

fn read_master(component: &Component<'_>, local: Tz) -> Result<Master, String> {
    let uid = prop(component, "UID").map(|p| p.val.as_str().to_owned()).ok_or("VEVENT without UID")?;
    let start_prop = prop(component, "DTSTART").ok_or_else(|| format!("event {uid}: no DTSTART"))?;
    let start = parse_when(start_prop, local).map_err(|e| format!("event {uid}: DTSTART {e}"))?;
    let length = match (prop(component, "DTEND"), prop(component, "DURATION"), start) {
        (Some(end), _, _) => {
            match (start, parse_when(end, local).map_err(|e| format!("event {uid}: DTEND {e}"))?) {
                (When::Date(s), When::Date(e)) => Length::Days((e - s).num_days()),
                (s, e) => {
                    let (s, e) = (s.instant(local), e.instant(local));
                    Length::Exact(e.zip(s).map(|(e, s)| e - s).unwrap_or_default())
                }
            }
        }
        (None, Some(duration), When::Date(_)) => {
            let d =
                parse_duration(duration.val.as_str()).map_err(|e| format!("event {uid}: DURATION {e}"))?;
            Length::Days(d.num_days().max(1))
        }
        (None, Some(duration), _) => Length::Exact(
            parse_duration(duration.val.as_str()).map_err(|e| format!("event {uid}: DURATION {e}"))?,
        ),
        // RFC 5545: an all-day event without an end lasts the day; a timed one is an instant.
        (None, None, When::Date(_)) => Length::Days(1),
        (None, None, _) => Length::Exact(TimeDelta::zero()),
    };
    if matches!(length, Length::Exact(d) if d < TimeDelta::zero())
        || matches!(length, Length::Days(d) if d < 0)
    {
        return Err(format!("event {uid}: ends before it starts"));
    }
    let mut attendees: Vec<String> =
        props(component, "ATTENDEE").chain(props(component, "ORGANIZER")).filter_map(address).collect();
    attendees.sort();
    attendees.dedup();
    let summary = prop(component, "SUMMARY").map(|p| unescape(p.val.as_str())).unwrap_or_default();
    let transparent =
        prop(component, "TRANSP").is_some_and(|p| p.val.as_str().eq_ignore_ascii_case("TRANSPARENT"));
    let busy_status =
        prop(component, "X-MICROSOFT-CDO-BUSYSTATUS").map(|p| p.val.as_str().to_ascii_uppercase());
    let categories: String = props(component, "CATEGORIES")
        .map(|p| p.val.as_str().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    let out_of_office = busy_status.as_deref() == Some("OOF")
        || categories.contains("out of office")
        || says_out_of_office(&summary);
    let recurrence_id = prop(component, "RECURRENCE-ID")
        .map(|p| parse_when(p, local))
        .transpose()
        .map_err(|e| format!("event {uid}: RECURRENCE-ID {e}"))?;
    let mut rdates = Vec::new();
    for p in props(component, "RDATE") {
        if param(p, "VALUE").is_some_and(|v| v.eq_ignore_ascii_case("PERIOD")) {
            return Err(format!("event {uid}: RDATE periods are not supported"));
        }
        rdates.extend(parse_list(p, local).map_err(|e| format!("event {uid}: RDATE {e}"))?);
    }
    let mut exdates = Vec::new();
    for p in props(component, "EXDATE") {
        exdates.extend(parse_list(p, local).map_err(|e| format!("event {uid}: EXDATE {e}"))?);
    }
    Ok(Master {
        uid,
        start,
        length,
        summary,
        attendees,
        busy: !transparent,
        out_of_office,
        recurrence_id,
        rrule: prop(component, "RRULE").map(|p| p.val.as_str().to_owned()),
        rdates,
        exdates,
    })
}

/// `Out of office`, `OOO`, `Vacation`, `PTO` as words of the title.
fn says_out_of_office(summary: &str) -> bool {
    let lower = summary.to_lowercase();
    lower.contains("out of office")
        || lower.split(|c: char| !c.is_alphanumeric()).any(|w| matches!(w, "ooo" | "vacation" | "pto"))
}

fn unescape(text: &str) -> String {
    text.replace("\\n", " ").replace("\\N", " ").replace("\\,", ",").replace("\\;", ";").replace("\\\\", "\\")
}

impl Master {
    fn all_day(&self) -> bool {
        matches!(self.start, When::Date(_))
    }

    /// The occurrence starting at `start` (an instant in the event's own zone).
    fn occurrence(&self, start: DateTime<rrule::Tz>, local: Tz) -> CalendarEvent {
        let end = match self.length {
            Length::Exact(d) => start.to_utc() + d,
            // Whole days keep their local midnight across DST changes.
            Length::Days(n) => {
                local_instant(&local, start.with_timezone(&local).naive_local() + TimeDelta::days(n))
                    .map(|t| t.to_utc())
                    .unwrap_or(start.to_utc() + TimeDelta::days(n))
            }
        };
        let all_day = self.all_day();
        CalendarEvent {
            uid: self.uid.clone(),
            start: start.to_utc(),
            end,
            all_day,
            summary: self.summary.clone(),
            attendees: self.attendees.clone(),
            busy: self.busy,
            away: self.out_of_office || (all_day && self.busy),
        }
    }

    /// Start instants of the occurrences that may overlap `[from, to)`.
    fn starts(&self, from: Timestamp, to: Timestamp, local: Tz) -> Result<Vec<DateTime<rrule::Tz>>, String> {
        let uid = &self.uid;
        let dtstart =
            self.start.rrule(local).ok_or_else(|| format!("event {uid}: DTSTART does not exist"))?;
        if self.rrule.is_none() && self.rdates.is_empty() {
            return Ok(vec![dtstart]);
        }
        let longest = match self.length {
            Length::Exact(d) => d,
            Length::Days(n) => TimeDelta::days(n) + TimeDelta::hours(2),
        };
        let mut set = RRuleSet::new(dtstart);
        if let Some(rule) = &self.rrule {
            let rule: RRule<Unvalidated> = rule.parse().map_err(|e| format!("event {uid}: RRULE {e}"))?;
            let rule = rule.validate(dtstart).map_err(|e| format!("event {uid}: RRULE {e}"))?;
            set = set.rrule(rule);
        } else {
            // With RDATEs alone, DTSTART is still the first occurrence (RFC 5545 §3.8.5.2).
            set = set.rdate(dtstart);
        }
        let convert = |w: &When| w.rrule(local);
        set = set.set_rdates(
            self.rdates.iter().filter_map(convert).chain(self.rrule.is_none().then_some(dtstart)).collect(),
        );
        set = set.set_exdates(self.exdates.iter().filter_map(convert).collect());
        let result = set
            .after((from - longest - TimeDelta::seconds(1)).with_timezone(&rrule::Tz::UTC))
            .before(to.with_timezone(&rrule::Tz::UTC))
            .all(MAX_OCCURRENCES);
        Ok(result.dates)
    }
}

/// The events of one iCalendar object overlapping `[from, to)`, in start order. All-day
/// dates and floating times are in `local`. Any component that cannot be read makes the
/// whole object an error (one resource is one event and its overrides).
pub fn events_in(ics: &str, from: Timestamp, to: Timestamp, local: Tz) -> Result<Vec<CalendarEvent>, String> {
    let unfolded = unfold(ics);
    let calendar = read_calendar(&unfolded).map_err(|e| {
        let first = e.lines().find(|l| !l.trim().is_empty() && l.trim() != "error:").unwrap_or("");
        format!("malformed iCalendar: {}", first.trim().chars().take(160).collect::<String>())
    })?;
    let mut masters = Vec::new();
    let mut overrides = Vec::new();
    let mut saw_calendar = false;
    for component in &calendar.components {
        saw_calendar = true;
        if !component.name.as_str().eq_ignore_ascii_case("VEVENT") {
            continue;
        }
        if prop(component, "STATUS").is_some_and(|p| p.val.as_str().eq_ignore_ascii_case("CANCELLED")) {
            // A cancelled override still removes its occurrence from the series.
            if let Ok(m) = read_master(component, local)
                && m.recurrence_id.is_some()
            {
                overrides.push((m, false));
            }
            continue;
        }
        let master = read_master(component, local)?;
        if master.recurrence_id.is_some() {
            overrides.push((master, true));
        } else {
            masters.push(master);
        }
    }
    if !saw_calendar && !ics.to_ascii_uppercase().contains("BEGIN:VCALENDAR") {
        return Err("malformed iCalendar: no VCALENDAR".into());
    }
    // Occurrences replaced by an override, per UID.
    let mut replaced: BTreeMap<&str, BTreeSet<Timestamp>> = BTreeMap::new();
    for (o, _) in &overrides {
        if let Some(at) = o.recurrence_id.and_then(|w| w.instant(local)) {
            replaced.entry(o.uid.as_str()).or_default().insert(at);
        }
    }
    let mut out = Vec::new();
    let overlaps =
        |e: &CalendarEvent| e.start < to && (e.end > from || (e.end == e.start && e.start >= from));
    for master in &masters {
        let skip = replaced.get(master.uid.as_str());
        for start in master.starts(from, to, local)? {
            if skip.is_some_and(|s| s.contains(&start.to_utc())) {
                continue;
            }
            let event = master.occurrence(start, local);
            if overlaps(&event) {
                out.push(event);
            }
        }
    }
    for (o, keep) in &overrides {
        if !keep {
            continue;
        }
        if let Some(start) = o.start.rrule(local) {
            let event = o.occurrence(start, local);
            if overlaps(&event) {
                out.push(event);
            }
        }
    }
    out.sort_by(|a, b| (a.start, &a.uid).cmp(&(b.start, &b.uid)));
    Ok(out)
}

/// A `DTSTART`-style UTC value.
fn utc_value(at: Timestamp) -> String {
    at.format("%Y%m%dT%H%M%SZ").to_string()
}

/// Escapes TEXT for iCalendar.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace(';', "\\;").replace(',', "\\,").replace('\n', "\\n").replace('\r', "")
}

/// Folds a content line at 75 octets, never inside a UTF-8 character.
fn fold(line: &str) -> String {
    let mut out = String::new();
    let mut width = 0;
    for c in line.chars() {
        if width + c.len_utf8() > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += c.len_utf8();
    }
    out.push_str("\r\n");
    out
}

/// The hold leadloop books: a busy event with a fixed UID, so the same hold is one resource.
pub fn hold(
    uid: &str,
    start: Timestamp,
    end: Timestamp,
    summary: &str,
    organizer: Option<&str>,
    now: Timestamp,
) -> String {
    let mut lines = vec![
        "BEGIN:VCALENDAR".to_owned(),
        "VERSION:2.0".to_owned(),
        "PRODID:-//leadloop//caldav//EN".to_owned(),
        "BEGIN:VEVENT".to_owned(),
        format!("UID:{uid}"),
        format!("DTSTAMP:{}", utc_value(now)),
        format!("DTSTART:{}", utc_value(start)),
        format!("DTEND:{}", utc_value(end)),
        format!("SUMMARY:{}", escape(summary)),
        "TRANSP:OPAQUE".to_owned(),
        "CATEGORIES:leadloop".to_owned(),
    ];
    if let Some(organizer) = organizer {
        lines.push(format!("ORGANIZER:mailto:{organizer}"));
    }
    lines.extend(["END:VEVENT".to_owned(), "END:VCALENDAR".to_owned()]);
    lines.iter().map(|l| fold(l)).collect()
}

/// Busy periods of a free-busy answer (`VFREEBUSY` with `FREEBUSY` periods), `FBTYPE=FREE`
/// left out.
pub fn free_busy_periods(ics: &str) -> Result<Vec<(Timestamp, Timestamp)>, String> {
    let unfolded = unfold(ics);
    let calendar = read_calendar(&unfolded).map_err(|_| "malformed free-busy answer".to_owned())?;
    let mut out = Vec::new();
    for component in calendar.components.iter().filter(|c| c.name.as_str().eq_ignore_ascii_case("VFREEBUSY"))
    {
        for p in props(component, "FREEBUSY") {
            if param(p, "FBTYPE").is_some_and(|t| t.eq_ignore_ascii_case("FREE")) {
                continue;
            }
            for period in p.val.as_str().split(',') {
                let (start, rest) = period.split_once('/').ok_or_else(|| format!("bad period `{period}`"))?;
                let start = match parse_value(start, None, false, Tz::UTC)? {
                    When::Utc(t) => t,
                    other => other.instant(Tz::UTC).ok_or_else(|| format!("bad period `{period}`"))?,
                };
                let end = if rest.starts_with('P') || rest.starts_with('-') {
                    start + parse_duration(rest)?
                } else {
                    parse_value(rest, None, false, Tz::UTC)?
                        .instant(Tz::UTC)
                        .ok_or_else(|| format!("bad period `{period}`"))?
                };
                out.push((start, end));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn wrap(body: &str) -> String {
        format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n{body}END:VCALENDAR\r\n")
    }

    fn check(body: &str, local: &str, from: &str, to: &str, expect: &[&str]) {
        let events = events_in(&wrap(body), at(from), at(to), local.parse().unwrap()).unwrap();
        let got: Vec<String> = events
            .iter()
            .map(|e| {
                format!(
                    "{} {}..{}{}{}",
                    e.summary,
                    e.start.format("%Y-%m-%dT%H:%M"),
                    e.end.format("%Y-%m-%dT%H:%M"),
                    if e.all_day { " all-day" } else { "" },
                    if e.away { " away" } else { "" }
                )
            })
            .collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn weekly_meeting_in_another_zone_keeps_its_local_time_across_dst() {
        // 10:00 New York every Monday; DST ends there on 2026-11-01.
        let body = "BEGIN:VEVENT\r\nUID:w1\r\nDTSTAMP:20261001T000000Z\r\nDTSTART;TZID=America/New_York:20261019T100000\r\nDTEND;TZID=America/New_York:20261019T103000\r\nRRULE:FREQ=WEEKLY;BYDAY=MO;COUNT=10\r\nEXDATE;TZID=America/New_York:20261026T100000\r\nSUMMARY:Sync\r\nATTENDEE;CN=Ana:mailto:Ana@Acme.example\r\nORGANIZER:mailto:rep@us.example\r\nEND:VEVENT\r\n";
        check(
            body,
            "Europe/Berlin",
            "2026-10-18T00:00:00Z",
            "2026-11-10T00:00:00Z",
            &[
                "Sync 2026-10-19T14:00..2026-10-19T14:30",
                "Sync 2026-11-02T15:00..2026-11-02T15:30",
                "Sync 2026-11-09T15:00..2026-11-09T15:30",
            ],
        );
        let events =
            events_in(&wrap(body), at("2026-10-18T00:00:00Z"), at("2026-10-20T00:00:00Z"), Tz::UTC).unwrap();
        assert_eq!(events[0].attendees, ["ana@acme.example", "rep@us.example"]);
    }

    #[test]
    fn all_day_events_sit_in_the_persons_zone_and_count_as_away() {
        let body = "BEGIN:VEVENT\r\nUID:a1\r\nDTSTART;VALUE=DATE:20261124\r\nDTEND;VALUE=DATE:20261126\r\nSUMMARY:Conference\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:a2\r\nDTSTART;VALUE=DATE:20261127\r\nSUMMARY:Company holiday\r\nTRANSP:TRANSPARENT\r\nEND:VEVENT\r\n";
        check(
            body,
            "Europe/Berlin",
            "2026-11-20T00:00:00Z",
            "2026-12-01T00:00:00Z",
            &[
                "Conference 2026-11-23T23:00..2026-11-25T23:00 all-day away",
                // Transparent: busy with nothing, so not time away.
                "Company holiday 2026-11-26T23:00..2026-11-27T23:00 all-day",
            ],
        );
    }

    #[test]
    fn out_of_office_is_read_from_the_busy_status_and_the_title() {
        let body = "BEGIN:VEVENT\r\nUID:o1\r\nDTSTART:20261124T130000Z\r\nDTEND:20261124T170000Z\r\nSUMMARY:Doctor\r\nX-MICROSOFT-CDO-BUSYSTATUS:OOF\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:o2\r\nDTSTART:20261125T080000Z\r\nDURATION:PT2H\r\nSUMMARY:OOO - school run\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:o3\r\nDTSTART:20261125T120000Z\r\nDURATION:PT1H\r\nSUMMARY:Roof review\r\nEND:VEVENT\r\n";
        check(
            body,
            "UTC",
            "2026-11-24T00:00:00Z",
            "2026-11-26T00:00:00Z",
            &[
                "Doctor 2026-11-24T13:00..2026-11-24T17:00 away",
                "OOO - school run 2026-11-25T08:00..2026-11-25T10:00 away",
                "Roof review 2026-11-25T12:00..2026-11-25T13:00",
            ],
        );
    }

    #[test]
    fn an_override_moves_one_occurrence_and_a_cancelled_one_removes_it() {
        let body = "BEGIN:VEVENT\r\nUID:d1\r\nDTSTART:20261123T090000Z\r\nDTEND:20261123T091500Z\r\nRRULE:FREQ=DAILY;COUNT=4\r\nSUMMARY:Standup\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:d1\r\nRECURRENCE-ID:20261124T090000Z\r\nDTSTART:20261124T110000Z\r\nDTEND:20261124T111500Z\r\nSUMMARY:Standup (moved)\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:d1\r\nRECURRENCE-ID:20261125T090000Z\r\nDTSTART:20261125T090000Z\r\nDTEND:20261125T091500Z\r\nSTATUS:CANCELLED\r\nSUMMARY:Standup\r\nEND:VEVENT\r\n";
        check(
            body,
            "UTC",
            "2026-11-23T00:00:00Z",
            "2026-11-30T00:00:00Z",
            &[
                "Standup 2026-11-23T09:00..2026-11-23T09:15",
                "Standup (moved) 2026-11-24T11:00..2026-11-24T11:15",
                "Standup 2026-11-26T09:00..2026-11-26T09:15",
            ],
        );
    }

    #[test]
    fn a_series_that_began_long_ago_yields_only_the_window() {
        let body = "BEGIN:VEVENT\r\nUID:old\r\nDTSTART;TZID=Europe/Berlin:20200106T090000\r\nDTEND;TZID=Europe/Berlin:20200106T100000\r\nRRULE:FREQ=WEEKLY\r\nSUMMARY:Weekly\r\nEND:VEVENT\r\n";
        check(
            body,
            "UTC",
            "2026-11-23T00:00:00Z",
            "2026-11-30T00:00:00Z",
            &["Weekly 2026-11-23T08:00..2026-11-23T09:00"],
        );
    }

    #[test]
    fn malformed_bodies_are_errors_with_a_reason() {
        let cases = [
            ("garbage", "not iCalendar at all".to_owned()),
            ("no dtstart", wrap("BEGIN:VEVENT\r\nUID:x\r\nSUMMARY:x\r\nEND:VEVENT\r\n")),
            ("bad date", wrap("BEGIN:VEVENT\r\nUID:x\r\nDTSTART:2026-11-23\r\nEND:VEVENT\r\n")),
            (
                "unknown zone",
                wrap("BEGIN:VEVENT\r\nUID:x\r\nDTSTART;TZID=Mars/Olympus:20261123T090000\r\nEND:VEVENT\r\n"),
            ),
            (
                "bad rrule",
                wrap(
                    "BEGIN:VEVENT\r\nUID:x\r\nDTSTART:20261123T090000Z\r\nRRULE:FREQ=SOMETIMES\r\nEND:VEVENT\r\n",
                ),
            ),
            ("unterminated", "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\n".to_owned()),
        ];
        for (name, body) in cases {
            let result = events_in(&body, at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z"), Tz::UTC);
            assert!(result.is_err(), "{name}: {result:?}");
        }
        let reason =
            events_in(&cases_zone(), at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z"), Tz::UTC)
                .unwrap_err();
        assert!(reason.contains("Mars/Olympus"), "{reason}");
    }

    fn cases_zone() -> String {
        wrap("BEGIN:VEVENT\r\nUID:x\r\nDTSTART;TZID=Mars/Olympus:20261123T090000\r\nEND:VEVENT\r\n")
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("PT1H30M").unwrap(), TimeDelta::minutes(90));
        assert_eq!(parse_duration("P1W").unwrap(), TimeDelta::days(7));
        assert_eq!(parse_duration("-PT15M").unwrap(), TimeDelta::minutes(-15));
        assert!(parse_duration("1H").is_err());
        assert!(parse_duration("PT5").is_err());
    }

    #[test]
    fn the_hold_reads_back_as_one_busy_event() {
        let text = hold(
            "leadloop-hold-00Q1-1",
            at("2026-11-24T10:00:00Z"),
            at("2026-11-24T10:30:00Z"),
            "Call Ana Lima, Acme; re: pricing",
            Some("rep@x.example"),
            at("2026-11-23T09:00:00Z"),
        );
        assert!(text.lines().all(|l| l.len() <= 76), "{text}");
        let events =
            events_in(&text, at("2026-11-24T00:00:00Z"), at("2026-11-25T00:00:00Z"), Tz::UTC).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].summary, "Call Ana Lima, Acme; re: pricing");
        assert_eq!((events[0].busy, events[0].away), (true, false));
    }

    #[test]
    fn free_busy_periods_are_read() {
        let text = "BEGIN:VCALENDAR\r\nBEGIN:VFREEBUSY\r\nFREEBUSY:20261124T090000Z/20261124T100000Z,20261124T120000Z/PT30M\r\nFREEBUSY;FBTYPE=FREE:20261124T130000Z/20261124T140000Z\r\nEND:VFREEBUSY\r\nEND:VCALENDAR\r\n";
        assert_eq!(
            free_busy_periods(text).unwrap(),
            vec![
                (at("2026-11-24T09:00:00Z"), at("2026-11-24T10:00:00Z")),
                (at("2026-11-24T12:00:00Z"), at("2026-11-24T12:30:00Z")),
            ]
        );
    }
}
