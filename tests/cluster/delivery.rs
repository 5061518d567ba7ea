//! Delivery across nodes: a push through any node reaches the user's connections on every node,
//! in one order shared by all of them, and an upstream `event_id` is delivered once whichever
//! nodes it is pushed (or retried) through.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::helpers::{epoch_of, id_of, position_of};
use crate::support::{Client, QUIET, datas, empty, seqs, shared_cluster, take, wait_for_counts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_through_any_node_reaches_the_users_connections_on_the_other_nodes() {
    const USER: &str = "fan";
    let Some(cluster) = shared_cluster("fan_out", 3, &[]).await else {
        return;
    };
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let mut on_b = Client::ws(b, USER).await;
    let mut on_c = Client::sse(c, USER).await;
    let mut bystander = Client::ws(a, "bystander").await;

    // Registered before the handshake completes, cluster-wide: a push through another node
    // right away reaches both connections.
    let first = a.push(json!({"user_id": USER, "data": {"seq": 0}})).await;
    assert_eq!(first["stored"], true, "{first}");
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(first["position"], 1, "{first}");
    let epoch = epoch_of(&first);
    for client in [&mut on_b, &mut on_c] {
        let event = client.next().await;
        assert_eq!(event["event_type"], "message", "{event}");
        assert_eq!(event["event_id"], first["event_id"], "{event}");
        assert_eq!(event["user_id"], USER, "{event}");
        assert_eq!(event["data"], json!({"seq": 0}), "{event}");
    }

    wait_for_counts(&[a, b, c], empty(3).with_connections(3, 2, 1, 2)).await;

    // Through each node in turn: the user's two connections, on B and C, both count.
    let mut accepted = Vec::new();
    for (seq, node) in [(1_u64, a), (2, b), (3, c)] {
        let response = node
            .push(json!({"user_id": USER, "data": {"seq": seq}}))
            .await;
        assert_eq!(response["status"], "success", "{response}");
        assert_eq!(response["delivered"], 2, "{response}");
        assert_eq!(response["stored"], true, "{response}");
        assert_eq!(response["duplicate"], false, "{response}");
        assert_eq!(response["epoch"], epoch.as_str(), "one stream: {response}");
        assert_eq!(response["position"], seq + 1, "{response}");
        accepted.push(response);
    }
    // And in a batch, with an item for a user connected nowhere.
    let results = c
        .push_batch(json!([
            {"user_id": USER, "data": {"seq": 4}},
            {"user_id": "nobody-home", "data": {"seq": -1}},
            {"user_id": USER, "data": {"seq": 5}},
        ]))
        .await;
    assert_eq!(results.len(), 3, "{results:?}");
    for (item, connected) in [(0, true), (1, false), (2, true)] {
        let result = &results[item];
        assert_eq!(result["success"], connected, "item {item}: {result}");
        assert_eq!(
            result["delivered"],
            if connected { 2 } else { 0 },
            "item {item}: {result}"
        );
        assert_eq!(result["stored"], true, "item {item}: {result}");
        assert_eq!(result["duplicate"], false, "item {item}: {result}");
    }
    assert_eq!(results[0]["user_id"], USER, "{results:?}");
    assert_eq!(results[1]["user_id"], "nobody-home", "{results:?}");
    accepted.push(results[0].clone());
    accepted.push(results[2].clone());

    for client in [&mut on_b, &mut on_c] {
        let events = take(client, accepted.len()).await;
        let ids: Vec<String> = events.iter().map(id_of).collect();
        let expected: Vec<String> = accepted.iter().map(id_of).collect();
        assert_eq!(ids, expected, "{:?}", datas(&events));
        assert_eq!(
            datas(&events),
            (1..=5).map(|seq| json!({"seq": seq})).collect::<Vec<_>>()
        );
        client.assert_quiet(QUIET).await;
    }
    // Nothing for one user reaches another.
    bystander.assert_quiet(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_through_three_nodes_reach_every_connection_in_one_order() {
    const USER: &str = "ordered";
    const PUBLISHERS: u64 = 3;
    const PER_PUBLISHER: u64 = 100;
    const TOTAL: usize = (PUBLISHERS * PER_PUBLISHER) as usize;
    let Some(cluster) = shared_cluster("ordering", 3, &[]).await else {
        return;
    };
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let on_a = Client::ws(a, USER).await;
    let on_b = Client::sse(b, USER).await;
    wait_for_counts(&[a, b, c], empty(3).with_connections(2, 1, 1, 1)).await;

    // Both clients read as events arrive.
    let readers: Vec<_> = [on_a, on_b]
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let events = take(&mut client, TOTAL).await;
                (client, events)
            })
        })
        .collect();
    // One publisher per node, each pushing its events one after the other, all at once.
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|publisher| {
            let node = &cluster.nodes[publisher as usize];
            let (http, url) = (node.http.clone(), node.url("/sse/push"));
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for k in 0..PER_PUBLISHER {
                    let body = json!({"user_id": USER, "data": {"p": publisher, "k": k}});
                    let response = http.post(&url).json(&body).send().await.expect("push");
                    let status = response.status().as_u16();
                    let response: Value = response.json().await.expect("JSON body");
                    assert_eq!(status, 200, "publisher {publisher}, push {k}: {response}");
                    acks.push(response);
                }
                acks
            })
        })
        .collect();
    let mut acks: Vec<(u64, u64, u64, String)> = Vec::new();
    let mut epochs = HashSet::new();
    for (publisher, task) in publishers.into_iter().enumerate() {
        let responses = task.await.expect("publisher task");
        let mut previous = 0;
        for (k, response) in responses.into_iter().enumerate() {
            assert_eq!(response["status"], "success", "{response}");
            assert_eq!(response["delivered"], 2, "{response}");
            assert_eq!(response["duplicate"], false, "{response}");
            let position = position_of(&response);
            assert!(
                position > previous,
                "publisher {publisher}: push {k} got position {position} after {previous}"
            );
            previous = position;
            epochs.insert(epoch_of(&response));
            acks.push((position, publisher as u64, k as u64, id_of(&response)));
        }
    }
    assert_eq!(epochs.len(), 1, "one stream, one epoch: {epochs:?}");
    acks.sort();
    let positions: Vec<u64> = acks.iter().map(|ack| ack.0).collect();
    assert_eq!(
        positions,
        (1..=TOTAL as u64).collect::<Vec<_>>(),
        "every push has its own position, shared by all nodes"
    );
    // The order of positions is the stream's order: every connection sees exactly it.
    let expected: Vec<(u64, u64, String)> = acks
        .into_iter()
        .map(|(_, publisher, k, id)| (publisher, k, id))
        .collect();
    for (name, reader) in ["WebSocket on A", "SSE on B"].into_iter().zip(readers) {
        let (mut client, events) = reader.await.expect("reader task");
        let received: Vec<(u64, u64, String)> = events
            .iter()
            .map(|event| {
                assert_eq!(event["event_type"], "message", "{name}: {event}");
                (
                    event["data"]["p"].as_u64().expect("p"),
                    event["data"]["k"].as_u64().expect("k"),
                    id_of(event),
                )
            })
            .collect();
        if received != expected {
            let at = received
                .iter()
                .zip(&expected)
                .position(|(got, want)| got != want);
            panic!(
                "{name}: the received order differs from the order of positions at index \
                 {at:?}: got {:?}, expected {:?}",
                at.map(|i| &received[i]),
                at.map(|i| &expected[i])
            );
        }
        client.assert_quiet(QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_pushed_through_several_nodes_is_delivered_once() {
    const USER: &str = "idem";
    let Some(cluster) = shared_cluster("duplicates", 3, &[]).await else {
        return;
    };
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let mut clients = [Client::ws(c, USER).await, Client::sse(b, USER).await];
    wait_for_counts(&[a, b, c], empty(3).with_connections(2, 1, 1, 1)).await;

    // A retry through another node (even with another payload) is the same event.
    let first = a
        .push(json!({"user_id": USER, "event_id": "order-1", "data": {"v": 1}}))
        .await;
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(first["delivered"], 2, "{first}");
    assert_eq!(first["event_id"], "order-1", "{first}");
    for (node, v) in [(b, 1), (c, 2)] {
        let retry = node
            .push(json!({"user_id": USER, "event_id": "order-1", "data": {"v": v}}))
            .await;
        assert_eq!(retry["duplicate"], true, "{retry}");
        assert_eq!(retry["event_id"], "order-1", "{retry}");
        assert_eq!(retry["stored"], true, "{retry}");
        assert_eq!(retry["epoch"], first["epoch"], "{retry}");
        assert_eq!(retry["position"], first["position"], "{retry}");
        assert_eq!(
            retry["status"], "success",
            "the original's outcome: {retry}"
        );
        assert_eq!(
            retry["delivered"], first["delivered"],
            "the original's outcome: {retry}"
        );
    }

    // Within a batch, and between batches and single pushes through different nodes.
    let results = a
        .push_batch(json!([
            {"user_id": USER, "event_id": "x", "data": {"v": 2}},
            {"user_id": USER, "event_id": "y", "data": {"v": 3}},
            {"user_id": USER, "event_id": "x", "data": {"v": -1}},
        ]))
        .await;
    let flags: Vec<Value> = results.iter().map(|r| r["duplicate"].clone()).collect();
    assert_eq!(flags, [false, false, true], "{results:?}");
    assert_eq!(results[2]["event_id"], "x", "{results:?}");
    assert_eq!(results[2]["success"], true, "the original's: {results:?}");
    assert_eq!(results[2]["delivered"], 2, "the original's: {results:?}");
    let results = b
        .push_batch(json!([
            {"user_id": USER, "event_id": "y", "data": {"v": -1}},
            {"user_id": USER, "event_id": "z", "data": {"v": 4}},
        ]))
        .await;
    let flags: Vec<Value> = results.iter().map(|r| r["duplicate"].clone()).collect();
    assert_eq!(flags, [true, false], "{results:?}");
    let single = c
        .push(json!({"user_id": USER, "event_id": "z", "data": {"v": -1}}))
        .await;
    assert_eq!(single["duplicate"], true, "{single}");

    // The same new id through all three nodes at once: exactly one of them is the original.
    let body = json!({"user_id": USER, "event_id": "race", "data": {"v": 5}});
    let (via_a, via_b, via_c) = tokio::join!(
        a.push(body.clone()),
        b.push(body.clone()),
        c.push(body.clone())
    );
    let raced = [via_a, via_b, via_c];
    let originals = raced.iter().filter(|r| r["duplicate"] == false).count();
    assert_eq!(originals, 1, "{raced:?}");
    assert!(
        raced.iter().all(|r| r["position"] == raced[0]["position"]),
        "one event, one position: {raced:?}"
    );

    // Each client got each event once, in order.
    let expected: Vec<Value> = (1..=5).map(|v| json!({"v": v})).collect();
    let ids = ["order-1", "x", "y", "z", "race"];
    for client in &mut clients {
        let events = take(client, expected.len()).await;
        assert_eq!(datas(&events), expected);
        let got: Vec<String> = events.iter().map(id_of).collect();
        assert_eq!(got, ids);
        client.assert_quiet(QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_arrives_whole_and_in_order_even_after_redis_forgot_the_scripts() {
    const USER: &str = "bulk";
    const ITEMS: u64 = 250;
    let Some(cluster) = shared_cluster("large_batch", 2, &[]).await else {
        return;
    };
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let mut client = Client::ws(b, USER).await;
    // A flushed script cache (an operator's SCRIPT FLUSH) is reloaded, not a failed push.
    let mut admin = redis::Client::open(cluster.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    let batch: Vec<Value> = (1..=ITEMS)
        .map(|n| json!({"user_id": USER, "data": {"seq": n}}))
        .collect();
    let results = a.push_batch(json!(batch)).await;
    assert_eq!(results.len(), ITEMS as usize);
    assert!(
        results
            .iter()
            .all(|r| r["success"] == true && r["delivered"] == 1),
        "{results:?}"
    );
    let events = take(&mut client, ITEMS as usize).await;
    assert_eq!(datas(&events), seqs(1..=ITEMS));
    let ids: Vec<String> = results.iter().map(id_of).collect();
    assert_eq!(events.iter().map(id_of).collect::<Vec<_>>(), ids);
    client.assert_quiet(QUIET).await;
}
