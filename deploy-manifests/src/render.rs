//! Fill `${VAR}` placeholders in a deployment template from an env file, and refuse to
//! produce a manifest while any placeholder is left unfilled.

use std::collections::BTreeMap;

/// Why rendering failed; each variant says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("env file line {line}: {problem}")]
    EnvFile { line: usize, problem: String },
    #[error("{} placeholder(s) have no value in the env file: {}; add `NAME=value` lines for them", .0.len(), .0.iter().map(|u| format!("{} at line {} column {}", u.name, u.line, u.column)).collect::<Vec<_>>().join(", "))]
    Unfilled(Vec<Unfilled>),
    #[error("template line {line} column {column}: `${{` starts a placeholder that is not closed or has an invalid name (use `${{NAME}}`, NAME of letters, digits, `_` and `.`)")]
    BadPlaceholder { line: usize, column: usize },
    #[error("the rendered manifest is not valid JSON at line {line} column {column}: {message}")]
    NotJson {
        line: usize,
        column: usize,
        message: String,
    },
}

/// A placeholder without a value, and where it is in the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfilled {
    pub name: String,
    pub line: usize,
    pub column: usize,
}

/// Parses a `.env`-style file: `NAME=value` lines, `#` comments, blank lines, an optional
/// `export ` prefix, and values optionally wrapped in single or double quotes.
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, RenderError> {
    let mut vars = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err(RenderError::EnvFile {
                line: i + 1,
                problem: "expected `NAME=value`".into(),
            });
        };
        let name = name.trim();
        if !valid_name(name) {
            return Err(RenderError::EnvFile {
                line: i + 1,
                problem: format!("`{name}` is not a valid name (letters, digits, `_` and `.`, not starting with a digit)"),
            });
        }
        let value = value.trim();
        let value = if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            &value[1..value.len() - 1]
        } else {
            value
        };
        vars.insert(name.to_string(), value.to_string());
    }
    Ok(vars)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

fn json_escape(value: &str) -> String {
    let quoted = serde_json::to_string(value).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_string()
}

/// `<NAME>` at the start of `s`, NAME being upper-case letters, digits and `_` (the shipped
/// manifests' placeholders), or `None`.
fn bracket_name(s: &str) -> Option<&str> {
    let end = s.find('>')?;
    let name = &s[1..end];
    let mut chars = name.chars();
    (matches!(chars.next(), Some(c) if c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
    .then_some(name)
}

#[allow(clippy::too_many_arguments)]
fn fill(
    out: &mut String,
    unfilled: &mut Vec<Unfilled>,
    name: &str,
    vars: &BTreeMap<String, String>,
    in_string: bool,
    line: usize,
    column: usize,
) {
    match vars.get(name) {
        Some(v) if in_string => out.push_str(&json_escape(v)),
        Some(v) => out.push_str(v),
        None => unfilled.push(Unfilled {
            name: name.to_string(),
            line,
            column,
        }),
    }
}

/// Replaces every `${NAME}` and `<NAME>` (upper case, as in the shipped manifests) with its value. Inside a JSON string the value is JSON-escaped
/// so a password with `"` or `\` cannot break the manifest. Fails listing every unfilled
/// placeholder, and fails if the result is not valid JSON.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> Result<String, RenderError> {
    let template = template.strip_prefix('\u{feff}').unwrap_or(template);
    let mut out = String::with_capacity(template.len());
    let mut unfilled = Vec::new();
    let (mut line, mut column) = (1usize, 1usize);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if c == '$' && rest[1..].starts_with('{') && !escaped {
            let Some(end) = rest.find('}') else {
                return Err(RenderError::BadPlaceholder { line, column });
            };
            let name = &rest[2..end];
            if !valid_name(name) {
                return Err(RenderError::BadPlaceholder { line, column });
            }
            fill(&mut out, &mut unfilled, name, vars, in_string, line, column);
            column += end + 1;
            rest = &rest[end + 1..];
            continue;
        }
        if c == '<' {
            if let Some(name) = bracket_name(rest) {
                fill(&mut out, &mut unfilled, name, vars, in_string, line, column);
                column += name.len() + 2;
                rest = &rest[name.len() + 2..];
                continue;
            }
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if !unfilled.is_empty() {
        return Err(RenderError::Unfilled(unfilled));
    }
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&out) {
        return Err(RenderError::NotJson {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fills_and_escapes_inside_strings() {
        let t = "{\"a\": \"${PW}\", \"n\": ${N}}";
        let out = render(t, &vars(&[("PW", "p\"w\\d"), ("N", "42")])).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["a"], "p\"w\\d");
        assert_eq!(v["n"], 42);
    }

    #[test]
    fn lists_every_unfilled_placeholder_with_position() {
        let t = "{\n  \"a\": \"${A}\",\n  \"b\": \"${B}\"\n}";
        match render(t, &vars(&[])) {
            Err(RenderError::Unfilled(u)) => {
                assert_eq!(u.len(), 2);
                assert_eq!((u[0].name.as_str(), u[0].line, u[0].column), ("A", 2, 9));
                assert_eq!((u[1].name.as_str(), u[1].line), ("B", 3));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fills_bracket_placeholders_but_leaves_other_angle_brackets() {
        let t =
            "{\"a\": \"<HOST_DIR>:/data\", \"r\": \"WHERE t < 30 AND x<y>\", \"u\": \"$upstream\"}";
        let out = render(t, &vars(&[("HOST_DIR", "/srv/data")])).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["a"], "/srv/data:/data");
        assert_eq!(v["r"], "WHERE t < 30 AND x<y>");
        assert_eq!(v["u"], "$upstream");
        assert!(
            matches!(render(t, &vars(&[])), Err(RenderError::Unfilled(u)) if u[0].name == "HOST_DIR")
        );
    }

    #[test]
    fn env_file_forms() {
        let v = parse_env_file("# comment\n\nA=1\nexport B = \"two words\"\nC='x=y'\n").unwrap();
        assert_eq!(v["A"], "1");
        assert_eq!(v["B"], "two words");
        assert_eq!(v["C"], "x=y");
        assert!(matches!(
            parse_env_file("A=1\nnot a line\n"),
            Err(RenderError::EnvFile { line: 2, .. })
        ));
    }

    #[test]
    fn unclosed_placeholder_and_bad_json_are_errors() {
        assert!(matches!(
            render("{\"a\": \"${A\"}", &vars(&[])),
            Err(RenderError::BadPlaceholder { line: 1, .. })
        ));
        assert!(matches!(
            render("{\"a\": ${A}}", &vars(&[("A", "not json")])),
            Err(RenderError::NotJson { .. })
        ));
    }
}
