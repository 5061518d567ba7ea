//! The HTTP API over real sockets: validation, limits, content types, routing, CORS, the seed's
//! response shapes, configurable paths and pathological bodies.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp, assert_silent, next_json, next_text, spawn_app};

/// How long a client listens to be sure that nothing was delivered to it.
const QUIET: Duration = Duration::from_millis(300);

/// The seed README's single-push curl example, byte for byte.
const SEED_SINGLE: &str = r#"{
    "user_id": "test123",
    "data": {"message": "Hello from upstream!", "type": "notification"},
    "event_type": "message",
    "timestamp": 1704067200
  }"#;

/// The seed README's batch curl example, byte for byte.
const SEED_BATCH: &str = r#"[
    {"user_id": "test123", "data": {"msg": "msg1"}},
    {"user_id": "test456", "data": {"msg": "msg2"}}
  ]"#;

/// POSTs raw bytes declared as `application/json`.
async fn post_raw(app: &TestApp, path: &str, body: impl Into<Vec<u8>>) -> Reply {
    app.request(
        Method::POST,
        path,
        &[("content-type", "application/json")],
        Some(body.into()),
    )
    .await
}

fn issue(loc: Value, msg: &str, kind: &str) -> Value {
    json!({ "loc": loc, "msg": msg, "type": kind })
}

#[tokio::test]
async fn invalid_pushes_get_fastapi_422s_and_the_server_keeps_serving() {
    let app = spawn_app(&[]).await;
    let mut rejected = 0;

    // Missing user_id and data of the wrong type: both reported, in field order.
    let (status, body) = app.post_json("/sse/push", &json!({ "data": [1] })).await;
    rejected += 1;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body,
        json!({ "detail": [
            issue(json!(["body", "user_id"]), "Field required", "missing"),
            issue(json!(["body", "data"]), "Input should be a valid dictionary", "dict_type"),
        ]})
    );

    // Wrong types for the optional fields.
    let (status, body) = app
        .post_json(
            "/sse/push",
            &json!({
                "user_id": "u", "data": {},
                "event_type": 5, "event_id": {"id": 1}, "timestamp": "1704067200",
            }),
        )
        .await;
    rejected += 1;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["detail"],
        json!([
            issue(
                json!(["body", "event_type"]),
                "Input should be a valid string",
                "string_type"
            ),
            issue(
                json!(["body", "event_id"]),
                "Input should be a valid string",
                "string_type"
            ),
            issue(
                json!(["body", "timestamp"]),
                "Input should be a valid number",
                "float_type"
            ),
        ])
    );

    // A negative timestamp and a user_id of the wrong type.
    let (status, body) = app
        .post_json(
            "/sse/push",
            &json!({ "user_id": 42, "data": {}, "timestamp": -1 }),
        )
        .await;
    rejected += 1;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "user_id"]));
    assert_eq!(body["detail"][0]["type"], "string_type");
    assert_eq!(body["detail"][1]["loc"], json!(["body", "timestamp"]));
    assert_eq!(body["detail"][1]["type"], "greater_than_equal");

    // user_id is limited in bytes, not characters: 256 bytes pass, 129 two-byte characters don't.
    let (status, body) = app
        .post_json(
            "/sse/push",
            &json!({ "user_id": "x".repeat(256), "data": {} }),
        )
        .await;
    assert_eq!(status, 200, "256-byte user_id is allowed: {body}");
    for long in ["x".repeat(257), "é".repeat(129)] {
        let (status, body) = app
            .post_json("/sse/push", &json!({ "user_id": long, "data": {} }))
            .await;
        rejected += 1;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["detail"][0]["loc"], json!(["body", "user_id"]));
        assert_eq!(body["detail"][0]["type"], "string_too_long");
    }

    // Control characters in event_type (would break SSE framing and log lines).
    let (status, body) = app
        .post_json(
            "/sse/push",
            &json!({ "user_id": "u", "data": {}, "event_type": "a\nb" }),
        )
        .await;
    rejected += 1;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["detail"],
        json!([issue(
            json!(["body", "event_type"]),
            "String must not contain control characters",
            "value_error"
        )])
    );

    // Malformed JSON.
    let reply = post_raw(&app, "/sse/push", "{not json").await;
    rejected += 1;
    assert_eq!(reply.status, 422, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["detail"][0]["loc"], json!(["body"]));
    assert_eq!(body["detail"][0]["type"], "json_invalid");
    assert!(
        body["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .starts_with("JSON decode error"),
        "{body}"
    );

    // A JSON array where an object is expected.
    let reply = post_raw(&app, "/sse/push", r#"[{"user_id":"u","data":{}}]"#).await;
    rejected += 1;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.json()["detail"][0]["type"], "dict_type");
    assert_eq!(reply.json()["detail"][0]["loc"], json!(["body"]));

    // Invalid UTF-8, alone and inside strings of an otherwise valid object (the type reported
    // for the latter is checked in `invalid_utf8_inside_an_object_is_reported_as_json_invalid`).
    let reply = post_raw(&app, "/sse/push", b"\xff\xfe".to_vec()).await;
    rejected += 1;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.json()["detail"][0]["type"], "json_invalid");
    for bytes in [
        &b"{\"user_id\":\"\xff\xfe\",\"data\":{}}"[..],
        &b"{\"user_id\":\"u\",\"data\":{\"k\":\"\xff\"}}"[..],
    ] {
        let reply = post_raw(&app, "/sse/push", bytes.to_vec()).await;
        rejected += 1;
        assert_eq!(reply.status, 422, "{}", reply.text);
        assert_eq!(reply.json()["detail"][0]["loc"], json!(["body"]));
    }

    // An empty body.
    let reply = post_raw(&app, "/sse/push", Vec::new()).await;
    rejected += 1;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.json()["detail"][0]["type"], "json_invalid");

    // Still serving, and every refusal was counted as invalid (and nothing else).
    let (status, health) = app.get_json("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    let metrics = app.metrics().await;
    assert_eq!(
        metrics["push_requests_rejected_total"],
        json!({ "invalid": rejected, "too_large": 0, "unsupported_media_type": 0, "unavailable": 0, "unauthorized": 0, "forbidden": 0, "rate_limited": 0 })
    );
    assert_eq!(
        metrics["events_accepted_total"], 1,
        "only the 256-byte push"
    );
}

/// FastAPI reports a body that is not valid UTF-8 as `json_invalid`, whatever its shape.
#[tokio::test]
async fn invalid_utf8_inside_an_object_is_reported_as_json_invalid() {
    let app = spawn_app(&[]).await;
    for (path, bytes) in [
        ("/sse/push", &b"{\"user_id\":\"\xff\xfe\",\"data\":{}}"[..]),
        (
            "/sse/push",
            &b"{\"user_id\":\"u\",\"data\":{\"k\":\"\xff\"}}"[..],
        ),
        (
            "/sse/push/batch",
            &b"[{\"user_id\":\"u\",\"data\":{\"k\":\"\xff\"}}]"[..],
        ),
    ] {
        let reply = post_raw(&app, path, bytes.to_vec()).await;
        assert_eq!(reply.status, 422, "{}", reply.text);
        assert_eq!(
            reply.json()["detail"][0]["type"],
            "json_invalid",
            "{path} {}: {}",
            String::from_utf8_lossy(bytes),
            reply.text
        );
    }
}

#[tokio::test]
async fn seed_curl_examples_work_verbatim() {
    let app = spawn_app(&[]).await;

    // Nobody connected: accepted, but reported as partial.
    let reply = post_raw(&app, "/sse/push", SEED_SINGLE).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["status"], "partial");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("user not connected")),
        "{body}"
    );
    assert_eq!(body["delivered"], 0);
    assert_eq!(
        body["event_id"]
            .as_str()
            .expect("an assigned event_id")
            .len(),
        26,
        "a ULID: {body}"
    );

    let reply = post_raw(&app, "/sse/push/batch", SEED_BATCH).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let results = reply.json()["results"].clone();
    let results = results.as_array().expect("results list");
    assert_eq!(results.len(), 2);
    for (result, user) in results.iter().zip(["test123", "test456"]) {
        assert_eq!(result["user_id"], user, "results in input order");
        assert_eq!(result["success"], false);
        assert_eq!(result["delivered"], 0);
        assert!(result["event_id"].is_string(), "{result}");
    }

    // test123 connected: the single push succeeds and arrives with the upstream's fields.
    let mut ws = app.connect("test123").await;
    app.wait_for_connections(1).await;
    let reply = post_raw(&app, "/sse/push", SEED_SINGLE).await;
    let body = reply.json();
    assert_eq!(body["status"], "success", "{body}");
    assert_eq!(body["delivered"], 1);
    let event = next_json(&mut ws).await;
    assert_eq!(
        event,
        json!({
            "event_type": "message",
            "event_id": body["event_id"],
            "user_id": "test123",
            "timestamp": 1704067200,
            "data": {"message": "Hello from upstream!", "type": "notification"},
        })
    );

    // The batch: test123 succeeds, test456 (offline) does not.
    let reply = post_raw(&app, "/sse/push/batch", SEED_BATCH).await;
    let body = reply.json();
    assert_eq!(body["results"][0]["success"], true, "{body}");
    assert_eq!(body["results"][1]["success"], false, "{body}");
    let event = next_json(&mut ws).await;
    assert_eq!(event["data"], json!({"msg": "msg1"}));
    assert_eq!(event["event_id"], body["results"][0]["event_id"]);
}

#[tokio::test]
async fn bodies_over_the_configured_limit_get_413() {
    let app = spawn_app(&["--max-body-bytes", "1024"]).await;

    // A valid push padded to exactly the limit is accepted.
    let skeleton = r#"{"user_id":"u","data":{"pad":""}}"#;
    let exact = format!(
        r#"{{"user_id":"u","data":{{"pad":"{}"}}}}"#,
        "a".repeat(1024 - skeleton.len())
    );
    assert_eq!(exact.len(), 1024);
    let reply = post_raw(&app, "/sse/push", exact.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    // One byte over, and a 2 KB body, are refused on both push endpoints.
    let over = exact.replacen("\"pad\":\"", "\"pad\":\"a", 1);
    assert_eq!(over.len(), 1025);
    let two_kb = format!(
        r#"{{"user_id":"u","data":{{"pad":"{}"}}}}"#,
        "a".repeat(2048)
    );
    let batch = format!("[{two_kb}]");
    for (path, body) in [
        ("/sse/push", over),
        ("/sse/push", two_kb),
        ("/sse/push/batch", batch),
    ] {
        let reply = post_raw(&app, path, body).await;
        assert_eq!(reply.status, 413, "{path}: {}", reply.text);
        let detail = reply.json()["detail"].clone();
        let detail = detail.as_str().expect("detail is a message");
        assert!(
            detail.contains("MAX_BODY_BYTES") && detail.contains("1024"),
            "{detail}"
        );
    }

    let (status, _) = app.get_json("/health").await;
    assert_eq!(status, 200);
    let metrics = app.metrics().await;
    assert_eq!(metrics["push_requests_rejected_total"]["too_large"], 3);
    assert_eq!(metrics["push_requests_rejected_total"]["invalid"], 0);
}

#[tokio::test]
async fn default_body_limit_is_one_mebibyte() {
    let app = spawn_app(&[]).await;

    // Just under 1 MiB is fine.
    let near = format!(
        r#"{{"user_id":"u","data":{{"pad":"{}"}}}}"#,
        "a".repeat(1024 * 1024 - 64)
    );
    let reply = post_raw(&app, "/sse/push", near).await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    // 1.5 MiB is not.
    let big = format!(
        r#"{{"user_id":"u","data":{{"pad":"{}"}}}}"#,
        "a".repeat(1024 * 1024 * 3 / 2)
    );
    let reply = post_raw(&app, "/sse/push", big).await;
    assert_eq!(reply.status, 413, "{}", reply.text);
    let body = reply.json();
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("MAX_BODY_BYTES=1048576")),
        "{body}"
    );
    let metrics = app.metrics().await;
    assert_eq!(metrics["push_requests_rejected_total"]["too_large"], 1);
}

#[tokio::test]
async fn batches_are_validated_whole_before_anything_is_delivered() {
    let app = spawn_app(&["--max-batch-size", "3"]).await;
    let mut ws = app.connect("b").await;
    app.wait_for_connections(1).await;
    let item = |n: u64| json!({ "user_id": "b", "data": { "n": n } });

    // Four items: over MAX_BATCH_SIZE.
    let (status, body) = app
        .post_json(
            "/sse/push/batch",
            &json!([item(1), item(2), item(3), item(4)]),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let detail = body["detail"].as_array().expect("detail list");
    assert_eq!(detail.len(), 1, "{body}");
    assert_eq!(detail[0]["type"], "too_long");
    assert_eq!(detail[0]["loc"], json!(["body"]));
    assert!(
        detail[0]["msg"]
            .as_str()
            .unwrap()
            .contains("MAX_BATCH_SIZE"),
        "{body}"
    );

    // Valid items around invalid ones: every problem is listed by index, nothing is sent.
    let (status, body) = app
        .post_json(
            "/sse/push/batch",
            &json!([item(1), { "user_id": "b", "data": "text" }, { "user_id": "b" }]),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["detail"],
        json!([
            issue(
                json!(["body", 1, "data"]),
                "Input should be a valid dictionary",
                "dict_type"
            ),
            issue(json!(["body", 2, "data"]), "Field required", "missing"),
        ])
    );

    // An item that is not an object at all.
    let (status, body) = app.post_json("/sse/push/batch", &json!([item(1), 7])).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", 1]));
    assert_eq!(body["detail"][0]["type"], "dict_type");

    // An object where the batch expects a list.
    let (status, body) = app.post_json("/sse/push/batch", &item(1)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["type"], "list_type");

    assert_silent(&mut ws, QUIET).await;

    // Exactly MAX_BATCH_SIZE: accepted, and these are the first events the client sees.
    let (status, body) = app
        .post_json("/sse/push/batch", &json!([item(10), item(11), item(12)]))
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    for (n, result) in (10..13).zip(results) {
        assert_eq!(result["success"], true, "{result}");
        assert_eq!(result["delivered"], 1);
        let event = next_json(&mut ws).await;
        assert_eq!(
            event["data"],
            json!({ "n": n }),
            "in order, nothing earlier"
        );
        assert_eq!(event["event_id"], result["event_id"]);
    }

    let metrics = app.metrics().await;
    assert_eq!(metrics["events_accepted_total"], 3);
    assert_eq!(metrics["push_requests_rejected_total"]["invalid"], 4);
}

#[tokio::test]
async fn content_type_must_be_json() {
    let app = spawn_app(&[]).await;
    let body = br#"{"user_id":"u","data":{}}"#.to_vec();

    let reply = app
        .request(
            Method::POST,
            "/sse/push",
            &[("content-type", "text/plain")],
            Some(body.clone()),
        )
        .await;
    assert_eq!(reply.status, 415, "{}", reply.text);
    assert_eq!(
        reply.json(),
        json!({ "detail": "Content-Type must be application/json, not text/plain" })
    );

    let reply = app
        .request(
            Method::POST,
            "/sse/push/batch",
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(b"[]".to_vec()),
        )
        .await;
    assert_eq!(reply.status, 415, "{}", reply.text);

    // No declared type: what a cross-site no-cors fetch or sendBeacon sends.
    let reply = app
        .request(
            Method::POST,
            "/sse/broadcast",
            &[],
            Some(br#"{"data":{}}"#.to_vec()),
        )
        .await;
    assert_eq!(reply.status, 415, "{}", reply.text);
    assert_eq!(
        reply.json(),
        json!({ "detail": "Content-Type must be application/json, not (none)" })
    );

    for headers in [
        &[("content-type", "application/json")][..],
        &[("content-type", "application/json; charset=utf-8")][..],
        &[("content-type", "Application/JSON")][..],
        &[("content-type", "application/vnd.api+json")][..],
    ] {
        let reply = app
            .request(Method::POST, "/sse/push", headers, Some(body.clone()))
            .await;
        assert_eq!(reply.status, 200, "{headers:?}: {}", reply.text);
        assert_eq!(reply.json()["status"], "partial");
    }

    let metrics = app.metrics().await;
    assert_eq!(
        metrics["push_requests_rejected_total"]["unsupported_media_type"],
        3
    );
    assert_eq!(metrics["events_accepted_total"], 4);
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_get_json_errors() {
    let app = spawn_app(&[]).await;

    for path in ["/nope", "/sse", "/sse/push/", "/ws/extra"] {
        let reply = app.request(Method::GET, path, &[], None).await;
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.json(), json!({ "detail": "Not Found" }), "{path}");
    }

    let reply = app.request(Method::GET, "/sse/push", &[], None).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.json(), json!({ "detail": "Method Not Allowed" }));
    let allow = reply.header("allow").expect("405 carries an Allow header");
    assert!(allow.contains("POST"), "Allow: {allow}");

    let reply = app.request(Method::DELETE, "/health", &[], None).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.json(), json!({ "detail": "Method Not Allowed" }));
    let allow = reply.header("allow").expect("405 carries an Allow header");
    assert!(allow.contains("GET"), "Allow: {allow}");
}

/// A cross-origin push from `origin`, as a browser sends it.
async fn cors_simple(app: &TestApp, origin: &str) -> Reply {
    app.request(
        Method::POST,
        "/sse/push",
        &[("origin", origin), ("content-type", "application/json")],
        Some(br#"{"user_id":"u","data":{}}"#.to_vec()),
    )
    .await
}

/// The preflight a browser sends before a cross-origin JSON push from `origin`.
async fn cors_preflight(app: &TestApp, origin: &str) -> Reply {
    app.request(
        Method::OPTIONS,
        "/sse/push",
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
        None,
    )
    .await
}

#[tokio::test]
async fn cors_allows_any_origin_by_default() {
    let app = spawn_app(&[]).await;

    let reply = cors_simple(&app, "https://x.example").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));

    let reply = cors_preflight(&app, "https://x.example").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    let methods = reply
        .header("access-control-allow-methods")
        .expect("allow-methods");
    assert!(methods.contains("POST"), "{methods}");
    let headers = reply
        .header("access-control-allow-headers")
        .expect("allow-headers");
    assert!(
        headers.to_ascii_lowercase().contains("content-type"),
        "{headers}"
    );
}

#[tokio::test]
async fn cors_origin_list_echoes_allowed_and_ignores_others() {
    let app = spawn_app(&["--cors-origins", "https://app.example.com"]).await;
    let reply = cors_simple(&app, "https://app.example.com").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let vary = reply
        .header("vary")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        vary.contains("origin"),
        "responses that depend on Origin say so: {vary:?}"
    );

    let reply = cors_preflight(&app, "https://app.example.com").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(
        reply
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("POST"))
    );

    let reply = cors_simple(&app, "https://evil.example").await;
    assert_eq!(
        reply.header("access-control-allow-origin"),
        None,
        "disallowed origin"
    );
    let reply = cors_preflight(&app, "https://evil.example").await;
    assert_eq!(
        reply.header("access-control-allow-origin"),
        None,
        "disallowed preflight"
    );
}

#[tokio::test]
async fn health_metrics_and_ready_keep_the_seed_shapes() {
    let app = spawn_app(&[]).await;

    let reply = app.request(Method::GET, "/health", &[], None).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .text
            .starts_with(r#"{"status":"healthy","connections":0,"uptime":"running""#),
        "seed keys first, in order: {}",
        reply.text
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "JSON content type"
    );

    let reply = app.request(Method::GET, "/metrics", &[], None).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .text
            .starts_with(r#"{"active_connections":0,"service":"websocket-sse-server""#),
        "seed keys first, in order: {}",
        reply.text
    );

    let reply = app.request(Method::GET, "/ready", &[], None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({ "status": "ready" }));

    // The counts follow connections.
    let _ws = app.connect("h").await;
    let _ws2 = app.connect("h").await;
    app.wait_for_connections(2).await;
    let (_, health) = app.get_json("/health").await;
    assert_eq!(health["connections"], 2);
    assert_eq!(health["users"], 1);
    let metrics = app.metrics().await;
    assert_eq!(metrics["active_connections"], 2);
    assert_eq!(metrics["users_online"], 1);
}

#[tokio::test]
async fn ready_turns_503_while_draining() {
    let app = spawn_app(&["--shutdown-drain", "2", "--shutdown-timeout", "5"]).await;
    app.lifecycle.begin_shutdown();
    let reply = app.request(Method::GET, "/ready", &[], None).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json(), json!({ "status": "shutting_down" }));
    // Everything else is still served during the drain.
    let (status, _) = app.get_json("/health").await;
    assert_eq!(status, 200);
    let (status, body) = app
        .post_json("/sse/push", &json!({ "user_id": "u", "data": {} }))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn configured_paths_replace_the_defaults() {
    let app = spawn_app(&[
        "--ws-path",
        "/live",
        "--sse-path",
        "/push",
        "--sse-batch-path",
        "/push/many",
    ])
    .await;

    let mut ws = app
        .handshake_on("/live", "user_id=u", &[])
        .await
        .expect("handshake on the configured path");
    app.wait_for_connections(1).await;

    let (status, body) = app
        .post_json(
            "/push",
            &json!({ "user_id": "u", "data": { "via": "push" } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    assert_eq!(next_json(&mut ws).await["data"], json!({ "via": "push" }));

    let (status, body) = app
        .post_json(
            "/push/many",
            &json!([{ "user_id": "u", "data": { "via": "batch" } }]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["success"], true);
    assert_eq!(next_json(&mut ws).await["data"], json!({ "via": "batch" }));

    for path in ["/sse/push", "/sse/push/batch"] {
        let reply = post_raw(&app, path, r#"{"user_id":"u","data":{}}"#).await;
        assert_eq!(reply.status, 404, "{path} is no longer served");
    }
    let refusal = app.refused("user_id=u", &[]).await;
    assert_eq!(refusal.status, 404, "/ws is no longer served");
}

#[tokio::test]
async fn deeply_nested_data_is_delivered_verbatim_and_unclosed_nesting_is_refused() {
    let app = spawn_app(&[]).await;
    let mut ws = app.connect("deep").await;
    app.wait_for_connections(1).await;

    let depth = 10_000;
    let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let data = format!(r#"{{"x":{deep}}}"#);
    let body = format!(r#"{{"user_id":"deep","data":{data}}}"#);
    let reply = post_raw(&app, "/sse/push", body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["status"], "success");
    let frame = next_text(&mut ws).await;
    assert!(
        frame.ends_with(&format!(r#","data":{data}}}"#)),
        "data verbatim at the end of the frame: {}…",
        &frame[..frame.len().min(200)]
    );
    assert!(frame.starts_with(r#"{"event_type":"message","event_id":""#));

    // The same depth as the whole body, and unclosed inside data: refused, not crashed.
    for garbage in [
        deep.clone(),
        format!(
            r#"{{"user_id":"deep","data":{{"x":{}}}}}"#,
            "[".repeat(depth)
        ),
        format!(
            r#"{{"user_id":"deep","data":{{"x":{}"#,
            "{\"a\":".repeat(depth)
        ),
    ] {
        let reply = post_raw(&app, "/sse/push", garbage.clone()).await;
        assert_eq!(reply.status, 422, "{}", reply.text);
        let kind = reply.json()["detail"][0]["type"].clone();
        assert!(kind == "json_invalid" || kind == "dict_type", "{kind}");
        let reply = post_raw(&app, "/sse/push/batch", format!("[{garbage}]")).await;
        assert_eq!(reply.status, 422, "{}", reply.text);
    }
    assert_silent(&mut ws, QUIET).await;

    let (status, _) = app.get_json("/health").await;
    assert_eq!(status, 200);
    let (status, body) = app
        .post_json(
            "/sse/push",
            &json!({ "user_id": "deep", "data": { "after": true } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_json(&mut ws).await["data"], json!({ "after": true }));
}

#[tokio::test]
async fn trickling_bodies_get_408_and_silent_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const HEAD_TIMEOUT: Duration = Duration::from_millis(200);
    let app = spawn_app(&[
        "--http-request-timeout",
        &HEAD_TIMEOUT.as_secs_f64().to_string(),
    ])
    .await;

    let mut trickling = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    trickling
        .write_all(
            b"POST /sse/push HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{",
        )
        .await
        .expect("write head");
    let mut response = vec![0; 512];
    let read = tokio::time::timeout(Duration::from_secs(3), trickling.read(&mut response))
        .await
        .expect("answered within the deadline")
        .expect("read");
    let text = String::from_utf8_lossy(&response[..read]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("HTTP_REQUEST_TIMEOUT"), "{text}");

    let mut silent = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let started = tokio::time::Instant::now();
    let mut byte = [0; 1];
    let closed = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut byte))
        .await
        .expect("closed within the deadline");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert!(
        started.elapsed() >= HEAD_TIMEOUT * 4 / 5,
        "not before the timeout"
    );

    let metrics = app.metrics().await;
    assert_eq!(
        metrics["push_requests_rejected_total"]["invalid"], 1,
        "{metrics}"
    );
}

// --- the console page ------------------------------------------------------------------------

/// The console's user id fields allow what the server allows, and the page's header wraps on a
/// phone-sized screen (390 px) instead of overlapping.
#[tokio::test]
async fn the_console_allows_the_servers_user_id_length_and_wraps_its_header_on_phones() {
    let app = spawn_app(&[]).await;
    let page = app.get("/", &[]).await;
    assert_eq!(page.status, 200);
    let limit = format!(
        "maxlength=\"{}\"",
        websocket_sse_server::protocol::USER_ID_MAX_BYTES
    );
    for field in ["id=\"connect-user\"", "id=\"push-user\""] {
        let input = page
            .text
            .split('<')
            .find(|tag| tag.starts_with("input") && tag.contains(field))
            .unwrap_or_else(|| panic!("the {field} input"));
        assert!(input.contains(&limit), "{input}");
    }
    let phones = page
        .text
        .split("@media (max-width: 480px)")
        .nth(1)
        .unwrap_or_else(|| panic!("a rule for screens up to 480 px"));
    let rule = phones.split("\n}").next().unwrap_or_default();
    assert!(
        rule.contains(".topbar { flex-wrap: wrap;") && rule.contains(".brand { flex-wrap: wrap;"),
        "{rule}"
    );
}

/// `CONSOLE_PATH=/console`: `/console/` redirects there (308, query kept); other paths with a
/// slash, and other methods, stay 404.
#[tokio::test]
async fn the_console_path_with_a_trailing_slash_redirects_to_it() {
    let app = spawn_app(&["--console-path", "/console"]).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .get(app.url("/console/?user=42"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 308);
    assert_eq!(response.headers()["location"], "/console?user=42");
    assert_eq!(app.get("/console", &[]).await.status, 200);
    assert_eq!(app.get("/health/", &[]).await.status, 404);
    assert_eq!(app.get("/console//", &[]).await.status, 404);
    let post = client.post(app.url("/console/")).send().await.unwrap();
    assert_eq!(post.status().as_u16(), 404);
}

#[tokio::test]
async fn the_javascript_client_is_served_cacheable_with_its_source_map() {
    let app = spawn_app(&[]).await;
    let script = app.get("/client.js", &[]).await;
    assert_eq!(script.status, 200);
    assert_eq!(script.content_type(), "text/javascript; charset=utf-8");
    assert!(script.text.contains("export class PushClient"));
    assert!(
        script
            .text
            .ends_with("//# sourceMappingURL=client.js.map\n")
    );
    assert_eq!(script.header("cache-control"), Some("public, max-age=3600"));
    let etag = script.header("etag").expect("an ETag").to_owned();
    let again = app.get("/client.js", &[("If-None-Match", &etag)]).await;
    assert_eq!(again.status, 304);
    assert!(again.text.is_empty());

    let map = app.get("/client.js.map", &[]).await;
    assert_eq!(map.status, 200);
    let map = map.json();
    assert_eq!(map["version"], 3);
    assert_eq!(map["sources"][0], "push-client.js");
    let source = map["sourcesContent"][0].as_str().unwrap();
    assert!(script.text.starts_with(source));
    let lines = map["mappings"].as_str().unwrap().split(';').count();
    assert_eq!(lines, source.lines().count());
}
