//! Idle sockets cannot lock out new clients: the real binary under a lowered `RLIMIT_NOFILE`,
//! flooded from loopback with more idle TCP connections than it has descriptors, still accepts a
//! new WebSocket and a new push promptly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::Command;

use tokio::time::{Instant, timeout, timeout_at};

use crate::helpers::{PROMPTLY, ServerProcess, TestApp, next_json, start_process};

/// The server's file-descriptor limit (soft and hard: it raises the soft one to the hard one).
const DESCRIPTORS: usize = 64;

/// Idle connections opened: well beyond what the limit allows.
const IDLE: usize = 2 * DESCRIPTORS;

/// The server on loopback with `RLIMIT_NOFILE` lowered to [`DESCRIPTORS`] (by `ulimit -n` in a
/// shell that then `exec`s it), idle clients given far longer than the test takes, and `env`.
async fn limited_server(cwd: &std::path::Path, env: &[(&str, &str)]) -> ServerProcess {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit -n {DESCRIPTORS} && exec \"$0\""))
        .arg(env!("CARGO_BIN_EXE_websocket-sse-server"))
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("HTTP_REQUEST_TIMEOUT", "600")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    start_process(command).await
}

/// A TCP connection to `addr` from `source` (any port) that sends nothing.
async fn idle_connection(source: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .expect("bind a loopback source address");
    timeout(PROMPTLY, socket.connect(addr))
        .await
        .expect("connected promptly (the kernel's backlog)")
        .expect("connect")
}

/// A keep-alive connection that has had one request answered and now sits idle.
async fn served_connection(addr: SocketAddr) -> TcpStream {
    let mut stream = idle_connection(Ipv4Addr::LOCALHOST, addr).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("send a request");
    let mut buffer = [0; 4096];
    let read = timeout(PROMPTLY, stream.read(&mut buffer))
        .await
        .expect("answered promptly")
        .expect("read");
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"), "answered 200");
    stream
}

/// Whether the server closes `stream` before `deadline` (what it still sends is skipped).
async fn closed_by(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buffer = [0; 4096];
    loop {
        match timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A new WebSocket and a new push succeed promptly, and the push reaches the WebSocket.
async fn push_and_websocket_still_work(addr: SocketAddr) {
    let app = TestApp::at(addr);
    let mut ws = app.connect("late").await;
    app.push(serde_json::json!({"user_id": "late", "data": {"n": 1}}))
        .await;
    assert_eq!(next_json(&mut ws).await["data"]["n"], 1);
}

#[tokio::test]
async fn out_of_descriptors_the_longest_idle_connections_make_way() {
    let dir = tempfile::tempdir().expect("temporary directory");
    // No per-address bound in the way: only closing idle connections can help.
    let server = limited_server(dir.path(), &[("MAX_PENDING_CONNECTIONS_PER_IP", "100000")]).await;
    let mut oldest = served_connection(server.addr).await;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(idle_connection(Ipv4Addr::LOCALHOST, server.addr).await);
    }
    timeout(2 * PROMPTLY, push_and_websocket_still_work(server.addr))
        .await
        .expect("a new WebSocket and a new push despite the idle connections");
    assert!(
        closed_by(&mut oldest, Instant::now() + PROMPTLY).await,
        "the idle keep-alive connection, the oldest, was closed to make way"
    );
}

#[tokio::test]
async fn one_address_holds_a_bounded_number_of_pending_connections() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = limited_server(dir.path(), &[("MAX_PENDING_CONNECTIONS_PER_IP", "8")]).await;
    // Another loopback address floods; clients on 127.0.0.1 must not notice.
    let flooder = Ipv4Addr::new(127, 0, 0, 2);
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(idle_connection(flooder, server.addr).await);
    }
    timeout(2 * PROMPTLY, push_and_websocket_still_work(server.addr))
        .await
        .expect("a new WebSocket and a new push despite the idle connections");
    // The newest are beyond the flooder's share: closed at once (not kept, as closing the
    // longest idle first would have).
    let newest = idle.last_mut().expect("idle connections");
    assert!(
        closed_by(newest, Instant::now() + PROMPTLY).await,
        "the flooder's newest connection was refused"
    );
}

#[tokio::test]
async fn near_the_limit_the_longest_idle_connections_make_way_before_accept_fails() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = limited_server(dir.path(), &[("MAX_PENDING_CONNECTIONS_PER_IP", "100000")]).await;
    let mut oldest = served_connection(server.addr).await;
    // Past the scarce mark (the limit less a reserve of 32: descriptor 32), yet well below the
    // limit with the server's own descriptors: `accept` never fails here.
    let mut idle = Vec::with_capacity(DESCRIPTORS);
    for _ in 0..DESCRIPTORS * 5 / 8 {
        idle.push(idle_connection(Ipv4Addr::LOCALHOST, server.addr).await);
    }
    assert!(
        closed_by(&mut oldest, Instant::now() + PROMPTLY).await,
        "the idle keep-alive connection, the oldest, was closed before descriptors ran out"
    );
    let newest = idle.last_mut().expect("idle connections");
    assert!(
        !closed_by(newest, Instant::now() + Duration::from_millis(200)).await,
        "the newest idle connection is kept"
    );
    timeout(2 * PROMPTLY, push_and_websocket_still_work(server.addr))
        .await
        .expect("a new WebSocket and a new push");
}

#[tokio::test]
async fn near_the_limit_a_new_request_is_served_when_nothing_else_is_idle() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = limited_server(dir.path(), &[]).await;
    let app = TestApp::at(server.addr);
    // WebSockets past the scarce mark: they hold descriptors, none of them is idle.
    let mut sockets = Vec::new();
    for n in 0..DESCRIPTORS * 5 / 8 {
        sockets.push(app.connect(&format!("held-{n}")).await);
    }
    // The new connection is the only idle one: it must not be the one closed to make room.
    timeout(2 * PROMPTLY, push_and_websocket_still_work(server.addr))
        .await
        .expect("a new WebSocket and a new push");
}
