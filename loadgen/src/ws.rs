//! WebSocket clients: connecting with retries, receiving and checking pushed frames, holding idle
//! connections open, and closing them cleanly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::probe::ProbeBoard;
use crate::stats::{LocalSamples, SeenSet, SharedHistogram};
use crate::target::{Frame, Incoming, Protocol, Target};

/// A client WebSocket over plain TCP.
pub type WsStream = WebSocketStream<TcpStream>;

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

/// [`connect`] with up to `attempts` tries (short linear backoff); returns the stream or the last
/// error, and how many retries were needed.
pub async fn connect_with_retry(
    target: &Target,
    user_id: &str,
    config: WebSocketConfig,
    attempts: u32,
) -> (Result<WsStream>, u32) {
    let mut retries = 0;
    loop {
        match connect(target, user_id, config).await {
            Ok(ws) => return (Ok(ws), retries),
            Err(error) if retries + 1 >= attempts.max(1) => return (Err(error), retries),
            Err(_) => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(50 * u64::from(retries))).await;
            }
        }
    }
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

/// State shared by every receiving connection of one run.
#[derive(Debug)]
pub struct RecvContext {
    /// How the target's frames look.
    pub protocol: Arc<dyn Protocol>,
    /// Where connections report their first subscription probe.
    pub probes: Arc<ProbeBoard>,
    /// The instant `sent_ns` values are measured from.
    pub start: Instant,
    /// Number of distinct users; message `seq` goes to user `seq % users`.
    pub users: u64,
    /// Sequence numbers at or beyond this are invalid.
    pub max_seq: u64,
    /// End-to-end latency (µs), from `sent_ns` to frame arrival.
    pub latency: SharedHistogram,
    /// Message frames (not probes or protocol messages) received so far by all connections (for
    /// the end-of-run grace wait).
    pub frames: AtomicU64,
}

/// What one receiving connection saw.
#[derive(Debug, Default)]
pub struct RecvOutcome {
    /// Index of the user the connection belongs to.
    pub user_index: u64,
    /// Message frames received (valid or not; probes and protocol messages excluded).
    pub frames: u64,
    /// Frames for a message this connection had already received.
    pub duplicates: u64,
    /// Frames whose `user_id` or sequence number belongs to another user.
    pub misrouted: u64,
    /// Frames that could not be parsed or carried an out-of-range sequence number.
    pub invalid: u64,
    /// Per-user message indices (`seq / users`) received.
    pub seen: SeenSet,
    /// Arrival of the last valid frame, ns since the shared start.
    pub last_recv_ns: u64,
    /// The server closed the connection (or it failed) before the run ended.
    pub closed_early: bool,
}

/// Reads frames until `cancel` fires or the connection ends, checking and timing each one.
pub async fn receive(
    mut ws: WsStream,
    user_id: String,
    user_index: u64,
    ctx: Arc<RecvContext>,
    cancel: CancellationToken,
) -> RecvOutcome {
    let mut outcome = RecvOutcome {
        user_index,
        ..RecvOutcome::default()
    };
    let mut samples = LocalSamples::default();
    let mut probed = false;
    loop {
        let message = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            message = ws.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => match ctx.protocol.classify(&text) {
                Incoming::Push(frame) => {
                    count_frame(&ctx, &mut outcome);
                    check_frame(&frame, &user_id, &ctx, &mut outcome, &mut samples);
                }
                Incoming::Invalid => {
                    count_frame(&ctx, &mut outcome);
                    outcome.invalid += 1;
                }
                Incoming::Probe => {
                    if !std::mem::replace(&mut probed, true) {
                        ctx.probes.confirm(user_index);
                    }
                }
                Incoming::Reply(answer) => answer_control(&mut ws, answer).await,
                Incoming::Ignore => {}
            },
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                outcome.closed_early = true;
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    samples.flush(&ctx.latency);
    if !outcome.closed_early {
        close(ws).await;
    }
    outcome
}

/// Counts one message frame.
fn count_frame(ctx: &RecvContext, outcome: &mut RecvOutcome) {
    outcome.frames += 1;
    ctx.frames.fetch_add(1, Ordering::Relaxed);
}

/// Sends the answer a protocol message asks for (bounded by a timeout; a failure shows up as the
/// connection ending).
async fn answer_control(ws: &mut WsStream, answer: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.send(Message::text(answer))).await;
}

/// Checks one pushed message (route, duplicate, range) and records its latency.
fn check_frame(
    frame: &Frame<'_>,
    user_id: &str,
    ctx: &RecvContext,
    outcome: &mut RecvOutcome,
    samples: &mut LocalSamples,
) {
    if frame.seq >= ctx.max_seq {
        outcome.invalid += 1;
        return;
    }
    if frame.user_id != user_id || frame.seq % ctx.users != outcome.user_index {
        outcome.misrouted += 1;
        return;
    }
    if !outcome.seen.insert(frame.seq / ctx.users) {
        outcome.duplicates += 1;
        return;
    }
    let now_ns = u64::try_from(ctx.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    samples.record(now_ns.saturating_sub(frame.sent_ns) / 1000, &ctx.latency);
    outcome.last_recv_ns = outcome.last_recv_ns.max(now_ns);
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
