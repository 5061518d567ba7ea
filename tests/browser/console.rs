//! The web console (`GET {CONSOLE_PATH}`): how the page is served (content type, caching, security
//! policy, the configuration filled in, `CONSOLE_ENABLED=false`), and the page itself driven in
//! headless Chromium by `console.mjs`: connect as a user over WebSocket and over SSE, push from the
//! page's form, see the frame in the page's list and the connection in its stats, resume; and, by
//! `console-reconnect.mjs`, how the page acts on the ways a connection ends: stop when refused
//! for good, reconnect by itself (resuming) when closed for a reason worth retrying, and ask for a
//! fresh token when the token expired.

use super::*;

/// The console's user in the browser test.
const CONSOLE_USER: &str = "console-e2e";
/// The publisher key of the browser test's server.
const API_KEY: &str = "console-test-publisher-key-0123";
/// The HS256 secret that signs the browser test's subscriber token.
const JWT_SECRET: &str = "console-test-jwt-secret-0123456789abcdef";
/// Longest wait for the whole console script (it makes a dozen steps, each waited for in the page
/// for at most 10 s, and pauses a few seconds so the chart has points).
const CONSOLE_RUN: Duration = Duration::from_secs(70);
/// The console script's own overall timeout, in milliseconds.
const CONSOLE_SCRIPT_TIMEOUT_MS: &str = "65000";
/// Longest wait for the reconnect script (two transports, three cases each: two pauses of 2 s to
/// see that nothing more happens, two tokens that expire after about 4 s, each step waited for at
/// most 10 s).
const RECONNECT_RUN: Duration = Duration::from_secs(95);
/// The reconnect script's own overall timeout, in milliseconds.
const RECONNECT_SCRIPT_TIMEOUT_MS: &str = "90000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_browser_connects_over_both_transports_pushes_and_shows_frames_and_stats() {
    let Some(chromium) = browser_tools() else {
        return;
    };
    // Every path moved from its default, credentials on both sides, metrics behind the key: the
    // page must take all of it from the configuration the server puts in it.
    let server = start_server_with(&[
        "--console-path",
        "/console",
        "--ws-path",
        "/live/ws",
        "--sse-stream-path",
        "/live/events",
        "--sse-path",
        "/live/push",
        "--push-api-keys",
        API_KEY,
        "--metrics-public",
        "false",
        "--jwt-secret",
        JWT_SECRET,
    ])
    .await;
    let screenshot = std::env::var_os("CONSOLE_SCREENSHOT").map_or_else(
        || std::env::temp_dir().join(format!("console-{}.png", std::process::id())),
        PathBuf::from,
    );
    let options = json!({
        "url": format!("{server}/console"),
        "user": CONSOLE_USER,
        "token": token(CONSOLE_USER),
        "api_key": API_KEY,
        "screenshot": screenshot,
    })
    .to_string();
    let result = run_console_script(
        &chromium,
        "console.mjs",
        &options,
        CONSOLE_RUN,
        CONSOLE_SCRIPT_TIMEOUT_MS,
    )
    .await;
    let seen = &result["observed"];

    // The page and its configuration.
    assert_eq!(seen["page_status"], 200, "{seen}");
    assert_eq!(seen["config"]["ws_path"], "/live/ws", "{seen}");
    assert_eq!(seen["config"]["sse_stream_path"], "/live/events", "{seen}");
    assert_eq!(seen["config"]["sse_path"], "/live/push", "{seen}");
    assert_eq!(seen["config"]["tokens_required"], true, "{seen}");
    assert_eq!(seen["config"]["api_keys_required"], true, "{seen}");

    // It connects with the official client, which it loads from this server.
    assert_eq!(seen["script_urls"], json!(["/client.js"]), "{seen}");

    // The connections the page opened: the configured paths, the token as `?token=`, and the
    // resume from the last event id it saw.
    let ws_urls = seen["websocket_urls"].as_array().expect("websocket urls");
    assert_eq!(ws_urls.len(), 1, "{seen}");
    let ws_url = ws_urls[0].as_str().expect("url");
    assert!(
        ws_url.starts_with(&format!("{}/live/ws?", server.replacen("http", "ws", 1))),
        "{ws_url}"
    );
    assert!(
        ws_url.contains(&format!("user_id={CONSOLE_USER}")) && ws_url.contains("token=ey"),
        "{ws_url}"
    );
    let streams = seen["stream_urls"].as_array().expect("stream urls");
    assert_eq!(streams.len(), 2, "{seen}");
    assert!(
        streams.iter().all(|url| url
            .as_str()
            .is_some_and(|url| url.contains("/live/events?"))),
        "{seen}"
    );
    assert!(!streams[0].as_str().unwrap_or("").contains("last_event_id"));
    let resume_from = seen["resume_from"].as_str().expect("resume point");
    assert!(
        streams[1]
            .as_str()
            .unwrap_or("")
            .contains(&format!("last_event_id={resume_from}")),
        "{seen}"
    );

    // Each push from the page shows up in the page's list, from the right transport.
    let pushes = seen["pushes"].as_array().expect("pushes");
    let accepted: Vec<&Value> = pushes.iter().filter(|p| p["status"] == 200).collect();
    assert_eq!(pushes[0]["status"], 401, "first push has no key: {seen}");
    for (name, transport, event_type) in [
        ("websocket", "websocket", "greeting"),
        ("sse", "sse", "alert"),
        ("resumed", "sse", "message"),
    ] {
        let frame = &seen["frames"][name];
        assert_eq!(frame["transport"], transport, "{name}: {frame}");
        assert_eq!(frame["event_type"], event_type, "{name}: {frame}");
        assert_eq!(frame["json"]["event_type"], event_type, "{name}: {frame}");
        assert_eq!(frame["json"]["user_id"], CONSOLE_USER, "{name}: {frame}");
        assert!(frame["json"]["data"].is_object(), "{name}: {frame}");
    }
    assert_eq!(
        seen["frames"]["websocket"]["json"]["data"]["hello"],
        "over WebSocket"
    );
    assert_eq!(seen["frames"]["sse"]["json"]["data"]["hello"], "over SSE");
    assert_eq!(
        seen["frames"]["resumed"]["json"]["data"]["missed"],
        "while away"
    );
    assert_eq!(
        seen["ack"],
        json!({"event_type": "ack", "data": {"received": "hello server"}})
    );
    assert!(
        seen["frame_count"].as_u64().expect("frame count") >= 7,
        "{seen}"
    );

    // The server's account agrees with the page's; the page's last stream, closed from the page,
    // is gone too.
    let deadline = Instant::now() + STEP;
    let metrics = loop {
        let metrics: Value = reqwest::Client::new()
            .get(format!("{server}/metrics"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("metrics")
            .json()
            .await
            .expect("metrics JSON");
        if metrics["active_connections"] == 0 || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let upstream = seen["background_pushes"].as_u64().expect("upstream pushes");
    assert!(upstream > 0, "{seen}");
    assert_eq!(
        metrics["events_accepted_total"].as_u64(),
        Some(accepted.len() as u64 + upstream),
        "{metrics}"
    );
    assert_eq!(metrics["active_connections"], 0, "{metrics}");

    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    println!(
        "console browser test: {} in {} ms, {} pushes, screenshot at {}",
        result["browser"],
        result["elapsed_ms"],
        pushes.len(),
        screenshot.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_browser_reconnects_resuming_stops_when_refused_and_asks_for_a_fresh_token() {
    let Some(chromium) = browser_tools() else {
        return;
    };
    // Queues of one event: a burst pushed at once makes the console's connection a slow consumer.
    let server = start_server_with(&["--jwt-secret", JWT_SECRET, "--ws-send-queue", "1"]).await;
    let options = json!({
        "url": format!("{server}/"),
        "user": CONSOLE_USER,
        "jwt_secret": JWT_SECRET,
        "push_path": "/sse/push",
        "batch_path": "/sse/push/batch",
    })
    .to_string();
    let result = run_console_script(
        &chromium,
        "console-reconnect.mjs",
        &options,
        RECONNECT_RUN,
        RECONNECT_SCRIPT_TIMEOUT_MS,
    )
    .await;

    for transport in ["websocket", "sse"] {
        let seen = &result["observed"][transport];
        // Refused for good: one attempt, and the server's reason in the status.
        assert_eq!(seen["forbidden"]["attempts"], 1, "{transport}: {seen}");
        // Closed as a slow consumer: a second connection, resuming, and every event once.
        let slow = &seen["slow_consumer"];
        assert_eq!(slow["received"], slow["pushed"], "{transport}: {slow}");
        assert!(
            slow["urls"][1]
                .as_str()
                .is_some_and(|url| url.contains("last_event_id=")),
            "{transport}: {slow}"
        );
        // The token expired: stopped, then resumed by hand with a fresh one.
        let expiry = &seen["token_expiry"];
        assert_eq!(expiry["focused"], "connect-token", "{transport}: {expiry}");
        assert_eq!(expiry["resume_ticked"], true, "{transport}: {expiry}");
        assert_eq!(expiry["received"].as_array().map(Vec::len), Some(2));
    }

    // The server saw the same: two refusals (one per transport), two slow consumers, two expiries.
    let metrics: Value = reqwest::get(format!("{server}/metrics"))
        .await
        .expect("metrics")
        .json()
        .await
        .expect("metrics JSON");
    assert_eq!(
        metrics["connections_refused_total"]["forbidden"], 2,
        "{metrics}"
    );
    let closed = &metrics["connections_closed_total"];
    assert_eq!(closed["slow_consumer"], 2, "{metrics}");
    assert_eq!(closed["token_expired"], 2, "{metrics}");
    println!(
        "console reconnect browser test: {} in {} ms",
        result["browser"], result["elapsed_ms"]
    );
}

/// Runs `node <script> <options>` against the server and waits at most `run` for its result line;
/// fails the test, with the script's output, unless it reported every check passed and exited 0.
async fn run_console_script(
    chromium: &Path,
    script: &str,
    options: &str,
    run: Duration,
    timeout_ms: &str,
) -> Value {
    let mut browser = Browser::spawn(chromium, script, &[options], timeout_ms);
    let result = browser
        .wait_for_within(run, "the console script's result", |line| {
            line["kind"] == "result"
        })
        .await;
    let status = tokio::time::timeout(STEP, browser.child.wait())
        .await
        .unwrap_or_else(|_| browser.fail("the script did not exit"))
        .expect("wait for the script");
    if result["ok"] != true || !status.success() {
        browser.fail(&format!("the console checks failed ({status}): {result}"));
    }
    result
}

#[tokio::test]
async fn console_is_served_as_html_with_its_configuration_and_a_strict_policy() {
    let server = start_server_with(&[]).await;
    let response = get(&format!("{server}/")).await;
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("cache-control"), "no-cache");
    assert_eq!(header("x-content-type-options"), "nosniff");
    let policy = header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'sha256-",
        "style-src 'sha256-",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{directive} in {policy}");
    }
    assert!(!policy.contains("unsafe"), "{policy}");
    let page = response.text().await.expect("page");
    let config = page_config(&page);
    assert_eq!(
        config,
        json!({
            "ws_path": "/ws",
            "sse_stream_path": "/sse/stream",
            "sse_ack_path": "/sse/ack",
            "sse_path": "/sse/push",
            "console_path": "/",
            "version": env!("CARGO_PKG_VERSION"),
            "tokens_required": false,
            "api_keys_required": false,
            "metrics_public": true,
        })
    );
    assert!(!page.contains("{{CONSOLE_"), "every placeholder filled");
    // No external asset: the only URL is the SVG namespace in the inline icon.
    let urls = page.replace("http://www.w3.org/2000/svg", "");
    assert!(
        !urls.contains("http://") && !urls.contains("https://") && !urls.contains("//cdn"),
        "no external asset"
    );
}

#[tokio::test]
async fn console_path_is_configurable_and_console_enabled_false_removes_it() {
    let moved = start_server_with(&["--console-path", "/console", "--ws-path", "/live/ws"]).await;
    assert_eq!(get(&format!("{moved}/")).await.status(), 404);
    let response = get(&format!("{moved}/console")).await;
    assert_eq!(response.status(), 200);
    let config = page_config(&response.text().await.expect("page"));
    assert_eq!(config["ws_path"], "/live/ws");
    assert_eq!(config["console_path"], "/console");

    let off = start_server_with(&["--console-enabled", "false"]).await;
    let response = get(&format!("{off}/")).await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "the API's 404"
    );
    let body: Value = response.json().await.expect("404 JSON");
    assert_eq!(body, json!({"detail": "Not Found"}));
}

/// A subscriber token for `user`, valid for ten minutes.
fn token(user: &str) -> String {
    subscriber_token(JWT_SECRET, user, 600)
}

async fn get(url: &str) -> reqwest::Response {
    tokio::time::timeout(STEP, reqwest::get(url))
        .await
        .expect("answered in time")
        .expect("request")
}

/// The configuration the server put in the page.
fn page_config(page: &str) -> Value {
    let open = r#"<script type="application/json" id="console-config">"#;
    let start = page.find(open).expect("configuration block") + open.len();
    let end = start + page[start..].find("</script>").expect("end of the block");
    serde_json::from_str(&page[start..end]).expect("configuration is JSON")
}
