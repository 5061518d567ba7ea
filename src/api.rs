//! The HTTP API: push, batch push, health, readiness, metrics, and the JSON error bodies.
//!
//! Every error leaves through [`ApiError`], the one place where failures become status codes; every
//! body is JSON with a `detail`, as FastAPI does, so the seed's clients can read it.

use std::sync::Arc;

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::auth::KeyError;
use crate::broker::BrokerError;
use crate::hub::{Delivery, Outcome, Transport};
use crate::metrics::Rejection;
use crate::protocol::{
    BatchItemResult, BatchResponse, BroadcastResponse, Event, Issue, MultiPushResponse, Push,
    PushMessage, PushResponse, PushStatus, parse_batch, parse_broadcast, parse_push_targets,
    unix_seconds_now,
};
use crate::rate_limit::client_ip;
use crate::state::{Publisher, SharedState};

/// Everything that can go wrong in a handler, each with its status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body was not valid JSON of the right shape (422, FastAPI's `detail` list).
    #[error("validation failed")]
    Validation(Vec<Issue>),
    /// The body was over `MAX_BODY_BYTES` (413).
    #[error("request body is larger than MAX_BODY_BYTES={limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The body did not arrive within `HTTP_REQUEST_TIMEOUT` (408).
    #[error("the request body did not arrive within HTTP_REQUEST_TIMEOUT")]
    BodyTimeout,
    /// The body could not be read (400).
    #[error("cannot read the request body: {0}")]
    BadBody(String),
    /// The body was declared as something other than JSON (415).
    #[error("Content-Type must be application/json, not {0}")]
    UnsupportedMediaType(String),
    /// The broker could not route the events (503).
    #[error(transparent)]
    Unavailable(#[from] BrokerError),
    /// A query parameter is missing or invalid (400, FastAPI's `detail` list).
    #[error("invalid query")]
    InvalidQuery(Vec<Issue>),
    /// The request is not a valid WebSocket handshake.
    #[error("{message}")]
    Handshake {
        /// The status the WebSocket extractor chose (400, 405 or 426).
        status: StatusCode,
        /// Its explanation.
        message: String,
    },
    /// The server cannot take the request now: full or shutting down (503).
    #[error("{0}")]
    Overloaded(String),
    /// Missing or wrong credentials (401, with `WWW-Authenticate: Bearer`).
    #[error("{message}")]
    Unauthorized {
        /// What is wrong, never including the credentials.
        message: String,
        /// Whether credentials were presented but refused (`error="invalid_token"`).
        invalid_token: bool,
    },
    /// Authenticated, but not allowed this (403).
    #[error("{0}")]
    Forbidden(String),
    /// Over a rate limit (429, with `Retry-After`).
    #[error("{message}")]
    TooManyRequests {
        /// Which limit, and what to do.
        message: String,
        /// Seconds to wait before trying again.
        retry_after_seconds: u64,
    },
    /// No route for the path (404).
    #[error("Not Found")]
    NotFound,
    /// The path exists, but not for this method (405).
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    /// A bug: a handler panicked (500). The panic is logged; the server keeps serving.
    #[error("Internal Server Error")]
    Internal,
    /// An accepted push could not be serialized (500; a bug, logged).
    #[error("cannot encode the event: {0}")]
    Encode(#[from] serde_json::Error),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadBody(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable(_) | Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            Self::Handshake { status, .. } => *status,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal | Self::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn rejection(&self) -> Option<Rejection> {
        match self {
            Self::Validation(_) | Self::BadBody(_) | Self::BodyTimeout => Some(Rejection::Invalid),
            Self::PayloadTooLarge { .. } => Some(Rejection::TooLarge),
            Self::UnsupportedMediaType(_) => Some(Rejection::UnsupportedMediaType),
            Self::Unavailable(_) => Some(Rejection::Unavailable),
            Self::Unauthorized { .. } => Some(Rejection::Unauthorized),
            Self::TooManyRequests { .. } => Some(Rejection::RateLimited),
            Self::Forbidden(_)
            | Self::InvalidQuery(_)
            | Self::Handshake { .. }
            | Self::Overloaded(_)
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::Internal
            | Self::Encode(_) => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let detail = match &self {
            Self::Validation(issues) | Self::InvalidQuery(issues) => json!(issues),
            other => json!(other.to_string()),
        };
        let mut response = (self.status(), Json(json!({ "detail": detail }))).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized { invalid_token, .. } => {
                let challenge = if *invalid_token {
                    r#"Bearer realm="websocket-sse-server", error="invalid_token""#
                } else {
                    r#"Bearer realm="websocket-sse-server""#
                };
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            Self::TooManyRequests {
                retry_after_seconds,
                ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
            }
            Self::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            _ => {}
        }
        response
    }
}

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        Self::Unauthorized {
            message: error.to_string(),
            invalid_token: error == KeyError::Wrong,
        }
    }
}

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

/// `POST {SSE_PATH}`: one event to every connection of one user (`user_id`), or of several
/// (`user_ids`).
pub async fn push(State(state): State<SharedState>, body: Result<JsonBody, ApiError>) -> Response {
    let JsonBody(bytes) = match body {
        Ok(body) => body,
        Err(error) => return respond::<()>(&state, Err(error)),
    };
    match parse_push_targets(&bytes, state.settings.max_batch_size) {
        Ok(Push::One(message)) => {
            let result = async {
                let event = message.encode(unix_seconds_now())?;
                let outcomes = state.broker.publish(std::slice::from_ref(&event)).await?;
                state.metrics.events_accepted(new_events(&outcomes));
                let outcome = outcomes.into_iter().next().unwrap_or_default();
                Ok::<_, ApiError>(push_response(event, outcome))
            };
            respond(&state, result.await)
        }
        Ok(Push::Many(messages)) => {
            let result = async {
                let (event_id, results) = publish_shared(&state, messages).await?;
                let delivered = results.iter().map(|result| result.delivered).sum();
                let succeeded = results.iter().filter(|result| result.success).count();
                let status = if succeeded == results.len() {
                    PushStatus::Success
                } else {
                    PushStatus::Partial
                };
                let message = format!(
                    "delivered to {delivered} connection(s) of {} user(s); {succeeded} of the \
                     users' pushes succeeded",
                    results.len()
                );
                Ok::<_, ApiError>(MultiPushResponse {
                    status,
                    message,
                    event_id,
                    delivered,
                    results,
                })
            };
            respond(&state, result.await)
        }
        Err(issues) => respond::<()>(&state, Err(ApiError::Validation(issues))),
    }
}

/// `POST /sse/broadcast`: one event to every user connected at this moment (cluster-wide in a
/// cluster), stored in each one's history like a push.
pub async fn broadcast(
    State(state): State<SharedState>,
    body: Result<JsonBody, ApiError>,
) -> Response {
    let result = async {
        let JsonBody(bytes) = body?;
        let fields = parse_broadcast(&bytes).map_err(ApiError::Validation)?;
        let users = state.broker.online_users().await?;
        let messages = users
            .into_iter()
            .map(|user| fields.clone().addressed_to(user))
            .collect();
        let (event_id, results) = publish_shared(&state, messages).await?;
        let delivered: usize = results.iter().map(|result| result.delivered).sum();
        let (status, message) = if delivered > 0 {
            (
                PushStatus::Success,
                format!(
                    "delivered to {delivered} connection(s) of {} user(s)",
                    results.len()
                ),
            )
        } else {
            (PushStatus::Partial, "no user connected".to_owned())
        };
        Ok::<_, ApiError>(BroadcastResponse {
            status,
            message,
            event_id,
            users: results.len(),
            delivered,
        })
    };
    respond(&state, result.await)
}

/// Publishes one event to several users: each user's copy names its user but all share one
/// `event_id` (the upstream's, or one assigned here, which is not treated as an upstream id).
async fn publish_shared(
    state: &SharedState,
    mut messages: Vec<PushMessage<'_>>,
) -> Result<(Arc<str>, Vec<BatchItemResult>), ApiError> {
    let assigned = messages
        .first()
        .is_some_and(|message| message.event_id.is_none())
        .then(|| ulid::Ulid::new().to_string());
    if let Some(assigned) = &assigned {
        for message in &mut messages {
            message.event_id = Some(assigned.clone().into());
        }
    }
    let accepted_at = unix_seconds_now();
    let events = messages
        .iter()
        .map(|message| {
            let mut event = message.encode(accepted_at)?;
            event.upstream_id = assigned.is_none();
            Ok(event)
        })
        .collect::<Result<Vec<Event>, serde_json::Error>>()?;
    let event_id = match (&assigned, messages.first()) {
        (Some(assigned), _) => Arc::from(assigned.as_str()),
        (None, Some(message)) => Arc::from(message.event_id.as_deref().unwrap_or_default()),
        (None, None) => Arc::from(ulid::Ulid::new().to_string()),
    };
    let outcomes = if events.is_empty() {
        Vec::new()
    } else {
        state.broker.publish(&events).await?
    };
    state.metrics.events_accepted(new_events(&outcomes));
    Ok((event_id, batch_results(events, outcomes)))
}

/// One batch-shaped result per event.
fn batch_results(events: Vec<Event>, outcomes: Vec<Outcome>) -> Vec<BatchItemResult> {
    events
        .into_iter()
        .zip(outcomes)
        .map(|(event, outcome)| BatchItemResult {
            event_id: Arc::clone(event.event_id()),
            user_id: event.user_id,
            success: outcome.delivery.is_success(),
            delivered: outcome.delivery.delivered,
            stored: outcome.stored.is_some(),
            duplicate: outcome.duplicate,
        })
        .collect()
}

/// How many of the published events were new (not duplicates of events already accepted).
fn new_events(outcomes: &[Outcome]) -> usize {
    outcomes.iter().filter(|outcome| !outcome.duplicate).count()
}

fn push_response(event: Event, outcome: Outcome) -> PushResponse {
    let Delivery { delivered, failed } = outcome.delivery;
    let stored = outcome.stored.is_some();
    let (status, mut message) = match (delivered, failed) {
        (0, 0) if stored => (
            PushStatus::Partial,
            "user not connected; stored in history, delivered when a client of the user resumes"
                .to_owned(),
        ),
        (0, 0) => (PushStatus::Partial, "user not connected".to_owned()),
        (n, 0) => (
            PushStatus::Success,
            format!("delivered to {n} connection(s)"),
        ),
        (n, f) => (
            PushStatus::Partial,
            format!(
                "delivered to {n} of {} connection(s); {f} could not take it (slow or closing)",
                n + f
            ),
        ),
    };
    if outcome.duplicate {
        message = format!(
            "duplicate: an event with this event_id was already accepted for this user and is \
             not delivered again; its outcome: {message}"
        );
    }
    PushResponse {
        status,
        message,
        event_id: Arc::clone(event.event_id()),
        delivered,
        stored,
        duplicate: outcome.duplicate,
        position: outcome.stored,
    }
}

/// `POST {SSE_BATCH_PATH}`: many events, validated as a whole, delivered in order.
pub async fn push_batch(
    State(state): State<SharedState>,
    body: Result<JsonBody, ApiError>,
) -> Response {
    let result = async {
        let JsonBody(bytes) = body?;
        let messages =
            parse_batch(&bytes, state.settings.max_batch_size).map_err(ApiError::Validation)?;
        let accepted_at = unix_seconds_now();
        let events = messages
            .iter()
            .map(|message| message.encode(accepted_at))
            .collect::<Result<Vec<Event>, _>>()?;
        let outcomes = state.broker.publish(&events).await?;
        state.metrics.events_accepted(new_events(&outcomes));
        state.metrics.observe_batch(events.len());
        let results = batch_results(events, outcomes);
        Ok::<_, ApiError>(BatchResponse { results })
    }
    .await;
    respond(&state, result)
}

/// `GET /health`: liveness, with the seed's keys first.
pub async fn health(State(state): State<SharedState>) -> Json<Value> {
    Json(json!({
        "status": "healthy",
        "connections": state.hub.connection_count(),
        "uptime": "running",
        "websocket_connections": state.hub.transport_count(Transport::WebSocket),
        "sse_connections": state.hub.transport_count(Transport::Sse),
        "users": state.hub.user_count(),
        "uptime_seconds": state.started_at.elapsed().as_secs_f64(),
        "version": env!("CARGO_PKG_VERSION"),
        "broker": state.broker.kind(),
        "cluster": state.broker.cluster(),
    }))
}

/// `GET /ready`: 200 while serving; 503 once shutdown has begun, or while the cluster's broker
/// is unreachable (with the reason), so that load balancers send traffic elsewhere.
pub async fn ready(State(state): State<SharedState>) -> Response {
    let unready = |body: Value| (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    if state.lifecycle.is_draining() {
        unready(json!({ "status": "shutting_down" }))
    } else if let Some(reason) = state.broker.unavailable() {
        unready(json!({ "status": "unavailable", "reason": reason }))
    } else {
        Json(json!({ "status": "ready" })).into_response()
    }
}

/// Any unknown path.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// A known path with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Turns a handler's panic into a JSON 500 for that request alone, and logs it.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    tracing::error!(panic = %message, "a request handler panicked");
    ApiError::Internal.into_response()
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

    #[test]
    fn a_panic_becomes_a_json_500() {
        let response = panic_response(Box::new("boom"));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(
            ApiError::Validation(vec![]).status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            ApiError::PayloadTooLarge { limit: 1 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(ApiError::NotFound.status(), StatusCode::NOT_FOUND);
    }
}
