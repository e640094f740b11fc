//! The connected registry: storage, the `/v2` API, auth, change feed, GC.

#![forbid(unsafe_code)]
