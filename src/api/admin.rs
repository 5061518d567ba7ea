//! The administrative API: who is connected as a user, and disconnecting them (logout, ban).
//! Mounted behind the publisher keys (`PUSH_API_KEYS`) with the push routes; cluster-wide with the
//! Redis broker.

use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use serde::Serialize;

use crate::broker::UserConnection;
use crate::error::ApiError;
use crate::protocol::{Issue, Loc, Transport, UserId, percent};
use crate::state::SharedState;

/// `GET /admin/users/{user_id}`: the user's connections.
#[derive(Debug, Serialize)]
pub struct UserReport {
    /// The user asked about.
    pub user_id: UserId,
    /// Whether the user has at least one connection.
    pub online: bool,
    /// How many connections the user has.
    pub connection_count: usize,
    /// Connections by transport (`websocket`, `sse`).
    pub transports: TransportCounts,
    /// Every connection, oldest first.
    pub connections: Vec<UserConnection>,
}

/// Connections of one user by transport.
#[derive(Debug, Default, Serialize)]
pub struct TransportCounts {
    /// WebSocket connections.
    pub websocket: usize,
    /// SSE streams.
    pub sse: usize,
}

/// `DELETE /admin/users/{user_id}/connections`: how many connections were closed.
#[derive(Debug, Serialize)]
pub struct Disconnected {
    /// The user disconnected.
    pub user_id: UserId,
    /// Connections asked to close (WebSocket: close code 4003; SSE: `event: close`).
    pub disconnected: usize,
}

/// `GET /admin/users/{user_id}`.
pub async fn user(
    State(state): State<SharedState>,
    uri: Uri,
) -> Result<Json<UserReport>, ApiError> {
    let user = path_user(&uri)?;
    let connections = state.broker.connections_of(&user).await?;
    let mut transports = TransportCounts::default();
    for connection in &connections {
        match connection.transport {
            Transport::WebSocket => transports.websocket += 1,
            Transport::Sse => transports.sse += 1,
        }
    }
    Ok(Json(UserReport {
        user_id: user,
        online: !connections.is_empty(),
        connection_count: connections.len(),
        transports,
        connections,
    }))
}

/// `DELETE /admin/users/{user_id}/connections`.
pub async fn disconnect(
    State(state): State<SharedState>,
    uri: Uri,
) -> Result<Json<Disconnected>, ApiError> {
    let user = path_user(&uri)?;
    let disconnected = state.broker.disconnect(&user).await?;
    tracing::info!(%user, disconnected, "user disconnected by an administrator");
    Ok(Json(Disconnected {
        user_id: user,
        disconnected,
    }))
}

/// The `user_id` segment of `/admin/users/{user_id}[/connections]`, read from the raw path and
/// decoded strictly (axum's `Path` keeps an invalid escape such as `%ZZ` as it is), then validated
/// like everywhere else: 422 naming `path.user_id`.
fn path_user(uri: &Uri) -> Result<UserId, ApiError> {
    let loc = || vec![Loc::Key("path"), Loc::Key("user_id")];
    let raw = uri.path().split('/').nth(3).unwrap_or_default();
    let decoded = percent::path_segment(raw).map_err(|error| {
        ApiError::Validation(vec![Issue {
            loc: loc(),
            msg: error.to_string().into(),
            kind: "value_error",
        }])
    })?;
    UserId::parse(&decoded).map_err(|error| ApiError::Validation(vec![error.at(loc())]))
}
