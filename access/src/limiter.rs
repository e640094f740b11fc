//! Failed logins, counted per token and per client address: past a limit, further attempts are
//! refused without checking the password (so guessing costs the attacker time and the registry
//! no CPU) until a lockout ends. The first refusal of a lockout is logged, once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most addresses and tokens tracked; past it the oldest are dropped (a flood of addresses
/// cannot grow memory without bound).
const MAX_TRACKED: usize = 10_000;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Failed logins allowed within `lockout` before further attempts are refused.
    pub attempts: u32,
    /// How long failures are remembered, and how long a lockout lasts.
    pub lockout: Duration,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Key {
    Token(String),
    Address(IpAddr),
}

struct Failures {
    count: u32,
    /// When the first failure counted was; the count restarts `lockout` after it.
    since: Instant,
    logged: bool,
}

pub struct LoginLimiter {
    limits: Limits,
    failures: Mutex<HashMap<Key, Failures>>,
}

impl LoginLimiter {
    pub fn new(limits: Limits) -> LoginLimiter {
        LoginLimiter {
            limits,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(retry_after)` when attempts for `token` or from `from` are refused now.
    pub fn locked(&self, token: &str, from: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        [Key::Token(token.to_owned()), Key::Address(from)]
            .into_iter()
            .filter_map(|key| {
                let f = failures.get_mut(&key)?;
                let ends = f.since + self.limits.lockout;
                if f.count < self.limits.attempts || now >= ends {
                    return None;
                }
                if !f.logged {
                    f.logged = true;
                    let (what, who) = match &key {
                        Key::Token(t) => ("token", t.clone()),
                        Key::Address(a) => ("address", a.to_string()),
                    };
                    tracing::warn!(
                        what,
                        who,
                        attempts = f.count,
                        lockout = ?self.limits.lockout,
                        "too many failed logins: further attempts are refused until the lockout ends (--login-attempts, --login-lockout)"
                    );
                }
                Some(ends - now)
            })
            .max()
    }

    pub fn failed(&self, token: &str, from: IpAddr) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_TRACKED {
            let lockout = self.limits.lockout;
            failures.retain(|_, f| now < f.since + lockout);
            if failures.len() >= MAX_TRACKED {
                failures.clear();
            }
        }
        for key in [Key::Token(token.to_owned()), Key::Address(from)] {
            let f = failures.entry(key).or_insert(Failures {
                count: 0,
                since: now,
                logged: false,
            });
            if now >= f.since + self.limits.lockout {
                *f = Failures {
                    count: 0,
                    since: now,
                    logged: false,
                };
            }
            f.count += 1;
        }
    }

    /// A successful login clears the token's count (not the address's: one good password does
    /// not excuse guesses at other tokens).
    pub fn succeeded(&self, token: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&Key::Token(token.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_the_limit_per_token_and_per_address() {
        let limiter = LoginLimiter::new(Limits {
            attempts: 3,
            lockout: Duration::from_secs(60),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.locked("t", a).is_none());
            limiter.failed("t", a);
        }
        assert!(limiter.locked("t", a).is_some());
        // The token is locked from any address; another token from the same address too.
        assert!(limiter.locked("t", b).is_some());
        assert!(limiter.locked("u", a).is_some());
        assert!(limiter.locked("u", b).is_none());
    }

    #[test]
    fn a_lockout_ends() {
        let limiter = LoginLimiter::new(Limits {
            attempts: 1,
            lockout: Duration::from_millis(1),
        });
        let a: IpAddr = "::1".parse().unwrap();
        limiter.failed("t", a);
        std::thread::sleep(Duration::from_millis(5));
        assert!(limiter.locked("t", a).is_none());
    }
}
