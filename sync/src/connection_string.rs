//! The ACR connected-registry connection string
//! (`ConnectedRegistryName=...;SyncTokenName=...;SyncTokenPassword=...;ParentGatewayEndpoint=...;ParentEndpointProtocol=https`),
//! parsed so that an operator learns which field is wrong and the password never reaches output.
//!
//! The `deploy-manifests` crate has a parser with the same fields; the two are to be unified.

use std::fmt;

/// The fields of a connection string. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub connected_registry_name: String,
    pub sync_token_name: String,
    pub sync_token_password: String,
    /// Host (and optional port) of the parent, without scheme.
    pub parent_gateway_endpoint: String,
    /// `https` (default) or `http`.
    pub parent_endpoint_protocol: String,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("connected_registry_name", &self.connected_registry_name)
            .field("sync_token_name", &self.sync_token_name)
            .field("sync_token_password", &"<redacted>")
            .field("parent_gateway_endpoint", &self.parent_gateway_endpoint)
            .field("parent_endpoint_protocol", &self.parent_endpoint_protocol)
            .finish()
    }
}

/// What is wrong with a connection string. Never holds the password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectionStringError {
    #[error("connection string: field {index} is not `Key=Value` (fields are separated by `;`)")]
    NotKeyValue { index: usize },
    #[error("connection string: unknown field `{0}` (known: ConnectedRegistryName, SyncTokenName, SyncTokenPassword, ParentGatewayEndpoint, ParentEndpointProtocol)")]
    Unknown(String),
    #[error("connection string: field `{0}` appears twice")]
    Duplicate(&'static str),
    #[error("connection string: required field `{0}` is missing or empty")]
    Missing(&'static str),
    #[error(
        "connection string: `ConnectedRegistryName` must be 5 to 50 letters or digits (got {0:?})"
    )]
    BadName(String),
    #[error("connection string: `ParentEndpointProtocol` must be `https` or `http` (got {0:?})")]
    BadProtocol(String),
    #[error("connection string: `ParentGatewayEndpoint` must be a host[:port] without scheme or path (got {0:?})")]
    BadEndpoint(String),
}

impl ConnectionString {
    /// Parses `Key=Value;Key=Value...`. Keys are matched case-insensitively; whitespace around
    /// fields is ignored; a trailing `;` is allowed.
    pub fn parse(s: &str) -> Result<ConnectionString, ConnectionStringError> {
        let mut name = None;
        let mut token = None;
        let mut password = None;
        let mut endpoint = None;
        let mut protocol = None;
        for (index, field) in s.split(';').enumerate() {
            let field = field.trim();
            if field.is_empty() {
                continue;
            }
            let (key, value) = field
                .split_once('=')
                .ok_or(ConnectionStringError::NotKeyValue { index: index + 1 })?;
            let (slot, canonical): (&mut Option<String>, &'static str) =
                match key.trim().to_ascii_lowercase().as_str() {
                    "connectedregistryname" => (&mut name, "ConnectedRegistryName"),
                    "synctokenname" => (&mut token, "SyncTokenName"),
                    "synctokenpassword" => (&mut password, "SyncTokenPassword"),
                    "parentgatewayendpoint" => (&mut endpoint, "ParentGatewayEndpoint"),
                    "parentendpointprotocol" => (&mut protocol, "ParentEndpointProtocol"),
                    _ => {
                        return Err(ConnectionStringError::Unknown(
                            key.trim().chars().take(64).collect(),
                        ))
                    }
                };
            if slot.is_some() {
                return Err(ConnectionStringError::Duplicate(canonical));
            }
            *slot = Some(value.trim().to_owned());
        }
        let need = |v: Option<String>, f: &'static str| {
            v.filter(|v| !v.is_empty())
                .ok_or(ConnectionStringError::Missing(f))
        };
        let name = need(name, "ConnectedRegistryName")?;
        let token = need(token, "SyncTokenName")?;
        let password = need(password, "SyncTokenPassword")?;
        let endpoint = need(endpoint, "ParentGatewayEndpoint")?;
        let protocol = protocol
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "https".into())
            .to_ascii_lowercase();
        if !(5..=50).contains(&name.len()) || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ConnectionStringError::BadName(name));
        }
        if protocol != "https" && protocol != "http" {
            return Err(ConnectionStringError::BadProtocol(protocol));
        }
        if endpoint.contains("://")
            || endpoint.contains('/')
            || endpoint.contains(char::is_whitespace)
        {
            return Err(ConnectionStringError::BadEndpoint(endpoint));
        }
        Ok(ConnectionString {
            connected_registry_name: name,
            sync_token_name: token,
            sync_token_password: password,
            parent_gateway_endpoint: endpoint,
            parent_endpoint_protocol: protocol,
        })
    }

    /// The parent's base URL, e.g. `https://parent.example:8443`.
    pub fn parent_url(&self) -> String {
        format!(
            "{}://{}",
            self.parent_endpoint_protocol, self.parent_gateway_endpoint
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "ConnectedRegistryName=edge01;SyncTokenName=edge01-sync;SyncTokenPassword=s3cr3t=x;ParentGatewayEndpoint=parent.local:8443;ParentEndpointProtocol=https";

    #[test]
    fn parses_good() {
        let c = ConnectionString::parse(GOOD).unwrap();
        assert_eq!(c.sync_token_password, "s3cr3t=x");
        assert_eq!(c.parent_url(), "https://parent.local:8443");
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn names_the_bad_field_and_hides_the_password() {
        let bad = GOOD.replace("ParentEndpointProtocol=https", "ParentEndpointProtocol=ftp");
        let err = ConnectionString::parse(&bad).unwrap_err();
        assert!(err.to_string().contains("ParentEndpointProtocol"), "{err}");
        let missing = GOOD.replace("SyncTokenName=edge01-sync;", "");
        let err = ConnectionString::parse(&missing).unwrap_err();
        assert!(err.to_string().contains("SyncTokenName"), "{err}");
        let garbage = GOOD.replace(";ParentGatewayEndpoint", ";junk;ParentGatewayEndpoint");
        let err = ConnectionString::parse(&garbage).unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        let err =
            ConnectionString::parse(&GOOD.replace("parent.local:8443", "https://p")).unwrap_err();
        assert!(err.to_string().contains("ParentGatewayEndpoint"), "{err}");
    }
}
