//! A small, strict XML reader for the few response bodies of the Blob service the store reads
//! (List Blobs, Get Block List, an error's code and message): elements, attributes (skipped),
//! text with the five predefined entities and character references. Anything else (comments,
//! CDATA, a document type, mismatched or unclosed tags) is refused with an error saying where,
//! never a panic; the caller names the operation.

/// An element: its name, its child elements in order, and its text (the concatenation of its
/// own text pieces, unescaped).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Element {
    pub(crate) name: String,
    pub(crate) children: Vec<Element>,
    pub(crate) text: String,
}

impl Element {
    /// The first child named `name`.
    pub(crate) fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The children named `name`.
    pub(crate) fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the first child named `name`.
    pub(crate) fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }
}

/// The most nested elements a document may have (Azure's go four deep).
const MAX_DEPTH: usize = 32;

/// Parses `body` into its root element.
pub(crate) fn parse(body: &str) -> Result<Element, String> {
    let mut rest = body.trim_start_matches('\u{feff}').trim_start();
    if let Some(after) = rest.strip_prefix("<?xml") {
        let end = after
            .find("?>")
            .ok_or("the XML declaration is not closed")?;
        rest = after[end + 2..].trim_start();
    }
    // The open elements; the root is the first.
    let mut open: Vec<Element> = Vec::new();
    let mut root = None;
    while !rest.is_empty() {
        if root.is_some() {
            if rest.trim().is_empty() {
                break;
            }
            return Err("content after the root element".into());
        }
        let Some(tag_start) = rest.find('<') else {
            return Err("text outside the root element".into());
        };
        let (text, after) = rest.split_at(tag_start);
        match open.last_mut() {
            Some(element) => element.text.push_str(&unescape(text)?),
            None if text.trim().is_empty() => {}
            None => return Err("text before the root element".into()),
        }
        let end = after
            .find('>')
            .ok_or_else(|| format!("a tag is not closed: {}", preview(after)))?;
        let tag = &after[1..end];
        rest = &after[end + 1..];
        if tag.starts_with('!') || tag.starts_with('?') {
            return Err(format!(
                "unsupported markup (comment, CDATA, declaration): {}",
                preview(after)
            ));
        }
        if let Some(name) = tag.strip_prefix('/') {
            let element = open
                .pop()
                .ok_or_else(|| format!("closing tag </{name}> without an opening one"))?;
            if element.name != name.trim() {
                return Err(format!("<{}> closed by </{}>", element.name, name.trim()));
            }
            match open.last_mut() {
                Some(parent) => parent.children.push(element),
                None => root = Some(element),
            }
            continue;
        }
        let (tag, empty) = match tag.strip_suffix('/') {
            Some(tag) => (tag, true),
            None => (tag, false),
        };
        let name = tag.split_ascii_whitespace().next().unwrap_or("");
        let well_formed = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !well_formed {
            return Err(format!("not an element name: <{}>", preview(tag)));
        }
        let element = Element {
            name: name.to_owned(),
            ..Element::default()
        };
        if empty {
            match open.last_mut() {
                Some(parent) => parent.children.push(element),
                None => root = Some(element),
            }
        } else {
            if open.len() >= MAX_DEPTH {
                return Err(format!("elements nested deeper than {MAX_DEPTH}"));
            }
            open.push(element);
        }
    }
    if let Some(element) = open.last() {
        return Err(format!("<{}> is not closed (the body ends)", element.name));
    }
    root.ok_or_else(|| "no root element (an empty body)".into())
}

/// The text with its entity and character references replaced.
fn unescape(text: &str) -> Result<String, String> {
    if !text.contains('&') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after
            .find(';')
            .filter(|&end| end <= 10)
            .ok_or_else(|| format!("an unterminated reference: &{}", preview(after)))?;
        let name = &after[..end];
        let c = match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => name
                .strip_prefix("#x")
                .map(|hex| u32::from_str_radix(hex, 16))
                .or_else(|| name.strip_prefix('#').map(str::parse::<u32>))
                .and_then(Result::ok)
                .and_then(char::from_u32)
                .ok_or_else(|| format!("an unknown reference: &{name};"))?,
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The start of `text`, for an error.
fn preview(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_elements_attributes_and_entities() {
        let doc = parse(
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<A x=\"1\"><B>a &amp; b &lt;&gt;&quot;&apos;&#65;&#x42;</B><C/><C >two</C></A>",
        )
        .unwrap();
        assert_eq!(doc.name, "A");
        assert_eq!(doc.text_of("B"), Some("a & b <>\"'AB"));
        assert_eq!(doc.children("C").count(), 2);
        assert_eq!(doc.children("C").nth(1).unwrap().text, "two");
    }

    #[test]
    fn refuses_what_it_does_not_read() {
        for bad in [
            "",
            "   ",
            "<A>",
            "<A></B>",
            "</A>",
            "<A><!-- c --></A>",
            "<A><![CDATA[x]]></A>",
            "<!DOCTYPE a><A/>",
            "<A>&nbsp;</A>",
            "<A>&amp</A>",
            "<A/><B/>",
            "text",
            "<A><B",
            "<>",
            "<A>&#xD800;</A>",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let nested = |depth: usize| format!("{}{}", "<A>".repeat(depth), "</A>".repeat(depth));
        assert!(parse(&nested(MAX_DEPTH)).is_ok());
        let err = parse(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert!(err.contains("nested deeper than 32"), "{err}");
    }
}
