//! The API proxy: TLS listener, route table, streaming reverse proxy, reload.

#![forbid(unsafe_code)]
