//! The connected registry's connection string (`ACR_REGISTRY_CONNECTION_STRING`): parse it,
//! name the bad field when it is wrong, and never show the password.
//!
//! Sync reads it at run time; the deployment-manifest checker (`deploy-manifests`) checks it.
//! It is a crate of its own so that the checker, which needs no network stack, does not depend
//! on sync (and through it on an HTTP client, server and database) for one parser.

#![forbid(unsafe_code)]

#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz_targets;

use std::fmt;
use std::str::FromStr;

/// How the connected registry talks to its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParentProtocol {
    Https,
    Http,
}

impl fmt::Display for ParentProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParentProtocol::Https => "https",
            ParentProtocol::Http => "http",
        })
    }
}

/// A parsed connection string:
/// `ConnectedRegistryName=...;SyncTokenName=...;SyncTokenPassword=...;ParentGatewayEndpoint=...;ParentEndpointProtocol=https|http`.
///
/// `Debug` and `Display` print the password as `***` so the value can be logged safely.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub connected_registry_name: String,
    pub sync_token_name: String,
    /// The sync token's password. Read it with care: never log it.
    pub sync_token_password: String,
    /// Host (optionally `:port`) of the parent: a cloud registry's endpoint, or
    /// `$IOTEDGE_PARENTHOSTNAME` on a lower layer (the parent device's API proxy).
    pub parent_gateway_endpoint: String,
    pub parent_endpoint_protocol: ParentProtocol,
}

/// What is wrong with a connection string; each variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    #[error("connection string is empty; expected `ConnectedRegistryName=...;SyncTokenName=...;SyncTokenPassword=...;ParentGatewayEndpoint=...;ParentEndpointProtocol=https`")]
    Empty,
    /// The part itself is not shown: after a password holding `;` it would be a piece of the password.
    #[error("connection string part {index} (counting `;`-separated parts from 1) is not `Key=Value`; if the password holds `;`, regenerate it")]
    NotKeyValue { index: usize },
    #[error("connection string field `{0}` is not known; the fields are ConnectedRegistryName, SyncTokenName, SyncTokenPassword, ParentGatewayEndpoint, ParentEndpointProtocol")]
    UnknownField(String),
    #[error("connection string field `{0}` appears more than once")]
    Duplicate(&'static str),
    #[error("connection string field `{0}` is missing")]
    Missing(&'static str),
    #[error("connection string field `{0}` is empty")]
    EmptyValue(&'static str),
    #[error("connection string field `ParentEndpointProtocol` is `{0}`; use `https` or `http`")]
    BadProtocol(String),
    #[error("connection string field `ParentGatewayEndpoint` (`{0}`) must be a host or host:port, without a scheme or path")]
    BadEndpoint(String),
    #[error("connection string field `ParentGatewayEndpoint` is `$IOTEDGE_PARENTHOSTNAME`, but that environment variable is not set (IoT Edge sets it on child devices; elsewhere set it to the parent's host name)")]
    UnresolvedParent,
}

const FIELDS: [&str; 5] = [
    "ConnectedRegistryName",
    "SyncTokenName",
    "SyncTokenPassword",
    "ParentGatewayEndpoint",
    "ParentEndpointProtocol",
];

impl FromStr for ConnectionString {
    type Err = ConnectionStringError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(ConnectionStringError::Empty);
        }
        let mut values: [Option<String>; 5] = Default::default();
        for (index, part) in s.split(';').enumerate() {
            let part = part.trim();
            if part.is_empty() {
                // A trailing `;` is common and harmless.
                continue;
            }
            // Split at the first `=` only: passwords may contain `=`.
            let Some((key, value)) = part.split_once('=') else {
                return Err(ConnectionStringError::NotKeyValue { index: index + 1 });
            };
            let key = key.trim();
            let Some(slot) = FIELDS.iter().position(|f| f.eq_ignore_ascii_case(key)) else {
                return Err(ConnectionStringError::UnknownField(key.to_string()));
            };
            if values[slot].is_some() {
                return Err(ConnectionStringError::Duplicate(FIELDS[slot]));
            }
            values[slot] = Some(value.trim().to_string());
        }
        let mut take = |i: usize| -> Result<String, ConnectionStringError> {
            match values[i].take() {
                None => Err(ConnectionStringError::Missing(FIELDS[i])),
                Some(v) if v.is_empty() => Err(ConnectionStringError::EmptyValue(FIELDS[i])),
                Some(v) => Ok(v),
            }
        };
        let connected_registry_name = take(0)?;
        let sync_token_name = take(1)?;
        let sync_token_password = take(2)?;
        let parent_gateway_endpoint = take(3)?;
        let protocol = take(4)?;
        let parent_endpoint_protocol = match protocol.to_ascii_lowercase().as_str() {
            "https" => ParentProtocol::Https,
            "http" => ParentProtocol::Http,
            _ => return Err(ConnectionStringError::BadProtocol(protocol)),
        };
        if parent_gateway_endpoint.contains("://")
            || parent_gateway_endpoint.contains('/')
            || parent_gateway_endpoint.contains(char::is_whitespace)
        {
            return Err(ConnectionStringError::BadEndpoint(parent_gateway_endpoint));
        }
        Ok(ConnectionString {
            connected_registry_name,
            sync_token_name,
            sync_token_password,
            parent_gateway_endpoint,
            parent_endpoint_protocol,
        })
    }
}

impl ConnectionString {
    /// True when the parent is another IoT Edge device (`$IOTEDGE_PARENTHOSTNAME` or
    /// `$upstream`), which the connected registry resolves at run time.
    pub fn parent_is_edge_device(&self) -> bool {
        let e = self.parent_gateway_endpoint.to_ascii_lowercase();
        e.starts_with("$iotedge_parenthostname") || e.starts_with("$upstream")
    }

    /// The parent's base URL, e.g. `https://myregistry.azurecr.io`.
    pub fn parent_url(&self) -> String {
        format!(
            "{}://{}",
            self.parent_endpoint_protocol, self.parent_gateway_endpoint
        )
    }

    /// The parent's base URL with `$IOTEDGE_PARENTHOSTNAME` (what lower-layer manifests use)
    /// replaced from `env`, as IoT Edge sets that variable in every module on a child device.
    pub fn resolved_parent_url(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<String, ConnectionStringError> {
        const VAR: &str = "$IOTEDGE_PARENTHOSTNAME";
        let endpoint = &self.parent_gateway_endpoint;
        let host = match endpoint.get(..VAR.len()) {
            Some(head) if head.eq_ignore_ascii_case(VAR) => {
                let parent = env(&VAR[1..])
                    .filter(|h| !h.trim().is_empty())
                    .ok_or(ConnectionStringError::UnresolvedParent)?;
                format!("{}{}", parent.trim(), &endpoint[VAR.len()..])
            }
            _ => endpoint.clone(),
        };
        Ok(format!("{}://{host}", self.parent_endpoint_protocol))
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("connected_registry_name", &self.connected_registry_name)
            .field("sync_token_name", &self.sync_token_name)
            .field("sync_token_password", &"***")
            .field("parent_gateway_endpoint", &self.parent_gateway_endpoint)
            .field("parent_endpoint_protocol", &self.parent_endpoint_protocol)
            .finish()
    }
}

impl fmt::Display for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ConnectedRegistryName={};SyncTokenName={};SyncTokenPassword=***;ParentGatewayEndpoint={};ParentEndpointProtocol={}",
            self.connected_registry_name, self.sync_token_name, self.parent_gateway_endpoint, self.parent_endpoint_protocol
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "ConnectedRegistryName=edge1;SyncTokenName=edge1-sync;SyncTokenPassword=s3cr=t!;ParentGatewayEndpoint=myacr.westeurope.data.azurecr.io;ParentEndpointProtocol=https";

    #[test]
    fn parses_all_fields_and_keeps_equals_in_password() {
        let cs: ConnectionString = GOOD.parse().unwrap();
        assert_eq!(cs.connected_registry_name, "edge1");
        assert_eq!(cs.sync_token_name, "edge1-sync");
        assert_eq!(cs.sync_token_password, "s3cr=t!");
        assert_eq!(
            cs.parent_gateway_endpoint,
            "myacr.westeurope.data.azurecr.io"
        );
        assert_eq!(cs.parent_endpoint_protocol, ParentProtocol::Https);
        assert_eq!(cs.parent_url(), "https://myacr.westeurope.data.azurecr.io");
        assert!(!cs.parent_is_edge_device());
    }

    #[test]
    fn debug_and_display_hide_the_password() {
        let cs: ConnectionString = GOOD.parse().unwrap();
        for shown in [format!("{cs:?}"), format!("{cs}")] {
            assert!(!shown.contains("s3cr"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let missing = GOOD.replace(";SyncTokenName=edge1-sync", "");
        assert_eq!(
            missing.parse::<ConnectionString>(),
            Err(ConnectionStringError::Missing("SyncTokenName"))
        );
        let bad = GOOD.replace("=https", "=ftp");
        assert_eq!(
            bad.parse::<ConnectionString>(),
            Err(ConnectionStringError::BadProtocol("ftp".into()))
        );
        let empty = GOOD.replace("=edge1;", "=;");
        assert_eq!(
            empty.parse::<ConnectionString>(),
            Err(ConnectionStringError::EmptyValue("ConnectedRegistryName"))
        );
        let unknown = format!("{GOOD};Foo=bar");
        assert_eq!(
            unknown.parse::<ConnectionString>(),
            Err(ConnectionStringError::UnknownField("Foo".into()))
        );
        let scheme = GOOD.replace("=myacr", "=https://myacr");
        assert!(matches!(
            scheme.parse::<ConnectionString>(),
            Err(ConnectionStringError::BadEndpoint(_))
        ));
        let dup = format!("{GOOD};SyncTokenName=x");
        assert_eq!(
            dup.parse::<ConnectionString>(),
            Err(ConnectionStringError::Duplicate("SyncTokenName"))
        );
        assert_eq!(
            "".parse::<ConnectionString>(),
            Err(ConnectionStringError::Empty)
        );
        let semicolon_in_password = GOOD.replace("s3cr=t!", "s3cr;t0psecret");
        let err = semicolon_in_password
            .parse::<ConnectionString>()
            .unwrap_err();
        assert_eq!(err, ConnectionStringError::NotKeyValue { index: 4 });
        assert!(!err.to_string().contains("t0psecret"), "{err}");
        assert!(matches!(
            "garbage".parse::<ConnectionString>(),
            Err(ConnectionStringError::NotKeyValue { index: 1 })
        ));
    }

    #[test]
    fn edge_parent_is_recognised() {
        let cs: ConnectionString = GOOD
            .replace(
                "myacr.westeurope.data.azurecr.io",
                "$IOTEDGE_PARENTHOSTNAME",
            )
            .parse()
            .unwrap();
        assert!(cs.parent_is_edge_device());
        assert_eq!(
            cs.resolved_parent_url(|_| Some("parent-gw".into())),
            Ok("https://parent-gw".into())
        );
        assert_eq!(
            cs.resolved_parent_url(|_| None),
            Err(ConnectionStringError::UnresolvedParent)
        );
    }
}
