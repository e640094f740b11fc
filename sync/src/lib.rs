//! Synchronization with the parent registry: parent client, schedule, copy engine.

#![forbid(unsafe_code)]
