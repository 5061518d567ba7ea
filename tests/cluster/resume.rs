//! Resume across nodes: the history lives in Redis, so a client that left one node and comes
//! back on another (from an event id or a `<epoch>:<position>` token) gets exactly what it
//! missed, in order, then live events, even while pushes keep arriving.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{epoch_of, id_of, position_of};
use crate::support::{Client, QUIET, datas, empty, seqs, shared_cluster, take, wait_for_counts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node_with_exactly_what_it_missed_then_live_events() {
    const USER: &str = "wanderer";
    let Some(cluster) = shared_cluster("resume_elsewhere", 3, &[]).await else {
        return;
    };
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let all = [a, b, c];
    let no_one = empty(3);

    // Seen on A (pushed through B), then the client leaves A.
    let mut on_a = Client::ws(a, USER).await;
    let mut pushed = Vec::new();
    for seq in 0..3 {
        pushed.push(b.push(json!({"user_id": USER, "data": {"seq": seq}})).await);
    }
    let epoch = epoch_of(&pushed[0]);
    let seen = take(&mut on_a, 3).await;
    assert_eq!(datas(&seen), seqs(0..3));
    let last_seen = id_of(&seen[2]);
    on_a.close().await;
    wait_for_counts(&all, no_one).await;

    // Missed while offline (pushed through C): stored, delivered nowhere.
    for seq in 3..8 {
        let response = c.push(json!({"user_id": USER, "data": {"seq": seq}})).await;
        assert_eq!(response["status"], "partial", "{response}");
        assert_eq!(response["delivered"], 0, "{response}");
        assert_eq!(response["stored"], true, "{response}");
        assert_eq!(response["epoch"], epoch.as_str(), "{response}");
        assert_eq!(response["position"], seq + 1, "{response}");
        pushed.push(response);
    }

    // Back on B, from the last event id: the five missed events, then live ones.
    let mut on_b = Client::ws_resume(b, USER, &last_seen).await;
    let replayed = take(&mut on_b, 5).await;
    assert_eq!(datas(&replayed), seqs(3..8));
    let ids: Vec<String> = replayed.iter().map(id_of).collect();
    let expected: Vec<String> = pushed[3..8].iter().map(id_of).collect();
    assert_eq!(ids, expected);
    assert!(replayed.iter().all(|e| e["event_type"] == "message"));
    wait_for_counts(&all, empty(3).with_connections(1, 1, 0, 1)).await;
    let live = a.push(json!({"user_id": USER, "data": {"seq": 8}})).await;
    assert_eq!(live["delivered"], 1, "{live}");
    assert_eq!(on_b.next().await["event_id"], live["event_id"]);
    on_b.assert_quiet(QUIET).await;
    pushed.push(live);

    // On C, over SSE, from a position token in Last-Event-ID (what an EventSource sends):
    // everything after position 5 (seq 4).
    let token = format!("{epoch}:5");
    let mut on_c =
        Client::sse_query(c, &format!("user_id={USER}"), &[("Last-Event-ID", &token)]).await;
    assert_eq!(datas(&take(&mut on_c, 4).await), seqs(5..9));
    on_c.assert_quiet(QUIET).await;

    // On A again, from the start of the stream: all of it.
    let mut again_on_a = Client::ws_resume(a, USER, &format!("{epoch}:0")).await;
    let everything = take(&mut again_on_a, 9).await;
    assert_eq!(datas(&everything), seqs(0..9));
    let ids: Vec<String> = everything.iter().map(id_of).collect();
    let expected: Vec<String> = pushed.iter().map(id_of).collect();
    assert_eq!(ids, expected);
    again_on_a.assert_quiet(QUIET).await;

    // A live push reaches each resumed client once.
    wait_for_counts(&all, empty(3).with_connections(3, 2, 1, 1)).await;
    let live = c.push(json!({"user_id": USER, "data": {"seq": 9}})).await;
    assert_eq!(live["delivered"], 3, "{live}");
    for client in [&mut on_b, &mut on_c, &mut again_on_a] {
        assert_eq!(client.next().await["data"], json!({"seq": 9}));
        client.assert_quiet(QUIET).await;
    }

    // A resume point no node knows: a resync notice first, naming the stream's head.
    let mut lost = Client::ws_resume(c, USER, "no-such-id").await;
    let notice = lost.next().await;
    assert_eq!(notice["event_type"], "resync", "{notice}");
    assert_eq!(notice["user_id"], USER, "{notice}");
    assert_eq!(notice["event_id"], format!("{epoch}:10"), "{notice}");
    assert_eq!(
        notice["data"],
        json!({"reason": "unknown_event_id", "last_event_id": "no-such-id", "epoch": epoch, "position": 10}),
        "{notice}"
    );
    let live = b.push(json!({"user_id": USER, "data": {"seq": 10}})).await;
    assert_eq!(lost.next().await["event_id"], live["event_id"]);
    lost.assert_quiet(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hopping_between_nodes_while_pushes_race_loses_nothing_and_repeats_nothing() {
    const USER: &str = "hopper";
    const TOTAL: u64 = 300;
    /// The client drops its connection after reading this many events in all, and resumes on
    /// the next node.
    const HOP_AFTER: [usize; 3] = [60, 140, 220];
    let Some(cluster) = shared_cluster(
        "resume_race",
        3,
        &["--history-size", "1000", "--ws-send-queue", "4096"],
    )
    .await
    else {
        return;
    };
    let nodes = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];

    let mut client = Client::ws(nodes[1], USER).await;
    // Two publishers, through A and C, share one sequence counter.
    let next_seq = Arc::new(AtomicU64::new(0));
    let publishers: Vec<_> = [0, 2]
        .into_iter()
        .map(|node| {
            let node = &cluster.nodes[node];
            let (http, url) = (node.http.clone(), node.url("/sse/push"));
            let next_seq = Arc::clone(&next_seq);
            tokio::spawn(async move {
                let mut acks = Vec::new();
                loop {
                    let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                    if seq >= TOTAL {
                        return acks;
                    }
                    let body = json!({"user_id": USER, "data": {"seq": seq}});
                    let response = http.post(&url).json(&body).send().await.expect("push");
                    assert_eq!(response.status().as_u16(), 200, "push {seq}");
                    let response: Value = response.json().await.expect("JSON body");
                    assert_eq!(response["stored"], true, "push {seq}: {response}");
                    let position = response["position"].as_u64().expect("a position");
                    acks.push((position, seq, id_of(&response)));
                    // Leave the client time to hop while pushes are still coming.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();

    let mut received: Vec<(u64, String)> = Vec::new();
    for (hop, limit) in HOP_AFTER.into_iter().chain([TOTAL as usize]).enumerate() {
        while received.len() < limit {
            let event = client.next().await;
            assert_eq!(
                event["event_type"],
                "message",
                "hop {hop}, after {} events: {event}",
                received.len()
            );
            let seq = event["data"]["seq"].as_u64().expect("a sequence number");
            received.push((seq, id_of(&event)));
        }
        if limit == TOTAL as usize {
            break;
        }
        let (_, last) = received.last().expect("read something").clone();
        // Leave without reading what is in flight; come back on the next node.
        drop(client);
        let next = nodes[(hop + 2) % 3];
        client = if hop == 1 {
            Client::ws_query(next, &format!("user_id={USER}"), Some(&last)).await
        } else {
            Client::ws_resume(next, USER, &last).await
        };
    }
    client.assert_quiet(QUIET).await;

    let mut acks = Vec::new();
    for publisher in publishers {
        acks.extend(publisher.await.expect("publisher task"));
    }
    acks.sort();
    let positions: Vec<u64> = acks.iter().map(|(position, _, _)| *position).collect();
    assert_eq!(positions, (1..=TOTAL).collect::<Vec<_>>());
    let expected: Vec<(u64, String)> = acks.into_iter().map(|(_, seq, id)| (seq, id)).collect();
    if received != expected {
        let at = received
            .iter()
            .zip(&expected)
            .position(|(got, want)| got != want);
        panic!(
            "the client's sequence differs from the stream's at index {at:?}: got {:?}, \
             expected {:?}",
            at.map(|i| &received[i]),
            at.map(|i| &expected[i])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_in_redis_keeps_its_size_and_age_bounds() {
    const USER: &str = "bounded";
    // Time enough for the pushes and resumes below, which rely on nothing having expired yet.
    const TTL: Duration = Duration::from_millis(500);
    let ttl = TTL.as_secs_f64().to_string();
    let flags = ["--history-size", "3", "--history-ttl", &ttl];
    let Some(cluster) = shared_cluster("history_bounds", 2, &flags).await else {
        return;
    };
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    for n in 1..=5 {
        let body = json!({"user_id": USER, "event_id": format!("e{n}"), "data": {"seq": n}});
        let response = a.push(body).await;
        assert_eq!(response["stored"], true, "{response}");
        assert_eq!(position_of(&response), n);
    }

    // Only the last 3 are kept: resuming after e2 replays e3..e5 on another node...
    let mut client = Client::ws_resume(b, USER, "e2").await;
    assert_eq!(datas(&take(&mut client, 3).await), seqs(3..=5));
    client.close().await;
    // ...after e1, no longer known, is a resync.
    let mut client = Client::ws_resume(b, USER, "e1").await;
    let notice = client.next().await;
    assert_eq!(notice["event_type"], "resync", "{notice}");
    assert_eq!(notice["data"]["reason"], "unknown_event_id", "{notice}");
    client.close().await;
    // From a position token older than the history: expired.
    let epoch = notice["data"]["epoch"]
        .as_str()
        .expect("the resync names the epoch");
    let mut client = Client::ws_resume(a, USER, &format!("{epoch}:1")).await;
    let notice = client.next().await;
    assert_eq!(notice["data"]["reason"], "expired", "{notice}");
    client.close().await;
    // A retry of a trimmed event is a new event; of a kept one, a duplicate.
    let retried = b
        .push(json!({"user_id": USER, "event_id": "e1", "data": {}}))
        .await;
    assert_eq!(retried["duplicate"], false, "{retried}");
    assert_eq!(position_of(&retried), 6);
    let retried = b
        .push(json!({"user_id": USER, "event_id": "e5", "data": {}}))
        .await;
    assert_eq!(retried["duplicate"], true, "{retried}");
    assert_eq!(position_of(&retried), 5);

    // After HISTORY_TTL nothing is replayable, and nothing is a duplicate any more.
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    let mut client = Client::ws_resume(a, USER, &format!("{}:5", epoch_of(&retried))).await;
    let notice = client.next().await;
    assert_eq!(notice["data"]["reason"], "expired", "{notice}");
    client.close().await;
    let late = a
        .push(json!({"user_id": USER, "event_id": "e5", "data": {}}))
        .await;
    assert_eq!(late["duplicate"], false, "{late}");
    assert_eq!(
        position_of(&late),
        7,
        "positions go on: the stream itself is kept"
    );
}
