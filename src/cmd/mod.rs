//! One module per subcommand: its flags (`Args`) and its `run`.

pub mod certs;
pub mod gc;
pub mod manifest;
pub mod proxy;
pub mod serve;
pub mod sync;

/// A duration flag: a number with a unit, `s`, `m`, `h` or `d` (e.g. `90s`, `30m`, `1h`, `7d`).
pub fn parse_duration(value: &str) -> Result<std::time::Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{value:?} has no unit: write e.g. 90s, 30m, 1h or 7d"))?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} must start with a whole number, e.g. 30m"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "{value:?}: unknown unit {unit:?}; use s, m, h or d"
            ))
        }
    };
    Ok(std::time::Duration::from_secs(
        number.saturating_mul(seconds),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(super::parse_duration("7d").unwrap().as_secs(), 7 * 86400);
        for bad in ["", "10", "h", "1w", "-1h", "1.5h"] {
            assert!(super::parse_duration(bad).is_err(), "{bad}");
        }
    }
}
