//! What the cluster tests share: a cluster of in-process nodes on one Redis key prefix, waits for
//! the cluster-wide counts, and one client type for both transports. The requests themselves
//! (`push`, `push_batch`, `health`, …) are `helpers::TestApp`'s.

use std::path::Path;
use std::time::Duration;

use eventsource_stream::Event;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    Events, PROMPTLY, SseReader, TestApp, Ws, drain_until_end, encode, id_of, server_command,
    spawn_app,
};
use crate::redis::{delete_prefix_blocking, unique_prefix};
use tokio::process::Command;

/// The presence lease the tests run nodes with, in seconds (heartbeat every lease/3, when the
/// cluster-wide counts are refreshed: what most waits here wait for). A node is reaped when it
/// misses its heartbeats for the rest of the lease (0.5 s), which a busy test machine must not
/// make it do.
pub const LEASE: f64 = 0.75;

/// [`LEASE`] as a flag value.
pub const LEASE_FLAG: &str = "0.75";

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

/// [`cluster`] on the Redis shared by this binary's tests; `None` (after printing `SKIPPED`)
/// when there is none and this is not CI: the test should return at once.
pub async fn shared_cluster(test: &str, n: usize, extra: &[&str]) -> Option<Cluster> {
    let redis = crate::redis::shared(test).await?;
    Some(cluster(&redis, test, n, extra).await)
}

impl Cluster {
    /// Starts one more in-process node on this cluster's prefix (not added to `nodes`).
    pub async fn start_node(&self, name: &str, extra: &[&str]) -> TestApp {
        let mut flags = cluster_flags(&self.redis_url, &self.prefix, &node_id(name));
        flags.extend(extra.iter().map(|flag| (*flag).to_owned()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        spawn_app(&flags).await
    }

    /// The command of a node of this cluster as a process of its own (one a test can kill),
    /// working in `workdir`, named `node_id`, with the tests' lease.
    pub fn process_command(&self, workdir: &Path, node_id: &str) -> Command {
        let mut command = server_command(workdir);
        command
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("BROKER", "redis")
            .env("REDIS_URL", &self.redis_url)
            .env("REDIS_KEY_PREFIX", &self.prefix)
            .env("PRESENCE_LEASE", LEASE_FLAG)
            .env("NODE_ID", node_id);
        command
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

// --- health and presence ------------------------------------------------------------------------

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
            bodies.push(node.health().await);
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
    Sse(Events),
}

impl Client {
    /// A fresh WebSocket client of `user` on `node`.
    pub async fn ws(node: &TestApp, user: &str) -> Self {
        Self::ws_query(node, &format!("user_id={}", encode(user)), None).await
    }

    /// A WebSocket client of `user` on `node` resuming from `from` (`last_event_id`).
    pub async fn ws_resume(node: &TestApp, user: &str, from: &str) -> Self {
        Self::Ws(node.resume(user, from).await)
    }

    /// A WebSocket client on `node` with this query and, optionally, a `Last-Event-ID` header.
    pub async fn ws_query(node: &TestApp, query: &str, last_event_id: Option<&str>) -> Self {
        let headers: Vec<(&str, &str)> = last_event_id
            .map(|from| ("last-event-id", from))
            .into_iter()
            .collect();
        let ws = node
            .handshake(query, &headers)
            .await
            .unwrap_or_else(|refused| panic!("websocket handshake on {}: {refused:?}", node.addr));
        Self::Ws(ws)
    }

    /// A fresh SSE client of `user` on `node`.
    pub async fn sse(node: &TestApp, user: &str) -> Self {
        Self::sse_query(node, &format!("user_id={}", encode(user)), &[]).await
    }

    /// An SSE client on `node` with this query and headers; the stream must be accepted.
    pub async fn sse_query(node: &TestApp, query: &str, headers: &[(&str, &str)]) -> Self {
        Self::Sse(SseReader::open(node, query, headers).await.events())
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
                drain_until_end(&mut ws).await;
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
