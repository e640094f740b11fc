//! One error with its causes on one line, `outer: cause: root cause`, for logs and messages:
//! a client library's top error often says only what failed ("error sending request"), its
//! sources say why ("Connection refused").

use std::error::Error;

/// `err` followed by each of its sources, separated by `: `. A source whose text the line
/// already ends with is not repeated: many errors print their source in their own message
/// (`connect to 10.0.0.4:8080: Connection refused`), and their source then adds nothing.
pub fn error_chain(err: &dyn Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    /// An error with a message and an optional source, as client libraries nest them.
    #[derive(Debug)]
    struct Nested(String, Option<Box<Nested>>);

    impl fmt::Display for Nested {
        fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl Error for Nested {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    fn nested(texts: &[&str]) -> Nested {
        let (first, rest) = texts.split_first().unwrap();
        Nested(
            first.to_string(),
            (!rest.is_empty()).then(|| Box::new(nested(rest))),
        )
    }

    #[test]
    fn every_cause_in_order() {
        let e = nested(&["error sending request", "client error (Connect)", "refused"]);
        assert_eq!(
            error_chain(&e),
            "error sending request: client error (Connect): refused"
        );
        assert_eq!(error_chain(&nested(&["alone"])), "alone");
    }

    #[test]
    fn a_cause_the_line_already_ends_with_is_not_repeated() {
        let e = nested(&["connect to 10.0.0.4:8080: refused", "refused"]);
        assert_eq!(error_chain(&e), "connect to 10.0.0.4:8080: refused");
        // Only at the end: the same words inside the message are no proof it was printed.
        let e = nested(&["refused by the peer, retrying", "refused"]);
        assert_eq!(error_chain(&e), "refused by the peer, retrying: refused");
    }
}
