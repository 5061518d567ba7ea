//! The metrics endpoints: `GET /metrics` (JSON) and `GET /metrics/prometheus`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Gauges;
use crate::api::ApiError;
use crate::hub::Transport;
use crate::state::SharedState;

/// `GET /metrics`: the seed's keys, then every counter.
pub async fn handler(State(state): State<SharedState>) -> Json<Value> {
    let hub = &state.hub;
    let mut snapshot = state.metrics.snapshot(&Gauges {
        connections: Transport::ALL.map(|transport| hub.transport_count(transport)),
        users_online: hub.user_count(),
        history_users: hub.history().stream_count(),
        history_events: hub.history().event_count(),
        uptime_seconds: state.started_at.elapsed().as_secs_f64(),
    });
    if let Value::Object(fields) = &mut snapshot {
        fields.insert("broker".to_owned(), state.broker.report());
        fields.insert("cluster".to_owned(), json!(state.broker.cluster()));
    }
    Json(snapshot)
}

/// `GET /metrics/prometheus`: the Prometheus text exposition (being written).
pub async fn prometheus(State(_state): State<SharedState>) -> Response {
    ApiError::NotFound.into_response()
}
