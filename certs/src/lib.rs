//! Certificates for the nested edge: load PEM chains and keys into rustls configs.
//!
//! (The edge CA chain generator, inspection, verification and renewal grow here too.)

#![forbid(unsafe_code)]

pub mod reload;
pub mod tls;
