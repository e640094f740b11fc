//! Where a failure came from and whether trying again can help: the one classification the
//! registry, sync and the proxy give every error, so an operator reads the same words in an
//! error body's `detail`, a log line's `fault`/`retryable` fields, a sync status and a metric
//! label, and a caller can tell "fix your request" from "wait and retry" from "page someone".

use std::fmt;

/// Who is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The caller sent something wrong (a bad name, digest, range; missing credentials; a
    /// setting that selects nothing). Fixing the request helps; repeating it does not.
    Client,
    /// The next hop up (a parent registry, a proxy's upstream) failed or refused.
    Upstream,
    /// This machine: its disk, its database, its files (a full disk, an unreadable trust bundle).
    Local,
    /// A bug: something that must not happen did.
    Internal,
}

impl Fault {
    /// The word for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Local => "local",
            Fault::Internal => "internal",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure's fault and whether the same request may succeed later without a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Class {
    pub fault: Fault,
    pub retryable: bool,
}

impl Class {
    pub const fn new(fault: Fault, retryable: bool) -> Class {
        Class { fault, retryable }
    }

    /// What an HTTP status says by itself: 4xx the client's (408 and 429 worth retrying),
    /// 502/503/504 the upstream's (retryable), 507 a full disk here (retryable once space is
    /// freed), any other 5xx internal. The one rule registry, sync and proxy share.
    pub fn of_status(status: u16) -> Class {
        match status {
            408 | 429 => Class::new(Fault::Client, true),
            400..=499 => Class::new(Fault::Client, false),
            502..=504 => Class::new(Fault::Upstream, true),
            507 => Class::new(Fault::Local, true),
            _ => Class::new(Fault::Internal, false),
        }
    }
}

/// An error that knows its [`Class`].
pub trait Classify {
    fn class(&self) -> Class;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_say_whose_fault_and_whether_to_retry() {
        assert_eq!(Class::of_status(404), Class::new(Fault::Client, false));
        assert_eq!(Class::of_status(429), Class::new(Fault::Client, true));
        assert_eq!(Class::of_status(502), Class::new(Fault::Upstream, true));
        assert_eq!(Class::of_status(504), Class::new(Fault::Upstream, true));
        assert_eq!(Class::of_status(507), Class::new(Fault::Local, true));
        assert_eq!(Class::of_status(500), Class::new(Fault::Internal, false));
        assert_eq!(Fault::Upstream.as_str(), "upstream");
    }
}
