//! Test servers are built from their flags alone: a developer's environment (an exported `PORT`,
//! `WS_PATH`, `JWT_SECRET`, …) must not change what the tests run. The server processes that
//! tests start get an empty environment too (`helpers::server_command`).

use std::process::Command;

use serde_json::json;

use websocket_sse_server::config::Settings;

use crate::helpers::{next_json, spawn_app, test_settings};

/// Settings from the environment that would change what a test server does, had they reached it:
/// another path, credentials required, no history, one connection per user, and a log level the
/// server refuses (so that reading it would fail the parse outright).
const HOSTILE_ENVIRONMENT: [(&str, &str); 8] = [
    ("PORT", "1"),
    ("WS_PATH", "/elsewhere"),
    ("SSE_PATH", "/elsewhere/push"),
    ("JWT_SECRET", "a-developer-secret-0123456789abcdef"),
    ("PUSH_API_KEYS", "a-developer-key-0123456789abcdef"),
    ("HISTORY_SIZE", "0"),
    ("MAX_CONNECTIONS_PER_USER", "1"),
    ("LOG_LEVEL", "not-a-level"),
];

/// What [`the_environment_does_not_reach_test_servers`] runs again, in a child process.
const DEFAULTS_TEST: &str = "isolation::a_test_server_has_the_documented_defaults";

#[test]
fn no_test_setting_is_bound_to_an_environment_variable() {
    let command = Settings::flags_only_command();
    assert!(
        command
            .get_arguments()
            .any(|arg| arg.get_long() == Some("ws-path")),
        "the command holds the server's settings"
    );
    let bound: Vec<String> = command
        .get_arguments()
        .filter(|arg| arg.get_env().is_some())
        .map(|arg| arg.get_id().to_string())
        .collect();
    assert!(bound.is_empty(), "read from the environment: {bound:?}");
}

/// Passes whatever the environment holds; [`the_environment_does_not_reach_test_servers`] runs it
/// with [`HOSTILE_ENVIRONMENT`].
#[tokio::test]
async fn a_test_server_has_the_documented_defaults() {
    let settings = test_settings(&[]);
    assert_eq!(settings.ws_path, "/ws");
    assert_eq!(settings.port, 0, "the flag's");

    let app = spawn_app(&[]).await;
    // On /ws, without a token, and twice for one user.
    let mut first = app.connect("env-user").await;
    let mut second = app.connect("env-user").await;
    // On /sse/push, without an API key; stored in the history.
    let response = app.push(json!({"user_id": "env-user", "data": {}})).await;
    assert_eq!(response["delivered"], 2, "{response}");
    assert_eq!(response["stored"], true, "{response}");
    for ws in [&mut first, &mut second] {
        next_json(ws).await;
    }
}

#[test]
fn the_environment_does_not_reach_test_servers() {
    let output = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", DEFAULTS_TEST])
        .envs(HOSTILE_ENVIRONMENT)
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{DEFAULTS_TEST} failed with {HOSTILE_ENVIRONMENT:?}:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{DEFAULTS_TEST} did not run:\n{stdout}"
    );
}
