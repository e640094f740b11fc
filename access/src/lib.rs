//! Who may do what, as the ACR connected registry has it: scope maps (repository patterns and
//! actions), tokens (a scope map and up to two passwords, kept as argon2id hashes), the access
//! tokens (JWTs) the token service issues, and the limit on failed logins. Nothing here knows
//! HTTP: the registry's middleware and token endpoint ask [`Authority`].
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`action`] | the actions (`content/read`, ...) and their Docker scope names (`pull`, ...) |
//! | [`scope_map`] | repository patterns, rules, scope maps |
//! | [`token`] | tokens and their two passwords |
//! | [`child`] | child registries defined here: settings, sync token, connection string |
//! | [`child_tokens`] | client tokens made here for a child, handed down as hashes and applied there |
//! | [`password`] | generating and hashing passwords (argon2id) |
//! | [`jwt`] | signing and verifying access tokens (HS256), signing keys |
//! | [`limiter`] | failed logins per token and per address, the lockout |
//! | [`store`] | where the set is kept: the contract, and `access.redb` in the data directory |
//! | [`manage`] | the `scope-map`/`token` commands and their `az acr`-shaped answers |
//! | [`seed`] | scope maps and tokens from a config file, applied at start |
//! | [`authority`] | the live model a server asks per request |

#![forbid(unsafe_code)]

pub mod action;
pub mod authority;
pub mod child;
pub mod child_tokens;
pub mod jwt;
pub mod limiter;
pub mod manage;
mod names;
pub mod password;
pub mod scope_map;
pub mod seed;
pub mod store;
pub mod token;

pub use action::Action;
pub use authority::{Asked, Authority, Identity, Issued, Login, Refusal, Settings};
pub use manage::{Command, ManageError};
pub use scope_map::{RepoPattern, Rule, ScopeMap, Target};
pub use seed::{Seed, Seeded};
pub use store::{AccessFile, AccessStore, Snapshot, StoreError};

/// Unix seconds now.
pub(crate) use util::time::now_secs as now;
