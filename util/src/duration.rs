//! The one duration syntax of every flag, setting and config key.
//!
//! Two spellings are accepted everywhere, because operators come with both habits:
//! - short: a number and a unit, `500ms`, `90s`, `30m`, `1h`, `7d` (a fraction is allowed:
//!   `1.5h`);
//! - ISO-8601, as the ACR connected registry writes its settings: `PT1H`, `P7D`, `P1DT12H`,
//!   `PT90M`, `P2W`, `PT0.5S`. Years and months are refused: their length varies.
//!
//! Where a setting took a bare number of seconds before (the proxy's timeouts, the sync
//! timeouts), [`parse_or_seconds`] keeps accepting it; everywhere else a bare number is refused,
//! because `--gc-grace 10` is more likely a mistake than ten seconds.
//!
//! [`Iso`] formats a duration back as ISO-8601, for messages that name valid ranges.

use std::fmt;
use std::time::Duration;

/// What every duration error ends with, so that each one shows both spellings.
pub const EXPECTED: &str = "expected a duration like 90s, 1h, 7d or PT1H";

/// A text that is not a duration: says which text, why, and what would be accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurationError {
    input: String,
    why: String,
}

impl DurationError {
    fn new(input: &str, why: impl Into<String>) -> Self {
        DurationError {
            input: input.to_owned(),
            why: why.into(),
        }
    }
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a duration ({}); {EXPECTED}",
            self.input, self.why
        )
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration in either spelling; a bare number (no unit) is refused.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    parse_with(text, false)
}

/// Parses a duration in either spelling, or a bare number meaning seconds (`60`), for the
/// settings that have always taken one.
pub fn parse_or_seconds(text: &str) -> Result<Duration, DurationError> {
    parse_with(text, true)
}

fn parse_with(text: &str, bare_seconds: bool) -> Result<Duration, DurationError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(DurationError::new(text, "it is empty"));
    }
    if t.starts_with(['P', 'p']) {
        return parse_iso(text, &t[1..]);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(DurationError::new(text, "it must start with a number"));
    }
    let nanos_per_unit: u128 = match unit.trim() {
        "" if bare_seconds => SECOND,
        "" => return Err(DurationError::new(text, "it has no unit")),
        "ms" => SECOND / 1000,
        "s" => SECOND,
        "m" => 60 * SECOND,
        "h" => 3600 * SECOND,
        "d" => DAY,
        other => {
            return Err(DurationError::new(
                text,
                format!("unknown unit {other:?}; the units are ms, s, m, h and d"),
            ))
        }
    };
    let n = number_of(text, number)?;
    nanoseconds(text, times(text, n, nanos_per_unit)?)
}

/// Nanoseconds in a second and in a day.
const SECOND: u128 = 1_000_000_000;
const DAY: u128 = 86_400 * SECOND;

fn too_large(text: &str) -> DurationError {
    DurationError::new(text, "it is too large")
}

/// A non-negative decimal number (`30`, `1.5`; signs and exponents are not durations) in
/// billionths, so that a duration adds up exactly: in `f64` a long one lost milliseconds
/// (`P21253DT12H33M37.32S` read back 1 ms short). Decimals past the ninth are dropped.
fn number_of(text: &str, number: &str) -> Result<u128, DurationError> {
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(DurationError::new(text, "it must start with a number"));
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if !(whole.bytes().all(|b| b.is_ascii_digit()) && fraction.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(DurationError::new(
            text,
            format!("{number:?} is not a number"),
        ));
    }
    let whole: u128 = whole.parse().map_err(|_| too_large(text))?;
    let fraction = &fraction[..fraction.len().min(9)];
    let billionths: u128 = format!("{fraction:0<9}").parse().unwrap_or(0);
    whole
        .checked_mul(SECOND)
        .and_then(|w| w.checked_add(billionths))
        .ok_or_else(|| too_large(text))
}

/// `n` billionths of a unit of `unit` nanoseconds, in nanoseconds.
fn times(text: &str, n: u128, unit: u128) -> Result<u128, DurationError> {
    n.checked_mul(unit)
        .map(|v| v / SECOND)
        .ok_or_else(|| too_large(text))
}

fn nanoseconds(text: &str, nanos: u128) -> Result<Duration, DurationError> {
    let secs = u64::try_from(nanos / SECOND).map_err(|_| too_large(text))?;
    Ok(Duration::new(secs, (nanos % SECOND) as u32))
}

/// The ISO-8601 part after `P`: `nW`, `nD`, then after `T`: `nH`, `nM`, `nS`.
fn parse_iso(text: &str, rest: &str) -> Result<Duration, DurationError> {
    let bad = |why: &str| DurationError::new(text, format!("ISO-8601: {why}"));
    if rest.trim().is_empty() {
        return Err(bad("no value after P"));
    }
    let mut total: u128 = 0;
    let mut in_time = false;
    let mut number = String::new();
    let mut any = false;
    for c in rest.trim().chars() {
        match c.to_ascii_uppercase() {
            'T' if !in_time && number.is_empty() => in_time = true,
            d if d.is_ascii_digit() || d == '.' => number.push(d),
            unit => {
                if number.is_empty() {
                    return Err(bad(&format!("{unit:?} without a number")));
                }
                let n = number_of(text, &number)?;
                let whole = n % SECOND == 0;
                number.clear();
                let per = match (in_time, unit) {
                    (false, 'W') if whole => 7 * DAY,
                    (false, 'D') if whole => DAY,
                    (false, 'Y') | (false, 'M') => {
                        return Err(bad("years and months have no fixed length; use days"))
                    }
                    (true, 'H') if whole => 3_600 * SECOND,
                    (true, 'M') if whole => 60 * SECOND,
                    (true, 'S') => SECOND,
                    (_, 'W' | 'D' | 'H' | 'M') => {
                        return Err(bad("only seconds may have a fraction"))
                    }
                    _ => return Err(bad(&format!("unexpected {unit:?}"))),
                };
                total = total
                    .checked_add(times(text, n, per)?)
                    .ok_or_else(|| too_large(text))?;
                any = true;
            }
        }
    }
    if !number.is_empty() {
        return Err(bad("a number without a unit at the end"));
    }
    if !any {
        return Err(bad("no value after T"));
    }
    nanoseconds(text, total)
}

/// Shows a duration as ISO-8601 (`P7D`, `PT1H`, `P1DT12H`, `PT0.5S`, `PT0S`), the form the sync
/// settings are documented in; [`parse`] reads it back to the same value (to the millisecond).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Iso(pub Duration);

impl fmt::Display for Iso {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.0.as_secs();
        let millis = self.0.subsec_millis();
        let days = s / 86_400;
        s %= 86_400;
        let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
        f.write_str("P")?;
        if days > 0 {
            write!(f, "{days}D")?;
        }
        if h + m + sec > 0 || millis > 0 || days == 0 {
            f.write_str("T")?;
            if h > 0 {
                write!(f, "{h}H")?;
            }
            if m > 0 {
                write!(f, "{m}M")?;
            }
            if millis > 0 {
                let frac = format!("{millis:03}");
                write!(f, "{sec}.{}S", frac.trim_end_matches('0'))?;
            } else if sec > 0 || (h == 0 && m == 0) {
                write!(f, "{sec}S")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Found by fuzzing: the parts were added in `f64`, and a long duration with a fraction
    /// read back a millisecond short of what [`Iso`] wrote.
    #[test]
    fn fuzz_regression_a_long_iso_duration_reads_back_exactly() {
        let d = Duration::new(1_836_304_417, 320_000_000);
        assert_eq!(Iso(d).to_string(), "P21253DT12H33M37.32S");
        assert_eq!(parse("P21253DT12H33M37.32S"), Ok(d));
        assert_eq!(parse("0.433s"), Ok(Duration::from_millis(433)));
        assert_eq!(
            parse(&Iso(Duration::new(u64::MAX, 999_000_000)).to_string()),
            Ok(Duration::new(u64::MAX, 999_000_000))
        );
        assert!(parse("213503982334602d").is_err(), "past u64::MAX seconds");
        assert!(parse("99999999999999999999999999999999999999999s").is_err());
    }

    #[test]
    fn short_spelling() {
        assert_eq!(parse("90s").unwrap(), secs(90));
        assert_eq!(parse("30m").unwrap(), secs(1800));
        assert_eq!(parse("1h").unwrap(), secs(3600));
        assert_eq!(parse("7d").unwrap(), secs(7 * 86_400));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1.5h").unwrap(), secs(5400));
        assert_eq!(parse(" 0s ").unwrap(), secs(0));
    }

    #[test]
    fn iso_spelling() {
        assert_eq!(parse("PT1H").unwrap(), secs(3600));
        assert_eq!(parse("P7D").unwrap(), secs(7 * 86_400));
        assert_eq!(parse("P1DT12H").unwrap(), secs(129_600));
        assert_eq!(parse("PT90M").unwrap(), secs(5400));
        assert_eq!(parse("P2W").unwrap(), secs(14 * 86_400));
        assert_eq!(parse("pt1h").unwrap(), secs(3600));
        assert_eq!(parse("PT0.5S").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("PT0S").unwrap(), secs(0));
    }

    #[test]
    fn bare_numbers_are_seconds_only_where_asked() {
        assert!(parse("60").is_err());
        assert_eq!(parse_or_seconds("60").unwrap(), secs(60));
        assert_eq!(
            parse_or_seconds("0.25").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_or_seconds("2m").unwrap(), secs(120));
        assert_eq!(parse_or_seconds("PT2M").unwrap(), secs(120));
    }

    #[test]
    fn bad_input_names_itself_and_both_spellings() {
        for bad in [
            "", "10", "h", "1w", "-1h", "1.h", ".5h", "3 weeks", "1e3s", "P", "PT", "P1M", "P1Y",
            "1H", "PT1", "PTH", "P1.5D", "soon",
        ] {
            let err = parse(bad).expect_err(bad).to_string();
            assert!(
                err.starts_with(&format!("{bad:?} is not a duration")),
                "{err}"
            );
            assert!(err.ends_with(EXPECTED), "{err}");
            assert!(err.contains("90s") && err.contains("PT1H"), "{err}");
        }
        assert!(parse("P1M").unwrap_err().to_string().contains("use days"));
        assert!(parse("1w")
            .unwrap_err()
            .to_string()
            .contains("unknown unit \"w\""));
        assert!(parse("10").unwrap_err().to_string().contains("no unit"));
        assert!(parse("99999999999999999999999d")
            .unwrap_err()
            .to_string()
            .contains("too large"));
    }

    #[test]
    fn formats_as_iso_and_reads_back() {
        let cases = [
            (secs(0), "PT0S"),
            (secs(3600), "PT1H"),
            (secs(7 * 86_400), "P7D"),
            (secs(129_600), "P1DT12H"),
            (secs(5400), "PT1H30M"),
            (secs(61), "PT1M1S"),
            (Duration::from_millis(500), "PT0.5S"),
            (Duration::from_millis(1250), "PT1.25S"),
        ];
        for (d, text) in cases {
            assert_eq!(Iso(d).to_string(), text);
            assert_eq!(parse(text).unwrap(), d, "{text}");
        }
    }
}
