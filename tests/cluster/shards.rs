//! Several independent Redis servers, one user base (`REDIS_URL` lists them): each user lives on
//! one shard; pushes, multi-user pushes and broadcasts reach users on every shard, each shard
//! storing a shared payload once; a shard that is down refuses exactly its users (503 naming it)
//! while the others are served, `/ready` and `/health` say which shard, and the shard's users
//! come back by themselves when it does.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{PROMPTLY, TestApp};
use crate::redis::{RedisServer, unique_prefix};
use crate::support::{Client, QUIET, node_id, wait_for_ready_status};

/// Users connected in the test: enough that both shards hold several.
const USERS: usize = 16;

/// Whether `user`'s stream meta is on the Redis at `url` (under `prefix`).
async fn holds(url: &str, prefix: &str, user: &str) -> bool {
    let client = ::redis::Client::open(url).expect("a Redis URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("the test reaches its Redis");
    ::redis::cmd("EXISTS")
        .arg(format!("{prefix}m:{user}"))
        .query_async::<bool>(&mut connection)
        .await
        .expect("EXISTS")
}

/// How many payload records (one per payload shared by several users) the Redis at `url` holds
/// under `prefix`.
async fn payload_records(url: &str, prefix: &str) -> usize {
    let client = ::redis::Client::open(url).expect("a Redis URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("the test reaches its Redis");
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}d:*"))
        .query_async(&mut connection)
        .await
        .expect("KEYS");
    keys.len()
}

/// A node of the two-shard cluster.
async fn node(urls: &str, prefix: &str, name: &str) -> TestApp {
    crate::helpers::spawn_app(&[
        "--broker",
        "redis",
        "--redis-url",
        urls,
        "--redis-key-prefix",
        prefix,
        "--node-id",
        &node_id(name),
        "--redis-timeout",
        "1",
    ])
    .await
}

/// The answer to a push of `{"n": n}` to `user` through `node`: status and body.
async fn push(node: &TestApp, user: &str, n: usize) -> (u16, Value) {
    let reply = node
        .post_with(
            "/sse/push",
            &json!({"user_id": user, "data": {"n": n}}),
            &[],
        )
        .await;
    (reply.status, reply.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_live_on_one_shard_each_and_a_shard_down_refuses_only_its_users() {
    let Some(first) = RedisServer::start("shards").await else {
        return;
    };
    let Some(mut second) = RedisServer::start("shards").await else {
        return;
    };
    let urls = format!("{},{}", first.url(), second.url());
    let prefix = unique_prefix("shards");
    let a = node(&urls, &prefix, "a").await;
    let b = node(&urls, &prefix, "b").await;
    for node in [&a, &b] {
        wait_for_ready_status(node, 200, PROMPTLY).await;
    }
    let users: Vec<String> = (0..USERS).map(|n| format!("sharded-{n}")).collect();
    let mut clients = Vec::new();
    for (n, user) in users.iter().enumerate() {
        let node = if n % 2 == 0 { &a } else { &b };
        clients.push(Client::ws(node, user).await);
    }

    // Each user's everything is on exactly one shard, and both shards hold some.
    for (n, user) in users.iter().enumerate() {
        let (status, body) = push(&b, user, n).await;
        assert_eq!(
            (status, body["delivered"].as_u64()),
            (200, Some(1)),
            "{body}"
        );
    }
    let mut on_second = Vec::new();
    for user in &users {
        let (in_first, in_second) = (
            holds(&first.url(), &prefix, user).await,
            holds(&second.url(), &prefix, user).await,
        );
        assert!(
            in_first != in_second,
            "{user}: first {in_first}, second {in_second}"
        );
        on_second.push(in_second);
    }
    let held_by_second = on_second.iter().filter(|on| **on).count();
    assert!(
        (1..USERS).contains(&held_by_second),
        "{held_by_second} of {USERS} users on the second shard"
    );
    for (n, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.next().await["data"]["n"], n);
    }
    // One request for users of both shards reaches all of them, as does a broadcast.
    let everyone: Vec<&String> = users.iter().collect();
    let reply = a
        .post_with(
            "/sse/push",
            &json!({"user_ids": everyone, "data": {"n": "all"}}),
            &[],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let reply = b
        .post_with("/sse/broadcast", &json!({"data": {"n": "broadcast"}}), &[])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    for client in &mut clients {
        assert_eq!(client.next().await["data"]["n"], "all");
        assert_eq!(client.next().await["data"]["n"], "broadcast");
    }
    // Each shard stored each of those two payloads once, whatever its number of users.
    for url in [first.url(), second.url()] {
        assert_eq!(payload_records(&url, &prefix).await, 2, "{url}");
    }

    // The second shard dies: its users are refused, naming it; the others are served.
    second.kill();
    for node in [&a, &b] {
        let body = wait_for_ready_status(node, 200, PROMPTLY).await;
        let deadline = tokio::time::Instant::now() + PROMPTLY;
        let mut body = body;
        while body["status"] != "degraded" && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            body = node.get_json("/ready").await.1;
        }
        assert_eq!(body["status"], "degraded", "{body}");
        assert_eq!(body["shards_down"][0]["shard"], 2, "{body}");
        let health = node.health().await;
        assert!(
            health["redis_shards"][1]["unavailable"].is_string(),
            "{health}"
        );
        assert!(
            health["redis_shards"][0]["unavailable"].is_null(),
            "{health}"
        );
    }
    for (n, user) in users.iter().enumerate() {
        let (status, body) = push(&a, user, 100 + n).await;
        if on_second[n] {
            assert_eq!(status, 503, "{user}: {body}");
            let detail = body["detail"].as_str().unwrap_or_default();
            assert!(detail.contains("redis shard 2 of 2"), "{user}: {body}");
            assert_eq!(a.refused(&format!("user_id={user}"), &[]).await.status, 503);
        } else {
            assert_eq!(status, 200, "{user}: {body}");
            assert_eq!(clients[n].next().await["data"]["n"], 100 + n);
            a.upgraded(&format!("user_id={user}"), &[]).await;
        }
    }
    // A request for users of both shards publishes nothing while one is down.
    let reply = b
        .post_with(
            "/sse/push",
            &json!({"user_ids": everyone, "data": {"n": "half"}}),
            &[],
        )
        .await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    for client in &mut clients {
        client.assert_quiet(QUIET).await;
    }

    // It comes back (empty): its users are served again, by themselves.
    second.restart().await;
    for node in [&a, &b] {
        let body = wait_for_ready_status(node, 200, Duration::from_secs(10)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut body = body;
        while body["status"] != "ready" && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            body = node.get_json("/ready").await.1;
        }
        assert_eq!(body, json!({"status": "ready"}));
    }
    for (n, user) in users.iter().enumerate() {
        let (status, body) = push(&b, user, 200 + n).await;
        assert_eq!(status, 200, "{user}: {body}");
        let mut event = clients[n].next().await;
        if event["event_type"] == "resync" {
            // The shard lost the user's stream: the client is told, then gets what follows.
            assert!(on_second[n], "{user}: {event}");
            event = clients[n].next().await;
        }
        assert_eq!(event["data"]["n"], 200 + n, "{user}: {event}");
    }
}
