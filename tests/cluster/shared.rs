//! One event for many users in a cluster (`user_ids`, broadcasts): its payload is stored in Redis
//! once and reaches each node once, yet every connection gets its own frame (naming its user),
//! once, in order with the user's other events; resume replays it byte for byte; a retry is a
//! duplicate for every user; and `HISTORY_MAX_BYTES` bounds the payloads Redis keeps.

use serde_json::{Value, json};

use crate::helpers::{TestApp, Ws, encode, epoch_of, id_of, next_json, next_text};
use crate::support::{Client, Cluster, QUIET, empty, shared_cluster, take, wait_for_counts};

/// Stored payload records under the cluster's prefix: how many, and the bytes the cluster counts
/// for them.
async fn stored_records(cluster: &Cluster) -> (usize, u64) {
    let mut redis = redis_connection(cluster).await;
    let mut keys = 0;
    let mut cursor = 0_u64;
    loop {
        let (next, found): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .cursor_arg(cursor)
            .arg("MATCH")
            .arg(format!("{}d:*", cluster.prefix))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await
            .unwrap();
        keys += found.len();
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let bytes: Option<u64> = ::redis::cmd("GET")
        .arg(format!("{}db", cluster.prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    (keys, bytes.unwrap_or(0))
}

/// The memory Redis reports for every key under the cluster's prefix (`MEMORY USAGE`).
async fn memory_under_prefix(cluster: &Cluster) -> u64 {
    let mut redis = redis_connection(cluster).await;
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{}*", cluster.prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut total = 0;
    for key in keys {
        let usage: Option<u64> = ::redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut redis)
            .await
            .unwrap();
        total += usage.unwrap_or(0);
    }
    total
}

/// The epoch of `user`'s stream, as Redis keeps it.
async fn stream_epoch(cluster: &Cluster, user: &str) -> String {
    ::redis::cmd("HGET")
        .arg(format!("{}m:{user}", cluster.prefix))
        .arg("e")
        .query_async(&mut redis_connection(cluster).await)
        .await
        .unwrap()
}

async fn redis_connection(cluster: &Cluster) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(cluster.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Pushes `body` (raw JSON text, so that `data` goes out byte for byte) and returns the answer.
async fn push_text(node: &TestApp, body: String) -> Value {
    let response = node
        .http
        .post(node.url("/sse/push"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// A `user_ids` push of `data` (raw JSON text) with an upstream event id.
async fn push_to_users(node: &TestApp, users: &[String], event_id: &str, data: &str) -> Value {
    let users = serde_json::to_string(users).unwrap();
    push_text(
        node,
        format!(r#"{{"user_ids":{users},"event_id":"{event_id}","data":{data}}}"#),
    )
    .await
}

/// The frame a client of `user` receives for a push with this event id, timestamp and `data`
/// text: the wire contract's field order, `data` as the upstream sent it.
fn expected_frame(user: &str, event_id: &str, timestamp: &str, data: &str) -> String {
    let user = serde_json::to_string(user).unwrap();
    format!(
        r#"{{"event_type":"message","event_id":"{event_id}","user_id":{user},"timestamp":{timestamp},"data":{data}}}"#
    )
}

fn results(answer: &Value) -> &Vec<Value> {
    answer["results"]
        .as_array()
        .unwrap_or_else(|| panic!("results: {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_push_to_many_users_is_stored_once_and_reaches_each_connection_once_in_order() {
    const USERS: usize = 150;
    // Debug builds read 150 large frames slowly: no keepalive pings to miss meanwhile.
    let Some(cluster) = shared_cluster("shared_fan_out", 2, &["--ws-ping-interval", "0"]).await
    else {
        return;
    };
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let users: Vec<String> = (0..USERS).map(|n| format!("user {n:03}")).collect();
    // Half on each node; user 001 also over SSE.
    let mut clients = Vec::with_capacity(USERS);
    for (n, user) in users.iter().enumerate() {
        let node = if n % 2 == 0 { a } else { b };
        let ws = node
            .upgraded(&format!("user_id={}", encode(user)), &[])
            .await;
        clients.push((user.clone(), ws));
    }
    let mut sse = Client::sse(a, &users[1]).await;
    let connections = USERS as u64 + 1;
    wait_for_counts(
        &[a, b],
        empty(2).with_connections(connections, connections - 1, 1, USERS as u64),
    )
    .await;
    // Every user's history exists (a new Redis stream costs some 4.7 KiB whatever it holds), so
    // that what the large push adds can be measured.
    let users_json = serde_json::to_string(&users).unwrap();
    push_text(
        a,
        format!(r#"{{"user_ids":{users_json},"event_id":"warm","data":{{"w":1}}}}"#),
    )
    .await;
    let (records_before, _) = stored_records(&cluster).await;
    let memory_before = memory_under_prefix(&cluster).await;

    // A small push before, the large shared one (two publish scripts: more than 100 users), small
    // ones after.
    let first = a
        .push(json!({"user_id": users[0], "data": {"seq": 0}}))
        .await;
    let data = format!(r#"{{"big":"{}"}}"#, "x".repeat(128 * 1024));
    let body =
        format!(r#"{{"user_ids":{users_json},"event_id":"big-1","timestamp":1.5,"data":{data}}}"#);
    let shared = push_text(b, body).await;
    assert_eq!(shared["status"], "success", "{}", shared["message"]);
    assert_eq!(shared["delivered"], USERS + 1, "{}", shared["message"]);
    for (n, result) in results(&shared).iter().enumerate() {
        assert_eq!(result["user_id"], users[n].as_str());
        assert_eq!(result["stored"], true, "{result}");
        assert_eq!(result["duplicate"], false, "{result}");
        assert_eq!(result["delivered"], if n == 1 { 2 } else { 1 }, "{result}");
    }
    let after_first = a
        .push(json!({"user_id": users[0], "data": {"seq": 2}}))
        .await;
    let after_last = b
        .push(json!({"user_id": users[USERS - 1], "data": {"seq": 2}}))
        .await;

    for (user, ws) in &mut clients {
        assert_eq!(id_of(&next_json(ws).await), "warm");
        if user == &users[0] {
            assert_eq!(id_of(&next_json(ws).await), id_of(&first));
        }
        let text = next_text(ws).await;
        assert!(
            text == expected_frame(user, "big-1", "1.5", &data),
            "{user}'s own frame, whole: {}…",
            &text[..text.len().min(120)]
        );
        if user == &users[0] {
            assert_eq!(id_of(&next_json(ws).await), id_of(&after_first));
        } else if user == &users[USERS - 1] {
            assert_eq!(id_of(&next_json(ws).await), id_of(&after_last));
        }
    }
    assert_eq!(sse.next().await["event_id"], "warm");
    let event = sse.next().await;
    assert_eq!(event["event_id"], "big-1");
    assert_eq!(event["user_id"], users[1].as_str());
    // All quiet (checked at once: one QUIET for all of them).
    futures_util::future::join_all(clients.iter_mut().map(|(_, ws)| assert_quiet(ws))).await;
    sse.assert_quiet(QUIET).await;

    // Redis holds the payload once: one record more, counted once, and far less memory than a
    // copy per user (150 copies would be 19 MiB; each user's entry holds their head).
    let (records, bytes) = stored_records(&cluster).await;
    assert_eq!(records, records_before + 1, "one payload record");
    let payload = data.len() as u64 + 1;
    assert!(
        (payload..payload + 64).contains(&bytes),
        "counted once: {bytes} bytes for a {payload}-byte payload"
    );
    let grown = memory_under_prefix(&cluster).await - memory_before;
    assert!(
        grown < 2 * payload,
        "Redis grew by {grown} bytes for a {payload}-byte payload to {USERS} users"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_shared_push_replays_each_users_own_frame_byte_for_byte() {
    let Some(cluster) = shared_cluster("shared_resume", 2, &[]).await else {
        return;
    };
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let users = ["ann", "bob \"b\"", "cy"].map(str::to_owned);
    let timestamp = "1700000000.5";
    let data = format!(
        r#"{{ "text": "é\u00e9 \n",  "pad": "{}", "n": [1, 2.50] }}"#,
        "y".repeat(4096)
    );

    // Ann saw one event on A, then left.
    let mut ann = a.connect(&users[0]).await;
    let seen = a
        .push(json!({"user_id": users[0], "data": {"seq": 0}}))
        .await;
    let _ = next_text(&mut ann).await;
    drop(ann);
    wait_for_counts(&[a, b], empty(2)).await;

    // Cy is online (on B) and gets the shared push live; a single push to "solo" with the same
    // fields shows what one user's frame is.
    let mut cy = b.connect(&users[2]).await;
    let mut solo = a.connect("solo").await;
    wait_for_counts(&[a, b], empty(2).with_connections(2, 2, 0, 2)).await;
    let body = |targets: String| {
        format!(r#"{{{targets},"event_id":"shared-1","timestamp":{timestamp},"data":{data}}}"#)
    };
    let users_json = serde_json::to_string(&users).unwrap();
    let shared = push_text(a, body(format!(r#""user_ids":{users_json}"#))).await;
    assert_eq!(
        shared["status"], "partial",
        "ann and bob are offline: {shared}"
    );
    let single = push_text(b, body(r#""user_id":"solo""#.to_owned())).await;
    assert_eq!(single["delivered"], 1, "{single}");
    assert_eq!(
        next_text(&mut solo).await,
        expected_frame("solo", "shared-1", timestamp, &data),
        "a single push's frame"
    );
    assert_eq!(
        next_text(&mut cy).await,
        expected_frame(&users[2], "shared-1", timestamp, &data),
        "live, from the group message"
    );

    // Ann resumes on B from her last event: the shared event, as a single push would give it.
    let mut ann = b.resume(&users[0], &id_of(&seen)).await;
    assert_eq!(
        next_text(&mut ann).await,
        expected_frame(&users[0], "shared-1", timestamp, &data)
    );
    // Bob, never connected before, resumes from the start of his stream on A.
    let epoch = stream_epoch(&cluster, &users[1]).await;
    let mut bob = a.resume(&users[1], &format!("{epoch}:0")).await;
    assert_eq!(
        next_text(&mut bob).await,
        expected_frame(&users[1], "shared-1", timestamp, &data)
    );
    // And over SSE, from the event id: nothing after it.
    let mut bob_sse = Client::sse_query(
        b,
        &format!("user_id={}", encode(&users[1])),
        &[("Last-Event-ID", &format!("{epoch}:0"))],
    )
    .await;
    let replayed = bob_sse.next().await;
    let expected: Value =
        serde_json::from_str(&expected_frame(&users[1], "shared-1", timestamp, &data)).unwrap();
    assert_eq!(replayed, expected);
    bob_sse.assert_quiet(QUIET).await;
    for ws in [&mut ann, &mut bob, &mut cy] {
        assert_quiet(ws).await;
    }
}

/// Fails the test if a text frame arrives within [`QUIET`].
async fn assert_quiet(ws: &mut Ws) {
    crate::helpers::assert_silent(ws, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_push_to_many_users_is_a_duplicate_for_every_user() {
    let Some(cluster) = shared_cluster("shared_retry", 2, &[]).await else {
        return;
    };
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let users: Vec<String> = ["d1", "d2", "d3", "offline"].map(str::to_owned).to_vec();
    let mut clients = Vec::new();
    for (n, user) in users[..3].iter().enumerate() {
        let node = if n % 2 == 0 { a } else { b };
        clients.push(Client::ws(node, user).await);
    }
    wait_for_counts(&[a, b], empty(2).with_connections(3, 3, 0, 3)).await;
    let data = format!(r#"{{"pad":"{}"}}"#, "z".repeat(2048));
    let first = push_to_users(a, &users, "once", &data).await;
    let (records, bytes) = stored_records(&cluster).await;
    assert_eq!(records, 1);

    // Retried through the other node, then again: every user's result is the original's.
    for node in [b, a] {
        let retry = push_to_users(node, &users, "once", &data).await;
        for (original, repeated) in results(&first).iter().zip(results(&retry)) {
            assert_eq!(repeated["duplicate"], true, "{repeated}");
            assert_eq!(repeated["stored"], true, "{repeated}");
            assert_eq!(repeated["delivered"], original["delivered"], "{repeated}");
            assert_eq!(original["duplicate"], false, "{original}");
        }
    }
    for client in &mut clients {
        assert_eq!(client.next().await["event_id"], "once");
        client.assert_quiet(QUIET).await;
    }
    assert_eq!(
        stored_records(&cluster).await,
        (records, bytes),
        "a retry stores nothing"
    );
    // A new push to the same users follows at the next position.
    let next = push_to_users(b, &users, "twice", &data).await;
    assert!(
        results(&next)
            .iter()
            .all(|result| result["duplicate"] == false),
        "{next}"
    );
    for client in &mut clients {
        assert_eq!(client.next().await["event_id"], "twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_max_bytes_drops_the_oldest_payloads_and_resuming_past_one_resyncs() {
    const PAYLOAD: usize = 100_000;
    let Some(cluster) =
        shared_cluster("shared_budget", 2, &["--history-max-bytes", "250000"]).await
    else {
        return;
    };
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let users = ["m1", "m2"].map(str::to_owned);
    let data = |n: usize| format!(r#"{{"n":{n},"pad":"{}"}}"#, "p".repeat(PAYLOAD));
    // M1's first event is small (kept inline): position 1.
    let small = a.push(json!({"user_id": users[0], "data": {"n": 0}})).await;
    let epoch = epoch_of(&small);
    let mut pushed = Vec::new();
    for n in 1..=3 {
        pushed.push(push_to_users(a, &users, &format!("p{n}"), &data(n)).await);
        let (records, bytes) = stored_records(&cluster).await;
        assert!(bytes <= 250_000, "after p{n}: {bytes} bytes stored");
        assert_eq!(records, n.min(2), "after p{n}");
    }

    // p1's payload is gone: resuming from before it is a resync (`expired`), then live events.
    let mut m1 = Client::ws_resume(b, &users[0], &id_of(&small)).await;
    let resync = m1.next().await;
    assert_eq!(resync["event_type"], "resync", "{resync}");
    assert_eq!(resync["data"]["reason"], "expired", "{resync}");
    assert_eq!(resync["event_id"], format!("{epoch}:4"), "{resync}");
    m1.assert_quiet(QUIET).await;
    // From p1 itself, p2 and p3 are still whole.
    let mut m2 = Client::ws_resume(a, &users[1], "p1").await;
    let replayed = take(&mut m2, 2).await;
    let ids: Vec<String> = replayed.iter().map(id_of).collect();
    assert_eq!(ids, ["p2", "p3"]);
    assert_eq!(replayed[1]["data"]["n"], 3);
    m2.close().await;

    // A large single event counts too: it pushes p2 out.
    let single = b
        .push(json!({"user_id": users[1], "event_id": "s4", "data": {"pad": "q".repeat(PAYLOAD)}}))
        .await;
    assert_eq!(single["stored"], true, "{single}");
    let (records, bytes) = stored_records(&cluster).await;
    assert_eq!(records, 2);
    assert!(bytes <= 250_000, "{bytes}");
    // (On A, which has p2's payload at hand from the resume above: Redis's bounds still apply.)
    let mut m2 = Client::ws_resume(a, &users[1], "p1").await;
    let resync = m2.next().await;
    assert_eq!(
        (&resync["event_type"], &resync["data"]["reason"]),
        (&json!("resync"), &json!("expired")),
        "{}",
        resync["event_id"]
    );
    m2.assert_quiet(QUIET).await;
    // Duplicates are still recognised for events whose payload was dropped.
    let retry = push_to_users(b, &users, "p1", &data(1)).await;
    assert!(
        results(&retry)
            .iter()
            .all(|result| result["duplicate"] == true),
        "{retry}"
    );
    m1.assert_quiet(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_group_message_published_carries_the_payload_whichever_script_sends_it() {
    let Some(cluster) = shared_cluster("shared_late", 2, &[]).await else {
        return;
    };
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    // The first publish script (100 users) finds nobody online: it publishes nothing, and the
    // second one's message must carry the payload.
    let users: Vec<String> = (0..110).map(|n| format!("late{n}")).collect();
    let mut online = Vec::new();
    for (n, user) in users[100..].iter().enumerate() {
        let node = if n % 2 == 0 { a } else { b };
        online.push((user.clone(), node.connect(user).await));
    }
    wait_for_counts(&[a, b], empty(2).with_connections(10, 10, 0, 10)).await;
    let data = format!(r#"{{"late":"{}"}}"#, "l".repeat(8192));
    let users_json = serde_json::to_string(&users).unwrap();
    let answer = push_text(
        a,
        format!(r#"{{"user_ids":{users_json},"event_id":"late-1","timestamp":2,"data":{data}}}"#),
    )
    .await;
    assert_eq!(answer["delivered"], 10, "{answer}");
    for (user, ws) in &mut online {
        assert_eq!(
            next_text(ws).await,
            expected_frame(user, "late-1", "2", &data)
        );
    }
    assert_eq!(stored_records(&cluster).await.0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_a_groups_payload_reads_it_from_redis_or_closes_the_connection() {
    let Some(cluster) = shared_cluster("shared_fetch", 1, &[]).await else {
        return;
    };
    let a = &cluster.nodes[0];
    let mut ws = a.connect("hand").await;
    wait_for_counts(&[a], empty(1).with_connections(1, 1, 0, 1)).await;
    let first = a.push(json!({"user_id": "hand", "data": {"seq": 1}})).await;
    assert_eq!(id_of(&next_json(&mut ws).await), id_of(&first));
    let epoch = epoch_of(&first);

    // Later messages of a group name the payload record only (as the publish script writes them);
    // this one's record was never received here, so the node reads it from Redis.
    let mut redis = redis_connection(&cluster).await;
    let head = r#"{"event_type":"message","event_id":"g1","user_id":"hand","timestamp":3,"data":"#;
    let () = ::redis::cmd("HSET")
        .arg(format!("{}d:rec1", cluster.prefix))
        .arg("v")
        .arg("2 7\ng1message{\"from\":\"redis\"}}")
        .query_async(&mut redis)
        .await
        .unwrap();
    let (before, after) = head.split_once(r#""hand""#).unwrap();
    let group = |position: u64, record: &str| {
        let (b, a) = (before.len(), after.len());
        format!("G {record} 1 {b} {a}\n{before}{after}{epoch} {position} 4 6\nhand\"hand\"")
    };
    let publish = |message: String| {
        let mut redis = redis.clone();
        let channel = format!("{}g", cluster.prefix);
        async move {
            let _: u64 = ::redis::cmd("PUBLISH")
                .arg(channel)
                .arg(message)
                .query_async(&mut redis)
                .await
                .unwrap();
        }
    };
    publish(group(2, "rec1")).await;
    assert_eq!(
        next_text(&mut ws).await,
        format!(r#"{head}{{"from":"redis"}}}}"#)
    );
    // A record Redis no longer has (dropped for HISTORY_MAX_BYTES): the connection is closed, so
    // that its client resumes and is told to resync.
    publish(group(3, "gone")).await;
    let (code, reason) = crate::helpers::close_of(&mut ws)
        .await
        .expect("a close frame");
    assert_eq!(code, 1008, "{reason}");
}
