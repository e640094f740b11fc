//! `serve --print-config`: the effective settings `serve` would run with, one a line, in the
//! table `proxy --print-config` prints too (`util::config_table`), then exit. Secrets never
//! appear: the sync token's password and a connection string's `SyncTokenPassword` /
//! `SharedAccessKey` are shown as `<redacted>`.

use std::time::Duration;

use util::config_table::{redacted, ConfigTable, REDACTED};

use super::serve::Args;

fn duration(d: Duration) -> String {
    sync::settings::format_iso_duration(d)
}

fn or_unset<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The table for `args`, with the validated sync settings when a parent is configured (and
/// where each setting a parent may give came from: `sources`, by key) and the ranges
/// `X-Forwarded-For` is trusted from.
pub fn render(
    args: &Args,
    backends: &registry::storage::Backends,
    sync: Option<&sync::Settings>,
    sources: &[(&'static str, String)],
    trusted: &[registry::api::auth::TrustedProxy],
) -> String {
    let source = |key: &str| {
        sources
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, from)| format!("from {from}"))
            .unwrap_or_default()
    };
    let mut t = ConfigTable::new();
    let listen = match (args.listen, &args.proxy.0.listen) {
        (Some(addr), _) => addr.to_string(),
        (None, None) => super::serve::DEFAULT_LISTEN.to_string(),
        (None, Some(_)) => "-".to_owned(),
    };
    let listen_note = if listen == "-" {
        "one module: TLS only (--proxy-listen)"
    } else {
        ""
    };
    t.line("listen", listen, listen_note)
        .line("data", args.data.display(), "")
        .line(
            "storage",
            backends.blobs.describe(),
            match backends.blobs {
                registry::storage::BlobBackend::Filesystem => "blobs in the data directory",
                registry::storage::BlobBackend::AzureBlob(_) => {
                    "blobs in Azure Blob Storage (key from AZURE_STORAGE_CONNECTION_STRING, not shown)"
                }
            },
        )
        .line(
            "metadata",
            backends.metadata.to_string(),
            match backends.metadata {
                registry::storage::MetadataBackend::Redb => "meta.redb in the data directory",
                registry::storage::MetadataBackend::Postgres(_) => "PostgreSQL (password not shown)",
            },
        )
        .line(
            "metadata_connections",
            args.metadata.metadata_connections,
            "PostgreSQL only",
        )
        .line(
            "metadata_retries",
            args.metadata.metadata_retries,
            "PostgreSQL only",
        )
        .line(
            "metadata_cache_ttl",
            duration(args.metadata_cache_ttl),
            "0: off",
        )
        .line("metadata_cache_size", args.metadata_cache_size, "bytes")
        .line("max_manifest_size", args.max_manifest_size, "bytes")
        .line("manifest_cache_size", args.manifest_cache_size, "bytes")
        .line(
            "min_free",
            args.min_free,
            match backends.blobs {
                registry::storage::BlobBackend::Filesystem => "",
                registry::storage::BlobBackend::AzureBlob(_) => {
                    "checked on the data directory (the metadata) only: blob bytes are not stored there"
                }
            },
        )
        .line("verify_reads", format!("{:?}", args.verify_reads), "")
        .line("shutdown_grace", duration(args.shutdown_grace), "")
        .line("gc_interval", duration(args.gc_interval), "0: never")
        .line("access_log", args.access_log, "")
        .line("admin", or_unset(args.admin.admin), "")
        .line("proxy_listen", or_unset(args.proxy.0.listen.as_ref()), "");
    let auth = format!("{:?}", args.auth.auth).to_ascii_lowercase();
    t.line("auth", auth, "");
    let patterns = args.auth.anonymous_pull.join(",");
    t.line(
        "anonymous_pull",
        if patterns.is_empty() {
            "-".into()
        } else {
            patterns
        },
        "",
    )
    .line("token_lifetime", duration(args.auth.token_lifetime), "")
    .line(
        "refresh_token_lifetime",
        duration(args.auth.refresh_token_lifetime),
        "",
    )
    .line("credential_cache", duration(args.auth.credential_cache), "")
    .line(
        "login_attempts",
        args.auth.login_attempts,
        "per token and per client address",
    )
    .line("login_lockout", duration(args.auth.login_lockout), "")
    .line(
        "access_refresh",
        duration(args.auth.access_refresh),
        match backends.metadata {
            registry::storage::MetadataBackend::Redb => "unused: the token set is DATA/access.redb",
            registry::storage::MetadataBackend::Postgres(_) => {
                "the token set is in PostgreSQL: other replicas' changes seen within this"
            }
        },
    );
    let ranges: Vec<String> = trusted.iter().map(|r| r.to_string()).collect();
    let note = if ranges.is_empty() {
        "none: X-Forwarded-For is ignored"
    } else {
        "X-Forwarded-For trusted from these peers"
    };
    t.line(
        "trusted_proxy",
        if ranges.is_empty() {
            "-".into()
        } else {
            ranges.join(",")
        },
        note,
    );
    if let Ok((lease, renew)) = args.sync.lease_timing() {
        t.line(
            "sync_lease",
            duration(lease),
            "PostgreSQL only: passes run on the replica holding it",
        )
        .line("sync_lease_renew", duration(renew), "");
    }
    if let Some(cs) = &args.sync.connection_string {
        t.line("connection_string", redacted(cs), "");
    }
    let Some(s) = sync else {
        t.line("parent", "-", "no parent: sync off");
        return t.to_string();
    };
    t.line("parent", &s.parent, "");
    match &s.credentials {
        Some(c) => t.line("credentials", format!("{}:{REDACTED}", c.username), ""),
        None => t.line("credentials", "-", "anonymous"),
    };
    t.line("trust", or_unset(s.trust.as_ref().map(|p| p.display())), "")
        .line("mode", format!("{:?}", s.mode), source("mode"))
        .line(
            "sync_schedule",
            s.schedule.source(),
            source("sync_schedule"),
        )
        .line("sync_window", duration(s.window), source("sync_window"))
        .line(
            "message_ttl",
            duration(s.message_ttl),
            source("message_ttl"),
        );
    for r in &s.repos {
        let mut rule = r.pattern.clone();
        if let Some(i) = &r.include {
            rule.push_str(&format!(" include={}", i.as_str()));
        }
        if let Some(e) = &r.exclude {
            rule.push_str(&format!(" exclude={}", e.as_str()));
        }
        if let Some(n) = r.newest {
            rule.push_str(&format!(" newest={n}"));
        }
        t.line("repo", rule, source("repo"));
    }
    let platforms: Vec<String> = s.platforms.iter().map(|p| p.to_string()).collect();
    t.line(
        "platforms",
        if platforms.is_empty() {
            "all".into()
        } else {
            platforms.join(",")
        },
        source("platforms"),
    )
    .line("sync_referrers_recheck", duration(s.referrers_recheck), "")
    .line("sync_poll_interval", duration(s.poll_interval), "")
    .line("sync_retry_max", duration(s.retry_max), "")
    .line(
        "sync_reconcile_interval",
        duration(s.reconcile_interval),
        "",
    )
    .line("strict", s.strict, "")
    .line(
        "on_demand",
        s.on_demand.describe(),
        "pull-through on a miss",
    )
    .line("on_demand_timeout", duration(s.on_demand_timeout), "")
    .line(
        "on_demand_revalidate",
        s.on_demand_revalidate
            .map_or_else(|| "-".to_owned(), duration),
        "-: sync alone keeps held tags current",
    )
    .line("sync_feed", if s.feed { "on" } else { "off" }, "")
    .line("sync_concurrency", s.limits.concurrency, "")
    .line(
        "bandwidth_limit",
        s.limits.bandwidth.describe(),
        source("bandwidth_limit"),
    );
    for up in s.upstreams.entries() {
        let rules: Vec<&str> = up.repos.iter().map(|r| r.pattern.as_str()).collect();
        t.line(
            "upstream",
            format!(
                "{} -> {} (ns {}{}; credentials {}; trust {}; repos {}; on demand {})",
                up.prefix,
                up.url,
                up.registry,
                if up.strip_prefix {
                    ", prefix stripped"
                } else {
                    ""
                },
                up.credentials
                    .as_ref()
                    .map_or("-".to_owned(), |c| format!("{}:{REDACTED}", c.username)),
                up.trust
                    .as_ref()
                    .map_or("-".to_owned(), |p| p.display().to_string()),
                if rules.is_empty() {
                    "-".to_owned()
                } else {
                    rules.join(",")
                },
                if up.on_demand.is_empty() {
                    format!("{}*", up.prefix)
                } else {
                    up.on_demand.join(",")
                },
            ),
            "file",
        );
    }
    t.to_string()
}
