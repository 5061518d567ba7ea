//! The administrative API (`/admin/users/…`), pushes to several users (`user_ids`) and broadcasts,
//! against the real server with real clients.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::helpers::{SseReader, close_of, next_json, spawn_app};

const KEY: &str = "admin-test-key-0123456789";

#[tokio::test]
async fn the_admin_api_lists_a_users_connections_and_disconnects_them() {
    let app = spawn_app(&[]).await;
    let mut first = app.connect("ann").await;
    let mut second = app.connect("ann").await;
    let mut stream = SseReader::open(&app, "user_id=ann", &[]).await;
    let _bystander = app.connect("bob").await;

    let (status, report) = app.get_json("/admin/users/ann").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["user_id"], "ann");
    assert_eq!(report["online"], true);
    assert_eq!(report["connection_count"], 3);
    assert_eq!(report["transports"], json!({"websocket": 2, "sse": 1}));
    let connections = report["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 3);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for connection in connections {
        let since = connection["connected_since"].as_f64().unwrap();
        assert!(since <= now && now - since < 60.0, "{connection}");
        assert!(connection["node_id"].is_null(), "single node: {connection}");
        assert!(connection["connection_id"].is_string(), "{connection}");
    }
    let since: Vec<f64> = connections
        .iter()
        .map(|c| c["connected_since"].as_f64().unwrap())
        .collect();
    assert!(since.is_sorted(), "oldest first: {since:?}");

    let answer = app.disconnect_user("ann").await;
    assert_eq!(answer, json!({"user_id": "ann", "disconnected": 3}));
    for ws in [&mut first, &mut second] {
        assert_eq!(
            close_of(ws).await,
            Some((4003, "disconnected by an administrator".to_owned()))
        );
    }
    stream
        .until("event: close\ndata: {\"event_type\":\"close\",\"reason\":\"disconnected\"}")
        .await;
    let metrics = app
        .wait_for_metrics("the closes counted", |m| {
            m["connections_closed_total"]["disconnected"] == 3
        })
        .await;
    assert_eq!(metrics["active_connections"], 1, "bob stays: {metrics}");

    let (_, report) = app.get_json("/admin/users/ann").await;
    assert_eq!(report["online"], false);
    assert_eq!(report["connection_count"], 0);
    assert_eq!(report["connections"], json!([]));
    let (_, answer) = app.delete_json("/admin/users/nobody/connections").await;
    assert_eq!(answer["disconnected"], 0);
}

#[tokio::test]
async fn admin_routes_need_a_publisher_key_and_a_valid_user_id() {
    let app = spawn_app(&["--push-api-keys", KEY]).await;
    let (status, body) = app.get_json("/admin/users/ann").await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = app.delete_json("/admin/users/ann/connections").await;
    assert_eq!(status, 401);
    let response = app
        .http
        .get(app.url("/admin/users/ann"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let too_long = "x".repeat(300);
    let response = app
        .http
        .get(app.url(&format!("/admin/users/{too_long}")))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["detail"][0]["loc"], json!(["path", "user_id"]));
    assert_eq!(body["detail"][0]["type"], "string_too_long");
}

#[tokio::test]
async fn one_push_reaches_several_users_with_one_event_id() {
    let app = spawn_app(&[]).await;
    let mut ann = app.connect("ann").await;
    let mut bob = app.connect("bob").await;
    let mut bob_again = app.connect("bob").await;
    let (status, body) = app
        .post_json(
            "/sse/push",
            &json!({"user_ids": ["ann", "bob", "ann", "carl"], "data": {"n": 1}, "event_type": "news"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "partial", "carl is offline: {body}");
    assert_eq!(body["delivered"], 3);
    let results = body["results"].as_array().unwrap();
    let users: Vec<&str> = results
        .iter()
        .map(|r| r["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        users,
        ["ann", "bob", "carl"],
        "duplicates dropped, order kept"
    );
    let event_id = body["event_id"].as_str().unwrap();
    assert!(results.iter().all(|r| r["event_id"] == event_id), "{body}");
    assert_eq!(results[1]["delivered"], 2);
    assert_eq!(results[2]["success"], false);

    for (ws, user) in [
        (&mut ann, "ann"),
        (&mut bob, "bob"),
        (&mut bob_again, "bob"),
    ] {
        let event = next_json(ws).await;
        assert_eq!(event["user_id"], user, "each copy names its user");
        assert_eq!(event["event_id"], event_id);
        assert_eq!(event["event_type"], "news");
        assert_eq!(event["data"], json!({"n": 1}));
    }

    // An upstream id is shared too, and a retry is recognised for every user.
    let body = json!({"user_ids": ["ann", "bob"], "event_id": "order-7", "data": {}});
    let (_, first) = app.post_json("/sse/push", &body).await;
    let (_, retry) = app.post_json("/sse/push", &body).await;
    assert_eq!(first["event_id"], "order-7");
    assert!(
        first["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["duplicate"] == false)
    );
    assert!(
        retry["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["duplicate"] == true)
    );
}

#[tokio::test]
async fn bad_recipient_lists_are_refused_naming_the_field() {
    let app = spawn_app(&["--max-batch-size", "3"]).await;
    let cases = [
        (
            json!({"user_ids": [], "data": {}}),
            json!(["body", "user_ids"]),
            "too_short",
        ),
        (
            json!({"user_ids": ["a", "b", "c", "d"], "data": {}}),
            json!(["body", "user_ids"]),
            "too_long",
        ),
        (
            json!({"user_ids": "ann", "data": {}}),
            json!(["body", "user_ids"]),
            "list_type",
        ),
        (
            json!({"user_ids": ["ann", 7], "data": {}}),
            json!(["body", "user_ids", 1]),
            "string_type",
        ),
        (
            json!({"user_ids": ["ann"], "user_id": "ann", "data": {}}),
            json!(["body", "user_ids"]),
            "value_error",
        ),
        (
            json!({"user_ids": ["ann"], "data": 5}),
            json!(["body", "data"]),
            "dict_type",
        ),
    ];
    for (body, loc, kind) in cases {
        let (status, answer) = app.post_json("/sse/push", &body).await;
        assert_eq!(status, 422, "{body} → {answer}");
        assert_eq!(answer["detail"][0]["loc"], loc, "{body} → {answer}");
        assert_eq!(answer["detail"][0]["type"], kind, "{body} → {answer}");
    }
}

#[tokio::test]
async fn a_broadcast_reaches_every_connected_user() {
    let app = spawn_app(&[]).await;
    let body = app.broadcast(json!({"data": {"maintenance": true}})).await;
    assert_eq!(body["users"], 0);
    assert_eq!(body["status"], "partial");

    let mut ann = app.connect("ann").await;
    let mut bob = app.connect("bob").await;
    let mut stream = SseReader::open(&app, "user_id=carl", &[]).await;
    let body = app
        .broadcast(json!({"data": {"maintenance": true}, "event_type": "notice"}))
        .await;
    assert_eq!(body["status"], "success");
    assert_eq!(body["users"], 3);
    assert_eq!(body["delivered"], 3);
    let event_id = body["event_id"].as_str().unwrap().to_owned();
    for (ws, user) in [(&mut ann, "ann"), (&mut bob, "bob")] {
        let event = next_json(ws).await;
        assert_eq!(event["user_id"], user);
        assert_eq!(event["event_id"], event_id.as_str());
        assert_eq!(event["event_type"], "notice");
    }
    stream
        .until(&format!("id: {event_id}\nevent: notice\n"))
        .await;

    let (status, body) = app
        .post_json("/sse/broadcast", &json!({"user_id": "ann", "data": {}}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "user_id"]));
    let metrics = app.metrics().await;
    assert_eq!(metrics["events_accepted_total"], 3, "{metrics}");
    // Nothing else arrives.
    let quiet = tokio::time::timeout(Duration::from_millis(200), ann.next()).await;
    assert!(quiet.is_err(), "{quiet:?}");
}

#[tokio::test]
async fn an_admin_user_id_that_is_not_percent_encoded_utf8_is_refused() {
    let app = spawn_app(&["--push-api-keys", KEY]).await;
    let ask = |method: reqwest::Method, path: &str| {
        let request = app
            .http
            .request(method, app.url(path))
            .header("X-API-Key", KEY);
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON body"))
        }
    };
    for (method, path) in [
        (reqwest::Method::GET, "/admin/users/a%FF"),
        (reqwest::Method::DELETE, "/admin/users/a%FE/connections"),
        (reqwest::Method::GET, "/admin/users/a%ZZ"),
    ] {
        let (status, body) = ask(method, path).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(
            body["detail"][0]["loc"],
            json!(["path", "user_id"]),
            "{path}"
        );
    }
    // Escapes that decode are fine.
    let (status, report) = ask(reqwest::Method::GET, "/admin/users/a%2Bb%20c").await;
    assert_eq!(
        (status, &report["user_id"]),
        (200, &json!("a+b c")),
        "{report}"
    );
}
