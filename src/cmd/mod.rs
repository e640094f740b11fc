//! One module per subcommand: its flags (`Args`) and its `run`.

pub mod certs;
pub mod gc;
pub mod manifest;
pub mod proxy;
pub mod serve;
pub mod sync;

/// What a command does when its data directory does not exist.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum MissingData {
    /// Create it (`serve`, `sync`: they fill a store).
    Create,
    /// Refuse (`gc`: a command that reads or collects must never create a store at a
    /// mistyped path).
    Refuse,
}

/// Checks the data directory before a store is opened there, so a path that cannot hold one
/// is named as such, with the setting to change, instead of failing deep in the store.
pub fn check_data_dir(dir: &std::path::Path, missing: MissingData) -> anyhow::Result<()> {
    let shown = dir.display();
    let setting = "check --data (or ACR_REGISTRY_DATA_VOLUME)";
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => anyhow::bail!(
            "{shown} is not a directory: the data directory must be one; {setting}, or move the file away"
        ),
        Ok(_) if missing == MissingData::Refuse && !registry::Store::exists_in(dir) => {
            anyhow::bail!("no registry data at {shown} (it holds no meta.redb): {setting}")
        }
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => match missing {
            MissingData::Create => Ok(()),
            MissingData::Refuse => {
                anyhow::bail!("no registry data at {shown}: it does not exist; {setting}")
            }
        },
        Err(err) => Err(anyhow::Error::new(err)
            .context(format!("cannot use {shown} as the data directory ({setting})"))),
    }
}

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
