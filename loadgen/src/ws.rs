//! WebSocket clients: connecting with retries, receiving and checking pushed frames, and holding
//! idle connections open.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::stats::{LocalSamples, SeenSet, SharedHistogram};
use crate::target::Target;

/// A client WebSocket over plain TCP.
pub type WsStream = WebSocketStream<TcpStream>;

/// Longest wait for a TCP connect plus WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for our close frame to be written when shutting a connection down.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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

/// Opens one WebSocket for `user_id` (TCP_NODELAY, bounded by a timeout).
pub async fn connect(target: &Target, user_id: &str, config: WebSocketConfig) -> Result<WsStream> {
    let handshake = async {
        let stream = TcpStream::connect(target.addr)
            .await
            .context("TCP connect")?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let (ws, _response) = tokio_tungstenite::client_async_with_config(
            target.ws_url(user_id),
            stream,
            Some(config),
        )
        .await
        .context("WebSocket handshake")?;
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

/// The fields loadgen needs from one pushed frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The frame's top-level `user_id`.
    pub user_id: &'a str,
    /// `data.seq`: the global message sequence number.
    pub seq: u64,
    /// `data.sent_ns`: when the message was (scheduled to be) sent, ns since the shared start.
    pub sent_ns: u64,
}

/// Extracts `user_id`, `data.seq` and `data.sent_ns` by scanning (the server writes compact JSON
/// and copies `data` verbatim); `None` if the frame does not look like a loadgen push.
pub fn parse_frame(text: &str) -> Option<Frame<'_>> {
    let user_start = text.find("\"user_id\":\"")? + "\"user_id\":\"".len();
    let user_len = text[user_start..].find('"')?;
    let data = &text[text.find("\"data\":")?..];
    Some(Frame {
        user_id: &text[user_start..user_start + user_len],
        seq: number_after(data, "\"seq\":")?,
        sent_ns: number_after(data, "\"sent_ns\":")?,
    })
}

/// The unsigned integer right after the first `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// State shared by every receiving connection of one run.
#[derive(Debug)]
pub struct RecvContext {
    /// The instant `sent_ns` values are measured from.
    pub start: Instant,
    /// Number of distinct users; message `seq` goes to user `seq % users`.
    pub users: u64,
    /// Sequence numbers at or beyond this are invalid.
    pub max_seq: u64,
    /// End-to-end latency (µs), from `sent_ns` to frame arrival.
    pub latency: SharedHistogram,
    /// Frames received so far by all connections (for the end-of-run grace wait).
    pub frames: AtomicU64,
}

/// What one receiving connection saw.
#[derive(Debug, Default)]
pub struct RecvOutcome {
    /// Index of the user the connection belongs to.
    pub user_index: u64,
    /// Text frames received.
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
    loop {
        let message = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            message = ws.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                check_frame(&text, &user_id, &ctx, &mut outcome, &mut samples);
            }
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

/// Classifies one text frame and records its latency.
fn check_frame(
    text: &str,
    user_id: &str,
    ctx: &RecvContext,
    outcome: &mut RecvOutcome,
    samples: &mut LocalSamples,
) {
    outcome.frames += 1;
    ctx.frames.fetch_add(1, Ordering::Relaxed);
    let Some(frame) = parse_frame(text) else {
        outcome.invalid += 1;
        return;
    };
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
    /// Text or binary frames received (none are expected).
    pub frames: u64,
    /// The server closed the connection (or it failed) before we did.
    pub closed_early: bool,
}

/// Keeps an idle connection open (answering pings) until `cancel` fires, then closes it.
pub async fn hold(mut ws: WsStream, cancel: CancellationToken) -> HoldOutcome {
    let mut outcome = HoldOutcome::default();
    loop {
        let message = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            message = ws.next() => message,
        };
        match message {
            Some(Ok(Message::Text(_) | Message::Binary(_))) => outcome.frames += 1,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_server_frames() {
        let text = r#"{"event_type":"message","event_id":"01J","user_id":"bench-u7","timestamp":1.5,"data":{"seq":42,"sent_ns":123456,"pad":"xx"}}"#;
        assert_eq!(
            parse_frame(text),
            Some(Frame {
                user_id: "bench-u7",
                seq: 42,
                sent_ns: 123_456
            })
        );
        assert_eq!(parse_frame(r#"{"user_id":"a","data":{"other":1}}"#), None);
        assert_eq!(parse_frame("not json"), None);
    }
}
