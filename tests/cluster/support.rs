//! What the cluster tests share: a cluster of in-process nodes on one Redis key prefix, push and
//! health helpers, and one client type for both transports.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event, EventStream, Eventsource};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::helpers::{PROMPTLY, TestApp, Ws, spawn_app};
use crate::redis::{delete_prefix_blocking, unique_prefix};

/// The presence lease the tests run nodes with, in seconds (heartbeat every lease/3).
pub const LEASE: f64 = 1.5;

/// [`LEASE`] as a flag value.
pub const LEASE_FLAG: &str = "1.5";

/// How long cluster-wide counts may take to agree with reality: a few heartbeats.
pub const PRESENCE_DEADLINE: Duration = Duration::from_secs(8);

/// How long a socket must stay quiet to count as having received nothing.
pub const QUIET: Duration = Duration::from_millis(300);

/// Node names, in order.
const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

/// In-process nodes sharing one Redis under one key prefix. Dropping it starts the nodes'
/// shutdown and deletes the prefix's keys (best effort).
pub struct Cluster {
    /// The nodes: `nodes[0]` is node "a", and so on.
    pub nodes: Vec<TestApp>,
    /// Every node's Redis key prefix.
    pub prefix: String,
    /// The Redis they use.
    pub redis_url: String,
    /// Whether to delete the prefix's keys on drop.
    cleanup: bool,
}

/// The flags that put a node into the cluster.
pub fn cluster_flags(redis_url: &str, prefix: &str, node_id: &str) -> Vec<String> {
    [
        "--broker",
        "redis",
        "--redis-url",
        redis_url,
        "--redis-key-prefix",
        prefix,
        "--presence-lease",
        LEASE_FLAG,
        "--node-id",
        node_id,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Starts `n` nodes ("a", "b", …) of a cluster on a fresh key prefix for `test`, each with the
/// cluster flags followed by `extra`.
pub async fn cluster(redis_url: &str, test: &str, n: usize, extra: &[&str]) -> Cluster {
    let prefix = unique_prefix(test);
    let mut cluster = Cluster {
        nodes: Vec::with_capacity(n),
        prefix,
        redis_url: redis_url.to_owned(),
        cleanup: true,
    };
    for name in &NAMES[..n] {
        let node = cluster.start_node(name, extra).await;
        cluster.nodes.push(node);
    }
    cluster
}

impl Cluster {
    /// Starts one more in-process node on this cluster's prefix (not added to `nodes`).
    pub async fn start_node(&self, name: &str, extra: &[&str]) -> TestApp {
        let mut flags = cluster_flags(&self.redis_url, &self.prefix, &node_id(name));
        flags.extend(extra.iter().map(|flag| (*flag).to_owned()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        spawn_app(&flags).await
    }

    /// Keeps the prefix's keys after the test (for a Redis that is gone anyway).
    pub fn keep_keys(&mut self) {
        self.cleanup = false;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.lifecycle.begin_shutdown();
        }
        if self.cleanup {
            delete_prefix_blocking(&self.redis_url, &self.prefix);
        }
    }
}

/// The `--node-id` of the node called `name`.
pub fn node_id(name: &str) -> String {
    format!("node-{name}")
}

// --- pushes -------------------------------------------------------------------------------------

/// Pushes one message through `node` and returns the response body, asserting 200.
pub async fn push(node: &TestApp, body: Value) -> Value {
    let (status, response) = node.post_json("/sse/push", &body).await;
    assert_eq!(status, 200, "push {body} answered {response}");
    response
}

/// Pushes a batch through `node` and returns its per-item results, asserting 200.
pub async fn push_batch(node: &TestApp, body: Value) -> Vec<Value> {
    let (status, response) = node.post_json("/sse/push/batch", &body).await;
    assert_eq!(status, 200, "batch {body} answered {response}");
    response["results"]
        .as_array()
        .unwrap_or_else(|| panic!("a results list: {response}"))
        .clone()
}

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

// --- health and presence ------------------------------------------------------------------------

/// `GET /health` on `node`, asserting 200.
pub async fn health(node: &TestApp) -> Value {
    let (status, body) = node.get_json("/health").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The cluster-wide counts a node reports, as `/health` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub nodes: u64,
    pub connections: u64,
    pub websocket_connections: u64,
    pub sse_connections: u64,
    pub users: u64,
}

impl Counts {
    /// The counts in `/health`'s `cluster` object (`None` while it is null or incomplete).
    pub fn of(health: &Value) -> Option<Self> {
        let cluster = &health["cluster"];
        let field = |name: &str| cluster[name].as_u64();
        Some(Self {
            nodes: field("nodes")?,
            connections: field("connections")?,
            websocket_connections: field("websocket_connections")?,
            sse_connections: field("sse_connections")?,
            users: field("users")?,
        })
    }
}

/// No connection anywhere, on `nodes` nodes.
pub fn empty(nodes: u64) -> Counts {
    Counts {
        nodes,
        connections: 0,
        websocket_connections: 0,
        sse_connections: 0,
        users: 0,
    }
}

impl Counts {
    /// These counts with other connection and user numbers.
    pub fn with_connections(self, connections: u64, websocket: u64, sse: u64, users: u64) -> Self {
        Self {
            connections,
            websocket_connections: websocket,
            sse_connections: sse,
            users,
            ..self
        }
    }
}

/// Polls every node's `/health` until each one reports `expected` cluster-wide (bounded by
/// [`PRESENCE_DEADLINE`]); returns the last `/health` of each node.
pub async fn wait_for_counts(nodes: &[&TestApp], expected: Counts) -> Vec<Value> {
    wait_for_cluster(nodes, &format!("{expected:?}"), |counts| {
        counts == Some(expected)
    })
    .await
}

/// Polls every node's `/health` until `check` holds for the counts of each (bounded by
/// [`PRESENCE_DEADLINE`]); returns the last `/health` of each node.
pub async fn wait_for_cluster(
    nodes: &[&TestApp],
    what: &str,
    check: impl Fn(Option<Counts>) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + PRESENCE_DEADLINE;
    loop {
        let mut bodies = Vec::with_capacity(nodes.len());
        for node in nodes {
            bodies.push(health(node).await);
        }
        if bodies.iter().all(|body| check(Counts::of(body))) {
            return bodies;
        }
        assert!(
            Instant::now() < deadline,
            "cluster counts did not reach {what} within {PRESENCE_DEADLINE:?}: {bodies:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `GET /ready` on `node` until it answers `status` (bounded by `within`); returns the
/// body.
pub async fn wait_for_ready_status(node: &TestApp, status: u16, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let response = timeout_at(deadline, node.http.get(node.url("/ready")).send())
            .await
            .unwrap_or_else(|_| panic!("/ready did not answer {status} within {within:?}"))
            .expect("request");
        let got = response.status().as_u16();
        let body: Value = response.json().await.expect("JSON body");
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/ready did not answer {status} within {within:?}: last {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- clients ------------------------------------------------------------------------------------

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

/// A response body as a stream of chunks.
pub type Body = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

fn body_of(response: reqwest::Response) -> Body {
    Box::pin(stream::unfold(Some(response), |response| async move {
        let mut response = response?;
        match response.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(response))),
            Ok(None) => None,
            Err(error) => Some((Err(error), None)),
        }
    }))
}

/// Something clients can connect to: an in-process node, or the address of a node process.
pub trait Node {
    /// Where it listens.
    fn address(&self) -> SocketAddr;
}

impl Node for TestApp {
    fn address(&self) -> SocketAddr {
        self.addr
    }
}

impl Node for SocketAddr {
    fn address(&self) -> SocketAddr {
        *self
    }
}

/// `GET /sse/stream?{query}` on `node` with extra headers; the response as it arrives.
pub async fn get_stream(
    node: &impl Node,
    query: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let url = format!("http://{}/sse/stream?{query}", node.address());
    let mut request = reqwest::Client::new().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    timeout(PROMPTLY, request.send())
        .await
        .expect("response headers within the deadline")
        .expect("request")
}

/// Reads a whole (short) response body as text, within [`PROMPTLY`].
pub async fn read_to_end(response: reqwest::Response) -> String {
    timeout(PROMPTLY, response.text())
        .await
        .expect("the body ended within the deadline")
        .expect("a body")
}

/// One client of either transport, yielding the events it receives as the JSON the server sends
/// (the WebSocket frame, or the SSE `data:`, whose `id:` and `event:` are checked against it).
pub enum Client {
    /// A WebSocket client.
    Ws(Ws),
    /// An SSE client, past nothing (the opening block dispatches no event).
    Sse(EventStream<Body>),
}

impl Client {
    /// A fresh WebSocket client of `user` on `node`.
    pub async fn ws(node: &impl Node, user: &str) -> Self {
        Self::ws_query(node, &format!("user_id={}", encode(user)), None).await
    }

    /// A WebSocket client of `user` on `node` resuming from `from` (`last_event_id`).
    pub async fn ws_resume(node: &impl Node, user: &str, from: &str) -> Self {
        let query = format!("user_id={}&last_event_id={}", encode(user), encode(from));
        Self::ws_query(node, &query, None).await
    }

    /// A WebSocket client on `node` with this query and, optionally, a `Last-Event-ID` header.
    pub async fn ws_query(node: &impl Node, query: &str, last_event_id: Option<&str>) -> Self {
        let mut request = format!("ws://{}/ws?{query}", node.address())
            .into_client_request()
            .expect("a valid request");
        if let Some(from) = last_event_id {
            request.headers_mut().insert(
                "Last-Event-ID",
                HeaderValue::from_str(from).expect("a header value"),
            );
        }
        let (ws, _response) = timeout(PROMPTLY, tokio_tungstenite::connect_async(request))
            .await
            .expect("handshake within the deadline")
            .unwrap_or_else(|error| panic!("websocket handshake on {}: {error}", node.address()));
        Self::Ws(ws)
    }

    /// A fresh SSE client of `user` on `node`.
    pub async fn sse(node: &impl Node, user: &str) -> Self {
        Self::sse_query(node, &format!("user_id={}", encode(user)), &[]).await
    }

    /// An SSE client on `node` with this query and headers; the stream must be accepted.
    pub async fn sse_query(node: &impl Node, query: &str, headers: &[(&str, &str)]) -> Self {
        let response = get_stream(node, query, headers).await;
        assert_eq!(response.status(), 200, "{query}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{query}"
        );
        Self::Sse(body_of(response).eventsource())
    }

    /// The next event, or `None` if none arrives by `deadline`. Panics if the connection ends.
    pub async fn next_by(&mut self, deadline: Instant) -> Option<Value> {
        match self {
            Self::Ws(ws) => loop {
                let message = match timeout_at(deadline, ws.next()).await {
                    Err(_elapsed) => return None,
                    Ok(message) => message,
                };
                match message {
                    Some(Ok(Message::Text(text))) => {
                        return Some(serde_json::from_str(&text).expect("frame is JSON"));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected a text frame, got {other:?}"),
                }
            },
            Self::Sse(events) => {
                let event: Event = match timeout_at(deadline, events.next()).await {
                    Err(_elapsed) => return None,
                    Ok(Some(Ok(event))) => event,
                    Ok(other) => panic!("expected an SSE event, got {other:?}"),
                };
                let json: Value = serde_json::from_str(&event.data)
                    .unwrap_or_else(|e| panic!("data is not JSON ({e}): {:?}", event.data));
                assert_eq!(event.id, id_of(&json), "the id: line names the event");
                assert_eq!(
                    event.event, json["event_type"],
                    "the event: line names its type"
                );
                Some(json)
            }
        }
    }

    /// The next event; fails the test if none arrives within [`PROMPTLY`].
    pub async fn next(&mut self) -> Value {
        self.next_by(Instant::now() + PROMPTLY)
            .await
            .expect("an event within the deadline")
    }

    /// Fails the test if an event arrives (or the connection ends) within `within`.
    pub async fn assert_quiet(&mut self, within: Duration) {
        if let Some(event) = self.next_by(Instant::now() + within).await {
            panic!("expected no event, got {event}");
        }
    }

    /// Closes the connection (politely for a WebSocket) and waits until it has ended.
    pub async fn close(self) {
        match self {
            Self::Ws(mut ws) => {
                let _ = ws.close(None).await;
                let deadline = Instant::now() + PROMPTLY;
                loop {
                    match timeout_at(deadline, ws.next()).await {
                        Err(_elapsed) => panic!("the connection did not end after the close"),
                        Ok(None | Some(Err(_))) => break,
                        Ok(Some(Ok(_))) => continue,
                    }
                }
            }
            Self::Sse(events) => drop(events),
        }
    }

    /// The WebSocket inside (panics for SSE).
    pub fn ws_mut(&mut self) -> &mut Ws {
        match self {
            Self::Ws(ws) => ws,
            Self::Sse(_) => panic!("not a WebSocket client"),
        }
    }
}

/// The `data` of each event, for messages in assertions.
pub fn datas(events: &[Value]) -> Vec<Value> {
    events.iter().map(|event| event["data"].clone()).collect()
}

/// `{"seq": n}` for each `n`.
pub fn seqs(ns: impl IntoIterator<Item = u64>) -> Vec<Value> {
    ns.into_iter().map(|n| json!({"seq": n})).collect()
}

/// Reads exactly `n` events from `client` (each within [`PROMPTLY`]).
pub async fn take(client: &mut Client, n: usize) -> Vec<Value> {
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        events.push(client.next().await);
    }
    events
}
