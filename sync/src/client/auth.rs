//! Authentication with the parent: anonymous, Basic (after the parent's `Basic` challenge) or
//! the Docker bearer-token flow (a token per scope, cached until 90% of its lifetime, fetched
//! again on a 401).

use super::*;

#[derive(Clone)]
pub(super) struct CachedToken {
    token: String,
    expires: Instant,
}

/// Parses `Scheme k="v",k2=v2` (values may hold commas inside quotes).
pub(super) fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    (scheme.to_owned(), params)
}

impl ParentClient {
    /// Adds what the parent asked for so far; says what was sent, so a 401 can tell a
    /// refused credential from a token someone else already refreshed.
    pub(super) fn authorize(&self, rb: RequestBuilder, scope: &Scope) -> (RequestBuilder, Sent) {
        let cached = self
            .tokens
            .lock()
            .ok()
            .and_then(|t| t.get(scope).cloned())
            .filter(|t| t.expires > Instant::now());
        if let Some(t) = cached {
            let sent = Sent::Bearer(t.token.clone());
            return (rb.bearer_auth(t.token), sent);
        }
        match &self.creds {
            Some(c) if self.basic.load(Ordering::Relaxed) => {
                (rb.basic_auth(&c.username, Some(&c.password)), Sent::Basic)
            }
            _ => (rb, Sent::Nothing),
        }
    }

    /// Handles a 401 for a request that carried `sent`. Concurrent 401s are answered once:
    /// whoever comes second finds the refreshed token (or Basic switched on) and just retries.
    pub(super) async fn refresh(
        &self,
        url: &str,
        headers: &HeaderMap,
        scope: &Scope,
        sent: &Sent,
    ) -> Result<(), ClientError> {
        let _one_at_a_time = self.refresh_lock.lock().await;
        let current = self
            .tokens
            .lock()
            .ok()
            .and_then(|t| t.get(scope).cloned())
            .filter(|t| t.expires > Instant::now());
        match (sent, &current) {
            (Sent::Bearer(old), Some(now)) if &now.token != old => return Ok(()),
            (Sent::Nothing, Some(_)) => return Ok(()),
            (Sent::Nothing, None) if self.basic.load(Ordering::Relaxed) => return Ok(()),
            _ => {}
        }
        // The token sent may have been revoked or expired early: drop it.
        if let Ok(mut t) = self.tokens.lock() {
            t.remove(scope);
        }
        self.answer_challenge(url, headers, scope, sent).await
    }

    /// Answers a 401 challenge: Basic switches to sending credentials; Bearer fetches a token
    /// from the realm and caches it until it expires.
    pub(super) async fn answer_challenge(
        &self,
        url: &str,
        headers: &HeaderMap,
        scope: &Scope,
        sent: &Sent,
    ) -> Result<(), ClientError> {
        let auth_err = |message: String| ClientError::Auth {
            url: url.to_owned(),
            message,
        };
        let challenge = headers
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| auth_err("HTTP 401 without a WWW-Authenticate challenge".into()))?;
        let (kind, params) = parse_challenge(challenge);
        match kind.to_ascii_lowercase().as_str() {
            "basic" => {
                if self.creds.is_none() {
                    return Err(auth_err(
                        "the parent asks for Basic credentials; give --creds NAME:PASSWORD or a connection string".into(),
                    ));
                }
                if *sent == Sent::Basic {
                    return Err(auth_err(
                        "the parent refused the credentials (Basic)".into(),
                    ));
                }
                self.basic.store(true, Ordering::Relaxed);
                Ok(())
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| auth_err("Bearer challenge without realm".into()))?;
                let token_scope = params
                    .get("scope")
                    .cloned()
                    .map(|challenged| scope.with_challenge(challenged))
                    .unwrap_or_else(|| scope.as_token_scope());
                let mut query: Vec<(&str, String)> = vec![("scope", token_scope)];
                if let Some(service) = params.get("service") {
                    query.push(("service", service.clone()));
                }
                let mut rb = self
                    .http
                    .get(realm)
                    .query(&query)
                    .timeout(self.limits.request_timeout);
                if let Some(c) = &self.creds {
                    rb = rb
                        .basic_auth(&c.username, Some(&c.password))
                        .query(&[("account", c.username.as_str())]);
                }
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                let resp = rb.send().await.map_err(|e| ClientError::Transport {
                    url: realm.clone(),
                    message: format!("token service: {}", error_chain(&e)),
                })?;
                if !resp.status().is_success() {
                    return Err(auth_err(format!(
                        "token service {realm} answered HTTP {} (check the sync token name and password)",
                        resp.status().as_u16()
                    )));
                }
                #[derive(serde::Deserialize)]
                struct TokenResponse {
                    token: Option<String>,
                    access_token: Option<String>,
                    expires_in: Option<u64>,
                }
                let body: TokenResponse = resp
                    .json()
                    .await
                    .map_err(|e| auth_err(format!("token service {realm}: bad JSON: {e}")))?;
                let token = body
                    .token
                    .or(body.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        auth_err(format!("token service {realm}: no token in the answer"))
                    })?;
                // The spec's default lifetime is 60 s; refresh a little early.
                let life = Duration::from_secs(body.expires_in.unwrap_or(60).max(10));
                let expires = Instant::now() + life.mul_f32(0.9);
                if let Ok(mut t) = self.tokens.lock() {
                    t.insert(scope.clone(), CachedToken { token, expires });
                }
                Ok(())
            }
            other => Err(auth_err(format!("unsupported auth scheme {other:?}"))),
        }
    }
}

/// Fuzz target for [`parse_challenge`] (bounded run below; `fuzz/` under `cargo fuzz`): any
/// header a parent sends parses without a panic, and a challenge written by the rules (quoted
/// values escaped) reads back to its scheme and parameters.
#[cfg(any(test, fuzzing))]
pub fn fuzz_parse_challenge(data: &[u8]) {
    let mut g = fuzzkit::Gen::new(data);
    if g.bool() {
        let _ = parse_challenge(&fuzzkit::text(g.rest()));
        return;
    }
    let scheme = g.pick(&["Bearer", "Basic", "Digest", "X"]).to_string();
    let mut params = HashMap::new();
    for _ in 0..g.below(5) {
        let key = format!("k{}", g.string("abz_-", 6));
        let value = g.string("az09:/,= \"\\\t.é", 20).trim().to_owned();
        params.insert(key, value);
    }
    let written: Vec<String> = params
        .iter()
        .map(|(k, v)| {
            let bare = !v.is_empty() && !v.contains([',', '"', '\\', ' ', '\t']);
            if bare && g.bool() {
                format!("{k}={v}")
            } else {
                format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
            }
        })
        .collect();
    let sep = *g.pick(&[",", ", ", " ,", ",,"]);
    let header = format!("{scheme} {}", written.join(sep));
    assert_eq!(parse_challenge(&header), (scheme, params), "{header:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_parse_challenge_bounded() {
        let seeds: [&[u8]; 3] = [
            b"\x01Bearer realm=\"https://auth.example/token\",service=\"reg\",scope=\"repository:a/b:pull,push\"",
            b"\x01Basic realm=\"x\"",
            b"\x00\x00\x02\x00\x03abc\x05\x01\x02\x03\x04\x05",
        ];
        fuzzkit::run("sync::parse_challenge", &seeds, fuzz_parse_challenge);
    }

    #[test]
    fn challenge() {
        let (k, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(k, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (k, p) = parse_challenge(r#"Basic realm="x""#);
        assert_eq!(k, "Basic");
        assert_eq!(p["realm"], "x");
    }
}
