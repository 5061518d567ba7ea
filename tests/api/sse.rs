//! The Server-Sent Events side: the stream's framing, keepalive, resume, counting, refusals an
//! EventSource retries, graceful shutdown and slow consumers, each against its own server with a
//! real HTTP client and a real SSE parser.

use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures_util::stream::{self, StreamExt};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

use crate::helpers::{
    Events, Opening, PROMPTLY, SMALL_QUEUES, SseReader, TestApp, assert_stopped_promptly,
    next_text, spawn_app,
};

/// How long a stream must stay quiet to count as having received nothing.
const QUIET: Duration = Duration::from_millis(200);

/// Parses `text` (complete blocks) as an EventSource would.
async fn parse(text: &str) -> Vec<Event> {
    let chunks = stream::iter([Ok::<_, std::convert::Infallible>(text.to_owned())]);
    chunks
        .eventsource()
        .map(|event| event.expect("a valid event stream"))
        .collect()
        .await
}

/// An accepted SSE client past its opening block.
struct Client {
    opening: Opening,
    events: Events,
}

/// Connects as `user` (fresh, no resume point).
async fn connect_sse(app: &TestApp, user: &str) -> Client {
    resume_sse(app, &format!("user_id={user}"), &[]).await
}

/// Connects with this query and headers; reads the opening block.
async fn resume_sse(app: &TestApp, query: &str, headers: &[(&str, &str)]) -> Client {
    let mut raw = SseReader::open(app, query, headers).await;
    let opening = raw.opening().await;
    assert!(
        opening.retry.is_some(),
        "no retry hint in {:?}",
        opening.text
    );
    Client {
        opening,
        events: raw.events(),
    }
}

/// The next dispatched event; fails the test if none arrives promptly.
async fn next_event(events: &mut Events) -> Event {
    timeout(PROMPTLY, events.next())
        .await
        .expect("an event within the deadline")
        .expect("the stream is still open")
        .expect("a valid event")
}

/// The next event's `data` as JSON.
async fn next_data(events: &mut Events) -> (Event, Value) {
    let event = next_event(events).await;
    let json = serde_json::from_str(&event.data)
        .unwrap_or_else(|error| panic!("data is not JSON ({error}): {:?}", event.data));
    (event, json)
}

/// Fails the test if an event arrives (or the stream ends) within `within`.
async fn assert_quiet(events: &mut Events, within: Duration) {
    if let Ok(next) = timeout(within, events.next()).await {
        panic!("expected no event, got {next:?}");
    }
}

/// Pushes `{"n": n}` to `user` with upstream event id `{prefix}-{n}` for each `n`.
async fn push_numbered(app: &TestApp, user: &str, prefix: &str, ns: std::ops::Range<u32>) {
    for n in ns {
        app.push(json!({"user_id": user, "event_id": format!("{prefix}-{n}"), "data": {"n": n}}))
            .await;
    }
}

/// Asserts the next events are exactly `{prefix}-{n}` for each `n`, in order.
async fn expect_numbered(events: &mut Events, prefix: &str, ns: std::ops::Range<u32>) {
    for n in ns {
        let (event, json) = next_data(events).await;
        assert_eq!(event.id, format!("{prefix}-{n}"), "{json}");
        assert_eq!(json["data"], json!({"n": n}), "{json}");
    }
}

/// Waits until the server has exactly `n` SSE connections registered.
async fn wait_for_sse_connections(app: &TestApp, n: u64) -> Value {
    app.wait_for_health(&format!("{n} SSE connections"), |h| {
        h["sse_connections"] == n
    })
    .await
}

/// Splits a position token `<epoch>:<position>`, asserting its shape.
fn position_token(token: &str) -> (String, u64) {
    let (epoch, position) = token
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{token:?} is not <epoch>:<position>"));
    assert!(
        !epoch.is_empty() && epoch.chars().all(|c| c.is_ascii_alphanumeric()),
        "bad epoch in {token:?}"
    );
    let position = position
        .parse()
        .unwrap_or_else(|_| panic!("bad position in {token:?}"));
    (epoch.to_owned(), position)
}

/// Asserts a refusal an EventSource retries: 200 `text/event-stream`, a `retry:` hint and a
/// comment containing `why`, then the end; no event. Returns the body.
async fn assert_come_back_later(app: &TestApp, query: &str, why: &str) -> String {
    let mut raw = SseReader::open(app, query, &[]).await;
    let body = raw.read_to_end().await;
    assert!(body.starts_with("retry: 3000\n"), "{body:?}");
    let comment = body
        .lines()
        .find_map(|line| line.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no comment in {body:?}"));
    assert!(comment.contains(why), "{body:?} does not say {why:?}");
    assert!(body.ends_with("\n\n"), "{body:?}");
    assert!(parse(&body).await.is_empty(), "{body:?} dispatches events");
    body
}

#[tokio::test]
async fn a_fresh_stream_opens_with_event_stream_headers_a_retry_hint_and_its_position() {
    let app = spawn_app(&[]).await;
    let response = app.sse_stream("user_id=opener", &[]).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");

    let mut raw = SseReader::new(response);
    let opening = raw.until("\n\n").await;
    let lines: Vec<&str> = opening.lines().collect();
    assert_eq!(lines.len(), 3, "{opening:?}");
    assert_eq!(lines[2], "", "{opening:?}");
    assert_eq!(lines[0], "retry: 3000");
    let id = lines[1]
        .strip_prefix("id: ")
        .unwrap_or_else(|| panic!("{opening:?} has no id line"));
    let (epoch, position) = position_token(id);
    assert_eq!(position, 0, "a user without events is at position 0");

    // The opening block dispatches no event; the token tracks the user's stream.
    let mut events = raw.events();
    assert_quiet(&mut events, QUIET).await;
    push_numbered(&app, "opener", "o", 0..2).await;
    expect_numbered(&mut events, "o", 0..2).await;
    let later = connect_sse(&app, "opener").await;
    let (later_epoch, later_position) = position_token(later.opening.id.as_deref().unwrap());
    assert_eq!((later_epoch, later_position), (epoch, 2));
}

#[tokio::test]
async fn the_retry_hint_follows_the_sse_retry_flag() {
    let app = spawn_app(&["--sse-retry", "0.25"]).await;
    let mut raw = SseReader::open(&app, "user_id=retry", &[]).await;
    let opening = raw.opening().await;
    assert!(opening.text.starts_with("retry: 250\n"), "{opening:?}");
    assert_eq!(opening.retry, Some(250));
}

#[tokio::test]
async fn a_pushed_event_carries_its_id_its_type_and_the_websocket_frame_as_data() {
    let app = spawn_app(&[]).await;
    let mut ws = app.connect("framed").await;
    let mut raw = SseReader::open(&app, "user_id=framed", &[]).await;
    raw.opening().await;

    let data = json!({"text": "hi", "nested": {"list": [1, 2.5, null, true], "s": "é \"q\" \\n"}});
    let response = app.push(json!({"user_id": "framed", "event_type": "order.updated", "event_id": "evt-42", "data": data}),
    )
    .await;
    assert_eq!(response["delivered"], 2, "{response}");
    let frame = next_text(&mut ws).await;

    let block = raw.until("\n\n").await;
    assert_eq!(
        block,
        format!("id: evt-42\nevent: order.updated\ndata: {frame}\n\n")
    );
    let parsed = parse(&block).await;
    assert_eq!(parsed.len(), 1, "{parsed:?}");
    assert_eq!(parsed[0].event, "order.updated");
    assert_eq!(parsed[0].id, "evt-42");
    let json: Value = serde_json::from_str(&parsed[0].data).unwrap();
    assert_eq!(json["data"], data);
    assert_eq!(json["event_id"], "evt-42");

    // Without an event_type or event_id: `message` and the server's id.
    let response = app
        .push(json!({"user_id": "framed", "data": {"plain": true}}))
        .await;
    let mut events = raw.events();
    let (event, json) = next_data(&mut events).await;
    assert_eq!(event.event, "message");
    assert_eq!(event.id, response["event_id"].as_str().unwrap());
    assert_eq!(json["data"], json!({"plain": true}));
    assert_eq!(
        json,
        serde_json::from_str::<Value>(&next_text(&mut ws).await).unwrap()
    );
}

#[tokio::test]
async fn raw_line_breaks_in_upstream_data_become_data_lines_a_parser_joins_back() {
    let app = spawn_app(&[]).await;
    let mut ws = app.connect("lines").await;
    let mut raw = SseReader::open(&app, "user_id=lines", &[]).await;
    raw.opening().await;

    let body = "{\"user_id\":\"lines\",\"event_id\":\"nl-1\",\"data\":{\n  \"a\": 1,\r\n\t\"b\": [1,\r2],\n   \n\"c\": \"x y\"\n}}";
    let response = app
        .http
        .post(app.url("/sse/push"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let response: Value = response.json().await.unwrap();
    assert_eq!(response["delivered"], 2, "{response}");

    let block = raw.until("\n\n").await;
    let data_lines = block.lines().filter(|l| l.starts_with("data: ")).count();
    assert!(data_lines >= 5, "{block:?}");
    assert!(!block.contains('\r'), "{block:?}");
    assert_eq!(
        block.lines().count(),
        2 + data_lines + 1,
        "only id, event and data lines, then the blank: {block:?}"
    );

    let parsed = parse(&block).await;
    assert_eq!(parsed.len(), 1, "{block:?}");
    let json: Value = serde_json::from_str(&parsed[0].data)
        .unwrap_or_else(|error| panic!("joined data is not JSON ({error}): {block:?}"));
    assert_eq!(json["data"], json!({"a": 1, "b": [1, 2], "c": "x y"}));
    let frame: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(json, frame, "the same content as the WebSocket frame");
}

#[tokio::test]
async fn an_idle_stream_gets_keepalive_comments() {
    const KEEPALIVE: Duration = Duration::from_millis(100);
    let app = spawn_app(&["--sse-keepalive", &KEEPALIVE.as_secs_f64().to_string()]).await;
    let mut raw = SseReader::open(&app, "user_id=idle", &[]).await;
    raw.opening().await;
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(raw.until("\n\n").await, ": keepalive\n\n");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= KEEPALIVE * 5 / 2 && elapsed < Duration::from_secs(3),
        "three keepalives every {KEEPALIVE:?} took {elapsed:?}"
    );

    // Comments dispatch nothing; an event still arrives between them.
    let mut events = raw.events();
    assert_quiet(&mut events, KEEPALIVE * 5 / 2).await;
    push_numbered(&app, "idle", "k", 0..1).await;
    expect_numbered(&mut events, "k", 0..1).await;
}

#[tokio::test]
async fn last_event_id_header_replays_exactly_the_missed_events_then_live_ones() {
    let app = spawn_app(&[]).await;
    let mut first = connect_sse(&app, "resumer").await;
    push_numbered(&app, "resumer", "r", 0..2).await;
    expect_numbered(&mut first.events, "r", 0..2).await;
    drop(first);
    wait_for_sse_connections(&app, 0).await;
    push_numbered(&app, "resumer", "r", 2..5).await;

    let mut back = resume_sse(&app, "user_id=resumer", &[("Last-Event-ID", "r-1")]).await;
    assert_eq!(
        back.opening.id, None,
        "a resuming stream announces no position"
    );
    assert_eq!(back.opening.text, "retry: 3000\n\n");
    expect_numbered(&mut back.events, "r", 2..5).await;
    push_numbered(&app, "resumer", "r", 5..6).await;
    expect_numbered(&mut back.events, "r", 5..6).await;
    assert_quiet(&mut back.events, QUIET).await;
    let metrics = app.metrics().await;
    assert_eq!(metrics["events_replayed_total"], 3, "{metrics}");
}

#[tokio::test]
async fn the_last_event_id_query_parameter_resumes_too() {
    let app = spawn_app(&[]).await;
    push_numbered(&app, "by-query", "q", 0..4).await;
    let mut back = resume_sse(&app, "user_id=by-query&last_event_id=q-1", &[]).await;
    assert_eq!(back.opening.id, None);
    expect_numbered(&mut back.events, "q", 2..4).await;
    assert_quiet(&mut back.events, QUIET).await;
}

#[tokio::test]
async fn the_last_event_id_header_wins_over_the_query_parameter() {
    let app = spawn_app(&[]).await;
    push_numbered(&app, "both", "h", 0..4).await;
    let mut back = resume_sse(
        &app,
        "user_id=both&last_event_id=h-0",
        &[("Last-Event-ID", "h-2")],
    )
    .await;
    expect_numbered(&mut back.events, "h", 3..4).await;
    assert_quiet(&mut back.events, QUIET).await;

    // An unknown id in the query does not matter when the header is known.
    let mut again = resume_sse(
        &app,
        "user_id=both&last_event_id=nonsense",
        &[("Last-Event-ID", "h-3")],
    )
    .await;
    assert_quiet(&mut again.events, QUIET).await;
}

#[tokio::test]
async fn an_unknown_last_event_id_gets_a_resync_event_carrying_a_position_token() {
    let app = spawn_app(&[]).await;
    push_numbered(&app, "lost", "l", 0..2).await;
    let mut client = resume_sse(&app, "user_id=lost", &[("Last-Event-ID", "gone")]).await;
    let (event, json) = next_data(&mut client.events).await;
    assert_eq!(event.event, "resync", "{json}");
    assert_eq!(json["event_type"], "resync", "{json}");
    assert_eq!(json["data"]["reason"], "unknown_event_id", "{json}");
    assert_eq!(json["data"]["last_event_id"], "gone", "{json}");
    let (epoch, position) = position_token(&event.id);
    assert_eq!(position, 2, "the head after two events");
    assert_eq!(json["event_id"], event.id, "{json}");
    assert_eq!(json["data"]["epoch"], epoch, "{json}");
    assert_eq!(json["data"]["position"], 2, "{json}");

    // Live events follow; resuming from the resync's id replays what came after it.
    push_numbered(&app, "lost", "l", 2..3).await;
    expect_numbered(&mut client.events, "l", 2..3).await;
    drop(client);
    wait_for_sse_connections(&app, 0).await;
    push_numbered(&app, "lost", "l", 3..4).await;
    let mut back = resume_sse(&app, "user_id=lost", &[("Last-Event-ID", &event.id)]).await;
    expect_numbered(&mut back.events, "l", 2..4).await;
    assert_quiet(&mut back.events, QUIET).await;
}

#[tokio::test]
async fn resuming_from_the_opening_id_replays_everything_pushed_in_between() {
    let app = spawn_app(&[]).await;
    // Events from before the stream opened are not replayed.
    push_numbered(&app, "between", "b", 0..2).await;
    let first = connect_sse(&app, "between").await;
    let token = first
        .opening
        .id
        .clone()
        .expect("a fresh stream announces its position");
    assert_eq!(position_token(&token).1, 2);
    drop(first);
    wait_for_sse_connections(&app, 0).await;
    push_numbered(&app, "between", "b", 2..5).await;

    let mut back = resume_sse(&app, "user_id=between", &[("Last-Event-ID", &token)]).await;
    expect_numbered(&mut back.events, "b", 2..5).await;
    assert_quiet(&mut back.events, QUIET).await;
}

#[tokio::test]
async fn a_push_while_offline_is_stored_and_delivered_when_the_client_resumes() {
    let app = spawn_app(&[]).await;
    // A user who never had an event: the opening position is the one to resume from.
    let first = connect_sse(&app, "away").await;
    let token = first.opening.id.clone().expect("opening id");
    drop(first);
    wait_for_sse_connections(&app, 0).await;

    let response = app
        .push(json!({"user_id": "away", "data": {"while": "away"}}))
        .await;
    assert_eq!(response["status"], "partial", "{response}");
    assert_eq!(response["stored"], true, "{response}");
    assert_eq!(response["delivered"], 0, "{response}");

    let mut back = resume_sse(&app, "user_id=away", &[("Last-Event-ID", &token)]).await;
    let (event, json) = next_data(&mut back.events).await;
    assert_eq!(event.id, response["event_id"].as_str().unwrap());
    assert_eq!(json["data"], json!({"while": "away"}));
    assert_quiet(&mut back.events, QUIET).await;
}

#[tokio::test]
async fn sse_and_websocket_clients_are_counted_by_transport_and_both_receive_a_push() {
    let app = spawn_app(&[]).await;
    let mut ws = app.connect("both-ways").await;
    let mut sse = connect_sse(&app, "both-ways").await;
    let body = app.health().await;
    assert_eq!(body["connections"], 2, "{body}");
    assert_eq!(body["websocket_connections"], 1, "{body}");
    assert_eq!(body["sse_connections"], 1, "{body}");
    assert_eq!(body["users"], 1, "{body}");
    let metrics = app.metrics().await;
    assert_eq!(metrics["active_connections"], 2, "{metrics}");
    assert_eq!(
        metrics["connections_by_transport"],
        json!({"websocket": 1, "sse": 1})
    );

    let response = app
        .push(json!({"user_id": "both-ways", "data": {"to": "all"}}))
        .await;
    assert_eq!(response["status"], "success", "{response}");
    assert_eq!(response["delivered"], 2, "{response}");
    let (_, json) = next_data(&mut sse.events).await;
    assert_eq!(json["data"], json!({"to": "all"}));
    let frame: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(frame, json);

    // The client going away is noticed without any write to it.
    drop(sse);
    let metrics = app
        .wait_for_metrics("the SSE client to be gone", |m| {
            m["connections_by_transport"]["sse"] == 0
        })
        .await;
    assert_eq!(metrics["active_connections"], 1, "{metrics}");
    assert_eq!(
        metrics["connections_closed_total"]["client_closed"], 1,
        "{metrics}"
    );
    assert_eq!(app.health().await["sse_connections"], 0);
}

#[tokio::test]
async fn a_missing_or_invalid_user_id_or_resume_point_is_a_400_with_a_detail() {
    let app = spawn_app(&[]).await;
    for query in [
        "",
        "other=1",
        "user_id=",
        "user_id=a%0Ab",
        "user_id=u&last_event_id=%0A",
    ] {
        let response = app.sse_stream(query, &[]).await;
        assert_eq!(response.status(), 400, "{query:?}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{query:?}"
        );
        let body: Value = response.json().await.expect("JSON body");
        assert!(body.get("detail").is_some(), "{query:?}: {body}");
    }
    let response = app.sse_stream("", &[]).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["detail"][0]["loc"],
        json!(["query", "user_id"]),
        "{body}"
    );
    assert_eq!(body["detail"][0]["type"], "missing", "{body}");
    let metrics = app.metrics().await;
    assert_eq!(metrics["connections_refused_total"]["bad_request"], 6);
    assert_eq!(metrics["active_connections"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_new_streams_are_told_to_come_back_later() {
    let app = spawn_app(&["--shutdown-drain", "2", "--shutdown-timeout", "5"]).await;
    let mut existing = connect_sse(&app, "staying").await;
    app.lifecycle.begin_shutdown();

    assert_come_back_later(&app, "user_id=latecomer", "shutting down").await;
    let metrics = app.metrics().await;
    assert_eq!(
        metrics["connections_refused_total"]["shutting_down"], 1,
        "{metrics}"
    );
    assert_eq!(metrics["connections_by_transport"]["sse"], 1, "{metrics}");
    // The existing stream is still served during the drain.
    push_numbered(&app, "staying", "d", 0..1).await;
    expect_numbered(&mut existing.events, "d", 0..1).await;
}

#[tokio::test]
async fn a_full_server_tells_new_streams_to_come_back_later() {
    let app = spawn_app(&["--max-connections", "1"]).await;
    let holder = connect_sse(&app, "holder").await;
    assert_come_back_later(&app, "user_id=second", "MAX_CONNECTIONS=1").await;
    let metrics = app.metrics().await;
    assert_eq!(metrics["connections_refused_total"]["server_full"], 1);
    assert_eq!(metrics["active_connections"], 1);

    // The slot is released when the holder goes away.
    drop(holder);
    wait_for_sse_connections(&app, 0).await;
    let second = connect_sse(&app, "second").await;
    assert!(second.opening.id.is_some(), "{:?}", second.opening);
}

#[tokio::test]
async fn the_per_user_limit_tells_the_extra_stream_to_come_back_later() {
    let app = spawn_app(&["--max-connections-per-user", "1"]).await;
    let mut first = connect_sse(&app, "limited").await;
    assert_come_back_later(&app, "user_id=limited", "MAX_CONNECTIONS_PER_USER").await;
    let _other = connect_sse(&app, "unlimited").await;
    let metrics = app.metrics().await;
    assert_eq!(
        metrics["connections_refused_total"]["user_limit"], 1,
        "{metrics}"
    );
    assert_eq!(metrics["active_connections"], 2, "{metrics}");

    let response = app
        .push(json!({"user_id": "limited", "data": {"still": "here"}}))
        .await;
    assert_eq!(response["delivered"], 1, "{response}");
    let (_, json) = next_data(&mut first.events).await;
    assert_eq!(json["data"], json!({"still": "here"}));
}

#[tokio::test]
async fn replace_oldest_ends_the_older_stream_with_a_close_event() {
    let app = spawn_app(&[
        "--max-connections-per-user",
        "1",
        "--user-limit-policy",
        "replace-oldest",
    ])
    .await;
    let mut older = SseReader::open(&app, "user_id=swapped", &[]).await;
    older.opening().await;
    let mut newer = connect_sse(&app, "swapped").await;

    assert_eq!(
        older.read_to_end().await,
        "event: close\ndata: {\"event_type\":\"close\",\"reason\":\"replaced\"}\n\n",
        "a named event the page can act on, with no id (the resume point stays)"
    );
    let response = app
        .push(json!({"user_id": "swapped", "data": {"to": "newer"}}))
        .await;
    assert_eq!(response["delivered"], 1, "{response}");
    let (_, json) = next_data(&mut newer.events).await;
    assert_eq!(json["data"], json!({"to": "newer"}));
    let metrics = app
        .wait_for_metrics("one replaced", |m| {
            m["connections_closed_total"]["replaced"] == 1
        })
        .await;
    assert_eq!(metrics["connections_by_transport"]["sse"], 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_delivers_queued_events_then_ends_the_stream_cleanly() {
    const EVENTS: usize = 500;
    let app = spawn_app(&["--shutdown-timeout", "4", "--max-body-bytes", "8388608"]).await;
    let mut raw = SseReader::open(&app, "user_id=bye", &[]).await;
    raw.opening().await;
    // A backlog larger than the socket buffers, not read yet: most of it is still in the
    // connection's queue when the session is told to close.
    let padding = "x".repeat(8 * 1024);
    let batch: Vec<Value> = (0..EVENTS)
        .map(|n| json!({"user_id": "bye", "event_id": format!("s-{n}"), "data": {"pad": padding}}))
        .collect();
    let (status, response) = app.post_json("/sse/push/batch", &json!(batch)).await;
    assert_eq!(status, 200, "{response}");
    assert!(
        response["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|result| result["delivered"] == 1),
        "{response}"
    );

    let started = Instant::now();
    app.lifecycle.begin_shutdown();
    let rest = raw.read_to_end().await;
    assert!(
        rest.ends_with("\n\n: server shutting down; reconnect\n\n"),
        "{:?}",
        &rest[rest.len().saturating_sub(200)..]
    );
    let events = parse(&rest).await;
    let ids: Vec<&str> = events.iter().map(|event| event.id.as_str()).collect();
    let expected: Vec<String> = (0..EVENTS).map(|n| format!("s-{n}")).collect();
    assert_eq!(
        ids, expected,
        "every queued event, in order, before the end"
    );

    assert_stopped_promptly(app.stopped, started).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_not_read_is_ended_without_delaying_other_users() {
    let app = spawn_app(&SMALL_QUEUES).await;
    // Never read past its headers.
    let _slow = app.sse_stream("user_id=slow", &[]).await;
    let mut healthy = connect_sse(&app, "healthy").await;
    wait_for_sse_connections(&app, 2).await;

    let mut healthy_sent = 0;
    let (_, response) = app
        .push_until_refused("slow", async || {
            check_healthy(&app, &mut healthy.events, healthy_sent).await;
            healthy_sent += 1;
        })
        .await;
    assert!(
        response["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not take it")),
        "{response}"
    );
    for _ in 0..20 {
        check_healthy(&app, &mut healthy.events, healthy_sent).await;
        healthy_sent += 1;
    }

    let metrics = app
        .wait_for_metrics("the slow stream to be ended", |m| {
            m["connections_closed_total"]["slow_consumer"] == 1
                && m["connections_by_transport"]["sse"] == 1
        })
        .await;
    assert_eq!(metrics["users_online"], 1, "{metrics}");
    check_healthy(&app, &mut healthy.events, healthy_sent).await;
}

/// Pushes `{"h": n}` to the healthy user and expects it within a second.
async fn check_healthy(app: &TestApp, events: &mut Events, n: u32) {
    let response = app
        .push(json!({"user_id": "healthy", "data": {"h": n}}))
        .await;
    assert_eq!(response["delivered"], 1, "{response}");
    let (_, json) = timeout(Duration::from_secs(1), next_data(events))
        .await
        .unwrap_or_else(|_| panic!("healthy push {n} took over 1 s"));
    assert_eq!(json["data"], json!({"h": n}));
}

#[tokio::test]
async fn a_cross_origin_stream_request_is_allowed() {
    let app = spawn_app(&[]).await;
    let response = app
        .sse_stream("user_id=cors", &[("Origin", "http://example.com")])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert_eq!(response.headers()["content-type"], "text/event-stream");

    // A fetch-based client resuming cross-origin sends Last-Event-ID: its preflight passes.
    let preflight = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            app.url("/sse/stream?user_id=cors"),
        )
        .header("Origin", "http://example.com")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "last-event-id")
        .send()
        .await
        .expect("request");
    assert_eq!(preflight.status(), 200);
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(headers["access-control-allow-methods"], "GET");
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("last-event-id"),
        "{headers:?}"
    );
}

#[tokio::test]
async fn a_quiet_stream_outlives_the_http_request_timeout() {
    // The head timeout is for request heads; it must not cut a response that is still streaming.
    const HEAD_TIMEOUT: Duration = Duration::from_millis(200);
    let app = spawn_app(&[
        "--http-request-timeout",
        &HEAD_TIMEOUT.as_secs_f64().to_string(),
    ])
    .await;
    let mut client = connect_sse(&app, "patient").await;
    assert_quiet(&mut client.events, HEAD_TIMEOUT * 3).await;
    assert_eq!(app.health().await["sse_connections"], 1);
    push_numbered(&app, "patient", "p", 0..1).await;
    expect_numbered(&mut client.events, "p", 0..1).await;
}

#[tokio::test]
async fn fresh_streams_do_not_lift_history_over_history_max_users() {
    let app = spawn_app(&["--history-max-users", "2"]).await;
    for n in 0..200 {
        drop(connect_sse(&app, &format!("cap-{n}")).await);
    }
    wait_for_sse_connections(&app, 0).await;
    for n in 0..200 {
        push_numbered(&app, &format!("cap-{n}"), "e", 0..3).await;
    }
    let metrics = app.metrics().await;
    assert_eq!(metrics["history_users"], 2, "{metrics}");
    assert_eq!(metrics["history_events"], 6, "{metrics}");
}

/// A stream whose body is never read (a `HEAD` request: hyper drops the body unpolled) still
/// counts its connection as opened and closed, and unregisters it.
#[tokio::test]
async fn a_stream_dropped_before_its_first_chunk_is_counted_and_unregistered() {
    let app = spawn_app(&[]).await;
    let reply = app
        .request(
            reqwest::Method::HEAD,
            "/sse/stream?user_id=ghost",
            &[],
            None,
        )
        .await;
    assert_eq!(reply.status, 200);
    app.wait_for_connections(0).await;
    let metrics = app
        .wait_for_metrics("the close counted", |m| {
            m["connections_closed_total"]["client_closed"] == 1
        })
        .await;
    assert_eq!(metrics["connections_opened_total"], 1, "{metrics}");
}
