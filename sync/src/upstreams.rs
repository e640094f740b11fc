//! Several upstreams by namespace: a local repository prefix (`mcr/`) served from another
//! registry (`https://mcr.microsoft.com`, the prefix stripped), besides the main parent, which
//! keeps every name no prefix claims. Here: the `upstreams` entries of the sync config file,
//! checked once at start (every refusal names the entry and the field), and the one mapping
//! every part asks "which upstream serves this repository, under what name": sync's engines
//! (one per upstream, see `namespaced.rs`), a miss served on demand, and containerd's mirror
//! requests (`?ns=docker.io`), mapped to local names before the registry routes them.
//!
//! Foreign upstreams are pull-only: nothing pushed here goes to them (a ReadWrite registry
//! pushes to its main parent only, and never names under an upstream's prefix).

use std::path::PathBuf;

use serde::Deserialize;

use crate::settings::{
    check_base_url, glob_match, parse_repo_rules, Credentials, RawRepoRule, RepoRule, SettingsError,
};

/// A secret as written in the config file: never shown by `Debug` (logs, panics).
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One `upstreams` entry as written in the sync config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawUpstream {
    /// The local namespace it serves, ending in `/` (`mcr/`).
    pub prefix: String,
    /// Its base URL, `https://host[:port]`.
    pub url: String,
    /// The registry name containerd sends as `?ns=` for it (`mcr.microsoft.com`, `docker.io`);
    /// default: the URL's host.
    pub registry: Option<String>,
    /// Whether the prefix is dropped before asking the upstream (`mcr/foo` there is `foo`);
    /// default true. False keeps the name as is: `library/` served from Docker Hub under the
    /// same names, as Docker's `registry-mirrors` asks for them.
    pub strip_prefix: Option<bool>,
    pub username: Option<String>,
    /// The password inline; prefer `passwordFile` or `passwordEnv`.
    pub password: Option<Secret>,
    /// A file holding the password (its trailing newline dropped).
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// PEM trust bundle for its TLS; default the public web roots.
    pub trust: Option<PathBuf>,
    /// What sync copies ahead of time, in local names (`mcr/azureiotedge-agent`); none: nothing
    /// is copied ahead of time (on demand only).
    #[serde(default)]
    pub repos: Vec<RawRepoRule>,
    /// Local names (patterns with `*`) a miss may fetch on demand; none: every name under the
    /// prefix.
    #[serde(default)]
    pub on_demand: Vec<String>,
}

/// One upstream, checked.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub prefix: String,
    pub url: String,
    pub registry: String,
    pub strip_prefix: bool,
    pub credentials: Option<Credentials>,
    pub trust: Option<PathBuf>,
    pub repos: Vec<RepoRule>,
    pub on_demand: Vec<String>,
}

impl Upstream {
    /// The name the upstream knows the local repository `local` by; `None` when `local` is not
    /// under this upstream's prefix.
    pub fn remote_name(&self, local: &str) -> Option<String> {
        let rest = local.strip_prefix(&self.prefix)?;
        if rest.is_empty() {
            return None;
        }
        Some(if self.strip_prefix { rest } else { local }.to_owned())
    }

    /// The local name of the upstream's repository `remote`; `None` when it has none here (a
    /// name outside the prefix of an upstream that keeps it).
    pub fn local_name(&self, remote: &str) -> Option<String> {
        if remote.is_empty() {
            return None;
        }
        if self.strip_prefix {
            Some(format!("{}{remote}", self.prefix))
        } else {
            self.remote_name(remote)
        }
    }

    /// Whether a miss for `local` may be fetched from this upstream on demand.
    pub fn serves_on_demand(&self, local: &str) -> bool {
        self.remote_name(local).is_some()
            && (self.on_demand.is_empty() || self.on_demand.iter().any(|p| glob_match(p, local)))
    }

    /// A short name for its state directory under `DATA/sync/upstreams/` (`mcr/` -> `mcr`,
    /// `a/b/` -> `a~b`: `~` is never in a repository name).
    pub fn state_dir_name(&self) -> String {
        self.prefix.trim_end_matches('/').replace('/', "~")
    }
}

/// Every upstream besides the main parent, and the mapping from names to them.
#[derive(Clone, Debug, Default)]
pub struct Upstreams {
    entries: Vec<Upstream>,
    /// The main parent's host (`host[:port]`): a `?ns=` naming it maps to the name as is.
    parent_host: Option<String>,
}

/// What a `?ns=` mirror request names, mapped.
#[derive(Debug, PartialEq, Eq)]
pub enum MirrorName {
    /// Serve the local repository of this name.
    Local(String),
    /// No upstream here is that registry, or none claims the repository: the message says
    /// which and how to configure it.
    Unknown(String),
}

impl Upstreams {
    /// Checks every entry; `parent` is the main parent's base URL (already checked).
    pub fn validate(raw: Vec<RawUpstream>, parent: &str) -> Result<Upstreams, SettingsError> {
        let mut entries: Vec<Upstream> = Vec::new();
        for (index, r) in raw.into_iter().enumerate() {
            let up = validate_entry(index, r)?;
            let entry = |field, message: String| upstream_error(index, &up.prefix, field, message);
            for (other_index, other) in entries.iter().enumerate() {
                if up.prefix.starts_with(&other.prefix) || other.prefix.starts_with(&up.prefix) {
                    return Err(entry(
                        "prefix",
                        format!(
                            "overlaps upstreams[{other_index}]'s prefix {:?}: a repository name \
                             must belong to one upstream; make the prefixes disjoint",
                            other.prefix
                        ),
                    ));
                }
                if up.strip_prefix && other.strip_prefix && up.registry == other.registry {
                    return Err(entry(
                        "registry",
                        format!(
                            "{:?} is also upstreams[{other_index}]'s registry, and both strip \
                             their prefix: a `?ns={}` request could map to either; keep one, \
                             or set stripPrefix false on the others",
                            up.registry, up.registry
                        ),
                    ));
                }
            }
            entries.push(up);
        }
        Ok(Upstreams {
            entries,
            parent_host: Some(host_of(parent).to_owned()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[Upstream] {
        &self.entries
    }

    /// The upstream serving local repository `local`, with the name it has there; `None`: the
    /// main parent serves it, under the same name. The one decision of "which parent", for
    /// sync and for a miss served on demand.
    pub fn for_repository(&self, local: &str) -> Option<(&Upstream, String)> {
        self.entries
            .iter()
            .find_map(|up| up.remote_name(local).map(|remote| (up, remote)))
    }

    /// The prefixes the upstreams claim: the main parent serves none of them.
    pub fn prefixes(&self) -> Vec<String> {
        self.entries.iter().map(|u| u.prefix.clone()).collect()
    }

    /// The local name for containerd's mirror request for `repo` of registry `ns`. `own_host`
    /// is the `Host` the request came to: a `ns` naming this registry, or its main parent,
    /// maps to the name as is.
    pub fn mirror_name(&self, ns: &str, repo: &str, own_host: Option<&str>) -> MirrorName {
        let same_host = |a: &str, b: &str| {
            a.eq_ignore_ascii_case(b) || strip_port(a).eq_ignore_ascii_case(strip_port(b))
        };
        if own_host.is_some_and(|h| same_host(h, ns))
            || self
                .parent_host
                .as_deref()
                .is_some_and(|h| same_host(h, ns))
        {
            return MirrorName::Local(repo.to_owned());
        }
        let of_registry: Vec<&Upstream> = self
            .entries
            .iter()
            .filter(|u| u.registry.eq_ignore_ascii_case(ns))
            .collect();
        if of_registry.is_empty() {
            let known: Vec<&str> = self.entries.iter().map(|u| u.registry.as_str()).collect();
            return MirrorName::Unknown(format!(
                "registry {ns:?} (the request's ns) is not configured as an upstream of this \
                 registry (it mirrors {}); add an `upstreams` entry with \"registry\": {ns:?} to \
                 its sync config",
                if known.is_empty() {
                    "only its parent".to_owned()
                } else {
                    known.join(", ")
                }
            ));
        }
        // An upstream keeping its names claims them by prefix; one stripping its prefix takes
        // every other name of its registry.
        if let Some(up) = of_registry
            .iter()
            .find(|u| !u.strip_prefix && u.remote_name(repo).is_some())
        {
            return MirrorName::Local(up.local_name(repo).unwrap_or_else(|| repo.to_owned()));
        }
        match of_registry.iter().find(|u| u.strip_prefix) {
            Some(up) => match up.local_name(repo) {
                Some(local) => MirrorName::Local(local),
                None => MirrorName::Unknown(format!("no repository name given for {ns}")),
            },
            None => MirrorName::Unknown(format!(
                "repository {repo:?} of registry {ns:?} is under no configured upstream's \
                 prefix ({}); add an upstreams entry for it",
                of_registry
                    .iter()
                    .map(|u| u.prefix.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// `host[:port]` of a base URL already checked to be `http(s)://host[:port]`.
fn host_of(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

fn upstream_error(
    index: usize,
    prefix: &str,
    field: &'static str,
    message: String,
) -> SettingsError {
    SettingsError::Upstream {
        entry: if prefix.is_empty() {
            format!("upstreams[{index}]")
        } else {
            format!("upstreams[{index}] ({prefix})")
        },
        field,
        message,
    }
}

fn validate_entry(index: usize, r: RawUpstream) -> Result<Upstream, SettingsError> {
    let err = |field, message: String| upstream_error(index, &r.prefix, field, message);
    let prefix = r.prefix.clone();
    if prefix.is_empty()
        || !prefix.ends_with('/')
        || prefix.starts_with('/')
        || prefix.contains("//")
        || !prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
    {
        return Err(err(
            "prefix",
            format!(
                "{prefix:?} is not a namespace prefix: lowercase repository path components \
                 ending in `/`, e.g. \"mcr/\""
            ),
        ));
    }
    let url = check_base_url(&r.url).map_err(|m| err("url", m))?;
    let registry = match &r.registry {
        Some(name) => {
            let name = name.trim();
            if name.is_empty() || name.contains('/') || name.contains("://") {
                return Err(err(
                    "registry",
                    format!(
                        "{name:?} is not a registry name: the host containerd sends as `ns`, \
                         e.g. \"docker.io\" or \"mcr.microsoft.com\""
                    ),
                ));
            }
            name.to_ascii_lowercase()
        }
        None => host_of(&url).to_ascii_lowercase(),
    };
    if let Some(t) = &r.trust {
        if !t.is_file() {
            return Err(err(
                "trust",
                format!("{} is not a readable PEM file", t.display()),
            ));
        }
    }
    let password = match (&r.password, &r.password_file, &r.password_env) {
        (None, None, None) => None,
        (Some(p), None, None) => Some(p.0.clone()),
        (None, Some(file), None) => Some(
            std::fs::read_to_string(file)
                .map_err(|e| {
                    err(
                        "passwordFile",
                        format!("cannot read {}: {e}", file.display()),
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        (None, None, Some(var)) => Some(std::env::var(var).map_err(|_| {
            err(
                "passwordEnv",
                format!("the environment variable {var} is not set (or not UTF-8)"),
            )
        })?),
        _ => {
            return Err(err(
                "password",
                "give one of password, passwordFile and passwordEnv".into(),
            ))
        }
    };
    let credentials = match (r.username.clone(), password) {
        (Some(username), Some(password)) if !username.is_empty() && !password.is_empty() => {
            Some(Credentials { username, password })
        }
        (None, None) => None,
        _ => {
            return Err(err(
                "username",
                "give both a user name and a password (non-empty), or neither".into(),
            ))
        }
    };
    let outside = |field, pattern: &str| {
        err(
            field,
            format!(
                "{pattern:?} is not under this upstream's prefix: write local names, e.g. \
                 \"{prefix}{}\"",
                pattern.trim_start_matches('/')
            ),
        )
    };
    for rule in &r.repos {
        if !rule.pattern.starts_with(&prefix) || rule.pattern.len() == prefix.len() {
            return Err(outside("repos", &rule.pattern));
        }
    }
    let repos = parse_repo_rules(r.repos).map_err(|e| err("repos", e.to_string()))?;
    for pattern in &r.on_demand {
        if !pattern.starts_with(&prefix) || pattern.len() == prefix.len() {
            return Err(outside("onDemand", pattern));
        }
    }
    Ok(Upstream {
        prefix,
        url,
        registry,
        strip_prefix: r.strip_prefix.unwrap_or(true),
        credentials,
        trust: r.trust,
        repos,
        on_demand: r.on_demand,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(prefix: &str, url: &str) -> RawUpstream {
        RawUpstream {
            prefix: prefix.into(),
            url: url.into(),
            ..Default::default()
        }
    }

    fn upstreams(raws: Vec<RawUpstream>) -> Result<Upstreams, String> {
        Upstreams::validate(raws, "https://cloud.example:443").map_err(|e| e.to_string())
    }

    #[test]
    fn names_map_both_ways_and_the_main_parent_keeps_the_rest() {
        let hub = RawUpstream {
            registry: Some("docker.io".into()),
            strip_prefix: Some(false),
            ..raw("library/", "https://registry-1.docker.io")
        };
        let u = upstreams(vec![raw("mcr/", "https://mcr.microsoft.com"), hub]).unwrap();
        let (up, remote) = u.for_repository("mcr/azureiotedge-agent").unwrap();
        assert_eq!(
            (up.prefix.as_str(), remote.as_str()),
            ("mcr/", "azureiotedge-agent")
        );
        assert_eq!(up.local_name("a/b").unwrap(), "mcr/a/b");
        let (up, remote) = u.for_repository("library/alpine").unwrap();
        assert_eq!(
            (up.registry.as_str(), remote.as_str()),
            ("docker.io", "library/alpine")
        );
        assert_eq!(up.local_name("grafana/grafana"), None);
        assert!(u.for_repository("apps/web").is_none());
        assert!(u.for_repository("mcr/").is_none());
        assert!(u.for_repository("mcrx/a").is_none());
    }

    #[test]
    fn mirror_requests_map_by_ns() {
        let hub = RawUpstream {
            registry: Some("docker.io".into()),
            ..raw("hub/", "https://registry-1.docker.io")
        };
        let u = upstreams(vec![raw("mcr/", "https://mcr.microsoft.com"), hub]).unwrap();
        let local = |ns, repo, host| u.mirror_name(ns, repo, host);
        assert_eq!(
            local("docker.io", "library/alpine", None),
            MirrorName::Local("hub/library/alpine".into())
        );
        assert_eq!(
            local("mcr.microsoft.com", "azureiotedge-agent", None),
            MirrorName::Local("mcr/azureiotedge-agent".into())
        );
        assert_eq!(
            local("cloud.example", "apps/web", None),
            MirrorName::Local("apps/web".into())
        );
        assert_eq!(
            local("edge.local:8443", "apps/web", Some("edge.local")),
            MirrorName::Local("apps/web".into())
        );
        match local("ghcr.io", "x/y", None) {
            MirrorName::Unknown(m) => assert!(
                m.contains("\"ghcr.io\"") && m.contains("not configured"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_entries_are_refused_naming_entry_and_field() {
        let cases: Vec<(Vec<RawUpstream>, &str)> = vec![
            (vec![raw("mcr", "https://m")], "upstreams[0] (mcr): prefix"),
            (vec![raw("mcr/", "ftp://m")], "upstreams[0] (mcr/): url"),
            (
                vec![raw("mcr/", "https://m/path")],
                "upstreams[0] (mcr/): url",
            ),
            (
                vec![raw("a/", "https://m"), raw("a/b/", "https://n")],
                "upstreams[1] (a/b/): prefix: overlaps upstreams[0]",
            ),
            (
                vec![RawUpstream {
                    trust: Some("/nonexistent/ca.pem".into()),
                    ..raw("mcr/", "https://m")
                }],
                "upstreams[0] (mcr/): trust: /nonexistent/ca.pem",
            ),
            (
                vec![RawUpstream {
                    repos: vec![RawRepoRule {
                        pattern: "agent".into(),
                        ..Default::default()
                    }],
                    ..raw("mcr/", "https://m")
                }],
                "upstreams[0] (mcr/): repos: \"agent\" is not under",
            ),
            (
                vec![RawUpstream {
                    username: Some("u".into()),
                    ..raw("mcr/", "https://m")
                }],
                "upstreams[0] (mcr/): username",
            ),
            (
                vec![RawUpstream {
                    username: Some("u".into()),
                    password_env: Some("NO_SUCH_VARIABLE_FOR_UPSTREAM_TEST".into()),
                    ..raw("mcr/", "https://m")
                }],
                "upstreams[0] (mcr/): passwordEnv",
            ),
            (
                vec![raw("a/", "https://m"), raw("b/", "https://m")],
                "upstreams[1] (b/): registry",
            ),
        ];
        for (raws, says) in cases {
            let e = upstreams(raws).unwrap_err();
            assert!(e.starts_with(says), "{e}\nexpected: {says}");
        }
    }

    #[test]
    fn passwords_never_show_in_debug() {
        let r = RawUpstream {
            username: Some("u".into()),
            password: Some(Secret("hunter2-secret".into())),
            ..raw("mcr/", "https://m")
        };
        assert!(!format!("{r:?}").contains("hunter2"));
        let u = upstreams(vec![r]).unwrap();
        assert!(!format!("{u:?}").contains("hunter2"));
    }
}
