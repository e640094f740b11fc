//! The token service: `GET /oauth2/token` (Basic credentials, as `docker login` and every
//! Docker client use it) and `POST /oauth2/token` (`grant_type=password` or `refresh_token`,
//! the OAuth2 form). It answers a signed access token holding what was asked that the caller's
//! scope map allows, never more; with `offline_token=true` (GET) or `access_type=offline`
//! (POST), also a refresh token, which `docker login` keeps instead of the password.

use std::sync::Arc;

use access::{Asked, Authority, Refusal};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::{check_password, client_addr, too_many, Addressed, Credentials};
use crate::api::error::ApiError;
use oci::ErrorCode;

/// Largest token request body read (a form of a few fields).
const MAX_FORM_BYTES: usize = 64 * 1024;

pub fn routes(authority: Arc<Authority>) -> Router {
    Router::new()
        .route("/oauth2/token", get(token).post(token))
        .with_state(authority)
}

async fn token(State(authority): State<Arc<Authority>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let addressed = Addressed::of(&parts);
    let from = client_addr(&parts.extensions);
    // The token service takes Basic credentials or none.
    let basic = match Credentials::of(&parts.headers) {
        Credentials::Basic { name, password } => Ok(Some((name, password))),
        Credentials::None => Ok(None),
        Credentials::Bearer(_) | Credentials::Malformed => Err(()),
    };
    let mut params = form(parts.uri.query().unwrap_or(""));
    if parts.method == Method::POST {
        let body = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
            Ok(body) => body,
            Err(_) => {
                return bad_request("the token request's form is larger than 64 KiB or was cut")
            }
        };
        params.extend(form(&String::from_utf8_lossy(&body)));
    }
    let one = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let service = one("service").unwrap_or_else(|| addressed.service.to_owned());
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let asked = Asked::parse_all(&scopes);
    let offline = one("offline_token").as_deref() == Some("true")
        || one("access_type").as_deref() == Some("offline");
    let login = match (parts.method == Method::POST, one("grant_type").as_deref()) {
        (true, Some("refresh_token")) => match one("refresh_token") {
            Some(refresh) => authority.refresh(&refresh, &service),
            None => return bad_request("grant_type=refresh_token needs refresh_token"),
        },
        (true, Some("password")) => match (one("username"), one("password")) {
            (Some(name), Some(password)) => check_password(&authority, name, password, from).await,
            _ => return bad_request("grant_type=password needs username and password"),
        },
        (true, other) => {
            return bad_request(&format!(
                "grant_type {:?} is not supported: use password or refresh_token",
                other.unwrap_or("")
            ))
        }
        (false, _) => match basic {
            Ok(Some((name, password))) => check_password(&authority, name, password, from).await,
            Ok(None) => authority
                .anonymous()
                .ok_or_else(|| Refusal::Unauthorized("no credentials".into())),
            Err(()) => Err(Refusal::Unauthorized(
                "the token service takes Basic credentials".into(),
            )),
        },
    };
    let login = match login {
        Ok(login) => login,
        Err(Refusal::TooManyAttempts(retry_after)) => return too_many(retry_after),
        Err(Refusal::Unauthorized(why)) => {
            tracing::debug!(%why, client = %from, "token request refused");
            return ApiError::new(
                ErrorCode::Unauthorized,
                "authentication failed: check the token name and password (or log in again)",
            )
            .with_header(
                header::WWW_AUTHENTICATE,
                format!("Basic realm=\"{}\"", addressed.service),
            )
            .into_response();
        }
    };
    let issued = authority.issue(&login, &asked, &service, offline);
    let mut body = json!({
        "token": issued.access_token,
        "access_token": issued.access_token,
        "expires_in": issued.expires_in,
        "issued_at": util::time::rfc3339(issued.issued_at),
    });
    if let Some(refresh) = issued.refresh_token {
        body["refresh_token"] = refresh.into();
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    ApiError::new(ErrorCode::Unsupported, message)
        .with_status(StatusCode::BAD_REQUEST)
        .into_response()
}

/// `application/x-www-form-urlencoded` pairs (a query string or a form body).
fn form(text: &str) -> Vec<(String, String)> {
    super::need::url_pairs(text)
        .filter(|(k, _)| !k.is_empty())
        .collect()
}
