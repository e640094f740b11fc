//! Access tokens: JWTs signed with HMAC-SHA256 by a key this registry made and keeps in its
//! data directory. Only this registry verifies them (clients treat them as opaque), so a
//! shared-secret signature is enough and costs about a microsecond per request.
//!
//! A key rotation makes a new key that signs from then on; the old one keeps verifying until
//! every token it signed has expired, so nobody is logged out by a rotation.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Who issues the tokens (`iss`).
pub const ISSUER: &str = "connected-registry";

/// A signing key.
#[derive(Clone, Serialize, Deserialize)]
pub struct SigningKey {
    /// Names the key in the token header (`kid`).
    pub kid: String,
    /// 32 random bytes, base64url.
    secret: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds when a newer key replaced it: it verifies, never signs, until the tokens
    /// it signed have expired.
    #[serde(default)]
    pub retired: Option<u64>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created", &self.created)
            .field("retired", &self.retired)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn generate(now: u64) -> SigningKey {
        let secret: [u8; 32] = rand::random();
        let id: [u8; 6] = rand::random();
        SigningKey {
            kid: B64.encode(id),
            secret: B64.encode(secret),
            created: now,
            retired: None,
        }
    }

    fn mac(&self) -> Option<Hmac<Sha256>> {
        let secret = B64.decode(&self.secret).ok()?;
        Hmac::<Sha256>::new_from_slice(&secret).ok()
    }
}

/// One grant in a token, as the Docker token specification writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// `repository` or `registry`.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The token (the identity in the scope-map sense) it was issued to.
    pub sub: String,
    /// The service it is for: the registry's name as the client addressed it.
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<Grant>,
    /// Set on refresh tokens: which password (`password1`/`password2`) and which generation of
    /// it the login used, so rotating that password retires the refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshOf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshOf {
    pub slot: String,
    pub generation: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    kid: String,
}

/// Why a token was refused. Said to nobody but the log: a client hears only "invalid token".
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("not a JWT (header.payload.signature in base64url)")]
    Malformed,
    #[error("signed with an algorithm other than HS256")]
    Algorithm,
    #[error("signed by a key this registry does not have")]
    UnknownKey,
    #[error("the signature does not match")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
}

/// Signs `claims` with `key`.
pub fn sign(key: &SigningKey, claims: &Claims) -> String {
    let header = Header {
        alg: "HS256".into(),
        typ: Some("JWT".into()),
        kid: key.kid.clone(),
    };
    let head = B64.encode(serde_json::to_vec(&header).unwrap_or_default());
    let body = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signed = format!("{head}.{body}");
    let signature = match key.mac() {
        Some(mut mac) => {
            mac.update(signed.as_bytes());
            B64.encode(mac.finalize().into_bytes())
        }
        None => String::new(),
    };
    format!("{signed}.{signature}")
}

/// The claims of `token` when one of `keys` signed it and it is valid at `now`.
pub fn verify(keys: &[SigningKey], token: &str, now: u64) -> Result<Claims, JwtError> {
    let mut parts = token.split('.');
    let (Some(head), Some(body), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Header = B64
        .decode(head)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(JwtError::Malformed)?;
    if header.alg != "HS256" {
        return Err(JwtError::Algorithm);
    }
    let key = keys
        .iter()
        .find(|k| k.kid == header.kid)
        .ok_or(JwtError::UnknownKey)?;
    let signature = B64.decode(signature).map_err(|_| JwtError::Malformed)?;
    let mut mac = key.mac().ok_or(JwtError::UnknownKey)?;
    mac.update(&token.as_bytes()[..head.len() + 1 + body.len()]);
    mac.verify_slice(&signature)
        .map_err(|_| JwtError::Signature)?;
    let claims: Claims = B64
        .decode(body)
        .ok()
        .and_then(|c| serde_json::from_slice(&c).ok())
        .ok_or(JwtError::Malformed)?;
    if now >= claims.exp {
        return Err(JwtError::Expired);
    }
    // A minute of leeway for clocks a little apart (several replicas, a restored VM).
    if claims.nbf > now + 60 {
        return Err(JwtError::NotYetValid);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "ci".into(),
            aud: "reg".into(),
            exp,
            nbf: 100,
            iat: 100,
            jti: "1".into(),
            access: vec![Grant {
                kind: "repository".into(),
                name: "a/b".into(),
                actions: vec!["pull".into()],
            }],
            refresh: None,
        }
    }

    #[test]
    fn a_signed_token_verifies_and_a_changed_one_does_not() {
        let key = SigningKey::generate(1);
        let token = sign(&key, &claims(200));
        let keys = [key.clone()];
        assert_eq!(verify(&keys, &token, 150).unwrap(), claims(200));
        assert_eq!(verify(&keys, &token, 200), Err(JwtError::Expired));
        // One byte changed anywhere: refused.
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            if changed != token {
                assert!(verify(&keys, &changed, 150).is_err(), "byte {i}");
            }
        }
        // Another key: refused, even with the same kid.
        let mut other = SigningKey::generate(1);
        assert_eq!(
            verify(&[other.clone()], &token, 150),
            Err(JwtError::UnknownKey)
        );
        other.kid = key.kid.clone();
        assert_eq!(verify(&[other], &token, 150), Err(JwtError::Signature));
        assert_eq!(verify(&keys, "a.b", 150), Err(JwtError::Malformed));
        assert!(
            format!("{key:?}").find(&key.secret).is_none(),
            "Debug hides the secret"
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let key = SigningKey::generate(1);
        let token = sign(&key, &claims(200));
        let body = token.split('.').nth(1).unwrap();
        let head = B64.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, key.kid));
        let forged = format!("{head}.{body}.");
        assert_eq!(verify(&[key], &forged, 150), Err(JwtError::Algorithm));
    }
}
