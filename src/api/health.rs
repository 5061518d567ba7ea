//! Liveness and readiness (`GET /health`, `GET /ready`), the JSON answers for unknown paths and
//! methods (and the redirect from the console's path with a trailing slash), and the JSON 500 for
//! a handler that panicked.

use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::protocol::Transport;
use crate::state::SharedState;

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
        "redis_shards": Some(state.broker.shards()).filter(|shards| !shards.is_empty()),
    }))
}

/// `GET /ready`: 200 while serving; 503 once shutdown has begun, or while the cluster's broker
/// is unreachable (with the reason), so that load balancers send traffic elsewhere. With several
/// Redis shards of which only some are down, 200 `degraded`, naming them: every node is in the
/// same position, and the other shards' users are still served.
pub async fn ready(State(state): State<SharedState>) -> Response {
    let unready = |body: Value| (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    if state.lifecycle.is_draining() {
        return unready(json!({ "status": "shutting_down" }));
    }
    if let Some(reason) = state.broker.unavailable() {
        return unready(json!({ "status": "unavailable", "reason": reason }));
    }
    let down: Vec<_> = state
        .broker
        .shards()
        .into_iter()
        .filter(|shard| shard.unavailable.is_some())
        .collect();
    if down.is_empty() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        Json(json!({ "status": "degraded", "shards_down": down })).into_response()
    }
}

/// Any unknown path: 404, except the console's path with a trailing slash (`/console/` for
/// `CONSOLE_PATH=/console`), which a `GET` or `HEAD` is redirected from (308, query kept).
pub async fn not_found(State(state): State<SharedState>, method: Method, uri: Uri) -> Response {
    let settings = &state.settings;
    let console = settings.console_path.as_str();
    let is_console_with_slash =
        settings.console_enabled && console != "/" && uri.path().strip_suffix('/') == Some(console);
    if !is_console_with_slash || !(method == Method::GET || method == Method::HEAD) {
        return ApiError::NotFound.into_response();
    }
    let location = match uri.query() {
        Some(query) => format!("{console}?{query}"),
        None => console.to_owned(),
    };
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, location)],
    )
        .into_response()
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

    #[test]
    fn a_panic_becomes_a_json_500() {
        let response = panic_response(Box::new("boom"));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
