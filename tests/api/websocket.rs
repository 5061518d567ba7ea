//! The WebSocket side: delivery, ordering, acks, keepalive, slow consumers, limits, handshake
//! validation and graceful shutdown, each against its own server with real clients.

use std::time::Duration;

use futures_util::SinkExt;
use futures_util::stream::{self, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    PROMPTLY, SMALL_QUEUES, TestApp, Ws, assert_silent, assert_stopped_promptly, close_of,
    drain_until_end, handshake_request, next_json, read_response_head, send_text, spawn_app,
};

/// How long a socket must stay quiet to count as having received nothing.
const QUIET: Duration = Duration::from_millis(200);

/// Attempts a handshake that the server must refuse before the upgrade; returns the status and
/// the JSON body.
async fn refused_handshake(app: &TestApp, query: &str) -> (u16, Value) {
    let refusal = app.refused(query, &[]).await;
    (refusal.status, refusal.json())
}

#[tokio::test]
async fn push_reaches_the_users_socket_with_the_full_event_and_no_one_else() {
    let app = spawn_app(&[]).await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    app.wait_for_connections(2).await;

    let data = json!({"text": "hi", "nested": {"list": [1, 2.5, null, true], "s": "é \"q\""}});
    let response = app.push(json!({"user_id": "alice", "data": data})).await;
    assert_eq!(response["status"], "success", "{response}");
    assert_eq!(response["delivered"], 1, "{response}");
    assert_eq!(response["message"], "delivered to 1 connection(s)");
    let event_id = response["event_id"].as_str().expect("event_id is a string");
    assert!(!event_id.is_empty());

    let frame = next_json(&mut alice).await;
    assert_eq!(frame["event_type"], "message", "{frame}");
    assert_eq!(frame["event_id"], event_id, "{frame}");
    assert_eq!(frame["user_id"], "alice", "{frame}");
    assert_eq!(frame["data"], data, "{frame}");
    let timestamp = frame["timestamp"].as_f64().expect("numeric timestamp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - timestamp).abs() < 60.0,
        "timestamp {timestamp} is not the current unix time {now}"
    );
    let keys: Vec<&String> = frame.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["event_type", "event_id", "user_id", "timestamp", "data"]
    );

    assert_silent(&mut bob, QUIET).await;
    assert_silent(&mut alice, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_sent_right_after_the_handshake_is_never_missed() {
    let app = spawn_app(&[]).await;
    // No waiting for /health: the connection is registered before the server answers 101.
    for round in 0..20 {
        let user = format!("eager-{round}");
        let mut ws = app.connect(&user).await;
        let response = app
            .push(json!({"user_id": user, "data": {"round": round}}))
            .await;
        assert_eq!(response["delivered"], 1, "round {round}: {response}");
        assert_eq!(next_json(&mut ws).await["data"]["round"], round);
    }
}

#[tokio::test]
async fn one_push_reaches_every_connection_of_the_user() {
    let app = spawn_app(&[]).await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(app.connect("multi").await);
    }
    let mut other = app.connect("other").await;
    app.wait_for_connections(4).await;

    let response = app
        .push(json!({"user_id": "multi", "data": {"tab": "all"}}))
        .await;
    assert_eq!(response["status"], "success", "{response}");
    assert_eq!(response["delivered"], 3, "{response}");
    assert_eq!(response["message"], "delivered to 3 connection(s)");
    for ws in &mut sockets {
        let frame = next_json(ws).await;
        assert_eq!(frame["event_id"], response["event_id"]);
        assert_eq!(frame["data"], json!({"tab": "all"}));
    }
    assert_silent(&mut other, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_pushes_and_a_batch_arrive_in_order_on_every_connection() {
    const PUSHES: usize = 1000;
    const BATCH: usize = 500;
    let app = spawn_app(&[]).await;
    let mut sockets = [app.connect("ordered").await, app.connect("ordered").await];
    app.wait_for_connections(2).await;

    // Read concurrently with pushing, as a real client would, so no buffer limits the test.
    let readers: Vec<_> = sockets
        .iter_mut()
        .map(|ws| async move {
            for n in 0..PUSHES + BATCH {
                let frame = next_json(ws).await;
                let expected = if n < PUSHES {
                    json!({"n": n})
                } else {
                    json!({"b": n - PUSHES})
                };
                assert_eq!(frame["data"], expected, "frame {n} out of order");
            }
        })
        .collect();
    let pushes = async {
        for n in 0..PUSHES {
            let response = app
                .push(json!({"user_id": "ordered", "data": {"n": n}}))
                .await;
            assert_eq!(response["delivered"], 2, "push {n}: {response}");
        }
        let batch: Vec<Value> = (0..BATCH)
            .map(|b| json!({"user_id": "ordered", "data": {"b": b}}))
            .collect();
        let (status, response) = app.post_json("/sse/push/batch", &json!(batch)).await;
        assert_eq!(status, 200, "{response}");
        let results = response["results"].as_array().expect("results");
        assert_eq!(results.len(), BATCH);
        assert!(
            results
                .iter()
                .all(|r| r["success"] == true && r["delivered"] == 2),
            "{response}"
        );
    };
    let ((), _) = tokio::join!(pushes, futures_util::future::join_all(readers));
    for ws in &mut sockets {
        assert_silent(ws, Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn batch_reports_each_item_in_order_and_delivers_only_to_connected_users() {
    let app = spawn_app(&[]).await;
    let mut online = app.connect("online").await;
    app.wait_for_connections(1).await;

    let batch = json!([
        {"user_id": "online", "data": {"i": 0}},
        {"user_id": "offline", "data": {"i": 1}},
        {"user_id": "online", "data": {"i": 2}, "event_type": "custom", "event_id": "given-id"},
        {"user_id": "offline", "data": {"i": 3}},
    ]);
    let (status, response) = app.post_json("/sse/push/batch", &batch).await;
    assert_eq!(status, 200, "{response}");
    let results = response["results"].as_array().expect("results list");
    assert_eq!(results.len(), 4, "{response}");
    let expected = [
        ("online", true, 1),
        ("offline", false, 0),
        ("online", true, 1),
        ("offline", false, 0),
    ];
    for (result, (user, success, delivered)) in results.iter().zip(expected) {
        assert_eq!(result["user_id"], user, "{result}");
        assert_eq!(result["success"], success, "{result}");
        assert_eq!(result["delivered"], delivered, "{result}");
        assert!(
            result["event_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{result}"
        );
    }
    assert_eq!(results[2]["event_id"], "given-id");

    let first = next_json(&mut online).await;
    assert_eq!(first["data"], json!({"i": 0}));
    assert_eq!(first["event_id"], results[0]["event_id"]);
    assert_eq!(first["event_type"], "message");
    let second = next_json(&mut online).await;
    assert_eq!(second["data"], json!({"i": 2}));
    assert_eq!(second["event_id"], "given-id");
    assert_eq!(second["event_type"], "custom");
    assert_silent(&mut online, QUIET).await;

    let metrics = app.metrics().await;
    assert_eq!(metrics["events_offline_total"], 2, "{metrics}");
    assert_eq!(metrics["events_delivered_total"], 2, "{metrics}");
}

#[tokio::test]
async fn client_text_is_acked_to_that_client_only() {
    let app = spawn_app(&[]).await;
    let mut sender = app.connect("acker").await;
    let mut sibling = app.connect("acker").await;
    app.wait_for_connections(2).await;

    send_text(&mut sender, "Hello server").await;
    let reply = timeout(PROMPTLY, sender.next())
        .await
        .expect("ack within the deadline")
        .expect("stream open")
        .expect("valid frame");
    let Message::Text(text) = reply else {
        panic!("expected a text ack, got {reply:?}");
    };
    assert_eq!(
        text.as_str(),
        r#"{"event_type":"ack","data":{"received":"Hello server"}}"#
    );
    assert_silent(&mut sibling, QUIET).await;

    // Text that needs escaping comes back intact.
    let tricky = "quote \" backslash \\ newline \n unicode ✓";
    send_text(&mut sender, tricky).await;
    let ack = next_json(&mut sender).await;
    assert_eq!(
        ack,
        json!({"event_type": "ack", "data": {"received": tricky}})
    );

    let metrics = app.metrics().await;
    assert_eq!(metrics["client_messages_total"], 2, "{metrics}");
}

/// Performs a WebSocket handshake by hand over a raw TCP stream that will never answer pings.
async fn raw_handshake(app: &TestApp, user: &str) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.expect("tcp connect");
    let request = handshake_request(app.addr, user, VERSION_13);
    stream.write_all(request.as_bytes()).await.expect("write");
    let head = read_response_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    stream
}

/// The header line of the one WebSocket version this server speaks.
const VERSION_13: &str = "Sec-WebSocket-Version: 13\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_after_ping_timeout_while_an_answering_client_stays() {
    const INTERVAL: f64 = 0.1;
    const PING_TIMEOUT: f64 = 0.15;
    /// How long the answering client counts pings: 7.5 intervals, past the silent one's close.
    const WATCH: Duration = Duration::from_millis(750);
    let app = spawn_app(&[
        "--ws-ping-interval",
        &INTERVAL.to_string(),
        "--ws-ping-timeout",
        &PING_TIMEOUT.to_string(),
    ])
    .await;

    // A well-behaved client: tungstenite answers pings whenever the stream is polled.
    let mut good = app.connect("good").await;
    app.wait_for_connections(1).await;
    let good_client = tokio::spawn(async move {
        let mut pings = 0;
        let deadline = Instant::now() + WATCH;
        loop {
            match timeout_at(deadline, good.next()).await {
                Err(_elapsed) => break,
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(other) => panic!("answering client got {other:?}"),
            }
        }
        (good, pings)
    });

    let before_connect = Instant::now();
    let mut raw = raw_handshake(&app, "silent").await;
    app.wait_for_health("the silent client to register", |h| h["connections"] == 2)
        .await;
    app.wait_for_health("the silent client to be dropped", |h| h["connections"] == 1)
        .await;
    let elapsed = before_connect.elapsed().as_secs_f64();
    assert!(
        elapsed >= INTERVAL + PING_TIMEOUT - 0.05,
        "closed after {elapsed}s, before a ping could time out"
    );
    assert!(
        elapsed < INTERVAL + PING_TIMEOUT + 1.0,
        "closed only after {elapsed}s"
    );
    let metrics = app
        .wait_for_metrics("ping_timeout counted", |m| {
            m["connections_closed_total"]["ping_timeout"] == 1
        })
        .await;
    assert_eq!(metrics["users_online"], 1, "{metrics}");

    // What the silent client was sent: one empty ping, then close 1008 "ping timeout".
    let expected = [
        &[0x89u8, 0x00][..],
        &close_frame_bytes(1008, "ping timeout"),
    ]
    .concat();
    assert_eq!(
        read_exactly_or_end(&mut raw, expected.len()).await,
        expected
    );

    let (mut good, pings) = good_client.await.expect("good client task");
    assert!(
        pings >= 3,
        "only {pings} pings in {WATCH:?} at a {INTERVAL} s interval"
    );
    let response = app
        .push(json!({"user_id": "good", "data": {"still": "here"}}))
        .await;
    assert_eq!(response["delivered"], 1, "{response}");
    assert_eq!(next_json(&mut good).await["data"], json!({"still": "here"}));
    let metrics = app.metrics().await;
    assert_eq!(metrics["connections_closed_total"]["ping_timeout"], 1);
    assert_eq!(metrics["active_connections"], 1, "{metrics}");
}

/// Pushes `{"h": n}` to the healthy user and asserts that it arrives within a second.
async fn check_healthy(app: &TestApp, healthy: &mut Ws, n: usize) {
    let response = app
        .push(json!({"user_id": "healthy", "data": {"h": n}}))
        .await;
    assert_eq!(response["status"], "success", "{response}");
    let frame = timeout(Duration::from_secs(1), next_json(healthy))
        .await
        .unwrap_or_else(|_| panic!("healthy push {n} took over 1 s"));
    assert_eq!(frame["data"], json!({"h": n}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_without_delaying_other_users() {
    let app = spawn_app(&SMALL_QUEUES).await;
    let mut slow = app.connect("slow").await;
    let mut healthy = app.connect("healthy").await;
    app.wait_for_connections(2).await;

    let mut healthy_sent = 0;
    let (overflowed_at, response) = app
        .push_until_refused("slow", async || {
            check_healthy(&app, &mut healthy, healthy_sent).await;
            healthy_sent += 1;
        })
        .await;
    assert_eq!(response["delivered"], 0, "{response}");
    assert!(
        response["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not take it")),
        "{response}"
    );

    // The slow client is stuck; the healthy one is served promptly all the while.
    for _ in 0..50 {
        check_healthy(&app, &mut healthy, healthy_sent).await;
        healthy_sent += 1;
    }

    let metrics = app
        .wait_for_metrics("the slow consumer to be closed", |m| {
            m["connections_closed_total"]["slow_consumer"] == 1 && m["active_connections"] == 1
        })
        .await;
    assert_eq!(metrics["users_online"], 1, "{metrics}");
    assert_eq!(app.health().await["connections"], 1);
    let after = app
        .push(json!({"user_id": "slow", "data": {"late": true}}))
        .await;
    assert_eq!(after["delivered"], 0, "{after}");
    assert!(
        after["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("user not connected")),
        "{after}"
    );

    // Reading now, the slow client gets an in-order prefix of its events, then the end.
    let mut received = 0usize;
    let mut end = None;
    for _ in 0..=overflowed_at + 1 {
        match timeout(PROMPTLY, slow.next())
            .await
            .expect("frames or the end within the deadline")
        {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).expect("JSON frame");
                assert_eq!(
                    frame["data"]["n"], received,
                    "slow client frames out of order"
                );
                received += 1;
            }
            Some(Ok(Message::Close(frame))) => {
                end = Some(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(_)) | None => {
                end = Some(None);
                break;
            }
        }
    }
    let end = end.expect("the slow client's stream ended");
    if let Some(close) = end {
        assert_eq!(close, (1008, "slow consumer".to_owned()));
    }
    assert!(
        received <= overflowed_at,
        "received {received} of {overflowed_at}"
    );
}

#[tokio::test]
async fn graceful_shutdown_flushes_queued_events_then_closes_with_1001() {
    let app = spawn_app(&["--shutdown-timeout", "4"]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(app.connect("bye").await);
    }
    app.wait_for_connections(3).await;
    let response = app
        .push(json!({"user_id": "bye", "data": {"last": "words"}}))
        .await;
    assert_eq!(response["delivered"], 3, "{response}");

    let started = Instant::now();
    app.lifecycle.begin_shutdown();
    for ws in &mut clients {
        assert_eq!(next_json(ws).await["data"], json!({"last": "words"}));
        assert_eq!(
            close_of(ws).await,
            Some((1001, "server shutting down".to_owned()))
        );
        drain_until_end(ws).await;
    }
    assert_stopped_promptly(app.stopped, started).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_the_drain_ready_fails_and_handshakes_are_refused_but_pushes_flow() {
    // The drain is long enough for the checks made during it (milliseconds on loopback).
    let app = spawn_app(&["--shutdown-drain", "0.5", "--shutdown-timeout", "5"]).await;
    assert_eq!(
        app.get_json("/ready").await,
        (200, json!({"status": "ready"}))
    );
    let mut client = app.connect("draining").await;
    app.wait_for_connections(1).await;

    app.lifecycle.begin_shutdown();
    assert_eq!(
        app.get_json("/ready").await,
        (503, json!({"status": "shutting_down"}))
    );
    let (status, body) = refused_handshake(&app, "user_id=latecomer").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("shutting down")),
        "{body}"
    );
    let response = app
        .push(json!({"user_id": "draining", "data": {"during": "drain"}}))
        .await;
    assert_eq!(response["status"], "success", "{response}");
    assert_eq!(response["delivered"], 1, "{response}");
    assert_eq!(
        next_json(&mut client).await["data"],
        json!({"during": "drain"})
    );
    let metrics = app.metrics().await;
    assert_eq!(metrics["connections_refused_total"]["shutting_down"], 1);
    assert_eq!(metrics["active_connections"], 1, "{metrics}");
    drop(app.http);

    // After the drain the existing client is closed, and the server stops.
    let deadline = Instant::now() + Duration::from_secs(5);
    let close = timeout_at(deadline, async {
        loop {
            match client.next().await {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected the close after the drain, got {other:?}"),
            }
        }
    })
    .await
    .expect("close after the drain");
    assert_eq!(close, Some((1001, "server shutting down".to_owned())));
    drain_until_end(&mut client).await;
    let stopped = timeout_at(deadline, app.stopped)
        .await
        .expect("stopped within SHUTDOWN_TIMEOUT")
        .expect("server task did not panic");
    assert!(stopped.is_ok(), "{stopped:?}");
}

#[tokio::test]
async fn health_and_metrics_count_connections_exactly_as_they_open_and_close() {
    let app = spawn_app(&[]).await;
    let metrics = app.metrics().await;
    assert_eq!(metrics["active_connections"], 0);
    assert_eq!(metrics["connections_opened_total"], 0);

    let mut a = [app.connect("count-a").await, app.connect("count-a").await];
    let mut b = [app.connect("count-b").await, app.connect("count-b").await];
    let body = app.wait_for_connections(4).await;
    assert_eq!(body["users"], 2, "{body}");
    let metrics = app
        .wait_for_metrics("4 connections", |m| m["active_connections"] == 4)
        .await;
    assert_eq!(metrics["users_online"], 2, "{metrics}");
    assert_eq!(metrics["connections_opened_total"], 4, "{metrics}");

    // One socket of a closes: a is still online.
    a[0].close(None).await.expect("client close");
    drain_until_end(&mut a[0]).await;
    let metrics = app
        .wait_for_metrics("3 connections", |m| m["active_connections"] == 3)
        .await;
    assert_eq!(metrics["users_online"], 2, "{metrics}");
    assert_eq!(metrics["connections_closed_total"]["client_closed"], 1);
    let body = app.health().await;
    assert_eq!(
        (&body["connections"], &body["users"]),
        (&json!(3), &json!(2))
    );

    // Both of b close: only a remains.
    for ws in &mut b {
        ws.close(None).await.expect("client close");
        drain_until_end(ws).await;
    }
    let metrics = app
        .wait_for_metrics("1 connection", |m| m["active_connections"] == 1)
        .await;
    assert_eq!(metrics["users_online"], 1, "{metrics}");

    a[1].close(None).await.expect("client close");
    drain_until_end(&mut a[1]).await;
    let metrics = app
        .wait_for_metrics("no connections", |m| {
            m["active_connections"] == 0 && m["users_online"] == 0
        })
        .await;
    assert_eq!(metrics["connections_opened_total"], 4, "{metrics}");
    assert_eq!(
        metrics["connections_closed_total"]["client_closed"], 4,
        "{metrics}"
    );
    let body = app.health().await;
    assert_eq!(
        (&body["connections"], &body["users"]),
        (&json!(0), &json!(0))
    );
    let response = app.push(json!({"user_id": "count-a", "data": {}})).await;
    assert_eq!(response["delivered"], 0, "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_each_get_exactly_their_users_events() {
    const USERS: usize = 100;
    const PER_USER: usize = 10;
    const TOTAL: usize = USERS * PER_USER;
    let app = spawn_app(&[]).await;

    let sockets: Vec<(usize, Ws)> = stream::iter(0..TOTAL)
        .map(|i| {
            let app = &app;
            async move {
                let user = i % USERS;
                (user, app.connect(&format!("crowd-{user}")).await)
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    assert_eq!(sockets.len(), TOTAL);
    let body = app.wait_for_connections(TOTAL as u64).await;
    assert_eq!(body["users"], USERS, "{body}");

    for round in 0..2 {
        let batch: Vec<Value> = (0..USERS)
            .map(|user| json!({"user_id": format!("crowd-{user}"), "data": {"user": user, "round": round}}))
            .collect();
        let (status, response) = app.post_json("/sse/push/batch", &json!(batch)).await;
        assert_eq!(status, 200, "{response}");
        let results = response["results"].as_array().expect("results");
        assert_eq!(results.len(), USERS);
        for (user, result) in results.iter().enumerate() {
            assert_eq!(result["user_id"], format!("crowd-{user}"));
            assert_eq!(result["success"], true, "{result}");
            assert_eq!(result["delivered"], PER_USER, "{result}");
        }
    }
    // Each socket's next two frames are its own user's rounds 0 and 1: nothing else in between.
    let sockets: Vec<(usize, Ws)> = stream::iter(sockets)
        .map(|(user, mut ws)| async move {
            for round in 0..2 {
                let frame = next_json(&mut ws).await;
                assert_eq!(frame["user_id"], format!("crowd-{user}"));
                assert_eq!(frame["data"], json!({"user": user, "round": round}));
            }
            (user, ws)
        })
        .buffer_unordered(TOTAL)
        .collect()
        .await;

    drop(sockets);
    let metrics = app
        .wait_for_metrics("every connection to be gone", |m| {
            m["active_connections"] == 0 && m["users_online"] == 0
        })
        .await;
    assert_eq!(metrics["connections_opened_total"], TOTAL, "{metrics}");
    assert_eq!(app.health().await["connections"], 0);
}

#[tokio::test]
async fn per_user_limit_rejects_the_extra_connection() {
    let app = spawn_app(&["--max-connections-per-user", "2"]).await;
    let mut first = app.connect("limited").await;
    let mut second = app.connect("limited").await;
    app.wait_for_connections(2).await;

    let mut third = app.connect("limited").await;
    let (code, reason) = close_of(&mut third).await.expect("a close frame");
    assert_eq!(code, 1008);
    assert!(
        reason.contains("MAX_CONNECTIONS_PER_USER") && reason.contains('2'),
        "{reason}"
    );

    let response = app
        .push(json!({"user_id": "limited", "data": {"ok": 1}}))
        .await;
    assert_eq!(response["delivered"], 2, "{response}");
    for ws in [&mut first, &mut second] {
        assert_eq!(next_json(ws).await["data"], json!({"ok": 1}));
    }
    let metrics = app.metrics().await;
    assert_eq!(
        metrics["connections_refused_total"]["user_limit"], 1,
        "{metrics}"
    );
    assert_eq!(metrics["connections_opened_total"], 2, "{metrics}");
    assert_eq!(metrics["active_connections"], 2, "{metrics}");

    // Another user is not affected by this user's limit.
    let _other = app.connect("unlimited").await;
    app.wait_for_connections(3).await;
}

#[tokio::test]
async fn replace_oldest_policy_closes_the_older_connection() {
    let app = spawn_app(&[
        "--user-limit-policy",
        "replace-oldest",
        "--max-connections-per-user",
        "1",
    ])
    .await;
    let mut older = app.connect("replaced").await;
    app.wait_for_connections(1).await;
    let mut newer = app.connect("replaced").await;
    // Right away, while the older one is still closing: it is no longer counted.
    let response = app
        .push(json!({"user_id": "replaced", "data": {"at": "once"}}))
        .await;
    assert_eq!(response["status"], "success", "{response}");
    assert_eq!(response["delivered"], 1, "{response}");
    assert_eq!(next_json(&mut newer).await["data"], json!({"at": "once"}));
    assert_eq!(
        close_of(&mut older).await,
        Some((1008, "replaced by a newer connection".to_owned()))
    );

    let response = app
        .push(json!({"user_id": "replaced", "data": {"to": "newer"}}))
        .await;
    assert_eq!(response["status"], "success", "{response}");
    assert_eq!(response["delivered"], 1, "{response}");
    assert_eq!(next_json(&mut newer).await["data"], json!({"to": "newer"}));
    let metrics = app
        .wait_for_metrics("one replaced", |m| {
            m["connections_closed_total"]["replaced"] == 1
        })
        .await;
    assert_eq!(metrics["active_connections"], 1, "{metrics}");
    assert_eq!(metrics["connections_refused_total"]["user_limit"], 0);
}

#[tokio::test]
async fn max_connections_refuses_the_extra_handshake_with_503() {
    let app = spawn_app(&["--max-connections", "2"]).await;
    let _first = app.connect("full-a").await;
    let _second = app.connect("full-b").await;
    let (status, body) = refused_handshake(&app, "user_id=full-c").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("MAX_CONNECTIONS=2")),
        "{body}"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metrics["connections_refused_total"]["server_full"], 1,
        "{metrics}"
    );
    assert_eq!(app.health().await["connections"], 2);
}

#[tokio::test]
async fn oversized_or_binary_client_frames_close_only_that_socket() {
    let app = spawn_app(&["--ws-max-message-bytes", "1024"]).await;
    let mut offender = app.connect("sizes").await;
    let mut bystander = app.connect("sizes").await;
    let mut binary = app.connect("sizes").await;
    app.wait_for_connections(3).await;

    // Just under the limit is fine.
    let fits = "a".repeat(1000);
    send_text(&mut offender, &fits).await;
    assert_eq!(next_json(&mut offender).await["data"]["received"], fits);

    send_text(&mut offender, &"b".repeat(2000)).await;
    assert_eq!(
        close_of(&mut offender).await,
        Some((
            1009,
            "message too big (WS_MAX_MESSAGE_BYTES=1024)".to_owned()
        ))
    );

    binary
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send binary");
    assert_eq!(
        close_of(&mut binary).await,
        Some((1003, "binary frames are not supported".to_owned()))
    );

    let response = app
        .push(json!({"user_id": "sizes", "data": {"still": "ok"}}))
        .await;
    assert_eq!(response["status"], "success", "{response}");
    assert_eq!(response["delivered"], 1, "{response}");
    assert_eq!(
        next_json(&mut bystander).await["data"],
        json!({"still": "ok"})
    );
    let metrics = app
        .wait_for_metrics("both closes counted", |m| m["active_connections"] == 1)
        .await;
    assert_eq!(
        metrics["connections_closed_total"]["message_too_big"], 1,
        "{metrics}"
    );
    assert_eq!(
        metrics["connections_closed_total"]["unsupported_data"], 1,
        "{metrics}"
    );
}

#[tokio::test]
async fn handshake_with_a_bad_user_id_or_no_upgrade_is_refused_with_json() {
    let app = spawn_app(&[]).await;

    for query in ["", "other=1"] {
        let (status, body) = refused_handshake(&app, query).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            body,
            json!({"detail": [{"loc": ["query", "user_id"], "msg": "Field required", "type": "missing"}]})
        );
    }
    let (status, body) = refused_handshake(&app, "user_id=").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["query", "user_id"]));
    assert_eq!(body["detail"][0]["type"], "string_too_short");
    let (status, body) = refused_handshake(&app, "user_id=a%0Ab").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["query", "user_id"]));
    assert_eq!(body["detail"][0]["type"], "value_error");

    // A plain GET, as a browser's address bar or curl sends it: 426, naming the upgrade.
    let response = app
        .http
        .get(app.url("/ws?user_id=a"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 426);
    assert_eq!(response.headers()["upgrade"], "websocket");
    assert_eq!(response.headers()["sec-websocket-version"], "13");
    let body: Value = response.json().await.expect("JSON body");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );

    let metrics = app.metrics().await;
    assert_eq!(
        metrics["connections_refused_total"]["bad_request"], 5,
        "{metrics}"
    );
    assert_eq!(metrics["connections_opened_total"], 0, "{metrics}");
    assert_eq!(app.health().await["connections"], 0);
}

/// Reads from a raw stream until `len` bytes arrived or it ended; returns what arrived.
async fn read_exactly_or_end(raw: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    timeout(PROMPTLY, async {
        let mut buffer = [0u8; 256];
        while bytes.len() < len {
            let n = raw.read(&mut buffer).await.expect("read frames");
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buffer[..n]);
        }
    })
    .await
    .expect("frames within the deadline");
    bytes
}

/// A server close frame as it appears on the wire (unmasked, short payload).
fn close_frame_bytes(code: u16, reason: &str) -> Vec<u8> {
    let mut frame = vec![0x88, u8::try_from(2 + reason.len()).unwrap()];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason.as_bytes());
    frame
}

#[tokio::test]
async fn invalid_utf8_and_unmasked_frames_close_with_1007_and_1002() {
    let app = spawn_app(&[]).await;
    let mut bystander = app.connect("raw-frames").await;

    // A masked text frame (all-zero mask) whose payload is not UTF-8.
    let mut invalid = raw_handshake(&app, "raw-frames").await;
    invalid
        .write_all(&[0x81, 0x82, 0, 0, 0, 0, 0xFF, 0xFE])
        .await
        .expect("write frame");
    let expected = close_frame_bytes(1007, "invalid UTF-8");
    assert_eq!(
        read_exactly_or_end(&mut invalid, expected.len()).await,
        expected
    );

    // A client frame without a mask breaks RFC 6455.
    let mut unmasked = raw_handshake(&app, "raw-frames").await;
    unmasked
        .write_all(&[0x81, 0x02, b'h', b'i'])
        .await
        .expect("write frame");
    let expected = close_frame_bytes(1002, "protocol error");
    assert_eq!(
        read_exactly_or_end(&mut unmasked, expected.len()).await,
        expected
    );

    let metrics = app
        .wait_for_metrics("both raw clients closed", |m| m["active_connections"] == 1)
        .await;
    assert_eq!(
        metrics["connections_closed_total"]["invalid_payload"], 1,
        "{metrics}"
    );
    assert_eq!(
        metrics["connections_closed_total"]["protocol_error"], 1,
        "{metrics}"
    );
    let response = app
        .push(json!({"user_id": "raw-frames", "data": {"x": 1}}))
        .await;
    assert_eq!(response["delivered"], 1, "{response}");
    assert_eq!(next_json(&mut bystander).await["data"], json!({"x": 1}));
}

#[tokio::test]
async fn client_ping_is_answered_with_a_pong() {
    let app = spawn_app(&[]).await;
    let mut ws = app.connect("pinger").await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("send ping");
    let reply = timeout(PROMPTLY, ws.next())
        .await
        .expect("pong within the deadline")
        .expect("stream open")
        .expect("valid frame");
    assert_eq!(reply, Message::Pong(b"are you there".to_vec().into()));
    // A ping is not a text message: no ack, and the connection stays.
    assert_silent(&mut ws, QUIET).await;
    let metrics = app.metrics().await;
    assert_eq!(metrics["client_messages_total"], 0, "{metrics}");
    assert_eq!(metrics["active_connections"], 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http_client_does_not_cost_websocket_clients_their_close_frame() {
    // The stalled request holds the shutdown until this timeout.
    let app = spawn_app(&["--shutdown-timeout", "0.5"]).await;
    let mut ws = app.connect("survivor").await;
    app.wait_for_connections(1).await;
    // A push whose body never finishes (the request timeout is the default 30 s).
    let mut stalled = TcpStream::connect(app.addr).await.expect("connect");
    stalled
        .write_all(
            b"POST /sse/push HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{",
        )
        .await
        .expect("write head");

    let started = Instant::now();
    app.lifecycle.begin_shutdown();
    assert_eq!(close_of(&mut ws).await.map(|(code, _)| code), Some(1001));
    let stopped = timeout(Duration::from_secs(4), app.stopped).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_client_that_closes_gets_the_servers_close_frame_back() {
    let app = spawn_app(&[]).await;
    let mut ws = app.connect("leaving").await;
    app.wait_for_connections(1).await;
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .expect("send close");
    let reply = timeout(PROMPTLY, ws.next())
        .await
        .expect("the server answers the close");
    assert!(
        matches!(reply, Some(Ok(Message::Close(_)))),
        "a close frame, not a reset: {reply:?}"
    );
    app.wait_for_metrics("counted as closed by the client", |m| {
        m["connections_closed_total"]["client_closed"] == 1
    })
    .await;
}

#[tokio::test]
async fn a_client_that_vanishes_without_a_close_frame_is_a_network_error() {
    let app = spawn_app(&[]).await;
    // A real client dropped without closing (a killed process), and a raw one whose TCP
    // connection just ends (a network cut).
    let ws = app.connect("vanishes").await;
    let raw = raw_handshake(&app, "vanishes").await;
    app.wait_for_connections(2).await;
    drop(ws);
    drop(raw);
    let metrics = app
        .wait_for_metrics("both ends counted", |m| m["active_connections"] == 0)
        .await;
    let closed = &metrics["connections_closed_total"];
    assert_eq!(closed["network_error"], 2, "{metrics}");
    assert_eq!(closed["protocol_error"], 0, "{metrics}");
}

#[tokio::test]
async fn parameters_that_are_not_percent_encoded_utf8_are_refused_by_name() {
    let app = spawn_app(&[]).await;
    // Decoded lossily, `%FF` and `%FE` would both be U+FFFD: two ids, one user.
    for (query, name) in [
        ("user_id=%FF%FF", "user_id"),
        ("user_id=%FE%FE", "user_id"),
        ("user_id=a%ZZ", "user_id"),
        ("user_id=u&token=%FF", "token"),
        ("user_id=u&last_event_id=%FE", "last_event_id"),
    ] {
        let (status, body) = refused_handshake(&app, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["detail"][0]["loc"], json!(["query", name]), "{query}");
        let response = app.sse_stream(query, &[]).await;
        assert_eq!(response.status(), 400, "SSE {query}");
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(
            body["detail"][0]["loc"],
            json!(["query", name]),
            "SSE {query}"
        );
    }
    assert_eq!(app.health().await["connections"], 0);
}

/// Sends `request` as it is over a new TCP connection; returns the response head, lowercased.
async fn raw_request(app: &TestApp, request: &str) -> String {
    let mut stream = TcpStream::connect(app.addr).await.expect("tcp connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    read_response_head(&mut stream).await.to_ascii_lowercase()
}

#[tokio::test]
async fn an_unsupported_websocket_version_gets_426_naming_13() {
    let app = spawn_app(&[]).await;
    for version in [
        "Sec-WebSocket-Version: 8\r\n",
        "Sec-WebSocket-Version: 14\r\n",
        "",
    ] {
        let head = raw_request(&app, &handshake_request(app.addr, "v", version)).await;
        assert!(head.starts_with("http/1.1 426"), "{version:?}: {head}");
        assert!(head.contains("\r\nsec-websocket-version: 13\r\n"), "{head}");
        assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    }
    // A WebSocket request without `Connection: upgrade` is malformed, not another protocol: 400.
    let request = format!(
        "GET /ws?user_id=v HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        app.addr
    );
    let head = raw_request(&app, &request).await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    let metrics = app.metrics().await;
    assert_eq!(metrics["connections_opened_total"], 0, "{metrics}");
}

#[tokio::test]
async fn an_http11_request_without_host_gets_400_on_every_route() {
    let app = spawn_app(&[]).await;
    let handshake = handshake_request(app.addr, "v", VERSION_13);
    let without_host = handshake.replace(&format!("Host: {}\r\n", app.addr), "");
    let body = r#"{"user_id":"v","data":{}}"#;
    let push = format!(
        "POST /sse/push HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for request in [
        "GET /health HTTP/1.1\r\n\r\n".to_owned(),
        "GET /no-such-route HTTP/1.1\r\n\r\n".to_owned(),
        "GET /sse/stream?user_id=v HTTP/1.1\r\n\r\n".to_owned(),
        without_host,
        push,
        format!(
            "GET /health HTTP/1.1\r\nHost: {0}\r\nHost: {0}\r\n\r\n",
            app.addr
        ),
    ] {
        let head = raw_request(&app, &request).await;
        assert!(head.starts_with("http/1.1 400"), "{request:?}: {head}");
    }
    // HTTP/1.0 may omit Host; HTTP/1.1 with it is served.
    let head = raw_request(&app, "GET /health HTTP/1.0\r\n\r\n").await;
    assert!(
        head.starts_with("http/1.1 200") || head.starts_with("http/1.0 200"),
        "{head}"
    );
    let head = raw_request(&app, &handshake).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let metrics = app.metrics().await;
    assert_eq!(metrics["events_accepted_total"], 0, "{metrics}");
}
