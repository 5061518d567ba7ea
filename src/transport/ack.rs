//! `POST {SSE_ACK_PATH}`: how an SSE client acknowledges events, since an event stream has no way
//! back. The request carries the same credentials as the client's stream (`?user_id=` in open
//! mode; the token as `Authorization: Bearer` or `?token=` when tokens are on) and a JSON body
//! `{"event_id": "…"}` or `{"event_ids": ["…", …]}` (at most 100), like a WebSocket client's
//! `{"type":"ack",…}` frame, and is limited like one: `CLIENT_MESSAGE_RATE` requests per second
//! per user (bursts of twice that; 429 beyond). The acknowledgement goes to the broker, which
//! resolves it on the node that tracks the events.

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use serde_json::json;

use super::identify_client;
use crate::error::ApiError;
use crate::protocol::{AckBody, Issue, Loc, acked_ids};
use crate::state::SharedState;

/// Largest acknowledgement body: 100 ids of 128 characters, quoted and escaped, fit.
const ACK_BODY_MAX_BYTES: usize = 64 * 1024;

/// `POST {SSE_ACK_PATH}`: answers `{"status":"ok","acknowledged":<ids taken>}`.
pub async fn acknowledge(
    State(state): State<SharedState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match take(&state, query.as_deref(), &headers, body).await {
        Ok(count) => Json(json!({ "status": "ok", "acknowledged": count })).into_response(),
        Err(error) => error.into_response(),
    }
}

/// Identifies and limits the client before reading at most [`ACK_BODY_MAX_BYTES`] of its body
/// (within `HTTP_REQUEST_TIMEOUT`), then hands the acknowledgement to the broker.
async fn take(
    state: &SharedState,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<usize, ApiError> {
    let user = identify_client(state, query, headers)?;
    if let Some(limit) = &state.ack_limit {
        limit
            .check(&user)
            .map_err(|retry| ApiError::TooManyRequests {
                message: format!(
                    "too many acknowledgements for this user (CLIENT_MESSAGE_RATE={}); acknowledge \
                 several events at once with event_ids, or retry after {} s",
                    state.settings.client_message_rate,
                    retry.seconds()
                ),
                retry_after_seconds: retry.seconds(),
            })?;
    }
    let read = Limited::new(body, ACK_BODY_MAX_BYTES).collect();
    let body = match tokio::time::timeout(state.settings.http_request_timeout, read).await {
        Err(_) => return Err(ApiError::BodyTimeout),
        Ok(Err(_)) => {
            return Err(invalid(format!(
                "an acknowledgement is at most {ACK_BODY_MAX_BYTES} bytes"
            )));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let fields = AckBody::parse(&body).map_err(invalid)?;
    let ids = acked_ids(fields.event_id, fields.event_ids).map_err(invalid)?;
    let count = ids.len();
    state.metrics.client_acks(count);
    state.broker.acknowledge(&user, ids);
    Ok(count)
}

/// A 422 naming what is wrong with the body.
fn invalid(msg: String) -> ApiError {
    ApiError::Validation(vec![Issue {
        loc: vec![Loc::Key("body")],
        msg: msg.into(),
        kind: "value_error",
    }])
}
