//! Webhooks and acknowledgements across two nodes: presence webhooks go out once per transition
//! cluster-wide, and an acknowledgement made on another node than the push resolves it there.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio::time::sleep;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{PROMPTLY, TestApp, start_process};
use crate::redis::RedisServer;
use crate::support::{Client, LEASE, cluster, shared_cluster, wait_for_ready_status};
use crate::webhook_receiver::{Answer, Receiver, SECRET, assert_signed};

/// The flags of a node sending webhooks to `url`, then `extra`.
fn webhook_flags<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut flags = vec!["--webhook-url", url, "--webhook-secret", SECRET];
    flags.extend_from_slice(extra);
    flags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_reported_once_per_transition_across_nodes() {
    let receiver = Receiver::start(Answer::Accept).await;
    let url = receiver.url();
    let flags = webhook_flags(
        &url,
        &[
            "--webhook-presence-grace",
            "0.5",
            "--webhook-events",
            "user.connected,user.disconnected",
        ],
    );
    let Some(cluster) = shared_cluster("webhook_presence", 2, &flags).await else {
        return;
    };
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];

    // Two connections of one user on B, none on A: one user.connected.
    let first = Client::ws(b, "roamer").await;
    let second = Client::sse(b, "roamer").await;
    receiver
        .wait_until("user.connected", |d| !d.is_empty())
        .await;
    // Moving from B to A within the grace reports nothing.
    first.close().await;
    drop(second);
    sleep(Duration::from_millis(150)).await;
    let on_a = Client::ws(a, "roamer").await;
    sleep(Duration::from_millis(900)).await;
    assert_eq!(
        receiver.deliveries().len(),
        1,
        "{:?}",
        receiver.deliveries()
    );
    let connected = &receiver.deliveries()[0];
    assert_eq!(connected.kind(), "user.connected");
    assert!(
        connected.data()["connection_id"]
            .as_str()
            .unwrap()
            .starts_with("node-b/")
    );

    // The last connection goes (on A while B holds none): exactly one user.disconnected.
    on_a.close().await;
    receiver
        .wait_until("user.disconnected", |d| d.len() >= 2)
        .await;
    sleep(Duration::from_millis(1000)).await;
    let all = receiver.deliveries();
    let kinds: Vec<&str> = all.iter().map(|d| d.kind()).collect();
    assert_eq!(kinds, ["user.connected", "user.disconnected"]);
    assert!(
        all[1].data()["connection_id"]
            .as_str()
            .unwrap()
            .starts_with("node-a/")
    );
    assert_eq!(all[1].data()["reason"], "client_closed");
    assert_signed(&all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_on_another_node_resolves_the_push_and_one_webhook_reports_the_rest() {
    let receiver = Receiver::start(Answer::Accept).await;
    let url = receiver.url();
    let flags = webhook_flags(
        &url,
        &[
            "--ack-timeout",
            "1",
            "--webhook-events",
            "message.undelivered",
        ],
    );
    let Some(cluster) = shared_cluster("webhook_acks", 2, &flags).await else {
        return;
    };
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let mut on_b = Client::ws(b, "acker").await;
    let mut watcher_on_a = Client::ws(a, "acker").await;
    sleep(Duration::from_millis(200)).await;

    // Pushed on A, acknowledged on B: the waiting push on A hears of it.
    let http = a.http.clone();
    let push_url = a.url("/sse/push");
    let waiting = tokio::spawn(async move {
        let body = json!({"user_id": "acker", "event_id": "x-1", "ack": true, "wait_ms": 5000, "data": {}});
        http.post(push_url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    assert_eq!(on_b.next().await["event_id"], "x-1");
    assert_eq!(watcher_on_a.next().await["event_id"], "x-1");
    on_b.ws_mut()
        .send(Message::text(r#"{"type":"ack","event_id":"x-1"}"#))
        .await
        .unwrap();
    assert_eq!(waiting.await.unwrap()["acked"], true);

    // Pushed on B, acknowledged on neither node: one webhook, from B.
    let (status, _) = b
        .post_json(
            "/sse/push",
            &json!({"user_id": "acker", "event_id": "x-2", "ack": true, "data": {}}),
        )
        .await;
    assert_eq!(status, 200);
    let got = receiver.wait_until("not_acked", |d| !d.is_empty()).await;
    sleep(Duration::from_millis(1500)).await;
    let all = receiver.deliveries();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(got[0].data()["event_id"], "x-2");
    assert_eq!(got[0].data()["reason"], "not_acked");
    let (_, metrics_a) = a.get_json("/metrics").await;
    let (_, metrics_b) = b.get_json("/metrics").await;
    assert_eq!(metrics_a["acks"]["acked"], 1, "{}", metrics_a["acks"]);
    assert_eq!(metrics_b["acks"]["expired"], 1, "{}", metrics_b["acks"]);
    assert_eq!(metrics_a["acks"]["expired"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_users_are_reported_disconnected_once_by_a_survivor() {
    let receiver = Receiver::start(Answer::Accept).await;
    let url = receiver.url();
    let flags = webhook_flags(
        &url,
        &[
            "--webhook-presence-grace",
            "0.3",
            "--webhook-events",
            "user.connected,user.disconnected",
        ],
    );
    let Some(cluster) = shared_cluster("webhook_sigkill", 2, &flags).await else {
        return;
    };
    let workdir = tempfile::tempdir().expect("temporary directory");
    let mut command = cluster.process_command(workdir.path(), "node-victim");
    command
        .env("WEBHOOK_URL", &url)
        .env("WEBHOOK_SECRET", SECRET)
        .env("WEBHOOK_PRESENCE_GRACE", "0.3");
    let mut victim = start_process(command).await;
    let at = TestApp::at(victim.addr);
    let _ws = Client::ws(&at, "doomed").await;
    let _sse = Client::sse(&at, "doomed").await;
    receiver
        .wait_until("user.connected", |d| !d.is_empty())
        .await;

    victim.child.start_kill().expect("SIGKILL");
    tokio::time::timeout(PROMPTLY, victim.child.wait())
        .await
        .expect("the process dies")
        .expect("wait");
    let all = receiver
        .wait_until("user.disconnected", |d| d.len() >= 2)
        .await;
    // Two survivors heartbeat; the departure is reported by one of them, once.
    sleep(Duration::from_secs_f64(LEASE * 3.0)).await;
    let all = receiver
        .deliveries()
        .into_iter()
        .take(all.len().max(3))
        .collect::<Vec<_>>();
    let kinds: Vec<&str> = all.iter().map(|d| d.kind()).collect();
    assert_eq!(kinds, ["user.connected", "user.disconnected"], "{all:?}");
    assert_eq!(all[1].data()["user_id"], "doomed");
    assert_eq!(all[1].data()["reason"], "network_error");
    assert!(
        all[1].data()["connection_id"]
            .as_str()
            .unwrap()
            .starts_with("node-victim/")
    );
    assert_signed(&all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_nodes_departures_are_reported_by_another_node_unless_the_user_came_back() {
    let receiver = Receiver::start(Answer::Accept).await;
    let url = receiver.url();
    let flags = webhook_flags(
        &url,
        &[
            "--webhook-presence-grace",
            "4",
            "--webhook-events",
            "user.connected,user.disconnected",
        ],
    );
    let Some(cluster) = shared_cluster("webhook_shutdown", 1, &flags).await else {
        return;
    };
    let survivor = &cluster.nodes[0];
    let leaving = cluster.start_node("b", &flags).await;
    let _gone = Client::ws(&leaving, "stays-away").await;
    let _back = Client::ws(&leaving, "comes-back").await;
    receiver.wait_until("two arrivals", |d| d.len() >= 2).await;

    // The node stops within the grace (its clients do not answer the close: about 2 s), so its
    // departures are left in Redis; one user comes back to the survivor within the grace.
    leaving.lifecycle.begin_shutdown();
    leaving.stopped.await.unwrap().unwrap();
    let _again = Client::ws(survivor, "comes-back").await;
    let all = receiver.wait_until("the departure", |d| d.len() >= 3).await;
    sleep(Duration::from_secs_f64(LEASE * 3.0)).await;
    let all = receiver
        .deliveries()
        .into_iter()
        .take(all.len().max(4))
        .collect::<Vec<_>>();
    let kinds: Vec<&str> = all.iter().map(|d| d.kind()).collect();
    assert_eq!(
        kinds,
        ["user.connected", "user.connected", "user.disconnected"],
        "{all:?}"
    );
    assert_eq!(all[2].data()["user_id"], "stays-away");
    assert_eq!(all[2].data()["reason"], "shutdown");
    assert!(
        all[2].data()["connection_id"]
            .as_str()
            .unwrap()
            .starts_with("node-b/")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_still_connected_through_a_redis_outage_longer_than_the_lease_are_not_reported() {
    let Some(redis) = RedisServer::start("webhook_outage").await else {
        return;
    };
    let receiver = Receiver::start(Answer::Accept).await;
    let url = receiver.url();
    let flags = webhook_flags(
        &url,
        &[
            "--webhook-presence-grace",
            "0.3",
            "--webhook-events",
            "user.connected,user.disconnected",
        ],
    );
    let mut cluster = cluster(&redis.url(), "webhook_outage", 2, &flags).await;
    cluster.keep_keys();
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let _on_a = Client::ws(a, "stays-a").await;
    let _on_b = Client::sse(b, "stays-b").await;
    receiver.wait_until("two arrivals", |d| d.len() >= 2).await;

    // Every lease expires while Redis is stopped; the first node back must not take the other
    // for dead and report its users gone.
    redis.pause();
    sleep(Duration::from_secs_f64(LEASE * 3.0)).await;
    redis.resume();
    for node in [a, b] {
        wait_for_ready_status(node, 200, Duration::from_secs(10)).await;
    }
    sleep(Duration::from_secs_f64(LEASE * 4.0)).await;
    let kinds: Vec<String> = receiver
        .deliveries()
        .iter()
        .map(|d| d.kind().to_owned())
        .collect();
    assert_eq!(kinds, ["user.connected", "user.connected"]);
}
