//! The official JavaScript client (`clients/js/push-client.js`) end-to-end: imported from the
//! server's `/client.js` by the page of `browser/reconnect.rs` (another origin), in headless
//! Chromium, against the server in this process, with a [`Proxy`] between them that cuts
//! connections, moves to a restarted server, or breaks WebSockets. Every push must reach the app
//! once, in order, whatever happens to the connection, within the history; a restart that lost
//! the history must be reported as a `resync`; a refusal that will not heal must stop it.

use super::proxy::Proxy;
use super::reconnect::{
    AT_ONCE, ExamplePage, RECONNECT_SCRIPT_TIMEOUT_MS, SECRET, assert_no_resync,
    assert_received_once_in_order, assert_resumed_after, entries, finish, is_page_event,
    push_across_expiries, run_across_expiries, stopped_after_one_attempt,
};
use super::*;

/// What the page runs to use the official client (`clients/js/`), imported from the server's
/// `/client.js` as any page would: the page's app functions wired to the client's events, and
/// each of its states recorded, and when it first knows its position. `?user=` (optional) names a user other than the token's;
/// `?transport=` is the client's (default `websocket`).
pub(super) const PUSH_CLIENT_GLUE: &str = r#"
const user = params.get('user');
import(`${PUSH_URL}/client.js`).then(({ PushClient }) => {
  const client = new PushClient(PUSH_URL, {
    token: fetchToken,
    userId: user ?? undefined,
    transport: params.get('transport') ?? 'websocket',
    reconnect: { initialDelayMs: 200, maxDelayMs: 1000 },
  });
  client.addEventListener('message', ({ detail }) => handle(detail));
  client.addEventListener('resync', () => reloadStateFromYourBackend());
  client.addEventListener('state', ({ detail }) => {
    const waiting = detail.delayMs !== undefined;
    record({ kind: 'state', state: detail.state, cause: detail.cause, waiting, transport: client.transport });
  });
  client.addEventListener('error', ({ detail }) => {
    if (detail.final) reportStopped(detail.error.message);
  });
  // Once the client knows where its stream stands (a position, or an event), say so.
  let positioned = false;
  client.addEventListener('frame', () => queueMicrotask(() => {
    if (positioned || !client.lastEventId) return;
    positioned = true;
    record({ kind: 'positioned', last_event_id: client.lastEventId });
  }));
  client.connect();
}, (error) => reportStopped(`import failed: ${error}`));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_renews_each_expired_token_and_resumes_without_gap_or_duplicate() {
    let Some(chromium) = browser_tools() else {
        return;
    };
    let page = ExamplePage::serve("push-client", &[]).await;
    let (app, pushed, log) = run_across_expiries(&chromium, &page).await;

    assert_received_once_in_order(&log, &pushed);
    let closes = entries(&log, "close");
    assert!(closes.len() >= 2, "{} expiries: {log:?}", closes.len());
    for close in &closes {
        assert_eq!(
            close["code"], 4001,
            "only expiries end its connections: {close}"
        );
    }
    assert_resumed_after(&log, &|entry| entry["kind"] == "close", Some(AT_ONCE));
    assert!(entries(&log, "stopped").is_empty(), "{log:?}");
    assert_no_resync(&app.metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_stops_on_a_refusal_that_will_not_heal() {
    let Some(chromium) = browser_tools() else {
        return;
    };
    let page = ExamplePage::serve("push-client", &[]).await;
    let app = helpers::spawn_app(&["--jwt-secret", SECRET, "--cors-origins", &page.origin]).await;
    let browser = page.open_with(&chromium, &app.url(""), &[("user", "someone-else")]);
    stopped_after_one_attempt(browser, "user_id does not match").await;
    assert_eq!(app.metrics().await["active_connections"], 0);
}

/// Tokens that outlive a test: only what the test does may end a connection.
const LONG_LIVED: [i64; 8] = [60; 8];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_resumes_over_websocket_after_the_network_cuts_the_connection() {
    resumes_after_the_network_cuts_the_connection("websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_resumes_over_sse_after_the_network_cuts_the_connection() {
    resumes_after_the_network_cuts_the_connection("sse").await;
}

/// Over `transport`, twice: the connection cut (both sockets dropped, no close handshake) and
/// events pushed meanwhile, then one live. The first cut comes before any event: the client
/// resumes from the position the server told it when it connected. The app gets every event
/// once, in order, each reconnection resuming from the last event it had.
async fn resumes_after_the_network_cuts_the_connection(transport: &str) {
    let Some(chromium) = browser_tools() else {
        return;
    };
    let page = ExamplePage::serve("push-client", &LONG_LIVED).await;
    let app = helpers::spawn_app(&["--jwt-secret", SECRET, "--cors-origins", &page.origin]).await;
    let proxy = Proxy::start(app.addr).await;
    let mut browser = page.open_with(&chromium, &proxy.url(), &[("transport", transport)]);
    opened(&mut browser).await;
    let mut pushed = Vec::new();
    for _ in 0..2 {
        proxy.cut();
        browser
            .wait_for("the client to notice the cut", is_waiting)
            .await;
        for _ in 0..2 {
            let n = pushed.len();
            pushed.push(push(&app.http, &app.url(""), "message", json!({"n": n})).await);
        }
        let missed = pushed.last().expect("pushes")["event_id"].clone();
        browser
            .wait_for("the missed events", |line| is_page_event(line, &missed))
            .await;
        pushed.push(push_and_see(&mut browser, &app, pushed.len()).await);
    }
    let log = finish(browser).await;

    assert_received_once_in_order(&log, &pushed);
    let waits: Vec<&Value> = log.iter().filter(|entry| is_waiting(entry)).collect();
    assert_eq!(waits.len(), 2, "two reconnections: {log:?}");
    assert!(
        waits.iter().all(|wait| wait["cause"] == "network"),
        "{log:?}"
    );
    // Before its first event, the client resumed from the position it was told.
    let connects = entries(&log, "connect");
    assert!(
        connects[1]["url"]
            .as_str()
            .is_some_and(|url| url.contains("last_event_id=")),
        "{log:?}"
    );
    let first_event = log.iter().position(|entry| entry["kind"] == "event");
    assert_resumed_after(&log[first_event.unwrap_or(0)..], &is_waiting, None);
    assert!(
        entries(&log, "state")
            .iter()
            .all(|state| state["transport"] == transport),
        "{log:?}"
    );
    assert_no_resync(&app.metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_falls_back_to_sse_when_a_proxy_breaks_websockets() {
    let Some(chromium) = browser_tools() else {
        return;
    };
    let page = ExamplePage::serve("push-client", &LONG_LIVED).await;
    let app = helpers::spawn_app(&["--jwt-secret", SECRET, "--cors-origins", &page.origin]).await;
    let proxy = Proxy::start(app.addr).await;
    proxy.block_websocket(true);
    let mut browser = page.open_with(&chromium, &proxy.url(), &[("transport", "auto")]);
    let open = opened(&mut browser).await;
    let event = push_and_see(&mut browser, &app, 1).await;
    let metrics = app.metrics().await;
    assert_eq!(metrics["connections_by_transport"]["sse"], 1, "{metrics}");
    let log = finish(browser).await;

    assert_received_once_in_order(&log, &[event]);
    let connects = entries(&log, "connect");
    let urls: Vec<&str> = connects
        .iter()
        .map(|connect| connect["url"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(urls.len(), 2, "one WebSocket attempt, then SSE: {urls:?}");
    assert!(urls[0].starts_with("ws://"), "{urls:?}");
    assert!(urls[1].contains("/sse/stream"), "{urls:?}");
    assert_eq!(open["transport"], "sse", "{open}");
    assert!(entries(&log, "stopped").is_empty(), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_reports_a_resync_when_a_restarted_server_lost_the_history() {
    let Some(chromium) = browser_tools() else {
        return;
    };
    let page = ExamplePage::serve("push-client", &LONG_LIVED).await;
    let flags = ["--jwt-secret", SECRET, "--cors-origins", &page.origin];
    let before = helpers::spawn_app(&flags).await;
    let proxy = Proxy::start(before.addr).await;
    let mut browser = page.open_with(&chromium, &proxy.url(), &[]);
    opened(&mut browser).await;
    let first = push_and_see(&mut browser, &before, 1).await;

    // A restart: the new server takes the address, the old one shuts down (closing with 1001).
    let after = helpers::spawn_app(&flags).await;
    proxy.redirect(after.addr);
    before.lifecycle.begin_shutdown();
    browser
        .wait_for("the resync", |line| line["kind"] == "resync")
        .await;
    let next = push_and_see(&mut browser, &after, 2).await;
    let log = finish(browser).await;

    let events: Vec<&Value> = entries(&log, "event");
    assert_eq!(events.len(), 2, "{log:?}");
    assert_eq!(events[0]["event"]["event_id"], first["event_id"]);
    assert_eq!(events[1]["event"]["event_id"], next["event_id"]);
    assert_eq!(entries(&log, "resync").len(), 1, "{log:?}");
    let resync_at = log.iter().position(|entry| entry["kind"] == "resync");
    let next_at = log
        .iter()
        .position(|entry| is_page_event(entry, &next["event_id"]));
    assert!(resync_at < next_at, "the resync comes first: {log:?}");
    let closes = entries(&log, "close");
    assert_eq!(closes.len(), 1, "{log:?}");
    assert_eq!(closes[0]["code"], 1001, "{log:?}");
    assert_resumed_after(&log, &|entry| entry["kind"] == "close", None);
    let metrics = after.metrics().await;
    assert_eq!(metrics["resyncs_total"]["unknown_event_id"], 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_runs_in_node_22_over_both_transports_across_token_expiries() {
    let Some(node) = node_22() else {
        return;
    };
    for transport in ["websocket", "sse"] {
        let page = ExamplePage::serve("push-client", &[]).await;
        let app = helpers::spawn_app(&["--jwt-secret", SECRET]).await;
        let server = app.url("");
        let token_url = page.token_url();
        let mut runner = Browser::spawn_with(
            &node,
            Path::new("chromium-is-not-used"),
            "node-client.mjs",
            &[&server, &token_url, transport],
            RECONNECT_SCRIPT_TIMEOUT_MS,
        );
        let pushed = push_across_expiries(&mut runner, &app).await;
        let result = runner.finish().await;
        let log = result["log"]
            .as_array()
            .expect("the client's record")
            .clone();

        let major = result["node"]
            .as_str()
            .and_then(|version| version.trim_start_matches('v').split('.').next())
            .and_then(|major| major.parse::<u32>().ok());
        assert!(major >= Some(22), "{transport}: {}", result["node"]);
        assert_received_once_in_order(&log, &pushed);
        let closes = entries(&log, "close");
        assert!(closes.len() >= 2, "{transport}: {closes:?}");
        assert!(
            closes.iter().all(|close| close["cause"] == "token_expired"),
            "{transport}: {closes:?}"
        );
        assert!(
            entries(&log, "connect")
                .iter()
                .all(|connect| connect["transport"] == transport),
            "{transport}: {log:?}"
        );
        assert_resumed_after(&log, &|entry| entry["kind"] == "close", Some(AT_ONCE));
        assert_no_resync(&app.metrics().await);
    }
}

/// Waits for the client's first open state and then for it to know its stream's position (from
/// then on a cut loses nothing); returns the open state.
async fn opened(browser: &mut Browser) -> Value {
    let open = browser
        .wait_for_within(STARTUP, "the client to open", |line| {
            line["kind"] == "state" && line["state"] == "open"
        })
        .await;
    browser
        .wait_for("the client to know its position", |line| {
            line["kind"] == "positioned"
        })
        .await;
    open
}

/// Pushes `{"n": n}` to the page's user and waits for the page to have it; returns the push.
async fn push_and_see(browser: &mut Browser, app: &helpers::TestApp, n: usize) -> Value {
    let event = push(&app.http, &app.url(""), "message", json!({"n": n})).await;
    browser
        .wait_for("the event", |line| is_page_event(line, &event["event_id"]))
        .await;
    event
}

/// Whether `entry` is the client waiting to reconnect after a connection ended.
fn is_waiting(entry: &Value) -> bool {
    entry["kind"] == "state" && entry["state"] == "reconnecting" && entry["waiting"] == true
}
