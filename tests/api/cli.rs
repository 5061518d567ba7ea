//! The client commands end to end: the real binary (`push`, `listen`, `healthcheck`) as a child
//! process against a server running in this test process.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::helpers::{PROMPTLY, TestApp, close_of, next_json, server_command, signal, spawn_app};

/// A publisher key long enough for `PUSH_API_KEYS`.
const KEY: &str = "cli-test-key-0123456789abcdef";
/// An HS256 secret for subscriber tokens.
const SECRET: &str = "cli-test-secret-0123456789abcdef0123456789";
/// How long any command may run before the test gives up on it.
const COMMAND_DEADLINE: Duration = Duration::from_secs(15);

/// What a finished command left.
#[derive(Debug)]
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` in an empty directory (no `.env`) and an empty environment
/// (plus `env`), and waits for it to exit.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut command = server_command(dir.path());
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(COMMAND_DEADLINE, command.output())
        .await
        .expect("the command exits in time")
        .expect("the command runs");
    Output {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

/// A long-running command (`listen`) whose output lines are read as they come.
struct Running {
    child: Child,
    stdout: UnboundedReceiver<String>,
    stderr: UnboundedReceiver<String>,
    /// Every stderr line read so far, for failure messages.
    stderr_seen: Vec<String>,
    _dir: tempfile::TempDir,
}

/// Forwards the lines of a child's pipe to a channel.
fn lines_of(pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> UnboundedReceiver<String> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

impl Running {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut command = server_command(dir.path());
        command.args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the command starts");
        let stdout = lines_of(child.stdout.take().expect("piped stdout"));
        let stderr = lines_of(child.stderr.take().expect("piped stderr"));
        Self {
            child,
            stdout,
            stderr,
            stderr_seen: Vec::new(),
            _dir: dir,
        }
    }

    /// The next event line, parsed.
    async fn event(&mut self) -> Value {
        let line = tokio::time::timeout(PROMPTLY, self.stdout.recv())
            .await
            .unwrap_or_else(|_| panic!("an event line in time; stderr: {:?}", self.stderr_seen))
            .unwrap_or_else(|| panic!("stdout ended; stderr: {:?}", self.stderr_seen));
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("a JSON line: {line:?}"))
    }

    /// Reads stderr until a line containing `needle`, and returns that line.
    async fn status(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + PROMPTLY;
        loop {
            let line = tokio::time::timeout_at(deadline, self.stderr.recv())
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} on stderr: {:?}", self.stderr_seen))
                .unwrap_or_else(|| {
                    panic!("stderr ended before {needle:?}: {:?}", self.stderr_seen)
                });
            self.stderr_seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Waits for the process to exit; returns its status, the stdout lines not read yet and all
    /// of stderr.
    async fn finish(mut self) -> (i32, Vec<String>, Vec<String>) {
        let status = tokio::time::timeout(COMMAND_DEADLINE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the command exits in time; stderr: {:?}", self.stderr_seen))
            .expect("wait");
        let mut stdout = Vec::new();
        while let Some(line) = self.stdout.recv().await {
            stdout.push(line);
        }
        while let Some(line) = self.stderr.recv().await {
            self.stderr_seen.push(line);
        }
        (
            status.code().expect("exited, not killed"),
            stdout,
            self.stderr_seen,
        )
    }
}

fn http_url(app: &TestApp) -> String {
    format!("http://{}", app.addr)
}

fn ws_url(app: &TestApp) -> String {
    format!("ws://{}", app.addr)
}

// --- push -------------------------------------------------------------------------------------

#[tokio::test]
async fn push_prints_the_answer_and_exits_0() {
    let app = spawn_app(&[]).await;
    let mut ws = app.connect("cli-push").await;
    let url = http_url(&app);
    let out = run(
        &[
            "push",
            "--url",
            &url,
            "--user",
            "cli-push",
            "--data",
            r#"{"k":"v","n":1.50}"#,
            "--event-type",
            "chat",
            "--event-id",
            "first",
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    let answer: Value = serde_json::from_str(&out.stdout).expect("JSON answer");
    assert_eq!(answer["status"], "success", "{answer}");
    assert_eq!(answer["event_id"], "first");
    assert_eq!(answer["delivered"], 1);

    let frame = next_json(&mut ws).await;
    assert_eq!(frame["event_type"], "chat");
    assert_eq!(frame["event_id"], "first");
    assert_eq!(frame["data"], json!({"k": "v", "n": 1.5}));
}

#[tokio::test]
async fn push_uses_port_and_sse_path_from_the_settings_by_default() {
    let app = spawn_app(&["--sse-path", "/publish"]).await;
    let mut ws = app.connect("cli-defaults").await;
    let port = app.addr.port().to_string();
    let out = run(
        &["push", "--user", "cli-defaults", "--data", "-"],
        &[("PORT", &port), ("SSE_PATH", "/publish")],
    )
    .await;
    // stdin is /dev/null: `-` reads an empty document, which is not JSON.
    assert_eq!(out.code, 2, "{out:?}");
    let out = run(
        &[
            "push",
            "--user",
            "cli-defaults",
            "--data",
            r#"{"via":"defaults"}"#,
        ],
        &[("PORT", &port), ("SSE_PATH", "/publish")],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(next_json(&mut ws).await["data"]["via"], "defaults");
}

#[tokio::test]
async fn push_with_bad_data_exits_2_without_sending() {
    let app = spawn_app(&[]).await;
    let mut ws = app.connect("cli-bad").await;
    let url = http_url(&app);
    for (data, says) in [
        (r#"{"k":"#, "not valid JSON"),
        ("[1,2]", "must be a JSON object"),
        ("@/nonexistent/file.json", "cannot read"),
    ] {
        let out = run(
            &["push", "--url", &url, "--user", "cli-bad", "--data", data],
            &[],
        )
        .await;
        assert_eq!(out.code, 2, "{data}: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        assert!(out.stderr.contains(says), "{data}: {out:?}");
    }
    let out = run(&["push", "--url", &url, "--data", "{}"], &[]).await;
    assert_eq!(out.code, 2, "no recipient: {out:?}");
    let out = run(
        &[
            "push",
            "--url",
            "ftp://example.com",
            "--user",
            "u",
            "--data",
            "{}",
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 2, "not an HTTP URL: {out:?}");

    // Nothing reached the server: the next frame is this push.
    app.push_id("cli-bad", "after").await;
    assert_eq!(next_json(&mut ws).await["event_id"], "after");
    let metrics = app.metrics().await;
    assert_eq!(metrics["events_accepted_total"], 1, "{metrics}");
}

#[tokio::test]
async fn push_needs_the_api_key_when_the_server_has_keys() {
    let app = spawn_app(&["--push-api-keys", KEY]).await;
    let url = http_url(&app);
    let args = ["push", "--url", &url, "--user", "cli-key", "--data", "{}"];

    let out = run(&args, &[]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("401"), "{out:?}");
    let answer: Value = serde_json::from_str(&out.stdout).expect("the error body is printed");
    assert!(answer["detail"].is_string(), "{answer}");

    let wrong = run(
        &[&args[..], &["--api-key", "not-the-key-0123456789"]].concat(),
        &[],
    )
    .await;
    assert_eq!(wrong.code, 1, "{wrong:?}");

    let out = run(&[&args[..], &["--api-key", KEY]].concat(), &[]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = run(&args, &[("PUSH_API_KEY", KEY)]).await;
    assert_eq!(out.code, 0, "PUSH_API_KEY from the environment: {out:?}");
    let out = run(&args, &[("PUSH_API_KEYS", KEY)]).await;
    assert_eq!(out.code, 0, "the server's own PUSH_API_KEYS: {out:?}");
}

#[tokio::test]
async fn push_to_several_users_prints_one_result_each() {
    let app = spawn_app(&[]).await;
    let mut a = app.connect("cli-a").await;
    let mut b = app.connect("cli-b").await;
    let url = http_url(&app);
    let out = run(
        &[
            "push",
            "--url",
            &url,
            "--user-ids",
            "cli-a,cli-b",
            "--data",
            r#"{"all":true}"#,
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let answer: Value = serde_json::from_str(&out.stdout).expect("JSON answer");
    assert_eq!(
        answer["results"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );
    let (from_a, from_b) = (next_json(&mut a).await, next_json(&mut b).await);
    assert_eq!(from_a["event_id"], from_b["event_id"]);
    assert_eq!(from_a["data"]["all"], true);
}

/// A `--user-ids` push that reached only some users is accepted (the answer is printed) but exits
/// 3, so a script can tell.
#[tokio::test]
async fn push_to_several_users_exits_3_when_only_partial() {
    let app = spawn_app(&[]).await;
    let mut online = app.connect("cli-on").await;
    let url = http_url(&app);
    let out = run(
        &[
            "push",
            "--url",
            &url,
            "--user-ids",
            "cli-on,cli-off",
            "--data",
            r#"{"some":true}"#,
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 3, "{out:?}");
    let answer: Value = serde_json::from_str(&out.stdout).expect("JSON answer");
    assert_eq!(answer["status"], "partial", "{answer}");
    assert!(out.stderr.contains("partial"), "{out:?}");
    assert_eq!(next_json(&mut online).await["data"]["some"], true);
}

#[tokio::test]
async fn push_to_an_unreachable_server_exits_1() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = run(&["push", "--url", &url, "--user", "u", "--data", "{}"], &[]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("POST"), "{out:?}");
}

// --- listen -----------------------------------------------------------------------------------

#[tokio::test]
async fn listen_prints_frames_in_order_and_exits_after_count() {
    let app = spawn_app(&[]).await;
    let url = ws_url(&app);
    let mut listen = Running::start(
        &[
            "listen",
            "--url",
            &url,
            "--user",
            "cli-listen",
            "--count",
            "3",
        ],
        &[],
    );
    let connected = listen.status("connected to").await;
    assert!(connected.contains("/ws?user_id=cli-listen"), "{connected}");
    for id in ["one", "two", "three"] {
        app.push_id("cli-listen", id).await;
    }
    let (code, lines, stderr) = listen.finish().await;
    assert_eq!(code, 0, "{stderr:?}");
    let ids: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).expect("JSON line")["event_id"].clone())
        .collect();
    assert_eq!(ids, ["one", "two", "three"], "{lines:?}");
    // Each line is the server's frame, whole.
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["data"], json!({"n": "one"}));
    assert_eq!(first["user_id"], "cli-listen");
}

/// Connects `listen` (WebSocket or SSE), pushes three events, has the server drop the listener
/// (another connection replaces it under `MAX_CONNECTIONS_PER_USER=1` + `replace-oldest`),
/// pushes two more while it is away and one after it is back: it prints all six, once each, in
/// order.
async fn listen_resumes_after_the_server_drops_it(sse: bool) {
    let app = spawn_app(&[
        "--max-connections-per-user",
        "1",
        "--user-limit-policy",
        "replace-oldest",
    ])
    .await;
    let user = if sse {
        "cli-resume-sse"
    } else {
        "cli-resume-ws"
    };
    let url = ws_url(&app);
    let mut args = vec![
        "listen",
        "--url",
        &url,
        "--user",
        user,
        "--count",
        "6",
        "--reconnect-min",
        "0.5",
    ];
    if sse {
        args.push("--sse");
    }
    let mut listen = Running::start(&args, &[]);
    listen.status("connected to").await;
    for id in ["e1", "e2", "e3"] {
        app.push_id(user, id).await;
    }
    for id in ["e1", "e2", "e3"] {
        assert_eq!(listen.event().await["event_id"], id);
    }

    let mut intruder = app.connect(user).await;
    let dropped = listen.status("disconnected").await;
    assert!(dropped.contains("reconnecting in"), "{dropped}");
    app.push_id(user, "e4").await;
    app.push_id(user, "e5").await;
    // The listener comes back and replaces the intruder in turn.
    assert_eq!(
        close_of(&mut intruder).await.map(|(code, _)| code),
        Some(1008)
    );
    listen.status("connected to").await;
    let resuming = listen.status("resuming from").await;
    assert!(resuming.ends_with("e3"), "{resuming}");
    app.push_id(user, "e6").await;

    let (code, rest, stderr) = listen.finish().await;
    assert_eq!(code, 0, "{stderr:?}");
    let ids: Vec<Value> = rest
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).expect("JSON line")["event_id"].clone())
        .collect();
    assert_eq!(ids, ["e4", "e5", "e6"], "{rest:?} {stderr:?}");
}

#[tokio::test]
async fn listen_reconnects_and_resumes_over_websocket() {
    listen_resumes_after_the_server_drops_it(false).await;
}

#[tokio::test]
async fn listen_reconnects_and_resumes_over_sse() {
    listen_resumes_after_the_server_drops_it(true).await;
}

#[tokio::test]
async fn listen_over_sse_prints_the_same_frames() {
    let app = spawn_app(&[]).await;
    let url = http_url(&app);
    let mut listen = Running::start(
        &[
            "listen", "--sse", "--url", &url, "--user", "cli-sse", "--count", "2",
        ],
        &[],
    );
    let connected = listen.status("connected to").await;
    assert!(
        connected.contains("/sse/stream?user_id=cli-sse"),
        "{connected}"
    );
    app.push_id("cli-sse", "s1").await;
    app.push_id("cli-sse", "s2").await;
    let (code, lines, stderr) = listen.finish().await;
    assert_eq!(code, 0, "{stderr:?}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let second: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["event_id"], "s2");
    assert_eq!(second["event_type"], "message");
    assert_eq!(second["data"], json!({"n": "s2"}));
}

#[tokio::test]
async fn listen_resumes_from_last_event_id_on_its_first_connection() {
    let app = spawn_app(&[]).await;
    for id in ["h1", "h2", "h3"] {
        app.push_id("cli-history", id).await;
    }
    let url = ws_url(&app);
    let out = run(
        &[
            "listen",
            "--url",
            &url,
            "--user",
            "cli-history",
            "--last-event-id",
            "h1",
            "--count",
            "2",
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let ids: Vec<Value> = out
        .stdout
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["event_id"].clone())
        .collect();
    assert_eq!(ids, ["h2", "h3"]);
    assert!(out.stderr.contains("resuming from h1"), "{out:?}");
}

#[tokio::test]
async fn listen_exits_0_on_sigterm() {
    let app = spawn_app(&[]).await;
    let url = ws_url(&app);
    let mut listen = Running::start(&["listen", "--url", &url, "--user", "cli-term"], &[]);
    listen.status("connected to").await;
    signal(&listen.child, "TERM");
    let (code, lines, stderr) = listen.finish().await;
    assert_eq!(code, 0, "{stderr:?}");
    assert!(lines.is_empty());
    app.wait_for_metrics("the listener's connection closed", |m| {
        m["active_connections"] == 0
    })
    .await;
}

#[tokio::test]
async fn listen_keeps_retrying_while_the_server_is_away() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut listen = Running::start(
        &[
            "listen",
            "--url",
            &url,
            "--user",
            "u",
            "--reconnect-min",
            "0.1",
            "--reconnect-max",
            "0.2",
        ],
        &[],
    );
    let first = listen.status("connection failed").await;
    assert!(
        first.contains("retrying in") || first.contains("reconnecting in"),
        "{first}"
    );
    listen.status("connection failed").await;
    signal(&listen.child, "INT");
    let (code, _, stderr) = listen.finish().await;
    assert_eq!(code, 0, "{stderr:?}");
}

#[tokio::test]
async fn listen_without_a_required_token_exits_1() {
    let app = spawn_app(&["--jwt-secret", SECRET]).await;
    let url = ws_url(&app);
    let out = run(&["listen", "--url", &url, "--user", "cli-token"], &[]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("401") && out.stderr.contains("--token"),
        "{out:?}"
    );
}

/// An HS256 token for `user` that expires at the first whole second (`exp` has no fraction) at
/// least `seconds` from now: between `seconds` and `seconds + 1` from now.
fn token(user: &str, seconds: f64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let claims = json!({"sub": user, "exp": (now + seconds).ceil() as u64});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Even when no event arrived (a WebSocket learns no resume point before its first event), the
/// token-expired hint names `--last-event-id`.
#[tokio::test]
async fn listens_token_expired_hint_names_last_event_id_before_any_event() {
    let app = spawn_app(&["--jwt-secret", SECRET]).await;
    let url = ws_url(&app);
    let token = token("cli-exp-quiet", 0.6);
    let mut listen = Running::start(&["listen", "--url", &url, "--token", &token], &[]);
    listen.status("connected to").await;
    let (code, _, stderr) = listen.finish().await;
    assert_eq!(code, 3, "{stderr:?}");
    let last = stderr.last().expect("a message");
    assert!(
        last.contains("token expired") && last.contains("--last-event-id"),
        "{last}"
    );
}

#[tokio::test]
async fn listen_exits_3_when_its_token_expires_and_says_how_to_resume() {
    let app = spawn_app(&["--jwt-secret", SECRET]).await;
    for sse in [false, true] {
        let user = if sse { "cli-exp-sse" } else { "cli-exp-ws" };
        let url = ws_url(&app);
        // Time enough to start, connect and receive one event; the server's clock cannot be
        // advanced, so the test waits for the real expiry (0.6 to 1.6 s).
        let token = token(user, 0.6);
        let mut args = vec!["listen", "--url", &url, "--token", &token];
        if sse {
            args.push("--sse");
        }
        let mut listen = Running::start(&args, &[]);
        listen.status("connected to").await;
        app.push_id(user, "before-expiry").await;
        assert_eq!(listen.event().await["event_id"], "before-expiry");
        let (code, _, stderr) = listen.finish().await;
        assert_eq!(code, 3, "sse={sse}: {stderr:?}");
        let last = stderr.last().expect("a message");
        assert!(
            last.contains("token expired") && last.contains("--last-event-id before-expiry"),
            "{last}"
        );
    }
}

#[tokio::test]
async fn listen_exits_1_when_an_administrator_disconnects_the_user() {
    let app = spawn_app(&[]).await;
    for sse in [false, true] {
        let user = if sse { "cli-kick-sse" } else { "cli-kick-ws" };
        let url = ws_url(&app);
        let mut args = vec!["listen", "--url", &url, "--user", user];
        if sse {
            args.push("--sse");
        }
        let mut listen = Running::start(&args, &[]);
        listen.status("connected to").await;
        app.disconnect_user(user).await;
        let (code, _, stderr) = listen.finish().await;
        assert_eq!(code, 1, "sse={sse}: {stderr:?}");
        assert!(
            stderr
                .last()
                .is_some_and(|line| line.contains("administrator")),
            "{stderr:?}"
        );
    }
}

// --- healthcheck ------------------------------------------------------------------------------

#[tokio::test]
async fn healthcheck_exits_0_when_healthy_and_1_when_unreachable() {
    let app = spawn_app(&[]).await;
    let port = app.addr.port().to_string();
    let out = run(&["healthcheck"], &[("HOST", "127.0.0.1"), ("PORT", &port)]).await;
    assert_eq!(out.code, 0, "{out:?}");

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port().to_string();
    drop(closed);
    let out = run(&["healthcheck"], &[("PORT", &port)]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("unhealthy:"), "{out:?}");
}
