//! Go's `time.ParseDuration` syntax, which ghz users type for `-z` and `-t`:
//! `10s`, `1m30s`, `1.5s`, `250ms`, `100us`, `2h`.

use std::time::Duration;

/// Parses a Go duration string. A bare `0` is zero; anything else needs a
/// unit. Negative durations are refused.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if text.starts_with('-') {
        return Err(format!("duration {text:?} is negative"));
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(format!("duration {text:?}: expected a number"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("duration {text:?}: bad number {:?}", &rest[..number_len]))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "duration {text:?}: missing unit (ns, us, ms, s, m, h)"
                ))
            }
            other => return Err(format!("duration {text:?}: unknown unit {other:?}")),
        };
        rest = &rest[unit_len..];
        total_ns += number * unit_ns;
    }
    // A year is plenty for a load run and keeps the cast exact.
    if !total_ns.is_finite() || total_ns > 365.0 * 24.0 * 3600e9 {
        return Err(format!("duration {text:?} is too long"));
    }
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_go_duration("100µs"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_go_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_why() {
        for (input, reason) in [
            ("", "empty"),
            ("10", "missing unit"),
            ("-1s", "negative"),
            ("5x", "unknown unit"),
            ("s", "expected a number"),
            ("1..2s", "bad number"),
            ("9999999h", "too long"),
        ] {
            let error = parse_go_duration(input).unwrap_err();
            assert!(error.contains(reason), "{input:?}: {error}");
        }
    }
}
