//! Tokens: a name, a scope map, enabled or disabled, and up to two passwords, each with an
//! optional expiry, so a password is rotated without downtime (as `az acr token`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::check_name;

/// Which of a token's two passwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    Password1,
    Password2,
}

impl Slot {
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Password1 => "password1",
            Slot::Password2 => "password2",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Slot {
    type Err = String;
    fn from_str(s: &str) -> Result<Slot, String> {
        match s {
            "password1" => Ok(Slot::Password1),
            "password2" => Ok(Slot::Password2),
            _ => Err(format!(
                "{s:?} is not a password name: use password1 or password2"
            )),
        }
    }
}

/// A password as kept: its hash, never the password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Password {
    pub name: Slot,
    /// argon2id PHC string.
    pub hash: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds after which the password is refused.
    #[serde(default)]
    pub expiry: Option<u64>,
}

impl Password {
    pub fn expired(&self, now: u64) -> bool {
        self.expiry.is_some_and(|e| now >= e)
    }

    /// Identifies this password among all a token ever had, without revealing anything about
    /// it: a refresh token names it, so a rotated password retires the refresh tokens issued
    /// for it.
    pub fn generation(&self) -> String {
        use sha2::Digest;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = sha2::Sha256::digest(self.hash.as_bytes());
        let mut text = String::with_capacity(16);
        for b in &digest[..8] {
            text.push(char::from(HEX[usize::from(b >> 4)]));
            text.push(char::from(HEX[usize::from(b & 15)]));
        }
        text
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Enabled,
    Disabled,
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Status, String> {
        match s {
            "enabled" => Ok(Status::Enabled),
            "disabled" => Ok(Status::Disabled),
            _ => Err(format!("{s:?} is not a status: use enabled or disabled")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    pub name: String,
    pub scope_map: String,
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub passwords: Vec<Password>,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// A client token of child registry NAME (`token create --for-child NAME`): handed down
    /// to that child at its syncs and valid there, not here (as ACR's client tokens of a
    /// connected registry are that registry's, not its parent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_child: Option<String>,
    /// Made by this registry's parent (`--for-child` there) and replaced at every sync: not
    /// changed here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_parent: bool,
}

impl Token {
    pub fn new(name: &str, scope_map: &str) -> Result<Token, String> {
        check_name("token", name)?;
        Ok(Token {
            name: name.to_owned(),
            scope_map: scope_map.to_owned(),
            status: Status::Enabled,
            passwords: Vec::new(),
            created: crate::now(),
            for_child: None,
            from_parent: false,
        })
    }

    pub fn password(&self, slot: Slot) -> Option<&Password> {
        self.passwords.iter().find(|p| p.name == slot)
    }

    /// Puts `password` in its slot, replacing what was there.
    pub fn set_password(&mut self, password: Password) {
        self.passwords.retain(|p| p.name != password.name);
        self.passwords.push(password);
        self.passwords.sort_by_key(|p| p.name.as_str());
    }

    /// The slot whose password is `password` and usable now, if any. Slow (argon2id) per
    /// password tried: callers remember the answer.
    pub fn check_password(&self, password: &str, now: u64) -> Option<Slot> {
        self.passwords
            .iter()
            .filter(|p| !p.expired(now))
            .find(|p| crate::password::verify(password, &p.hash))
            .map(|p| p.name)
    }
}
