//! The live access model of a running registry: who a request comes from (Basic, Bearer or
//! nobody), what that caller may do, the tokens the token service issues, and management
//! commands applied at once (no restart).
//!
//! Every decision reads the current token set: a disabled token, a deleted one or a retired
//! password stops working at the next request, whatever was cached or issued before. The live
//! set is a copy of what the [`AccessStore`] keeps: a change made here is kept and live at
//! once; a change another process made to a shared store (another replica) is read back by
//! [`Authority::reload_if_changed`], which [`Authority::watch`] runs every [`Settings::access_refresh`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::action::Action;
use crate::jwt::{self, Claims, Grant, RefreshOf};
use crate::limiter::{Limits, LoginLimiter};
use crate::manage::{self, Command, ManageError};
use crate::scope_map::{RepoPattern, Target};
use crate::store::{self, AccessFile, AccessStore, Snapshot, StoreError, Version};
use crate::token::{Slot, Status};

/// The named settings of access control.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Lifetime of an access token from `/oauth2/token`.
    pub token_lifetime: Duration,
    /// Lifetime of a refresh token (`docker login` keeps one).
    pub refresh_lifetime: Duration,
    /// How long a verified Basic credential is remembered (so argon2id runs once per client,
    /// not per request).
    pub credential_cache: Duration,
    pub login: Limits,
    /// Repositories anyone may pull (and list) without credentials; empty: nobody.
    pub anonymous_pull: Vec<RepoPattern>,
    /// This registry refuses client writes (ReadOnly): it may only have ReadOnly children.
    pub read_only: bool,
    /// With a store other processes change too (the metadata replicas share): how often the
    /// live set checks whether it moved, and reads it again when it did. A token deleted or a
    /// scope map narrowed through another replica stops working here within about this long.
    pub access_refresh: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            token_lifetime: Duration::from_secs(600),
            refresh_lifetime: Duration::from_secs(30 * 86_400),
            credential_cache: Duration::from_secs(60),
            login: Limits {
                attempts: 10,
                lockout: Duration::from_secs(300),
            },
            anonymous_pull: Vec::new(),
            read_only: false,
            access_refresh: Duration::from_secs(1),
        }
    }
}

/// Who a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// No credentials.
    Anonymous,
    /// A token, by a password (Basic): its scope map decides.
    Password { token: String },
    /// A token, by an access token (Bearer): what it grants, within the scope map.
    Bearer {
        /// Empty for an anonymous access token.
        token: String,
        access: Vec<Grant>,
    },
}

/// Why a caller was refused. The reason is for the log; a client hears only the kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Wrong, unknown, disabled or expired credentials (401).
    Unauthorized(String),
    /// Too many failed logins (429 with Retry-After).
    TooManyAttempts(Duration),
}

/// A token request's answer (`/oauth2/token`).
#[derive(Clone, Debug)]
pub struct Issued {
    pub access_token: String,
    pub expires_in: u64,
    pub issued_at: u64,
    pub refresh_token: Option<String>,
}

/// A successful login (Basic or refresh token), from which tokens are issued.
#[derive(Clone, Debug)]
pub struct Login {
    /// `None`: anonymous.
    token: Option<(String, Slot, String)>,
}

/// What a caller asks a token for: `repository:NAME:ACTIONS` or `registry:catalog:*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Asked {
    /// Parses the `scope` parameters of a token request (several may be space-separated).
    /// Unknown forms are ignored, as the Docker token specification says.
    pub fn parse_all(scopes: &[String]) -> Vec<Asked> {
        scopes
            .iter()
            .flat_map(|s| s.split(' '))
            .filter_map(|s| {
                let (kind, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(Asked {
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                    actions: actions.split(',').map(String::from).collect(),
                })
            })
            .collect()
    }
}

/// Entries of the credential cache, and of verified access tokens, at most (each a few hundred
/// bytes).
const MAX_REMEMBERED: usize = 10_000;

struct Remembered {
    token: String,
    slot: Slot,
    generation: String,
    until: Instant,
}

/// An access token verified before: the token itself, for which service, until when, and whom
/// it names.
struct Verified {
    token: Box<[u8]>,
    service: Box<str>,
    exp: u64,
    identity: Arc<Identity>,
}

pub struct Authority {
    /// Where the set is kept; `None`: nowhere (tests, a child's tokens from its parent).
    store: Option<Arc<dyn AccessStore>>,
    /// Held while the live set is replaced (a change kept, a refresh): the one installed last
    /// is then the newest kept.
    changing: Mutex<()>,
    state: RwLock<Live>,
    settings: Settings,
    limiter: LoginLimiter,
    /// Keyed hashes of verified `name:password` pairs: the cache never holds a password.
    remembered: Mutex<HashMap<[u8; 32], Remembered>>,
    /// Keyed by the end of the token (see [`recall_key`]).
    verified: RwLock<HashMap<RecallKey, Verified>>,
    cache_key: [u8; 32],
}

/// The live set and the version of the store it was read at (or kept as).
struct Live {
    snapshot: Arc<Snapshot>,
    version: Version,
}

impl Authority {
    /// Opens the access store in `data` (`access.redb`).
    pub fn open(data: &Path, settings: Settings) -> Result<Authority, StoreError> {
        Authority::open_on(Arc::new(AccessFile::open(data)?), settings)
    }

    /// The live set over `store`, made on first start (the built-in scope maps and a signing
    /// key, in one write transaction that sees the set as it is then: processes starting
    /// together on one shared store make one signing key, not one each).
    pub fn open_on(
        store: Arc<dyn AccessStore>,
        settings: Settings,
    ) -> Result<Authority, StoreError> {
        let longest = settings
            .refresh_lifetime
            .max(settings.token_lifetime)
            .as_secs();
        let needs_defaults = |snapshot: &mut Snapshot| {
            let now = crate::now();
            let added = manage::ensure_defaults(snapshot, now);
            let pruned = manage::prune_keys(snapshot, now, longest);
            added || pruned
        };
        let (mut snapshot, mut version) = store::load(&*store)?;
        // A write transaction only when there is something to make (on a shared store it
        // waits for every other writer).
        if needs_defaults(&mut snapshot.clone()) {
            let (kept, kept_version, _) = store::update(&*store, |next| {
                needs_defaults(next);
                Ok(())
            })?;
            (snapshot, version) = (kept, kept_version);
        }
        Ok(Authority::with(Some(store), snapshot, version, settings))
    }

    /// An authority over `snapshot`, kept nowhere (tests, and a child's tokens from its parent).
    pub fn in_memory(mut snapshot: Snapshot, settings: Settings) -> Authority {
        manage::ensure_defaults(&mut snapshot, crate::now());
        Authority::with(None, snapshot, 0, settings)
    }

    fn with(
        store: Option<Arc<dyn AccessStore>>,
        snapshot: Snapshot,
        version: Version,
        settings: Settings,
    ) -> Authority {
        Authority {
            store,
            changing: Mutex::new(()),
            state: RwLock::new(Live {
                snapshot: Arc::new(snapshot),
                version,
            }),
            limiter: LoginLimiter::new(settings.login),
            settings,
            remembered: Mutex::new(HashMap::new()),
            verified: RwLock::new(HashMap::new()),
            cache_key: rand::random(),
        }
    }

    /// Whether the set is kept where other processes change it too.
    pub fn is_shared(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.is_shared())
    }

    /// Reads the kept set again when its version moved since it was last read or kept here
    /// (changes made by another process sharing the store); whether it had. One read of the
    /// version otherwise. Blocks: call it off the async threads.
    pub fn reload_if_changed(&self) -> Result<bool, StoreError> {
        let Some(store) = self.store.as_ref().filter(|s| s.is_shared()) else {
            return Ok(false);
        };
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let known = self.live_version();
        if store.version()? == known {
            return Ok(false);
        }
        let (snapshot, version) = store::load(&**store)?;
        self.install(snapshot, version);
        Ok(true)
    }

    /// With a shared store, runs [`Authority::reload_if_changed`] every [`Settings::access_refresh`] on a thread
    /// of its own until the authority is dropped (without one, nothing: this process makes every
    /// change itself). A failed refresh is logged (once until one succeeds again) and the set
    /// last read stays live.
    pub fn watch(self: &Arc<Self>) {
        if !self.is_shared() {
            return;
        }
        let every = self.settings.access_refresh.max(Duration::from_millis(10));
        let authority: Weak<Authority> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("access-refresh".into())
            .spawn(move || {
                let mut failing = false;
                loop {
                    std::thread::sleep(every);
                    let Some(authority) = authority.upgrade() else {
                        return;
                    };
                    match authority.reload_if_changed() {
                        Ok(changed) => {
                            if failing {
                                tracing::info!("the shared access store is reachable again");
                            }
                            if changed {
                                tracing::debug!("access set changed by another replica: read again");
                            }
                            failing = false;
                        }
                        Err(err) if !failing => {
                            tracing::warn!(%err, "cannot check the shared access store for changes: serving the token set last read until it answers");
                            failing = true;
                        }
                        Err(_) => {}
                    }
                }
            });
        if let Err(err) = spawned {
            tracing::error!(%err, "cannot start the thread that reads the shared access store's changes: changes made through other replicas reach this one only at its next start");
        }
    }

    fn live_version(&self) -> Version {
        self.state.read().unwrap_or_else(|e| e.into_inner()).version
    }

    /// Makes `snapshot` the live set (the caller holds `changing`).
    fn install(&self, snapshot: Snapshot, version: Version) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = Live {
            snapshot: Arc::new(snapshot),
            version,
        };
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot
            .clone()
    }

    /// Whether any token exists (a registry with none can be reached by nobody).
    pub fn has_tokens(&self) -> bool {
        !self.snapshot().tokens.is_empty()
    }

    /// Applies a management command, keeps the result, and answers as `az acr` would.
    pub fn manage(&self, command: Command) -> Result<serde_json::Value, ManageError> {
        let writes = command.writes();
        let read_only = self.settings.read_only;
        self.change(writes, |next| {
            manage::apply_as(next, command.clone(), crate::now(), read_only)
        })
    }

    /// Like [`Authority::manage`], with `before_keeping` given the answer after the command is
    /// applied and before the change is kept; when it fails, nothing is kept. For what must be
    /// durable elsewhere first: the first token's password goes to a file before the token is
    /// committed, since a crash between a committed token and its file would leave a token whose
    /// password nobody has (and, tokens existing, no start would make another). It runs inside
    /// the store's write transaction, and again if that transaction runs again.
    pub fn manage_then(
        &self,
        command: Command,
        mut before_keeping: impl FnMut(&serde_json::Value) -> Result<(), String>,
    ) -> Result<serde_json::Value, ManageError> {
        let writes = command.writes();
        self.change(writes, |next| {
            let answer =
                manage::apply_as(next, command.clone(), crate::now(), self.settings.read_only)?;
            before_keeping(&answer).map_err(ManageError)?;
            Ok(answer)
        })
    }

    /// [`Authority::manage_then`] only when the kept set has no token, checked in the same
    /// write transaction (the first token of a store: replicas sharing one, starting together,
    /// make it once); `None` when it had one (made meanwhile by another process).
    pub fn manage_first_token(
        &self,
        command: Command,
        mut before_keeping: impl FnMut(&serde_json::Value) -> Result<(), String>,
    ) -> Result<Option<serde_json::Value>, ManageError> {
        self.change(true, |next| {
            if !next.tokens.is_empty() {
                return Ok(None);
            }
            let answer =
                manage::apply_as(next, command.clone(), crate::now(), self.settings.read_only)?;
            before_keeping(&answer).map_err(ManageError)?;
            Ok(Some(answer))
        })
    }

    /// Applies `change` to the token set and, when `writes`, keeps the result (in the store,
    /// then live) — all of it or, on an error, none. A change is applied to the set as the
    /// store has it in the write transaction that keeps it (whatever another process sharing
    /// the store changed before), so it may run more than once (see [`AccessStore::write`]). A
    /// read (`!writes`) is answered from the live set, read again first when shared.
    pub(crate) fn change<T>(
        &self,
        writes: bool,
        mut change: impl FnMut(&mut Snapshot) -> Result<T, ManageError>,
    ) -> Result<T, ManageError> {
        let store = match &self.store {
            Some(store) if writes => store,
            _ => {
                if !writes {
                    if let Err(err) = self.reload_if_changed() {
                        tracing::warn!(%err, "cannot read the shared access store: answering from the set last read");
                    }
                }
                let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
                let mut next = (*self.snapshot()).clone();
                let answer = change(&mut next)?;
                if writes {
                    self.install(next, 0);
                }
                return Ok(answer);
            }
        };
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let (next, version, answer) = store::update(&**store, change).map_err(|e| match e {
            StoreError::Refused(refused) => refused,
            e => ManageError(format!("cannot keep the change: {e}")),
        })?;
        // A crash here leaves the change durable but unanswered: the next start must serve it
        // whole (the caller, who heard nothing, finds it done).
        util::crash_point::crash_point("after_access_commit");
        self.install(next, version);
        Ok(answer)
    }

    /// Checks a password (Basic). Slow the first time (argon2id); remembered afterwards for
    /// `credential_cache`. Call it off the async threads.
    pub fn login(&self, name: &str, password: &str, from: IpAddr) -> Result<Login, Refusal> {
        if let Some(login) = self.remembered_login(name, password) {
            return Ok(login);
        }
        let now = crate::now();
        let key = self.cache_key_of(name, password);
        if let Some(retry_after) = self.limiter.locked(name, from) {
            return Err(Refusal::TooManyAttempts(retry_after));
        }
        let check = |snapshot: &Snapshot| {
            snapshot
                .tokens
                .get(name)
                .filter(|t| t.status == Status::Enabled && t.for_child.is_none())
                .and_then(|t| {
                    let slot = t.check_password(password, now)?;
                    Some((slot, t.password(slot)?.generation()))
                })
        };
        let checked_on = self.snapshot();
        let mut checked = check(&checked_on);
        // A token made (or a password generated) through another replica a moment ago works
        // here at once, not only after the next refresh: a refused login reads the shared set
        // again first when it moved (one read of its version; the password hash costs more),
        // and checks again if the live set is another than the one checked (read now, or by
        // the refresh thread meanwhile).
        if checked.is_none() && self.is_shared() {
            if let Err(err) = self.reload_if_changed() {
                tracing::warn!(%err, "cannot read the shared access store: checking the login against the set last read");
            }
            let live = self.snapshot();
            if !Arc::ptr_eq(&live, &checked_on) {
                checked = check(&live);
            }
        }
        let Some((slot, generation)) = checked else {
            self.limiter.failed(name, from);
            return Err(Refusal::Unauthorized(format!(
                "token {name}: unknown, disabled, or the password is wrong or expired"
            )));
        };
        self.limiter.succeeded(name);
        self.remember(key, name, slot, &generation);
        Ok(Login {
            token: Some((name.to_owned(), slot, generation)),
        })
    }

    /// A login remembered from an earlier check of the same password (fast: no hashing).
    pub fn remembered_login(&self, name: &str, password: &str) -> Option<Login> {
        let key = self.cache_key_of(name, password);
        let (slot, generation) = self.recall(&key, &self.snapshot(), crate::now())?;
        Some(Login {
            token: Some((name.to_owned(), slot, generation)),
        })
    }

    /// The anonymous login, when anonymous pull is on for some repositories.
    pub fn anonymous(&self) -> Option<Login> {
        (!self.settings.anonymous_pull.is_empty()).then_some(Login { token: None })
    }

    /// A login from a refresh token (`grant_type=refresh_token`).
    pub fn refresh(&self, refresh_token: &str, service: &str) -> Result<Login, Refusal> {
        let snapshot = self.snapshot();
        let claims = jwt::verify(&snapshot.keys, refresh_token, crate::now())
            .map_err(|e| Refusal::Unauthorized(format!("refresh token: {e}")))?;
        let (Some(of), true) = (&claims.refresh, claims.aud == service) else {
            return Err(Refusal::Unauthorized(
                "not a refresh token for this service".into(),
            ));
        };
        let slot: Slot = of
            .slot
            .parse()
            .map_err(|_| Refusal::Unauthorized("refresh token names no password".into()))?;
        if !self.password_current(&snapshot, &claims.sub, slot, &of.generation, crate::now()) {
            return Err(Refusal::Unauthorized(format!(
                "refresh token of {}: the token is gone or disabled, or its password was changed or expired",
                claims.sub
            )));
        }
        Ok(Login {
            token: Some((claims.sub, slot, of.generation.clone())),
        })
    }

    /// The identity of a Bearer access token for `service`, given as the request carries it.
    /// Tokens verified before are recalled from memory (a client sends the same token with
    /// every request for its lifetime; verifying is a signature and a JSON parse); recalling
    /// one reads its bytes twice at most (the key, the comparison), as every request pays it.
    pub fn bearer(&self, access_token: &[u8], service: &str) -> Result<Arc<Identity>, Refusal> {
        let now = crate::now();
        {
            let verified = self.verified.read().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = verified.get(&recall_key(access_token)) {
                if *v.token == *access_token && now < v.exp && *v.service == *service {
                    return Ok(v.identity.clone());
                }
            }
        }
        let access_token = std::str::from_utf8(access_token)
            .map_err(|_| Refusal::Unauthorized("access token: not text".into()))?;
        let snapshot = self.snapshot();
        let claims = jwt::verify(&snapshot.keys, access_token, now)
            .map_err(|e| Refusal::Unauthorized(format!("access token: {e}")))?;
        if claims.refresh.is_some() {
            return Err(Refusal::Unauthorized(
                "a refresh token is not an access token".into(),
            ));
        }
        if claims.aud != service {
            return Err(Refusal::Unauthorized(format!(
                "access token for service {:?}, not {service:?}",
                claims.aud
            )));
        }
        let identity = Arc::new(Identity::Bearer {
            token: claims.sub,
            access: claims.access,
        });
        let mut verified = self.verified.write().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= MAX_REMEMBERED {
            verified.retain(|_, v| now < v.exp);
            if verified.len() >= MAX_REMEMBERED {
                verified.clear();
            }
        }
        verified.insert(
            recall_key(access_token.as_bytes()),
            Verified {
                token: access_token.as_bytes().into(),
                service: service.into(),
                exp: claims.exp,
                identity: identity.clone(),
            },
        );
        Ok(identity)
    }

    /// Whether `identity` may do `action` on `target`, by the token set as it is now.
    pub fn allows(&self, identity: &Identity, target: Target<'_>, action: Action) -> bool {
        let snapshot = self.snapshot();
        match identity {
            Identity::Anonymous => self.anonymous_allows(target, action),
            Identity::Password { token } => scope_allows(&snapshot, token, target, action),
            Identity::Bearer { token, access } => {
                let granted = access.iter().any(|g| grant_covers(g, target, action));
                granted
                    && if token.is_empty() {
                        self.anonymous_allows(target, action)
                    } else {
                        scope_allows(&snapshot, token, target, action)
                    }
            }
        }
    }

    /// Whether `identity` may list `repo` (catalog, tags): `metadata/read` there, or a pull
    /// for anonymous callers of an anonymous-pull repository. A Bearer token needs the
    /// catalog grant for that, which the route's own check has already asked.
    pub fn may_list(&self, identity: &Identity, repo: &str) -> bool {
        let snapshot = self.snapshot();
        let target = Target::Repository(repo);
        match identity {
            Identity::Anonymous => self.anonymous_allows(target, Action::MetadataRead),
            Identity::Password { token } | Identity::Bearer { token, .. } if !token.is_empty() => {
                scope_allows(&snapshot, token, target, Action::MetadataRead)
            }
            Identity::Password { .. } | Identity::Bearer { .. } => {
                self.anonymous_allows(target, Action::MetadataRead)
            }
        }
    }

    /// Whether the change feed may name `repo` to `identity`: `content/read` or
    /// `metadata/read` there (a child's sync token reads its own repositories' changes only).
    pub fn may_read(&self, identity: &Identity, repo: &str) -> bool {
        let snapshot = self.snapshot();
        let target = Target::Repository(repo);
        let token = match identity {
            Identity::Password { token } | Identity::Bearer { token, .. } => token.as_str(),
            Identity::Anonymous => "",
        };
        [Action::ContentRead, Action::MetadataRead]
            .into_iter()
            .any(|action| match token {
                "" => self.anonymous_allows(target, action),
                token => scope_allows(&snapshot, token, target, action),
            })
    }

    /// The settings child `name` receives from this registry (`None`: no such child).
    pub fn child_config(&self, name: &str) -> Option<serde_json::Value> {
        crate::child::config_of(&self.snapshot(), name)
    }

    /// Replaces the tokens this registry's parent manages with `set` (kept, then live: a
    /// token gone or disabled in it is refused from the next request).
    pub fn apply_parent_tokens(
        &self,
        set: &crate::child_tokens::ChildTokens,
    ) -> Result<crate::child_tokens::Applied, ManageError> {
        self.change(true, |next| Ok(crate::child_tokens::apply(next, set)))
    }

    /// The names of the child registries defined here, in order (for the tree of status
    /// reports).
    pub fn child_names(&self) -> Vec<String> {
        self.snapshot().children.keys().cloned().collect()
    }

    fn anonymous_allows(&self, target: Target<'_>, action: Action) -> bool {
        let Target::Repository(repo) = target else {
            return false;
        };
        matches!(action, Action::ContentRead | Action::MetadataRead)
            && self.settings.anonymous_pull.iter().any(|p| p.matches(repo))
    }

    /// Issues an access token for `service` holding what `login` may do of what was `asked`
    /// (never more), and a refresh token when `offline` and the login is a token's.
    pub fn issue(&self, login: &Login, asked: &[Asked], service: &str, offline: bool) -> Issued {
        let snapshot = self.snapshot();
        let now = crate::now();
        let name = login
            .token
            .as_ref()
            .map(|(n, _, _)| n.as_str())
            .unwrap_or("");
        let identity = match name {
            "" => Identity::Anonymous,
            name => Identity::Password {
                token: name.to_owned(),
            },
        };
        let access: Vec<Grant> = asked
            .iter()
            .filter_map(|a| {
                let actions: Vec<String> = a
                    .actions
                    .iter()
                    .filter(|word| {
                        let wanted = Action::from_scope_name(word);
                        !wanted.is_empty()
                            && wanted.iter().all(|action| match a.kind.as_str() {
                                "repository" => {
                                    self.allows(&identity, Target::Repository(&a.name), *action)
                                }
                                // The catalog (and the change feed) list what the caller may
                                // see; any token may ask, the listing filters. So may an
                                // anonymous caller when anonymous pull is on (as without a
                                // token): the gateway actions stay refused to it (`allows`).
                                "registry" => {
                                    a.name == "catalog"
                                        && (!name.is_empty() || self.anonymous().is_some())
                                }
                                _ => false,
                            })
                    })
                    .cloned()
                    .collect();
                (!actions.is_empty()).then(|| Grant {
                    kind: a.kind.clone(),
                    name: a.name.clone(),
                    actions,
                })
            })
            .collect();
        let lifetime = self.settings.token_lifetime.as_secs().max(1);
        let claims = |exp: u64, access: Vec<Grant>, refresh: Option<RefreshOf>| Claims {
            iss: jwt::ISSUER.into(),
            sub: name.to_owned(),
            aud: service.to_owned(),
            exp,
            nbf: now,
            iat: now,
            jti: format!("{:x}", rand::random::<u128>()),
            access,
            refresh,
        };
        let Some(key) = snapshot.signing_key() else {
            // `open`/`in_memory` always make one; an empty answer is refused by every route.
            return Issued {
                access_token: String::new(),
                expires_in: 0,
                issued_at: now,
                refresh_token: None,
            };
        };
        let access_token = jwt::sign(key, &claims(now + lifetime, access, None));
        let refresh_token = match (&login.token, offline) {
            (Some((_, slot, generation)), true) => Some(jwt::sign(
                key,
                &claims(
                    now + self.settings.refresh_lifetime.as_secs(),
                    Vec::new(),
                    Some(RefreshOf {
                        slot: slot.as_str().into(),
                        generation: generation.clone(),
                    }),
                ),
            )),
            _ => None,
        };
        Issued {
            access_token,
            expires_in: lifetime,
            issued_at: now,
            refresh_token,
        }
    }

    fn cache_key_of(&self, name: &str, password: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.cache_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A remembered credential, if still remembered and its password still current.
    fn recall(&self, key: &[u8; 32], snapshot: &Snapshot, now: u64) -> Option<(Slot, String)> {
        let remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        let r = remembered.get(key).filter(|r| Instant::now() < r.until)?;
        self.password_current(snapshot, &r.token, r.slot, &r.generation, now)
            .then(|| (r.slot, r.generation.clone()))
    }

    fn remember(&self, key: [u8; 32], name: &str, slot: Slot, generation: &str) {
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if remembered.len() >= MAX_REMEMBERED {
            remembered.retain(|_, r| now < r.until);
            if remembered.len() >= MAX_REMEMBERED {
                remembered.clear();
            }
        }
        remembered.insert(
            key,
            Remembered {
                token: name.to_owned(),
                slot,
                generation: generation.to_owned(),
                until: now + self.settings.credential_cache,
            },
        );
    }

    /// Whether token `name` is enabled and its password in `slot` is still the one of
    /// `generation` and not expired.
    fn password_current(
        &self,
        snapshot: &Snapshot,
        name: &str,
        slot: Slot,
        generation: &str,
        now: u64,
    ) -> bool {
        snapshot
            .tokens
            .get(name)
            .filter(|t| t.status == Status::Enabled)
            .and_then(|t| t.password(slot))
            .is_some_and(|p| !p.expired(now) && p.generation() == generation)
    }
}

/// What a verified token is recalled by: its last bytes, which are its signature's and name it
/// as well as the whole does (a collision only costs a full verification). Hashing these
/// instead of the whole token, four hundred bytes, is most of the cost of recalling one.
type RecallKey = [u8; 32];

fn recall_key(token: &[u8]) -> RecallKey {
    let tail = &token[token.len().saturating_sub(32)..];
    let mut key = [0; 32];
    key[..tail.len()].copy_from_slice(tail);
    key
}

fn scope_allows(snapshot: &Snapshot, token: &str, target: Target<'_>, action: Action) -> bool {
    // A gateway's own routes answer its sync token only, whatever another token's scope says.
    if let Target::Gateway(name) = target {
        if !crate::child::is_sync_token_of(snapshot, name, token) {
            return false;
        }
    }
    snapshot
        .tokens
        .get(token)
        // A child's client token is valid at that child, not here.
        .filter(|t| t.status == Status::Enabled && t.for_child.is_none())
        .and_then(|t| snapshot.scope_maps.get(&t.scope_map))
        .is_some_and(|map| map.allows(target, action))
}

/// Whether an access token's grant covers `action` on `target`.
fn grant_covers(grant: &Grant, target: Target<'_>, action: Action) -> bool {
    let named = grant
        .actions
        .iter()
        .any(|a| a == "*" || a == action.scope_name());
    match target {
        Target::Repository(repo) => grant.kind == "repository" && grant.name == repo && named,
        // The registry-wide routes (catalog, change feed) need the catalog grant.
        Target::Registry | Target::Gateway(_) => {
            grant.kind == "registry" && grant.name == "catalog"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str) -> Command {
        Command::TokenCreate {
            name: name.into(),
            scope_map: Some("_repositories_admin".into()),
            rules: Vec::new(),
            status: None,
            no_passwords: false,
            expiration: None,
            for_child: None,
        }
    }

    /// A store two authorities share, as replicas share the metadata: entries and a version
    /// behind one lock (the registry's key-value store is the real one; its tests run these
    /// rules on PostgreSQL).
    #[derive(Default)]
    struct SharedInMemory {
        kept: Mutex<(crate::store::Entries, Version)>,
    }

    impl AccessStore for SharedInMemory {
        fn read(&self) -> Result<(crate::store::Entries, Version), StoreError> {
            Ok(self.kept.lock().unwrap().clone())
        }
        fn version(&self) -> Result<Version, StoreError> {
            Ok(self.kept.lock().unwrap().1)
        }
        fn write(&self, change: &mut crate::store::Change<'_>) -> Result<Version, StoreError> {
            let mut kept = self.kept.lock().unwrap();
            let changes = change(&kept.0)?;
            if !changes.is_empty() {
                for key in changes.removed {
                    kept.0.remove(&key);
                }
                kept.0.extend(changes.put);
                kept.1 += 1;
            }
            Ok(kept.1)
        }
        fn is_shared(&self) -> bool {
            true
        }
    }

    #[test]
    fn replicas_on_one_store_share_keys_and_see_each_others_changes_after_a_refresh() {
        let store: Arc<SharedInMemory> = Arc::default();
        let (a, b) = std::thread::scope(|s| {
            let open =
                || s.spawn(|| Authority::open_on(store.clone(), Settings::default()).unwrap());
            let (a, b) = (open(), open());
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_eq!(
            a.snapshot().signing_key().unwrap().kid,
            b.snapshot().signing_key().unwrap().kid,
            "one signing key for both"
        );
        assert_eq!(a.snapshot().keys.len(), 1);

        let made = a.manage(create("ci")).unwrap();
        let password = made["credentials"]["passwords"][0]["value"]
            .as_str()
            .unwrap();
        let from = "127.0.0.1".parse().unwrap();
        assert!(!b.has_tokens(), "not read yet");
        let login = b
            .login("ci", password, from)
            .expect("a refused login reads the set again first: B knows A's token at once");
        assert!(!b.reload_if_changed().unwrap(), "read already");
        assert!(b.login("ci", "wrong", from).is_err());

        // A's access token is B's too (one key), until B deletes the token and A reads that.
        let asked = Asked::parse_all(&["repository:app:pull".into()]);
        let issued = a.issue(&login, &asked, "svc", false);
        let identity = b.bearer(issued.access_token.as_bytes(), "svc").unwrap();
        assert!(b.allows(&identity, Target::Repository("app"), Action::ContentRead));
        b.manage(Command::TokenDelete { name: "ci".into() })
            .unwrap();
        let identity = a.bearer(issued.access_token.as_bytes(), "svc").unwrap();
        assert!(a.allows(&identity, Target::Repository("app"), Action::ContentRead));
        a.reload_if_changed().unwrap();
        assert!(!a.allows(&identity, Target::Repository("app"), Action::ContentRead));
        assert!(a.remembered_login("ci", password).is_none());

        // A change is applied to the set as kept, not to the one last read: B, which has not
        // read A's new token, does not undo it by a change of its own.
        a.manage(create("one")).unwrap();
        b.manage(create("two")).unwrap();
        a.reload_if_changed().unwrap();
        assert!(a.snapshot().tokens.contains_key("one") && a.snapshot().tokens.contains_key("two"));

        // The first token is made once, whoever asks second.
        let empty: Arc<SharedInMemory> = Arc::default();
        let c = Authority::open_on(empty.clone(), Settings::default()).unwrap();
        let d = Authority::open_on(empty, Settings::default()).unwrap();
        let mut files = 0;
        assert!(c
            .manage_first_token(create("admin"), |_| {
                files += 1;
                Ok(())
            })
            .unwrap()
            .is_some());
        assert!(d
            .manage_first_token(create("admin"), |_| {
                files += 1;
                Ok(())
            })
            .unwrap()
            .is_none());
        assert_eq!(files, 1, "one password written");
    }

    #[test]
    fn manage_then_keeps_nothing_when_the_step_before_keeping_fails() {
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::open(dir.path(), Settings::default()).unwrap();
        let refused = authority.manage_then(create("admin"), |_| Err("disk full".into()));
        assert_eq!(refused.unwrap_err().0, "disk full");
        assert!(!authority.has_tokens(), "nothing live");
        drop(authority);
        let reopened = Authority::open(dir.path(), Settings::default()).unwrap();
        assert!(!reopened.has_tokens(), "nothing kept");

        let mut seen = String::new();
        reopened
            .manage_then(create("admin"), |answer| {
                seen = answer["credentials"]["passwords"][0]["value"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                Ok(())
            })
            .unwrap();
        assert!(!seen.is_empty(), "the step saw the new password");
        let from = "127.0.0.1".parse().unwrap();
        assert!(reopened.login("admin", &seen, from).is_ok());
    }
}
