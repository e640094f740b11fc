//! Small pieces that every part of the binary needs, written once so that they behave the same
//! everywhere (the same duration spellings in every flag, the same crash-safe file writes).
//!
//! | module | what it is for |
//! | --- | --- |
//! | [`duration`] | the one duration syntax: `90s`, `30m`, `1h`, `7d`, `500ms` and ISO-8601 `PT1H`, `P7D`; formatting back to ISO-8601 |
//! | [`crash_point`] | named points where a test makes the process abort, to prove crash safety there (a test aid, not a setting) |
//! | [`config_table`] | the table `--print-config` prints (setting, value, where it came from), secrets redacted |
//! | [`backoff`] | exponential backoff with jitter, so clients that lost the same peer do not come back in step |
//! | [`error_chain`] | an error and its causes on one line, for logs and messages |
//! | [`atomic_file`] | replace a file so a crash or a concurrent reader sees the old or the new one, never half |
//! | [`file_watch`] | notice that files changed on disk (inode, length, mtime), for reloading |
//! | [`forwarded`] | what the proxy in this process tells the registry of a request's way in |
//! | [`request_id`] | `X-Request-Id`: which ids a hop keeps and logs, and fresh ones |
//! | [`time`] | Unix time as RFC 3339, for JSON answers and status |
//! | `shutdown` | the future that completes on SIGTERM or Ctrl-C (feature `shutdown`) |
//!
//! Each module depends on nothing but `std`, except `shutdown`, which needs tokio's signal
//! handling and is therefore behind the `shutdown` feature.

#![forbid(unsafe_code)]

pub mod atomic_file;
pub mod backoff;
pub mod config_table;
pub mod crash_point;
pub mod duration;
pub mod error_chain;
pub mod file_watch;
pub mod forwarded;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz_targets;
pub mod request_id;
#[cfg(feature = "shutdown")]
pub mod shutdown;
pub mod time;
