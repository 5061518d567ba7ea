//! Webhooks and acknowledgements on one node: a real HTTP receiver started by the test checks
//! signatures (with Python's `hmac`), ids and order; real WebSocket and SSE clients acknowledge.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{SseReader, TestApp, next_json, spawn_app};
use crate::webhook_receiver::{Answer, Receiver, SECRET, assert_signed};

/// A server sending webhooks to `receiver`, with these extra flags.
async fn app_with(receiver: &Receiver, flags: &[&str]) -> TestApp {
    let url = receiver.url();
    let mut all = vec!["--webhook-url", &url, "--webhook-secret", SECRET];
    all.extend_from_slice(flags);
    spawn_app(&all).await
}

fn kinds(deliveries: &[crate::webhook_receiver::Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| d.kind().to_owned()).collect()
}

#[tokio::test]
async fn presence_webhooks_are_signed_ordered_and_spare_a_quick_reconnect() {
    let receiver = Receiver::start(Answer::Accept).await;
    let app = app_with(&receiver, &["--webhook-presence-grace", "0.4"]).await;

    let ws = app.connect("alice").await;
    let connected = receiver
        .wait_until("user.connected", |d| !d.is_empty())
        .await;
    assert_eq!(kinds(&connected), ["user.connected"]);
    let data = connected[0].data();
    assert_eq!(data["user_id"], "alice");
    assert_eq!(data["transport"], "websocket");
    assert!(data["connection_id"].is_string());

    // Gone and back within the grace: nothing.
    drop(ws);
    sleep(Duration::from_millis(100)).await;
    let mut sse = SseReader::open(&app, "user_id=alice", &[]).await;
    let _ = sse.opening().await;
    sleep(Duration::from_millis(700)).await;
    assert_eq!(kinds(&receiver.deliveries()), ["user.connected"]);

    // Gone for longer than the grace: one user.disconnected.
    drop(sse);
    let all = receiver
        .wait_until("user.disconnected", |d| d.len() >= 2)
        .await;
    sleep(Duration::from_millis(600)).await;
    let all = receiver
        .deliveries()
        .into_iter()
        .take(all.len().max(2))
        .collect::<Vec<_>>();
    assert_eq!(kinds(&all), ["user.connected", "user.disconnected"]);
    assert_eq!(all[1].data()["user_id"], "alice");
    assert_eq!(all[1].data()["reason"], "client_closed");
    assert_ne!(all[0].id, all[1].id, "one webhook-id per webhook");
    assert_eq!(receiver.deliveries().len(), 2);
    assert_signed(&receiver.deliveries());
}

#[tokio::test]
async fn an_event_that_reaches_nobody_is_reported_with_the_frame_it_would_have_been() {
    let receiver = Receiver::start(Answer::Accept).await;
    let app = app_with(&receiver, &["--webhook-events", "message.undelivered"]).await;
    app.push(json!({"user_id": "bob", "event_id": "e-1", "event_type": "order", "data": {"n": 1}}))
        .await;
    let mut ws = app.connect("carol").await;
    app.wait_for_connections(1).await;
    app.push(json!({"user_id": "carol", "data": {"n": 2}}))
        .await;
    next_json(&mut ws).await;
    let got = receiver
        .wait_until("message.undelivered", |d| !d.is_empty())
        .await;
    sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.deliveries().len(),
        1,
        "carol's event was delivered"
    );
    let data = got[0].data();
    assert_eq!(kinds(&got), ["message.undelivered"]);
    assert_eq!(data["user_id"], "bob");
    assert_eq!(data["event_id"], "e-1");
    assert_eq!(data["event_type"], "order");
    assert_eq!(data["reason"], "offline");
    assert_eq!(data["event"]["data"], json!({"n": 1}));
    assert_eq!(data["event"]["user_id"], "bob");
    assert_signed(&got);
}

#[tokio::test]
async fn client_messages_go_to_the_webhook_and_still_get_the_echo_ack() {
    let receiver = Receiver::start(Answer::Accept).await;
    let app = app_with(&receiver, &["--webhook-events", "client.message"]).await;
    let mut ws = app.connect("dave").await;
    ws.send(Message::text("hello there")).await.unwrap();
    let echo = next_json(&mut ws).await;
    assert_eq!(
        echo,
        json!({"event_type": "ack", "data": {"received": "hello there"}})
    );
    let got = receiver
        .wait_until("client.message", |d| !d.is_empty())
        .await;
    assert_eq!(got[0].data()["message"], "hello there");
    assert_eq!(got[0].data()["user_id"], "dave");
    assert!(got[0].data()["connection_id"].is_string());
    // A malformed acknowledgement is answered with an error naming the field, not echoed.
    ws.send(Message::text(r#"{"type":"ack","event_ids":[]}"#))
        .await
        .unwrap();
    let error = next_json(&mut ws).await;
    assert_eq!(error["event_type"], "error");
    assert!(
        error["data"]["detail"]
            .as_str()
            .unwrap()
            .contains("event_ids")
    );
    sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.deliveries().len(), 1);
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_webhook_id_until_it_succeeds() {
    let receiver = Receiver::start(Answer::FailFirst(2)).await;
    let app = app_with(
        &receiver,
        &[
            "--webhook-retry-initial",
            "0.05",
            "--webhook-events",
            "message.undelivered",
        ],
    )
    .await;
    app.push(json!({"user_id": "nobody", "data": {}})).await;
    let got = receiver
        .wait_until("three attempts", |d| d.len() >= 3)
        .await;
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|d| d.id == got[0].id),
        "one webhook-id on every attempt"
    );
    assert!(got.iter().all(|d| d.raw == got[0].raw), "the same body");
    assert_signed(&got);
    let metrics = app
        .wait_for_metrics("the delivery counted", |m| m["webhooks"]["sent"] == 1)
        .await;
    assert_eq!(metrics["webhooks"]["failed_attempts"], 2);
    assert_eq!(metrics["webhooks"]["queued"], 0);
    assert!(
        metrics["webhooks"]["last_error"]
            .as_str()
            .unwrap()
            .contains("500")
    );
}

#[tokio::test]
async fn a_hanging_receiver_never_holds_up_pushes_and_its_queue_stays_bounded() {
    let receiver = Receiver::start(Answer::Hang).await;
    let app = app_with(
        &receiver,
        &[
            "--webhook-timeout",
            "60",
            "--webhook-queue-size",
            "20",
            "--webhook-concurrency",
            "2",
            "--webhook-events",
            "message.undelivered",
        ],
    )
    .await;
    let mut ws = app.connect("watcher").await;
    app.wait_for_connections(1).await;
    for n in 0..200 {
        let reply = app
            .push(json!({"user_id": format!("offline-{n}"), "data": {"n": n}}))
            .await;
        assert_eq!(reply["stored"], true);
    }
    // Pushes to a connected user still arrive while the receiver hangs.
    app.push(json!({"user_id": "watcher", "data": {"live": true}}))
        .await;
    assert_eq!(next_json(&mut ws).await["data"]["live"], true);
    let metrics = app.metrics().await;
    let webhooks = &metrics["webhooks"];
    assert!(webhooks["queued"].as_u64().unwrap() <= 20, "{webhooks}");
    assert_eq!(
        webhooks["dropped"].as_u64().unwrap() + webhooks["queued"].as_u64().unwrap(),
        200
    );
    assert_eq!(receiver.deliveries().len(), 2, "one in flight per lane");
}

/// A push with `ack` and `wait_ms`, sent in the background: its response when it comes.
fn push_waiting(app: &TestApp, body: Value) -> tokio::task::JoinHandle<Value> {
    let http = app.http.clone();
    let url = app.url("/sse/push");
    tokio::spawn(async move {
        let reply = http.post(url).json(&body).send().await.unwrap();
        assert_eq!(reply.status(), 200);
        reply.json::<Value>().await.unwrap()
    })
}

#[tokio::test]
async fn a_websocket_ack_answers_a_waiting_push_and_an_unacked_event_is_reported() {
    let receiver = Receiver::start(Answer::Accept).await;
    let app = app_with(
        &receiver,
        &[
            "--ack-timeout",
            "0.5",
            "--webhook-events",
            "message.undelivered",
        ],
    )
    .await;
    let mut ws = app.connect("erin").await;
    app.wait_for_connections(1).await;

    let started = Instant::now();
    let waiting = push_waiting(
        &app,
        json!({"user_id": "erin", "event_id": "a-1", "ack": true, "wait_ms": 5000, "data": {}}),
    );
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["ack"], true);
    assert_eq!(frame["event_id"], "a-1");
    ws.send(Message::text(r#"{"type":"ack","event_id":"a-1"}"#))
        .await
        .unwrap();
    let answer = waiting.await.unwrap();
    assert_eq!(answer["acked"], true);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at the ack"
    );

    // Not acknowledged: the response says so after wait_ms, the webhook after ACK_TIMEOUT.
    let answer = app
        .push(
            json!({"user_id": "erin", "event_id": "a-2", "ack": true, "wait_ms": 100, "data": {}}),
        )
        .await;
    assert_eq!(answer["acked"], false);
    assert_eq!(next_json(&mut ws).await["event_id"], "a-2");
    let got = receiver.wait_until("not_acked", |d| !d.is_empty()).await;
    assert_eq!(got[0].data()["event_id"], "a-2");
    assert_eq!(got[0].data()["reason"], "not_acked");
    assert_eq!(got[0].data()["event"]["ack"], true);
    sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.deliveries().len(),
        1,
        "a-1 was acknowledged: no webhook"
    );
    let metrics = app.metrics().await;
    assert_eq!(metrics["acks"]["acked"], 1);
    assert_eq!(metrics["acks"]["expired"], 1);
    assert_eq!(metrics["acks"]["pending"], 0);
    assert_eq!(metrics["client_acks_total"], 1);
    // No echo ack was sent for the acknowledgement frame.
    crate::helpers::assert_silent(&mut ws, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn an_ack_after_a_resume_replayed_the_event_still_counts() {
    let receiver = Receiver::start(Answer::Accept).await;
    let app = app_with(
        &receiver,
        &[
            "--ack-timeout",
            "1.5",
            "--webhook-events",
            "message.undelivered",
        ],
    )
    .await;
    let mut ws = app.connect("fay").await;
    app.wait_for_connections(1).await;
    app.push(json!({"user_id": "fay", "event_id": "f-0", "data": {}}))
        .await;
    assert_eq!(next_json(&mut ws).await["event_id"], "f-0");
    drop(ws);
    app.wait_for_connections(0).await;
    let pushed = app
        .push(json!({"user_id": "fay", "event_id": "f-1", "ack": true, "data": {}}))
        .await;
    assert_eq!(pushed["delivered"], 0);
    let mut ws = app.resume("fay", "f-0").await;
    let replayed = next_json(&mut ws).await;
    assert_eq!(
        (replayed["event_id"].as_str(), replayed["ack"].as_bool()),
        (Some("f-1"), Some(true))
    );
    ws.send(Message::text(r#"{"type":"ack","event_ids":["f-1"]}"#))
        .await
        .unwrap();
    app.wait_for_metrics("the ack", |m| m["acks"]["acked"] == 1)
        .await;
    sleep(Duration::from_millis(1800)).await;
    assert!(
        receiver.deliveries().is_empty(),
        "{:?}",
        receiver.deliveries()
    );
}

#[tokio::test]
async fn an_unacknowledged_event_for_an_offline_user_is_reported_offline() {
    let receiver = Receiver::start(Answer::Accept).await;
    let app = app_with(&receiver, &["--ack-timeout", "0.3"]).await;
    app.push(json!({"user_id": "gus", "event_id": "g-1", "ack": true, "data": {}}))
        .await;
    sleep(Duration::from_millis(150)).await;
    assert!(
        receiver.deliveries().is_empty(),
        "an ack event waits for ACK_TIMEOUT"
    );
    let got = receiver.wait_until("offline", |d| !d.is_empty()).await;
    assert_eq!(got[0].data()["reason"], "offline");
    assert_eq!(got[0].data()["event_id"], "g-1");
}

#[tokio::test]
async fn an_sse_client_acknowledges_with_a_post_carrying_its_credentials() {
    let receiver = Receiver::start(Answer::Accept).await;
    let app = app_with(&receiver, &["--ack-timeout", "1"]).await;
    let mut sse = SseReader::open(&app, "user_id=hal", &[]).await;
    let _ = sse.opening().await;
    let mut events = sse.events();
    let waiting = push_waiting(
        &app,
        json!({"user_id": "hal", "event_id": "h-1", "ack": true, "wait_ms": 5000, "data": {}}),
    );
    let event = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::StreamExt::next(&mut events),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(event.id, "h-1");
    let (status, body) = app
        .post_json("/sse/ack?user_id=hal", &json!({"event_id": "h-1"}))
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"status": "ok", "acknowledged": 1}))
    );
    assert_eq!(waiting.await.unwrap()["acked"], true);

    let (status, body) = app
        .post_json("/sse/ack?user_id=hal", &json!({"event_ids": "h-1"}))
        .await;
    assert_eq!(status, 422);
    assert!(body.to_string().contains("event_ids"), "{body}");
    let (status, _) = app.post_json("/sse/ack", &json!({"event_id": "h-1"})).await;
    assert_eq!(status, 400, "the stream's credentials are required");
    sleep(Duration::from_millis(1300)).await;
    assert!(receiver.of("message.undelivered").is_empty());
}

#[tokio::test]
async fn acknowledgement_fields_are_validated_naming_the_field() {
    let app = spawn_app(&["--ack-wait-max-ms", "1000"]).await;
    let cases = [
        (
            json!({"user_id": "u", "wait_ms": 10, "data": {}}),
            "wait_ms",
            "ack",
        ),
        (
            json!({"user_id": "u", "ack": true, "wait_ms": 5000, "data": {}}),
            "wait_ms",
            "ACK_WAIT_MAX_MS",
        ),
        (
            json!({"user_id": "u", "ack": "yes", "data": {}}),
            "ack",
            "boolean",
        ),
        (
            json!({"user_id": "u", "ack": true, "wait_ms": -1, "data": {}}),
            "wait_ms",
            "integer",
        ),
    ];
    for (body, field, words) in cases {
        let (status, reply) = app.post_json("/sse/push", &body).await;
        assert_eq!(status, 422, "{body}");
        let issue = &reply["detail"][0];
        assert_eq!(issue["loc"], json!(["body", field]), "{reply}");
        assert!(issue["msg"].as_str().unwrap().contains(words), "{reply}");
    }
    let (status, reply) = app
        .post_json("/sse/broadcast", &json!({"ack": true, "data": {}}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(reply["detail"][0]["loc"], json!(["body", "ack"]));
    let (status, reply) = app
        .post_json(
            "/sse/push/batch",
            &json!([{"user_id": "u", "ack": true, "wait_ms": 5, "data": {}}]),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(reply["detail"][0]["loc"], json!(["body", 0, "wait_ms"]));
    let (status, reply) = app
        .post_json(
            "/sse/push/batch",
            &json!([{"user_id": "u", "ack": true, "data": {}}]),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test]
async fn sse_acknowledgements_are_limited_per_user_like_websocket_frames() {
    let app = spawn_app(&["--client-message-rate", "1"]).await;
    let ack = json!({"event_id": "x"});
    for _ in 0..2 {
        let (status, _) = app.post_json("/sse/ack?user_id=ivy", &ack).await;
        assert_eq!(status, 200, "within the burst of twice the rate");
    }
    let refused = app.post_with("/sse/ack?user_id=ivy", &ack, &[]).await;
    assert_eq!(refused.status, 429);
    assert!(refused.header("retry-after").is_some());
    assert!(
        refused.json()["detail"]
            .as_str()
            .unwrap()
            .contains("event_ids")
    );
    let (status, _) = app.post_json("/sse/ack?user_id=other", &ack).await;
    assert_eq!(status, 200, "another user has a budget of its own");
}

#[tokio::test]
async fn a_webhook_the_receiver_refuses_with_a_4xx_is_given_up_at_once() {
    let receiver = Receiver::start(Answer::Refuse).await;
    let app = app_with(
        &receiver,
        &[
            "--webhook-retry-initial",
            "0.05",
            "--webhook-events",
            "message.undelivered",
        ],
    )
    .await;
    app.push(json!({"user_id": "nobody", "data": {}})).await;
    receiver.wait_until("one attempt", |d| !d.is_empty()).await;
    let metrics = app
        .wait_for_metrics("given up", |m| m["webhooks"]["given_up"] == 1)
        .await;
    assert_eq!(metrics["webhooks"]["failed_attempts"], 1);
    assert_eq!(metrics["webhooks"]["queued"], 0);
    sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.deliveries().len(), 1, "a 400 is not retried");
}

#[tokio::test]
async fn a_stopping_node_reports_its_users_departures_before_it_exits() {
    let receiver = Receiver::start(Answer::Accept).await;
    let app = app_with(
        &receiver,
        &["--webhook-presence-grace", "30", "--shutdown-timeout", "5"],
    )
    .await;
    let ws = app.connect("zed").await;
    receiver
        .wait_until("user.connected", |d| !d.is_empty())
        .await;
    app.lifecycle.begin_shutdown();
    app.stopped.await.unwrap().unwrap();
    drop(ws);
    let all = receiver.deliveries();
    let kinds: Vec<&str> = all.iter().map(|d| d.kind()).collect();
    assert_eq!(kinds, ["user.connected", "user.disconnected"], "{all:?}");
    assert_eq!(all[1].data()["reason"], "shutdown");
}
