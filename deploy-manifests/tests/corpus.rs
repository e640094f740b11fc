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
    let text = std::fs::read_to_string(corpus_dir().join("expected.json")).expect("read expected.json");
    serde_json::from_str::<Value>(&text).expect("parse expected.json").as_object().expect("object").clone()
}

#[test]
fn shipped_manifests_have_no_findings() {
    for (name, text) in SHIPPED {
        let report = check(text, &CheckSettings::default());
        assert!(report.findings.is_empty(), "{name}: {:#?}", report.findings);
        assert_eq!(report.exit_code(), 0);
        let size = report.twin_size.expect("twin size reported");
        assert!(size.bytes > 0 && size.bytes < size.limit, "{name}: {size:?}");
    }
}

#[test]
fn every_corpus_file_gives_exactly_its_expected_findings() {
    let expected = expected();
    let mut files: Vec<String> = std::fs::read_dir(corpus_dir())
        .expect("list corpus")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && n != "expected.json")
        .collect();
    files.sort();
    assert_eq!(files.len(), expected.len(), "every corpus file has an expectation and the reverse");
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(corpus_dir().join(file)).expect("read corpus file");
        let report = check(&text, &CheckSettings::default());
        let got: Vec<Value> = report
            .findings
            .iter()
            .map(|f| {
                let mut v = serde_json::json!({ "severity": f.severity, "rule": f.rule, "path": f.path });
                if let (Some(l), Some(c)) = (f.line, f.column) {
                    v["line"] = l.into();
                    v["column"] = c.into();
                }
                v
            })
            .collect();
        let want = expected.get(file).unwrap_or_else(|| panic!("{file} has no entry in expected.json"));
        if &Value::Array(got.clone()) != want {
            failures.push(format!("{file}:\n  want {want}\n  got  {}", Value::Array(got)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_rule_in_the_readme_has_a_corpus_file() {
    let readme = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("read README");
    let expected = expected();
    let flagged: Vec<&str> = expected.values().flat_map(|v| v.as_array().unwrap()).map(|f| f["rule"].as_str().unwrap()).collect();
    // Rules are listed in the README table as | `rule-id` | severity | ...
    let rules: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(rule, _)| rule)
        .filter(|r| r.contains('-'))
        .collect();
    assert!(rules.len() >= 25, "README rule table not found: {rules:?}");
    for rule in rules {
        assert!(flagged.contains(&rule), "rule `{rule}` has no corpus file");
    }
}
