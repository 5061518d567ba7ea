//! The Prometheus exposition: `GET /metrics/prometheus`, and `GET /metrics` when `Accept` asks for
//! text. The text is parsed with a real parser (`prometheus-parse`) plus a strict line check, and
//! the counters are checked to move with real pushes, connections and closes.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::SinkExt;
use prometheus_parse::{Sample, Scrape, Value as Parsed};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{PROMPTLY, SMALL_QUEUES, SseReader, TestApp, next_text, spawn_app};

const PLAIN: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// What Prometheus 3 sends when it scrapes.
const PROMETHEUS_SCRAPE_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;\
    escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;\
    version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
const KEY: &str = "metrics-publisher-key-0123456789";

/// Every family the exposition must hold (the cluster ones only with a cluster broker).
const FAMILIES: &[&str] = &[
    "websocket_sse_build_info",
    "websocket_sse_uptime_seconds",
    "websocket_sse_connections",
    "websocket_sse_max_connections",
    "websocket_sse_users_online",
    "websocket_sse_connections_opened_total",
    "websocket_sse_connections_closed_total",
    "websocket_sse_connections_refused_total",
    "websocket_sse_client_messages_total",
    "websocket_sse_pushes_accepted_total",
    "websocket_sse_push_requests_rejected_total",
    "websocket_sse_duplicate_pushes_total",
    "websocket_sse_batch_size",
    "websocket_sse_events_delivered_total",
    "websocket_sse_events_dropped_total",
    "websocket_sse_delivery_latency_seconds",
    "websocket_sse_bytes_sent_total",
    "websocket_sse_history_users",
    "websocket_sse_history_events",
    "websocket_sse_resumes_total",
    "websocket_sse_events_replayed_total",
    "websocket_sse_resyncs_total",
    "websocket_sse_broker_connected",
    "websocket_sse_broker_errors_total",
    "websocket_sse_broker_outages_total",
    "websocket_sse_broker_reconnects_total",
    "websocket_sse_broker_catch_ups_total",
    "websocket_sse_broker_messages_received_total",
    "websocket_sse_broker_malformed_messages_total",
];

/// The only label names the exposition may use: all bounded.
const LABEL_NAMES: &[&str] = &[
    "transport",
    "reason",
    "cause",
    "version",
    "broker",
    "le",
    "route",
    "status",
];

/// One parsed exposition.
struct Exposition {
    text: String,
    scrape: Scrape,
}

impl Exposition {
    /// Parses `text`, after checking that every line is well formed: the parser itself skips
    /// lines it cannot read.
    fn parse(text: String) -> Self {
        for line in text.lines() {
            check_line(line);
        }
        let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
            .expect("the exposition parses");
        assert!(!scrape.samples.is_empty(), "no samples in:\n{text}");
        Self { text, scrape }
    }

    fn samples<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Sample> + 's {
        self.scrape
            .samples
            .iter()
            .filter(move |sample| sample.metric == name)
    }

    /// The value of the sample `name{labels}` (exactly those labels).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = self
            .samples(name)
            .find(|sample| {
                sample.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(key, value)| sample.labels.get(key) == Some(*value))
            })
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{}", self.text));
        match sample.value {
            Parsed::Counter(value) | Parsed::Gauge(value) | Parsed::Untyped(value) => value,
            ref other => panic!("{name} is not a single value: {other:?}"),
        }
    }

    /// The value of the one label-less sample `name`.
    fn scalar(&self, name: &str) -> f64 {
        self.value(name, &[])
    }

    /// `(cumulative buckets as (le, count), sum, count)` of a histogram without labels.
    fn histogram(&self, name: &str) -> (Vec<(f64, f64)>, f64, f64) {
        let sample = self
            .samples(name)
            .next()
            .unwrap_or_else(|| panic!("no histogram {name} in:\n{}", self.text));
        let Parsed::Histogram(buckets) = &sample.value else {
            panic!("{name} is not typed as a histogram: {:?}", sample.value);
        };
        let buckets = buckets
            .iter()
            .map(|bucket| (bucket.less_than, bucket.count))
            .collect();
        (
            buckets,
            self.scalar(&format!("{name}_sum")),
            self.scalar(&format!("{name}_count")),
        )
    }

    /// Checks a histogram is consistent (ascending bounds ending at `+Inf`, cumulative counts,
    /// `+Inf` bucket = count, a finite non-negative sum) and returns `(buckets, sum, count)`.
    fn consistent_histogram(&self, name: &str) -> (Vec<(f64, f64)>, f64, f64) {
        let (buckets, sum, count) = self.histogram(name);
        assert!(buckets.len() >= 2, "{name}: {buckets:?}");
        for pair in buckets.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "{name}: bounds not ascending: {buckets:?}"
            );
            assert!(
                pair[0].1 <= pair[1].1,
                "{name}: not cumulative: {buckets:?}"
            );
        }
        let (last_bound, last_count) = *buckets.last().unwrap();
        assert_eq!(last_bound, f64::INFINITY, "{name}: {buckets:?}");
        assert_eq!(last_count, count, "{name}: +Inf bucket != count");
        assert!(sum.is_finite() && sum >= 0.0, "{name}: sum {sum}");
        (buckets, sum, count)
    }

    /// The cumulative count of the bucket with upper bound `le`.
    fn bucket(buckets: &[(f64, f64)], le: f64) -> f64 {
        buckets
            .iter()
            .find(|(bound, _)| (*bound - le).abs() < 1e-12)
            .unwrap_or_else(|| panic!("no bucket le={le}: {buckets:?}"))
            .1
    }

    /// Checks every family is present with its type, every label name is a bounded one, and no
    /// label value is one of `users`.
    fn check_families_and_labels(&self, users: &[&str]) {
        for family in FAMILIES {
            assert!(
                self.text.contains(&format!("\n# TYPE {family} "))
                    || self.text.starts_with(&format!("# HELP {family} ")),
                "no TYPE line for {family} in:\n{}",
                self.text
            );
        }
        let mut names = BTreeSet::new();
        for line in self.text.lines().filter(|line| !line.starts_with('#')) {
            let Some(open) = line.find('{') else { continue };
            let close = line.rfind('}').expect("labels are closed");
            for pair in split_labels(&line[open + 1..close]) {
                let (name, value) = pair.split_once('=').expect("name=value");
                names.insert(name.to_owned());
                let value = value.trim_matches('"');
                assert!(!users.contains(&value), "a label carries a user id: {line}");
            }
        }
        for name in &names {
            assert!(
                LABEL_NAMES.contains(&name.as_str()),
                "unexpected label {name}"
            );
        }
    }
}

/// Splits `a="x",b="y"` at the commas between pairs (values hold no quotes here).
fn split_labels(labels: &str) -> Vec<&str> {
    let mut pairs = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (index, char) in labels.char_indices() {
        match char {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                pairs.push(&labels[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    if start < labels.len() {
        pairs.push(&labels[start..]);
    }
    pairs
}

/// A line of the text format: a comment (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`) or a sample
/// `name{labels} value` with a valid metric name and a float value.
fn check_line(line: &str) {
    if let Some(comment) = line.strip_prefix("# ") {
        let kind = comment.split(' ').next().unwrap_or_default();
        assert!(
            ["HELP", "TYPE", "UNIT", "EOF"].contains(&kind),
            "unexpected comment: {line}"
        );
        if kind == "TYPE" {
            let kind = comment.rsplit(' ').next().unwrap_or_default();
            assert!(
                ["counter", "gauge", "histogram", "info"].contains(&kind),
                "unexpected type: {line}"
            );
        }
        return;
    }
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
    let name = series.split('{').next().unwrap_or_default();
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit()),
        "bad metric name: {line}"
    );
    assert!(
        name.starts_with("websocket_sse_") || name.starts_with("process_"),
        "metric neither the service's nor a standard process one: {line}"
    );
    assert!(
        value == "+Inf" || value == "-Inf" || value == "NaN" || value.parse::<f64>().is_ok(),
        "bad value: {line}"
    );
}

/// Scrapes `/metrics/prometheus` (Prometheus text 0.0.4) and parses it.
async fn scrape(app: &TestApp) -> Exposition {
    let reply = app.get("/metrics/prometheus", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.content_type(), PLAIN);
    Exposition::parse(reply.text)
}

/// Scrapes until `check` holds, or fails after [`PROMPTLY`].
async fn scrape_until(
    app: &TestApp,
    what: &str,
    check: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let exposition = scrape(app).await;
        if check(&exposition) {
            return exposition;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            exposition.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bytes of a server's (unmasked) text frame with this payload on the wire.
fn ws_frame_bytes(payload: usize) -> f64 {
    let header = match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    (payload + header) as f64
}

#[tokio::test]
async fn counters_gauges_and_histograms_move_with_real_traffic() {
    // No keepalive comment during the test: the SSE byte count is then exactly what was read.
    let app = spawn_app(&["--sse-keepalive", "0"]).await;
    let before = scrape(&app).await;
    before.check_families_and_labels(&[]);
    assert_eq!(before.scalar("websocket_sse_connections_opened_total"), 0.0);
    assert_eq!(
        before.value("websocket_sse_broker_connected", &[("broker", "memory")]),
        1.0
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        before.value("websocket_sse_build_info", &[("version", version)]),
        1.0
    );
    assert!(
        !before.text.contains("websocket_sse_cluster_"),
        "no cluster with the memory broker"
    );

    // One WebSocket and one SSE client.
    let mut ws = app.connect("prom-alice").await;
    let mut sse = SseReader::open(&app, "user_id=prom-bob", &[]).await;
    sse.opening().await;
    let connected = scrape(&app).await;
    assert_eq!(
        connected.value("websocket_sse_connections", &[("transport", "websocket")]),
        1.0
    );
    assert_eq!(
        connected.value("websocket_sse_connections", &[("transport", "sse")]),
        1.0
    );
    assert_eq!(connected.scalar("websocket_sse_users_online"), 2.0);
    assert_eq!(
        connected.scalar("websocket_sse_connections_opened_total"),
        2.0
    );

    // Three pushes to the WebSocket, one to the SSE stream, one to nobody, a batch of four to
    // nobody, one invalid push, one client message.
    let mut ws_bytes = 0.0;
    for n in 0..3 {
        let response = app
            .push(json!({"user_id": "prom-alice", "data": {"n": n}}))
            .await;
        assert_eq!(response["delivered"], 1, "{response}");
        ws_bytes += ws_frame_bytes(next_text(&mut ws).await.len());
    }
    ws.send(Message::text("hello")).await.unwrap();
    ws_bytes += ws_frame_bytes(next_text(&mut ws).await.len());
    app.push(json!({"user_id": "prom-bob", "data": {"to": "sse"}}))
        .await;
    sse.until("\"to\":\"sse\"").await;
    sse.until("\n\n").await;
    app.push(json!({"user_id": "prom-nobody", "data": {}}))
        .await;
    let items: Vec<Value> = (0..4)
        .map(|n| json!({"user_id": format!("prom-carol-{n}"), "data": {"n": n}}))
        .collect();
    app.push_batch(Value::Array(items)).await;
    let (status, _) = app.post_json("/sse/push", &json!({"data": {}})).await;
    assert_eq!(status, 422);

    let sse_bytes = sse.received() as f64;
    let after = scrape_until(&app, "the writes to be counted", |e| {
        e.histogram("websocket_sse_delivery_latency_seconds").2 >= 4.0
            && e.value(
                "websocket_sse_bytes_sent_total",
                &[("transport", "websocket")],
            ) >= ws_bytes
            && e.value("websocket_sse_bytes_sent_total", &[("transport", "sse")]) >= sse_bytes
    })
    .await;
    assert_eq!(after.scalar("websocket_sse_pushes_accepted_total"), 9.0);
    assert_eq!(after.scalar("websocket_sse_events_delivered_total"), 4.0);
    assert_eq!(after.scalar("websocket_sse_client_messages_total"), 1.0);
    assert_eq!(
        after.value(
            "websocket_sse_events_dropped_total",
            &[("reason", "offline")]
        ),
        5.0
    );
    assert_eq!(
        after.value(
            "websocket_sse_events_dropped_total",
            &[("reason", "failed")]
        ),
        0.0
    );
    assert_eq!(
        after.value(
            "websocket_sse_push_requests_rejected_total",
            &[("reason", "invalid")]
        ),
        1.0
    );
    assert_eq!(
        after.value(
            "websocket_sse_bytes_sent_total",
            &[("transport", "websocket")]
        ),
        ws_bytes,
        "WebSocket bytes: frames with their headers"
    );
    assert_eq!(
        after.value("websocket_sse_bytes_sent_total", &[("transport", "sse")]),
        sse_bytes,
        "SSE bytes: the body as read"
    );
    // History: every user pushed to has a stream; every accepted event is held.
    assert_eq!(after.scalar("websocket_sse_history_users"), 7.0);
    assert_eq!(after.scalar("websocket_sse_history_events"), 9.0);

    // Batch sizes: one batch of four.
    let (buckets, sum, count) = after.consistent_histogram("websocket_sse_batch_size");
    assert_eq!((sum, count), (4.0, 1.0));
    assert_eq!(Exposition::bucket(&buckets, 2.0), 0.0);
    assert_eq!(Exposition::bucket(&buckets, 5.0), 1.0);
    // Latency: the four live events, each well under a second on loopback.
    let (buckets, sum, count) =
        after.consistent_histogram("websocket_sse_delivery_latency_seconds");
    assert_eq!(
        count, 4.0,
        "three WebSocket events and one SSE event (acks are not timed)"
    );
    assert!(sum < 4.0, "latency sum {sum}");
    assert_eq!(Exposition::bucket(&buckets, 1.0), 4.0);

    // Both clients go away.
    ws.close(None).await.unwrap();
    drop(sse);
    let closed = scrape_until(&app, "both clients to be gone", |e| {
        e.value(
            "websocket_sse_connections_closed_total",
            &[("reason", "client_closed")],
        ) == 2.0
    })
    .await;
    assert_eq!(
        closed.value("websocket_sse_connections", &[("transport", "websocket")]),
        0.0
    );
    assert_eq!(
        closed.value("websocket_sse_connections", &[("transport", "sse")]),
        0.0
    );
    assert_eq!(closed.scalar("websocket_sse_users_online"), 0.0);
    closed.check_families_and_labels(&[
        "prom-alice",
        "prom-bob",
        "prom-nobody",
        "prom-carol-0",
        "prom-carol-3",
    ]);

    // The JSON view reads the same counters.
    let (_, json) = app.get_json("/metrics").await;
    assert_eq!(json["events_accepted_total"], 9, "{json}");
    assert_eq!(json["events_delivered_total"], 4, "{json}");
    assert_eq!(json["events_offline_total"], 5, "{json}");
    assert_eq!(json["events_dropped_total"]["offline"], 5, "{json}");
    assert_eq!(json["batch_size"]["count"], 1, "{json}");
    assert_eq!(json["delivery_latency_seconds"]["count"], 4, "{json}");
    assert_eq!(
        json["connections_closed_total"]["client_closed"], 2,
        "{json}"
    );
}

#[tokio::test]
async fn resumes_and_resyncs_are_counted_and_replays_are_not_timed() {
    let app = spawn_app(&[]).await;
    let stored = app
        .push(json!({"user_id": "prom-dave", "data": {"n": 1}}))
        .await;
    app.push(json!({"user_id": "prom-dave", "data": {"n": 2}}))
        .await;
    let first = stored["event_id"].as_str().unwrap();

    // Resumes after the first event: the second is replayed.
    let mut ws = app.resume("prom-dave", first).await;
    let replayed: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(replayed["data"], json!({"n": 2}));
    // An unknown resume point: a resync event.
    let mut lost = app.resume("prom-erin", "never-seen").await;
    let resync: Value = serde_json::from_str(&next_text(&mut lost).await).unwrap();
    assert_eq!(resync["event_type"], "resync", "{resync}");

    let exposition = scrape_until(&app, "the resume and resync", |e| {
        e.scalar("websocket_sse_resumes_total") == 1.0
            && e.value(
                "websocket_sse_resyncs_total",
                &[("reason", "unknown_event_id")],
            ) == 1.0
    })
    .await;
    assert_eq!(
        exposition.scalar("websocket_sse_events_replayed_total"),
        1.0
    );
    let (_, _, count) = exposition.consistent_histogram("websocket_sse_delivery_latency_seconds");
    assert_eq!(
        count, 0.0,
        "a replay or a resync notice is not a live delivery"
    );

    // A live push after the replay is timed.
    app.push(json!({"user_id": "prom-dave", "data": {"n": 3}}))
        .await;
    next_text(&mut ws).await;
    scrape_until(&app, "the live event to be timed", |e| {
        e.histogram("websocket_sse_delivery_latency_seconds").2 == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_s_events_are_counted_as_dropped() {
    let app = spawn_app(&SMALL_QUEUES).await;
    // Connected, then never read from.
    let _slow = app.connect("prom-slow").await;
    app.push_until_refused("prom-slow", async || {}).await;
    let exposition = scrape_until(&app, "the slow consumer's drops", |e| {
        e.value(
            "websocket_sse_connections_closed_total",
            &[("reason", "slow_consumer")],
        ) == 1.0
            && e.value(
                "websocket_sse_events_dropped_total",
                &[("reason", "slow_consumer")],
            ) > 0.0
    })
    .await;
    assert!(
        exposition.value(
            "websocket_sse_events_dropped_total",
            &[("reason", "failed")]
        ) >= 1.0
    );
    // The JSON view agrees, counter for counter.
    let (_, json) = app.get_json("/metrics").await;
    for reason in ["offline", "failed", "slow_consumer", "closed"] {
        let value = exposition.value("websocket_sse_events_dropped_total", &[("reason", reason)]);
        assert_eq!(
            json["events_dropped_total"][reason], value as u64,
            "{reason}: {json}"
        );
    }
}

#[tokio::test]
async fn metrics_serves_text_when_accept_prefers_it_and_json_otherwise() {
    let app = spawn_app(&[]).await;

    // JSON by default, for browsers and for an explicit JSON preference.
    for accept in [
        None,
        Some("*/*"),
        Some("application/json"),
        Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let reply = app.get("/metrics", &headers).await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.content_type().starts_with("application/json"),
            "{accept:?}: {}",
            reply.content_type()
        );
        let json: Value = serde_json::from_str(&reply.text).unwrap();
        let keys: Vec<&String> = json.as_object().unwrap().keys().take(2).collect();
        assert_eq!(keys, ["active_connections", "service"], "{accept:?}");
    }

    // The Prometheus text for `text/plain`.
    for accept in ["text/plain", "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"] {
        let reply = app.get("/metrics", &[("accept", accept)]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type(), PLAIN, "{accept}");
        assert!(!reply.text.contains("# EOF"));
        Exposition::parse(reply.text).check_families_and_labels(&[]);
    }

    // OpenMetrics for what Prometheus sends, on both paths.
    for path in ["/metrics", "/metrics/prometheus"] {
        for accept in [PROMETHEUS_SCRAPE_ACCEPT, "application/openmetrics-text"] {
            let reply = app.get(path, &[("accept", accept)]).await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.content_type(), OPENMETRICS, "{path} {accept}");
            let body = reply.text;
            assert!(body.ends_with("# EOF\n"), "{path}: {body}");
            assert!(body.contains("# TYPE websocket_sse_connections_opened counter\n"));
            assert!(body.contains("# UNIT websocket_sse_delivery_latency_seconds seconds\n"));
            assert!(body.contains("# TYPE websocket_sse_build info\n"));
            let exposition = Exposition::parse(body);
            exposition.consistent_histogram("websocket_sse_batch_size");
        }
    }

    // `/metrics/prometheus` is text whatever else is asked for.
    for accept in ["application/json", "*/*"] {
        let reply = app.get("/metrics/prometheus", &[("accept", accept)]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type(), PLAIN, "{accept}");
    }
}

#[tokio::test]
async fn private_metrics_need_an_api_key_in_every_format() {
    let app = spawn_app(&["--push-api-keys", KEY, "--metrics-public", "false"]).await;
    for (path, accept) in [
        ("/metrics/prometheus", "*/*"),
        ("/metrics", "text/plain"),
        ("/metrics", PROMETHEUS_SCRAPE_ACCEPT),
    ] {
        let reply = app.get(path, &[("accept", accept)]).await;
        assert_eq!(reply.status, 401, "{path} without a key: {}", reply.text);
        assert!(!reply.text.contains("websocket_sse_"), "{}", reply.text);
        let reply = app
            .get(
                path,
                &[("accept", accept), ("x-api-key", "wrong-key-0123456789")],
            )
            .await;
        assert_eq!(reply.status, 401, "{path} with a wrong key");
        let bearer = format!("Bearer {KEY}");
        for credential in [("x-api-key", KEY), ("authorization", bearer.as_str())] {
            let reply = app.get(path, &[("accept", accept), credential]).await;
            assert_eq!(reply.status, 200, "{path} with a key: {}", reply.text);
            assert!(
                reply.content_type().contains("text"),
                "{}",
                reply.content_type()
            );
            Exposition::parse(reply.text);
        }
    }
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_exposed_metrics() {
    let app = spawn_app(&[]).await;
    let exposition = scrape(&app).await;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/websocket-sse-server.json"
    );
    let dashboard = std::fs::read_to_string(path).expect("the dashboard is in the repository");
    let parsed: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(
        parsed["panels"]
            .as_array()
            .is_some_and(|panels| !panels.is_empty())
    );

    let mut names = BTreeSet::new();
    let mut rest = dashboard.as_str();
    while let Some(at) = rest.find("websocket_sse_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    // Only shown with BROKER=redis.
    let cluster = [
        "websocket_sse_cluster_nodes",
        "websocket_sse_cluster_connections",
        "websocket_sse_cluster_users",
    ];
    for name in &names {
        let exposed = exposition.text.lines().any(|line| {
            !line.starts_with('#')
                && (line.starts_with(&format!("{name} ")) || line.starts_with(&format!("{name}{{")))
        });
        assert!(
            exposed || cluster.contains(&name.as_str()),
            "the dashboard queries {name}, which the server does not expose"
        );
    }
    for family in [
        "websocket_sse_connections",
        "websocket_sse_pushes_accepted_total",
        "websocket_sse_events_delivered_total",
        "websocket_sse_delivery_latency_seconds_bucket",
        "websocket_sse_events_dropped_total",
        "websocket_sse_connections_closed_total",
        "websocket_sse_broker_connected",
        "websocket_sse_cluster_nodes",
    ] {
        assert!(
            names.contains(family),
            "the dashboard does not show {family}"
        );
    }
}

#[tokio::test]
async fn the_standard_process_families_are_exposed() {
    let app = spawn_app(&[]).await;
    let exposition = scrape(&app).await;
    assert!(exposition.value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(exposition.value("process_open_fds", &[]) >= 3.0);
    assert!(exposition.value("process_max_fds", &[]) >= exposition.value("process_open_fds", &[]));
    assert!(exposition.value("process_cpu_seconds_total", &[]) > 0.0);
    assert!(exposition.value("process_start_time_seconds", &[]) > 1.7e9);
}

#[tokio::test]
async fn the_api_is_timed_by_route_and_status_class() {
    let app = spawn_app(&[]).await;
    for _ in 0..3 {
        app.push(json!({"user_id": "timed", "data": {}})).await;
    }
    let (status, _) = app
        .post_json("/sse/push", &json!({"user_id": "timed"}))
        .await;
    assert_eq!(status, 422);
    let (status, _) = app.get_json("/admin/users/timed").await;
    assert_eq!(status, 200);
    let text = scrape(&app).await.text;
    for (series, count) in [
        (r#"route="/sse/push",status="2xx""#, 3),
        (r#"route="/sse/push",status="4xx""#, 1),
        (r#"route="/admin/users/{user_id}",status="2xx""#, 1),
    ] {
        let line =
            format!("websocket_sse_http_request_duration_seconds_count{{{series}}} {count}\n");
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }
    assert!(
        text.contains("# TYPE websocket_sse_http_request_duration_seconds histogram"),
        "{text}"
    );
}
