//! `serve`'s access-control flags, and the [`access::Authority`] they make: on by default
//! (every route needs a token), with the first start making an `admin` token whose password
//! goes to a file only the data directory's owner can read. The token set is kept in
//! `DATA/access.redb`, or with `--metadata postgres://...` in the metadata the replicas share
//! (`registry::storage::kv_access`), re-read every `--access-refresh` when another replica
//! changed it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// Who may reach the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Every route needs a token (scope maps decide what it may do).
    Tokens,
    /// Every route is open to anyone who reaches the port (a lab, or a registry behind
    /// something else that checks).
    None,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AuthFlags {
    /// `tokens`: every route needs a token (`connected-registry token create`); `none`: every
    /// route is open to anyone who reaches the port.
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_AUTH",
        value_enum,
        default_value = "tokens"
    )]
    pub auth: AuthMode,
    /// Repositories anyone may pull and list without credentials: a name, `prefix/*` or `*`.
    /// Repeatable; none by default.
    #[arg(
        long = "anonymous-pull",
        env = "CONNECTED_REGISTRY_ANONYMOUS_PULL",
        value_delimiter = ',',
        value_name = "PATTERN"
    )]
    pub anonymous_pull: Vec<String>,
    /// Lifetime of an access token from /oauth2/token.
    #[arg(long, env = "CONNECTED_REGISTRY_TOKEN_LIFETIME", default_value = "10m", value_parser = super::parse_duration)]
    pub token_lifetime: Duration,
    /// Lifetime of a refresh token (what `docker login` keeps instead of the password).
    #[arg(long, env = "CONNECTED_REGISTRY_REFRESH_TOKEN_LIFETIME", default_value = "30d", value_parser = super::parse_duration)]
    pub refresh_token_lifetime: Duration,
    /// How long a verified Basic credential is remembered (the password hash is slow by
    /// design: it is checked once per client and period, not per request).
    #[arg(long, env = "CONNECTED_REGISTRY_CREDENTIAL_CACHE", default_value = "60s", value_parser = super::parse_duration)]
    pub credential_cache: Duration,
    /// Failed logins allowed per token and per client address within --login-lockout; past
    /// it, attempts get 429 until the lockout ends.
    #[arg(long, env = "CONNECTED_REGISTRY_LOGIN_ATTEMPTS", default_value_t = 10)]
    pub login_attempts: u32,
    /// How long failed logins are counted, and how long a lockout lasts.
    #[arg(long, env = "CONNECTED_REGISTRY_LOGIN_LOCKOUT", default_value = "5m", value_parser = super::parse_duration)]
    pub login_lockout: Duration,
    /// With --metadata on PostgreSQL (the token set shared by replicas): how often this replica
    /// checks whether another one changed the token set, and reads it again when it did. A
    /// token deleted or disabled, a password regenerated or a scope map narrowed through another
    /// replica stops working here within about this long; through this one, at once. Unused
    /// with redb.
    #[arg(long, env = "CONNECTED_REGISTRY_ACCESS_REFRESH", default_value = "1s", value_parser = refresh_interval)]
    pub access_refresh: Duration,
}

/// `--access-refresh`: a duration from 10ms (each check is one read of the database).
fn refresh_interval(text: &str) -> Result<Duration, String> {
    let every = super::parse_duration(text)?;
    if every < Duration::from_millis(10) {
        return Err(format!(
            "{text} is too short: each check reads the database; use 10ms or more (default 1s)"
        ));
    }
    Ok(every)
}

impl AuthFlags {
    /// The settings, every pattern checked (before anything is written to disk).
    pub fn settings(&self) -> anyhow::Result<access::Settings> {
        let anonymous_pull = self
            .anonymous_pull
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|e: String| anyhow::anyhow!("--anonymous-pull: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        if self.login_attempts == 0 {
            anyhow::bail!(
                "--login-attempts 0 would refuse every login: use 1 or more (default 10)"
            );
        }
        Ok(access::Settings {
            token_lifetime: self.token_lifetime,
            refresh_lifetime: self.refresh_token_lifetime,
            credential_cache: self.credential_cache,
            login: access::limiter::Limits {
                attempts: self.login_attempts,
                lockout: self.login_lockout,
            },
            anonymous_pull,
            read_only: false,
            access_refresh: self.access_refresh,
        })
    }
}

/// The file the first start writes the `admin` token's password to.
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";

/// Opens access control over `data` (none with `--auth none`), its token set where `metadata`
/// says (the shared metadata on PostgreSQL, else `DATA/access.redb`), and applies
/// `--access-config`; on a first start with no token, makes `admin` (every action on every
/// repository) and writes its password to `DATA/admin-password`, mode 0600.
pub fn open(
    flags: &AuthFlags,
    settings: access::Settings,
    data: &Path,
    metadata: &registry::storage::MetadataBackend,
    seed: &super::access::AccessConfigFlags,
) -> anyhow::Result<Option<Arc<access::Authority>>> {
    if flags.auth == AuthMode::None {
        tracing::warn!("--auth none: every route is open to anyone who can reach this registry");
        if seed.access_config.is_some() {
            tracing::warn!("--access-config is not applied with --auth none");
        }
        return Ok(None);
    }
    let authority = open_authority(settings, data, metadata)?;
    super::access::seed(&authority, seed)?;
    if !authority.has_tokens() {
        make_admin(&authority, data)?;
    }
    let authority = Arc::new(authority);
    authority.watch();
    Ok(Some(authority))
}

/// The token set of the registry on `data` with `metadata`: in the shared metadata when it is
/// shared, else in `DATA/access.redb`.
pub fn open_authority(
    settings: access::Settings,
    data: &Path,
    metadata: &registry::storage::MetadataBackend,
) -> anyhow::Result<access::Authority> {
    let shared = registry::storage::kv_access::open(metadata)
        .context("cannot open the access store in the shared metadata")?;
    let Some(store) = shared else {
        return access::Authority::open(data, settings)
            .with_context(|| format!("cannot open the access store in {}", data.display()));
    };
    let file = data.join(access::store::FILE_NAME);
    if file.exists() {
        tracing::warn!(
            file = %file.display(),
            "the token set is in the shared metadata (--metadata): this file's tokens, scope maps and keys are not used; make them again with `connected-registry token create --metadata ...`"
        );
    }
    access::Authority::open_on(store, settings).with_context(|| {
        format!("cannot open the access store in the shared metadata ({metadata})")
    })
}

/// Makes `admin` and writes its password. The file is written (and synced) before the token is
/// committed: a crash before the commit leaves no token, so the next start makes `admin` and
/// writes the file again; a crash after it leaves both. The other order could leave a token
/// whose password is nowhere, and no start would make another.
fn make_admin(authority: &access::Authority, data: &Path) -> anyhow::Result<()> {
    let path = data.join(ADMIN_PASSWORD_FILE);
    let command = access::Command::TokenCreate {
        name: "admin".into(),
        scope_map: Some("_repositories_admin".into()),
        rules: Vec::new(),
        status: None,
        no_passwords: false,
        expiration: None,
        for_child: None,
    };
    let made = authority
        .manage_first_token(command, |answer| {
            let password = answer["credentials"]["passwords"][0]["value"]
                .as_str()
                .unwrap_or_default();
            write_private(&path, password)
                .map_err(|e| format!("cannot write the admin password to {}: {e}", path.display()))
        })
        .map_err(|e| anyhow::anyhow!("cannot make the first token: {e}"))?;
    if made.is_none() {
        // Another replica sharing the token set made the first token (its password is in that
        // replica's data directory); a file written here by an attempt that lost is no one's.
        let _ = std::fs::remove_file(&path);
        tracing::info!("another replica sharing the token set made the first token: its password is in that replica's data directory (admin-password)");
        return Ok(());
    }
    tracing::info!(
        file = %path.display(),
        "no token existed: made token `admin` (every action on every repository); its password is in the file (only this user can read it): log in with `docker login -u admin`, then make narrower tokens with `connected-registry token create` and delete the file"
    );
    Ok(())
}

/// Writes `text` to a new file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    // The file's name is durable once its directory is synced.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
