//! Find keys that appear twice in one JSON object. JSON parsers keep only the last one, so
//! a module or env variable declared twice silently loses its first definition.

/// A repeated key: JSON Pointer to it, and the 1-based line and column of the repeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateKey {
    pub path: String,
    pub key: String,
    pub line: usize,
    pub column: usize,
}

struct Scanner<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
    found: Vec<DuplicateKey>,
}

impl Scanner<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.bytes.len() && self.bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    /// Returns the raw string token (with quotes) starting at `pos`.
    fn string(&mut self) -> Option<&str> {
        let start = self.pos;
        if self.bytes.get(self.pos) != Some(&b'"') {
            return None;
        }
        self.pos += 1;
        while self.pos < self.bytes.len() {
            match self.bytes[self.pos] {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    return self.text.get(start..self.pos);
                }
                _ => self.pos += 1,
            }
        }
        None
    }

    fn position(&self, at: usize) -> (usize, usize) {
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rfind('\n')
            .map(|i| before[i + 1..].chars().count())
            .unwrap_or(before.chars().count())
            + 1;
        (line, column)
    }

    fn value(&mut self, path: &str) -> Option<()> {
        self.skip_ws();
        match *self.bytes.get(self.pos)? {
            b'{' => {
                self.pos += 1;
                let mut seen: Vec<String> = Vec::new();
                loop {
                    self.skip_ws();
                    if self.bytes.get(self.pos)? == &b'}' {
                        self.pos += 1;
                        return Some(());
                    }
                    let key_at = self.pos;
                    let raw = self.string()?;
                    let key: String = serde_json::from_str(raw).ok()?;
                    let child = format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"));
                    if seen.contains(&key) {
                        let (line, column) = self.position(key_at);
                        self.found.push(DuplicateKey {
                            path: child.clone(),
                            key: key.clone(),
                            line,
                            column,
                        });
                    } else {
                        seen.push(key);
                    }
                    self.skip_ws();
                    if self.bytes.get(self.pos)? != &b':' {
                        return None;
                    }
                    self.pos += 1;
                    self.value(&child)?;
                    self.skip_ws();
                    if self.bytes.get(self.pos)? == &b',' {
                        self.pos += 1;
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                let mut index = 0usize;
                loop {
                    self.skip_ws();
                    if self.bytes.get(self.pos)? == &b']' {
                        self.pos += 1;
                        return Some(());
                    }
                    self.value(&format!("{path}/{index}"))?;
                    index += 1;
                    self.skip_ws();
                    if self.bytes.get(self.pos)? == &b',' {
                        self.pos += 1;
                    }
                }
            }
            b'"' => self.string().map(|_| ()),
            _ => {
                while self.pos < self.bytes.len()
                    && !matches!(self.bytes[self.pos], b',' | b'}' | b']')
                    && !self.bytes[self.pos].is_ascii_whitespace()
                {
                    self.pos += 1;
                }
                Some(())
            }
        }
    }
}

/// Lists every repeated key in `text`, which must already be known to be valid JSON.
pub fn find(text: &str) -> Vec<DuplicateKey> {
    let mut s = Scanner {
        bytes: text.as_bytes(),
        text,
        pos: 0,
        found: Vec::new(),
    };
    let _ = s.value("");
    s.found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_repeated_keys_with_path_and_position() {
        let text = "{\"a\": {\"m\": 1,\n  \"m\": [ {\"x\": \"\\\"}\", \"x\": 2} ]}, \"b/c\": 1, \"b/c\": 2}";
        let found = find(text);
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(
            found[0],
            DuplicateKey {
                path: "/a/m".into(),
                key: "m".into(),
                line: 2,
                column: 3
            }
        );
        assert_eq!(found[1].path, "/a/m/0/x");
        assert_eq!(found[2].path, "/b~1c");
    }

    #[test]
    fn no_duplicates_in_ordinary_json() {
        assert!(find("{\"a\": [1, 2, {\"a\": true}], \"b\": null}").is_empty());
    }
}
