//! `timestamptz` in the text form Postgres sends over the simple protocol
//! (`ResolveAgent`'s one statement). sqlx parses it with chrono's
//! format-string parser, which walks the format for every value: 2.6 k
//! instructions a timestamp, five a route, a twentieth of a tenant call's
//! user-space work (`benches/load/instructions.sh`). Every connection of
//! ours asks for `TimeZone=UTC` and ISO dates (sqlx's start-up parameters),
//! so the values come as `2026-11-30 20:26:53.173001+00`; that form is read
//! here directly and anything else (another zone, a year past 9999 or BC,
//! infinity) is left to sqlx.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};

/// `YYYY-MM-DD HH:MM:SS[.f]+00`, one to six fraction digits: the instant it
/// names, or `None` if the text has any other form or names no valid time.
pub(super) fn utc_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let bytes = text.as_bytes().strip_suffix(b"+00")?;
    let (fields, fraction) = bytes.split_at_checked(19)?;
    let separators = [(4, b'-'), (7, b'-'), (10, b' '), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, c)| fields[at] != c) {
        return None;
    }
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let micros = match fraction {
        [] => 0,
        [b'.', digits @ ..] if (1..=6).contains(&digits.len()) => {
            // `digits.len()` is 1 to 6: the exponent is 0 to 5.
            number(digits)? * 10u32.pow(6 - digits.len() as u32)
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(number(&fields[0..4])?).ok()?,
        number(&fields[5..7])?,
        number(&fields[8..10])?,
    )?;
    let time = NaiveTime::from_hms_micro_opt(
        number(&fields[11..13])?,
        number(&fields[14..16])?,
        number(&fields[17..19])?,
        micros,
    )?;
    Some(NaiveDateTime::new(date, time).and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What sqlx would have made of the text (its format string).
    fn chrono(text: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
            .ok()
            .map(|t| t.to_utc())
    }

    #[test]
    fn the_utc_form_reads_as_chrono_reads_it() {
        for text in [
            "2026-11-30 20:26:53.173001+00",
            "2026-11-30 20:26:53.17+00",
            "2026-11-30 20:26:53.1+00",
            "2026-11-30 20:26:53+00",
            "2024-02-29 23:59:59.999999+00",
            "0999-01-01 00:00:00+00",
            "1970-01-01 00:00:00.000001+00",
            "9999-12-31 23:59:59.5+00",
        ] {
            assert_eq!(utc_timestamp(text), chrono(text), "{text}");
            assert!(utc_timestamp(text).is_some(), "{text}");
        }
    }

    #[test]
    fn any_other_form_is_left_to_sqlx() {
        for text in [
            // Other zones: chrono applies the offset.
            "2026-11-30 20:26:53.173001+01",
            "2026-11-30 20:26:53+05:30",
            "2026-11-30 20:26:53-00",
            // Outside four-digit years, or not a time at all.
            "10000-01-01 00:00:00+00",
            "0001-01-01 00:00:00+00 BC",
            "infinity",
            "-infinity",
            // Malformed or impossible.
            "2026-11-30T20:26:53+00",
            "2026-11-30 20:26:53.+00",
            "2026-11-30 20:26:53.1234567+00",
            "2026-02-30 20:26:53+00",
            "2023-02-29 00:00:00+00",
            "2026-11-30 24:00:00+00",
            "2026-11-30 20:60:00+00",
            "2026-11-30 20:26:60+00",
            "2026-1a-30 20:26:53+00",
            "+00",
            "",
        ] {
            assert_eq!(utc_timestamp(text), None, "{text}");
        }
    }
}
