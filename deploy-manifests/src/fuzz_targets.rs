//! Fuzz targets for the deployment-manifest checker, each a `fn(&[u8])` that panics when a
//! property fails: the bounded runs at the bottom are part of `cargo test` (the `fuzzkit` seeded
//! driver), and `fuzz/` runs them under `cargo fuzz` (built with `--cfg fuzzing`).

use fuzzkit::{text, Gen};
use serde_json::Value;

use crate::{check, CheckSettings, SHIPPED};

/// Checks `text` and renders the report: [`check`] promises never to panic on bad input.
fn check_and_render(text: &str) {
    let report = check(text, &CheckSettings::default());
    let _ = report.to_text("fuzz.json");
    let _ = report.exit_code();
}

/// Arbitrary text, as a file would hold it.
pub fn check_text(data: &[u8]) {
    check_and_render(&text(data));
}

/// A shipped manifest with its JSON changed in a few places: a value replaced by another of
/// any type, a key removed or renamed, an array emptied; the result is checked, never a panic.
pub fn check_mutated_shipped(data: &[u8]) {
    let mut g = Gen::new(data);
    let (_, shipped) = *g.pick(&SHIPPED);
    let Ok(mut doc) = serde_json::from_str::<Value>(shipped) else {
        return check_and_render(shipped);
    };
    for _ in 0..1 + g.below(6) {
        mutate(&mut g, &mut doc);
    }
    let out = if g.bool() {
        serde_json::to_string_pretty(&doc)
    } else {
        serde_json::to_string(&doc)
    };
    check_and_render(&out.expect("a JSON value serializes"));
}

/// Walks down a random path and changes what it finds there.
fn mutate(g: &mut Gen, v: &mut Value) {
    let descend = g.below(4) != 0;
    match v {
        Value::Object(map) if descend && !map.is_empty() => {
            let key = map
                .keys()
                .nth(g.below(map.len()))
                .cloned()
                .unwrap_or_default();
            match g.below(8) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    if let Some(child) = map.remove(&key) {
                        map.insert(format!("{key}{}", g.string("$x.:_ ", 3)), child);
                    }
                }
                _ => mutate(g, map.get_mut(&key).expect("the key was just read")),
            }
        }
        Value::Array(items) if descend && !items.is_empty() => {
            let i = g.below(items.len());
            if g.below(6) == 0 {
                items.clear();
            } else {
                mutate(g, &mut items[i]);
            }
        }
        _ => *v = value(g),
    }
}

/// A value of any JSON type, the strings near what a manifest holds.
fn value(g: &mut Gen) -> Value {
    match g.below(9) {
        0 => Value::Null,
        1 => Value::Bool(g.bool()),
        2 => Value::from(g.u64()),
        3 => Value::from(-(g.below(1000) as i64)),
        4 => Value::from(f64::from(g.byte()) / 7.0),
        5 => Value::Array(vec![Value::from(g.string("abc", 3))]),
        6 => Value::Object(Default::default()),
        7 => Value::from(
            *g.pick(&[
                "",
                "${VAR}",
                "mcr.microsoft.com/acr/connected-registry:0.8.0",
                "localhost:5000/x:latest",
                "ConnectedRegistryName=a;SyncTokenName=b;SyncTokenPassword=c;ParentGatewayEndpoint=$IOTEDGE_PARENTHOSTNAME;ParentEndpointProtocol=https",
                "FROM /messages/* INTO $upstream",
                "{\"HostConfig\":{\"PortBindings\":{\"443/tcp\":[{\"HostPort\":\"443\"}]}}}",
                "{",
                "1.2",
            ]),
        ),
        _ => Value::from(g.string("abz09:/.-_${}\"\\ ;=", 40)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_check_text() {
        let seeds: Vec<&[u8]> = SHIPPED.iter().map(|(_, m)| m.as_bytes()).collect();
        fuzzkit::run("deploy_manifests::check_text", &seeds, check_text);
    }

    #[test]
    fn fuzz_check_mutated_shipped() {
        let seeds: [&[u8]; 3] = [b"\x00", b"\x01", b"\x02"];
        fuzzkit::run(
            "deploy_manifests::check_mutated_shipped",
            &seeds,
            check_mutated_shipped,
        );
    }
}
