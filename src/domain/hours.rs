//! An agent's business hours: an IANA time zone, weekly windows and dated
//! exceptions, checked on the hot path of every call.
//!
//! The JSON form (the `agents.business_hours` jsonb column, and what the gRPC
//! layer converts to and from):
//!
//! ```json
//! {"time_zone": "America/New_York",
//!  "weekly": [{"day": "mon", "open": "09:00", "close": "17:00"},
//!             {"day": "fri", "open": "22:00", "close": "02:00"}],
//!  "exceptions": [{"date": "2026-12-25", "closed": true},
//!                 {"date": "2026-12-24", "closed": false,
//!                  "hours": [{"open": "09:00", "close": "13:00"}]}]}
//! ```
//!
//! - Times are "HH:MM" (00:00..23:59); "24:00" is allowed as a close only.
//! - close > open is `[open, close)` on that day. close <= open crosses
//!   midnight: `[open, 24:00)` that day and `[00:00, close)` the next.
//!   open == close is refused (a whole day is 00:00-24:00).
//! - Hours belong to the day they start on. An exception replaces the windows
//!   that start on its date; the tail of the previous day's crossing window
//!   (weekly, or that day's exception hours) still runs into it.
//! - Overlapping windows are allowed and open the union of their times.
//! - Bounds: [`MAX_WEEKLY_WINDOWS`], [`MAX_EXCEPTIONS`],
//!   [`MAX_RANGES_PER_EXCEPTION`], [`MAX_TIME_ZONE_CHARS`]. Unknown keys are
//!   refused; a missing "exceptions" is none; "weekly" may be empty.
//!
//! Evaluation is on local wall-clock time (the instant's local date and minute
//! of day), which makes daylight saving right by construction: a window in the
//! spring-forward gap opens at the first local time that exists, and one in the
//! fall-back overlap is open during both passes.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use chrono_tz::Tz;
use serde_json::{json, Map, Value};

use crate::error::Error;

/// The IANA time zone database release compiled in (e.g. "2025b"): zone rules
/// change with it, so it is worth reporting.
pub const TZDB_VERSION: &str = chrono_tz::IANA_TZDB_VERSION;

/// Most weekly windows in one schedule (four a day).
pub const MAX_WEEKLY_WINDOWS: usize = 28;
/// Most dated exceptions in one schedule (a year's worth).
pub const MAX_EXCEPTIONS: usize = 366;
/// Most hours ranges in one exception.
pub const MAX_RANGES_PER_EXCEPTION: usize = 4;
/// Longest accepted time zone name, in characters.
pub const MAX_TIME_ZONE_CHARS: usize = 64;

const MINUTES_PER_DAY: u16 = 24 * 60;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// An agent's business hours, pre-computed so that [`BusinessHours::is_open`]
/// is a few comparisons and never allocates.
#[derive(Clone, Debug, PartialEq)]
pub struct BusinessHours {
    time_zone: Tz,
    /// Indexed by days from Monday.
    weekly: [DayHours; 7],
    /// Sorted by date, dates unique (binary searched).
    exceptions: Vec<(NaiveDate, DayHours)>,
}

/// The windows that start on one day. For an exception, no windows means
/// closed all day.
#[derive(Clone, Debug, Default, PartialEq)]
struct DayHours {
    /// Sorted by (open, close).
    windows: Vec<Window>,
    /// The end (minutes) of the part of crossing windows that runs into the
    /// next day, `[00:00, spill)`; 0 if none crosses.
    spill: u16,
}

/// Minutes since local midnight: `open` in 0..1440, `close` in 0..=1440,
/// never equal. `close <= open` crosses midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Window {
    open: u16,
    close: u16,
}

impl Window {
    fn crosses_midnight(self) -> bool {
        self.close <= self.open
    }

    /// Whether `minute` of the day the window starts on is inside it.
    fn contains(self, minute: u16) -> bool {
        minute >= self.open && (self.crosses_midnight() || minute < self.close)
    }

    fn to_json(self) -> Value {
        json!({"open": format_time(self.open), "close": format_time(self.close)})
    }
}

impl DayHours {
    fn new(mut windows: Vec<Window>) -> Self {
        windows.sort_unstable();
        let spill = windows
            .iter()
            .filter(|w| w.crosses_midnight())
            .map(|w| w.close)
            .max()
            .unwrap_or(0);
        DayHours { windows, spill }
    }

    fn contains(&self, minute: u16) -> bool {
        self.windows
            .iter()
            .take_while(|w| w.open <= minute)
            .any(|w| w.contains(minute))
    }
}

impl BusinessHours {
    /// From the JSON form above (gRPC converts to it; the store reads it).
    /// `field` prefixes messages, e.g. "agent.business_hours".
    pub fn parse(field: &str, json: &Value) -> Result<Self, Error> {
        let object = as_object(field, json, &["time_zone", "weekly", "exceptions"])?;

        let zone_field = format!("{field}.time_zone");
        let zone_value = object
            .get("time_zone")
            .ok_or_else(|| Error::invalid(format!("{zone_field} is required")))?;
        let time_zone = parse_time_zone(&zone_field, zone_value)?;

        let weekly_field = format!("{field}.weekly");
        let weekly_value = object
            .get("weekly")
            .ok_or_else(|| Error::invalid(format!("{weekly_field} is required")))?;
        let weekly = parse_weekly(&weekly_field, weekly_value)?;

        let exceptions = match object.get("exceptions") {
            None => Vec::new(),
            Some(value) => parse_exceptions(&format!("{field}.exceptions"), value)?,
        };

        Ok(BusinessHours {
            time_zone,
            weekly,
            exceptions,
        })
    }

    /// The JSON form, canonical (times "HH:MM", weekly sorted by day then
    /// open, exceptions by date), so equal schedules store equal jsonb.
    pub fn to_json(&self) -> Value {
        let weekly: Vec<Value> = DAY_NAMES
            .iter()
            .zip(&self.weekly)
            .flat_map(|(day, hours)| {
                hours.windows.iter().map(move |w| {
                    json!({"day": day, "open": format_time(w.open), "close": format_time(w.close)})
                })
            })
            .collect();
        let exceptions: Vec<Value> = self
            .exceptions
            .iter()
            .map(|(date, hours)| {
                let date = date.format("%Y-%m-%d").to_string();
                if hours.windows.is_empty() {
                    json!({"date": date, "closed": true})
                } else {
                    let ranges: Vec<Value> = hours.windows.iter().map(|w| w.to_json()).collect();
                    json!({"date": date, "closed": false, "hours": ranges})
                }
            })
            .collect();
        json!({
            "time_zone": self.time_zone.name(),
            "weekly": weekly,
            "exceptions": exceptions,
        })
    }

    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// Whether calls are taken at `at`: the windows starting on the local
    /// date, then the spill of the previous local date's crossing windows.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.time_zone);
        let date = local.date_naive();
        // < 1440, so the cast cannot truncate.
        let minute = (local.time().num_seconds_from_midnight() / 60) as u16;
        if self.hours_on(date).contains(minute) {
            return true;
        }
        match date.pred_opt() {
            Some(previous) => minute < self.hours_on(previous).spill,
            None => false,
        }
    }

    /// The windows that start on `date`: its exception's, else the weekday's.
    fn hours_on(&self, date: NaiveDate) -> &DayHours {
        match self.exceptions.binary_search_by_key(&date, |(d, _)| *d) {
            Ok(index) => &self.exceptions[index].1,
            Err(_) => &self.weekly[date.weekday().num_days_from_monday() as usize],
        }
    }
}

fn parse_time_zone(field: &str, value: &Value) -> Result<Tz, Error> {
    let name = as_str(field, value)?;
    if name.chars().count() > MAX_TIME_ZONE_CHARS {
        return Err(Error::invalid(format!(
            "{field} is longer than {MAX_TIME_ZONE_CHARS} characters"
        )));
    }
    name.parse::<Tz>().map_err(|_| {
        Error::invalid(format!(
            "{field} {} is not a known IANA time zone (e.g. \"America/New_York\", \"UTC\")",
            echo(name)
        ))
    })
}

fn parse_weekly(field: &str, value: &Value) -> Result<[DayHours; 7], Error> {
    let items = as_array(field, value)?;
    if items.len() > MAX_WEEKLY_WINDOWS {
        return Err(Error::invalid(format!(
            "{field} has {} windows; the limit is {MAX_WEEKLY_WINDOWS}",
            items.len()
        )));
    }
    let mut days: [Vec<Window>; 7] = Default::default();
    for (index, item) in items.iter().enumerate() {
        let item_field = format!("{field}[{index}]");
        let object = as_object(&item_field, item, &["day", "open", "close"])?;
        let day_field = format!("{item_field}.day");
        let day_value = object
            .get("day")
            .ok_or_else(|| Error::invalid(format!("{day_field} is required")))?;
        let day = parse_day(&day_field, day_value)?;
        days[day].push(parse_window(&item_field, object)?);
    }
    Ok(days.map(DayHours::new))
}

fn parse_exceptions(field: &str, value: &Value) -> Result<Vec<(NaiveDate, DayHours)>, Error> {
    let items = as_array(field, value)?;
    if items.len() > MAX_EXCEPTIONS {
        return Err(Error::invalid(format!(
            "{field} has {} entries; the limit is {MAX_EXCEPTIONS}",
            items.len()
        )));
    }
    let mut exceptions = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let item_field = format!("{field}[{index}]");
        let object = as_object(&item_field, item, &["date", "closed", "hours"])?;

        let date_field = format!("{item_field}.date");
        let date_value = object
            .get("date")
            .ok_or_else(|| Error::invalid(format!("{date_field} is required")))?;
        let date = parse_date(&date_field, date_value)?;

        let closed_field = format!("{item_field}.closed");
        let closed = match object.get("closed") {
            Some(Value::Bool(closed)) => *closed,
            Some(_) => {
                return Err(Error::invalid(format!(
                    "{closed_field} must be true or false"
                )))
            }
            None => return Err(Error::invalid(format!("{closed_field} is required"))),
        };

        let hours_field = format!("{item_field}.hours");
        let ranges = match object.get("hours") {
            Some(value) => as_array(&hours_field, value)?.as_slice(),
            None => &[],
        };
        if closed && !ranges.is_empty() {
            return Err(Error::invalid(format!(
                "{hours_field} must be empty when closed is true"
            )));
        }
        if !closed && ranges.is_empty() {
            return Err(Error::invalid(format!(
                "{hours_field} needs at least one range when closed is false"
            )));
        }
        if ranges.len() > MAX_RANGES_PER_EXCEPTION {
            return Err(Error::invalid(format!(
                "{hours_field} has {} ranges; the limit is {MAX_RANGES_PER_EXCEPTION}",
                ranges.len()
            )));
        }
        let mut windows = Vec::with_capacity(ranges.len());
        for (range_index, range) in ranges.iter().enumerate() {
            let range_field = format!("{hours_field}[{range_index}]");
            let object = as_object(&range_field, range, &["open", "close"])?;
            windows.push(parse_window(&range_field, object)?);
        }
        exceptions.push((date, DayHours::new(windows)));
    }
    exceptions.sort_unstable_by_key(|(date, _)| *date);
    if let Some(pair) = exceptions.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(Error::invalid(format!(
            "{field} has date {} more than once",
            pair[0].0.format("%Y-%m-%d")
        )));
    }
    Ok(exceptions)
}

/// The "open" and "close" of a window object.
fn parse_window(field: &str, object: &Map<String, Value>) -> Result<Window, Error> {
    let open_field = format!("{field}.open");
    let close_field = format!("{field}.close");
    let open_value = object
        .get("open")
        .ok_or_else(|| Error::invalid(format!("{open_field} is required")))?;
    let close_value = object
        .get("close")
        .ok_or_else(|| Error::invalid(format!("{close_field} is required")))?;
    let open = parse_time(&open_field, open_value)?;
    if open == MINUTES_PER_DAY {
        return Err(Error::invalid(format!(
            "{open_field} may not be \"24:00\" (allowed as close only)"
        )));
    }
    let close = parse_time(&close_field, close_value)?;
    if open == close {
        return Err(Error::invalid(format!(
            "{field} open and close are equal; for a whole day use 00:00-24:00"
        )));
    }
    Ok(Window { open, close })
}

fn parse_day(field: &str, value: &Value) -> Result<usize, Error> {
    let text = as_str(field, value)?;
    DAY_NAMES.iter().position(|d| *d == text).ok_or_else(|| {
        Error::invalid(format!(
            "{field} must be one of mon tue wed thu fri sat sun, got {}",
            echo(text)
        ))
    })
}

/// "HH:MM" as minutes since midnight, 0..=1440 ("24:00" is 1440).
fn parse_time(field: &str, value: &Value) -> Result<u16, Error> {
    let text = as_str(field, value)?;
    let bad = || {
        Error::invalid(format!(
            "{field} must be a time \"HH:MM\" from 00:00 to 23:59 (or 24:00 as a close), got {}",
            echo(text)
        ))
    };
    let bytes = text.as_bytes();
    if bytes.len() != 5 || bytes[2] != b':' {
        return Err(bad());
    }
    let hours = two_digits(bytes[0], bytes[1]).ok_or_else(bad)?;
    let minutes = two_digits(bytes[3], bytes[4]).ok_or_else(bad)?;
    match (hours, minutes) {
        (24, 0) => Ok(MINUTES_PER_DAY),
        (0..=23, 0..=59) => Ok(hours * 60 + minutes),
        _ => Err(bad()),
    }
}

/// "YYYY-MM-DD", exactly that shape and a real date.
fn parse_date(field: &str, value: &Value) -> Result<NaiveDate, Error> {
    let text = as_str(field, value)?;
    let bad = || {
        Error::invalid(format!(
            "{field} must be a date \"YYYY-MM-DD\", got {}",
            echo(text)
        ))
    };
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let year = two_digits(b[0], b[1])
        .zip(two_digits(b[2], b[3]))
        .map(|(high, low)| i32::from(high) * 100 + i32::from(low))
        .ok_or_else(bad)?;
    let month = two_digits(b[5], b[6]).ok_or_else(bad)?;
    let day = two_digits(b[8], b[9]).ok_or_else(bad)?;
    NaiveDate::from_ymd_opt(year, u32::from(month), u32::from(day)).ok_or_else(bad)
}

fn two_digits(tens: u8, ones: u8) -> Option<u16> {
    (tens.is_ascii_digit() && ones.is_ascii_digit())
        .then(|| u16::from(tens - b'0') * 10 + u16::from(ones - b'0'))
}

fn format_time(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// `value` as an object holding no key outside `allowed`.
fn as_object<'a>(
    field: &str,
    value: &'a Value,
    allowed: &[&str],
) -> Result<&'a Map<String, Value>, Error> {
    let Value::Object(object) = value else {
        return Err(Error::invalid(format!("{field} must be a JSON object")));
    };
    if let Some(key) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Error::invalid(format!(
            "{field} has unknown key {}; allowed: {}",
            echo(key),
            allowed.join(", ")
        )));
    }
    Ok(object)
}

fn as_array<'a>(field: &str, value: &'a Value) -> Result<&'a Vec<Value>, Error> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(Error::invalid(format!("{field} must be a JSON array"))),
    }
}

/// A string holding no NUL (Postgres's jsonb cannot store U+0000).
fn as_str<'a>(field: &str, value: &'a Value) -> Result<&'a str, Error> {
    match value {
        Value::String(text) if text.contains('\0') => Err(Error::invalid(format!(
            "{field} must not contain a NUL character"
        ))),
        Value::String(text) => Ok(text),
        _ => Err(Error::invalid(format!("{field} must be a string"))),
    }
}

/// Input echoed in a message: at most 40 characters (the message goes back in
/// a gRPC trailer and into the log), quoted, control characters escaped.
fn echo(input: &str) -> String {
    const MAX_ECHO_CHARS: usize = 40;
    match input.char_indices().nth(MAX_ECHO_CHARS) {
        Some((end, _)) => format!("{:?}", format!("{}…", &input[..end])),
        None => format!("{input:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELD: &str = "agent.business_hours";

    fn hours(json: Value) -> BusinessHours {
        BusinessHours::parse(FIELD, &json).unwrap()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn refusal(json: Value) -> String {
        match BusinessHours::parse(FIELD, &json) {
            Err(Error::InvalidArgument(message)) => message,
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    fn weekly(zone: &str, windows: Value) -> BusinessHours {
        hours(json!({"time_zone": zone, "weekly": windows}))
    }

    #[test]
    fn plain_window_edges_and_24_00_close() {
        // 2026-01-05 is a Monday.
        let h = weekly(
            "UTC",
            json!([{"day": "mon", "open": "09:00", "close": "17:00"},
                   {"day": "tue", "open": "20:00", "close": "24:00"}]),
        );
        assert!(!h.is_open(utc("2026-01-05T08:59:59Z")));
        assert!(h.is_open(utc("2026-01-05T09:00:00Z")));
        assert!(h.is_open(utc("2026-01-05T16:59:59Z")));
        assert!(!h.is_open(utc("2026-01-05T17:00:00Z")));
        assert!(!h.is_open(utc("2026-01-06T09:30:00Z")), "tuesday morning");
        assert!(h.is_open(utc("2026-01-06T20:00:00Z")));
        assert!(h.is_open(utc("2026-01-06T23:59:59Z")));
        assert!(
            !h.is_open(utc("2026-01-07T00:00:00Z")),
            "24:00 does not spill"
        );
        assert!(!h.is_open(utc("2026-01-12T08:59:00Z")), "next monday");
        assert!(h.is_open(utc("2026-01-12T09:00:00Z")), "next monday");
    }

    #[test]
    fn whole_day() {
        let h = weekly(
            "UTC",
            json!([{"day": "wed", "open": "00:00", "close": "24:00"}]),
        );
        assert!(!h.is_open(utc("2026-01-06T23:59:59Z")));
        assert!(h.is_open(utc("2026-01-07T00:00:00Z")));
        assert!(h.is_open(utc("2026-01-07T23:59:59Z")));
        assert!(!h.is_open(utc("2026-01-08T00:00:00Z")));
    }

    #[test]
    fn windows_crossing_midnight() {
        // 2026-01-02 is a Friday, 2026-01-04 a Sunday.
        let h = weekly(
            "UTC",
            json!([{"day": "fri", "open": "22:00", "close": "02:00"},
                   {"day": "sun", "open": "22:00", "close": "02:00"}]),
        );
        assert!(!h.is_open(utc("2026-01-02T21:59:00Z")));
        assert!(h.is_open(utc("2026-01-02T23:00:00Z")));
        assert!(h.is_open(utc("2026-01-03T00:00:00Z")));
        assert!(h.is_open(utc("2026-01-03T01:59:00Z")));
        assert!(!h.is_open(utc("2026-01-03T02:00:00Z")));
        assert!(!h.is_open(utc("2026-01-03T23:00:00Z")), "saturday night");
        assert!(!h.is_open(utc("2026-01-02T01:00:00Z")), "thursday's night");
        // Sunday into Monday wraps the week.
        assert!(h.is_open(utc("2026-01-04T22:30:00Z")));
        assert!(h.is_open(utc("2026-01-05T01:00:00Z")));
        assert!(!h.is_open(utc("2026-01-05T02:00:00Z")));
    }

    #[test]
    fn spring_forward_new_york() {
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00Z).
        let h = weekly(
            "America/New_York",
            json!([{"day": "sun", "open": "02:30", "close": "03:30"},
                   {"day": "sun", "open": "09:00", "close": "17:00"}]),
        );
        assert!(!h.is_open(utc("2026-03-08T06:59:00Z")), "01:59 EST");
        assert!(h.is_open(utc("2026-03-08T07:00:00Z")), "03:00 EDT");
        assert!(h.is_open(utc("2026-03-08T07:29:00Z")), "03:29 EDT");
        assert!(!h.is_open(utc("2026-03-08T07:30:00Z")), "03:30 EDT");
        // 09:00-17:00 EDT is 13:00Z-21:00Z that day (EST would be 14:00Z).
        assert!(!h.is_open(utc("2026-03-08T12:59:00Z")));
        assert!(h.is_open(utc("2026-03-08T13:00:00Z")));
        assert!(h.is_open(utc("2026-03-08T20:59:00Z")));
        assert!(!h.is_open(utc("2026-03-08T21:00:00Z")));
    }

    #[test]
    fn fall_back_new_york() {
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST (06:00Z).
        let h = weekly(
            "America/New_York",
            json!([{"day": "sun", "open": "01:00", "close": "01:30"}]),
        );
        assert!(!h.is_open(utc("2026-11-01T04:59:00Z")), "00:59 EDT");
        assert!(h.is_open(utc("2026-11-01T05:15:00Z")), "01:15 EDT");
        assert!(!h.is_open(utc("2026-11-01T05:45:00Z")), "01:45 EDT");
        assert!(h.is_open(utc("2026-11-01T06:15:00Z")), "01:15 EST");
        assert!(!h.is_open(utc("2026-11-01T06:45:00Z")), "01:45 EST");
    }

    #[test]
    fn half_hour_offset_zone_is_used() {
        // Asia/Kolkata is UTC+05:30: Monday 09:00-17:00 is 03:30Z-11:30Z.
        let h = weekly(
            "Asia/Kolkata",
            json!([{"day": "mon", "open": "09:00", "close": "17:00"}]),
        );
        assert_eq!(h.time_zone(), Tz::Asia__Kolkata);
        assert!(!h.is_open(utc("2026-01-05T03:29:00Z")));
        assert!(h.is_open(utc("2026-01-05T03:30:00Z")));
        assert!(h.is_open(utc("2026-01-05T11:29:00Z")));
        assert!(!h.is_open(utc("2026-01-05T11:30:00Z")));
        // 16:00Z is 21:30 local: closed, though inside 09:00-17:00 in UTC.
        assert!(!h.is_open(utc("2026-01-05T16:00:00Z")));
    }

    #[test]
    fn closed_exception_overrides_weekly() {
        let h = hours(json!({
            "time_zone": "UTC",
            "weekly": [{"day": "mon", "open": "09:00", "close": "17:00"}],
            "exceptions": [{"date": "2026-01-05", "closed": true}],
        }));
        assert!(!h.is_open(utc("2026-01-05T12:00:00Z")));
        assert!(h.is_open(utc("2026-01-12T12:00:00Z")), "the next monday");
    }

    #[test]
    fn special_hours_replace_the_days_windows() {
        let h = hours(json!({
            "time_zone": "UTC",
            "weekly": [{"day": "mon", "open": "09:00", "close": "17:00"}],
            "exceptions": [{"date": "2026-01-05", "closed": false,
                            "hours": [{"open": "10:00", "close": "12:00"},
                                      {"open": "14:00", "close": "15:00"}]}],
        }));
        assert!(!h.is_open(utc("2026-01-05T09:30:00Z")));
        assert!(h.is_open(utc("2026-01-05T10:00:00Z")));
        assert!(!h.is_open(utc("2026-01-05T12:00:00Z")));
        assert!(h.is_open(utc("2026-01-05T14:30:00Z")));
        assert!(!h.is_open(utc("2026-01-05T16:00:00Z")));
        // Exceptions open days that have no weekly windows too.
        let h = hours(json!({
            "time_zone": "UTC",
            "weekly": [],
            "exceptions": [{"date": "2026-01-10", "closed": false,
                            "hours": [{"open": "10:00", "close": "12:00"}]}],
        }));
        assert!(h.is_open(utc("2026-01-10T11:00:00Z")));
        assert!(!h.is_open(utc("2026-01-17T11:00:00Z")));
    }

    #[test]
    fn previous_days_crossing_window_spills_into_an_exception_date() {
        // Sunday 2026-01-04 22:00-02:00 runs into Monday 2026-01-05, closed.
        let h = hours(json!({
            "time_zone": "UTC",
            "weekly": [{"day": "sun", "open": "22:00", "close": "02:00"},
                       {"day": "mon", "open": "09:00", "close": "17:00"}],
            "exceptions": [{"date": "2026-01-05", "closed": true}],
        }));
        assert!(h.is_open(utc("2026-01-05T01:00:00Z")));
        assert!(!h.is_open(utc("2026-01-05T02:00:00Z")));
        assert!(!h.is_open(utc("2026-01-05T10:00:00Z")));
    }

    #[test]
    fn exception_replaces_a_crossing_window_and_its_spill() {
        // Sunday 2026-01-04 is closed: its 22:00-02:00 does not start, so
        // does not spill into Monday either.
        let h = hours(json!({
            "time_zone": "UTC",
            "weekly": [{"day": "sun", "open": "22:00", "close": "02:00"}],
            "exceptions": [{"date": "2026-01-04", "closed": true}],
        }));
        assert!(!h.is_open(utc("2026-01-04T23:00:00Z")));
        assert!(!h.is_open(utc("2026-01-05T01:00:00Z")));
        assert!(h.is_open(utc("2026-01-12T01:00:00Z")), "the next monday");
    }

    #[test]
    fn exception_hours_crossing_midnight_spill_into_the_next_day() {
        let h = hours(json!({
            "time_zone": "UTC",
            "weekly": [],
            "exceptions": [{"date": "2026-12-31", "closed": false,
                            "hours": [{"open": "20:00", "close": "03:00"}]},
                           {"date": "2027-01-01", "closed": true}],
        }));
        assert!(!h.is_open(utc("2026-12-31T19:59:00Z")));
        assert!(h.is_open(utc("2026-12-31T23:00:00Z")));
        assert!(h.is_open(utc("2027-01-01T02:59:00Z")));
        assert!(!h.is_open(utc("2027-01-01T03:00:00Z")));
    }

    #[test]
    fn refusals_name_the_field() {
        let window = |open: &str, close: &str| json!({"time_zone": "UTC", "weekly": [{"day": "mon", "open": open, "close": close}]});
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"time_zone": "Mars/Olympus_Mons", "weekly": []}),
                "agent.business_hours.time_zone \"Mars/Olympus_Mons\" is not a known IANA time zone",
            ),
            (
                json!({"time_zone": "UTC", "weekly": [{"day": "monday", "open": "09:00", "close": "17:00"}]}),
                "agent.business_hours.weekly[0].day must be one of mon tue wed thu fri sat sun, got \"monday\"",
            ),
            (
                window("09:00", "25:00"),
                "agent.business_hours.weekly[0].close must be a time \"HH:MM\"",
            ),
            (window("9:00", "17:00"), "agent.business_hours.weekly[0].open must be a time"),
            (window("09:60", "17:00"), "agent.business_hours.weekly[0].open must be a time"),
            (window("24:00", "02:00"), "agent.business_hours.weekly[0].open may not be \"24:00\""),
            (
                window("09:00", "09:00"),
                "agent.business_hours.weekly[0] open and close are equal; for a whole day use 00:00-24:00",
            ),
            (
                json!({"time_zone": "UTC", "weekly": vec![json!({"day": "mon", "open": "09:00", "close": "10:00"}); 29]}),
                "agent.business_hours.weekly has 29 windows; the limit is 28",
            ),
            (
                json!({"time_zone": "UTC", "weekly": [], "exceptions": [
                    {"date": "2026-12-25", "closed": true},
                    {"date": "2026-12-24", "closed": true},
                    {"date": "2026-12-25", "closed": true}]}),
                "agent.business_hours.exceptions has date 2026-12-25 more than once",
            ),
            (
                json!({"time_zone": "UTC", "weekly": [], "exceptions": [
                    {"date": "2026-12-25", "closed": true, "hours": [{"open": "09:00", "close": "10:00"}]}]}),
                "agent.business_hours.exceptions[0].hours must be empty when closed is true",
            ),
            (
                json!({"time_zone": "UTC", "weekly": [], "exceptions": [{"date": "2026-12-25", "closed": false}]}),
                "agent.business_hours.exceptions[0].hours needs at least one range",
            ),
            (
                json!({"time_zone": "UTC", "weekly": [], "exceptions": [{"date": "2026-02-30", "closed": true}]}),
                "agent.business_hours.exceptions[0].date must be a date \"YYYY-MM-DD\", got \"2026-02-30\"",
            ),
            (
                json!({"time_zone": "UTC", "weekly": [], "exceptions": [{"date": "2026-12-25", "closed": false,
                    "hours": vec![json!({"open": "09:00", "close": "10:00"}); 5]}]}),
                "agent.business_hours.exceptions[0].hours has 5 ranges; the limit is 4",
            ),
            (
                json!({"time_zone": "UTC", "weekly": [], "holidays": []}),
                "agent.business_hours has unknown key \"holidays\"",
            ),
            (
                json!({"time_zone": "UTC", "weekly": [{"day": "mon", "open": "09:00", "close": "17:00", "note": "x"}]}),
                "agent.business_hours.weekly[0] has unknown key \"note\"",
            ),
            (
                json!({"time_zone": "UT\u{0}C", "weekly": []}),
                "agent.business_hours.time_zone must not contain a NUL character",
            ),
            (
                json!({"time_zone": "UTC", "weekly": [{"day": "mon", "open": "09:\u{0}0", "close": "17:00"}]}),
                "agent.business_hours.weekly[0].open must not contain a NUL character",
            ),
            (json!({"weekly": []}), "agent.business_hours.time_zone is required"),
            (json!({"time_zone": "UTC"}), "agent.business_hours.weekly is required"),
            (json!([]), "agent.business_hours must be a JSON object"),
            (
                json!({"time_zone": "x".repeat(65), "weekly": []}),
                "agent.business_hours.time_zone is longer than 64 characters",
            ),
        ];
        for (input, expected) in cases {
            let message = refusal(input.clone());
            assert!(
                message.starts_with(expected),
                "for {input}: got {message:?}, want it to start with {expected:?}"
            );
        }
    }

    #[test]
    fn echoed_input_is_cut_to_40_characters() {
        let long = format!("Europe/{}", "x".repeat(50));
        let message = refusal(json!({"time_zone": long, "weekly": []}));
        let echoed = format!("\"Europe/{}…\"", "x".repeat(33));
        assert!(message.contains(&echoed), "{message}");
        assert!(!message.contains(&"x".repeat(34)), "{message}");
    }

    #[test]
    fn bounds_are_inclusive() {
        let windows =
            vec![json!({"day": "mon", "open": "09:00", "close": "10:00"}); MAX_WEEKLY_WINDOWS];
        let start = NaiveDate::from_ymd_opt(2028, 1, 1).unwrap();
        let exceptions: Vec<Value> = (0..MAX_EXCEPTIONS as u64)
            .map(|i| {
                let date = start + chrono::Days::new(i);
                json!({"date": date.format("%Y-%m-%d").to_string(), "closed": true})
            })
            .collect();
        let h = hours(json!({"time_zone": "UTC", "weekly": windows, "exceptions": exceptions}));
        assert_eq!(h.exceptions.len(), MAX_EXCEPTIONS);
        let too_many: Vec<Value> = (0..=MAX_EXCEPTIONS)
            .map(|_| json!({"date": "2026-01-01", "closed": true}))
            .collect();
        assert!(
            refusal(json!({"time_zone": "UTC", "weekly": [], "exceptions": too_many}))
                .starts_with("agent.business_hours.exceptions has 367 entries; the limit is 366")
        );
    }

    #[test]
    fn to_json_is_canonical_and_round_trips() {
        let input = json!({
            "time_zone": "America/New_York",
            "weekly": [{"day": "fri", "open": "22:00", "close": "02:00"},
                       {"day": "mon", "open": "13:00", "close": "24:00"},
                       {"day": "mon", "open": "09:00", "close": "12:00"}],
            "exceptions": [{"date": "2026-12-25", "closed": true},
                           {"date": "2026-12-24", "closed": false,
                            "hours": [{"open": "15:00", "close": "16:00"},
                                      {"open": "09:00", "close": "13:00"}]},
                           {"date": "2026-12-26", "closed": true, "hours": []}],
        });
        let canonical = json!({
            "time_zone": "America/New_York",
            "weekly": [{"day": "mon", "open": "09:00", "close": "12:00"},
                       {"day": "mon", "open": "13:00", "close": "24:00"},
                       {"day": "fri", "open": "22:00", "close": "02:00"}],
            "exceptions": [{"date": "2026-12-24", "closed": false,
                            "hours": [{"open": "09:00", "close": "13:00"},
                                      {"open": "15:00", "close": "16:00"}]},
                           {"date": "2026-12-25", "closed": true},
                           {"date": "2026-12-26", "closed": true}],
        });
        let parsed = hours(input);
        assert_eq!(parsed.to_json(), canonical);
        let again = hours(canonical.clone());
        assert_eq!(again, parsed);
        assert_eq!(again.to_json(), canonical);
        // No "exceptions" key is none; to_json then writes an empty list.
        let plain = weekly("UTC", json!([]));
        assert_eq!(
            plain.to_json(),
            json!({"time_zone": "UTC", "weekly": [], "exceptions": []})
        );
        assert!(!plain.is_open(utc("2026-01-05T12:00:00Z")));
    }

    #[test]
    fn tzdb_version_looks_like_a_release() {
        let bytes = TZDB_VERSION.as_bytes();
        assert_eq!(bytes.len(), 5, "{TZDB_VERSION}");
        assert!(bytes[..4].iter().all(u8::is_ascii_digit), "{TZDB_VERSION}");
        assert!(bytes[4].is_ascii_lowercase(), "{TZDB_VERSION}");
        assert!(TZDB_VERSION >= "2024a", "{TZDB_VERSION}");
    }
}
