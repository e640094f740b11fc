//! The bandwidth cap on transfers to and from the parent (`--bandwidth-limit`, and per cron
//! window in the config file): what a rate is, which one holds at a given moment, and the
//! throttle every transfer of a parent client passes its bytes through. Serving local clients
//! never passes here: the cap is the uplink's, which ships and metered links pay for.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::settings::CronSchedule;

/// Bytes per second, or `None`: no cap.
pub type Rate = Option<u64>;

/// Reads a rate: a number and a unit per second, in bytes (`B/s`, `KB/s`, `KiB/s`, `MB/s`,
/// `MiB/s`, `GB/s`, `GiB/s`) or in bits as links are sold (`bps`, `Kbps`, `Mbps`, `Gbps`), or
/// `unlimited`. Units are case-insensitive; `MiB/s` and `MB/s` differ as they should.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let s = text.trim();
    let help = "give a rate such as 2MiB/s, 500KB/s or 10Mbps, or `unlimited`";
    if s.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number: {help}"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let per_second: f64 = match unit.as_str() {
        "b/s" => 1.0,
        "kb/s" => 1e3,
        "kib/s" => 1024.0,
        "mb/s" => 1e6,
        "mib/s" => 1024.0 * 1024.0,
        "gb/s" => 1e9,
        "gib/s" => 1024.0 * 1024.0 * 1024.0,
        "bps" => 1.0 / 8.0,
        "kbps" => 1e3 / 8.0,
        "mbps" => 1e6 / 8.0,
        "gbps" => 1e9 / 8.0,
        "" => return Err(format!("{text:?} has no unit: {help}")),
        other => return Err(format!("{text:?}: {other:?} is not a unit of rate: {help}")),
    };
    let bytes = (number * per_second).round();
    if !(MIN_RATE as f64..=MAX_RATE as f64).contains(&bytes) {
        return Err(format!(
            "{text:?} is out of range: a cap is 8KiB/s to 100GiB/s ({help})"
        ));
    }
    Ok(Some(bytes as u64))
}

/// The smallest cap (64 kbit/s, a slow satellite link): a chunk of an upload (64 KiB) then
/// takes 8 s, well inside the progress timeout that watches it.
const MIN_RATE: u64 = 8 << 10;
const MAX_RATE: u64 = 100 << 30;

/// A rate as people read it (`2 MiB/s`, `unlimited`).
pub fn format_rate(rate: Rate) -> String {
    match rate {
        None => "unlimited".into(),
        Some(r) if r % (1 << 20) == 0 => format!("{} MiB/s", r >> 20),
        Some(r) if r % (1 << 10) == 0 => format!("{} KiB/s", r >> 10),
        Some(r) => format!("{r} B/s"),
    }
}

/// A cap that holds while a cron window is open (`schedule` starts it, `duration` long).
#[derive(Clone, Debug)]
pub struct RateWindow {
    pub schedule: CronSchedule,
    pub duration: Duration,
    pub rate: Rate,
}

/// The caps of a registry's uplink: the first open window's, else the default.
#[derive(Clone, Debug, Default)]
pub struct Bandwidth {
    pub default: Rate,
    pub windows: Vec<RateWindow>,
}

impl Bandwidth {
    /// The cap at `now`.
    pub fn rate_at(&self, now: DateTime<Utc>) -> Rate {
        self.windows
            .iter()
            .find(|w| w.schedule.last_start_within(now, w.duration).is_some())
            .map_or(self.default, |w| w.rate)
    }

    /// Whether anything is ever capped (a client without a cap skips the throttle).
    pub fn caps(&self) -> bool {
        self.default.is_some() || self.windows.iter().any(|w| w.rate.is_some())
    }

    /// For `--print-config` and the summary: `2 MiB/s`, with the windows after it.
    pub fn describe(&self) -> String {
        let mut text = format_rate(self.default);
        for w in &self.windows {
            text.push_str(&format!(
                "; {} from `{}` for {}",
                format_rate(w.rate),
                w.schedule.source(),
                crate::settings::format_iso_duration(w.duration)
            ));
        }
        text
    }
}

/// How far ahead of the cap a transfer may run: small, so that any interval of a few seconds
/// carries the cap's bytes and not a burst more.
const BURST: Duration = Duration::from_millis(50);

/// How often the cap in force is looked up again (a window opening or closing).
const RATE_RECHECK: Duration = Duration::from_secs(1);

/// Paces every byte of one parent client's transfers, all of them together, to the cap in
/// force. A virtual clock (when the link is next free) rather than a bucket of tokens: a
/// chunk larger than the burst simply puts the clock further ahead, and the next one waits.
pub struct Throttle {
    bandwidth: Bandwidth,
    state: Mutex<Pace>,
}

struct Pace {
    /// When the bytes let through so far have taken their time at the cap.
    free_at: Instant,
    rate: Rate,
    rate_checked: Option<Instant>,
}

impl Throttle {
    pub fn new(bandwidth: Bandwidth) -> Throttle {
        Throttle {
            bandwidth,
            state: Mutex::new(Pace {
                free_at: Instant::now(),
                rate: None,
                rate_checked: None,
            }),
        }
    }

    /// Waits until `bytes` more may pass at the cap in force (at once when there is none).
    pub async fn pass(&self, bytes: usize) {
        if !self.bandwidth.caps() || bytes == 0 {
            return;
        }
        let wait = self.book(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The cap in force now.
    pub fn rate_now(&self) -> Rate {
        if !self.bandwidth.caps() {
            return None;
        }
        let mut pace = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut pace, Instant::now());
        pace.rate
    }

    fn refresh(&self, pace: &mut Pace, now: Instant) {
        if pace
            .rate_checked
            .is_none_or(|at| now.duration_since(at) >= RATE_RECHECK)
        {
            pace.rate = self.bandwidth.rate_at(Utc::now());
            pace.rate_checked = Some(now);
        }
    }

    /// Books `bytes` on the clock at `now`; returns how long the caller must wait.
    pub(crate) fn book(&self, bytes: usize, now: Instant) -> Duration {
        let mut pace = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut pace, now);
        let Some(rate) = pace.rate else {
            pace.free_at = now;
            return Duration::ZERO;
        };
        // An idle link saves nothing up: the clock restarts at now.
        let start = pace.free_at.max(now);
        pace.free_at = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
        pace.free_at.saturating_duration_since(now + BURST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_in_bytes_and_bits() {
        assert_eq!(parse_rate("2MiB/s"), Ok(Some(2 << 20)));
        assert_eq!(parse_rate("2 mib/s"), Ok(Some(2 << 20)));
        assert_eq!(parse_rate("500KB/s"), Ok(Some(500_000)));
        assert_eq!(parse_rate("10Mbps"), Ok(Some(1_250_000)));
        assert_eq!(parse_rate("1.5GiB/s"), Ok(Some(3 << 29)));
        assert_eq!(parse_rate("unlimited"), Ok(None));
        for bad in ["", "fast", "10", "10 MB", "10MB/h", "1KiB/s", "-5MB/s"] {
            let err = parse_rate(bad).unwrap_err();
            assert!(err.contains("2MiB/s"), "{bad:?}: {err}");
        }
        assert_eq!(format_rate(Some(2 << 20)), "2 MiB/s");
        assert_eq!(format_rate(None), "unlimited");
    }

    #[test]
    fn the_clock_paces_bytes_at_the_cap() {
        let t = Throttle::new(Bandwidth {
            default: Some(1 << 20),
            windows: Vec::new(),
        });
        let now = Instant::now();
        // 10 MiB booked at once: the last byte may go 10 s later, less the burst.
        let mut wait = Duration::ZERO;
        for _ in 0..160 {
            wait = t.book(64 << 10, now);
        }
        let expected = Duration::from_secs(10) - BURST;
        assert!(
            wait.abs_diff(expected) < Duration::from_millis(5),
            "{wait:?}"
        );
    }

    #[test]
    fn a_window_sets_its_own_cap() {
        let night = RateWindow {
            schedule: CronSchedule::parse("0 22 * * *").unwrap(),
            duration: Duration::from_secs(8 * 3600),
            rate: None,
        };
        let b = Bandwidth {
            default: Some(2 << 20),
            windows: vec![night],
        };
        let at = |h: u32| {
            chrono::NaiveDate::from_ymd_opt(2026, 12, 2)
                .unwrap()
                .and_hms_opt(h, 30, 0)
                .unwrap()
                .and_utc()
        };
        assert_eq!(b.rate_at(at(23)), None);
        assert_eq!(b.rate_at(at(3)), None);
        assert_eq!(b.rate_at(at(12)), Some(2 << 20));
        assert!(b
            .describe()
            .starts_with("2 MiB/s; unlimited from `0 22 * * *`"));
    }
}
