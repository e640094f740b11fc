//! What the checker reports: findings with a severity, a JSON path, the rule and a fix.

use serde::Serialize;

/// How bad a finding is. Ordered: `Info < Warning < Error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Advice; does not change the exit status.
    Info,
    /// Works, but not what production wants; exit status 1.
    Warning,
    /// Will fail to deploy or fail in the field; exit status 2.
    Error,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One problem found in a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The rule's id, as listed in the crate README (e.g. `port-conflict`).
    pub rule: &'static str,
    /// JSON Pointer (RFC 6901) to the offending value. Inside a `createOptions` string the
    /// pointer continues after `#` into the string's own JSON, e.g.
    /// `/modulesContent/$edgeAgent/properties.desired/modules/x/settings/createOptions#/HostConfig/Privileged`.
    pub path: String,
    pub message: String,
    /// How to fix it.
    pub fix: String,
    /// 1-based line and column, for syntax errors in the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

/// How big the `$edgeAgent` desired properties are against IoT Hub's module-twin limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TwinSize {
    /// Size as IoT Hub counts it (keys and string values in UTF-8 bytes, numbers 8, booleans 4).
    pub bytes: usize,
    pub limit: usize,
}

impl TwinSize {
    pub fn percent(&self) -> usize {
        if self.limit == 0 {
            return 100;
        }
        self.bytes * 100 / self.limit
    }
}

/// Everything the checker found in one file.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Absent when the file is not valid JSON or has no `$edgeAgent` desired properties.
    #[serde(rename = "edgeAgentTwinSize", skip_serializing_if = "Option::is_none")]
    pub twin_size: Option<TwinSize>,
    /// True when the file holds `${VAR}` placeholders (a deployment template).
    pub template: bool,
}

impl Report {
    pub fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }

    /// 0 clean (infos allowed), 1 warnings only, 2 any error.
    pub fn exit_code(&self) -> u8 {
        match self.findings.iter().map(|f| f.severity).max() {
            Some(Severity::Error) => 2,
            Some(Severity::Warning) => 1,
            _ => 0,
        }
    }

    /// Human-readable report, one finding per block, then a summary line.
    pub fn to_text(&self, file: &str) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let at = match (f.line, f.column) {
                (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
                _ => file.to_string(),
            };
            let path = if f.path.is_empty() {
                String::new()
            } else {
                format!(" {}", f.path)
            };
            out.push_str(&format!(
                "{}[{}] {at}{path}\n  {}\n  fix: {}\n",
                f.severity, f.rule, f.message, f.fix
            ));
        }
        if let Some(size) = self.twin_size {
            out.push_str(&format!(
                "$edgeAgent desired properties: {} of {} bytes ({}% of the module-twin limit)\n",
                size.bytes,
                size.limit,
                size.percent()
            ));
        }
        out.push_str(&format!(
            "{}: {} error(s), {} warning(s), {} info(s)\n",
            file,
            self.count(Severity::Error),
            self.count(Severity::Warning),
            self.count(Severity::Info)
        ));
        out
    }
}
