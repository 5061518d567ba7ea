//! WebSocket clients: connecting, receiving and checking pushed frames, holding idle
//! connections open, and closing them cleanly.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::probe::ProbeBoard;
use crate::recv::{FrameChecker, RecvContext, RecvOutcome};
use crate::target::{Incoming, Protocol, Target};

/// A client WebSocket, over plain TCP or TLS.
pub type WsStream = WebSocketStream<MaybeTls>;

/// A TCP connection, or TLS over one (`wss://`).
#[derive(Debug)]
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Longest wait for a TCP connect plus WebSocket handshake plus the target's subscribe step.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for our close frame to be written when shutting a connection down; `churn` bounds
/// each whole [`close_handshake`] by it too.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Client settings: small buffers when many mostly-idle connections are held.
pub fn client_config(many_connections: bool) -> WebSocketConfig {
    if many_connections {
        WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
    } else {
        WebSocketConfig::default()
            .read_buffer_size(64 * 1024)
            .write_buffer_size(0)
    }
}

/// Opens one WebSocket for `user_id` (TCP_NODELAY) and runs the target's subscribe step, all
/// bounded by a timeout.
pub async fn connect(target: &Target, user_id: &str, config: WebSocketConfig) -> Result<WsStream> {
    connect_url(target, &target.ws_url(user_id), user_id, config).await
}

/// [`connect`] to a given WebSocket URL for `user_id` (one that asks for more than the user, like
/// a resume point).
pub async fn connect_url(
    target: &Target,
    url: &str,
    user_id: &str,
    config: WebSocketConfig,
) -> Result<WsStream> {
    let handshake = async {
        let stream = TcpStream::connect(target.ws.addr)
            .await
            .context("TCP connect")?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let stream = match &target.ws.tls {
            None => MaybeTls::Plain(stream),
            Some(tls) => MaybeTls::Tls(Box::new(tls.connect(stream, false).await?)),
        };
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config))
                .await
                .context("WebSocket handshake")?;
        let mut ws = ws;
        target
            .protocol
            .subscribe(&mut ws, user_id)
            .await
            .context("subscribing")?;
        Ok::<_, anyhow::Error>(ws)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .context("WebSocket handshake timed out")?
}

/// Sends a close frame (bounded by a timeout) and drops the connection.
pub async fn close(mut ws: WsStream) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
}

/// Closes `ws` cleanly: sends a close frame, then reads (discarding other frames) until the
/// server's close frame has arrived and the server has ended the TCP stream, all within
/// `timeout`. Fails when the time runs out (tokio's `Elapsed` is then in the error chain), when the
/// connection fails, or when it ends without the server's close frame.
pub async fn close_handshake(mut ws: WsStream, timeout: Duration) -> Result<()> {
    let handshake = async {
        ws.close(None).await.context("sending the close frame")?;
        let mut answered = false;
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) => answered = true,
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    return Err(error).context("waiting for the server's close frame");
                }
                None if answered => return Ok(()),
                None => bail!("the connection ended without the server's close frame"),
            }
        }
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .context("closing handshake timed out")?
}

/// Reads frames until `cancel` fires or the connection ends, checking and timing each one.
pub async fn receive(
    mut ws: WsStream,
    user_id: String,
    user_index: u64,
    ctx: Arc<RecvContext>,
    cancel: CancellationToken,
) -> RecvOutcome {
    let mut checker = FrameChecker::new(user_id, user_index, ctx);
    let ended = read_texts(&mut ws, &cancel, |text| checker.text(text)).await;
    if ended.is_none() {
        close(ws).await;
    }
    checker.finish(ended)
}

/// Hands every text frame to `on_text` (sending the answer it returns, if any) until `cancel`
/// fires (`None`) or the server ends the connection first (`Some(why)`: the close frame's reason,
/// or how the connection ended or failed).
pub async fn read_texts(
    ws: &mut WsStream,
    cancel: &CancellationToken,
    mut on_text: impl FnMut(&str) -> Option<Cow<'static, str>>,
) -> Option<String> {
    loop {
        let message = tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            message = ws.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                if let Some(answer) = on_text(&text) {
                    answer_control(ws, &answer).await;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return Some(match frame {
                    Some(frame) if !frame.reason.is_empty() => frame.reason.to_string(),
                    Some(frame) => format!("close code {}", frame.code),
                    None => "close frame".to_owned(),
                });
            }
            Some(Err(error)) => return Some(error.to_string()),
            None => return Some("connection ended".to_owned()),
            Some(Ok(_)) => {}
        }
    }
}

/// Sends the answer a protocol message asks for (bounded by a timeout; a failure shows up as the
/// connection ending).
async fn answer_control(ws: &mut WsStream, answer: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.send(Message::text(answer))).await;
}

/// What one held idle connection saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct HoldOutcome {
    /// Message frames received (none are expected; probes and protocol messages excluded).
    pub frames: u64,
    /// The server closed the connection (or it failed) before we did.
    pub closed_early: bool,
}

/// Keeps an idle connection open (answering pings and protocol messages, reporting a probe on
/// `probes`) until `cancel` fires, then closes it.
pub async fn hold(
    mut ws: WsStream,
    user_index: u64,
    protocol: Arc<dyn Protocol>,
    probes: Arc<ProbeBoard>,
    cancel: CancellationToken,
) -> HoldOutcome {
    let mut outcome = HoldOutcome::default();
    let mut probed = false;
    loop {
        let message = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            message = ws.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => match protocol.classify(&text) {
                Incoming::Probe => {
                    if !std::mem::replace(&mut probed, true) {
                        probes.confirm(user_index);
                    }
                }
                Incoming::Reply(answer) => answer_control(&mut ws, answer).await,
                Incoming::Ignore => {}
                Incoming::Push(_) | Incoming::Invalid => outcome.frames += 1,
            },
            Some(Ok(Message::Binary(_))) => outcome.frames += 1,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                outcome.closed_early = true;
                return outcome;
            }
            Some(Ok(_)) => {}
        }
    }
    close(ws).await;
    outcome
}
