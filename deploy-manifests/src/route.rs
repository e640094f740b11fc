//! Parse IoT Edge hub routes (`FROM <source> [WHERE <condition>] INTO <sink>`) far enough
//! to tell a malformed route and to find the modules it names.

/// What a route names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The module in `FROM /messages/modules/<m>/...`, if any.
    pub source_module: Option<String>,
    /// The module in `INTO BrokeredEndpoint("/modules/<m>/inputs/<i>")`, or `None` for `$upstream`.
    pub sink_module: Option<String>,
}

fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .to_ascii_lowercase()
        .find(&needle.to_ascii_lowercase())
}

fn rfind_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .to_ascii_lowercase()
        .rfind(&needle.to_ascii_lowercase())
}

fn module_name_ok(m: &str) -> bool {
    !m.is_empty() && !m.contains(['/', '"', ' ', '*'])
}

/// Parses one route; the error says what is wrong in words an operator can act on.
pub fn parse(route: &str) -> Result<Route, String> {
    let r = route.trim();
    if !r.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("FROM ")) {
        return Err("a route starts with `FROM <source>`".into());
    }
    let into = rfind_ci(r, " INTO ").ok_or("a route needs `INTO <sink>` at the end")?;
    let middle = r[5..into].trim();
    let sink = r[into + 6..].trim();
    let (source, condition) = match middle.split_once(char::is_whitespace) {
        Some((s, rest)) => (s, Some(rest.trim())),
        None => (middle, None),
    };
    if let Some(cond) = condition {
        let where_at = find_ci(cond, "WHERE ");
        if where_at != Some(0) || cond[6..].trim().is_empty() {
            return Err(format!(
                "after the source `{source}` only `WHERE <condition>` may follow"
            ));
        }
    }
    let source_module = parse_source(source)?;
    let sink_module = parse_sink(sink)?;
    Ok(Route {
        source_module,
        sink_module,
    })
}

fn parse_source(source: &str) -> Result<Option<String>, String> {
    let lower = source.to_ascii_lowercase();
    if lower == "/*" || lower == "/messages/*" || lower == "/twinchangenotifications" {
        return Ok(None);
    }
    let bad = || {
        format!(
            "source `{source}` is not one of `/*`, `/messages/*`, `/messages/modules/<module>/*`, `/messages/modules/<module>/outputs/<output>` or `/outputs/*`, `/twinChangeNotifications`"
        )
    };
    if !source
        .get(..18)
        .is_some_and(|p| p.eq_ignore_ascii_case("/messages/modules/"))
    {
        return Err(bad());
    }
    let tail = &source[18..];
    let (module, after) = tail.split_once('/').ok_or_else(bad)?;
    if !module_name_ok(module) {
        return Err(bad());
    }
    let after_l = after.to_ascii_lowercase();
    let ok = after_l == "*"
        || after_l
            .strip_prefix("outputs/")
            .is_some_and(|o| !o.is_empty() && !o.contains('/'));
    if !ok {
        return Err(bad());
    }
    Ok(Some(module.to_string()))
}

fn parse_sink(sink: &str) -> Result<Option<String>, String> {
    if sink.eq_ignore_ascii_case("$upstream") {
        return Ok(None);
    }
    let bad = || {
        format!("sink `{sink}` is not `$upstream` or `BrokeredEndpoint(\"/modules/<module>/inputs/<input>\")`")
    };
    let inner = sink
        .get(..17)
        .filter(|p| p.eq_ignore_ascii_case("BrokeredEndpoint("))
        .and_then(|_| sink[17..].strip_suffix(')'))
        .ok_or_else(bad)?
        .trim();
    let path = inner
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or_else(bad)?;
    let tail = path.strip_prefix("/modules/").ok_or_else(bad)?;
    let mut parts = tail.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(inputs), Some(input), None)
            if module_name_ok(m) && inputs == "inputs" && !input.is_empty() =>
        {
            Ok(Some(m.to_string()))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_routes() {
        assert_eq!(
            parse("FROM /messages/* INTO $upstream").unwrap(),
            Route {
                source_module: None,
                sink_module: None
            }
        );
        let r = parse("FROM /messages/modules/sensor/outputs/temp WHERE temperature > 30 INTO BrokeredEndpoint(\"/modules/filter/inputs/in1\")").unwrap();
        assert_eq!(r.source_module.as_deref(), Some("sensor"));
        assert_eq!(r.sink_module.as_deref(), Some("filter"));
        assert!(parse("from /messages/modules/a/* into $UPSTREAM").is_ok());
    }

    #[test]
    fn rejects_bad_routes() {
        for bad in [
            "FROM /messages/* INTO upstream",
            "/messages/* INTO $upstream",
            "FROM /messages/* $upstream",
            "FROM /messages/modules/a INTO $upstream",
            "FROM /messages/* WHEN x INTO $upstream",
            "FROM /messages/* INTO BrokeredEndpoint(\"/modules/a/outputs/b\")",
            "FROM /messages/* INTO BrokeredEndpoint(/modules/a/inputs/b)",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
