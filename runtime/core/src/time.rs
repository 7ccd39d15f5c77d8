//! Civil-time conversions for event timestamps (UTC milliseconds since the epoch).
//!
//! Written by hand rather than with chrono because the parsers call these once per log line and
//! the formats are fixed: a few integer operations beat a general format-string parser by an order
//! of magnitude on the hot path.

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// (year, month, day) for days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Broken-down UTC time of a millisecond timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

pub fn civil(ts_ms: i64) -> Civil {
    let days = ts_ms.div_euclid(86_400_000);
    let rem = ts_ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    Civil {
        year,
        month,
        day,
        hour: (rem / 3_600_000) as u32,
        minute: (rem / 60_000 % 60) as u32,
        second: (rem / 1000 % 60) as u32,
        millis: (rem % 1000) as u32,
    }
}

/// RFC 3339 in UTC with millisecond precision, e.g. `2026-01-01T00:00:00.000Z`.
pub fn format_rfc3339(ts_ms: i64) -> String {
    let c = civil(ts_ms);
    if !(0..=9999).contains(&c.year) {
        return format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
        );
    }
    // Digits by hand: `/v1/hosts` formats three times per site, and `format!` was a tenth of
    // its cost at 1,000 sites.
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut n: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, c.year as u32);
    put(5, 2, c.month);
    put(8, 2, c.day);
    put(11, 2, c.hour);
    put(14, 2, c.minute);
    put(17, 2, c.second);
    put(20, 3, c.millis);
    out.iter().map(|&b| b as char).collect()
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The access-log (CLF) time, e.g. `10/Oct/2000:13:55:36 +0000`; seconds resolution.
pub fn format_clf(ts_ms: i64) -> String {
    let c = civil(ts_ms);
    format!(
        "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
        c.day,
        MONTHS[(c.month - 1) as usize],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() {
        return None;
    }
    let mut v: u32 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as u32)?;
    }
    Some(v)
}

/// Days in month `m` of year `y` (proleptic Gregorian).
fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A real calendar date and time of day (a leap second, `:60`, is accepted as RFC 3339 allows).
fn valid_date(y: i64, m: u32, d: u32, h: u32, mi: u32, s: u32) -> bool {
    (1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m) && h < 24 && mi < 60 && s <= 60
}

/// Parse an offset like `+0000`, `-05:00`, `Z`; returns seconds east of UTC.
fn parse_offset(b: &[u8]) -> Option<i64> {
    match b {
        b"Z" | b"z" => Some(0),
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (hh, mm) = match rest.len() {
                4 => (digits(&rest[..2])?, digits(&rest[2..])?),
                5 if rest[2] == b':' => (digits(&rest[..2])?, digits(&rest[3..])?),
                _ => return None,
            };
            if hh > 23 || mm > 59 {
                return None;
            }
            let secs = (hh * 3600 + mm * 60) as i64;
            Some(if *sign == b'-' { -secs } else { secs })
        }
        _ => None,
    }
}

/// Parse RFC 3339 (`2026-01-01T12:00:00Z`, fractional seconds and offsets allowed) to UTC ms.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let y = digits(&b[0..4])? as i64;
    let mo = digits(&b[5..7])?;
    let d = digits(&b[8..10])?;
    let h = digits(&b[11..13])?;
    let mi = digits(&b[14..16])?;
    let sec = digits(&b[17..19])?;
    if !valid_date(y, mo, d, h, mi, sec) {
        return None;
    }
    let mut i = 19;
    let mut millis = 0u32;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &b[start..i];
        if frac.is_empty() {
            return None;
        }
        let take = frac.len().min(3);
        millis = digits(&frac[..take])? * 10u32.pow(3 - take as u32);
    }
    let off = parse_offset(&b[i..])?;
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + (h * 3600 + mi * 60 + sec) as i64 - off) * 1000 + millis as i64)
}

/// Parse the CLF time between the brackets: `10/Oct/2000:13:55:36 -0700`.
pub fn parse_clf(s: &[u8]) -> Option<i64> {
    if s.len() < 26 || s[2] != b'/' || s[6] != b'/' || s[11] != b':' || s[20] != b' ' {
        return None;
    }
    let d = digits(&s[0..2])?;
    let mon = &s[3..6];
    let mo = MONTHS.iter().position(|m| m.as_bytes() == mon)? as u32 + 1;
    let y = digits(&s[7..11])? as i64;
    let h = digits(&s[12..14])?;
    let mi = digits(&s[15..17])?;
    let sec = digits(&s[18..20])?;
    if s[14] != b':' || s[17] != b':' || y < 1970 || !valid_date(y, mo, d, h, mi, sec) {
        return None;
    }
    let off = parse_offset(&s[21..])?;
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + (h * 3600 + mi * 60 + sec) as i64 - off) * 1000)
}

/// `YYYY-MM-DD` and `HH` of a timestamp: the lake's Hive partition values.
pub fn dt_hour(ts_ms: i64) -> (String, String) {
    let c = civil(ts_ms);
    (
        format!("{:04}-{:02}-{:02}", c.year, c.month, c.day),
        format!("{:02}", c.hour),
    )
}

/// Wall-clock now in UTC milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_dates() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        // Any RFC 3339 year; only real calendar dates.
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-1000));
        assert!(parse_rfc3339("0001-01-01T00:00:00Z").is_some());
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_some());
        assert_eq!(parse_rfc3339("2026-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-04-31T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2000-10-10T13:55:36Z"), Some(971_186_136_000));
        assert_eq!(
            parse_rfc3339("2000-10-10T06:55:36.250-07:00"),
            Some(971_186_136_250)
        );
        assert_eq!(
            parse_clf(b"10/Oct/2000:13:55:36 -0700"),
            Some(971_211_336_000)
        );
        assert_eq!(format_clf(971_186_136_000), "10/Oct/2000:13:55:36 +0000");
        assert_eq!(parse_rfc3339("2000-13-10T13:55:36Z"), None);
        assert_eq!(parse_rfc3339("garbage"), None);
        assert_eq!(parse_clf(b"10/Foo/2000:13:55:36 -0700"), None);
    }

    proptest! {
        #[test]
        fn rfc3339_round_trips(ts in 0i64..8_000_000_000_000) {
            prop_assert_eq!(parse_rfc3339(&format_rfc3339(ts)), Some(ts));
        }

        #[test]
        fn rfc3339_digits_match_the_general_format(
            // Years 0-9999 (the fast path, and just past it), and far beyond (a quarter of
            // i64 keeps civil()'s arithmetic in range).
            ts in prop_oneof![-62_200_000_000_000i64..253_500_000_000_000, any::<i64>().prop_map(|t| t / 4)]
        ) {
            let c = civil(ts);
            let general = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
            );
            prop_assert_eq!(format_rfc3339(ts), general);
        }

        #[test]
        fn clf_round_trips_to_the_second(ts in 0i64..8_000_000_000_000) {
            prop_assert_eq!(parse_clf(format_clf(ts).as_bytes()), Some(ts - ts.rem_euclid(1000)));
        }
    }
}
