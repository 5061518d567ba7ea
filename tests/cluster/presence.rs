//! Cluster-wide presence: every node counts the connections of the whole cluster, the per-user
//! limit applies across nodes, and a node that dies without a goodbye (SIGKILL) disappears from
//! the counts once its lease runs out.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::helpers::{PROMPTLY, TestApp, close_of, start_process};
use crate::support::{
    Client, Counts, LEASE, PRESENCE_DEADLINE, QUIET, empty, node_id, shared_cluster,
    wait_for_counts,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_counts_the_connections_of_the_whole_cluster() {
    let Some(cluster) = shared_cluster("presence_counts", 3, &[]).await else {
        return;
    };
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let all = [a, b, c];

    let bodies = wait_for_counts(&all, empty(3)).await;
    for (body, name) in bodies.iter().zip(["a", "b", "c"]) {
        assert_eq!(body["broker"], "redis", "{body}");
        assert_eq!(body["cluster"]["node_id"], node_id(name), "{body}");
    }

    // Two WebSockets on A and an SSE stream on B for one user; a WebSocket on C for another.
    let first_on_a = Client::ws(a, "counted-1").await;
    let mut second_on_a = Client::ws(a, "counted-1").await;
    let mut sse_on_b = Client::sse(b, "counted-1").await;
    let on_c = Client::ws(c, "counted-2").await;
    let bodies = wait_for_counts(&all, empty(3).with_connections(4, 3, 1, 2)).await;
    // Each node's own counts stay its own.
    let local: Vec<(Value, Value, Value, Value)> = bodies
        .iter()
        .map(|body| {
            (
                body["connections"].clone(),
                body["websocket_connections"].clone(),
                body["sse_connections"].clone(),
                body["users"].clone(),
            )
        })
        .collect();
    assert_eq!(
        local,
        [
            (json!(2), json!(2), json!(0), json!(1)),
            (json!(1), json!(0), json!(1), json!(1)),
            (json!(1), json!(1), json!(0), json!(1)),
        ],
        "{bodies:?}"
    );
    for node in all {
        let (status, metrics) = node.get_json("/metrics").await;
        assert_eq!(status, 200, "{metrics}");
        assert_eq!(metrics["broker"]["kind"], "redis", "{metrics}");
        assert_eq!(metrics["broker"]["connected"], true, "{metrics}");
        assert_eq!(metrics["cluster"]["nodes"], 3, "{metrics}");
        // The same in Prometheus's format, which dashboards read.
        let text = node
            .http
            .get(node.url("/metrics/prometheus"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in [
            "websocket_sse_broker_connected{broker=\"redis\"} 1",
            "websocket_sse_cluster_nodes 3",
            "websocket_sse_cluster_users 2",
            "websocket_sse_cluster_connections{transport=\"websocket\"} 3",
            "websocket_sse_cluster_connections{transport=\"sse\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
        }
    }
    // A push counts the user's connections on every node.
    let response = c
        .push(json!({"user_id": "counted-1", "data": {"n": 1}}))
        .await;
    assert_eq!(response["delivered"], 3, "{response}");

    // Connections leaving are counted out everywhere.
    on_c.close().await;
    first_on_a.close().await;
    wait_for_counts(&all, empty(3).with_connections(2, 1, 1, 1)).await;
    assert_eq!(second_on_a.next().await["data"], json!({"n": 1}));
    assert_eq!(sse_on_b.next().await["data"], json!({"n": 1}));

    // A node joining is counted; one shutting down gracefully is counted out.
    let d = cluster.start_node("d", &[]).await;
    let with_d = empty(4).with_connections(2, 1, 1, 1);
    wait_for_counts(&[a, b, c, &d], with_d).await;
    d.lifecycle.begin_shutdown();
    tokio::time::timeout(PROMPTLY, d.stopped)
        .await
        .expect("node d stops")
        .expect("node d's task")
        .expect("node d stops cleanly");
    wait_for_counts(&all, Counts { nodes: 3, ..with_d }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_is_cluster_wide_and_rejects_the_extra_connection() {
    const USER: &str = "limited";
    let Some(cluster) =
        shared_cluster("limit_reject", 3, &["--max-connections-per-user", "2"]).await
    else {
        return;
    };
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let all = [a, b, c];
    let two = empty(3).with_connections(2, 2, 0, 1);

    let mut on_a = Client::ws(a, USER).await;
    let mut on_b = Client::ws(b, USER).await;
    wait_for_counts(&all, two).await;

    // The third, on a third node: upgraded, then closed with 1008.
    let mut third = Client::ws(c, USER).await;
    let (code, reason) = close_of(third.ws_mut()).await.expect("a close frame");
    assert_eq!(code, 1008, "{reason}");
    assert!(
        reason.contains("MAX_CONNECTIONS_PER_USER") && reason.contains('2'),
        "{reason}"
    );
    // The first two are untouched.
    wait_for_counts(&all, two).await;
    let response = c.push(json!({"user_id": USER, "data": {"ok": 1}})).await;
    assert_eq!(response["delivered"], 2, "{response}");
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(client.next().await["data"], json!({"ok": 1}));
        client.assert_quiet(QUIET).await;
    }
    let (_, metrics) = c.get_json("/metrics").await;
    assert_eq!(
        metrics["connections_refused_total"]["user_limit"], 1,
        "{metrics}"
    );

    // Another user is not affected, on the same node.
    let mut other = Client::ws(c, "unlimited").await;
    let response = a
        .push(json!({"user_id": "unlimited", "data": {"ok": 2}}))
        .await;
    assert_eq!(other.next().await["data"], json!({"ok": 2}), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_oldest_closes_the_users_oldest_connection_on_whatever_node() {
    const USER: &str = "replaced";
    let Some(cluster) = shared_cluster(
        "limit_replace",
        3,
        &[
            "--max-connections-per-user",
            "2",
            "--user-limit-policy",
            "replace-oldest",
        ],
    )
    .await
    else {
        return;
    };
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let all = [a, b, c];

    let mut oldest = Client::ws(a, USER).await;
    wait_for_counts(&all, empty(3).with_connections(1, 1, 0, 1)).await;
    let mut middle = Client::ws(b, USER).await;
    wait_for_counts(&all, empty(3).with_connections(2, 2, 0, 1)).await;

    // The newest, on C, is kept; the oldest, on A, is closed.
    let mut newest = Client::ws(c, USER).await;
    assert_eq!(
        close_of(oldest.ws_mut()).await,
        Some((1008, "replaced by a newer connection".to_owned()))
    );
    wait_for_counts(&all, empty(3).with_connections(2, 2, 0, 1)).await;
    let response = a
        .push(json!({"user_id": USER, "data": {"to": "the two newest"}}))
        .await;
    assert_eq!(response["delivered"], 2, "{response}");
    for client in [&mut middle, &mut newest] {
        assert_eq!(client.next().await["data"], json!({"to": "the two newest"}));
        client.assert_quiet(QUIET).await;
    }
    a.wait_for_metrics("the replaced connection to be counted", |metrics| {
        metrics["connections_closed_total"]["replaced"] == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_leaves_no_ghost_presence_after_its_lease() {
    let Some(cluster) = shared_cluster("sigkill", 1, &[]).await else {
        return;
    };
    let survivor = &cluster.nodes[0];
    let workdir = tempfile::tempdir().expect("temporary directory");
    let command = cluster.process_command(workdir.path(), "node-victim");
    let mut victim = start_process(command).await;
    let at = TestApp::at(victim.addr);

    // Its clients are counted by the survivor, and reached through it.
    let mut ws = Client::ws(&at, "ghost-1").await;
    let mut sse = Client::sse(&at, "ghost-1").await;
    let _other = Client::ws(&at, "ghost-2").await;
    wait_for_counts(&[survivor], empty(2).with_connections(3, 2, 1, 2)).await;
    let response = survivor
        .push(json!({"user_id": "ghost-1", "data": {"n": 1}}))
        .await;
    assert_eq!(response["delivered"], 2, "{response}");
    for client in [&mut ws, &mut sse] {
        assert_eq!(client.next().await["data"], json!({"n": 1}));
    }

    // kill -9: no goodbye. Within the lease (and a heartbeat or two), it is gone everywhere.
    victim.child.start_kill().expect("SIGKILL");
    tokio::time::timeout(PROMPTLY, victim.child.wait())
        .await
        .expect("the process dies")
        .expect("wait");
    let killed = Instant::now();
    let body = wait_for_counts(&[survivor], empty(1)).await;
    let took = killed.elapsed();
    let bound = Duration::from_secs_f64(LEASE * 4.0 / 3.0) + Duration::from_millis(1500);
    assert!(
        took <= bound,
        "the dead node's presence took {took:?} to go (bound {bound:?}, deadline \
         {PRESENCE_DEADLINE:?}): {body:?}"
    );
    let response = survivor
        .push(json!({"user_id": "ghost-1", "data": {"n": 2}}))
        .await;
    assert_eq!(response["delivered"], 0, "{response}");
    assert_eq!(response["stored"], true, "{response}");
    assert_ne!(response["status"], "success", "{response}");
    assert_eq!(survivor.health().await["connections"], 0);
    drop(victim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaped_while_alive_registers_its_connections_again() {
    let Some(cluster) = shared_cluster("reaped_alive", 2, &[]).await else {
        return;
    };
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let _client = Client::ws(a, "paused").await;
    wait_for_counts(&[a, b], empty(2).with_connections(1, 1, 0, 1)).await;

    // As if node A had been paused past its lease and another node had reaped it: its lease,
    // its membership and its connections' presence are gone (done here at once, atomically).
    let mut admin = ::redis::Client::open(cluster.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = |name: &str| format!("{}{name}", cluster.prefix);
    let a_id = node_id("a");
    let () = ::redis::pipe()
        .atomic()
        .del(key(&format!("n:{a_id}")))
        .del(key(&format!("nu:{a_id}")))
        .del(key("p:paused"))
        .srem(key("nodes"), &a_id)
        .srem(key("online"), "paused")
        .query_async(&mut admin)
        .await
        .unwrap();

    // A notices at its next heartbeat and registers again: the user is reachable cluster-wide.
    wait_for_counts(&[a, b], empty(2).with_connections(1, 1, 0, 1)).await;
    let deadline = Instant::now() + PRESENCE_DEADLINE;
    loop {
        let (_, report) = b.get_json("/admin/users/paused").await;
        let response = b.push(json!({"user_id": "paused", "data": {}})).await;
        if report["connection_count"] == 1 && response["delivered"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never registered again: {report} {response}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
