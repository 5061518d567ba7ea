//! Shared test fixtures: spawning the server in-process or as a real process, and clients for it.

#![allow(dead_code)] // each test module uses its own subset

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use websocket_sse_server::config::Settings;
use websocket_sse_server::lifecycle::Lifecycle;
use websocket_sse_server::server::Application;

/// A WebSocket client connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for something that should happen promptly.
pub const PROMPTLY: Duration = Duration::from_secs(5);

/// A server running in this test process.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// An HTTP client for it.
    pub http: reqwest::Client,
    /// Starts its graceful shutdown.
    pub lifecycle: Lifecycle,
    /// Completes when the server has shut down.
    pub stopped: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Starts the server on 127.0.0.1 with an ephemeral port and the given extra flags.
pub async fn spawn_app(flags: &[&str]) -> TestApp {
    let mut args = vec!["websocket-sse-server", "--host", "127.0.0.1", "--port", "0"];
    args.extend_from_slice(flags);
    let settings = Settings::try_parse_from(args).expect("test flags parse");
    settings
        .check_consistency()
        .expect("test flags are consistent");
    let app = Application::build(settings).await.expect("server binds");
    let addr = app.local_addr().expect("bound address");
    let lifecycle = app.lifecycle();
    let stopped = tokio::spawn(app.run_until_stopped());
    TestApp {
        addr,
        http: reqwest::Client::new(),
        lifecycle,
        stopped,
    }
}

impl TestApp {
    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://addr/ws?user_id={user}` (the user id is sent as given, so tests can send bad ones).
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    /// Connects a WebSocket client as `user`.
    pub async fn connect(&self, user: &str) -> Ws {
        let (ws, _response) =
            tokio_tungstenite::connect_async(self.ws_url(&format!("user_id={user}")))
                .await
                .expect("websocket handshake");
        ws
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

    /// Polls `/metrics` until `check` holds (or panics after [`PROMPTLY`]).
    pub async fn wait_for_metrics(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PROMPTLY;
        loop {
            let (_, metrics) = self.get_json("/metrics").await;
            if check(&metrics) {
                return metrics;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {metrics}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Receives the next text frame as JSON, failing the test if none arrives promptly.
pub async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).expect("frame is JSON")
}

/// Receives the next text frame, skipping pings and pongs, failing the test if none arrives
/// promptly.
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        let message = tokio::time::timeout(PROMPTLY, ws.next())
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
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
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

/// Sends a text frame.
pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
}

/// The built server binary, run as a real process.
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
    /// Its log lines after that.
    pub log: tokio::sync::mpsc::UnboundedReceiver<String>,
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
    let addr = tokio::time::timeout(PROMPTLY, async {
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
        startup,
        log,
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

/// Waits for a server that was told to shut down to stop, and checks that it stopped cleanly and
/// within 3 s of `started` (its clients cooperated, so nothing waited for `SHUTDOWN_TIMEOUT`).
pub async fn assert_stopped_promptly(
    stopped: tokio::task::JoinHandle<std::io::Result<()>>,
    started: tokio::time::Instant,
) {
    let result = tokio::time::timeout(Duration::from_secs(4), stopped)
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

/// Fails the test if `ws` receives a data frame (or closes) within `within`; pings are ignored.
pub async fn assert_silent(ws: &mut Ws, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_elapsed) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("expected no frame, got {other:?}"),
        }
    }
}
