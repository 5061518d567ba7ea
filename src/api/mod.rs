//! The HTTP API: the handlers upstreams, operators and monitors call ([`push`], [`health`],
//! [`metrics`], [`admin`]), and what they share: the JSON body extractor, the middleware of the
//! publishing and administrative routes (browser origin, API key, rate limit), and turning a
//! handler's result into a response (counting refusals).
//!
//! Publishing and administration are server-to-server calls. A browser may make them only from
//! an origin in `CORS_ORIGINS` (403 otherwise), and only with a JSON body (415 otherwise): a page
//! elsewhere cannot push with a `no-cors` `fetch` or `sendBeacon`, which can send neither that
//! content type nor a foreign origin's credentials.
//!
//! Handlers never touch the hub for delivery: pushes go through the broker. Every error leaves
//! through [`ApiError`].

pub mod admin;
pub mod health;
pub mod metrics;
pub mod push;

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::KeyError;
use crate::error::ApiError;
use crate::origin;
use crate::rate_limit::client_ip;
use crate::state::{Publisher, SharedState};

/// Middleware on the push routes: refuses a foreign browser origin, requires one of
/// `PUSH_API_KEYS` when keys are configured, then applies `PUSH_RATE` per key (per client IP
/// without keys).
pub async fn require_publisher(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let key = check_origin(&state, headers).and_then(|()| publisher(&state, headers));
    match key {
        Ok(publisher) => rate_limited(&state, peer, publisher, request, next).await,
        Err(error) => respond::<()>(&state, Err(error)),
    }
}

/// Middleware on the administrative routes and broadcasts: refuses a foreign browser origin,
/// then requires one of `ADMIN_API_KEYS` (a publisher key gets 403) or, when those are not set,
/// of `PUSH_API_KEYS`; then applies `PUSH_RATE` like a push.
pub async fn require_admin(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let key = check_origin(&state, headers).and_then(|()| match &state.admins {
        Some(admins) => match admins.verify(headers) {
            Ok(key) => Ok(Some(Publisher::Admin(key))),
            Err(KeyError::Wrong)
                if state
                    .publishers
                    .as_ref()
                    .is_some_and(|keys| keys.verify(headers).is_ok()) =>
            {
                Err(ApiError::Forbidden(
                    "this publisher key may push but not administer: use one of ADMIN_API_KEYS"
                        .to_owned(),
                ))
            }
            Err(error) => Err(error.into()),
        },
        None => publisher(&state, headers),
    });
    match key {
        Ok(publisher) => rate_limited(&state, peer, publisher, request, next).await,
        Err(error) => respond::<()>(&state, Err(error)),
    }
}

/// The holder of the `PUSH_API_KEYS` key the request presents (`None` when no keys are set), or
/// why it is refused.
fn publisher(state: &SharedState, headers: &HeaderMap) -> Result<Option<Publisher>, ApiError> {
    let Some(keys) = &state.publishers else {
        return Ok(None);
    };
    Ok(Some(Publisher::Key(keys.verify(headers)?)))
}

/// Refuses a browser whose origin is not allowed (`CORS_ORIGINS`, see [`crate::origin`]).
fn check_origin(state: &SharedState, headers: &HeaderMap) -> Result<(), ApiError> {
    let settings = &state.settings;
    origin::check_origin(&settings.cors_origins, &settings.allowed_hosts, headers)
        .map_err(ApiError::from)
}

/// Applies `PUSH_RATE` to the publisher (its key, or its IP without keys), then runs the handler.
async fn rate_limited(
    state: &SharedState,
    peer: SocketAddr,
    publisher: Option<Publisher>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(limit) = &state.push_limit {
        let publisher = publisher.unwrap_or_else(|| {
            let trusted = &state.settings.trusted_proxies;
            Publisher::Address(client_ip(peer, request.headers(), trusted))
        });
        if let Err(retry) = limit.check(&publisher) {
            let error = ApiError::TooManyRequests {
                message: format!(
                    "over PUSH_RATE={} push requests per second; retry after {} s",
                    state.settings.push_rate,
                    retry.seconds()
                ),
                retry_after_seconds: retry.seconds(),
            };
            return respond::<()>(state, Err(error));
        }
    }
    next.run(request).await
}

/// Middleware on `/metrics` when `METRICS_PUBLIC=false`: requires an API key.
pub async fn require_key(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(keys) = &state.publishers
        && let Err(error) = keys.verify(request.headers())
    {
        return ApiError::from(error).into_response();
    }
    next.run(request).await
}

/// The JSON response of a push handler; a failure is counted in the metrics before it becomes
/// its error response.
fn respond<T: serde::Serialize>(state: &SharedState, result: Result<T, ApiError>) -> Response {
    match result {
        Ok(body) => Json(body).into_response(),
        Err(error) => {
            if let ApiError::Encode(cause) = &error {
                tracing::error!(%cause, "cannot encode an accepted push");
            }
            if let Some(rejection) = error.rejection() {
                state.metrics.request_rejected(rejection);
            }
            error.into_response()
        }
    }
}

/// A JSON request body, size-checked and content-type-checked but not yet parsed: declared as
/// JSON, not encoded (no compression), and within `MAX_BODY_BYTES` — refused at once, before
/// anything is read, when its declared length is over.
pub struct JsonBody(Bytes);

impl FromRequest<SharedState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &SharedState) -> Result<Self, Self::Rejection> {
        let headers = request.headers();
        check_content_type(headers)?;
        check_content_encoding(headers)?;
        let limit = state.settings.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        // A trickling client gets 408 instead of holding the request open.
        let timeout = state.settings.http_request_timeout;
        let read = tokio::time::timeout(timeout, Bytes::from_request(request, state));
        let Ok(body) = read.await else {
            return Err(ApiError::BodyTimeout);
        };
        body.map(Self).map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::BadBody(rejection.body_text())
            }
        })
    }
}

/// Accepts `application/json` or any `+json` type; anything else, or no declared type (what a
/// cross-site `no-cors` request sends), is refused.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType("(none)".to_owned()));
    };
    let declared = value.to_str().unwrap_or("(not text)");
    let essence = declared
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(declared.to_owned()))
    }
}

/// Accepts a body sent as it is: no `Content-Encoding`, or `identity`.
fn check_content_encoding(headers: &HeaderMap) -> Result<(), ApiError> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let declared = String::from_utf8_lossy(value.as_bytes());
        let identity = declared
            .split(',')
            .all(|coding| coding.trim().eq_ignore_ascii_case("identity"));
        if !identity {
            return Err(ApiError::UnsupportedEncoding(declared.into_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn content_types() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            check_content_type(&headers)
        };
        assert!(matches!(
            check_content_type(&HeaderMap::new()),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        assert!(with("application/json").is_ok());
        assert!(with("Application/JSON; charset=utf-8").is_ok());
        assert!(with("application/merge-patch+json").is_ok());
        assert!(matches!(
            with("text/plain"),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }
}
