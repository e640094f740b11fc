//! Fuzz targets for the connection string parser, each a `fn(&[u8])` that panics when a property
//! fails: the bounded runs at the bottom are part of `cargo test` (the `fuzzkit` seeded driver),
//! and `fuzz/` runs them under `cargo fuzz` (built with `--cfg fuzzing`).

use fuzzkit::{text, Gen};

use crate::{ConnectionString, ParentProtocol};

/// Any text parses or is refused with a message, never a panic, and neither the value nor the
/// error ever prints the password; a string written from fields reads back to those fields.
pub fn connection_string(data: &[u8]) {
    let mut g = Gen::new(data);
    if g.bool() {
        let input = text(g.rest());
        match input.parse::<ConnectionString>() {
            Ok(cs) => {
                assert!(!cs.sync_token_password.is_empty());
                let shown = format!("{cs} {cs:?}");
                // A password the other fields also hold would be "shown" by them.
                let elsewhere = [
                    &cs.connected_registry_name,
                    &cs.sync_token_name,
                    &cs.parent_gateway_endpoint,
                ]
                .iter()
                .any(|f| f.contains(&cs.sync_token_password))
                    || "ConnectionString connected_registry_name sync_token_name sync_token_password parent_gateway_endpoint parent_endpoint_protocol https http *** { } : , \" / ;"
                        .contains(&cs.sync_token_password);
                if !elsewhere {
                    assert!(!shown.contains(&cs.sync_token_password), "{shown}");
                }
                let _ = cs.resolved_parent_url(|_| Some("parent".into()));
                let _ = cs.resolved_parent_url(|_| None);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
        return;
    }
    let field = |g: &mut Gen| {
        let s = g.string("abzAZ09-._=$ :/", 12);
        let s = s.trim();
        if s.is_empty() {
            "x".to_owned()
        } else {
            s.to_owned()
        }
    };
    let name = field(&mut g);
    let token = field(&mut g);
    let password = format!("Pw{}=", field(&mut g));
    let endpoint = g.string("abz09.-:$_", 16);
    let endpoint = if endpoint.is_empty() {
        "h".to_owned()
    } else {
        endpoint
    };
    let protocol = *g.pick(&["https", "http", "HTTPS", "Http"]);
    let mut parts = [
        format!("ConnectedRegistryName={name}"),
        format!("SyncTokenName={token}"),
        format!("SyncTokenPassword={password}"),
        format!("ParentGatewayEndpoint={endpoint}"),
        format!("ParentEndpointProtocol={protocol}"),
    ];
    for i in (1..parts.len()).rev() {
        parts.swap(i, g.below(i + 1));
    }
    let sep = *g.pick(&[";", " ; ", ";;"]);
    let end = *g.pick(&["", ";"]);
    let input = parts.join(sep) + end;
    let cs: ConnectionString = input.parse().unwrap_or_else(|e| panic!("{input:?}: {e}"));
    assert_eq!(cs.connected_registry_name, name);
    assert_eq!(cs.sync_token_name, token);
    assert_eq!(cs.sync_token_password, password);
    assert_eq!(cs.parent_gateway_endpoint, endpoint);
    let expected = if protocol.eq_ignore_ascii_case("https") {
        ParentProtocol::Https
    } else {
        ParentProtocol::Http
    };
    assert_eq!(cs.parent_endpoint_protocol, expected);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_connection_string() {
        let seeds: [&[u8]; 3] = [
            b"\x01ConnectedRegistryName=edge;SyncTokenName=tok;SyncTokenPassword=s3cr3t=Pw==;ParentGatewayEndpoint=reg.azurecr.io;ParentEndpointProtocol=https",
            b"\x01ConnectedRegistryName=e;SyncTokenName=t;SyncTokenPassword=p;ParentGatewayEndpoint=$IOTEDGE_PARENTHOSTNAME:8000;ParentEndpointProtocol=http;",
            b"\x00\x05abc\x04tok\x03pwd\x06host:1\x01",
        ];
        fuzzkit::run("connection_string::parse", &seeds, connection_string);
    }
}
