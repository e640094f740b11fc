//! The broken-manifest corpus: each file must give exactly the findings `expected.json`
//! lists (severity, rule, path, and line/column for syntax errors), and nothing else; the
//! shipped manifests must give none.

use std::path::PathBuf;

use deploy_manifests::{check, CheckSettings, SHIPPED};
use serde_json::Value;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn expected() -> serde_json::Map<String, Value> {
    let text =
        std::fs::read_to_string(corpus_dir().join("expected.json")).expect("read expected.json");
    serde_json::from_str::<Value>(&text)
        .expect("parse expected.json")
        .as_object()
        .expect("object")
        .clone()
}

#[test]
fn shipped_manifests_have_no_findings() {
    for (name, text) in SHIPPED {
        let report = check(text, &CheckSettings::default());
        assert!(report.findings.is_empty(), "{name}: {:#?}", report.findings);
        assert_eq!(report.exit_code(), 0);
        let size = report.twin_size.expect("twin size reported");
        assert!(
            size.bytes > 0 && size.bytes < size.limit,
            "{name}: {size:?}"
        );
    }
}

#[test]
fn every_corpus_file_gives_exactly_its_expected_findings() {
    let expected = expected();
    let mut files: Vec<String> = std::fs::read_dir(corpus_dir())
        .expect("list corpus")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".json") && n != "expected.json")
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        expected.len(),
        "every corpus file has an expectation and the reverse"
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(corpus_dir().join(file)).expect("read corpus file");
        let report = check(&text, &CheckSettings::default());
        let got: Vec<Value> = report
            .findings
            .iter()
            .map(|f| {
                let mut v =
                    serde_json::json!({ "severity": f.severity, "rule": f.rule, "path": f.path });
                if let (Some(l), Some(c)) = (f.line, f.column) {
                    v["line"] = l.into();
                    v["column"] = c.into();
                }
                v
            })
            .collect();
        let want = expected
            .get(file)
            .unwrap_or_else(|| panic!("{file} has no entry in expected.json"));
        if &Value::Array(got.clone()) != want {
            failures.push(format!(
                "{file}:\n  want {want}\n  got  {}",
                Value::Array(got)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_rule_in_the_readme_has_a_corpus_file() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .expect("read README");
    let expected = expected();
    let flagged: Vec<&str> = expected
        .values()
        .flat_map(|v| v.as_array().unwrap())
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    // Rules are listed in the README table as | `rule-id` | severity | ...
    let section = readme
        .split("## The rules")
        .nth(1)
        .expect("README has `## The rules`");
    let section = section.split("\n### ").next().unwrap_or(section);
    let rules: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(rule, _)| rule)
        .collect();
    assert!(rules.len() >= 25, "README rule table not found: {rules:?}");
    for rule in rules {
        assert!(flagged.contains(&rule), "rule `{rule}` has no corpus file");
    }
}

#[test]
fn every_rule_the_checker_emits_is_documented() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .expect("read README");
    let source =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/check.rs"))
            .expect("read check.rs");
    // Rule ids are the first string argument of c.error / c.warn / c.push / rule: fields.
    let mut emitted = Vec::new();
    for marker in [
        "c.error(",
        "c.warn(",
        "Severity::Info,",
        "Severity::Warning,",
        "Severity::Error,",
        "rule:",
    ] {
        for piece in source.split(marker).skip(1) {
            // The id is the next string literal, possibly on the next line after `cargo fmt`.
            if let Some((rule, _)) = piece
                .trim_start()
                .strip_prefix('"')
                .and_then(|p| p.split_once('"'))
            {
                if !rule.is_empty() && rule.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                    emitted.push(rule.to_string());
                }
            }
        }
    }
    assert!(emitted.len() > 25, "rule ids not found in check.rs");
    for rule in emitted {
        assert!(
            readme.contains(&format!("| `{rule}` |")),
            "rule `{rule}` is emitted but not in the README rule table"
        );
    }
}

#[test]
fn every_placeholder_in_the_shipped_manifests_is_documented() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .expect("read README");
    for (name, text) in SHIPPED {
        for piece in text.split('<').skip(1) {
            let Some((placeholder, _)) = piece.split_once('>') else {
                continue;
            };
            assert!(
                placeholder
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_'),
                "{name}: `<{placeholder}>` is not an <UPPER_CASE> placeholder"
            );
            assert!(
                readme.contains(&format!("`<{placeholder}>`")),
                "{name}: `<{placeholder}>` is not documented in README.md"
            );
        }
    }
}

#[test]
fn a_manifest_cut_anywhere_is_one_syntax_error_with_a_position() {
    let (_, text) = SHIPPED[0];
    for cut in (0..text.len() - 1).step_by(7) {
        let report = check(&text[..cut], &CheckSettings::default());
        assert_eq!(
            report.findings.len(),
            1,
            "cut at {cut}: {:?}",
            report.findings
        );
        let f = &report.findings[0];
        assert_eq!(f.rule, "json-syntax", "cut at {cut}");
        let want_line = text[..cut].matches('\n').count() + 1;
        assert_eq!(f.line, Some(want_line), "cut at {cut}: {f:?}");
        assert!(f.column.is_some());
        assert_eq!(report.exit_code(), 2);
    }
}

/// The lower-layer manifest as it shipped before it bound the parent's root CA into the
/// connected-registry module: its sync could never verify the parent's API proxy
/// (`invalid peer certificate: UnknownIssuer`), and the checker says so, with the fix.
#[test]
fn lower_layer_without_a_trust_bundle_for_its_parent_is_an_error() {
    let (_, text) = SHIPPED
        .iter()
        .find(|(name, _)| *name == "lower-layer.json")
        .expect("lower-layer.json is shipped");
    let old = text
        .replace(r#",\"--trust\",\"/certs/parent-root-ca.pem\""#, "")
        .replace(
            r#",\"<PROXY_CERT_DIR>/root-ca.pem:/certs/parent-root-ca.pem:ro\""#,
            "",
        );
    assert_ne!(
        &old, text,
        "the shipped manifest changed shape; update this test"
    );
    let report = check(&old, &CheckSettings::default());
    let rules: Vec<_> = report.findings.iter().map(|f| f.rule).collect();
    assert_eq!(rules, ["parent-trust"], "{:#?}", report.findings);
    let finding = &report.findings[0];
    assert_eq!(finding.severity, deploy_manifests::Severity::Error);
    assert!(
        finding
            .path
            .ends_with("connectedRegistry/settings/createOptions#/Cmd")
            && finding.message.contains("UnknownIssuer")
            && finding.fix.contains("--trust"),
        "{finding:#?}"
    );
}
