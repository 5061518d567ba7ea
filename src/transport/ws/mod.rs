//! The WebSocket transport: `GET {WS_PATH}?user_id=<id>`.
//!
//! The handshake is checked before anything is upgraded: a missing or invalid `user_id` gets 400,
//! a server that is shutting down or full gets 503, each with a JSON `detail`. The connection is
//! registered with the hub *before* the 101 answer, so no push sent after the client sees its
//! handshake complete can miss it. After the upgrade the connection belongs to its [`session`],
//! which closes it with 1008 if the per-user limit refused it, and otherwise runs it until it
//! closes.

mod keepalive;
mod session;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;
use crate::metrics::Refusal;
use crate::protocol::{Issue, Loc, UserId};
use crate::state::SharedState;

/// Bytes tungstenite reserves for reading from each connection, and reads per call. Clients send
/// little (acks are optional chatter), so a small buffer keeps idle connections cheap: every KiB
/// here is 10 MiB per 10,000 connections. A larger frame still arrives: the buffer grows to hold
/// it, and it is read in several calls.
const READ_BUFFER_BYTES: usize = 512;

/// Answers the WebSocket handshake: refuses bad or unwelcome requests, upgrades the rest.
pub async fn handshake(
    State(state): State<SharedState>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match accept(&state, query.as_deref(), upgrade) {
        Ok(response) => response,
        Err((refusal, error)) => {
            state.metrics.connection_refused(refusal);
            error.into_response()
        }
    }
}

fn accept(
    state: &SharedState,
    query: Option<&str>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, (Refusal, ApiError)> {
    let user = user_from_query(query)
        .map_err(|issue| (Refusal::BadRequest, ApiError::InvalidQuery(vec![issue])))?;
    let upgrade = upgrade.map_err(|rejection| {
        let error = ApiError::Handshake {
            status: rejection.status(),
            message: rejection.body_text(),
        };
        (Refusal::BadRequest, error)
    })?;
    if state.lifecycle.is_draining() {
        let error = ApiError::Overloaded("server is shutting down; connect to another node".into());
        return Err((Refusal::ShuttingDown, error));
    }
    let slot = state
        .connection_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            let message = format!(
                "server is at its connection limit (MAX_CONNECTIONS={}); retry later or elsewhere",
                state.max_connections
            );
            (Refusal::ServerFull, ApiError::Overloaded(message))
        })?;
    // Register before answering 101: once the client sees its handshake complete, every push for
    // its user reaches it (queued until the session starts writing).
    let registered = state.hub.register(user);
    let tracked = state.lifecycle.track_session();
    let max_message = state.settings.ws_max_message_bytes;
    let state = SharedState::clone(state);
    Ok(upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_failed_upgrade(|error| tracing::debug!(%error, "websocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            session::run(socket, registered, state).await;
            drop((slot, tracked));
        }))
}

/// Finds and validates `user_id` in a raw query string.
fn user_from_query(query: Option<&str>) -> Result<UserId, Issue> {
    let loc = vec![Loc::Key("query"), Loc::Key("user_id")];
    let raw = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "user_id")
        .map(|(_, value)| value)
        .ok_or_else(|| Issue {
            loc: loc.clone(),
            msg: "Field required".into(),
            kind: "missing",
        })?;
    UserId::parse(&raw).map_err(|error| Issue {
        loc,
        msg: error.msg,
        kind: error.kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_is_read_decoded_and_validated() {
        assert_eq!(
            user_from_query(Some("user_id=test123")).unwrap().as_str(),
            "test123"
        );
        assert_eq!(
            user_from_query(Some("a=1&user_id=a%20b")).unwrap().as_str(),
            "a b"
        );
        assert_eq!(user_from_query(None).unwrap_err().kind, "missing");
        assert_eq!(
            user_from_query(Some("user_id=")).unwrap_err().kind,
            "string_too_short"
        );
        assert_eq!(
            user_from_query(Some("user_id=a%0Ab")).unwrap_err().kind,
            "value_error"
        );
    }
}
