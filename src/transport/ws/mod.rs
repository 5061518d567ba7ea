//! The WebSocket transport: `GET {WS_PATH}?user_id=<id>[&last_event_id=<id>]`.
//!
//! The handshake is checked before anything is upgraded: a request that is not a WebSocket
//! handshake, or not for version 13, gets 426 (see [`upgrade`]); then (see [`super::authorize`])
//! a missing or invalid `user_id` gets 400, a missing or refused token 401, a foreign origin or
//! user 403, a client over the connect rate 429, a server that is shutting down or full 503, each
//! with a JSON `detail` — or, for a browser (a request with `Origin`), a 101 answer and at once a
//! close code that says the same (see [`refusal`]), since a browser's WebSocket API cannot see
//! statuses. The connection is registered with the hub *before* the 101 answer, so no
//! push sent after the client sees its handshake complete can miss it; a resuming client's missed
//! events (or resync notice) are queued in the same step, ahead of anything live. After the
//! upgrade the connection is closed with 1008 if the per-user limit refused it, and otherwise runs
//! as a [session](super::session) over a [`link::WsLink`] until it closes.

mod frames;
mod keepalive;
mod link;
mod refusal;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tokio::sync::OwnedSemaphorePermit;

use tungstenite::protocol::WebSocketConfig;

use self::link::WsLink;
use self::upgrade::{Refused, Upgrade};
use super::session::{self, Session};
use super::{Admission, attach, authorize};
use crate::broker::AttachError;
use crate::error::ApiError;
use crate::hub::{Attached, UserLimitReached};
use crate::metrics::Refusal;
use crate::protocol::Transport;
use crate::state::SharedState;

/// Bytes tungstenite reserves for reading from each connection, and reads per call. Clients send
/// little (acks are optional chatter), so a small buffer keeps idle connections cheap: every KiB
/// here is 10 MiB per 10,000 connections. A larger frame still arrives: the buffer grows to hold
/// it, and it is read in several calls.
const READ_BUFFER_BYTES: usize = 512;

/// Most refused browser handshakes closed with a close code at once (each for at most the close
/// handshake's grace); beyond them a refusal is the plain HTTP answer (the browser sees 1006).
pub const REFUSALS_IN_FLIGHT: usize = 1024;

/// Answers the WebSocket handshake: refuses bad or unwelcome requests, upgrades the rest.
pub async fn handshake(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<Upgrade, Refused>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(refused) => {
            state.metrics.connection_refused(Refusal::BadRequest);
            let error = ApiError::Handshake {
                status: refused.status,
                message: refused.message.to_owned(),
            };
            let mut response = error.into_response();
            upgrade::advertise_upgrade(&mut response);
            return response;
        }
    };
    match accept(&state, query.as_deref(), &headers, peer).await {
        Ok(accepted) => run(state, upgrade, accepted),
        Err((refusal, error)) => {
            state.metrics.connection_refused(refusal);
            let closing = refusal::visible_to_browser(&headers)
                .then(|| Arc::clone(&state.refusal_slots).try_acquire_owned().ok())
                .flatten();
            if let Some(slot) = closing {
                let frame = refusal::close_frame(refusal, &error);
                upgrade.answer(config(&state), move |socket| async move {
                    link::refuse(socket, frame).await;
                    drop(slot);
                })
            } else {
                let mut response = error.into_response();
                upgrade::advertise_upgrade(&mut response);
                response
            }
        }
    }
}

/// A client let in and attached (or refused by the per-user limit, which is known only now).
struct Accepted {
    attached: Result<Attached, UserLimitReached>,
    /// Whether its first frame tells it its stream's position (it asked, and is not resuming).
    announce_position: bool,
    /// When its token expires, if it has one.
    expires_at: Option<SystemTime>,
    /// Its `MAX_CONNECTIONS` slot.
    slot: OwnedSemaphorePermit,
}

/// Authorizes the client and, before the 101 answer, attaches its connection: once the client
/// sees its handshake complete, every push for its user reaches it (queued until the session
/// starts writing), after what it missed.
async fn accept(
    state: &SharedState,
    query: Option<&str>,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Accepted, (Refusal, ApiError)> {
    let Admission {
        user,
        resume_from,
        wants_position,
        expires_at,
        slot,
    } = authorize(state, query, headers, peer)?;
    let announce_position = wants_position && resume_from.is_none();
    let resume_from = resume_from.as_deref();
    let transport = Transport::WebSocket;
    let attached = match attach(state, user, transport, resume_from, announce_position).await {
        Ok(attached) => Ok(attached),
        // Refused after the upgrade, with a close code the client can act on.
        Err(AttachError::UserLimit(limit)) => Err(limit),
        Err(AttachError::Unavailable(error)) => {
            return Err((Refusal::BrokerUnavailable, ApiError::Unavailable(error)));
        }
    };
    Ok(Accepted {
        attached,
        announce_position,
        expires_at,
        slot,
    })
}

/// Answers 101 and runs the session (or the per-user limit's refusal) on the upgraded socket.
fn run(state: SharedState, upgrade: Upgrade, accepted: Accepted) -> Response {
    let Accepted {
        attached,
        announce_position,
        expires_at,
        slot,
    } = accepted;
    let tracked = state.lifecycle.track_session();
    let config = config(&state);
    upgrade.answer(config, move |socket| async move {
        match attached {
            Ok(attached) => {
                let opening = announce_position
                    .then(|| position_frame(&attached))
                    .flatten();
                let link = WsLink::new(socket, &state.settings, opening);
                let session = Session::open(Transport::WebSocket, attached, state);
                session::run(link, session, expires_at).await;
            }
            Err(limit) => {
                state.metrics.connection_refused(Refusal::UserLimit);
                let frame = refusal::close(Refusal::UserLimit, limit.to_string());
                link::refuse(socket, frame).await;
            }
        }
        drop((slot, tracked));
    })
}

/// The first frame of a fresh connection that asked for its stream's position (`?position=true`):
/// `{"event_type":"position","event_id":"<epoch>:<position>","user_id":…}`, the position token a
/// resume from which gets exactly what follows; none when the server keeps no history.
fn position_frame(attached: &Attached) -> Option<String> {
    let head = attached.head.as_ref()?;
    let frame = serde_json::json!({
        "event_type": "position",
        "event_id": head.to_string(),
        "user_id": attached.registration.user().as_str(),
    });
    Some(frame.to_string())
}

/// How tungstenite reads an upgraded connection: a small buffer, frames up to
/// `WS_MAX_MESSAGE_BYTES`.
fn config(state: &SharedState) -> WebSocketConfig {
    let max_message = state.settings.ws_max_message_bytes;
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}
