//! The WebSocket side of a session: text frames out, client frames in, pings, close codes.
//!
//! Items are sent as text frames written straight to the socket ([`frames`]), each batch within
//! `WS_WRITE_TIMEOUT`; everything else (reading, pings, pongs, close frames) goes through
//! tungstenite, whose own buffer is flushed before frames are written directly, so the two never
//! interleave inside a frame. Every text frame from the client is answered with an ack (queued
//! behind the events already queued); binary frames, oversized or invalid ones close the socket
//! with the matching RFC 6455 code. Keepalive pings follow [`Keepalive`]. Closing sends the close
//! code for the reason and waits briefly for the client's reply, unless a write was cut short
//! mid-frame: then the connection is just dropped.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, timeout};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;

use super::super::session::Link;
use super::frames::{self, write_text_frames};
use super::keepalive::{Due, Keepalive};
use super::upgrade::Socket;
use crate::config::Settings;
use crate::hub::Queued;
use crate::protocol::{ClientFrame, DisconnectReason, Transport, classify_client_frame};

/// How long closing may take: queued frames, the close frame and the client's reply.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// An upgraded WebSocket, as a session's [`Link`].
pub(super) struct WsLink {
    socket: Socket,
    /// Set while frames are being written: still set afterwards means a write was cut short and
    /// the wire may hold part of a frame.
    torn: bool,
    /// `WS_PING_INTERVAL`/`WS_PING_TIMEOUT`; `None` when pings are off.
    keepalive: Option<Keepalive>,
    /// `WS_WRITE_TIMEOUT`.
    write_timeout: Duration,
    /// What close frames quote: the limits a client broke.
    limits: Limits,
    /// The text frame written before anything else (the stream's position), if any.
    opening: Option<String>,
}

/// The settings close frames name.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_message_bytes: usize,
    client_message_rate: u32,
}

impl WsLink {
    /// A link over `socket` with the keepalive and limits of `settings`, that writes `opening`
    /// first.
    pub(super) fn new(socket: Socket, settings: &Settings, opening: Option<String>) -> Self {
        let keepalive = (!settings.ws_ping_interval.is_zero()).then(|| {
            Keepalive::new(
                settings.ws_ping_interval,
                settings.ws_ping_timeout,
                Instant::now(),
            )
        });
        Self {
            socket,
            torn: false,
            keepalive,
            write_timeout: settings.ws_write_timeout,
            limits: Limits {
                max_message_bytes: settings.ws_max_message_bytes,
                client_message_rate: settings.client_message_rate,
            },
            opening,
        }
    }
}

impl Link for WsLink {
    const TRANSPORT: Transport = Transport::WebSocket;

    async fn open(&mut self) -> Result<usize, DisconnectReason> {
        let Some(opening) = self.opening.take() else {
            return Ok(0);
        };
        let bytes = frames::text_wire_len(opening.len());
        let send = self.socket.send(Message::text(opening));
        finish_write(timeout(self.write_timeout, send).await)?;
        Ok(bytes)
    }

    async fn write(&mut self, items: &mut Vec<Queued>) -> Result<usize, DisconnectReason> {
        self.torn = true;
        write_items(&mut self.socket, items, self.write_timeout).await?;
        self.torn = false;
        Ok(frame_bytes(items))
    }

    fn keepalive_deadline(&self) -> Option<Instant> {
        self.keepalive.as_ref().map(Keepalive::deadline)
    }

    async fn keep_alive(&mut self) -> Result<usize, DisconnectReason> {
        let Some(keepalive) = self.keepalive.as_mut() else {
            return Ok(0);
        };
        match keepalive.on_deadline(Instant::now()) {
            Due::Ping => {
                let ping = self.socket.send(Message::Ping(Default::default()));
                finish_write(timeout(self.write_timeout, ping).await)?;
                Ok(0)
            }
            Due::TimedOut => Err(DisconnectReason::PingTimeout),
        }
    }

    async fn receive(&mut self) -> Result<Option<ClientFrame>, DisconnectReason> {
        let message = self.socket.next().await;
        if let Some(keepalive) = self.keepalive.as_mut() {
            keepalive.on_client_activity();
        }
        match message {
            Some(Ok(Message::Text(text))) => Ok(Some(classify_client_frame(text.as_str()))),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(None),
            Some(Ok(Message::Binary(_))) => Err(DisconnectReason::UnsupportedData),
            Some(Ok(Message::Close(_))) | None => Err(DisconnectReason::ClientClosed),
            Some(Err(error)) => Err(classify(error)),
        }
    }

    async fn close(mut self, pending: Vec<Queued>, reason: DisconnectReason) -> usize {
        if self.torn {
            // Part of a frame may be on the wire: nothing more can be written. The connection
            // ends when the socket is dropped.
            return 0;
        }
        let bytes = frame_bytes(&pending);
        finish(&mut self.socket, &pending, close_frame(reason, self.limits)).await;
        bytes
    }
}

/// Closes a connection refused after the upgrade (see [`super::refusal`]) with `frame`.
pub(super) async fn refuse(mut socket: Socket, frame: CloseFrame) {
    finish(&mut socket, &[], Some(frame)).await;
}

/// Bytes on the wire of these items as unmasked text frames: payload and frame header.
fn frame_bytes(items: &[Queued]) -> usize {
    items
        .iter()
        .map(|item| frames::wire_len(item.frame()))
        .sum()
}

/// Writes `items` as text frames within `limit`, after what tungstenite still holds (a pong); a
/// write that cannot finish in time means the client is not reading.
async fn write_items(
    socket: &mut Socket,
    items: &[Queued],
    limit: Duration,
) -> Result<(), DisconnectReason> {
    let write_all = async {
        socket.flush().await?;
        let frames = items.iter().map(|item| item.frame());
        write_text_frames(socket.get_mut(), frames).await?;
        Ok(())
    };
    finish_write(timeout(limit, write_all).await)
}

/// The outcome of a timed write: a timeout means the client is not reading.
fn finish_write(
    outcome: Result<Result<(), tungstenite::Error>, tokio::time::error::Elapsed>,
) -> Result<(), DisconnectReason> {
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(classify(error)),
        Err(_elapsed) => Err(DisconnectReason::SlowConsumer),
    }
}

/// Writes what is still pending, closes with `frame` (or completes a close the client began) and
/// waits briefly for the client's close reply, so the TCP connection ends cleanly.
async fn finish(socket: &mut Socket, pending: &[Queued], frame: Option<CloseFrame>) {
    let close = async {
        if !pending.is_empty() {
            socket.flush().await?;
            write_text_frames(socket.get_mut(), pending.iter().map(|item| item.frame())).await?;
        }
        match frame {
            Some(frame) => socket.send(Message::Close(Some(frame))).await?,
            // The client began the close: send tungstenite's queued reply (a close frame of ours
            // would be refused as a send after closing).
            None => SinkExt::close(socket).await?,
        }
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Close(_) = message {
                break;
            }
        }
        Ok::<_, tungstenite::Error>(())
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
fn close_frame(reason: DisconnectReason, limits: Limits) -> Option<CloseFrame> {
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
                limits.max_message_bytes
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
                limits.client_message_rate
            ),
        ),
        DisconnectReason::UnsupportedData => (
            close_code::UNSUPPORTED,
            "binary frames are not supported".to_owned(),
        ),
    };
    Some(CloseFrame {
        code: code.into(),
        reason: text.into(),
    })
}

/// Maps a socket error to the reason the connection ends. A connection that ends without a close
/// frame (tungstenite's `ResetWithoutClosingHandshake`: the client was killed, or the network cut)
/// is a network loss, not a protocol error.
fn classify(error: tungstenite::Error) -> DisconnectReason {
    use tungstenite::error::{Error, ProtocolError};
    match error {
        Error::Capacity(_) => DisconnectReason::MessageTooBig,
        Error::Utf8(_) => DisconnectReason::InvalidPayload,
        Error::ConnectionClosed | Error::AlreadyClosed => DisconnectReason::ClientClosed,
        Error::Io(_) | Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            DisconnectReason::NetworkError
        }
        _ => DisconnectReason::ProtocolError,
    }
}

#[cfg(test)]
mod tests {
    use tungstenite::error::{Error, ProtocolError};

    use super::*;

    #[test]
    fn an_end_without_a_close_frame_is_a_network_loss() {
        assert_eq!(
            classify(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)),
            DisconnectReason::NetworkError
        );
        assert_eq!(
            classify(Error::Protocol(ProtocolError::UnmaskedFrameFromClient)),
            DisconnectReason::ProtocolError
        );
        assert_eq!(
            classify(Error::ConnectionClosed),
            DisconnectReason::ClientClosed
        );
    }
}
