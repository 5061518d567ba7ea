//! The administrative API, pushes to several users and broadcasts in a cluster: they see and
//! reach every node's connections.

use serde_json::json;

use crate::helpers::{close_of, next_json};
use crate::support::{empty, shared_cluster, wait_for_counts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_and_broadcasts_span_the_cluster() {
    let Some(cluster) = shared_cluster("admin", 2, &[]).await else {
        return;
    };
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let mut on_a = a.connect("ann").await;
    let mut on_b = b.connect("ann").await;
    let mut bob = b.connect("bob").await;
    wait_for_counts(&[a, b], empty(2).with_connections(3, 3, 0, 2)).await;

    // Any node lists the user's connections on every node.
    let (status, report) = a.get_json("/admin/users/ann").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["connection_count"], 2, "{report}");
    let nodes: Vec<&str> = report["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2);
    assert!(
        nodes.contains(&"node-a") && nodes.contains(&"node-b"),
        "{report}"
    );

    // A multi-user push and a broadcast through A reach the users on B.
    let (status, body) = a
        .post_json(
            "/sse/push",
            &json!({"user_ids": ["ann", "bob"], "data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"], 3, "{body}");
    let body = a.broadcast(json!({"data": {"n": 2}})).await;
    assert_eq!(body["users"], 2, "{body}");
    assert_eq!(body["delivered"], 3, "{body}");
    for ws in [&mut on_a, &mut on_b, &mut bob] {
        assert_eq!(next_json(ws).await["data"], json!({"n": 1}));
        assert_eq!(next_json(ws).await["data"], json!({"n": 2}));
    }

    // Disconnecting through B closes the user's connections on both nodes.
    let body = b.disconnect_user("ann").await;
    assert_eq!(body["disconnected"], 2, "{body}");
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(
            close_of(ws).await,
            Some((4003, "disconnected by an administrator".to_owned()))
        );
    }
    wait_for_counts(&[a, b], empty(2).with_connections(1, 1, 0, 1)).await;
    let (_, report) = b.get_json("/admin/users/ann").await;
    assert_eq!(report["online"], false, "{report}");
}
