//! Civil time in UTC without a calendar crate: formatting for records and ids, and parsing of
//! the timestamp forms DBAs type as recovery targets.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, with microseconds.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

fn parts(t: f64) -> (i64, i64, i64, i64, i64, i64, i64) {
    let secs = t.floor() as i64;
    let micros = ((t - t.floor()) * 1e6).round() as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    (
        y,
        mo,
        d,
        s / 3600,
        (s / 60) % 60,
        s % 60,
        micros.min(999_999),
    )
}

/// `2026-11-28 08:15:00.123456+00`: PostgreSQL's timestamptz input form, in UTC.
pub fn format_pg(t: f64) -> String {
    let (y, mo, d, h, mi, s, us) = parts(t);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}+00")
}

/// `20261128T081500Z`: a backup id.
pub fn format_id(t: f64) -> String {
    let (y, mo, d, h, mi, s, _) = parts(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Parses `YYYY-MM-DD[ T]HH:MM[:SS[.frac]][Z|UTC|GMT|±HH[:MM]]`; no zone means UTC. Works on
/// ASCII only (anything else is `None`), so no input can make it slice inside a character.
pub fn parse(text: &str) -> Option<f64> {
    let s = text.trim();
    if !s.is_ascii() {
        return None;
    }
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { digits(s.get(r)?) };
    if b.len() < 16
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T')
        || b[13] != b':'
    {
        return None;
    }
    let (y, mo, d, h, mi) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
    );
    let mut rest = s.get(16..)?;
    let mut sec = 0.0;
    if let Some(r) = rest.strip_prefix(':') {
        let end = r
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(r.len());
        let text = r.get(..end)?;
        if !text.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        sec = text.parse::<f64>().ok()?;
        rest = r.get(end..)?;
    }
    let offset = zone_offset(rest.trim())?;
    if !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || !(0.0..61.0).contains(&sec)
    {
        return None;
    }
    Some((days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 - offset) as f64 + sec)
}

/// A string of ASCII digits as a number (no sign, no spaces).
fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Seconds east of UTC for `Z`, `UTC`, `GMT`, `±HH`, `±HHMM` or `±HH:MM` (up to ±15:59, as
/// PostgreSQL accepts); empty means UTC.
fn zone_offset(zone: &str) -> Option<i64> {
    if matches!(zone, "" | "Z" | "z" | "UTC" | "GMT") {
        return Some(0);
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let rest = zone.get(1..)?;
    let (hh, mm) = match (rest.len(), rest.as_bytes().get(2)) {
        (2, _) => (digits(rest)?, 0),
        (4, _) => (digits(rest.get(..2)?)?, digits(rest.get(2..)?)?),
        (5, Some(b':')) => (digits(rest.get(..2)?)?, digits(rest.get(3..)?)?),
        _ => return None,
    };
    if hh > 15 || mm > 59 {
        return None;
    }
    Some(sign * (hh * 3600 + mm * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_zones() {
        let t = parse("2026-11-28 08:15:00.25+00").unwrap();
        assert_eq!(format_pg(t), "2026-11-28 08:15:00.250000+00");
        assert_eq!(format_id(t), "20261128T081500Z");
        assert_eq!(parse("2026-11-28T09:15:00.25+01:00"), Some(t));
        assert_eq!(parse("2026-11-28 03:15:00.25-05"), Some(t));
        assert_eq!(parse("1970-01-01 00:00:00Z"), Some(0.0));
        assert_eq!(parse("2000-02-29 00:00"), Some(951_782_400.0));
        assert!(parse("yesterday").is_none());
        assert!(parse("2026-13-01 00:00:00").is_none());
    }

    #[test]
    fn never_panics_on_multibyte_text_and_refuses_odd_offsets() {
        assert_eq!(parse("2026-11-28 08:15:00+1é1"), None);
        assert_eq!(parse("2026-11-28 08:15:00+é1"), None);
        let good = "2026-11-28 08:15:00.25+01:00";
        for i in 0..=good.len() {
            for c in ["é", "€", "𝄞"] {
                let mut t = good.to_string();
                t.insert_str(i, c);
                assert_eq!(parse(&t), None, "{t}");
            }
        }
        for bad in [
            "2026-11-28 08:15:00+99:00",
            "2026-11-28 08:15:00+01:75",
            "2026-11-28 08:15:00+-1:00",
            "2026-11-28 +8:15:00",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(
            parse("2026-11-28 08:15:00+1400"),
            parse("2026-11-27 18:15:00")
        );
    }
}
