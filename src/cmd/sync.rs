//! `connected-registry sync`: one pass now (`--once`, with a progress bar per blob and a
//! summary) or the schedule in the foreground; and `SyncFlags`, the sync settings `serve`
//! shares, with `Prepared::start_background` that `serve` calls to run the schedule and
//! expose `GET /acr/v1/_sync/status`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use registry::storage::lease::LeaseClaim;
use registry::Digest;
use sync::lease::SyncLease;
use sync::namespaced::{Namespaced, UpstreamParents};
use sync::parent_config::{ParentConfig, Received};
use sync::settings::{Mode, RawRepoRule, RawSettings, Settings, Timeout};
use sync::upstreams::Upstream;
use sync::{Engine, NoProgress, Outcome, ParentClient, Progress, StateFile, Summary, SyncService};

/// Sync settings, shared by `sync` and `serve`. Flags override the config file; the connection
/// string fills the parent and credentials when no flag gives them.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SyncFlags {
    /// Sync settings file (JSON, camelCase keys as in sync/README.md). Flags override it.
    #[arg(long = "sync-config", env = "CONNECTED_REGISTRY_SYNC_CONFIG")]
    pub sync_config: Option<PathBuf>,

    /// ACR connection string (ConnectedRegistryName=...;SyncTokenName=...;SyncTokenPassword=...;
    /// ParentGatewayEndpoint=...;ParentEndpointProtocol=https).
    #[arg(
        long = "connection-string",
        env = "ACR_REGISTRY_CONNECTION_STRING",
        hide_env_values = true
    )]
    pub connection_string: Option<String>,

    /// Parent registry base URL, e.g. https://parent:8443. Without a parent, sync is off.
    #[arg(long)]
    pub parent: Option<String>,

    /// PEM trust bundle for the parent's TLS certificate (default: public web roots).
    #[arg(long)]
    pub trust: Option<PathBuf>,

    /// Parent credentials NAME:PASSWORD (prefer the environment variable: argv is visible to `ps`).
    #[arg(long, env = "CONNECTED_REGISTRY_SYNC_CREDS", hide_env_values = true)]
    pub creds: Option<String>,

    /// Repository to sync: a name, or a pattern with `*` expanded from the parent's catalog
    /// (e.g. `apps/*`). Repeatable.
    #[arg(long = "repo", value_name = "PATTERN")]
    pub repos: Vec<String>,

    /// Only tags matching this regex (applies to every --repo; ASCII classes only: tags are ASCII).
    #[arg(long)]
    pub tag_include: Option<String>,

    /// Skip tags matching this regex (applies to every --repo).
    #[arg(long)]
    pub tag_exclude: Option<String>,

    /// Only the newest N semver tags (applies to every --repo).
    #[arg(long)]
    pub newest: Option<usize>,

    /// Keep only this platform of multi-arch images, os/architecture[/variant] (repeatable;
    /// default: all). The index stays byte-exact; other platforms are not fetched.
    #[arg(long = "platform", value_name = "OS/ARCH")]
    pub platforms: Vec<String>,

    /// ReadOnly (pull down only, default) or ReadWrite (also push local pushes up).
    #[arg(long)]
    pub mode: Option<String>,

    /// Cron schedule of sync windows (five fields; default `* * * * *`, continuous).
    #[arg(long)]
    pub sync_schedule: Option<String>,

    /// Length of each sync window (ISO-8601 or short: PT1H or 1h), PT1H to P7D (default PT1H).
    #[arg(long)]
    pub sync_window: Option<String>,

    /// Time change-log events are kept for children, P1D to P90D (default P7D).
    #[arg(long)]
    pub message_ttl: Option<String>,

    /// Interval at which a full comparison also asks for new referrers of tags
    /// already in step (default PT1H; PT0S: every time; parents of ours need none).
    #[arg(long)]
    pub sync_referrers_recheck: Option<String>,

    /// Wait between passes while a sync window is open, PT1S to P1D (default PT1M;
    /// a parent of ours answers a poll with one request). A local push starts a pass at once.
    #[arg(long)]
    pub sync_poll_interval: Option<String>,

    /// Longest wait before a failed pass is retried inside an open window, PT1S to
    /// P1D (default PT5M; the first retry comes after 5 s, then the wait doubles).
    #[arg(long)]
    pub sync_retry_max: Option<String>,

    /// Interval of the full comparison that brings the local store back in step with
    /// the parent even when its change feed names nothing (default PT1H).
    #[arg(long)]
    pub sync_reconcile_interval: Option<String>,

    /// A repository name or pattern that matches nothing at the parent, or a tag filter that
    /// keeps no tag, fails the pass (default: a warning in the summary and the status).
    #[arg(long)]
    pub strict: bool,

    /// `off`: never read the parent's change feed, compare tag by tag on every pass (as with a
    /// parent that is not ours; for measuring what the feed saves). Default `on`.
    #[arg(
        long,
        value_name = "on|off",
        value_parser = clap::builder::BoolishValueParser::new(),
        hide_possible_values = true
    )]
    pub sync_feed: Option<bool>,

    /// Blobs transferred at once (default 8).
    #[arg(long)]
    pub sync_concurrency: Option<usize>,

    /// Time without a byte before a blob transfer is retried: a duration (`90s`, `PT90S`) or
    /// bare seconds (default 60).
    #[arg(long)]
    pub sync_progress_timeout: Option<String>,

    /// Whole-request timeout for small requests: a duration (`90s`, `PT90S`) or bare seconds
    /// (default 60).
    #[arg(long)]
    pub sync_request_timeout: Option<String>,

    /// Upward blob uploads larger than this go in chunks of this many bytes, each a resume
    /// point (default 16 MiB).
    #[arg(long, value_name = "BYTES")]
    pub sync_upload_chunk: Option<u64>,

    /// Attempts per request (default 5).
    #[arg(long)]
    pub sync_retries: Option<u32>,

    /// Cap on transfers to and from the parent: bytes (`2MiB/s`, `500KB/s`) or bits
    /// (`10Mbps`) per second, or `unlimited` (the default). Per cron window: `bandwidthWindows`
    /// in the sync config file. Local clients are never capped.
    #[arg(long, value_name = "RATE", env = "CONNECTED_REGISTRY_BANDWIDTH_LIMIT")]
    pub bandwidth_limit: Option<String>,

    /// Pull-through (`serve`): a pull of a manifest or blob not held here, in a repository
    /// matching PATTERN (a name, or `*` matching any characters), is fetched from the parent
    /// while it streams to the client (repeatable, or comma-separated; default: the sync scope,
    /// --repo; `off`: none).
    #[arg(
        long = "on-demand",
        value_name = "PATTERN",
        env = "CONNECTED_REGISTRY_ON_DEMAND",
        value_delimiter = ','
    )]
    pub on_demand: Vec<String>,

    /// How long a pull that misses here waits for the parent before it fails saying the
    /// parent is unreachable (default 10s; what is held here never waits on the parent).
    #[arg(
        long,
        value_name = "DURATION",
        env = "CONNECTED_REGISTRY_ON_DEMAND_TIMEOUT"
    )]
    pub on_demand_timeout: Option<String>,

    /// A tag in the on-demand scope that was not confirmed with the parent for this long is
    /// checked with it in the background when a client pulls it (the pull is answered from
    /// here at once; a moved tag is fetched and served from then on). Default: none, sync
    /// alone keeps tags current.
    #[arg(
        long,
        value_name = "DURATION",
        env = "CONNECTED_REGISTRY_ON_DEMAND_REVALIDATE"
    )]
    pub on_demand_revalidate: Option<String>,

    /// With --metadata on PostgreSQL (replicas sharing it), sync passes run only on the
    /// replica holding the sync lease: how long it holds it after each renewal. A replica
    /// killed stops renewing, and another takes over once it saw the lease unrenewed for this
    /// long. Unused with redb (one process).
    #[arg(long, env = "CONNECTED_REGISTRY_SYNC_LEASE", default_value = "15s", value_parser = super::parse_duration)]
    pub sync_lease: Duration,

    /// How often the holder renews the sync lease (and a replica standing by looks at it);
    /// less than half of --sync-lease. Default: a third of --sync-lease.
    #[arg(long, env = "CONNECTED_REGISTRY_SYNC_LEASE_RENEW", value_parser = super::parse_duration)]
    pub sync_lease_renew: Option<Duration>,
}

impl SyncFlags {
    /// The sync lease's duration and renewal interval, checked.
    pub fn lease_timing(&self) -> anyhow::Result<(Duration, Duration)> {
        let lease = self.sync_lease;
        if lease < Duration::from_secs(1) {
            anyhow::bail!("--sync-lease {lease:?}: at least 1s (the holder renews it every third)");
        }
        let renew = self.sync_lease_renew.unwrap_or(lease / 3);
        if renew.is_zero() || renew * 2 >= lease {
            anyhow::bail!(
                "--sync-lease-renew {renew:?}: more than 0s and less than half of --sync-lease ({lease:?}), so a renewal that fails once is tried again before the lease runs out"
            );
        }
        Ok((lease, renew))
    }

    /// The child's own layers: the config file's settings, and the flags'.
    fn layers(&self) -> anyhow::Result<(RawSettings, RawSettings)> {
        let file = match &self.sync_config {
            Some(path) => RawSettings::from_file(path)?,
            None => RawSettings::default(),
        };
        let (username, password) = match &self.creds {
            Some(c) => {
                let c: sync::settings::Credentials = c.parse()?;
                (Some(c.username), Some(c.password))
            }
            None => (None, None),
        };
        let repos = self
            .repos
            .iter()
            .map(|p| RawRepoRule {
                pattern: p.clone(),
                include: self.tag_include.clone(),
                exclude: self.tag_exclude.clone(),
                newest: self.newest,
            })
            .collect();
        let flags = RawSettings {
            connection_string: self.connection_string.clone(),
            parent: self.parent.clone(),
            username,
            password,
            trust: self.trust.clone(),
            mode: self.mode.clone(),
            sync_schedule: self.sync_schedule.clone(),
            sync_window: self.sync_window.clone(),
            message_ttl: self.message_ttl.clone(),
            referrers_recheck: self.sync_referrers_recheck.clone(),
            sync_poll_interval: self.sync_poll_interval.clone(),
            sync_retry_max: self.sync_retry_max.clone(),
            reconcile_interval: self.sync_reconcile_interval.clone(),
            strict: self.strict.then_some(true),
            feed: self.sync_feed,
            repos,
            platforms: self.platforms.clone(),
            concurrency: self.sync_concurrency,
            connect_timeout_secs: None,
            request_timeout_secs: self.sync_request_timeout.clone().map(Timeout::Text),
            progress_timeout_secs: self.sync_progress_timeout.clone().map(Timeout::Text),
            retries: self.sync_retries,
            upload_chunk_bytes: self.sync_upload_chunk,
            bandwidth_limit: self.bandwidth_limit.clone(),
            bandwidth_windows: Vec::new(),
            on_demand: self.on_demand.clone(),
            on_demand_timeout: self.on_demand_timeout.clone(),
            on_demand_revalidate: self.on_demand_revalidate.clone(),
            // The sync config file's alone.
            upstreams: Vec::new(),
        };
        Ok((file, flags))
    }

    /// Validated settings; `None` when no parent is configured (sync off).
    pub fn settings(&self) -> anyhow::Result<Option<Settings>> {
        self.settings_over(None)
    }

    /// Validated settings over what the parent hands out (flag > file > parent > default).
    pub fn settings_over(&self, parent: Option<&ParentConfig>) -> anyhow::Result<Option<Settings>> {
        let (file, flags) = self.layers()?;
        let local = file.overlay(flags);
        let raw = match parent {
            Some(parent) => parent.under(local),
            None => local,
        };
        match raw.clone().validate()? {
            Some(settings) => Ok(Some(settings)),
            // Sync is off, but what was set for it is still checked, against a parent that is
            // never contacted: a mistyped setting is refused now, not ignored until the day
            // a parent is configured.
            None => {
                RawSettings {
                    parent: Some("https://parent.invalid".into()),
                    ..raw
                }
                .validate()?;
                Ok(None)
            }
        }
    }

    /// The connected registry's name in the connection string (flag, environment or file), when
    /// one is given: the name its parent knows it by.
    pub fn child_name(&self) -> anyhow::Result<Option<String>> {
        let (file, flags) = self.layers()?;
        let Some(cs) = flags
            .connection_string
            .or(file.connection_string)
            .filter(|s| !s.trim().is_empty())
        else {
            return Ok(None);
        };
        Ok(Some(sync::parent_config::child_name(&cs)?))
    }

    /// Where each setting the parent may give came from, by `serve --print-config` key: `flag`,
    /// `file`, `parent`, `parent (cached)` or `default`.
    pub fn sources(
        &self,
        parent: Option<(&ParentConfig, Received)>,
    ) -> Vec<(&'static str, String)> {
        let Ok((file, flags)) = self.layers() else {
            return Vec::new();
        };
        let p = parent.map(|(p, _)| p.raw()).unwrap_or_default();
        // The first layer that sets it: flag, file, parent, else the default.
        let from = |set: fn(&RawSettings) -> bool| -> String {
            if set(&flags) {
                "flag".into()
            } else if set(&file) {
                "file".into()
            } else if let (true, Some((_, received))) = (set(&p), parent) {
                received.source().into()
            } else {
                "default".into()
            }
        };
        vec![
            ("mode", from(|r| r.mode.is_some())),
            ("sync_schedule", from(|r| r.sync_schedule.is_some())),
            ("sync_window", from(|r| r.sync_window.is_some())),
            ("message_ttl", from(|r| r.message_ttl.is_some())),
            ("repo", from(|r| !r.repos.is_empty())),
            ("platforms", from(|r| !r.platforms.is_empty())),
            (
                "bandwidth_limit",
                from(|r| r.bandwidth_limit.is_some() || !r.bandwidth_windows.is_empty()),
            ),
        ]
    }
}

/// Sync, checked and ready to start: the validated settings and the parent client (which
/// reads the trust bundle), both made before a command touches the disk, so a bad setting
/// leaves no data directory behind.
pub struct Prepared {
    settings: Settings,
    client: ParentClient,
    /// A client for each upstream besides the parent (`upstreams` in the sync config file).
    upstream_clients: Vec<(Upstream, ParentClient)>,
    /// What the parent handed out at start (a child defined there), and whether it came from
    /// the parent now or from the copy kept in the data directory.
    parent_config: Option<(ParentConfig, Received)>,
    /// The flags, to layer the parent's settings under again at every pass.
    flags: SyncFlags,
}

/// Takes the client tokens a child's parent hands it (the `tokens` of its settings) into its
/// access store. Blocking.
pub type TokensHook = Arc<dyn Fn(serde_json::Value) + Send + Sync>;

/// How long `serve` waits at start for its parent's settings before it runs on the copy kept
/// from an earlier start (or on its own settings).
const PARENT_CONFIG_WAIT: Duration = Duration::from_secs(15);

/// What `serve` gets from a running sync schedule.
pub struct Background {
    /// `GET /acr/v1/_sync/status`, to merge into the registry's router.
    pub status: axum::Router,
    /// Tells a client asking for a repository outside the sync scope that it is.
    pub miss_hint: registry::api::MissHint,
    /// The schedule itself, for the admin listener's metrics and readiness.
    pub service: Arc<SyncService>,
    /// Which upstream serves which name, with their clients: for containerd's `?ns=` mirror
    /// requests, and for pull-through (which parent serves a miss).
    pub upstreams: UpstreamParents,
    /// The sync lease (given up at a clean shutdown, so another replica takes over at once).
    pub lease: Arc<SyncLease>,
}

/// The engines of one registry: its parent's, and one per upstream copying ahead of time.
struct Engines {
    /// The sync lease every engine's passes run under.
    lease: Arc<SyncLease>,
    main: Arc<Engine>,
    upstreams: Vec<Arc<Engine>>,
    /// The local prefix of each of `upstreams`.
    prefixes: Vec<String>,
    /// Every upstream's client in local names (those copying nothing ahead of time too).
    parents: UpstreamParents,
}

impl Prepared {
    /// `None` when no parent is configured (sync off).
    pub fn from_flags(flags: &SyncFlags) -> anyhow::Result<Option<Prepared>> {
        flags.lease_timing()?;
        let Some(settings) = flags.settings()? else {
            return Ok(None);
        };
        let client = ParentClient::new(
            &settings.parent,
            settings.credentials.clone(),
            settings.trust.as_deref(),
            settings.limits.clone(),
        )?;
        let upstream_clients = settings
            .upstreams
            .entries()
            .iter()
            .map(|up| {
                let client = ParentClient::new(
                    &up.url,
                    up.credentials.clone(),
                    up.trust.as_deref(),
                    settings.limits.clone(),
                )
                .with_context(|| format!("upstream {} ({})", up.prefix, up.url))?
                .sharing_cap_with(&client);
                Ok((up.clone(), client))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Some(Prepared {
            settings,
            client,
            upstream_clients,
            parent_config: None,
            flags: flags.clone(),
        }))
    }

    /// A child whose connection string names it asks its parent for its settings
    /// (`GET /acr/v1/_gateway/{name}/config`) and layers its own over them: flag >
    /// file > parent > default. An unreachable parent: the copy kept in `data` from an earlier
    /// start; none either: its own settings and the defaults, said in the log. Reads `data`,
    /// never writes it (that is [`Prepared::start_background`]'s, once the data directory is
    /// checked).
    pub async fn with_parent_config(mut self, data: &Path) -> anyhow::Result<Prepared> {
        let Some(name) = self.flags.child_name()? else {
            return Ok(self);
        };
        let fetched =
            tokio::time::timeout(PARENT_CONFIG_WAIT, self.client.gateway_config(&name)).await;
        let received = match fetched {
            // The tokens in it are applied at the first pass, once the access store is open.
            Ok(Ok(Some(config))) => Some((
                ParentConfig {
                    tokens: None,
                    ..config
                },
                Received::Fresh,
            )),
            Ok(Ok(None)) => {
                tracing::info!(child = %name, "the parent defines no settings for this registry (not a child defined there by `child create`): running on its own settings");
                None
            }
            failed => {
                let why = match failed {
                    Ok(Err(err)) => err.to_string(),
                    _ => format!("no answer within {PARENT_CONFIG_WAIT:?}"),
                };
                match ParentConfig::cached(data) {
                    Some(config) => {
                        tracing::warn!(child = %name, error = %why, "cannot read this registry's settings at its parent: running on the ones it last received");
                        Some((config, Received::Cached))
                    }
                    None => {
                        tracing::warn!(child = %name, error = %why, "cannot read this registry's settings at its parent, and none were received before: running on its own settings and the defaults until the parent answers");
                        None
                    }
                }
            }
        };
        if let Some((config, _)) = &received {
            if let Some(settings) = self.flags.settings_over(Some(config))? {
                self.settings = settings;
            }
        }
        self.parent_config = received;
        Ok(self)
    }

    /// Keeps the settings received from the parent at start in `data` (checked by then), for
    /// a start with the parent unreachable.
    fn keep_received(&self, data: &Path) {
        if let Some((config, Received::Fresh)) = &self.parent_config {
            if let Err(err) = config.keep(data) {
                tracing::warn!(%err, "cannot keep the parent's settings in the data directory: a start with the parent unreachable will not have them");
            }
        }
    }

    /// Where each setting the parent may give came from (`serve --print-config`).
    pub fn sources(&self) -> Vec<(&'static str, String)> {
        self.flags
            .sources(self.parent_config.as_ref().map(|(c, r)| (c, *r)))
    }

    /// Asks the parent for this child's settings before every pass; new ones are kept in
    /// `data` and applied from that pass on, the mode too (`writes`: whether clients may push).
    /// The client tokens in the answer go to `tokens` (off the async threads), whether or
    /// not the settings changed.
    fn refresh(
        &self,
        data: &Path,
        tokens: Option<TokensHook>,
        writes: registry::api::WriteSwitch,
    ) -> anyhow::Result<Option<sync::service::Refresh>> {
        let Some(name) = self.flags.child_name()? else {
            return Ok(None);
        };
        let client = Arc::new(ParentClient::new(
            &self.settings.parent,
            self.settings.credentials.clone(),
            self.settings.trust.as_deref(),
            self.settings.limits.clone(),
        )?);
        let last = Arc::new(Mutex::new(
            self.parent_config.as_ref().map(|(c, _)| c.clone()),
        ));
        let flags = Arc::new(self.flags.clone());
        let data = data.to_owned();
        Ok(Some(Arc::new(move || {
            let (client, last, flags, data, name, tokens, writes) = (
                client.clone(),
                last.clone(),
                flags.clone(),
                data.clone(),
                name.clone(),
                tokens.clone(),
                writes.clone(),
            );
            Box::pin(async move {
                let config = match client.gateway_config(&name).await {
                    Ok(Some(mut config)) => {
                        if let (Some(set), Some(hook)) = (config.tokens.take(), tokens) {
                            let _ = tokio::task::spawn_blocking(move || hook(set)).await;
                        }
                        config
                    }
                    Ok(None) => return None,
                    Err(err) => {
                        tracing::debug!(%err, "cannot read this registry's settings at its parent: keeping the current ones");
                        return None;
                    }
                };
                if last.lock().unwrap_or_else(|p| p.into_inner()).as_ref() == Some(&config) {
                    return None;
                }
                let settings = match flags.settings_over(Some(&config)) {
                    Ok(Some(settings)) => settings,
                    Ok(None) => return None,
                    Err(err) => {
                        tracing::warn!(%err, "the parent handed out settings this registry cannot use: keeping the current ones");
                        return None;
                    }
                };
                let kept = {
                    let (config, data) = (config.clone(), data.clone());
                    tokio::task::spawn_blocking(move || config.keep(&data)).await
                };
                if let Ok(Err(err)) | Err(err) = kept.map_err(|e| e.to_string()) {
                    tracing::warn!(%err, "cannot keep the parent's settings in the data directory: they apply until the next start");
                }
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(config);
                let client_writes = match settings.mode {
                    Mode::ReadOnly => registry::api::Writes::Refused,
                    Mode::ReadWrite => registry::api::Writes::Allowed,
                };
                if writes.get() != client_writes {
                    tracing::info!(mode = ?settings.mode, "the parent changed this registry's mode: clients may {} from now on", if client_writes == registry::api::Writes::Allowed { "push" } else { "no longer push" });
                    writes.set(client_writes);
                }
                Some(settings)
            })
        })))
    }

    /// The parent client alone, for commands that fetch from the parent without syncing
    /// (`scrub --repair`).
    pub fn into_client(self) -> ParentClient {
        self.client
    }

    /// The validated settings (for `serve --print-config`).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// ReadOnly or ReadWrite, as the settings say (ReadOnly when none is given).
    pub fn mode(&self) -> sync::settings::Mode {
        self.settings.mode
    }

    /// The main parent's engine, and one for each upstream with something to copy ahead of
    /// time (its `repos`), each with its own progress: in `DATA/sync/` and
    /// `DATA/sync/upstreams/NAME/`, or, when the metadata is shared with other replicas, in
    /// the metadata (`main`, `upstream/NAME`), under the sync lease.
    fn engines(
        self,
        registry_store: registry::Store,
        data: &Path,
        progress: Arc<dyn Progress>,
    ) -> anyhow::Result<Engines> {
        let lease = match registry_store.metadata_is_shared() {
            true => {
                let (duration, renew) = self.flags.lease_timing()?;
                let claim = LeaseClaim::new(
                    registry_store.clone(),
                    sync::lease::SYNC_LEASE,
                    &registry::storage::lease::replica_name(),
                    duration,
                );
                tracing::info!(replica = claim.holder(), ?duration, ?renew, "replicas share the metadata: sync passes run on the replica holding the sync lease");
                SyncLease::shared(claim, renew)
            }
            false => SyncLease::exclusive(),
        };
        // Where each engine keeps its progress.
        let state_of = |dir: &Path, name: &str| -> anyhow::Result<StateFile> {
            Ok(match lease.fence() {
                Some(fence) => StateFile::in_metadata(registry_store.clone(), name, fence)?,
                None => StateFile::open(dir)?,
            })
        };
        let store: Arc<dyn sync::store::LocalStore> = Arc::new(registry_store.clone());
        let upstreams = Arc::new(self.settings.upstreams.clone());
        let mut for_upstreams = Vec::new();
        let mut prefixes = Vec::new();
        let mut parents: Vec<Arc<dyn sync::parent::Parent>> = Vec::new();
        for (up, client) in self.upstream_clients {
            let client: Arc<dyn sync::parent::Parent> = Arc::new(client);
            let client: Arc<dyn sync::parent::Parent> =
                Arc::new(Namespaced::upstream(client, up.clone()));
            parents.push(client.clone());
            if up.repos.is_empty() {
                continue;
            }
            let settings = Settings {
                parent: up.url.clone(),
                credentials: up.credentials.clone(),
                trust: up.trust.clone(),
                // Foreign upstreams are pull-only.
                mode: Mode::ReadOnly,
                repos: up.repos.clone(),
                upstreams: Default::default(),
                ..self.settings.clone()
            };
            let dir = data
                .join("sync")
                .join("upstreams")
                .join(up.state_dir_name());
            let name = format!("upstream/{}", up.state_dir_name());
            let state = state_of(&dir, &name)
                .with_context(|| format!("upstream {} ({})", up.prefix, up.url))?;
            prefixes.push(up.prefix.clone());
            for_upstreams.push(Arc::new(Engine::new(
                client,
                store.clone(),
                settings,
                Arc::new(state),
                progress.clone(),
            )));
        }
        let state = state_of(&data.join("sync"), "main")?;
        let client: Arc<dyn sync::parent::Parent> = Arc::new(self.client);
        // The parent serves every name no upstream claims, and none of theirs.
        let client: Arc<dyn sync::parent::Parent> = if upstreams.is_empty() {
            client
        } else {
            Arc::new(Namespaced::main(client, upstreams.prefixes()))
        };
        let main = Arc::new(Engine::new(
            client,
            store,
            self.settings,
            Arc::new(state),
            progress,
        ));
        Ok(Engines {
            lease,
            main,
            upstreams: for_upstreams,
            prefixes,
            parents: UpstreamParents::new(upstreams, parents),
        })
    }

    /// Called by `serve`: starts the sync schedule in the background. `data` is the
    /// registry's data directory (sync keeps its progress in `data/sync/`).
    /// A child defined at its parent reports its status there after every pass, with
    /// `children`'s (its own children as it sees them).
    pub fn start_background(
        self,
        store: registry::Store,
        data: &Path,
        children: sync::report::Subtree,
        tokens: Option<TokensHook>,
        writes: registry::api::WriteSwitch,
    ) -> anyhow::Result<Background> {
        tracing::info!(
            parent = %self.settings.parent,
            mode = ?self.settings.mode,
            schedule = self.settings.schedule.source(),
            "sync enabled"
        );
        let miss_hint_of = Arc::new(std::sync::OnceLock::<Arc<SyncService>>::new());
        let upstreams = Arc::new(self.settings.upstreams.clone());
        let miss_hint: registry::api::MissHint = {
            let service = miss_hint_of.clone();
            let upstreams = upstreams.clone();
            Arc::new(move |repo: &registry::RepoName| {
                if let Some((up, _)) = upstreams.for_repository(repo.as_str()) {
                    return sync::settings::outside_scope(&up.repos, repo.as_str());
                }
                let engine = service.get()?.engine();
                sync::settings::outside_scope(&engine.settings.repos, repo.as_str())
            })
        };
        self.keep_received(data);
        let refresh = self.refresh(data, tokens, writes)?;
        let reporter = match self.flags.child_name()? {
            Some(name) => Some(sync::report::Reporter {
                name,
                client: Arc::new(ParentClient::new(
                    &self.settings.parent,
                    self.settings.credentials.clone(),
                    self.settings.trust.as_deref(),
                    self.settings.limits.clone(),
                )?),
                store: store.clone(),
                children,
            }),
            None => None,
        };
        let engines = self.engines(store, data, Arc::new(NoProgress))?;
        let upstream_parents = engines.parents.clone();
        let lease = engines.lease.clone();
        let service = SyncService::refreshed_by(engines.main, refresh);
        service.run_under(lease.clone());
        if let Some(reporter) = reporter {
            service.report_with(reporter);
        }
        let _ = miss_hint_of.set(service.clone());
        lease.spawn();
        service.spawn();
        // Each upstream's schedule runs on its own; the parent's status shows theirs.
        let mut shown = Vec::new();
        for (engine, prefix) in engines.upstreams.into_iter().zip(engines.prefixes) {
            tracing::info!(upstream = %engine.settings.parent, %prefix, repos = engine.settings.repos.len(), "sync from an upstream enabled (pull-only)");
            let upstream = SyncService::new(engine);
            upstream.run_under(lease.clone());
            upstream.spawn();
            shown.push((prefix, upstream));
        }
        service.show_upstreams(shown);
        Ok(Background {
            status: service.router(),
            miss_hint,
            service,
            upstreams: upstream_parents,
            lease,
        })
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Boxed: the flags are large, and `Command` holds one subcommand's args by value.
    #[command(flatten)]
    pub sync: Box<SyncFlags>,

    /// Data directory of the local registry (stop `serve` on it first: the store is single-process).
    #[arg(long, env = "ACR_REGISTRY_DATA_VOLUME", default_value = "./data")]
    pub data: PathBuf,

    /// Run one pass now and exit (exit code 0: in step; 1: errors; 75: stopped by --time-limit).
    #[arg(long)]
    pub once: bool,

    /// With --once: stop transfers after this duration (e.g. 10m or PT10M); partial blobs are
    /// kept and the next run resumes them.
    #[arg(long)]
    pub time_limit: Option<String>,

    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,

    #[command(flatten)]
    pub storage: super::storage::StorageFlags,

    #[command(flatten)]
    pub metadata: super::metadata::MetadataFlags,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(sync) = Prepared::from_flags(&args.sync)? else {
        anyhow::bail!(
            "no parent configured: give --parent URL, --connection-string, \
             ACR_REGISTRY_CONNECTION_STRING, or a --sync-config file with `parent`"
        );
    };
    // A child defined at its parent syncs with the settings it has there (under its own).
    let sync = sync.with_parent_config(&args.data).await?;
    let time_limit = match &args.time_limit {
        Some(t) => {
            Some(util::duration::parse(t).map_err(|m| anyhow::anyhow!("--time-limit: {m}"))?)
        }
        None => None,
    };
    let backends = args.metadata.backends(&args.storage)?;
    super::check_data_dir_for(&args.data, super::MissingData::Create, &backends)?;
    sync.keep_received(&args.data);
    let data = args.data.clone();
    let store = tokio::task::spawn_blocking(move || {
        registry::Store::open_with(&data, Default::default(), backends)
    })
    .await?
    .with_context(|| super::metadata::cannot_open(&args.data, &args.metadata))?;
    if !args.once {
        let engines = sync.engines(store, &args.data, Arc::new(NoProgress))?;
        let lease = engines.lease.clone();
        let service = SyncService::new(engines.main);
        service.run_under(lease.clone());
        lease.spawn();
        let handle = service.spawn();
        let _upstreams: Vec<_> = engines
            .upstreams
            .into_iter()
            .map(|engine| {
                let service = SyncService::new(engine);
                service.run_under(lease.clone());
                service.spawn();
                service
            })
            .collect();
        tokio::select! {
            _ = handle => {},
            _ = util::shutdown::signal() => {},
        }
        lease.give_up().await;
        return Ok(ExitCode::SUCCESS);
    }
    let bars = Bars::new(!args.quiet && std::io::stderr().is_terminal(), args.quiet);
    let ticker = bars.clone().start();
    let engines = sync.engines(store, &args.data, bars.clone())?;
    let lease = engines.lease.clone();
    let deadline = time_limit.map(|d| tokio::time::Instant::now() + d);
    if lease.is_shared() {
        // One pass beside the replicas' schedules: only with the lease, held (renewed) for it.
        lease.spawn();
        // Long enough to take over from a replica that was killed holding it.
        let (duration, renew) = args.sync.lease_timing()?;
        if tokio::time::timeout(duration + renew * 2, lease.held())
            .await
            .is_err()
        {
            ticker.abort();
            bars.clear();
            let holder = lease.view().holder;
            anyhow::bail!(
                "the sync lease is held by {}: a replica runs sync passes there, and one here would run beside it; run `sync --once` when no replica syncs (or against that replica's status: GET /acr/v1/_sync/status)",
                holder.as_deref().unwrap_or("another replica")
            );
        }
        for engine in std::iter::once(&engines.main).chain(&engines.upstreams) {
            engine.state.reload()?;
        }
    }
    let stop = lease.stop_at(deadline);
    // The parent first, then each upstream, one after the other: one summary each.
    let mut summaries = vec![(None, engines.main.run_pass_until(stop.clone()).await)];
    for engine in &engines.upstreams {
        summaries.push((
            Some(engine.settings.parent.clone()),
            engine.run_pass_until(stop.clone()).await,
        ));
    }
    lease.give_up().await;
    ticker.abort();
    bars.clear();
    if args.json && summaries.len() > 1 {
        // One JSON document: the parent's summary, with the upstreams' by URL.
        let mut doc = serde_json::to_value(&summaries[0].1).unwrap_or_default();
        let by_url: serde_json::Map<String, serde_json::Value> = summaries[1..]
            .iter()
            .filter_map(|(url, s)| Some((url.clone()?, serde_json::to_value(s).ok()?)))
            .collect();
        doc["upstreams"] = serde_json::Value::Object(by_url);
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
    for (url, summary) in &summaries {
        if let Some(url) = url {
            eprintln!("upstream {url}:");
        }
        print_summary(summary, args.json && summaries.len() == 1);
    }
    // The worst outcome decides: an error anywhere, else a pause anywhere, else in step.
    let outcomes: Vec<Outcome> = summaries.iter().map(|(_, s)| s.outcome).collect();
    Ok(if outcomes.iter().all(|o| *o == Outcome::Completed) {
        ExitCode::SUCCESS
    } else if outcomes
        .iter()
        .all(|o| matches!(o, Outcome::Completed | Outcome::Paused))
    {
        ExitCode::from(75)
    } else {
        ExitCode::from(1)
    })
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn print_summary(s: &Summary, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
    }
    let mut e = std::io::stderr().lock();
    let _ = writeln!(
        e,
        "sync {:?}: {} repos, {} tags checked, {} updated, {} untagged; {} manifests and {} blobs fetched \
         ({} resumed), {} down, {} up, {} manifests pushed, {} requests, {:.2} s",
        s.outcome,
        s.repos,
        s.tags_checked,
        s.tags_updated,
        s.tags_deleted,
        s.manifests_fetched,
        s.blobs_fetched,
        s.blobs_resumed,
        human(s.bytes_down),
        human(s.bytes_up),
        s.manifests_pushed,
        s.requests,
        s.seconds
    );
    for c in &s.conflicts {
        let _ = writeln!(e, "conflict: {c}");
    }
    for w in &s.warnings {
        let _ = writeln!(e, "warning: {w}");
    }
    for err in &s.errors {
        let _ = writeln!(e, "error: {err}");
    }
}

/// Progress bars, one line per blob in flight: redrawn in place on a terminal, start and end
/// lines otherwise.
#[derive(Clone)]
struct Bars {
    inner: Arc<Mutex<BarsInner>>,
    tty: bool,
    quiet: bool,
}

struct Bar {
    repo: String,
    size: u64,
    done: u64,
    from: u64,
    started: Instant,
}

#[derive(Default)]
struct BarsInner {
    live: BTreeMap<Digest, Bar>,
    drawn: usize,
}

impl Bars {
    fn new(tty: bool, quiet: bool) -> Arc<Bars> {
        Arc::new(Bars {
            inner: Arc::default(),
            tty,
            quiet,
        })
    }

    fn start(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            if !self.tty {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.draw();
            }
        })
    }

    fn line(d: &Digest, b: &Bar) -> String {
        const WIDTH: usize = 24;
        let frac = if b.size > 0 {
            (b.done as f64 / b.size as f64).min(1.0)
        } else {
            0.0
        };
        let filled = (frac * WIDTH as f64) as usize;
        let secs = b.started.elapsed().as_secs_f64().max(0.001);
        let rate = (b.done - b.from.min(b.done)) as f64 / secs;
        format!(
            "{:<24} {}…  [{}{}] {:>3}% {} / {}  {}/s",
            b.repo.chars().take(24).collect::<String>(),
            &d.hex()[..12],
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            (frac * 100.0) as u32,
            human(b.done),
            human(b.size),
            human(rate as u64)
        )
    }

    fn draw(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        if g.drawn > 0 {
            out.push_str(&format!("\x1b[{}F", g.drawn));
        }
        for (d, b) in &g.live {
            out.push_str("\x1b[2K");
            out.push_str(&Self::line(d, b));
            out.push('\n');
        }
        for _ in g.live.len()..g.drawn {
            out.push_str("\x1b[2K\n");
        }
        g.drawn = g.live.len().max(g.drawn);
        let _ = std::io::stderr().write_all(out.as_bytes());
    }

    fn clear(&self) {
        if self.tty {
            self.draw();
        }
    }
}

impl Progress for Bars {
    fn blob_started(&self, repo: &str, digest: &Digest, size: u64, from: u64) {
        if self.quiet {
            return;
        }
        if !self.tty {
            let resumed = if from > 0 {
                format!(" (resuming at {})", human(from))
            } else {
                String::new()
            };
            eprintln!("fetch {repo}@{digest} {}{resumed}", human(size));
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.live.insert(
            digest.clone(),
            Bar {
                repo: repo.to_owned(),
                size,
                done: from,
                from,
                started: Instant::now(),
            },
        );
    }

    fn blob_progress(&self, digest: &Digest, done: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = g.live.get_mut(digest) {
            b.done = done;
        }
    }

    fn blob_finished(&self, digest: &Digest, ok: bool) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = g.live.remove(digest) {
            if !self.quiet && !self.tty {
                let secs = b.started.elapsed().as_secs_f64();
                eprintln!(
                    "{} {}@{digest} {} in {secs:.1} s",
                    if ok { "done" } else { "FAILED" },
                    b.repo,
                    human(b.done)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        sync: SyncFlags,
    }

    fn timing(args: &[&str]) -> anyhow::Result<(Duration, Duration)> {
        let flags = Flags::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .expect("the flags parse");
        flags.sync.lease_timing()
    }

    /// `--sync-lease` and `--sync-lease-renew`: the documented defaults (15 s, a third of it),
    /// and the limits refused naming the flag and what it must be.
    #[test]
    fn sync_lease_timing_defaults_and_limits() {
        let secs = Duration::from_secs;
        assert_eq!(timing(&[]).unwrap(), (secs(15), secs(5)));
        assert_eq!(timing(&["--sync-lease", "3s"]).unwrap(), (secs(3), secs(1)));
        assert_eq!(
            timing(&["--sync-lease", "1m", "--sync-lease-renew", "29s"]).unwrap(),
            (secs(60), secs(29))
        );
        let refused = timing(&["--sync-lease", "500ms"]).unwrap_err().to_string();
        assert!(
            refused.contains("--sync-lease") && refused.contains("at least 1s"),
            "{refused}"
        );
        for renew in ["30s", "1m", "0s"] {
            let refused = timing(&["--sync-lease", "1m", "--sync-lease-renew", renew])
                .unwrap_err()
                .to_string();
            assert!(
                refused.contains("--sync-lease-renew") && refused.contains("less than half"),
                "{renew}: {refused}"
            );
        }
    }
}
