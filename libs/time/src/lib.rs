//! runnel's one clock and calendar: epoch milliseconds as RFC 3339 text and back, the clock
//! itself, and the time flags of the command line. Every crate that formats, parses or reads
//! the time calls this one (the log's repair audit records, the events' validation and
//! rejection reasons, the services' status, the CLI, the benchmarks).

use std::ops::Range;

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds (`1970-01-01T00:00:00.000Z`),
/// for any `i64` (years outside 0000-9999 print with more or fewer digits).
pub fn format_millis(millis: i64) -> String {
    let days = millis.div_euclid(86_400_000);
    let in_day = millis.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        (in_day / 60_000) % 60,
        (in_day / 1000) % 60,
        in_day % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Parses an RFC 3339 time with an offset into epoch milliseconds: `YYYY-MM-DD`, `T`
/// (or `t` or a space), `HH:MM:SS`, an optional fraction (truncated to milliseconds), then
/// `Z` (or `z`) or `+HH:MM` / `-HH:MM`.
///
/// # Errors
///
/// A short description of the first thing wrong with `text`.
pub fn parse_rfc3339_millis(text: &str) -> Result<i64, &'static str> {
    let bytes = text.as_bytes();
    let digits = |range: Range<usize>| -> Option<i64> {
        let slice = bytes.get(range)?;
        slice.iter().try_fold(0_i64, |acc, &byte| {
            byte.is_ascii_digit()
                .then(|| acc * 10 + i64::from(byte - b'0'))
        })
    };
    let byte_is = |idx: usize, allowed: &[u8]| bytes.get(idx).is_some_and(|b| allowed.contains(b));
    let year = digits(0..4).ok_or("expected a date YYYY-MM-DD")?;
    if !byte_is(4, b"-") || !byte_is(7, b"-") {
        return Err("expected a date YYYY-MM-DD");
    }
    let month = digits(5..7).ok_or("expected a date YYYY-MM-DD")?;
    let day = digits(8..10).ok_or("expected a date YYYY-MM-DD")?;
    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("day out of range");
    }
    if bytes.len() == 10 {
        return Err("no time of day");
    }
    if !byte_is(10, b"Tt ") {
        return Err("expected `T` between date and time");
    }
    let hour = digits(11..13).ok_or("expected a time HH:MM:SS")?;
    if !byte_is(13, b":") || !byte_is(16, b":") {
        return Err("expected a time HH:MM:SS");
    }
    let minute = digits(14..16).ok_or("expected a time HH:MM:SS")?;
    let second = digits(17..19).ok_or("expected a time HH:MM:SS")?;
    if hour > 23 || minute > 59 || second > 60 {
        return Err("time of day out of range");
    }
    let mut idx = 19;
    let mut millis = 0;
    if byte_is(idx, b".") {
        idx += 1;
        let fraction_start = idx;
        while byte_is(idx, b"0123456789") {
            if idx - fraction_start < 3 {
                millis = millis * 10 + i64::from(bytes[idx] - b'0');
            }
            idx += 1;
        }
        let n_digits = idx - fraction_start;
        if n_digits == 0 {
            return Err("expected digits after the decimal point");
        }
        for _ in n_digits..3 {
            millis *= 10;
        }
    }
    let offset_minutes = match bytes.get(idx) {
        Some(b'Z' | b'z') if idx + 1 == bytes.len() => 0,
        Some(sign @ (b'+' | b'-')) if idx + 6 == bytes.len() => {
            let offset_hour = digits(idx + 1..idx + 3).ok_or("expected an offset +HH:MM")?;
            let offset_minute = digits(idx + 4..idx + 6).ok_or("expected an offset +HH:MM")?;
            if !byte_is(idx + 3, b":") {
                return Err("expected an offset +HH:MM");
            }
            if offset_hour > 23 || offset_minute > 59 {
                return Err("offset out of range");
            }
            let minutes = offset_hour * 60 + offset_minute;
            if *sign == b'-' { -minutes } else { minutes }
        }
        None => return Err("no time-zone offset; add `Z` for UTC"),
        _ => return Err("expected `Z` or an offset +HH:MM at the end"),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

/// The clock as epoch milliseconds: 0 before 1970, `i64::MAX` past the range.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Parses a time given on the command line (`--from`, `--to`, `--timestamp`, ...) into epoch
/// milliseconds: epoch milliseconds (`1700000000123`), RFC 3339 (`2026-11-01T00:00:00Z`, as
/// [`parse_rfc3339_millis`] reads it), `now`, or a time relative to `now_ms`: a sign and a
/// duration (`-1h`, `-90m`, `+30s`, `-1h 30m`; humantime's units).
///
/// # Errors
///
/// What the text is not, naming it.
pub fn parse_time_arg(text: &str, now_ms: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(millis) = text.parse::<i64>() {
        return Ok(millis);
    }
    if text == "now" {
        return Ok(now_ms);
    }
    if let Some((sign, duration)) = text
        .strip_prefix('-')
        .map(|rest| (-1, rest))
        .or_else(|| text.strip_prefix('+').map(|rest| (1, rest)))
    {
        let duration = humantime::parse_duration(duration.trim())
            .map_err(|error| format!("`{text}` is not a relative time like -1h: {error}"))?;
        let millis = i64::try_from(duration.as_millis())
            .map_err(|_| format!("`{text}` is too far from now"))?;
        return now_ms
            .checked_add(sign * millis)
            .ok_or_else(|| format!("`{text}` is too far from now"));
    }
    parse_rfc3339_millis(text).map_err(|reason| {
        format!(
            "`{text}` is neither epoch milliseconds, RFC 3339 (2026-11-01T00:00:00Z) nor \
             relative to now (-1h): {reason}"
        )
    })
}

/// [`parse_time_arg`] against the clock: the value parser of the CLI's time flags.
///
/// # Errors
///
/// As [`parse_time_arg`].
pub fn parse_time_flag(text: &str) -> Result<i64, String> {
    parse_time_arg(text, now_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-05-01T12:00:00Z.
    const NOW: i64 = 1_714_564_800_000;

    #[test]
    fn time_flags_take_epoch_millis_rfc3339_now_and_relative_times() {
        assert_eq!(parse_time_arg("1700000000123", NOW), Ok(1_700_000_000_123));
        assert_eq!(
            parse_time_arg("2023-11-14T22:13:20.123Z", NOW),
            Ok(1_700_000_000_123)
        );
        assert_eq!(parse_time_arg("now", NOW), Ok(NOW));
        assert_eq!(parse_time_arg("-1h", NOW), Ok(NOW - 3_600_000));
        assert_eq!(parse_time_arg("-1h 30m", NOW), Ok(NOW - 5_400_000));
        assert_eq!(parse_time_arg("+30s", NOW), Ok(NOW + 30_000));
        let error = parse_time_arg("yesterday", NOW).unwrap_err();
        assert!(
            error.contains("`yesterday`") && error.contains("-1h"),
            "{error}"
        );
        assert!(parse_time_arg("-1 fortnight", NOW).is_err());
        assert!(parse_time_arg("2023-11-14T22:13:20", NOW).is_err());
    }

    #[test]
    fn rfc3339_parses_offsets_fractions_and_rejects_nonsense() {
        let cases = [
            ("1970-01-01T00:00:00Z", Ok(0)),
            ("1970-01-01t00:00:00.5z", Ok(500)),
            ("1970-01-01 00:00:01.0019Z", Ok(1001)),
            ("1970-01-01T01:00:00+01:00", Ok(0)),
            ("1969-12-31T23:00:00-01:00", Ok(0)),
            ("1969-12-31T23:59:59.999Z", Ok(-1)),
            ("2000-02-29T00:00:00Z", Ok(951_782_400_000)),
            ("2024-05-01T12:00:00Z", Ok(NOW)),
            ("2023-02-29T00:00:00Z", Err("day out of range")),
            ("2024-13-01T00:00:00Z", Err("month out of range")),
            ("2024-05-01", Err("no time of day")),
            ("2024-05-01T24:00:00Z", Err("time of day out of range")),
            (
                "2024-05-01T12:00:00.Z",
                Err("expected digits after the decimal point"),
            ),
            (
                "2024-05-01T12:00:00+0100",
                Err("expected `Z` or an offset +HH:MM at the end"),
            ),
            (
                "2024-05-01T12:00:00Zx",
                Err("expected `Z` or an offset +HH:MM at the end"),
            ),
            ("2024-05-01T12:00", Err("expected a time HH:MM:SS")),
            ("2024/05/01T12:00:00Z", Err("expected a date YYYY-MM-DD")),
            ("", Err("expected a date YYYY-MM-DD")),
        ];
        for (text, expect) in cases {
            assert_eq!(parse_rfc3339_millis(text), expect, "{text}");
        }
    }

    #[test]
    fn formatting_round_trips_through_parsing() {
        for millis in [
            0,
            -1,
            NOW,
            951_782_400_000,
            -62_135_596_800_000,
            253_402_300_799_999,
        ] {
            let text = format_millis(millis);
            assert_eq!(parse_rfc3339_millis(&text), Ok(millis), "{text}");
        }
        assert_eq!(format_millis(NOW + 1), "2024-05-01T12:00:00.001Z");
    }

    #[test]
    fn times_print_as_rfc3339_in_utc() {
        assert_eq!(format_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_millis(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_millis(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_millis(-62_135_596_800_000),
            "0001-01-01T00:00:00.000Z"
        );
    }
}
