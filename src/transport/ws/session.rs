//! One WebSocket client session, from registration to close, in a single task.
//!
//! The task waits on five things at once: shutdown, a close request from the hub (slow consumer,
//! replaced), the connection's outbox, the keepalive deadline and the client's next frame. Frames
//! from the outbox are written in batches (`recv_many`, `feed` each, one `flush`), each batch
//! within `WS_WRITE_TIMEOUT`; a small batch first yields to the scheduler once, so that under load
//! more frames join it and share one socket write. The session, and only the session, closes its socket: it sends the
//! close code for the reason and waits briefly for the client's reply.

use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use tokio::time::{Instant, sleep_until, timeout};

use super::super::{WRITE_BATCH, top_up};
use super::keepalive::{Due, Keepalive};
use crate::auth::remaining;
use crate::hub::{
    Attached, DisconnectReason, Outbox, Outgoing, Registration, Transport, UserLimitReached,
};
use crate::metrics::Refusal;
use crate::protocol::ack_frame;
use crate::rate_limit::Limit;
use crate::state::{AppState, SharedState};

/// How long closing may take: queued frames, the close frame and the client's reply.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Runs one upgraded connection until it closes. `registered` is the hub's answer to the
/// registration made before the upgrade.
pub(super) async fn run(
    mut socket: WebSocket,
    attached: Result<Attached, UserLimitReached>,
    expires_at: Option<SystemTime>,
    state: SharedState,
) {
    // Events accepted before this instant are replays: they are not timed as live deliveries.
    let live_since = std::time::Instant::now();
    let Attached {
        registration,
        mut outbox,
        ..
    } = match attached {
        Ok(attached) => attached,
        Err(limit) => {
            state.metrics.connection_refused(Refusal::UserLimit);
            let frame = CloseFrame {
                code: close_code::POLICY,
                reason: limit.to_string().into(),
            };
            finish(&mut socket, Vec::new(), Some(frame)).await;
            return;
        }
    };
    state.metrics.connection_opened();
    tracing::debug!(user = %registration.user(), connection = registration.id(), "connected");

    let expires_at = expires_at.map(|at| Instant::now() + remaining(at));
    let reason = serve(
        &mut socket,
        &registration,
        &mut outbox,
        expires_at,
        live_since,
        &state,
    )
    .await;

    tracing::debug!(user = %registration.user(), connection = registration.id(), reason = reason.label(), "disconnected");
    // Unregister first: after that nothing more can be queued, so draining misses nothing.
    drop(registration);
    state.metrics.connection_closed(reason);
    // Pushes accepted before shutdown still reach the client, ahead of the close frame.
    let mut pending = Vec::new();
    while let Ok(item) = outbox.try_recv() {
        pending.push(item);
    }
    if reason == DisconnectReason::Shutdown {
        let bytes = frame_bytes(&pending);
        let metrics = &state.metrics;
        metrics.record_written(Transport::WebSocket, &pending, bytes, live_since);
    } else {
        state.metrics.events_unwritten(reason, events_in(&pending));
        pending.clear();
    }
    finish(&mut socket, pending, close_frame(reason, &state)).await;
}

/// The session loop: returns why the connection must end.
async fn serve(
    socket: &mut WebSocket,
    registration: &Registration,
    outbox: &mut Outbox,
    expires_at: Option<Instant>,
    live_since: std::time::Instant,
    state: &AppState,
) -> DisconnectReason {
    let inbound = Limit::new(state.settings.client_message_rate);
    let settings = &state.settings;
    let pings_enabled = !settings.ws_ping_interval.is_zero();
    let mut keepalive = Keepalive::new(
        settings.ws_ping_interval,
        settings.ws_ping_timeout,
        Instant::now(),
    );
    let timer = sleep_until(keepalive.deadline());
    tokio::pin!(timer);
    // Polled only when there is an expiry; the deadline is then the token's.
    let expiry = sleep_until(expires_at.unwrap_or_else(Instant::now));
    tokio::pin!(expiry);
    let mut batch = Vec::new();

    loop {
        tokio::select! {
            () = state.lifecycle.closing() => return DisconnectReason::Shutdown,
            reason = registration.close_requested() => return reason,
            received = outbox.recv_many(&mut batch, WRITE_BATCH) => {
                if received == 0 {
                    // Cannot happen while `registration` holds the sender; end cleanly if it does.
                    return DisconnectReason::NetworkError;
                }
                top_up(outbox, &mut batch).await;
                let frames = batch.iter().map(|item| Message::Text(item.frame().clone()));
                if let Err(reason) = write(socket, frames, settings.ws_write_timeout).await {
                    state.metrics.events_unwritten(reason, events_in(&batch));
                    return reason;
                }
                let bytes = frame_bytes(&batch);
                state.metrics.record_written(Transport::WebSocket, &batch, bytes, live_since);
                batch.clear();
            }
            () = &mut expiry, if expires_at.is_some() => {
                return DisconnectReason::TokenExpired;
            }
            () = &mut timer, if pings_enabled => {
                match keepalive.on_deadline(Instant::now()) {
                    Due::Ping => {
                        let ping = std::iter::once(Message::Ping(Default::default()));
                        if let Err(reason) = write(socket, ping, settings.ws_write_timeout).await {
                            return reason;
                        }
                    }
                    Due::TimedOut => return DisconnectReason::PingTimeout,
                }
                timer.as_mut().reset(keepalive.deadline());
            }
            message = socket.recv() => {
                if keepalive.on_client_activity() {
                    timer.as_mut().reset(keepalive.deadline());
                }
                if inbound.as_ref().is_some_and(|limit| !limit.check()) {
                    return DisconnectReason::MessageRate;
                }
                match message {
                    Some(Ok(Message::Text(text))) => {
                        state.metrics.client_message();
                        if let Err(reason) = registration.queue_reply(ack_frame(&text)) {
                            return reason;
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Binary(_))) => return DisconnectReason::UnsupportedData,
                    Some(Ok(Message::Close(_))) | None => return DisconnectReason::ClientClosed,
                    Some(Err(error)) => return classify(error),
                }
            }
        }
    }
}

/// How many of these items are events (not replies).
fn events_in(items: &[Outgoing]) -> usize {
    items
        .iter()
        .filter(|item| matches!(item, Outgoing::Event(_)))
        .count()
}

/// Bytes on the wire of these items as unmasked text frames: payload and frame header.
fn frame_bytes(items: &[Outgoing]) -> usize {
    items
        .iter()
        .map(|item| {
            let payload = item.frame().as_str().len();
            let header = match payload {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            payload + header
        })
        .sum()
}

/// Writes messages and flushes once, within `limit`; a write that cannot finish in time means the
/// client is not reading.
async fn write(
    socket: &mut WebSocket,
    messages: impl Iterator<Item = Message>,
    limit: Duration,
) -> Result<(), DisconnectReason> {
    let write_all = async {
        for message in messages {
            socket.feed(message).await?;
        }
        socket.flush().await
    };
    match timeout(limit, write_all).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(classify(error)),
        Err(_elapsed) => Err(DisconnectReason::SlowConsumer),
    }
}

/// Writes what is still pending, closes with `frame` (or completes a close the client began) and
/// waits briefly for the client's close reply, so the TCP connection ends cleanly.
async fn finish(socket: &mut WebSocket, pending: Vec<Outgoing>, frame: Option<CloseFrame>) {
    let close = async {
        for item in pending {
            socket.feed(Message::Text(item.frame().clone())).await?;
        }
        match frame {
            Some(frame) => socket.send(Message::Close(Some(frame))).await?,
            None => socket.close().await?,
        }
        while let Some(Ok(message)) = socket.recv().await {
            if let Message::Close(_) = message {
                break;
            }
        }
        Ok::<_, axum::Error>(())
    };
    let _ = timeout(CLOSE_GRACE, close).await;
}

/// RFC 6455 close codes this server sends.
mod close_code {
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the protocol.
    pub const PROTOCOL: u16 = 1002;
    /// The client sent a data type the server does not accept (binary).
    pub const UNSUPPORTED: u16 = 1003;
    /// The client sent a text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The connection broke a server policy: keepalive, queue limit, per-user limit.
    pub const POLICY: u16 = 1008;
    /// The client sent a frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The client's token expired (a private-use code): reconnect with a fresh token, resuming
    /// from the last event received.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// An operator disconnected the user (a private-use code).
    pub const DISCONNECTED: u16 = 4003;
}

/// The close frame for a reason, or `None` where the client already closed or the network is gone.
fn close_frame(reason: DisconnectReason, state: &AppState) -> Option<CloseFrame> {
    let (code, text) = match reason {
        DisconnectReason::ClientClosed | DisconnectReason::NetworkError => return None,
        DisconnectReason::Shutdown => (close_code::GOING_AWAY, "server shutting down".to_owned()),
        DisconnectReason::PingTimeout => (close_code::POLICY, "ping timeout".to_owned()),
        DisconnectReason::SlowConsumer => (close_code::POLICY, "slow consumer".to_owned()),
        DisconnectReason::Replaced => (
            close_code::POLICY,
            "replaced by a newer connection".to_owned(),
        ),
        DisconnectReason::MessageTooBig => (
            close_code::TOO_BIG,
            format!(
                "message too big (WS_MAX_MESSAGE_BYTES={})",
                state.settings.ws_max_message_bytes
            ),
        ),
        DisconnectReason::InvalidPayload => {
            (close_code::INVALID_PAYLOAD, "invalid UTF-8".to_owned())
        }
        DisconnectReason::ProtocolError => (close_code::PROTOCOL, "protocol error".to_owned()),
        DisconnectReason::TokenExpired => (close_code::TOKEN_EXPIRED, "token expired".to_owned()),
        DisconnectReason::Disconnected => (
            close_code::DISCONNECTED,
            "disconnected by an administrator".to_owned(),
        ),
        DisconnectReason::MessageRate => (
            close_code::POLICY,
            format!(
                "message rate exceeded (CLIENT_MESSAGE_RATE={} per second)",
                state.settings.client_message_rate
            ),
        ),
        DisconnectReason::UnsupportedData => (
            close_code::UNSUPPORTED,
            "binary frames are not supported".to_owned(),
        ),
    };
    Some(CloseFrame {
        code,
        reason: text.into(),
    })
}

/// Maps a socket error to the reason the connection ends.
fn classify(error: axum::Error) -> DisconnectReason {
    use tungstenite::error::Error;
    match error.into_inner().downcast::<Error>().map(|boxed| *boxed) {
        Ok(Error::Capacity(_)) => DisconnectReason::MessageTooBig,
        Ok(Error::Utf8(_)) => DisconnectReason::InvalidPayload,
        Ok(Error::ConnectionClosed | Error::AlreadyClosed) => DisconnectReason::ClientClosed,
        Ok(Error::Io(_)) | Err(_) => DisconnectReason::NetworkError,
        Ok(_) => DisconnectReason::ProtocolError,
    }
}
