//! Shared test fixtures: settings built from flags alone, the server in-process ([`TestApp`]) or as
//! a real process ([`ServerProcess`]), and the requests and clients the tests make of it.
//!
//! Every request a test module repeats lives here, once, as a [`TestApp`] method (`push`,
//! `push_batch`, `broadcast`, `health`, `metrics`, WebSocket handshakes, SSE streams, …); a
//! module keeps only what is its own.

#![allow(dead_code)] // each test binary uses its own subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{EventStream, Eventsource};
use futures_util::stream::{self, Stream};
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use websocket_sse_server::clock::Clock;
use websocket_sse_server::config::Settings;
use websocket_sse_server::lifecycle::Lifecycle;
use websocket_sse_server::server::Application;

/// A WebSocket client connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for something that should happen promptly.
pub const PROMPTLY: Duration = Duration::from_secs(5);

/// Flags for a server whose connections fall behind quickly, for [`TestApp::push_until_refused`]:
/// a queue of 8 events per connection (more than the history of 4, as `WS_SEND_QUEUE` must be),
/// and a write blocked for 0.5 s closes the connection as a slow consumer.
pub const SMALL_QUEUES: [&str; 6] = [
    "--ws-send-queue",
    "8",
    "--ws-write-timeout",
    "0.5",
    "--history-size",
    "4",
];

/// How long a process may take to exit after it was told to (or after failing at start-up).
pub const EXIT_DEADLINE: Duration = Duration::from_secs(10);

// --- repository files ---------------------------------------------------------------------------

/// The path of `relative` (such as `docs/clients.md`) in this repository.
pub fn repository_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The text of the repository's file `relative`.
pub fn repository_text(relative: &str) -> String {
    let path = repository_file(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

// --- settings -----------------------------------------------------------------------------------

/// The settings of a test server: loopback, an ephemeral port, then `flags`; nothing from the
/// environment.
pub fn test_settings(flags: &[&str]) -> Settings {
    let mut args = vec!["websocket-sse-server", "--host", "127.0.0.1", "--port", "0"];
    args.extend_from_slice(flags);
    Settings::from_flags(args).expect("test flags parse")
}

// --- the server in this process -----------------------------------------------------------------

/// A server running in this test process (or, from [`TestApp::at`], the address of a server
/// process, with the same clients).
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// An HTTP client for it.
    pub http: reqwest::Client,
    /// Starts its graceful shutdown.
    pub lifecycle: Lifecycle,
    /// Completes when the server has shut down.
    pub stopped: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The clock its rate limits run on: move it forward instead of waiting for a refill.
    pub clock: Clock,
}

/// Starts the server on 127.0.0.1 with an ephemeral port and the given extra flags.
pub async fn spawn_app(flags: &[&str]) -> TestApp {
    let settings = test_settings(flags);
    settings
        .check_consistency()
        .expect("test flags are consistent");
    let app = Application::build(settings).await.expect("server binds");
    let addr = app.local_addr().expect("bound address");
    let lifecycle = app.lifecycle();
    let clock = app.clock();
    let stopped = tokio::spawn(app.run_until_stopped());
    TestApp {
        addr,
        http: reqwest::Client::new(),
        lifecycle,
        stopped,
        clock,
    }
}

/// A response: status, headers and the body as text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    /// The body as JSON (fails the test if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text))
    }

    /// A header's value, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("header is text"))
    }

    /// The `Content-Type` (empty when there is none).
    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or_default()
    }
}

/// A WebSocket handshake the server answered with an HTTP status instead of 101.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Refused {
    /// A header that must be there.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"))
            .to_str()
            .expect("visible ASCII header")
    }

    /// `Retry-After` in whole seconds.
    pub fn retry_after(&self) -> u64 {
        self.header("retry-after")
            .parse()
            .unwrap_or_else(|_| panic!("Retry-After is a number of seconds: {self:?}"))
    }

    /// The body as JSON (fails the test if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("refusal body is not JSON ({error}): {:?}", self.body))
    }
}

impl TestApp {
    /// The clients of a server process listening at `addr`. Its `lifecycle` and `stopped` are
    /// inert: a process is stopped with a signal.
    pub fn at(addr: SocketAddr) -> Self {
        Self {
            addr,
            http: reqwest::Client::new(),
            lifecycle: Lifecycle::default(),
            stopped: tokio::spawn(async { Ok(()) }),
            clock: Clock::default(),
        }
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://addr/ws?{query}` (sent as given, so tests can send bad user ids).
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    // --- HTTP -----------------------------------------------------------------------------------

    /// Sends `method path` with extra headers and a raw body, within [`PROMPTLY`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut builder = self.http.request(method, self.url(path));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(body) = body {
            builder = builder.body(body);
        }
        let response = timeout(PROMPTLY, builder.send())
            .await
            .expect("response within the deadline")
            .expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        Reply {
            status,
            headers,
            text,
        }
    }

    /// GETs `path` with extra headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request(Method::GET, path, headers, None).await
    }

    /// POSTs `body` as JSON to `path` with extra headers.
    pub async fn post_with(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let bytes = serde_json::to_vec(body).expect("JSON serialises");
        self.request(Method::POST, path, &all, Some(bytes)).await
    }

    /// POSTs a JSON body to `path` and returns status and parsed body.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// GETs `path` and returns status and parsed JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// DELETEs `path` and returns status and parsed JSON body.
    pub async fn delete_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .delete(self.url(path))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// Pushes one message (`POST /sse/push`) and returns the response body, asserting 200.
    pub async fn push(&self, body: Value) -> Value {
        self.push_with(body, &[]).await
    }

    /// [`Self::push`] with extra headers (an API key).
    pub async fn push_with(&self, body: Value, headers: &[(&str, &str)]) -> Value {
        let reply = self.post_with("/sse/push", &body, headers).await;
        assert_eq!(reply.status, 200, "push {body} answered {}", reply.text);
        reply.json()
    }

    /// Pushes `{"n": event_id}` to `user` with that upstream event id, asserting 200.
    pub async fn push_id(&self, user: &str, event_id: &str) -> Value {
        self.push(
            serde_json::json!({"user_id": user, "event_id": event_id, "data": {"n": event_id}}),
        )
        .await
    }

    /// Pushes a batch (`POST /sse/push/batch`) and returns its per-item results, asserting 200.
    pub async fn push_batch(&self, body: Value) -> Vec<Value> {
        let (status, response) = self.post_json("/sse/push/batch", &body).await;
        assert_eq!(status, 200, "batch {body} answered {response}");
        response["results"]
            .as_array()
            .unwrap_or_else(|| panic!("a results list: {response}"))
            .clone()
    }

    /// Pushes 64 KiB events (`{"n": n, "pad": …}`) to `user`, whose connection reads nothing,
    /// until one is not taken (`"status": "partial"`): returns that push's `n` and response.
    /// Every push before it must have been delivered; `every_tenth` runs after pushes 0, 10, 20…
    /// (to check on another client meanwhile).
    pub async fn push_until_refused(
        &self,
        user: &str,
        mut every_tenth: impl AsyncFnMut(),
    ) -> (usize, Value) {
        let padding = "x".repeat(64 * 1024);
        for n in 0..2000 {
            let response = self
                .push(serde_json::json!({"user_id": user, "data": {"n": n, "pad": padding}}))
                .await;
            if response["status"] == "partial" {
                return (n, response);
            }
            assert_eq!(response["delivered"], 1, "push {n}: {response}");
            if n % 10 == 0 {
                every_tenth().await;
            }
        }
        panic!("{user}'s queue never overflowed");
    }

    /// Broadcasts (`POST /sse/broadcast`) and returns the response body, asserting 200.
    pub async fn broadcast(&self, body: Value) -> Value {
        let (status, response) = self.post_json("/sse/broadcast", &body).await;
        assert_eq!(status, 200, "broadcast {body} answered {response}");
        response
    }

    /// Closes every connection of `user` (`DELETE /admin/users/{user}/connections`) and returns
    /// the answer, asserting 200.
    pub async fn disconnect_user(&self, user: &str) -> Value {
        let (status, answer) = self
            .delete_json(&format!("/admin/users/{user}/connections"))
            .await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    /// `GET /health`, asserting 200.
    pub async fn health(&self) -> Value {
        let (status, body) = self.get_json("/health").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `GET /metrics` (JSON), asserting 200.
    pub async fn metrics(&self) -> Value {
        let (status, body) = self.get_json("/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Polls `/metrics` until `check` holds (or panics after [`PROMPTLY`]).
    pub async fn wait_for_metrics(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.poll_json("/metrics", what, |_, body| check(body))
            .await
    }

    /// Polls `/health` (which must answer 200) until `check` holds (or panics after
    /// [`PROMPTLY`]).
    pub async fn wait_for_health(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.poll_json("/health", what, |status, body| {
            assert_eq!(status, 200, "{body}");
            check(body)
        })
        .await
    }

    /// GETs `path` every 10 ms until `check` holds for its status and JSON body; panics after
    /// [`PROMPTLY`].
    async fn poll_json(
        &self,
        path: &str,
        what: &str,
        check: impl Fn(u16, &Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + PROMPTLY;
        loop {
            let (status, body) = self.get_json(path).await;
            if check(status, &body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until exactly `n` connections are registered. A client's handshake completes before
    /// its session registers it, so a push sent right after `connect` could miss it.
    pub async fn wait_for_connections(&self, n: u64) -> Value {
        self.wait_for_health(&format!("{n} registered connections"), |h| {
            h["connections"] == n
        })
        .await
    }

    // --- WebSocket ------------------------------------------------------------------------------

    /// A WebSocket handshake to `{path}?{query}` with extra headers, within [`PROMPTLY`]: the
    /// upgraded socket, or the refusal. Anything else (a broken connection) fails the test.
    pub async fn handshake_on(
        &self,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, Refused> {
        let url = format!("ws://{}{path}?{query}", self.addr);
        let mut request = url.as_str().into_client_request().expect("a valid request");
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid header name");
            let value = HeaderValue::from_str(value).expect("a valid header value");
            request.headers_mut().insert(name, value);
        }
        let answer = timeout(PROMPTLY, tokio_tungstenite::connect_async(request))
            .await
            .expect("the handshake is answered promptly");
        match answer {
            Ok((ws, response)) => {
                assert_eq!(response.status(), 101, "{url}");
                Ok(ws)
            }
            Err(WsError::Http(response)) => Err(Refused {
                status: response.status().as_u16(),
                headers: response.headers().clone(),
                body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                    .into_owned(),
            }),
            Err(other) => panic!("handshake {url}: expected 101 or an HTTP refusal, got {other}"),
        }
    }

    /// [`Self::handshake_on`] the default WebSocket path, `/ws`.
    pub async fn handshake(&self, query: &str, headers: &[(&str, &str)]) -> Result<Ws, Refused> {
        self.handshake_on("/ws", query, headers).await
    }

    /// A handshake to `/ws?{query}` that must be upgraded.
    pub async fn upgraded(&self, query: &str, headers: &[(&str, &str)]) -> Ws {
        self.handshake(query, headers)
            .await
            .unwrap_or_else(|refused| panic!("/ws?{query} was refused: {refused:?}"))
    }

    /// A handshake to `/ws?{query}` that must be refused before the upgrade.
    pub async fn refused(&self, query: &str, headers: &[(&str, &str)]) -> Refused {
        match self.handshake(query, headers).await {
            Ok(_) => panic!("/ws?{query} with {headers:?} was upgraded (101); it must be refused"),
            Err(refused) => refused,
        }
    }

    /// A browser's handshake to `/ws?{query}` (the headers include `Origin`) that must be refused
    /// the way a browser can see it: upgraded, then closed at once with a code and reason, and
    /// nothing before the close.
    pub async fn refused_by_close(&self, query: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut ws = self.upgraded(query, headers).await;
        let first = timeout(PROMPTLY, ws.next())
            .await
            .expect("the refusal arrives promptly");
        match first {
            Some(Ok(Message::Close(Some(frame)))) => (frame.code.into(), frame.reason.to_string()),
            other => panic!("/ws?{query}: expected a close frame at once, got {other:?}"),
        }
    }

    /// Connects a WebSocket client as `user` (sent as given).
    pub async fn connect(&self, user: &str) -> Ws {
        self.upgraded(&format!("user_id={user}"), &[]).await
    }

    /// Connects as `user`, resuming from `from` (the `last_event_id` query parameter).
    pub async fn resume(&self, user: &str, from: &str) -> Ws {
        let query = format!("user_id={}&last_event_id={}", encode(user), encode(from));
        self.upgraded(&query, &[]).await
    }

    // --- SSE ------------------------------------------------------------------------------------

    /// `GET /sse/stream?{query}` with extra headers; the response once its headers arrived.
    pub async fn sse_stream(&self, query: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.http.get(self.url(&format!("/sse/stream?{query}")));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        timeout(PROMPTLY, request.send())
            .await
            .expect("response headers within the deadline")
            .expect("request")
    }
}

// --- WebSocket frames ---------------------------------------------------------------------------

/// Receives the next text frame as JSON, failing the test if none arrives promptly.
pub async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).expect("frame is JSON")
}

/// Receives the next text frame, skipping pings and pongs, failing the test if none arrives
/// promptly.
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        let message = timeout(PROMPTLY, ws.next())
            .await
            .expect("a frame within the deadline")
            .expect("stream still open")
            .expect("valid frame");
        match message {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the server closes; returns the close code and reason (None if the TCP connection
/// ended without a close frame).
pub async fn close_of(ws: &mut Ws) -> Option<(u16, String)> {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let next = timeout_at(deadline, ws.next())
            .await
            .expect("close within the deadline");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                return Some((frame.code.into(), frame.reason.to_string()));
            }
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// After the close handshake began, polls the client until its stream ends, so that its close
/// reply is actually written (tungstenite sends it on the next poll).
pub async fn drain_until_end(ws: &mut Ws) {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        match timeout_at(deadline, ws.next()).await {
            Err(_elapsed) => panic!("the connection did not end after the close handshake"),
            Ok(None | Some(Err(_))) => return,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Sends a text frame.
pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
}

/// Fails the test if `ws` receives a data frame (or closes) within `within`; pings are ignored.
pub async fn assert_silent(ws: &mut Ws, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match timeout_at(deadline, ws.next()).await {
            Err(_elapsed) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("expected no frame, got {other:?}"),
        }
    }
}

// --- SSE streams --------------------------------------------------------------------------------

/// A response body as a stream of chunks (reqwest's `stream` feature is not needed for this).
pub type Body = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// Parsed events, as a browser's EventSource would dispatch them.
pub type Events = EventStream<Body>;

/// `response`'s body as a stream of chunks.
pub fn body_of(response: reqwest::Response) -> Body {
    Box::pin(stream::unfold(Some(response), |response| async move {
        let mut response = response?;
        match response.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(response))),
            Ok(None) => None,
            Err(error) => Some((Err(error), None)),
        }
    }))
}

/// What a stream opens with.
#[derive(Debug)]
pub struct Opening {
    /// The `retry:` hint, in milliseconds.
    pub retry: Option<u64>,
    /// The opening `id:` (a position token), on a fresh connection.
    pub id: Option<String>,
    /// The whole block, blank line included.
    pub text: String,
}

/// An event stream read as raw text, for what a parser hides (comments, `retry:`, the opening
/// `id:`); it can be handed to the parser ([`SseReader::events`]) at any point without losing
/// bytes.
pub struct SseReader {
    body: Body,
    /// Received but not yet returned.
    pending: Vec<u8>,
    /// Every byte received so far.
    received: usize,
}

impl SseReader {
    /// Reads `response`'s body.
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: body_of(response),
            pending: Vec::new(),
            received: 0,
        }
    }

    /// Opens `/sse/stream?{query}`, which must be accepted as an event stream (200,
    /// `text/event-stream`).
    pub async fn open(app: &TestApp, query: &str, headers: &[(&str, &str)]) -> Self {
        let response = app.sse_stream(query, headers).await;
        assert_eq!(response.status(), 200, "{query}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{query}"
        );
        Self::new(response)
    }

    /// How many bytes of the body have arrived so far (returned or not).
    pub fn received(&self) -> usize {
        self.received
    }

    /// Reads one more chunk by `deadline`; `None` at the end of the stream.
    async fn read(&mut self, deadline: Instant, waiting_for: &str) -> Option<()> {
        let chunk = timeout_at(deadline, self.body.next())
            .await
            .unwrap_or_else(|_| {
                panic!("{waiting_for} within the deadline; got {:?}", self.lossy())
            });
        match chunk {
            Some(Ok(chunk)) => {
                self.received += chunk.len();
                self.pending.extend_from_slice(&chunk);
                Some(())
            }
            Some(Err(error)) => panic!(
                "the stream failed before {waiting_for}: {error}; got {:?}",
                self.lossy()
            ),
            None => None,
        }
    }

    /// Reads until `needle` has arrived; returns everything up to and including it.
    pub async fn until(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PROMPTLY;
        loop {
            if let Some(at) = find(&self.pending, needle.as_bytes()) {
                let rest = self.pending.split_off(at + needle.len());
                let text = std::mem::replace(&mut self.pending, rest);
                return String::from_utf8(text).expect("the stream is UTF-8");
            }
            if self.read(deadline, &format!("{needle:?}")).await.is_none() {
                panic!("the stream ended before {needle:?}; got {:?}", self.lossy());
            }
        }
    }

    /// Reads the stream's first block: the `retry:` hint and, on a fresh connection, the `id:`.
    pub async fn opening(&mut self) -> Opening {
        let text = self.until("\n\n").await;
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::to_owned)
        };
        Opening {
            retry: field("retry: ").map(|ms| ms.parse().expect("retry is a number")),
            id: field("id: "),
            text,
        }
    }

    /// The next event (a block with `data:`), skipping comments: its `id:` and its data as JSON.
    pub async fn next_event(&mut self) -> (Option<String>, Value) {
        loop {
            let block = self.until("\n\n").await;
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(str::to_owned)
            };
            if let Some(data) = field("data: ") {
                let json = serde_json::from_str(&data)
                    .unwrap_or_else(|error| panic!("data is not JSON ({error}): {block:?}"));
                return (field("id: "), json);
            }
        }
    }

    /// Reads until the stream ends (cleanly: a transport error fails the test); returns the rest.
    pub async fn read_to_end(&mut self) -> String {
        let deadline = Instant::now() + PROMPTLY;
        while self.read(deadline, "the end of the stream").await.is_some() {}
        let text = std::mem::take(&mut self.pending);
        String::from_utf8(text).expect("the stream is UTF-8")
    }

    /// Fails the test if anything but a keepalive comment arrives (or the stream ends) within
    /// `within`.
    pub async fn assert_quiet(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while let Ok(chunk) = timeout_at(deadline, self.body.next()).await {
            let chunk = chunk.expect("the stream is still open").expect("not ended");
            self.received += chunk.len();
            self.pending.extend_from_slice(&chunk);
        }
        let text = self.lossy().replace(": keepalive\n\n", "");
        assert!(text.is_empty(), "expected nothing, got {text:?}");
    }

    /// The rest of the stream, parsed.
    pub fn events(self) -> Events {
        let pending: Body = Box::pin(stream::iter([Ok(Bytes::from(self.pending))]));
        let body: Body = Box::pin(pending.chain(self.body));
        body.eventsource()
    }

    fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

// --- what pushes and events name -----------------------------------------------------------------

/// The stream epoch a push response names.
pub fn epoch_of(response: &Value) -> String {
    response["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("a stored push names its epoch: {response}"))
        .to_owned()
}

/// The position a push response names.
pub fn position_of(response: &Value) -> u64 {
    response["position"]
        .as_u64()
        .unwrap_or_else(|| panic!("a stored push names its position: {response}"))
}

/// The event id a push response or an event names.
pub fn id_of(value: &Value) -> String {
    value["event_id"]
        .as_str()
        .unwrap_or_else(|| panic!("an event_id: {value}"))
        .to_owned()
}

/// Percent-encodes a query parameter value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

// --- the server as a process --------------------------------------------------------------------

/// The built server binary, run as a real process in `cwd`, with an empty environment (only
/// `PATH`): a test adds the variables it is about.
pub fn server_command(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_websocket-sse-server"));
    command
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A server process and the address it announced.
pub struct ServerProcess {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every log line up to and including the one that announced the address.
    pub startup: Vec<String>,
    /// Its log lines after that, not read yet.
    pub log: UnboundedReceiver<String>,
    /// The start-up lines and every line [`ServerProcess::wait_for_log`] has read.
    pub seen: Vec<String>,
}

/// Starts `command` (which should bind 127.0.0.1:0) and waits for its `listening` log line in the
/// default template format.
pub async fn start_process(command: Command) -> ServerProcess {
    start_process_with(command, template_addr).await
}

/// Starts `command` and reads its stderr until `find_addr` recognises the listening line.
pub async fn start_process_with(
    mut command: Command,
    find_addr: impl Fn(&str) -> Option<SocketAddr>,
) -> ServerProcess {
    let mut child = command.spawn().expect("server process starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut startup = Vec::new();
    let addr = timeout(PROMPTLY, async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            let addr = find_addr(&line);
            startup.push(line);
            if let Some(addr) = addr {
                return addr;
            }
        }
        panic!("server exited before listening: {startup:?}");
    })
    .await
    .expect("server announces its address");
    let (sender, log) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    ServerProcess {
        child,
        addr,
        seen: startup.clone(),
        startup,
        log,
    }
}

impl ServerProcess {
    /// The first log line satisfying `check`, among those seen so far or, waiting up to
    /// [`PROMPTLY`], those that follow.
    pub async fn wait_for_log(&mut self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PROMPTLY;
        loop {
            if let Some(line) = self.seen.iter().find(|line| check(line)) {
                return line.clone();
            }
            let line = timeout_at(deadline, self.log.recv())
                .await
                .unwrap_or_else(|_| panic!("no log line {what} in {:#?}", self.seen))
                .expect("the process is still logging");
            self.seen.push(line);
        }
    }

    /// The log lines not read yet, until the process exits (or [`EXIT_DEADLINE`] passes).
    pub async fn rest_of_log(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let deadline = Instant::now() + EXIT_DEADLINE;
        while let Ok(Some(line)) = timeout_at(deadline, self.log.recv()).await {
            lines.push(line);
        }
        lines
    }
}

/// The address in a template log line (`… address=127.0.0.1:PORT …`).
pub fn template_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("address=").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The address in a JSON log line (`{"fields":{"address":"127.0.0.1:PORT",…},…}`).
pub fn json_addr(line: &str) -> Option<SocketAddr> {
    let value: Value = serde_json::from_str(line).ok()?;
    value["fields"]["address"].as_str()?.parse().ok()
}

/// Sends `SIG{name}` (`TERM`, `INT`, …) to the process.
pub fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("process still running");
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Sends SIGTERM to the process.
pub fn sigterm(child: &Child) {
    signal(child, "TERM");
}

/// Waits for the process to exit (within [`EXIT_DEADLINE`]), returning its exit code.
pub async fn exit_code(child: &mut Child) -> Option<i32> {
    timeout(EXIT_DEADLINE, child.wait())
        .await
        .expect("process exits within the deadline")
        .expect("wait for the process")
        .code()
}

/// Waits for a server that was told to shut down to stop, and checks that it stopped cleanly and
/// within 3 s of `started` (its clients cooperated, so nothing waited for `SHUTDOWN_TIMEOUT`).
pub async fn assert_stopped_promptly(
    stopped: tokio::task::JoinHandle<std::io::Result<()>>,
    started: Instant,
) {
    let result = timeout(Duration::from_secs(4), stopped)
        .await
        .expect("server stopped within SHUTDOWN_TIMEOUT")
        .expect("server task did not panic");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
}

/// A WebSocket handshake request for `/ws?user_id={user}` to `addr`, as a client writes it:
/// `Host`, `Upgrade`, `Connection` and the RFC 6455 sample key, then `headers` (lines ending in
/// CRLF; a `Sec-WebSocket-Version` among them), then the blank line.
pub fn handshake_request(addr: SocketAddr, user: &str, headers: &str) -> String {
    format!(
        "GET /ws?user_id={user} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n"
    )
}

/// Reads an HTTP response head from `stream` byte by byte, so that nothing after it is consumed,
/// within [`PROMPTLY`].
pub async fn read_response_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    timeout(PROMPTLY, async {
        while !head.ends_with(b"\r\n\r\n") {
            assert!(head.len() < 4096, "response head too long");
            head.push(stream.read_u8().await.expect("read response head"));
        }
    })
    .await
    .expect("a response head within the deadline");
    String::from_utf8(head).expect("ASCII head")
}
