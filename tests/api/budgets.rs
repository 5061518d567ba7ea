//! Memory budgets in bytes (issue 13): the history's byte budget and user cap across the node,
//! the per-connection and node-wide queue bounds with clients that never read, a payload shared
//! by every recipient, and a replay larger than a connection's queue. Real server, real clients;
//! the bounds are read from `/metrics`.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use crate::helpers::{
    PROMPTLY, SseReader, TestApp, epoch_of, handshake_request, next_json, read_response_head,
    spawn_app,
};

/// `data` of about `bytes` bytes, tagged with `tag`.
fn padded(tag: &str, bytes: usize) -> Value {
    json!({"tag": tag, "pad": "x".repeat(bytes)})
}

/// A WebSocket client that completes the handshake and then never reads: its receive buffer is
/// kept small so that the server's writes to it stall soon.
async fn stalled_client(app: &TestApp, user: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(app.addr).await.expect("tcp connect");
    let request = handshake_request(app.addr, user, "Sec-WebSocket-Version: 13\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let head = read_response_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

fn counter(metrics: &Value, family: &str, label: &str) -> u64 {
    metrics[family][label].as_u64().unwrap_or_default()
}

#[tokio::test]
async fn the_history_never_holds_more_than_its_byte_budget_and_keeps_the_newest() {
    const BUDGET: u64 = 1 << 20;
    let app = spawn_app(&["--history-max-bytes", &BUDGET.to_string()]).await;
    let mut last = Value::Null;
    for n in 0..40 {
        last = app
            .push(
                json!({"user_id": format!("offline-{}", n % 20), "data": padded("big", 64 * 1024)}),
            )
            .await;
        assert_eq!(last["stored"], true, "{last}");
        let metrics = app.metrics().await;
        let held = metrics["history_bytes"].as_u64().unwrap();
        assert!(held <= BUDGET, "push {n}: {held} bytes held > {BUDGET}");
    }
    let metrics = app.metrics().await;
    assert!(
        counter(&metrics, "history_evictions_total", "bytes") > 0,
        "{metrics}"
    );
    assert!(
        metrics["history_bytes"].as_u64().unwrap() > BUDGET / 2,
        "{metrics}"
    );
    // The user pushed last still has its event; the least recently pushed users lost theirs.
    let before_last = last["position"].as_u64().unwrap() - 1;
    let newest = format!("{}:{before_last}", epoch_of(&last));
    let mut ws = app.resume("offline-19", &newest).await;
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["data"]["tag"], "big", "{frame}");
    let mut oldest = app.resume("offline-0", "never-seen").await;
    assert_eq!(next_json(&mut oldest).await["event_type"], "resync");
}

#[tokio::test]
async fn the_user_cap_evicts_the_least_recently_pushed_user_of_the_node() {
    let app = spawn_app(&["--history-max-users", "2"]).await;
    let first_old = app.push(json!({"user_id": "old", "data": {"n": 1}})).await;
    app.push(json!({"user_id": "mid", "data": {"n": 2}})).await;
    app.push(json!({"user_id": "old", "data": {"n": 3}})).await;
    app.push(json!({"user_id": "new", "data": {"n": 4}})).await;
    let metrics = app.metrics().await;
    assert_eq!(metrics["history_users"], 2, "{metrics}");
    assert_eq!(counter(&metrics, "history_evictions_total", "users"), 1);
    let from = first_old["event_id"].as_str().unwrap();
    let mut old = app.resume("old", from).await;
    assert_eq!(
        next_json(&mut old).await["data"]["n"],
        3,
        "old, pushed a moment ago, kept its history"
    );
    let mut mid = app.resume("mid", "anything").await;
    let notice = next_json(&mut mid).await;
    assert_eq!(
        notice["event_type"], "resync",
        "mid was the least recently pushed: {notice}"
    );
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_at_its_queue_byte_bound() {
    const QUEUE_BYTES: usize = 256 * 1024;
    let app = spawn_app(&["--ws-send-queue-bytes", &QUEUE_BYTES.to_string()]).await;
    let _stalled = stalled_client(&app, "stalled").await;
    let mut reader = app.connect("reader").await;
    app.wait_for_connections(2).await;
    let mut cut = false;
    for n in 0..400 {
        let response = app
            .push(json!({"user_id": "stalled", "data": padded("s", 60 * 1024)}))
            .await;
        if response["delivered"] == 0 {
            cut = true;
            break;
        }
        assert!(n < 399, "never cut: {response}");
    }
    assert!(cut);
    let metrics = app
        .wait_for_metrics("the stalled client closed", |m| {
            counter(m, "connections_closed_total", "slow_consumer") == 1
        })
        .await;
    assert_eq!(
        counter(&metrics, "slow_consumer_closes_total", "queue_bytes"),
        1,
        "{metrics}"
    );
    assert_eq!(
        counter(&metrics, "slow_consumer_closes_total", "queue_events"),
        0
    );
    // The other user was never touched.
    app.push(json!({"user_id": "reader", "data": {"still": "here"}}))
        .await;
    assert_eq!(next_json(&mut reader).await["data"]["still"], "here");
    app.wait_for_metrics("nothing left queued", |m| m["queued_bytes"] == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_bound_holds_with_fifty_clients_that_never_read() {
    const NODE_BYTES: u64 = 4 << 20;
    const EVENT: usize = 256 * 1024;
    let app = spawn_app(&["--send-queues-max-bytes", &NODE_BYTES.to_string()]).await;
    let mut stalled = Vec::new();
    for n in 0..50 {
        stalled.push(stalled_client(&app, &format!("stalled-{n}")).await);
    }
    let mut reader = app.connect("reader").await;
    app.wait_for_connections(51).await;
    // The kernel takes a few MB per connection before the server queues anything: push each
    // stalled user distinct events until the node's queues reach their bound.
    for round in 0..24 {
        let pushes = (0..50).map(|n| {
            let data = padded(&format!("{round}"), EVENT);
            app.push(json!({"user_id": format!("stalled-{n}"), "data": data}))
        });
        futures_util::future::join_all(pushes).await;
        let queued = app.metrics().await["queued_bytes"].as_u64().unwrap();
        // Over the bound only by what one round queued before the biggest holders went.
        assert!(
            queued <= NODE_BYTES + 50 * (EVENT as u64 + 1024),
            "round {round}: {queued} bytes queued"
        );
        app.push(json!({"user_id": "reader", "data": {"round": round}}))
            .await;
        assert_eq!(next_json(&mut reader).await["data"]["round"], round);
    }
    let metrics = app.metrics().await;
    assert!(
        counter(&metrics, "slow_consumer_closes_total", "node_budget") > 0,
        "{metrics}"
    );
    app.wait_for_metrics("queues back within the bound", |m| {
        m["queued_bytes"].as_u64().unwrap() <= NODE_BYTES
    })
    .await;
}

#[tokio::test]
async fn a_broadcast_payload_is_held_once_by_every_history_and_queue() {
    const USERS: usize = 50;
    const DATA: usize = 256 * 1024;
    let app = spawn_app(&[]).await;
    let mut clients = Vec::new();
    for n in 0..USERS {
        clients.push(app.connect(&format!("fan-{n}")).await);
    }
    app.wait_for_connections(USERS as u64).await;
    let reply = app.broadcast(json!({"data": padded("all", DATA)})).await;
    assert_eq!(reply["users"], USERS, "{reply}");
    let metrics = app.metrics().await;
    let held = metrics["history_bytes"].as_u64().unwrap() as usize;
    assert!(
        held < DATA + USERS * 1024,
        "{held} bytes of history for one {DATA}-byte broadcast to {USERS} users"
    );
    let queued = metrics["queued_bytes"].as_u64().unwrap() as usize;
    assert!(queued < DATA + USERS * 1024, "{queued} bytes queued");
    let mut texts = Vec::new();
    for (n, client) in clients.iter_mut().enumerate() {
        let frame = next_json(client).await;
        assert_eq!(frame["user_id"], format!("fan-{n}"));
        assert_eq!(frame["data"]["pad"].as_str().unwrap().len(), DATA);
        texts.push(frame);
    }
    assert!(
        texts
            .windows(2)
            .all(|pair| pair[0]["event_id"] == pair[1]["event_id"])
    );
    app.wait_for_metrics("nothing left queued", |m| m["queued_bytes"] == 0)
        .await;
}

#[tokio::test]
async fn a_replay_larger_than_the_queue_is_fed_from_history_then_live_events_follow() {
    const MISSED: usize = 2000;
    let app = spawn_app(&["--history-size", "2000"]).await;
    let first = app
        .push(json!({"user_id": "returning", "data": {"seq": 0}}))
        .await;
    let epoch = epoch_of(&first);
    for chunk in 0..2 {
        let batch: Vec<Value> = (1 + chunk * 1000..1 + (chunk + 1) * 1000)
            .filter(|seq| *seq < MISSED)
            .map(|seq| json!({"user_id": "returning", "data": {"seq": seq}}))
            .collect();
        app.push_batch(Value::Array(batch)).await;
    }
    let mut ws = app.resume("returning", &format!("{epoch}:0")).await;
    let mut seqs = Vec::new();
    seqs.push(next_json(&mut ws).await["data"]["seq"].as_u64().unwrap());
    // Pushed while the replay is under way: after it, once each.
    for live in 0..10 {
        app.push(json!({"user_id": "returning", "data": {"seq": MISSED + live}}))
            .await;
    }
    while seqs.len() < MISSED + 10 {
        let message = timeout(PROMPTLY, ws.next())
            .await
            .expect("frames keep coming")
            .expect("open")
            .expect("a frame");
        let frame: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        seqs.push(
            frame["data"]["seq"]
                .as_u64()
                .expect("an event, not a resync"),
        );
    }
    let expected: Vec<u64> = (0..(MISSED + 10) as u64).collect();
    assert_eq!(
        seqs, expected,
        "every event once, in order, live after replay"
    );
    crate::helpers::assert_silent(&mut ws, Duration::from_millis(200)).await;
    let metrics = app.metrics().await;
    assert_eq!(metrics["events_replayed_total"], MISSED, "{metrics}");
}

/// Resident memory of process `pid`, from `/proc`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// The server binary on loopback with `env`, in an empty working directory.
async fn server_process(env: &[(&str, &str)]) -> (crate::helpers::ServerProcess, TestApp) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut command = crate::helpers::server_command(dir.path());
    command
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .envs(env.iter().copied());
    let server = crate::helpers::start_process(command).await;
    let app = TestApp::at(server.addr);
    (server, app)
}

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn the_process_stays_within_its_history_budget_under_a_flood_of_large_offline_pushes() {
    const BUDGET: u64 = 8 * MIB;
    let (server, app) = server_process(&[("HISTORY_MAX_BYTES", &BUDGET.to_string())]).await;
    let pid = server.child.id().expect("running");
    let idle = rss_bytes(pid);
    // 100 MiB of events for 400 offline users: without the budget all of it would be kept.
    for n in 0..400 {
        let response = app
            .push(json!({"user_id": format!("away-{n}"), "data": padded("x", 256 * 1024)}))
            .await;
        assert_eq!(response["stored"], true, "{response}");
    }
    let grown = rss_bytes(pid).saturating_sub(idle);
    let metrics = app.metrics().await;
    assert!(
        metrics["history_bytes"].as_u64().unwrap() <= BUDGET,
        "{metrics}"
    );
    assert!(
        grown < BUDGET + 40 * MIB,
        "RSS grew by {} MiB storing 100 MiB with an {} MiB budget",
        grown / MIB,
        BUDGET / MIB
    );
}

#[tokio::test]
async fn a_large_broadcast_to_many_users_costs_the_process_about_one_payload() {
    const USERS: usize = 300;
    let (server, app) = server_process(&[]).await;
    let pid = server.child.id().expect("running");
    let mut clients = Vec::new();
    for n in 0..USERS {
        let (ws, _) = tokio_tungstenite::connect_async(app.ws_url(&format!("user_id=b-{n}")))
            .await
            .expect("connect");
        clients.push(ws);
    }
    app.wait_for_connections(USERS as u64).await;
    let idle = rss_bytes(pid);
    // 512 KiB to 300 users: 150 MiB if each user's frame held its own copy.
    let reply = app
        .broadcast(json!({"data": padded("all", 512 * 1024)}))
        .await;
    assert_eq!(reply["users"], USERS, "{reply}");
    let mut peak = rss_bytes(pid);
    for client in &mut clients {
        let frame = next_json(client).await;
        assert_eq!(frame["data"]["tag"], "all");
        peak = peak.max(rss_bytes(pid));
    }
    let grown = peak.saturating_sub(idle);
    assert!(
        grown < 40 * MIB,
        "RSS grew by {} MiB for one 512 KiB broadcast to {USERS} users",
        grown / MIB
    );
}

#[tokio::test]
async fn an_sse_replay_larger_than_the_queue_bytes_keeps_flowing_without_keepalives() {
    const MISSED: usize = 300;
    // A page of replayed events is over the byte bound, and no keepalive comes to wake anything:
    // the stream must carry on as each chunk is taken from it.
    let app = spawn_app(&[
        "--history-size",
        "1000",
        "--ws-send-queue-bytes",
        "2048",
        "--sse-keepalive",
        "0",
    ])
    .await;
    let first = app
        .push(json!({"user_id": "sse-returning", "data": {"seq": 0}}))
        .await;
    let epoch = epoch_of(&first);
    let batch: Vec<Value> = (1..MISSED)
        .map(|seq| json!({"user_id": "sse-returning", "data": {"seq": seq}}))
        .collect();
    app.push_batch(Value::Array(batch)).await;
    let from = format!("{epoch}:0");
    let mut stream = SseReader::open(
        &app,
        "user_id=sse-returning",
        &[("last-event-id", from.as_str())],
    )
    .await;
    let mut seqs = Vec::new();
    while seqs.len() < MISSED {
        let (_, event) = stream.next_event().await;
        seqs.push(event["data"]["seq"].as_u64().expect("an event"));
    }
    assert_eq!(seqs, (0..MISSED as u64).collect::<Vec<_>>());
}
