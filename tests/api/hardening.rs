//! What a hostile-input review found (issue 14), each with the request that got through before:
//! cross-site pushes, DNS rebinding, the administrative scope of publisher keys, compressed and
//! over-declared bodies. Real server, real HTTP and WebSocket clients.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::helpers::{PROMPTLY, next_json, spawn_app};

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example";
const JSON: (&str, &str) = ("content-type", "application/json");
const PUBLISHER_KEY: &str = "publisher-key-0123456789";
const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

#[tokio::test]
async fn a_foreign_browser_origin_cannot_push_broadcast_or_administer() {
    let app = spawn_app(&["--cors-origins", APP]).await;
    let mut victim = app.connect("victim").await;
    app.wait_for_connections(1).await;
    let push = br#"{"user_id":"victim","data":{"from":"evil"}}"#.to_vec();
    let calls = [
        (Method::POST, "/sse/push", push.clone()),
        (
            Method::POST,
            "/sse/push/batch",
            br#"[{"user_id":"victim","data":{}}]"#.to_vec(),
        ),
        (Method::POST, "/sse/broadcast", br#"{"data":{}}"#.to_vec()),
        (
            Method::DELETE,
            "/admin/users/victim/connections",
            Vec::new(),
        ),
    ];
    for (method, path, body) in calls {
        // With a JSON type and without any (what `no-cors` fetch and sendBeacon send).
        for headers in [&[("origin", EVIL), JSON][..], &[("origin", EVIL)][..]] {
            let reply = app
                .request(method.clone(), path, headers, Some(body.clone()))
                .await;
            assert_eq!(
                reply.status, 403,
                "{method} {path} {headers:?}: {}",
                reply.text
            );
            assert!(reply.text.contains("CORS_ORIGINS"), "{}", reply.text);
        }
    }
    crate::helpers::assert_silent(&mut victim, Duration::from_millis(200)).await;

    // The allowed origin, and servers (no Origin), still push.
    for headers in [&[("origin", APP), JSON][..], &[JSON][..]] {
        let reply = app
            .request(Method::POST, "/sse/push", headers, Some(push.clone()))
            .await;
        assert_eq!(reply.status, 200, "{headers:?}: {}", reply.text);
        assert_eq!(next_json(&mut victim).await["data"]["from"], "evil");
    }
    let metrics = app.metrics().await;
    assert_eq!(
        metrics["push_requests_rejected_total"]["forbidden"], 8,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_push_without_a_json_content_type_is_refused_even_from_servers() {
    let app = spawn_app(&[]).await;
    let body = br#"{"user_id":"u","data":{}}"#.to_vec();
    let reply = app
        .request(Method::POST, "/sse/push", &[], Some(body.clone()))
        .await;
    assert_eq!(reply.status, 415, "{}", reply.text);
    let compressed = app
        .request(
            Method::POST,
            "/sse/push",
            &[JSON, ("content-encoding", "gzip")],
            Some(body),
        )
        .await;
    assert_eq!(compressed.status, 415, "{}", compressed.text);
    assert!(
        compressed.text.contains("Content-Encoding gzip"),
        "{}",
        compressed.text
    );
}

#[tokio::test]
async fn a_body_declared_over_the_limit_gets_413_at_once() {
    let app = spawn_app(&["--max-body-bytes", "1024"]).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    // The head declares 10 MB; the body never comes.
    stream
        .write_all(
            b"POST /sse/push HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Content-Length: 10000000\r\n\r\n{",
        )
        .await
        .expect("write head");
    let mut response = vec![0; 512];
    let read = timeout(PROMPTLY, stream.read(&mut response))
        .await
        .expect("answered without waiting for the body")
        .expect("read");
    let text = String::from_utf8_lossy(&response[..read]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("MAX_BODY_BYTES=1024"), "{text}");
}

#[tokio::test]
async fn the_own_origin_exemption_holds_only_for_loopback_and_allowed_hosts() {
    let app = spawn_app(&["--cors-origins", APP]).await;
    let port = app.addr.port();
    // DNS rebinding: evil.example resolves to this server; the page's origin and Host agree.
    let rebound_host = format!("evil.example:{port}");
    let rebound_origin = format!("http://{rebound_host}");
    let refusal = app
        .refused(
            "user_id=u",
            &[("origin", &rebound_origin), ("host", &rebound_host)],
        )
        .await;
    assert_eq!(refusal.status, 403, "{refusal:?}");
    let reply = app
        .request(
            Method::POST,
            "/sse/push",
            &[("origin", &rebound_origin), ("host", &rebound_host), JSON],
            Some(br#"{"user_id":"u","data":{}}"#.to_vec()),
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    // The console opened on loopback is the server's own page.
    let own = format!("http://127.0.0.1:{port}");
    app.upgraded("user_id=u", &[("origin", &own)]).await;

    // Under a name the operator lists, the console works again.
    let listed = spawn_app(&["--cors-origins", APP, "--allowed-hosts", "push.example.com"]).await;
    let host = format!("push.example.com:{}", listed.addr.port());
    let origin = format!("http://{host}");
    listed
        .upgraded("user_id=u", &[("origin", &origin), ("host", &host)])
        .await;
    let other = listed
        .refused(
            "user_id=u",
            &[("origin", &rebound_origin), ("host", &rebound_host)],
        )
        .await;
    assert_eq!(other.status, 403);

    // With CORS_ORIGINS=* every origin may connect, as before.
    let open = spawn_app(&[]).await;
    open.upgraded(
        "user_id=u",
        &[("origin", &rebound_origin), ("host", &rebound_host)],
    )
    .await;
}

#[tokio::test]
async fn admin_keys_alone_broadcast_and_disconnect_when_set() {
    let app = spawn_app(&[
        "--push-api-keys",
        PUBLISHER_KEY,
        "--admin-api-keys",
        ADMIN_KEY,
    ])
    .await;
    let publisher = format!("Bearer {PUBLISHER_KEY}");
    let admin = format!("Bearer {ADMIN_KEY}");
    let mut ws = app.connect("target").await;
    app.wait_for_connections(1).await;
    let broadcast = br#"{"data":{"to":"all"}}"#.to_vec();
    let as_publisher = [("authorization", publisher.as_str()), JSON];
    let as_admin = [("authorization", admin.as_str()), JSON];

    let reply = app
        .request(
            Method::POST,
            "/sse/broadcast",
            &as_publisher,
            Some(broadcast.clone()),
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    assert!(reply.text.contains("ADMIN_API_KEYS"), "{}", reply.text);
    let reply = app
        .request(
            Method::DELETE,
            "/admin/users/target/connections",
            &as_publisher,
            None,
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    let reply = app
        .request(Method::GET, "/admin/users/target", &[], None)
        .await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    // The publisher key still pushes; the admin key is not a publisher key.
    let push = br#"{"user_id":"target","data":{"n":1}}"#.to_vec();
    let reply = app
        .request(Method::POST, "/sse/push", &as_publisher, Some(push.clone()))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(next_json(&mut ws).await["data"]["n"], 1);
    let reply = app
        .request(Method::POST, "/sse/push", &as_admin, Some(push))
        .await;
    assert_eq!(reply.status, 401, "{}", reply.text);

    let reply = app
        .request(Method::POST, "/sse/broadcast", &as_admin, Some(broadcast))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(next_json(&mut ws).await["data"]["to"], "all");
    let reply = app
        .request(
            Method::DELETE,
            "/admin/users/target/connections",
            &as_admin,
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        json!(reply.json()["disconnected"]),
        json!(1),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn without_admin_keys_the_publisher_keys_administer() {
    let app = spawn_app(&["--push-api-keys", PUBLISHER_KEY]).await;
    let publisher = format!("Bearer {PUBLISHER_KEY}");
    let reply = app
        .request(
            Method::POST,
            "/sse/broadcast",
            &[("authorization", publisher.as_str()), JSON],
            Some(br#"{"data":{}}"#.to_vec()),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}
