//! `listen`: a subscriber for operators and scripts. Connects as a user over WebSocket (or SSE),
//! prints each event as one line of JSON on stdout and what happens to the connection on stderr,
//! reconnects with capped, jittered exponential backoff, and resumes from the last event id it
//! saw, so that a dropped connection loses and repeats nothing (within the server's history;
//! beyond it the server sends a `resync` event, printed like any other).

use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, Request, StatusCode, header};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use super::sse::SseParser;
use super::{EXIT_TOKEN_EXPIRED, Failure, Target, check_path, describe_body};
use crate::client::args::ListenArgs;
use crate::config::Settings;

/// Close code of a WebSocket whose subscriber token expired.
const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Close code of a WebSocket an administrator disconnected.
const CLOSE_DISCONNECTED: u16 = 4003;
/// How long a handshake (TCP, then HTTP or WebSocket) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A session at least this long resets the backoff even if it delivered nothing.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Largest frame accepted from the server.
const MAX_FRAME_BYTES: usize = 16 << 20;

/// Runs until `--count` events were printed (`Ok`), `stop` is cancelled (Ctrl-C, SIGTERM: `Ok`),
/// stdout is closed (`Ok`), or the server refuses for good (`Err`).
pub async fn run(
    args: &ListenArgs,
    settings: &Settings,
    stop: CancellationToken,
) -> Result<(), Failure> {
    let target = Target::from_args(args.url.as_deref(), args.ca_file.as_deref(), settings)?;
    if args.reconnect_max < args.reconnect_min {
        return Err(Failure::usage(
            "--reconnect-max must not be shorter than --reconnect-min",
        ));
    }
    let path = match (&args.path, args.sse) {
        (Some(path), _) => path.clone(),
        (None, false) => settings.ws_path.clone(),
        (None, true) => settings.sse_stream_path.clone(),
    };
    check_path(&path)?;
    if args.count == Some(0) {
        return Ok(());
    }
    let mut listener = Listener {
        target,
        path,
        user: args.user.clone(),
        token: args.token.clone(),
        last_event_id: args.last_event_id.clone(),
        printed: 0,
        count: args.count,
        stop,
    };
    let mut backoff = Backoff::new(args.reconnect_min, args.reconnect_max);
    loop {
        let started = Instant::now();
        let before = listener.printed;
        let ending = if args.sse {
            listener.sse_session().await
        } else {
            listener.ws_session().await
        };
        let (why, connected) = match ending {
            Ending::Stop => return Ok(()),
            Ending::Fatal(failure) => return Err(failure),
            Ending::Failed(why) => (why, false),
            Ending::Lost(why) => (why, true),
        };
        if connected && (listener.printed > before || started.elapsed() >= STABLE_SESSION) {
            backoff.reset();
        }
        let delay = backoff.next_delay(fastrand::f64());
        let verb = if connected {
            "disconnected"
        } else {
            "connection failed"
        };
        eprintln!("{verb}: {why}; reconnecting in {:.1}s", delay.as_secs_f64());
        tokio::select! {
            () = listener.stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// How a session ended.
enum Ending {
    /// Done: count reached, interrupted, or stdout closed.
    Stop,
    /// Do not reconnect.
    Fatal(Failure),
    /// Could not connect (retry).
    Failed(String),
    /// Was connected, then lost the connection (retry).
    Lost(String),
}

/// What to do after printing an event.
enum Flow {
    Continue,
    Stop,
}

/// The listener's state across sessions.
struct Listener {
    target: Target,
    path: String,
    user: Option<String>,
    token: Option<String>,
    /// Where the next connection resumes from.
    last_event_id: Option<String>,
    /// Events printed so far.
    printed: u64,
    count: Option<u64>,
    stop: CancellationToken,
}

/// The fields of an event frame `listen` reads.
#[derive(Deserialize)]
struct FrameHead<'a> {
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event_type: Option<Cow<'a, str>>,
}

impl Listener {
    /// The query string: `user_id`, plus, when asked (WebSocket), `last_event_id` or, with no
    /// event to resume from yet, `position=true` (the server's first frame is then the stream's
    /// position, as an SSE stream's opening `id:`).
    fn query(&self, with_resume_point: bool) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(user) = &self.user {
            query.append_pair("user_id", user);
        }
        if with_resume_point {
            match &self.last_event_id {
                Some(id) => query.append_pair("last_event_id", id),
                None => query.append_pair("position", "true"),
            };
        }
        query.finish()
    }

    /// The URL shown in status lines (no resume point, no token).
    fn shown_url(&self, scheme: &str) -> String {
        self.target.url(scheme, &self.path, &self.query(false))
    }

    /// Status lines once connected.
    fn announce(&self, scheme: &str) {
        eprintln!("connected to {}", self.shown_url(scheme));
        if let Some(id) = &self.last_event_id {
            eprintln!("resuming from {id}");
        }
    }

    /// Prints one event (as one line of JSON) and counts it.
    fn print(&mut self, text: &str) -> Flow {
        let text = text.trim();
        let line: Cow<'_, str> = if text.contains(['\n', '\r']) {
            serde_json::from_str::<serde_json::Value>(text).map_or_else(
                |_| text.replace(['\n', '\r'], " ").into(),
                |v| v.to_string().into(),
            )
        } else {
            text.into()
        };
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // Whoever read our output is gone (`listen | head -1`): nothing left to do.
            return Flow::Stop;
        }
        self.printed += 1;
        if self.count.is_some_and(|count| self.printed >= count) {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    /// One WebSocket connection, from handshake to close.
    async fn ws_session(&mut self) -> Ending {
        let url = self.target.url("ws", &self.path, &self.query(true));
        let mut request = match url.as_str().into_client_request() {
            Ok(request) => request,
            Err(error) => return Ending::Fatal(Failure::usage(format!("{url}: {error}"))),
        };
        if let Some(token) = &self.token {
            match HeaderValue::from_str(&format!("Bearer {token}")) {
                Ok(value) => {
                    request.headers_mut().insert(header::AUTHORIZATION, value);
                }
                Err(_) => {
                    return Ending::Fatal(Failure::usage("--token is not a valid header value"));
                }
            }
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let target = self.target.clone();
        let handshake = async {
            let stream = target.connect().await.map_err(Handshake::Io)?;
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(Handshake::WebSocket)
        };
        let handshake = tokio::select! {
            () = self.stop.cancelled() => return Ending::Stop,
            outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => outcome,
        };
        let mut ws = match handshake {
            Err(_) => return Ending::Failed(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
            Ok(Err(Handshake::Io(error))) => return Ending::Failed(error),
            Ok(Err(Handshake::WebSocket(tungstenite::Error::Http(response)))) => {
                let detail = response
                    .body()
                    .as_deref()
                    .map(describe_body)
                    .unwrap_or_default();
                return refusal(response.status(), &detail);
            }
            Ok(Err(Handshake::WebSocket(error))) => return Ending::Failed(error.to_string()),
            Ok(Ok((ws, _response))) => ws,
        };
        self.announce("ws");
        loop {
            let message = tokio::select! {
                () = self.stop.cancelled() => {
                    close_politely(&mut ws).await;
                    return Ending::Stop;
                }
                message = ws.next() => message,
            };
            match message {
                None => return Ending::Lost(CONNECTION_LOST.into()),
                Some(Err(error)) => return Ending::Lost(ws_error(&error)),
                Some(Ok(tungstenite::Message::Text(text))) => {
                    let head = serde_json::from_str::<FrameHead>(&text).ok();
                    if let Some(id) = head.as_ref().and_then(|head| head.event_id.as_ref()) {
                        self.last_event_id = Some(id.clone().into_owned());
                    }
                    // The stream's position moves the resume point but is not an event.
                    let position = head
                        .and_then(|head| head.event_type)
                        .is_some_and(|kind| kind == "position");
                    if position {
                        continue;
                    }
                    if let Flow::Stop = self.print(&text) {
                        close_politely(&mut ws).await;
                        return Ending::Stop;
                    }
                }
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    // Answer the close handshake (tungstenite queued the reply; flush it).
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
                    return closed(frame.as_ref(), self.last_event_id.as_deref());
                }
                Some(Ok(_)) => {} // pings are answered by tungstenite; binary frames are not events
            }
        }
    }

    /// One SSE stream, from request to end.
    async fn sse_session(&mut self) -> Ending {
        let path_and_query = self.target.path_and_query(&self.path, &self.query(false));
        let mut request = Request::get(path_and_query)
            .header(header::HOST, self.target.authority())
            .header(header::ACCEPT, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache");
        if let Some(id) = &self.last_event_id {
            request = request.header("last-event-id", id.as_str());
        }
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match request.body(Empty::<Bytes>::new()) {
            Ok(request) => request,
            Err(error) => {
                return Ending::Fatal(Failure::usage(format!("cannot build the request: {error}")));
            }
        };
        let target = self.target.clone();
        let exchange = async {
            let stream = target.connect().await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|error| error.to_string())?;
            tokio::spawn(connection);
            sender
                .send_request(request)
                .await
                .map_err(|error| error.to_string())
        };
        let response = tokio::select! {
            () = self.stop.cancelled() => return Ending::Stop,
            outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange) => outcome,
        };
        let response = match response {
            Err(_) => return Ending::Failed(format!("no answer within {HANDSHAKE_TIMEOUT:?}")),
            Ok(Err(error)) => return Ending::Failed(error),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status != StatusCode::OK {
            let body = tokio::time::timeout(Duration::from_secs(2), response.into_body().collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|body| describe_body(&body.to_bytes()))
                .unwrap_or_default();
            return refusal(status, &body);
        }
        self.announce("http");
        let mut body = response.into_body();
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        loop {
            let frame = tokio::select! {
                () = self.stop.cancelled() => return Ending::Stop,
                frame = body.frame() => frame,
            };
            let chunk = match frame {
                None => {
                    let why = parser.last_comment().map_or_else(
                        || "the stream ended".to_owned(),
                        |comment| format!("the stream ended: {comment}"),
                    );
                    return Ending::Lost(why);
                }
                Some(Err(error)) => return Ending::Lost(error.to_string()),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => chunk,
                    Err(_) => continue, // trailers
                },
            };
            parser.feed(&chunk, &mut events);
            for event in events.drain(..) {
                if event.event_type == "close" {
                    return sse_closed(&event.data, self.last_event_id.as_deref());
                }
                // The id that came with this event (or before it) is where to resume.
                if let Some(id) = parser.last_event_id() {
                    self.last_event_id = Some(id.to_owned());
                }
                if let Flow::Stop = self.print(&event.data) {
                    return Ending::Stop;
                }
            }
            // An id-only block (the opening position of a fresh stream) moves the resume point.
            if let Some(id) = parser.last_event_id() {
                self.last_event_id = Some(id.to_owned());
            }
        }
    }
}

/// Why a WebSocket handshake failed.
enum Handshake {
    Io(String),
    WebSocket(tungstenite::Error),
}

/// A refused handshake: final for 400, 401, 403 and 404, retried otherwise (429, 503, …).
fn refusal(status: StatusCode, detail: &str) -> Ending {
    let mut why = format!("the server answered {status}");
    if !detail.is_empty() {
        why.push_str(": ");
        why.push_str(detail);
    }
    match status {
        StatusCode::UNAUTHORIZED => Ending::Fatal(Failure::failed(format!(
            "{why} (the server verifies subscriber tokens: pass a valid one with --token)"
        ))),
        StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
            Ending::Fatal(Failure::failed(why))
        }
        _ => Ending::Failed(why),
    }
}

/// How a WebSocket that ended without a close frame is reported.
const CONNECTION_LOST: &str =
    "connection lost without a close frame (network error, or the server went away)";

/// How a WebSocket read error is reported: a connection that ended without a close frame
/// (tungstenite calls it a protocol error) is a network loss, worded so.
fn ws_error(error: &tungstenite::Error) -> String {
    use tungstenite::error::{Error, ProtocolError};
    match error {
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => CONNECTION_LOST.into(),
        Error::Io(error) => format!("connection lost ({error})"),
        other => other.to_string(),
    }
}

/// What a close frame from the server means for the listener.
fn closed(frame: Option<&CloseFrame>, last_event_id: Option<&str>) -> Ending {
    let Some(frame) = frame else {
        return Ending::Lost("closed by the server".into());
    };
    let code = u16::from(frame.code);
    match code {
        CLOSE_TOKEN_EXPIRED => token_expired(last_event_id),
        CLOSE_DISCONNECTED => Ending::Fatal(Failure::failed(format!(
            "disconnected by an administrator (close code {code}: {})",
            frame.reason
        ))),
        _ => Ending::Lost(format!("closed by the server ({code} {})", frame.reason)),
    }
}

/// What an SSE `close` event means for the listener.
fn sse_closed(data: &str, last_event_id: Option<&str>) -> Ending {
    let reason = serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|value| value.get("reason")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    match reason.as_str() {
        "token_expired" => token_expired(last_event_id),
        "disconnected" => Ending::Fatal(Failure::failed(
            "disconnected by an administrator (the stream ended with reason \"disconnected\")",
        )),
        _ => Ending::Lost(format!("the server ended the stream ({reason})")),
    }
}

/// The token expired: exit 3 with what to run next.
fn token_expired(last_event_id: Option<&str>) -> Ending {
    let resume = last_event_id.map_or_else(
        || " --last-event-id <the last event id you have> (none arrived on this run)".to_owned(),
        |id| format!(" --last-event-id {id}"),
    );
    Ending::Fatal(Failure {
        status: EXIT_TOKEN_EXPIRED,
        message: format!(
            "the subscriber token expired (close code {CLOSE_TOKEN_EXPIRED}): get a new token \
             and run again with --token <new token>{resume}"
        ),
    })
}

/// Sends a normal close and waits briefly for the server's answer.
async fn close_politely<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = ws.close(Some(frame)).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Exponential backoff between reconnection attempts: `min`, doubling per failed attempt, capped
/// at `max`, each delay stretched by a random factor in [1, 1.5) (then capped again) so that
/// many listeners dropped together do not come back together.
#[derive(Debug, Clone)]
struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempt: 0,
        }
    }

    /// The next delay; `random` is uniform in [0, 1).
    fn next_delay(&mut self, random: f64) -> Duration {
        let base = self
            .min
            .saturating_mul(1 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(1.0 + random.clamp(0.0, 1.0) / 2.0)
            .min(self.max)
    }

    /// After a connection that worked: start again from `min`.
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        assert_eq!(backoff.next_delay(0.0), Duration::from_secs(1));
        assert_eq!(backoff.next_delay(0.0), Duration::from_secs(2));
        assert_eq!(backoff.next_delay(0.5), Duration::from_secs(5));
        assert_eq!(backoff.next_delay(0.99), Duration::from_secs(10));
        for _ in 0..100 {
            assert!(backoff.next_delay(0.7) <= Duration::from_secs(10));
        }
        backoff.reset();
        let first = backoff.next_delay(0.999);
        assert!(first >= Duration::from_secs(1) && first < Duration::from_millis(1500));
    }

    #[test]
    fn an_end_without_a_close_frame_is_worded_as_a_network_loss() {
        use tungstenite::error::{Error, ProtocolError};
        let reset = ws_error(&Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake,
        ));
        assert!(reset.contains("connection lost"), "{reset}");
        assert!(!reset.contains("protocol"), "{reset}");
        let broken = ws_error(&Error::Io(std::io::ErrorKind::BrokenPipe.into()));
        assert!(broken.starts_with("connection lost"), "{broken}");
        let protocol = ws_error(&Error::Protocol(ProtocolError::UnmaskedFrameFromClient));
        assert!(protocol.contains("protocol"), "{protocol}");
    }

    #[test]
    fn close_codes_decide_whether_to_reconnect() {
        let frame = |code: u16, reason: &str| CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        };
        assert!(matches!(
            closed(Some(&frame(4001, "token expired")), Some("E:3")),
            Ending::Fatal(Failure { status: 3, ref message }) if message.contains("--last-event-id E:3")
        ));
        assert!(matches!(
            closed(Some(&frame(4003, "disconnected by an administrator")), None),
            Ending::Fatal(Failure { status: 1, .. })
        ));
        assert!(matches!(
            closed(Some(&frame(1001, "server shutting down")), None),
            Ending::Lost(_)
        ));
        assert!(matches!(closed(None, None), Ending::Lost(_)));
        assert!(matches!(
            sse_closed(r#"{"reason":"replaced"}"#, None),
            Ending::Lost(_)
        ));
        assert!(matches!(
            sse_closed(r#"{"event_type":"close","reason":"disconnected"}"#, None),
            Ending::Fatal(Failure { status: 1, .. })
        ));
        assert!(matches!(
            refusal(StatusCode::SERVICE_UNAVAILABLE, ""),
            Ending::Failed(_)
        ));
        assert!(matches!(
            refusal(StatusCode::UNAUTHORIZED, ""),
            Ending::Fatal(_)
        ));
    }
}
