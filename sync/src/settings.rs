//! Sync settings: parent, credentials, mode, cron schedule, sync window, message TTL, what to
//! sync, and every limit. Raw values (from a config file, flags, or the connection string) are
//! validated once at start; an invalid value is refused with a message showing the valid range.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use connection_string::{ConnectionString, ConnectionStringError};
use oci::Platform;
use util::duration::{self, Iso};

/// A setting that cannot be used. The message names the setting and what is valid.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
    #[error(transparent)]
    ConnectionString(#[from] ConnectionStringError),
    #[error("config file {path}: {message}")]
    ConfigFile { path: PathBuf, message: String },
    /// An `upstreams` entry that cannot be used: which entry, which field, what is wrong.
    #[error("{entry}: {field}: {message}")]
    Upstream {
        entry: String,
        field: &'static str,
        message: String,
    },
}

fn invalid(setting: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        setting,
        message: message.into(),
    }
}

/// Whether content pushed locally also goes up to the parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Mode {
    /// Pull down only.
    ReadOnly,
    /// Pull down, and push up what clients pushed here (store and forward).
    ReadWrite,
}

impl FromStr for Mode {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "readonly" => Ok(Mode::ReadOnly),
            "readwrite" => Ok(Mode::ReadWrite),
            _ => Err(invalid(
                "mode",
                format!("{s:?} is not a mode; use ReadOnly or ReadWrite"),
            )),
        }
    }
}

/// Formats a duration as ISO-8601 (for status output and messages), the form the ACR connected
/// registry documents its settings in. Every duration setting also reads the short spelling
/// (`1h`, `7d`): see [`util::duration`].
pub fn format_iso_duration(d: Duration) -> String {
    Iso(d).to_string()
}

/// `messageTtl` checked against its range (P1D to P90D), `DEFAULT_MESSAGE_TTL` when absent.
/// A registry with no parent still keeps its change log this long for its children.
pub fn message_ttl(value: Option<&str>) -> Result<Duration, SettingsError> {
    duration_in_range(
        "messageTtl",
        value.unwrap_or(DEFAULT_MESSAGE_TTL),
        Duration::from_secs(86_400),
        Duration::from_secs(90 * 86_400),
    )
}

fn duration_in_range(
    setting: &'static str,
    value: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, SettingsError> {
    let range = format!(
        "valid range {} to {}",
        format_iso_duration(min),
        format_iso_duration(max)
    );
    let d = duration::parse(value).map_err(|m| invalid(setting, format!("{m}; {range}")))?;
    if d < min || d > max {
        return Err(invalid(
            setting,
            format!("{value} is out of range; {range}"),
        ));
    }
    Ok(d)
}

/// A cron schedule: five fields (minute hour day-of-month month day-of-week, as in crontab,
/// day-of-week 0-7 with 0 and 7 = Sunday) or six with a leading seconds field.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    source: String,
    schedule: cron::Schedule,
}

impl CronSchedule {
    pub fn parse(s: &str) -> Result<CronSchedule, SettingsError> {
        let fields: Vec<&str> = s.split_whitespace().collect();
        let help = "expected five fields `minute hour day-of-month month day-of-week`, e.g. `*/15 * * * *` \
                    (or six with a leading seconds field)";
        let (seconds, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(invalid(
                    "syncSchedule",
                    format!("{s:?} has {n} fields; {help}"),
                ))
            }
        };
        // Five fields start at the minute, six at the second.
        let names = &CRON_FIELDS[CRON_FIELDS.len() - fields.len()..];
        for ((name, min, max), field) in names.iter().zip(&fields) {
            check_cron_field(name, *min, *max, field)
                .map_err(|m| invalid("syncSchedule", format!("{s:?}: {m}")))?;
        }
        let dow = crontab_dow_to_names(rest[4])
            .map_err(|m| invalid("syncSchedule", format!("{s:?}: {m}; {help}")))?;
        let expr = format!(
            "{seconds} {} {} {} {} {dow}",
            rest[0], rest[1], rest[2], rest[3]
        );
        let schedule = cron::Schedule::from_str(&expr)
            .map_err(|e| invalid("syncSchedule", format!("{s:?}: {e}; {help}")))?;
        Ok(CronSchedule {
            source: s.to_owned(),
            schedule,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The latest scheduled start at or before `now`, if one is within `lookback`.
    pub fn last_start_within(
        &self,
        now: DateTime<Utc>,
        lookback: Duration,
    ) -> Option<DateTime<Utc>> {
        let from = now - chrono::Duration::from_std(lookback).ok()?;
        self.schedule
            .after(&(from - chrono::Duration::seconds(1)))
            .take_while(|t| *t <= now)
            .last()
    }

    /// The first scheduled start strictly after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.after(&now).next()
    }
}

/// The fields of a schedule with their valid numbers, as crontab has them; the five-field
/// form starts at the minute.
const CRON_FIELDS: [(&str, u32, u32); 6] = [
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
];

/// Checks the numbers of one field (in lists, ranges `a-b` and steps `/n`) against its range,
/// so a mistake is reported in crontab's terms: the `cron` crate's own messages count some
/// fields differently from crontab (it says "Minutes must be less than 59" of 61, though 59 is
/// valid). Names (`MON`, `JAN`) are left to the crate.
fn check_cron_field(name: &str, min: u32, max: u32, field: &str) -> Result<(), String> {
    let number = |text: &str| -> Result<Option<u32>, String> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        match text.parse::<u32>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(format!("{name} {text} is out of range {min}-{max}")),
        }
    };
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        if let Some(step) = step {
            if step.bytes().all(|b| b.is_ascii_digit())
                && !matches!(step.parse::<u32>(), Ok(n) if (1..=max).contains(&n))
            {
                return Err(format!(
                    "{name} step /{step} is out of range: steps run from 1 to {max}"
                ));
            }
        }
        if range == "*" || range == "?" {
            continue;
        }
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(range)?, None),
        };
        if let (Some(a), Some(b)) = (first, last) {
            if a > b {
                return Err(format!(
                    "{name} range {a}-{b} runs backwards: write the smaller number first"
                ));
            }
        }
    }
    Ok(())
}

/// Crontab numbers day-of-week 0-7 with Sunday 0 and 7; the `cron` crate numbers 1-7 from
/// Sunday. Names avoid the ambiguity: a numeric range (`1-5`, `5-7`, `1-7/3`) becomes the list
/// of the days it names, so it never wraps or runs backwards in the crate's numbering.
fn crontab_dow_to_names(field: &str) -> Result<String, String> {
    const NAMES: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];
    let number = |t: &str| -> Result<Option<usize>, String> {
        match t.parse::<usize>() {
            Ok(n) if n <= 7 => Ok(Some(n)),
            Ok(n) => Err(format!("day-of-week {n} is out of range 0-7")),
            Err(_) => Ok(None),
        }
    };
    let name = |t: &str| -> Result<String, String> {
        Ok(number(t)?.map_or_else(|| t.to_owned(), |n| NAMES[n].to_owned()))
    };
    let mut items: Vec<String> = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let numeric = match range.split_once('-') {
            Some((a, b)) => match (number(a)?, number(b)?) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => None,
            },
            None if step.is_none() => number(range)?.map(|a| (a, a)),
            None => None,
        };
        let every = match step.map(str::parse::<usize>) {
            None => Some(1),
            Some(Ok(n)) if n >= 1 => Some(n),
            // Not a step of ours: the crate names what is wrong with it.
            Some(_) => None,
        };
        if let (Some((a, b)), Some(every)) = (numeric, every) {
            if a > b {
                return Err(format!(
                    "day-of-week range {a}-{b} runs backwards: write the smaller number first"
                ));
            }
            for day in (a..=b).step_by(every).map(|d| NAMES[d]) {
                if !items.iter().any(|i| i == day) {
                    items.push(day.to_owned());
                }
            }
            continue;
        }
        let mapped = match range.split_once('-') {
            Some((a, b)) => format!("{}-{}", name(a)?, name(b)?),
            None if range == "*" => "*".to_owned(),
            None => name(range)?,
        };
        items.push(match step {
            Some(s) => format!("{mapped}/{s}"),
            None => mapped,
        });
    }
    Ok(items.join(","))
}

/// Which repositories and tags to sync. `pattern` is a repository name, or a name with `*`
/// (matching any characters, `/` included) expanded from the parent's catalog.
#[derive(Clone, Debug)]
pub struct RepoRule {
    pub pattern: String,
    pub include: Option<regex_lite::Regex>,
    pub exclude: Option<regex_lite::Regex>,
    /// Keep only the newest N tags that parse as semver (`v` prefix allowed).
    pub newest: Option<usize>,
}

impl RepoRule {
    pub fn is_explicit(&self) -> bool {
        !self.pattern.contains('*')
    }

    pub fn matches_repo(&self, repo: &str) -> bool {
        glob_match(&self.pattern, repo)
    }

    /// The tags of `tags` this rule selects.
    pub fn select_tags(&self, tags: &[String]) -> Vec<String> {
        let mut out: Vec<String> = tags
            .iter()
            .filter(|t| self.include.as_ref().is_none_or(|r| r.is_match(t)))
            .filter(|t| !self.exclude.as_ref().is_some_and(|r| r.is_match(t)))
            .cloned()
            .collect();
        if let Some(n) = self.newest {
            let mut versioned: Vec<(semver::Version, String)> = out
                .iter()
                .filter_map(|t| {
                    semver::Version::parse(t.strip_prefix('v').unwrap_or(t))
                        .ok()
                        .map(|v| (v, t.clone()))
                })
                .collect();
            versioned.sort();
            out = versioned
                .into_iter()
                .rev()
                .take(n)
                .map(|(_, t)| t)
                .collect();
        }
        out.sort();
        out
    }
}

/// Why `repo` is absent here when no rule puts it in sync's scope: the sentence a client's
/// 404 gets (it names the patterns, never the parent's address).
pub fn outside_scope(rules: &[RepoRule], repo: &str) -> Option<String> {
    if rules.iter().any(|r| r.matches_repo(repo)) {
        return None;
    }
    let patterns: Vec<&str> = rules.iter().map(|r| r.pattern.as_str()).collect();
    Some(format!(
        "repository {repo} is outside this registry's sync scope (it syncs {} from its parent); \
         push it here, or add it to the scope with --repo",
        patterns.join(", ")
    ))
}

pub(crate) fn glob_match(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            let Some(rest) = s.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|i| rest.is_char_boundary(*i))
                .any(|i| glob_match(tail, &rest[i..]))
        }
    }
}

/// Every limit of the sync engine, with its default.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Blobs transferred at once (default 8).
    pub concurrency: usize,
    /// TCP+TLS connect timeout (default 10 s).
    pub connect_timeout: Duration,
    /// Whole-request timeout for small requests: manifests, HEADs, tag lists, tokens (default 60 s).
    pub request_timeout: Duration,
    /// A blob transfer fails when no byte moves for this long; a slow but moving blob never
    /// times out (default 60 s).
    pub progress_timeout: Duration,
    /// Attempts per request for retryable failures (default 5).
    pub retries: u32,
    /// First backoff delay, doubled per attempt with full jitter (default 500 ms).
    pub backoff_base: Duration,
    /// Longest backoff or honoured `Retry-After` (default 60 s).
    pub backoff_max: Duration,
    /// Largest manifest accepted from the parent (default 4 MiB).
    pub max_manifest_bytes: usize,
    /// Blobs larger than this go up to the parent in chunks of this size, each acknowledged
    /// before the next, so a cut upload resumes after the last one (default 16 MiB). Smaller
    /// blobs go in one request.
    pub upload_chunk: u64,
    /// The cap on bytes to and from the parent, per cron window (default none).
    pub bandwidth: crate::bandwidth::Bandwidth,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            concurrency: 8,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            progress_timeout: Duration::from_secs(60),
            retries: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            max_manifest_bytes: 4 << 20,
            upload_chunk: 16 << 20,
            bandwidth: crate::bandwidth::Bandwidth::default(),
        }
    }
}

/// User name and password for the parent. `Debug` hides the password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl FromStr for Credentials {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok(Credentials {
                username: u.to_owned(),
                password: p.to_owned(),
            }),
            _ => Err(invalid(
                "creds",
                "expected NAME:PASSWORD with both parts non-empty",
            )),
        }
    }
}

/// Validated sync settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Base URL of the parent (`https://host:port`), no trailing slash.
    pub parent: String,
    pub credentials: Option<Credentials>,
    /// PEM trust bundle for the parent's TLS; without it the system's web roots are used.
    pub trust: Option<PathBuf>,
    pub mode: Mode,
    pub schedule: CronSchedule,
    pub window: Duration,
    pub message_ttl: Duration,
    pub repos: Vec<RepoRule>,
    /// Platforms kept from multi-arch indexes (empty: all). The index itself is kept
    /// byte-exact; the other platforms' manifests are left out (pulling them here fails).
    pub platforms: Vec<Platform>,
    /// How often a full comparison also asks the parent for new referrers (signatures, SBOMs)
    /// of tags already in step. A parent of ours names them in its change feed; other parents
    /// cannot say what changed, and asking on every pass would cost a request per tag.
    pub referrers_recheck: Duration,
    /// While a window is open, how long after a completed pass the next one starts (a parent of
    /// ours answers it with one feed request; another parent is compared tag by tag).
    pub poll_interval: Duration,
    /// Longest wait before a failed pass is tried again inside an open window (the wait starts at
    /// `FIRST_RETRY` and doubles, with jitter, up to this).
    pub retry_max: Duration,
    /// A full comparison runs at least this often even when the parent's change feed names
    /// nothing, so a local store that drifted from what sync recorded (a disk restored from
    /// backup, a tag removed behind sync's back) is brought back in step.
    pub reconcile_interval: Duration,
    /// A repository name or pattern that matches nothing at the parent (or a tag filter that
    /// keeps no tag) fails the pass instead of being a warning.
    pub strict: bool,
    /// Read the parent's change feed (default). Off, every pass compares tag by tag as with a
    /// parent that is not ours: for measuring what the feed saves, or to step around a
    /// parent whose feed misbehaves.
    pub feed: bool,
    /// Which repositories a pull that misses here is fetched from the parent for
    /// (pull-through).
    pub on_demand: OnDemandScope,
    /// The longest a pull that misses here waits for the parent before it fails saying the
    /// parent is unreachable.
    pub on_demand_timeout: Duration,
    /// A tag held here and not confirmed with the parent for this long is checked with it in
    /// the background when a client pulls it (the pull is answered from here at once); `None`:
    /// tags are kept current by sync alone.
    pub on_demand_revalidate: Option<Duration>,
    pub limits: Limits,
    /// Other registries serving local namespaces; the parent serves every other name.
    pub upstreams: crate::upstreams::Upstreams,
}

/// The on-demand scope (`onDemand`, `--on-demand`): the repositories pulled through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnDemandScope {
    /// The repositories sync keeps (`repos`): the default.
    SyncScope,
    /// Repository names or `*` patterns (matching any characters, `/` included).
    Patterns(Vec<String>),
    /// No pull-through (`off`): a miss is a 404, as before.
    Off,
}

impl OnDemandScope {
    /// Whether a pull of `repo` that misses here is fetched from the parent, given the sync
    /// scope `repos`.
    pub fn covers(&self, repos: &[RepoRule], repo: &str) -> bool {
        match self {
            OnDemandScope::SyncScope => repos.iter().any(|r| r.matches_repo(repo)),
            OnDemandScope::Patterns(patterns) => patterns.iter().any(|p| glob_match(p, repo)),
            OnDemandScope::Off => false,
        }
    }

    /// As `--print-config` shows it.
    pub fn describe(&self) -> String {
        match self {
            OnDemandScope::SyncScope => "sync scope".into(),
            OnDemandScope::Patterns(p) => p.join(","),
            OnDemandScope::Off => "off".into(),
        }
    }
}

/// Default `onDemandTimeout`.
pub const DEFAULT_ON_DEMAND_TIMEOUT: &str = "10s";

/// One repository rule as written in a config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRepoRule {
    pub pattern: String,
    pub include: Option<String>,
    pub exclude: Option<String>,
    pub newest: Option<usize>,
}

/// Settings before validation: what a config file holds (JSON, camelCase keys), overlaid by
/// command-line flags, then by the connection string's fields.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSettings {
    pub connection_string: Option<String>,
    pub parent: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub trust: Option<PathBuf>,
    pub mode: Option<String>,
    pub sync_schedule: Option<String>,
    pub sync_window: Option<String>,
    pub message_ttl: Option<String>,
    /// ISO-8601 interval of the referrers re-check (PT0S: every full comparison).
    pub referrers_recheck: Option<String>,
    /// ISO-8601 wait between passes while a window is open.
    pub sync_poll_interval: Option<String>,
    /// ISO-8601 longest wait before a failed pass is retried inside an open window.
    pub sync_retry_max: Option<String>,
    /// ISO-8601 interval of the full comparison that reconciles the local store with the parent.
    pub reconcile_interval: Option<String>,
    /// Scope that matches nothing at the parent is an error, not a warning.
    pub strict: Option<bool>,
    /// `false`: never read the parent's change feed; compare tag by tag on every pass.
    pub feed: Option<bool>,
    /// Repositories pulled through (names or `*` patterns; `["off"]`: none; empty: the sync
    /// scope).
    #[serde(default)]
    pub on_demand: Vec<String>,
    /// How long a pull that misses here waits for the parent (`"10s"`, `"PT10S"`).
    pub on_demand_timeout: Option<String>,
    /// Tags not confirmed with the parent for this long are checked with it when pulled.
    pub on_demand_revalidate: Option<String>,
    #[serde(default)]
    pub repos: Vec<RawRepoRule>,
    /// `os/architecture[/variant]` entries of the platform filter.
    #[serde(default)]
    pub platforms: Vec<String>,
    pub concurrency: Option<usize>,
    pub connect_timeout_secs: Option<Timeout>,
    pub request_timeout_secs: Option<Timeout>,
    pub progress_timeout_secs: Option<Timeout>,
    pub retries: Option<u32>,
    /// Bytes per chunk of an upward blob upload.
    pub upload_chunk_bytes: Option<u64>,
    /// Cap on transfers to and from the parent (`2MiB/s`, `10Mbps`, `unlimited`).
    pub bandwidth_limit: Option<String>,
    /// Other caps while cron windows are open, the first open one applying.
    #[serde(default)]
    pub bandwidth_windows: Vec<RawBandwidthWindow>,
    /// Other registries serving local namespaces (`mcr/` from `https://mcr.microsoft.com`),
    /// besides the parent: see `upstreams.rs`.
    #[serde(default)]
    pub upstreams: Vec<crate::upstreams::RawUpstream>,
}

/// One `bandwidthWindows` entry: `{"schedule": "0 8 * * 1-5", "duration": "PT10H", "limit":
/// "2MiB/s"}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBandwidthWindow {
    pub schedule: String,
    pub duration: String,
    pub limit: String,
}

/// A timeout setting as written in the config file or on the command line: a whole number of
/// seconds (`60`, the form these settings always took, hence the `Secs` in their names) or a
/// duration in either spelling (`"90s"`, `"PT1M"`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Timeout {
    Seconds(u64),
    Text(String),
}

impl Timeout {
    fn duration(&self) -> Result<Duration, duration::DurationError> {
        match self {
            Timeout::Seconds(s) => Ok(Duration::from_secs(*s)),
            Timeout::Text(t) => duration::parse_or_seconds(t),
        }
    }
}

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Timeout::Seconds(s) => write!(f, "{s} s"),
            Timeout::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// The caps of `bandwidthLimit` and `bandwidthWindows`, checked.
fn bandwidth(
    default: Option<&str>,
    windows: Vec<RawBandwidthWindow>,
) -> Result<crate::bandwidth::Bandwidth, SettingsError> {
    use crate::bandwidth::{parse_rate, Bandwidth, RateWindow};
    let default = match default {
        Some(text) => parse_rate(text).map_err(|m| invalid("bandwidthLimit", m))?,
        None => None,
    };
    let windows = windows
        .into_iter()
        .map(|w| {
            let schedule = CronSchedule::parse(&w.schedule)
                .map_err(|e| invalid("bandwidthWindows", format!("schedule: {e}")))?;
            let duration = duration::parse(&w.duration).map_err(|e| {
                invalid(
                    "bandwidthWindows",
                    format!("duration {:?}: {e}", w.duration),
                )
            })?;
            let rate = parse_rate(&w.limit).map_err(|m| invalid("bandwidthWindows", m))?;
            Ok(RateWindow {
                schedule,
                duration,
                rate,
            })
        })
        .collect::<Result<_, SettingsError>>()?;
    Ok(Bandwidth { default, windows })
}

/// Default `syncSchedule`: every minute, i.e. continuous.
pub const DEFAULT_SCHEDULE: &str = "* * * * *";
/// Default `syncWindow`.
pub const DEFAULT_WINDOW: &str = "PT1H";
/// Default `referrersRecheck`.
pub const DEFAULT_REFERRERS_RECHECK: &str = "PT1H";
/// Default `messageTtl`.
pub const DEFAULT_MESSAGE_TTL: &str = "P7D";
/// Default `syncPollInterval`: the cadence the old one-pass-a-minute default schedule had.
pub const DEFAULT_POLL_INTERVAL: &str = "PT1M";
/// Default `syncRetryMax`.
pub const DEFAULT_RETRY_MAX: &str = "PT5M";
/// Default `reconcileInterval`.
pub const DEFAULT_RECONCILE_INTERVAL: &str = "PT1H";
/// The first wait before a failed pass is retried (never longer than `syncRetryMax`).
pub const FIRST_RETRY: Duration = Duration::from_secs(5);

impl RawSettings {
    /// Reads a JSON config file.
    pub fn from_file(path: &std::path::Path) -> Result<RawSettings, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|e| SettingsError::ConfigFile {
            path: path.to_owned(),
            message: format!("cannot read: {e}"),
        })?;
        serde_json::from_str(&text).map_err(|e| SettingsError::ConfigFile {
            path: path.to_owned(),
            message: format!("not valid sync settings JSON: {e}"),
        })
    }

    /// Fields set in `over` replace those in `self`; repository rules are appended.
    pub fn overlay(mut self, over: RawSettings) -> RawSettings {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(
            connection_string,
            parent,
            username,
            password,
            trust,
            mode,
            sync_schedule,
            sync_window,
            message_ttl,
            referrers_recheck,
            sync_poll_interval,
            sync_retry_max,
            reconcile_interval,
            strict,
            feed,
            on_demand_timeout,
            on_demand_revalidate,
            concurrency,
            connect_timeout_secs,
            request_timeout_secs,
            progress_timeout_secs,
            retries,
            upload_chunk_bytes,
            bandwidth_limit
        );
        self.repos.extend(over.repos);
        if !over.bandwidth_windows.is_empty() {
            self.bandwidth_windows = over.bandwidth_windows;
        }
        if !over.platforms.is_empty() {
            self.platforms = over.platforms;
        }
        if !over.on_demand.is_empty() {
            self.on_demand = over.on_demand;
        }
        if !over.upstreams.is_empty() {
            self.upstreams = over.upstreams;
        }
        self
    }

    /// Validates everything. Returns `Ok(None)` when no parent is configured at all (sync off).
    pub fn validate(self) -> Result<Option<Settings>, SettingsError> {
        let mut parent = self.parent;
        let mut credentials = match (self.username, self.password) {
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "creds",
                    "give both a user name and a password, or neither",
                ))
            }
        };
        if let Some(cs) = self.connection_string.filter(|s| !s.trim().is_empty()) {
            let cs: ConnectionString = cs.parse()?;
            if parent.is_none() {
                parent = Some(cs.resolved_parent_url(|var| std::env::var(var).ok())?);
            }
            if credentials.is_none() {
                credentials = Some(Credentials {
                    username: cs.sync_token_name,
                    password: cs.sync_token_password,
                });
            }
        }
        let Some(parent) = parent else {
            return Ok(None);
        };
        let parent = check_base_url(&parent).map_err(|m| invalid("parent", m))?;
        if let Some(t) = &self.trust {
            if !t.is_file() {
                return Err(invalid(
                    "trust",
                    format!("{} is not a readable PEM file", t.display()),
                ));
            }
        }
        let mode = match self.mode {
            Some(m) => m.parse()?,
            None => Mode::ReadOnly,
        };
        let schedule =
            CronSchedule::parse(self.sync_schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE))?;
        let window = duration_in_range(
            "syncWindow",
            self.sync_window.as_deref().unwrap_or(DEFAULT_WINDOW),
            Duration::from_secs(3600),
            Duration::from_secs(7 * 86_400),
        )?;
        let message_ttl = message_ttl(self.message_ttl.as_deref())?;
        let referrers_recheck = duration_in_range(
            "referrersRecheck",
            self.referrers_recheck
                .as_deref()
                .unwrap_or(DEFAULT_REFERRERS_RECHECK),
            Duration::ZERO,
            Duration::from_secs(30 * 86_400),
        )?;
        let poll_interval = duration_in_range(
            "syncPollInterval",
            self.sync_poll_interval
                .as_deref()
                .unwrap_or(DEFAULT_POLL_INTERVAL),
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        )?;
        let retry_max = duration_in_range(
            "syncRetryMax",
            self.sync_retry_max.as_deref().unwrap_or(DEFAULT_RETRY_MAX),
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        )?;
        let reconcile_interval = duration_in_range(
            "reconcileInterval",
            self.reconcile_interval
                .as_deref()
                .unwrap_or(DEFAULT_RECONCILE_INTERVAL),
            Duration::from_secs(1),
            Duration::from_secs(30 * 86_400),
        )?;
        // No patterns: everything the parent's catalog lists, as a connected registry mirrors
        // its parent unless told otherwise (a parent without a catalog then says so at sync time).
        let raw_repos = if self.repos.is_empty() {
            vec![RawRepoRule {
                pattern: "*".into(),
                include: None,
                exclude: None,
                newest: None,
            }]
        } else {
            self.repos
        };
        let repos = parse_repo_rules(raw_repos)?;
        let upstreams = crate::upstreams::Upstreams::validate(self.upstreams, &parent)?;
        let on_demand = on_demand_scope(&self.on_demand)?;
        let on_demand_timeout = duration_in_range(
            "onDemandTimeout",
            self.on_demand_timeout
                .as_deref()
                .unwrap_or(DEFAULT_ON_DEMAND_TIMEOUT),
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        let on_demand_revalidate = self
            .on_demand_revalidate
            .as_deref()
            .map(|d| {
                duration_in_range(
                    "onDemandRevalidate",
                    d,
                    Duration::from_secs(1),
                    Duration::from_secs(30 * 86_400),
                )
            })
            .transpose()?;
        let platforms = self
            .platforms
            .iter()
            .map(|p| p.parse::<Platform>().map_err(|e| invalid("platform", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut limits = Limits {
            bandwidth: bandwidth(self.bandwidth_limit.as_deref(), self.bandwidth_windows)?,
            ..Limits::default()
        };
        if let Some(c) = self.upload_chunk_bytes {
            if !((64 << 10)..=(1 << 30)).contains(&c) {
                return Err(invalid(
                    "upload chunk",
                    format!("{c} bytes is out of range; valid range 65536 (64 KiB) to 1073741824 (1 GiB)"),
                ));
            }
            limits.upload_chunk = c;
        }
        if let Some(c) = self.concurrency {
            if !(1..=256).contains(&c) {
                return Err(invalid(
                    "concurrency",
                    format!("{c} is out of range; valid range 1 to 256"),
                ));
            }
            limits.concurrency = c;
        }
        let secs = |name: &'static str, v: Option<Timeout>, d: Duration| {
            let Some(v) = v else { return Ok(d) };
            let t = v.duration().map_err(|m| invalid(name, m.to_string()))?;
            if (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&t) {
                Ok(t)
            } else {
                Err(invalid(
                    name,
                    format!("{v} is out of range; valid range 1 to 86400 s (PT1S to P1D)"),
                ))
            }
        };
        limits.connect_timeout = secs(
            "connect timeout",
            self.connect_timeout_secs,
            limits.connect_timeout,
        )?;
        limits.request_timeout = secs(
            "request timeout",
            self.request_timeout_secs,
            limits.request_timeout,
        )?;
        limits.progress_timeout = secs(
            "progress timeout",
            self.progress_timeout_secs,
            limits.progress_timeout,
        )?;
        if let Some(r) = self.retries {
            if !(1..=100).contains(&r) {
                return Err(invalid(
                    "retries",
                    format!("{r} is out of range; valid range 1 to 100"),
                ));
            }
            limits.retries = r;
        }
        Ok(Some(Settings {
            parent,
            credentials,
            trust: self.trust,
            mode,
            schedule,
            window,
            message_ttl,
            repos,
            platforms,
            referrers_recheck,
            poll_interval,
            retry_max,
            reconcile_interval,
            strict: self.strict.unwrap_or(false),
            feed: self.feed.unwrap_or(true),
            on_demand,
            on_demand_timeout,
            on_demand_revalidate,
            limits,
            upstreams,
        }))
    }
}

/// The on-demand scope from its entries: none, the sync scope; `off` alone, none; else
/// repository patterns.
fn on_demand_scope(entries: &[String]) -> Result<OnDemandScope, SettingsError> {
    let entries: Vec<&str> = entries
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .collect();
    match entries.as_slice() {
        [] => Ok(OnDemandScope::SyncScope),
        ["off"] => Ok(OnDemandScope::Off),
        patterns => {
            for p in patterns {
                let valid = p
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/*".contains(c));
                if !valid || *p == "off" {
                    return Err(invalid(
                        "onDemand",
                        format!(
                            "{p:?} is not a repository pattern (lowercase name, `/` separated, \
                             `*` as wildcard); `off` alone turns pull-through off"
                        ),
                    ));
                }
            }
            Ok(OnDemandScope::Patterns(
                patterns.iter().map(|p| p.to_string()).collect(),
            ))
        }
    }
}

/// A base URL `http(s)://host[:port]` (a trailing `/` dropped), or why it is not one.
pub(crate) fn check_base_url(url: &str) -> Result<String, String> {
    let url = url.trim_end_matches('/').to_owned();
    if !(url.starts_with("https://") || url.starts_with("http://"))
        || url.len() <= "https://".len()
        || url["https://".len()..].contains('/')
    {
        return Err(format!(
            "{url:?} must be http(s)://host[:port] with no path"
        ));
    }
    Ok(url)
}

/// Repository rules as written, checked.
pub(crate) fn parse_repo_rules(raw: Vec<RawRepoRule>) -> Result<Vec<RepoRule>, SettingsError> {
    let mut repos = Vec::new();
    for r in raw {
        if r.pattern.is_empty()
            || !r
                .pattern
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/*".contains(c))
        {
            return Err(invalid(
                "repos",
                format!(
                    "{:?} is not a repository pattern (lowercase name, `/` separated, `*` as wildcard)",
                    r.pattern
                ),
            ));
        }
        let re = |what: &'static str, s: Option<String>| {
            s.map(|s| {
                regex_lite::Regex::new(&s)
                    .map_err(|e| invalid(what, format!("bad regex {s:?}: {e}")))
            })
            .transpose()
        };
        if r.newest == Some(0) {
            return Err(invalid("newest", "must be at least 1"));
        }
        repos.push(RepoRule {
            pattern: r.pattern,
            include: re("tag include", r.include)?,
            exclude: re("tag exclude", r.exclude)?,
            newest: r.newest,
        });
    }
    Ok(repos)
}

/// Fuzz target for [`CronSchedule::parse`] (bounded run below; `fuzz/` under `cargo fuzz`):
/// any schedule text parses or is refused without a panic, and a parsed one computes its next
/// and last starts; a crontab day-of-week range `a-b` (`0` and `7` both Sunday, optionally
/// `/step`) fires on exactly the days crontab would.
#[cfg(any(test, fuzzing))]
pub fn fuzz_cron_schedule(data: &[u8]) {
    use chrono::Datelike;
    let mut g = fuzzkit::Gen::new(data);
    // Monday 2026-11-23, midnight.
    let monday = DateTime::<Utc>::from_timestamp(1_795_392_000, 0).expect("a valid time");
    if g.bool() {
        if let Ok(s) = CronSchedule::parse(&fuzzkit::text(g.rest())) {
            let _ = s.next_after(monday);
            let _ = s.last_start_within(monday, Duration::from_secs(86_400));
        }
        return;
    }
    let (a, b) = (g.below(8), g.below(8));
    let (a, b) = (a.min(b), a.max(b));
    let step = if g.bool() { Some(1 + g.below(7)) } else { None };
    let field = match step {
        Some(n) => format!("{a}-{b}/{n}"),
        None => format!("{a}-{b}"),
    };
    let expected: std::collections::BTreeSet<u32> = (a..=b)
        .step_by(step.unwrap_or(1))
        .map(|d| (d % 7) as u32)
        .collect();
    let s = CronSchedule::parse(&format!("0 0 * * {field}"))
        .unwrap_or_else(|e| panic!("day-of-week {field} refused: {e}"));
    let fired: std::collections::BTreeSet<u32> = s
        .schedule
        .after(&(monday - chrono::Duration::seconds(1)))
        .take_while(|t| *t < monday + chrono::Duration::days(7))
        .map(|t| t.weekday().num_days_from_sunday())
        .collect();
    assert_eq!(fired, expected, "day-of-week {field}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawSettings {
        RawSettings {
            parent: Some("http://127.0.0.1:5000".into()),
            repos: vec![RawRepoRule {
                pattern: "app/*".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// The feed is on unless the config file says `"feed": false` (flags overlay it).
    #[test]
    fn feed_is_on_by_default_and_off_from_the_file() {
        assert!(raw().validate().unwrap().unwrap().feed);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.json");
        std::fs::write(
            &path,
            r#"{"parent": "http://127.0.0.1:5000", "feed": false}"#,
        )
        .unwrap();
        let file = RawSettings::from_file(&path).unwrap();
        assert!(!file.clone().validate().unwrap().unwrap().feed);
        let on = RawSettings {
            feed: Some(true),
            ..Default::default()
        };
        assert!(file.overlay(on).validate().unwrap().unwrap().feed);
    }

    #[test]
    fn durations() {
        assert_eq!(duration::parse("PT1H").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            duration::parse("P1DT12H").unwrap(),
            Duration::from_secs(129_600)
        );
        assert_eq!(
            duration::parse("P2W").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert!(duration::parse("P1M").is_err());
        assert!(duration::parse("1H").is_err());
        assert!(duration::parse("PT").is_err());
        assert_eq!(format_iso_duration(Duration::from_secs(129_600)), "P1DT12H");
    }

    #[test]
    fn bandwidth_caps_are_checked_and_say_which_setting() {
        let mut r = raw();
        r.bandwidth_limit = Some("fast".into());
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("bandwidthLimit") && e.contains("2MiB/s"), "{e}");
        let window = |schedule: &str, duration: &str, limit: &str| RawBandwidthWindow {
            schedule: schedule.into(),
            duration: duration.into(),
            limit: limit.into(),
        };
        for (w, says) in [
            (window("0 25 * * *", "PT8H", "2MiB/s"), "schedule"),
            (window("0 22 * * *", "soon", "2MiB/s"), "duration"),
            (window("0 22 * * *", "PT8H", "10"), "no unit"),
        ] {
            let mut r = raw();
            r.bandwidth_windows = vec![w];
            let e = r.validate().unwrap_err().to_string();
            assert!(e.contains("bandwidthWindows") && e.contains(says), "{e}");
        }
        let mut r = raw();
        r.bandwidth_limit = Some("10Mbps".into());
        r.bandwidth_windows = vec![window("0 22 * * *", "PT8H", "unlimited")];
        let s = r.validate().unwrap().unwrap();
        assert_eq!(s.limits.bandwidth.default, Some(1_250_000));
        assert_eq!(s.limits.bandwidth.windows.len(), 1);
        assert_eq!(s.limits.bandwidth.windows[0].rate, None);
    }

    #[test]
    fn upload_chunk_and_referrers_recheck_ranges_are_shown() {
        let mut r = raw();
        r.upload_chunk_bytes = Some(1024);
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("upload chunk") && e.contains("65536"), "{e}");
        let mut r = raw();
        r.upload_chunk_bytes = Some(1 << 20);
        let s = r.validate().unwrap().unwrap();
        assert_eq!(s.limits.upload_chunk, 1 << 20);
        let mut r = raw();
        r.referrers_recheck = Some("P60D".into());
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("referrersRecheck") && e.contains("P30D"), "{e}");
        let mut r = raw();
        r.referrers_recheck = Some("PT0S".into());
        assert_eq!(
            r.validate().unwrap().unwrap().referrers_recheck,
            Duration::ZERO
        );
        assert_eq!(
            raw().validate().unwrap().unwrap().referrers_recheck,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn platform_filter_is_validated() {
        let mut r = raw();
        r.platforms = vec!["linux/arm64".into(), "linux/arm/v7".into()];
        let s = r.validate().unwrap().unwrap();
        assert_eq!(s.platforms.len(), 2);
        let mut r = raw();
        r.platforms = vec!["arm64".into()];
        let e = r.validate().unwrap_err().to_string();
        assert!(
            e.contains("platform") && e.contains("os/architecture"),
            "{e}"
        );
    }

    #[test]
    fn window_and_ttl_ranges_are_shown() {
        let mut r = raw();
        r.sync_window = Some("PT30M".into());
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("syncWindow") && e.contains("PT1H to P7D"), "{e}");
        let mut r = raw();
        r.message_ttl = Some("P91D".into());
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("messageTtl") && e.contains("P1D to P90D"), "{e}");
        assert!(raw().validate().unwrap().is_some());
    }

    /// The window's own limits: how often it polls, how long a failed pass waits at most, how
    /// often everything is compared; each refused outside its range, named, with the range.
    #[test]
    fn poll_retry_and_reconcile_ranges_are_shown() {
        type Field = fn(&mut RawSettings) -> &mut Option<String>;
        let cases: [(Field, &str, &str, &str); 3] = [
            (
                |r| &mut r.sync_poll_interval,
                "PT0S",
                "syncPollInterval",
                "PT1S to P1D",
            ),
            (
                |r| &mut r.sync_retry_max,
                "P2D",
                "syncRetryMax",
                "PT1S to P1D",
            ),
            (
                |r| &mut r.reconcile_interval,
                "P31D",
                "reconcileInterval",
                "PT1S to P30D",
            ),
        ];
        for (field, value, name, range) in cases {
            let mut r = raw();
            *field(&mut r) = Some(value.into());
            let e = r.validate().unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(range), "{e}");
        }
        let s = raw().validate().unwrap().unwrap();
        assert_eq!(s.poll_interval, Duration::from_secs(60));
        assert_eq!(s.retry_max, Duration::from_secs(300));
        assert_eq!(s.reconcile_interval, Duration::from_secs(3600));
    }

    #[test]
    fn fuzz_cron_schedule_bounded() {
        let seeds: [&[u8]; 6] = [
            b"\x01*/15 * * * *",
            b"\x010 3 * * 1-5",
            b"\x010-59/5 0-23 1-31 1-12 0-7",
            b"\x010 0 * JAN-MAR MON-FRI",
            b"\x01*/10 0 3 * * 5-7",
            b"\x00\x05\x07",
        ];
        fuzzkit::run("sync::cron_schedule", &seeds, fuzz_cron_schedule);
    }

    /// Found by fuzzing: a crontab day-of-week range ending on Sunday (7) with a step was
    /// handed to the `cron` crate as `MON-SUN/3`, a backwards range there, and refused; `7-7`
    /// was split as `SUN-SAT,SUN` and fired every day.
    #[test]
    fn fuzz_regression_day_of_week_ranges_ending_on_sunday() {
        for (field, days) in [
            ("1-7/3", "MON,THU,SUN"),
            ("7-7", "SUN"),
            ("5-7", "FRI,SAT,SUN"),
            ("0-7", "SUN,MON,TUE,WED,THU,FRI,SAT"),
            ("1-5", "MON,TUE,WED,THU,FRI"),
            ("MON-FRI", "MON-FRI"),
            ("*/2", "*/2"),
        ] {
            assert_eq!(crontab_dow_to_names(field).unwrap(), days, "{field}");
        }
        assert!(CronSchedule::parse("0 0 * * 1-7/3").is_ok());
    }

    #[test]
    fn cron() {
        let s = CronSchedule::parse("0 3 * * 1-5").unwrap();
        let mon = "2026-11-23T02:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            s.next_after(mon).unwrap(),
            "2026-11-23T03:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let sat = "2026-11-21T02:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            s.next_after(sat).unwrap(),
            "2026-11-23T03:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(CronSchedule::parse("* * *")
            .unwrap_err()
            .to_string()
            .contains("five fields"));
        assert!(CronSchedule::parse("59 23 31 12 7").is_ok());
        assert!(CronSchedule::parse("0-59/5 0-23 1-31 1-12 0-7").is_ok());
        assert!(CronSchedule::parse("0 0 * JAN-MAR MON-FRI").is_ok());
        let every = CronSchedule::parse("* * * * *").unwrap();
        let now = "2026-11-23T02:00:30Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            every
                .last_start_within(now, Duration::from_secs(3600))
                .unwrap(),
            "2026-11-23T02:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn cron_numbers_out_of_range_name_the_field_and_its_range() {
        let refused = |expr: &str| CronSchedule::parse(expr).unwrap_err().to_string();
        assert_eq!(
            refused("61 * * * *"),
            r#"syncSchedule: "61 * * * *": minute 61 is out of range 0-59"#
        );
        for (expr, says) in [
            ("* 24 * * *", "hour 24 is out of range 0-23"),
            ("* * 0 * *", "day-of-month 0 is out of range 1-31"),
            ("* * 32 * *", "day-of-month 32 is out of range 1-31"),
            ("* * * 13 *", "month 13 is out of range 1-12"),
            ("* * * 0 *", "month 0 is out of range 1-12"),
            ("* * * * 8", "day-of-week 8 is out of range 0-7"),
            ("0-60 * * * *", "minute 60 is out of range 0-59"),
            ("* 1,2,25 * * *", "hour 25 is out of range 0-23"),
            ("5-70/5 * * * *", "minute 70 is out of range 0-59"),
            (
                "*/0 * * * *",
                "minute step /0 is out of range: steps run from 1 to 59",
            ),
            ("*/60 * * * *", "minute step /60 is out of range"),
            ("30-10 * * * *", "minute range 30-10 runs backwards"),
            ("60 0 * * * *", "second 60 is out of range 0-59"),
        ] {
            let message = refused(expr);
            assert!(message.contains(says), "{expr}: {message}");
            assert!(message.starts_with("syncSchedule: "), "{expr}: {message}");
        }
    }

    #[test]
    fn tag_filters() {
        let rule = RepoRule {
            pattern: "a/*".into(),
            include: Some(regex_lite::Regex::new("^v").unwrap()),
            exclude: Some(regex_lite::Regex::new("-rc").unwrap()),
            newest: Some(2),
        };
        let tags: Vec<String> = ["v1.0.0", "v1.2.0", "v1.10.0", "v2.0.0-rc1", "latest"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(rule.select_tags(&tags), vec!["v1.10.0", "v1.2.0"]);
        assert!(rule.matches_repo("a/b/c"));
        assert!(!rule.matches_repo("ab"));
    }
}
