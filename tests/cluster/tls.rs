//! A cluster over TLS: `rediss://` with the server's CA given in `REDIS_CA_FILE`.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::helpers::{PROMPTLY, next_json, spawn_app};
use crate::redis::{RedisServer, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_each_other_through_redis_over_tls() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let file = |name: &str| fixtures.join(name).display().to_string();
    let tls_port = free_port();
    let args = [
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &file("server.pem"),
        "--tls-key-file",
        &file("server.key"),
        "--tls-ca-cert-file",
        &file("ca.pem"),
        "--tls-auth-clients",
        "no",
    ];
    let Some(_redis) = RedisServer::start_with("tls", args.map(str::to_owned).to_vec()).await
    else {
        return;
    };
    let url = format!("rediss://localhost:{tls_port}");
    let ca = file("ca.pem");
    let flags = |node: &'static str| {
        [
            "--broker",
            "redis",
            "--redis-url",
            url.as_str(),
            "--redis-ca-file",
            ca.as_str(),
            "--node-id",
            node,
        ]
    };
    let a = spawn_app(&flags("tls-a")).await;
    let b = spawn_app(&flags("tls-b")).await;
    for node in [&a, &b] {
        let (status, ready) = node.get_json("/ready").await;
        assert_eq!(status, 200, "connected over TLS: {ready}");
    }
    let mut client = b.connect("tls-user").await;
    let (status, body) = a
        .post_json(
            "/sse/push",
            &json!({"user_id": "tls-user", "data": {"secure": true}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"], 1, "{body}");
    assert_eq!(
        next_json(&mut client).await["data"],
        json!({"secure": true})
    );

    // Without the CA, the server's certificate is not trusted: the node stays unready. (It is
    // built once its first connection failed, or after REDIS_TIMEOUT: until the failure is known,
    // /ready says "not connected yet".)
    let untrusting = spawn_app(&[
        "--broker",
        "redis",
        "--redis-url",
        &url,
        "--redis-timeout",
        "0.2",
    ])
    .await;
    let deadline = Instant::now() + PROMPTLY;
    let (status, ready) = loop {
        let (status, ready) = untrusting.get_json("/ready").await;
        if ready["reason"] != "redis: not connected yet" || Instant::now() > deadline {
            break (status, ready);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["reason"]
            .as_str()
            .unwrap()
            .starts_with("redis unavailable"),
        "{ready}"
    );
}
