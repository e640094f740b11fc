//! Unix time as RFC 3339 (`2026-12-02T10:00:00Z`), the form every JSON answer and status uses,
//! without a calendar crate: days to civil date and back are Howard Hinnant's algorithms.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now (0 if the clock is before it).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `secs` since the Unix epoch as RFC 3339 in UTC.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Reads an RFC 3339 instant in UTC (`2026-12-02T10:00:00Z`, as [`rfc3339`] writes it; a
/// fraction of a second is dropped) as seconds since the Unix epoch. Offsets other than `Z` are
/// refused rather than guessed at: config files name expiries, and a wrong hour matters.
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a UTC time: write it as 2026-12-02T10:00:00Z");
    let body = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix('z'))
        .ok_or_else(bad)?;
    let (date, time) = body.split_once(['T', 't']).ok_or_else(bad)?;
    let time = time.split_once('.').map_or(time, |(whole, _)| whole);
    let number = |s: &str, len: usize| -> Result<i64, String> {
        if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    let ([y, mo, da], [h, mi, se]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    let (year, month, day) = (number(y, 4)?, number(mo, 2)?, number(da, 2)?);
    let (hour, minute, second) = (number(h, 2)?, number(mi, 2)?, number(se, 2)?);
    let days_in_month = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return Err(bad()),
    };
    if year < 1970 || !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 60
    {
        return Err(bad());
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok((days * 86_400 + hour * 3600 + minute * 60 + second.min(59)) as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_212_800), "2026-12-02T12:00:00Z");
        assert_eq!(super::rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn reads_what_it_writes() {
        for secs in [0, 951_782_400, 1_796_212_800, 4_107_542_399, 1_709_164_800] {
            assert_eq!(super::parse_rfc3339(&super::rfc3339(secs)), Ok(secs));
        }
        assert_eq!(
            super::parse_rfc3339("2026-12-02T12:00:00.5Z"),
            Ok(1_796_212_800)
        );
        for bad in [
            "",
            "2026-12-02",
            "2026-12-02T12:00:00",
            "2026-12-02T12:00:00+01:00",
            "2026-13-02T12:00:00Z",
            "2026-02-29T12:00:00Z",
            "1969-12-31T23:59:59Z",
            "26-12-02T1:00:00Z",
        ] {
            assert!(super::parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
