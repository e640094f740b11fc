//! Shared Key authorization of Blob service requests: the canonical string-to-sign of the
//! Blob service (version 2009-09-19 and later), signed with HMAC-SHA256 under the account key.
//! The key is only ever an HMAC key here; neither it nor a signature is logged.

use base64::Engine;
use reqwest::header::HeaderMap;
use reqwest::Url;

/// The standard headers the string-to-sign holds, in its order (after the verb and before the
/// `x-ms-` headers). `Content-Length` is written as the body's length, empty when 0.
const SIGNED_HEADERS: [&str; 11] = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

/// What `account` signs for a request: the verb, the standard headers, the `x-ms-` headers
/// (lowercase, sorted), and the resource (`/account/path`, then each query parameter, named in
/// lowercase and sorted, with its decoded values sorted and joined by commas).
pub(crate) fn string_to_sign(
    method: &str,
    url: &Url,
    headers: &HeaderMap,
    body_len: u64,
    account: &str,
) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(method);
    out.push('\n');
    for name in SIGNED_HEADERS {
        if name == "content-length" {
            if body_len > 0 {
                out.push_str(&body_len.to_string());
            }
        } else if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            out.push_str(value);
        }
        out.push('\n');
    }
    let mut ms: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-ms-"))
        .map(|(name, value)| (name.as_str(), value.to_str().unwrap_or("")))
        .collect();
    ms.sort();
    for (name, value) in ms {
        out.push_str(name);
        out.push(':');
        out.push_str(value.trim());
        out.push('\n');
    }
    out.push('/');
    out.push_str(account);
    out.push_str(url.path());
    let mut params: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.to_lowercase(), v.into_owned()))
        .collect();
    params.sort();
    let mut last: Option<String> = None;
    for (name, value) in params {
        if last.as_deref() == Some(name.as_str()) {
            out.push(',');
        } else {
            out.push('\n');
            out.push_str(&name);
            out.push(':');
            last = Some(name);
        }
        out.push_str(&value);
    }
    out
}

/// The `Authorization` header value of `string_to_sign` for `account` with its decoded `key`.
pub(crate) fn authorization(account: &str, key: &[u8], string_to_sign: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let tag = aws_lc_rs::hmac::sign(&key, string_to_sign.as_bytes());
    format!(
        "SharedKey {account}:{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    /// A ranged, conditional read of a blob of Azurite's development account, and a write of
    /// metadata: the strings and signatures were derived once and Azurite accepted requests
    /// signed this way (`azurite_accepts_requests_signed_with_metadata_a_range_and_conditions` in
    /// `mod.rs` sends such requests).
    #[test]
    fn string_to_sign_of_a_ranged_conditional_request_with_metadata() {
        let url = Url::parse(
            "http://127.0.0.1:10000/devstoreaccount1/images/blobs/sha256/ab%20cd?comp=metadata&Timeout=30&b=2&b=1",
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-ms-version", "2022-11-02"),
            ("x-ms-date", "Wed, 02 Dec 2026 19:45:00 GMT"),
            ("x-ms-meta-touched", "1796240700"),
            ("x-ms-meta-repo", " app/web "),
            ("if-match", "\"0x8DD1234ABCD\""),
            ("range", "bytes=0-1023"),
            ("content-type", "application/octet-stream"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let signed = string_to_sign("PUT", &url, &headers, 5, "devstoreaccount1");
        assert_eq!(
            signed,
            "PUT\n\n\n5\n\napplication/octet-stream\n\n\n\"0x8DD1234ABCD\"\n\n\nbytes=0-1023\n\
             x-ms-date:Wed, 02 Dec 2026 19:45:00 GMT\n\
             x-ms-meta-repo:app/web\n\
             x-ms-meta-touched:1796240700\n\
             x-ms-version:2022-11-02\n\
             /devstoreaccount1/devstoreaccount1/images/blobs/sha256/ab%20cd\n\
             b:1,2\ncomp:metadata\ntimeout:30"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(crate::azurite::KEY)
            .unwrap();
        assert_eq!(
            authorization("devstoreaccount1", &key, &signed),
            "SharedKey devstoreaccount1:rTVOJOA9DE2db/7fcNhfBevM+ht4sHpFZB7K8QDXi6c="
        );
        // No body: Content-Length stays empty.
        assert!(string_to_sign("GET", &url, &HeaderMap::new(), 0, "a").starts_with("GET\n\n\n\n"));
    }
}
