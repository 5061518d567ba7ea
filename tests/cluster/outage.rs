//! Redis going away and coming back, empty, while pushes keep coming: the nodes survive, say
//! they are not ready, refuse pushes with 503 (never a fake success) and new connections, keep
//! their existing connections open, recover by themselves, and every connected client ends up
//! with a complete sequence or an explicit `resync`, never a silent gap.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::helpers::{PROMPTLY, epoch_of, id_of};
use crate::redis::RedisServer;
use crate::support::{
    Client, QUIET, cluster, empty, read_to_end, wait_for_counts, wait_for_ready_status,
};

/// One push of the stream and how it was answered.
#[derive(Debug, Clone)]
struct Attempt {
    seq: u64,
    /// 0: through A, 1: through B.
    node: usize,
    started: Instant,
    finished: Instant,
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

/// Pushes `{"seq": n}` for n = 0, 1, … to `user`, alternately through each of `urls`, one
/// at a time, every `every`, until `stop` is set; records every answer in `log`.
fn spawn_pusher(
    urls: [String; 2],
    user: &'static str,
    every: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
    log: Arc<Mutex<Vec<Attempt>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(8))
            .build()
            .expect("an HTTP client");
        let mut seq = 0_u64;
        while !*stop.borrow() {
            let node = (seq % 2) as usize;
            let started = Instant::now();
            let response = http
                .post(&urls[node])
                .json(&json!({"user_id": user, "data": {"seq": seq}}))
                .send()
                .await
                .unwrap_or_else(|error| {
                    panic!("push {seq} through node {node}: no HTTP answer: {error}")
                });
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|value| value.to_str().unwrap_or("<not text>").to_owned());
            let text = response.text().await.expect("a body");
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            log.lock().unwrap().push(Attempt {
                seq,
                node,
                started,
                finished: Instant::now(),
                status,
                retry_after,
                body,
            });
            seq += 1;
            tokio::time::sleep(every).await;
        }
    })
}

/// Reads `client`'s events until the one whose data is `{"marker": true}` (included), within
/// `within`; the connection must stay open all along.
fn spawn_reader(
    name: &'static str,
    mut client: Client,
    within: Duration,
) -> JoinHandle<(Client, Vec<Value>)> {
    tokio::spawn(async move {
        let deadline = Instant::now() + within;
        let mut events: Vec<Value> = Vec::new();
        loop {
            let Some(event) = client.next_by(deadline).await else {
                panic!(
                    "{name}: the marker did not arrive within {within:?}; got {:?}",
                    events.iter().map(summary).collect::<Vec<_>>()
                );
            };
            let done = event["data"]["marker"] == true;
            events.push(event);
            if done {
                return (client, events);
            }
        }
    })
}

/// An event, briefly, for failure messages.
fn summary(event: &Value) -> String {
    format!(
        "{}:{}:{}",
        event["event_type"].as_str().unwrap_or("?"),
        event["event_id"].as_str().unwrap_or("?"),
        event["data"]
    )
}

/// Waits until `log` holds at least `n` attempts satisfying `which` (bounded by `within`).
async fn wait_for_attempts(
    log: &Mutex<Vec<Attempt>>,
    what: &str,
    n: usize,
    within: Duration,
    which: impl Fn(&Attempt) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let count = log.lock().unwrap().iter().filter(|a| which(a)).count();
        if count >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {count} of {n} {what} within {within:?}: {:?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts the answer to a push that reached Redis, or may have, when no answer came.
fn assert_outcome_unknown(body: &Value, what: &str) {
    assert!(
        body["detail"].as_str().is_some_and(|detail| {
            detail.starts_with("outcome unknown") && detail.contains("retry with the same event_id")
        }),
        "{what}: {body}"
    );
}

/// Asserts the refusal of a push while Redis is away.
fn assert_unavailable(status: u16, retry_after: Option<&str>, body: &Value, what: &str) {
    assert_eq!(status, 503, "{what}: {body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|detail| detail.starts_with("message broker unavailable")),
        "{what}: {body}"
    );
    assert!(
        retry_after.is_some_and(|value| value.parse::<u64>().is_ok()),
        "{what}: Retry-After {retry_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_and_restarted_during_pushes_leaves_no_silent_gap() {
    const USER: &str = "steady";
    let Some(mut redis) = RedisServer::start("redis_outage").await else {
        return;
    };
    let mut cluster = cluster(&redis.url(), "redis_outage", 2, &["--redis-timeout", "1"]).await;
    // This Redis dies with the test: nothing to clean up (and nothing to wait for).
    cluster.keep_keys();
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    for node in [a, b] {
        let body = wait_for_ready_status(node, 200, PROMPTLY).await;
        assert_eq!(body, json!({"status": "ready"}));
    }
    let ws_on_b = Client::ws(b, USER).await;
    let sse_on_a = Client::sse(a, USER).await;
    wait_for_counts(&[a, b], empty(2).with_connections(2, 1, 1, 1)).await;

    let readers = [
        spawn_reader("WebSocket on B", ws_on_b, Duration::from_secs(45)),
        spawn_reader("SSE on A", sse_on_a, Duration::from_secs(45)),
    ];
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let log = Arc::new(Mutex::new(Vec::new()));
    let pusher = spawn_pusher(
        [a.url("/sse/push"), b.url("/sse/push")],
        USER,
        Duration::from_millis(25),
        stopped,
        Arc::clone(&log),
    );

    // Before: pushes succeed.
    wait_for_attempts(&log, "successful pushes", 10, PROMPTLY, |attempt| {
        attempt.status == 200
    })
    .await;

    // Redis dies (SIGKILL).
    redis.kill();
    let killed = Instant::now();
    for node in [a, b] {
        let body = wait_for_ready_status(node, 503, PROMPTLY).await;
        assert_eq!(body["status"], "unavailable", "{body}");
        assert!(
            body["reason"]
                .as_str()
                .is_some_and(|reason| reason.starts_with("redis unavailable")),
            "{body}"
        );
    }
    let detected = killed.elapsed();

    // While it is away: alive, refusing what needs Redis, keeping what is open.
    for node in [a, b] {
        let body = node.health().await;
        assert_eq!(body["broker"], "redis", "{body}");
        let (status, metrics) = node.get_json("/metrics").await;
        assert_eq!(status, 200, "{metrics}");
        assert_eq!(metrics["broker"]["connected"], false, "{metrics}");
    }
    let reply = a
        .post_with(
            "/sse/push",
            &json!({"user_id": USER, "data": {"seq": -1}}),
            &[],
        )
        .await;
    assert_unavailable(
        reply.status,
        reply.header("retry-after"),
        &reply.json(),
        "a push while Redis is down",
    );
    let reply = b
        .post_with(
            "/sse/push/batch",
            &json!([{"user_id": USER, "data": {"seq": -2}}]),
            &[],
        )
        .await;
    assert_unavailable(
        reply.status,
        reply.header("retry-after"),
        &reply.json(),
        "a batch while Redis is down",
    );
    let refusal = a.refused("user_id=newcomer", &[]).await;
    assert_eq!(refusal.status, 503, "{refusal:?}");
    let response = b.sse_stream("user_id=newcomer", &[]).await;
    assert_eq!(
        response.status(),
        200,
        "an EventSource is told to come back"
    );
    let text = read_to_end(response).await;
    assert!(text.starts_with("retry: "), "{text:?}");
    assert!(text.lines().any(|line| line.starts_with(": ")), "{text:?}");
    assert!(
        !text.lines().any(|line| line.starts_with("data:")),
        "{text:?}"
    );

    // Keep it away a while, with pushes coming (each refused: checked below).
    tokio::time::sleep_until(killed + Duration::from_secs(1)).await;
    let restarting = Instant::now();
    redis.restart().await;
    let mut recovered = Duration::ZERO;
    for node in [a, b] {
        let body = wait_for_ready_status(node, 200, Duration::from_secs(15)).await;
        assert_eq!(body, json!({"status": "ready"}));
        recovered = restarting.elapsed();
    }
    let ready = Instant::now();
    wait_for_attempts(
        &log,
        "pushes after recovery",
        10,
        Duration::from_secs(10),
        |attempt| attempt.started >= ready,
    )
    .await;
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), pusher)
        .await
        .expect("the pusher stops")
        .expect("the pusher did not panic");
    let log = log.lock().unwrap().clone();

    // The pushes' answers: 200 or 503, never a success while Redis was dead, always a success
    // once both nodes said they were ready again.
    let mut refused = 0;
    for attempt in &log {
        let what = format!("push {} through node {}", attempt.seq, attempt.node);
        match attempt.status {
            200 => assert!(
                !(attempt.started >= killed && attempt.finished <= restarting),
                "{what} succeeded while Redis was dead: {:?}",
                attempt.body
            ),
            503 => {
                assert_unavailable(503, attempt.retry_after.as_deref(), &attempt.body, &what);
                refused += 1;
            }
            // In flight when Redis died: it may or may not have been stored before.
            504 => assert_outcome_unknown(&attempt.body, &what),
            other => panic!("{what} answered {other}: {:?}", attempt.body),
        }
        if attempt.started >= ready {
            assert_eq!(
                attempt.status, 200,
                "{what}, after recovery: {:?}",
                attempt.body
            );
        }
    }
    assert!(
        refused > 0,
        "no push was refused during the outage: {log:?}"
    );
    let accepted: Vec<&Attempt> = log.iter().filter(|a| a.status == 200).collect();
    let old_epoch = epoch_of(&accepted[0].body);
    let split = accepted
        .iter()
        .position(|a| epoch_of(&a.body) != old_epoch)
        .expect("pushes after the restart are in a new epoch (the restarted Redis is empty)");
    let (before, after) = accepted.split_at(split);
    let new_epoch = epoch_of(&after[0].body);
    for (n, attempt) in before.iter().enumerate() {
        assert_eq!(attempt.body["position"], n as u64 + 1, "{:?}", attempt.body);
    }
    let mut previous = 0;
    for attempt in after {
        assert_eq!(epoch_of(&attempt.body), new_epoch, "{:?}", attempt.body);
        let position = attempt.body["position"].as_u64().expect("a position");
        assert!(position > previous, "{:?}", attempt.body);
        previous = position;
    }

    // The nodes registered their connections again in the new Redis. The marker, through A,
    // ends the readers.
    wait_for_counts(&[a, b], empty(2).with_connections(2, 1, 1, 1)).await;
    let marker = a
        .push(json!({"user_id": USER, "data": {"marker": true}}))
        .await;
    assert_eq!(marker["delivered"], 2, "{marker}");

    // Each client: what was accepted before, a resync (the history was lost), what was accepted
    // after, the marker. Or, had nothing been lost, all of it in order.
    let before_ids: Vec<String> = before.iter().map(|a| id_of(&a.body)).collect();
    let after_ids: Vec<String> = after.iter().map(|a| id_of(&a.body)).collect();
    let mut outcomes = Vec::new();
    for reader in readers {
        let (mut client, events) = reader.await.expect("the reader did not panic");
        let (last, events) = events.split_last().expect("the marker");
        assert_eq!(last["event_id"], marker["event_id"]);
        let name = match client {
            Client::Ws(_) => "the WebSocket on B",
            Client::Sse(_) => "the SSE stream on A",
        };
        let seen: Vec<String> = events.iter().map(summary).collect();
        let resyncs: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e["event_type"] == "resync")
            .map(|(i, _)| i)
            .collect();
        let ids = |events: &[Value]| events.iter().map(id_of).collect::<Vec<_>>();
        outcomes.push(format!(
            "{name}: {}",
            resyncs
                .first()
                .map_or("no resync".to_owned(), |&at| summary(&events[at]))
        ));
        match resyncs[..] {
            [] => {
                let all: Vec<String> = before_ids.iter().chain(&after_ids).cloned().collect();
                assert_eq!(
                    ids(events),
                    all,
                    "{name}, no resync: a complete sequence: {seen:?}"
                );
            }
            [at] => {
                let notice = &events[at];
                assert_eq!(
                    ids(&events[..at]),
                    before_ids,
                    "{name}: everything accepted before the outage, before the resync: {seen:?}"
                );
                assert_eq!(
                    ids(&events[at + 1..]),
                    after_ids,
                    "{name}: everything accepted after the recovery, after the resync: {seen:?}"
                );
                assert_eq!(notice["data"]["reason"], "epoch_changed", "{notice}");
                assert_eq!(notice["user_id"], USER, "{notice}");
                assert_eq!(notice["data"]["epoch"], new_epoch.as_str(), "{notice}");
                assert_eq!(
                    notice["event_id"],
                    format!(
                        "{}:{}",
                        new_epoch,
                        notice["data"]["position"].as_u64().unwrap_or(u64::MAX)
                    ),
                    "the notice's id is a position token of the new stream: {notice}"
                );
            }
            _ => panic!("{name}: more than one resync: {seen:?}"),
        }
        client.assert_quiet(QUIET).await;
    }

    // Both nodes lived through it, counted it, and serve as before.
    for node in [a, b] {
        assert!(!node.stopped.is_finished(), "a node stopped");
        let (_, metrics) = node.get_json("/metrics").await;
        let broker = &metrics["broker"];
        assert_eq!(broker["kind"], "redis", "{metrics}");
        assert_eq!(broker["connected"], true, "{metrics}");
        assert!(broker["outages"].as_u64() >= Some(1), "{metrics}");
        assert!(broker["reconnects"].as_u64() >= Some(1), "{metrics}");
        assert!(broker["catch_ups"].as_u64() >= Some(1), "{metrics}");
    }
    eprintln!(
        "redis outage: detected after {detected:?}, recovered {recovered:?} after the restart; \
         {} pushes accepted before, {refused} refused, {} accepted after; {outcomes:?}",
        before.len(),
        after.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_redis_is_noticed_at_once_and_a_push_it_swallowed_can_be_retried_safely() {
    const USER: &str = "stalled";
    let Some(redis) = RedisServer::start("redis_stall").await else {
        return;
    };
    let mut cluster = cluster(&redis.url(), "redis_stall", 1, &["--redis-timeout", "2"]).await;
    cluster.keep_keys();
    let node = &cluster.nodes[0];
    wait_for_ready_status(node, 200, PROMPTLY).await;
    let mut client = Client::ws(node, USER).await;
    wait_for_counts(&[node], empty(1).with_connections(1, 1, 0, 1)).await;

    // Redis stops answering; a push is sent at once, before anyone can know.
    redis.pause();
    let paused = Instant::now();
    let first = {
        let (http, url) = (node.http.clone(), node.url("/sse/push"));
        tokio::spawn(async move {
            let response = http
                .post(url)
                .json(&json!({"user_id": USER, "event_id": "swallowed", "data": {"n": 1}}))
                .send()
                .await
                .expect("an HTTP answer");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("a JSON body"))
        })
    };
    // The node says so within about a second, with no traffic of its own needed to notice.
    let body = wait_for_ready_status(node, 503, Duration::from_secs(3)).await;
    let noticed = paused.elapsed();
    assert!(
        noticed < Duration::from_millis(1500),
        "noticed after {noticed:?}: {body}"
    );
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("does not answer")),
        "{body}"
    );
    // New work is refused at once (nothing sent: a plain 503), not left hanging.
    let asked = Instant::now();
    let reply = node
        .post_with(
            "/sse/push",
            &json!({"user_id": USER, "data": {"n": 2}}),
            &[],
        )
        .await;
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "{:?}",
        asked.elapsed()
    );
    assert_unavailable(
        reply.status,
        reply.header("retry-after"),
        &reply.json(),
        "a push while stalled",
    );
    let refusal = node.refused("user_id=newcomer", &[]).await;
    assert_eq!(refusal.status, 503, "{refusal:?}");

    // The push sent before: no answer within REDIS_TIMEOUT, so its outcome is unknown.
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("answered within REDIS_TIMEOUT and a margin")
        .expect("the pushing task");
    assert_eq!(status, 504, "{body}");
    assert_outcome_unknown(&body, "the push in flight when Redis stalled");

    // Redis goes on; the node is back promptly.
    tokio::time::sleep_until(paused + Duration::from_secs(3)).await;
    redis.resume();
    let resumed = Instant::now();
    wait_for_ready_status(node, 200, PROMPTLY).await;
    let back = resumed.elapsed();
    assert!(back < Duration::from_secs(1), "ready again after {back:?}");

    // Retried with the same event_id, the push is recognised if Redis had taken it; either way
    // the client gets it exactly once.
    let retry = node
        .push(json!({"user_id": USER, "event_id": "swallowed", "data": {"n": 1}}))
        .await;
    assert_eq!(retry["status"], "success", "{retry}");
    let event = client.next().await;
    assert_eq!(event["event_id"], "swallowed", "{event}");
    client.assert_quiet(QUIET).await;
    println!(
        "stall noticed after {noticed:?}; ready again {back:?} after Redis resumed; retry {retry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_wait_replicas_a_push_is_answered_once_a_replica_has_it() {
    const USER: &str = "replicated";
    let Some(primary) = RedisServer::start("redis_wait").await else {
        return;
    };
    let flags = ["--redis-timeout", "0.4", "--redis-wait-replicas", "1"];
    let mut cluster = cluster(&primary.url(), "redis_wait", 1, &flags).await;
    cluster.keep_keys();
    let node = &cluster.nodes[0];
    wait_for_ready_status(node, 200, PROMPTLY).await;
    let mut client = Client::ws(node, USER).await;

    // No replica: the push is published (the client gets it) but not confirmed: 504, and a
    // retry with the same event_id is recognised, not delivered again.
    let push = json!({"user_id": USER, "event_id": "unconfirmed", "data": {"n": 1}});
    for attempt in ["first", "retry"] {
        let reply = node.post_with("/sse/push", &push, &[]).await;
        assert_eq!(reply.status, 504, "{attempt}: {}", reply.json());
        assert_outcome_unknown(&reply.json(), attempt);
        assert!(
            reply.json()["detail"]
                .as_str()
                .is_some_and(|detail| detail.contains("REDIS_WAIT_REPLICAS")),
            "{}",
            reply.json()
        );
    }
    assert_eq!(client.next().await["data"]["n"], 1);
    client.assert_quiet(QUIET).await;

    // With a replica in sync, pushes are answered as usual.
    let replicaof = ["--replicaof", "127.0.0.1", &primary.port.to_string()].map(str::to_owned);
    let Some(replica) = RedisServer::start_with("redis_wait", replicaof.to_vec()).await else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = node
            .post_with(
                "/sse/push",
                &json!({"user_id": USER, "data": {"n": 2}}),
                &[],
            )
            .await;
        if reply.status == 200 {
            assert_eq!(reply.json()["delivered"], 1, "{}", reply.json());
            break;
        }
        assert_eq!(reply.status, 504, "{}", reply.json());
        assert!(
            Instant::now() < deadline,
            "never confirmed: {}",
            reply.json()
        );
        assert_eq!(client.next().await["data"]["n"], 2);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(replica);
}
