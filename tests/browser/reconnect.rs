//! The documented reconnecting clients, `docs/examples/websocket-reconnect.js` and
//! `docs/examples/eventsource-reconnect.js` (shown verbatim in `docs/clients.md`, which
//! `tests/api/doc_examples.rs` checks), run unchanged in headless Chromium by `reconnect.mjs`
//! against the server in this process. The page (`reconnect.html`) comes from another loopback
//! origin, whose `GET /token` mints the subscriber tokens the examples fetch, with lifetimes of a
//! few seconds: events pushed across several expiries must each arrive once, in order, every
//! reconnect resuming from the last event with a fresh token. A refusal that retrying cannot fix
//! (4403) must be reported after one attempt; a 4429 must be waited out as its reason says. The
//! official client (`clients/js/`) runs on the same page, held to the same rules and more:
//! `browser/push_client.rs`.

use std::collections::VecDeque;

use reqwest::Url;

use super::*;

/// The HS256 secret of these tests' servers and tokens.
pub(super) const SECRET: &str = "reconnect-test-jwt-secret-0123456789abcdef";
/// The lifetime of the page's tokens, in whole seconds of `exp`: they live 2 to 3 s.
pub(super) const TOKEN_LIFETIME_SECS: i64 = 3;
/// How long events are pushed for: long enough for at least two expiries of a token.
const PUSHING: Duration = Duration::from_secs(8);
/// The pause between two pushes.
const PUSH_EVERY: Duration = Duration::from_millis(250);
/// Longest time from an expiry to the next attempt for it to count as "at once".
pub(super) const AT_ONCE: Duration = Duration::from_millis(250);
/// How long a client that stopped is watched for a retry it should not make (the examples' first
/// backoff is at most 1 s).
const NO_RETRY_WATCH: Duration = Duration::from_millis(2500);
/// The Node script's own overall timeout, in milliseconds.
pub(super) const RECONNECT_SCRIPT_TIMEOUT_MS: &str = "45000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_example_renews_each_expired_token_and_resumes_without_gap_or_duplicate() {
    let Some(chromium) = browser_tools() else {
        return;
    };
    let page = ExamplePage::serve("websocket-reconnect", &[]).await;
    let (app, pushed, log) = run_across_expiries(&chromium, &page).await;

    assert_received_once_in_order(&log, &pushed);
    let closes = entries(&log, "close");
    for close in &closes {
        assert_eq!(
            (&close["code"], &close["reason"]),
            (&json!(4001), &json!("token expired")),
            "only expiries end its connections: {close}"
        );
    }
    assert!(
        closes.len() >= 2,
        "{} expiries in {PUSHING:?}",
        closes.len()
    );
    assert_resumed_after(&log, &|entry| entry["kind"] == "close", Some(AT_ONCE));
    assert!(entries(&log, "stopped").is_empty(), "{log:?}");

    let metrics = app.metrics().await;
    assert!(
        metrics["connections_closed_total"]["token_expired"]
            .as_u64()
            .is_some_and(|n| n >= closes.len() as u64),
        "{metrics}"
    );
    assert_no_resync(&metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_example_reports_a_forbidden_origin_after_one_attempt() {
    let Some(chromium) = browser_tools() else {
        return;
    };
    let page = ExamplePage::serve("websocket-reconnect", &[]).await;
    let app = helpers::spawn_app(&[
        "--jwt-secret",
        SECRET,
        "--cors-origins",
        "https://app.example.com",
    ])
    .await;
    let browser = page.open(&chromium, &app.url(""));
    let log = stopped_after_one_attempt(browser, "4403 origin").await;
    assert_eq!(entries(&log, "token").len(), 1, "{log:?}");
    let closes = entries(&log, "close");
    assert_eq!(closes.len(), 1, "{log:?}");
    assert_eq!(closes[0]["code"], 4403, "{log:?}");
    let metrics = app.metrics().await;
    assert_eq!(
        metrics["connections_refused_total"]["forbidden"], 1,
        "{metrics}"
    );
    assert_eq!(metrics["active_connections"], 0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_example_waits_as_long_as_a_4429_says_then_connects() {
    let Some(chromium) = browser_tools() else {
        return;
    };
    // Tokens that outlive the test: only the rate limit may end a connection here.
    let page = ExamplePage::serve("websocket-reconnect", &[60; 8]).await;
    let app = helpers::spawn_app(&[
        "--jwt-secret",
        SECRET,
        "--cors-origins",
        &page.origin,
        "--connect-rate-per-ip",
        "1",
    ])
    .await;
    let server = app.url("");
    // Spend this loopback address's connection attempts until the example's first one is refused.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let hammer = tokio::spawn(spend_connect_attempts(
        app.http.clone(),
        server.clone(),
        stopped,
    ));
    let mut browser = page.open(&chromium, &server);
    browser
        .wait_for_within(STARTUP, "the first attempt's close", |line| {
            line["kind"] == "close" && line["n"] == 1
        })
        .await;
    let _ = stop.send(());
    hammer.await.expect("the attempts task ends");
    app.wait_for_metrics("the example's connection", |metrics| {
        metrics["active_connections"] == 1
    })
    .await;
    let event = push(&app.http, &server, "message", json!({"after": "the wait"})).await;
    browser
        .wait_for("the event", |line| is_page_event(line, &event["event_id"]))
        .await;
    let log = finish(browser).await;

    assert_received_once_in_order(&log, &[event]);
    let closes = entries(&log, "close");
    let connects = entries(&log, "connect");
    assert!(!closes.is_empty(), "{log:?}");
    assert_eq!(connects.len(), closes.len() + 1, "{log:?}");
    assert!(connects.len() <= 5, "a few attempts at most: {log:?}");
    assert_eq!(entries(&log, "token").len(), connects.len(), "{log:?}");
    for (close, next) in closes.iter().zip(&connects[1..]) {
        assert_eq!(close["code"], 4429, "{close}");
        let reason = close["reason"].as_str().unwrap_or_default();
        let seconds: u64 = reason
            .strip_prefix("too many connection attempts; retry after ")
            .and_then(|rest| rest.strip_suffix(" s"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a 4429 reason with the wait: {close}"));
        let waited = ms(next) - ms(close);
        assert!(
            waited + 1 >= seconds * 1000,
            "retried {waited} ms after being told to wait {seconds} s"
        );
    }
    assert!(entries(&log, "stopped").is_empty(), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventsource_example_reopens_on_token_expiry_and_after_the_browser_gives_up() {
    let Some(chromium) = browser_tools() else {
        return;
    };
    // The third token is expired when handed out: that stream gets 401 and the browser gives up,
    // as one does that comes back after its token expired offline.
    let page = ExamplePage::serve(
        "eventsource-reconnect",
        &[TOKEN_LIFETIME_SECS, TOKEN_LIFETIME_SECS, -10],
    )
    .await;
    let (app, pushed, log) = run_across_expiries(&chromium, &page).await;

    assert_received_once_in_order(&log, &pushed);
    let expiries = entries(&log, "close");
    assert!(expiries.len() >= 2, "{} expiries: {log:?}", expiries.len());
    for close in &expiries {
        assert_eq!(
            close["data"], r#"{"event_type":"close","reason":"token_expired"}"#,
            "{close}"
        );
    }
    let gave_up: Vec<&Value> = entries(&log, "error")
        .into_iter()
        .filter(|error| error["ready_state"] == 2)
        .collect();
    assert_eq!(gave_up.len(), 1, "the one refused stream: {log:?}");
    assert_resumed_after(&log, &|entry| entry["kind"] == "close", Some(AT_ONCE));
    assert_resumed_after(
        &log,
        &|entry| entry["kind"] == "error" && entry["ready_state"] == 2,
        None,
    );
    assert!(entries(&log, "stopped").is_empty(), "{log:?}");

    let metrics = app.metrics().await;
    assert_eq!(
        metrics["connections_refused_total"]["token_expired"], 1,
        "{metrics}"
    );
    assert_no_resync(&metrics);
}

/// The page's server for one example: `reconnect.html`, the example files and `GET /token`.
pub(super) struct ExamplePage {
    /// Its origin, `http://127.0.0.1:<port>` (no slash).
    pub(super) origin: String,
    /// Its base URL, with the slash.
    base: String,
    /// The file the page loads, without `.js`.
    example: &'static str,
}

impl ExamplePage {
    /// Serves the page for `example`; `/token` gives tokens for [`USER`] with the `lifetimes`
    /// (seconds) in turn, then [`TOKEN_LIFETIME_SECS`].
    pub(super) async fn serve(example: &'static str, lifetimes: &[i64]) -> Self {
        use axum::http::{StatusCode, header};
        use axum::response::Html;
        use axum::routing::get;

        let lifetimes = Arc::new(Mutex::new(
            lifetimes.iter().copied().collect::<VecDeque<_>>(),
        ));
        let token = move || {
            let lifetime = lifetimes
                .lock()
                .expect("lifetimes lock")
                .pop_front()
                .unwrap_or(TOKEN_LIFETIME_SECS);
            async move {
                (
                    [(header::CACHE_CONTROL, "no-store")],
                    subscriber_token(SECRET, USER, lifetime),
                )
            }
        };
        let script = |text: &'static str| {
            get(move || async move { ([(header::CONTENT_TYPE, "text/javascript")], text) })
        };
        let routes = axum::Router::new()
            .route("/", get(|| async { Html(include_str!("reconnect.html")) }))
            .route(
                "/examples/websocket-reconnect.js",
                script(include_str!("../../docs/examples/websocket-reconnect.js")),
            )
            .route(
                "/examples/eventsource-reconnect.js",
                script(include_str!("../../docs/examples/eventsource-reconnect.js")),
            )
            .route(
                "/examples/push-client.js",
                script(super::push_client::PUSH_CLIENT_GLUE),
            )
            .route("/token", get(token))
            .fallback(|| async { StatusCode::NOT_FOUND });
        let base = serve_pages(routes).await;
        Self {
            origin: base.trim_end_matches('/').to_owned(),
            base,
            example,
        }
    }

    /// Where the page hands out tokens.
    pub(super) fn token_url(&self) -> String {
        format!("{}token", self.base)
    }

    /// Starts the browser on the page, which loads the example against `server` at once.
    pub(super) fn open(&self, chromium: &Path, server: &str) -> Browser {
        self.open_with(chromium, server, &[])
    }

    /// [`Self::open`] with more query parameters for the page.
    pub(super) fn open_with(
        &self,
        chromium: &Path,
        server: &str,
        query: &[(&str, &str)],
    ) -> Browser {
        let mut url = Url::parse(&self.base).expect("page URL");
        url.query_pairs_mut()
            .append_pair("server", server)
            .append_pair("example", self.example)
            .extend_pairs(query);
        Browser::spawn(
            chromium,
            "reconnect.mjs",
            &[url.as_str()],
            RECONNECT_SCRIPT_TIMEOUT_MS,
        )
    }
}

/// Runs `page`'s example against a server that accepts its origin and tokens while events are
/// pushed across several token expiries: the server, the events pushed, and the page's log.
pub(super) async fn run_across_expiries(
    chromium: &Path,
    page: &ExamplePage,
) -> (helpers::TestApp, Vec<Value>, Vec<Value>) {
    let app = helpers::spawn_app(&["--jwt-secret", SECRET, "--cors-origins", &page.origin]).await;
    let server = app.url("");
    let mut browser = page.open(chromium, &server);
    let pushed = push_across_expiries(&mut browser, &app).await;
    let log = finish(browser).await;
    (app, pushed, log)
}

/// Waits for the example's first connection and pushes one event to it, then pushes an event
/// every [`PUSH_EVERY`] for [`PUSHING`], across token expiries, and waits until the page has the
/// last one; returns the pushes, in order.
pub(super) async fn push_across_expiries(
    browser: &mut Browser,
    app: &helpers::TestApp,
) -> Vec<Value> {
    let (http, server) = (&app.http, &app.url(""));
    browser
        .wait_for_within(STARTUP, "the first connection", |line| {
            line["kind"] == "open"
        })
        .await;
    // Sent while its first connection is surely up (its token lives 2 s at least): from then on
    // the example has an event to resume from.
    let first = push(http, server, "message", json!({"n": 0})).await;
    browser
        .wait_for("the first event", |line| {
            is_page_event(line, &first["event_id"])
        })
        .await;
    let mut pushed = vec![first];
    let until = Instant::now() + PUSHING;
    while Instant::now() < until {
        tokio::time::sleep(PUSH_EVERY).await;
        pushed.push(push(http, server, "message", json!({"n": pushed.len()})).await);
    }
    let last = pushed.last().expect("pushes")["event_id"].clone();
    browser
        .wait_for("the last event", |line| is_page_event(line, &last))
        .await;
    pushed
}

/// Until `stop` fires (or 30 s pass), makes a connection attempt without a token every 50 ms, so
/// that `CONNECT_RATE_PER_IP` refuses the browser's on the same loopback address.
async fn spend_connect_attempts(
    http: reqwest::Client,
    server: String,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = http.get(format!("{server}/sse/stream")).send();
        let _ = tokio::time::timeout(STEP, attempt).await;
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep_until(deadline) => return,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// Waits for the page to report that its client stopped, with a reason starting with `why`,
/// watches a while for a retry it must not make, and checks it made one attempt only; returns
/// the page's record.
pub(super) async fn stopped_after_one_attempt(mut browser: Browser, why: &str) -> Vec<Value> {
    let stopped = browser
        .wait_for_within(STARTUP, "the client to stop", |line| {
            line["kind"] == "stopped"
        })
        .await;
    tokio::time::sleep(NO_RETRY_WATCH).await;
    let log = finish(browser).await;
    assert!(
        stopped["why"]
            .as_str()
            .is_some_and(|reason| reason.starts_with(why)),
        "{stopped}"
    );
    assert_eq!(entries(&log, "connect").len(), 1, "one attempt: {log:?}");
    log
}

/// Tells the script to finish; checks the page threw nothing; returns the page's record.
pub(super) async fn finish(browser: Browser) -> Vec<Value> {
    let result = browser.finish().await;
    assert_eq!(result["ok"], true, "the page failed: {result}");
    result["log"].as_array().expect("the page's record").clone()
}

/// The page's records of one kind, in order.
pub(super) fn entries<'a>(log: &'a [Value], kind: &str) -> Vec<&'a Value> {
    log.iter().filter(|entry| entry["kind"] == kind).collect()
}

/// Whether `line` is the page's record of receiving the event `event_id`.
pub(super) fn is_page_event(line: &Value, event_id: &Value) -> bool {
    line["kind"] == "event" && line["event"]["event_id"] == *event_id
}

/// When the page made the record `entry`, in milliseconds since it loaded.
pub(super) fn ms(entry: &Value) -> u64 {
    entry["at_ms"].as_u64().expect("at_ms")
}

/// The page handed each push to the app once, in push order, as pushed.
pub(super) fn assert_received_once_in_order(log: &[Value], pushed: &[Value]) {
    let received: Vec<&Value> = entries(log, "event")
        .into_iter()
        .map(|entry| &entry["event"])
        .collect();
    let ids = |events: &[&Value]| -> Vec<String> {
        events
            .iter()
            .map(|event| event["event_id"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    assert_eq!(
        ids(&received),
        ids(&pushed.iter().collect::<Vec<_>>()),
        "the page's events against the pushes"
    );
    for (got, sent) in received.iter().zip(pushed) {
        assert_eq!(got["user_id"], USER, "{got}");
        assert_eq!(got["data"], sent["_data"], "{got}");
    }
    assert!(entries(log, "resync").is_empty(), "{log:?}");
}

/// After each record that `ended` matches (except one that ends the record), the example fetched
/// a token and then opened its next connection, resuming from the last event the page had then;
/// within `within` when given.
pub(super) fn assert_resumed_after(
    log: &[Value],
    ended: &dyn Fn(&Value) -> bool,
    within: Option<Duration>,
) {
    let mut last_event: Option<&Value> = None;
    for (at, entry) in log.iter().enumerate() {
        if entry["kind"] == "event" {
            last_event = Some(&entry["event"]["event_id"]);
        }
        if !ended(entry) {
            continue;
        }
        let rest = &log[at + 1..];
        let Some(next) = rest.iter().position(|e| e["kind"] == "connect") else {
            assert!(
                rest.iter().all(|e| e["kind"] != "event"),
                "events after the end of the last connection: {log:?}"
            );
            continue;
        };
        assert!(
            rest[..next].iter().any(|e| e["kind"] == "token"),
            "a fresh token before the attempt after {entry}"
        );
        let connect = &rest[next];
        let url = Url::parse(connect["url"].as_str().expect("url")).expect("a URL");
        let resumed_from = url
            .query_pairs()
            .find(|(name, _)| name == "last_event_id")
            .map(|(_, value)| json!(value));
        assert_eq!(
            resumed_from.as_ref(),
            last_event,
            "{connect} after {entry}: resumes from the last event"
        );
        if let Some(limit) = within {
            let waited = ms(connect) - ms(entry);
            assert!(
                u128::from(waited) <= limit.as_millis(),
                "{waited} ms from {entry} to the next attempt"
            );
        }
    }
}

/// No resync was sent: every reconnect resumed within history.
pub(super) fn assert_no_resync(metrics: &Value) {
    let resyncs = metrics["resyncs_total"].as_object().expect("resyncs_total");
    assert!(resyncs.values().all(|n| n == 0), "{metrics}");
}
