//! What a hostile-input review found (issue 14), each with the request that got through before:
//! cross-site pushes, DNS rebinding, the administrative scope of publisher keys, compressed and
//! over-declared bodies, handshake refusals a browser could not see. Real server, real HTTP and WebSocket clients.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

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
    let headers = [("origin", rebound_origin.as_str()), ("host", &rebound_host)];
    let (code, reason) = app.refused_by_close("user_id=u", &headers).await;
    assert_eq!(code, 4403, "{reason}");
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
    let (code, reason) = listed.refused_by_close("user_id=u", &headers).await;
    assert_eq!(code, 4403, "{reason}");

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

/// HS256 secret of the browser-refusal test's server.
const SECRET: &str = "hardening-tests-hs256-secret-0123456789";

/// An HS256 token for `user` signed with [`SECRET`], expiring `exp_in` seconds from now.
fn token(user: &str, exp_in: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let claims = json!({"sub": user, "exp": now + exp_in});
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    encode(&Header::new(Algorithm::HS256), &claims, &key).expect("token encodes")
}

#[tokio::test]
async fn a_browser_sees_why_its_handshake_was_refused() {
    let app = spawn_app(&["--jwt-secret", SECRET, "--cors-origins", APP]).await;
    let browser = [("origin", APP)];
    let expired = format!("token={}", token("alice", -5));
    let alices = token("alice", 300);
    let cases = [
        ("user_id=%FF".to_owned(), &browser, 4400, "user_id: "),
        (String::new(), &browser, 4401, "a token is required"),
        (
            "token=not-a-jwt".to_owned(),
            &browser,
            4401,
            "the token is malformed",
        ),
        (expired.clone(), &browser, 4001, "token expired"),
        (
            format!("user_id=bob&token={alices}"),
            &browser,
            4403,
            "user_id does not match",
        ),
        (
            format!("token={alices}"),
            &[("origin", EVIL)],
            4403,
            "origin \"https://evil.example\"",
        ),
    ];
    for (query, headers, code, reason) in cases {
        let (got, why) = app.refused_by_close(&query, headers).await;
        assert_eq!(got, code, "{query:?}: {why}");
        assert!(why.starts_with(reason), "{query:?}: {why:?}");
    }
    // Servers and command-line tools (no Origin) keep the HTTP status and JSON detail.
    let refusal = app.refused(&expired, &[]).await;
    assert_eq!(refusal.status, 401, "{refusal:?}");
    assert!(refusal.body.contains("expired"), "{refusal:?}");
    // An allowed browser with a good token is let in, as before.
    let mut ws = app.upgraded(&format!("token={alices}"), &browser).await;
    app.push_id("alice", "hello").await;
    assert_eq!(next_json(&mut ws).await["event_id"], "hello");

    // Counted as refusals; none was ever registered as a connection.
    let metrics = app.metrics().await;
    let refused = &metrics["connections_refused_total"];
    assert_eq!(refused["bad_request"], 1, "{metrics}");
    assert_eq!(refused["unauthorized"], 2, "{metrics}");
    assert_eq!(refused["token_expired"], 2, "{metrics}");
    assert_eq!(refused["forbidden"], 2, "{metrics}");
    assert_eq!(metrics["connections_opened_total"], 1, "{metrics}");
}

#[tokio::test]
async fn a_browser_over_a_limit_is_told_to_come_back_later() {
    let browser = [("origin", APP)];
    // One attempt per second, bursts of 2: a third attempt at once is over the limit.
    let limited = spawn_app(&["--connect-rate-per-ip", "1"]).await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        match limited.handshake("user_id=u", &browser).await {
            Ok(mut ws) => match close_of_within(&mut ws, Duration::from_millis(200)).await {
                Some((code, reason)) => {
                    assert!(reason.ends_with(" s"), "{reason}");
                    codes.push(code);
                    break;
                }
                None => codes.push(101),
            },
            Err(refused) => panic!("a browser got an HTTP refusal: {refused:?}"),
        }
    }
    assert_eq!(codes.last(), Some(&4429), "{codes:?}");

    let full = spawn_app(&["--max-connections", "1"]).await;
    let _only = full.upgraded("user_id=a", &[]).await;
    let (code, reason) = full.refused_by_close("user_id=b", &browser).await;
    assert_eq!(code, 4503, "{reason}");
    assert!(reason.contains("MAX_CONNECTIONS"), "{reason}");
    assert_eq!(full.refused("user_id=b", &[]).await.status, 503);
}

/// The close code and reason if the server closes `ws` within `wait`; `None` if it stays open.
async fn close_of_within(ws: &mut crate::helpers::Ws, wait: Duration) -> Option<(u16, String)> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    match timeout(wait, ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => {
            Some((frame.code.into(), frame.reason.to_string()))
        }
        Ok(other) => panic!("expected a close or silence, got {other:?}"),
        Err(_elapsed) => None,
    }
}
