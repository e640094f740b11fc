//! One module per subcommand: its flags (`Args`) and its `run`.

pub mod certs;
pub mod manifest;
pub mod proxy;
pub mod serve;
pub mod sync;
