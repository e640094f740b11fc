//! Tokens and scope maps for the access-control tests, made in the data directory's access
//! store before `serve` starts on it (the store is locked while a registry runs). Every test
//! makes its tokens here, so this is the one place to switch to the `token` CLI once it lands.

use std::path::Path;

use access::{Action, Authority, Command, RepoPattern, Rule, Settings};
use serde_json::Value;

/// A token as made: its name and both passwords (shown once, as `az acr token create` does).
#[derive(Clone, Debug)]
pub struct Made {
    pub name: String,
    pub password1: String,
    pub password2: String,
}

impl Made {
    /// `name:password1`, as `skopeo --creds` and `ctr --user` take it.
    pub fn creds(&self) -> String {
        format!("{}:{}", self.name, self.password1)
    }

    /// The `Authorization: Basic ...` value of password1.
    pub fn basic(&self) -> String {
        basic(&self.name, &self.password1)
    }
}

/// `Basic base64(name:password)`.
pub fn basic(name: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"))
    )
}

/// Applies one management command to the access store in `data` (made if missing); panics
/// with the refusal. The registry must not be running on `data`.
pub fn manage(data: &Path, command: Command) -> Value {
    std::fs::create_dir_all(data).expect("make the data directory");
    let authority = Authority::open(data, Settings::default())
        .unwrap_or_else(|e| panic!("open the access store in {}: {e}", data.display()));
    authority
        .manage(command)
        .unwrap_or_else(|e| panic!("management command refused: {e}"))
}

/// A rule from a pattern (`team-a/*`, `team-a/app`, `*`) and action names (`content/read`).
pub fn rule(pattern: &str, actions: &[&str]) -> Rule {
    Rule {
        repository: pattern
            .parse::<RepoPattern>()
            .unwrap_or_else(|e| panic!("{e}")),
        actions: actions
            .iter()
            .map(|a| a.parse::<Action>().unwrap_or_else(|e| panic!("{e}")))
            .collect(),
    }
}

/// Makes token `name` with a scope map of its own holding `rules`; passwords expire after
/// `expiration` seconds when given.
pub fn create_token(data: &Path, name: &str, rules: Vec<Rule>, expiration: Option<u64>) -> Made {
    made(&manage(
        data,
        Command::TokenCreate {
            name: name.into(),
            scope_map: None,
            rules,
            status: None,
            no_passwords: false,
            expiration,
            for_child: None,
        },
    ))
}

/// Makes token `name` on an existing (e.g. built-in `_repositories_admin`) scope map.
pub fn create_token_on(data: &Path, name: &str, scope_map: &str) -> Made {
    made(&manage(
        data,
        Command::TokenCreate {
            name: name.into(),
            scope_map: Some(scope_map.into()),
            rules: Vec::new(),
            status: None,
            no_passwords: false,
            expiration: None,
            for_child: None,
        },
    ))
}

/// Enables or disables token `name`.
pub fn set_enabled(data: &Path, name: &str, enabled: bool) {
    let status = if enabled { "enabled" } else { "disabled" };
    manage(
        data,
        Command::TokenUpdate {
            name: name.into(),
            scope_map: None,
            status: Some(status.parse().unwrap()),
        },
    );
}

/// Regenerates password1 or password2 (`slot`) of token `name` with the CLI (through the
/// admin socket when `serve` runs on `data`, so it takes effect with no restart); returns the
/// new value.
pub fn regenerate(data: &Path, name: &str, slot: &str) -> String {
    let data = data.to_str().expect("utf-8 temp path");
    let out = super::run_ok(
        super::bin().to_str().expect("utf-8 binary path"),
        &[
            "token",
            "credential",
            "generate",
            name,
            &format!("--{slot}"),
            "--data",
            data,
            "--output",
            "json",
        ],
    );
    let answer: Value = serde_json::from_str(&out).expect("token credential generate prints JSON");
    answer["passwords"][0]["value"]
        .as_str()
        .expect("a generated password's value")
        .to_owned()
}

/// The password the first start of `serve` wrote to `DATA/admin-password`.
pub fn admin_password(data: &Path) -> String {
    std::fs::read_to_string(data.join("admin-password"))
        .expect("DATA/admin-password (written by the first start of serve with --auth tokens)")
        .trim()
        .to_owned()
}

fn made(answer: &Value) -> Made {
    let password = |i: usize| {
        answer["credentials"]["passwords"][i]["value"]
            .as_str()
            .unwrap_or_else(|| panic!("token create answered no password {i}: {answer}"))
            .to_owned()
    };
    Made {
        name: answer["name"].as_str().expect("token name").to_owned(),
        password1: password(0),
        password2: password(1),
    }
}

/// Many tokens at once for the matrix: `(name, rules)` each, one password each. The passwords
/// are hashed with argon2id at its lowest cost (the server reads the cost from the hash, so it
/// verifies them exactly as any other, in microseconds): a thousand tokens made and verified
/// in a second instead of a minute. Returns the passwords in the order given.
pub fn seed_cheaply(data: &Path, tokens: &[(String, Vec<Rule>)]) -> Vec<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    std::fs::create_dir_all(data).expect("make the data directory");
    // The management commands on one snapshot, kept in one write (a write per token would
    // be a thousand transactions).
    let store = access::AccessFile::open(data).expect("open access store");
    let mut snapshot = store.load().expect("load access store");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    access::manage::ensure_defaults(&mut snapshot, now);
    for (name, rules) in tokens {
        let command = Command::TokenCreate {
            name: name.clone(),
            scope_map: None,
            rules: rules.clone(),
            status: None,
            no_passwords: true,
            expiration: None,
            for_child: None,
        };
        access::manage::apply(&mut snapshot, command, now)
            .unwrap_or_else(|e| panic!("token {name}: {e}"));
    }
    let cheap = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(8, 1, 1, None).expect("argon2 parameters"),
    );
    let mut passwords = Vec::new();
    for (i, (name, _)) in tokens.iter().enumerate() {
        let password = format!("matrix-password-{i}-{}", access::password::generate());
        let salt = SaltString::encode_b64(&super::oci::random_bytes(16)).expect("salt");
        let hash = cheap
            .hash_password(password.as_bytes(), &salt)
            .expect("hash")
            .to_string();
        let token = snapshot.tokens.get_mut(name).expect("token just made");
        token.set_password(access::token::Password {
            name: access::token::Slot::Password1,
            hash,
            created: 0,
            expiry: None,
        });
        passwords.push(password);
    }
    store.save(&snapshot).expect("save access store");
    passwords
}
