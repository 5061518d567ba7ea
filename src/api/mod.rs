//! The HTTP API: the handlers upstreams, operators and monitors call ([`push`], [`health`],
//! [`metrics`], [`admin`]), and what they share: the JSON body extractor, the publisher-key and
//! rate-limit middleware, and turning a handler's result into a response (counting refusals).
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

use crate::error::ApiError;
use crate::rate_limit::client_ip;
use crate::state::{Publisher, SharedState};

/// Middleware on the push (and administrative) routes: requires one of `PUSH_API_KEYS` when
/// keys are configured, then applies `PUSH_RATE` per key (per client IP without keys).
pub async fn require_publisher(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let key = match state
        .publishers
        .as_ref()
        .map(|keys| keys.verify(request.headers()))
    {
        Some(Err(error)) => return respond::<()>(&state, Err(error.into())),
        Some(Ok(key)) => Some(key),
        None => None,
    };
    if let Some(limit) = &state.push_limit {
        let publisher = key.map_or_else(
            || {
                let trusted = &state.settings.trusted_proxies;
                Publisher::Address(client_ip(peer, request.headers(), trusted))
            },
            Publisher::Key,
        );
        if let Err(retry) = limit.check(&publisher) {
            let error = ApiError::TooManyRequests {
                message: format!(
                    "over PUSH_RATE={} push requests per second; retry after {} s",
                    state.settings.push_rate,
                    retry.seconds()
                ),
                retry_after_seconds: retry.seconds(),
            };
            return respond::<()>(&state, Err(error));
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

/// A JSON request body, size-checked and content-type-checked but not yet parsed.
pub struct JsonBody(Bytes);

impl FromRequest<SharedState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &SharedState) -> Result<Self, Self::Rejection> {
        check_content_type(request.headers())?;
        let limit = state.settings.max_body_bytes;
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

/// Accepts `application/json`, any `+json` type, or no declared type at all.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
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
        assert!(check_content_type(&HeaderMap::new()).is_ok());
        assert!(with("application/json").is_ok());
        assert!(with("Application/JSON; charset=utf-8").is_ok());
        assert!(with("application/merge-patch+json").is_ok());
        assert!(matches!(
            with("text/plain"),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }
}
