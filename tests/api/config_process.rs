//! The real binary as a child process: configuration errors and precedence, `--help`, log formats,
//! SIGTERM, and the `healthcheck` subcommand.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::process::Command;

use crate::helpers::{
    EXIT_DEADLINE, PROMPTLY, TestApp, Ws, close_of, exit_code, json_addr, server_command, sigterm,
    start_process, start_process_with, template_addr,
};

/// A fresh, empty working directory (so no stray `.env` is read).
fn workdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// The server command, bound to loopback on an ephemeral port.
fn loopback_server(cwd: &Path) -> Command {
    let mut command = server_command(cwd);
    command.env("HOST", "127.0.0.1").env("PORT", "0");
    command
}

/// What a process that ran to completion left behind.
struct Exit {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `command` to completion (bounded by [`EXIT_DEADLINE`]).
async fn run_to_exit(mut command: Command) -> Exit {
    let output = tokio::time::timeout(EXIT_DEADLINE, command.output())
        .await
        .expect("process exits within the deadline")
        .expect("process runs");
    Exit {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Asserts a configuration error: exit status 2, nothing on stdout, and a single stderr line
/// containing every fragment.
async fn assert_config_error(command: Command, fragments: &[&str]) -> String {
    let exit = run_to_exit(command).await;
    assert_eq!(exit.code, Some(2), "stderr: {}", exit.stderr);
    assert_eq!(exit.stdout, "", "nothing on stdout");
    let line = exit.stderr.trim();
    assert_eq!(line.lines().count(), 1, "a single line: {line:?}");
    for fragment in fragments {
        assert!(line.contains(fragment), "{fragment:?} in {line:?}");
    }
    line.to_owned()
}

/// Whether `line` starts like `2026-11-26 00:42:05 | {level} | ` (the seed's default template).
fn has_template_prefix(line: &str, level: &str) -> bool {
    let prefix = format!("dddd-dd-dd dd:dd:dd | {level} | ");
    line.len() >= prefix.len()
        && line.bytes().zip(prefix.bytes()).all(|(actual, expected)| {
            if expected == b'd' {
                actual.is_ascii_digit()
            } else {
                actual == expected
            }
        })
}

/// Connects a WebSocket client to `ws://addr{path}?user_id={user}`.
async fn connect(addr: SocketAddr, path: &str, user: &str) -> Ws {
    TestApp::at(addr)
        .handshake_on(path, &format!("user_id={user}"), &[])
        .await
        .unwrap_or_else(|refused| panic!("handshake on {path}: {refused:?}"))
}

/// The HTTP status of a WebSocket handshake on `path` that the server refuses.
async fn refused_status(addr: SocketAddr, path: &str) -> u16 {
    match TestApp::at(addr).handshake_on(path, "user_id=u", &[]).await {
        Err(refused) => refused.status,
        Ok(_) => panic!("expected {path} to be refused, but it upgraded"),
    }
}

// --- configuration errors ---------------------------------------------------------------------

#[tokio::test]
async fn non_numeric_port_in_the_environment_exits_2_naming_it() {
    let dir = workdir();
    let mut command = server_command(dir.path());
    command.env("PORT", "abc");
    let line = assert_config_error(command, &[r#"PORT="abc""#, "0 to 65535"]).await;
    assert_eq!(
        line,
        r#"error: invalid PORT="abc" (--port): expected an integer from 0 to 65535"#
    );
}

#[tokio::test]
async fn non_numeric_port_flag_exits_2_naming_it() {
    let dir = workdir();
    let mut command = server_command(dir.path());
    command.args(["--port", "abc"]);
    let line = assert_config_error(command, &[r#"PORT="abc""#, "(--port)", "0 to 65535"]).await;
    assert_eq!(
        line,
        r#"error: invalid PORT="abc" (--port): expected an integer from 0 to 65535"#
    );
}

#[tokio::test]
async fn unknown_log_level_exits_2_listing_the_choices() {
    let dir = workdir();
    let mut command = server_command(dir.path());
    command.env("LOG_LEVEL", "loud");
    assert_config_error(
        command,
        &[
            r#"LOG_LEVEL="loud""#,
            "expected one of",
            "trace",
            "debug",
            "info",
            "warn",
            "error",
        ],
    )
    .await;
}

#[tokio::test]
async fn negative_ping_interval_exits_2() {
    let dir = workdir();
    let mut command = server_command(dir.path());
    command.env("WS_PING_INTERVAL", "-1");
    assert_config_error(command, &[r#"WS_PING_INTERVAL="-1""#, "seconds"]).await;
}

#[tokio::test]
async fn push_path_that_shadows_health_exits_2() {
    let dir = workdir();
    let mut command = server_command(dir.path());
    command.env("SSE_PATH", "/health");
    assert_config_error(command, &[r#"SSE_PATH="/health""#, "reserved"]).await;
}

#[tokio::test]
async fn admin_keys_set_to_nothing_exit_2() {
    for value in ["", " ", ","] {
        let dir = workdir();
        let mut command = server_command(dir.path());
        command.env("ADMIN_API_KEYS", value);
        assert_config_error(command, &["ADMIN_API_KEYS", "no key"]).await;
    }
}

#[tokio::test]
async fn bad_value_in_dotenv_exits_2_naming_it() {
    let dir = workdir();
    std::fs::write(dir.path().join(".env"), "MAX_BATCH_SIZE=0\n").expect("write .env");
    let command = server_command(dir.path());
    assert_config_error(command, &[r#"MAX_BATCH_SIZE="0""#, "from 1 to 100000000"]).await;
}

/// A JWT key fixture (`tests/fixtures/jwt/`).
fn jwt_fixture(name: &str) -> String {
    format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn push_api_keys_set_without_a_key_exits_2() {
    let dir = workdir();
    for value in ["", " ", ",", " , "] {
        let mut command = loopback_server(dir.path());
        command.env("PUSH_API_KEYS", value);
        assert_config_error(command, &["PUSH_API_KEYS", "no key", "unset it"]).await;
    }
    // The same from `.env`: an uncommented `PUSH_API_KEYS=` line is a setting too.
    std::fs::write(dir.path().join(".env"), "PUSH_API_KEYS=\n").expect("write .env");
    assert_config_error(loopback_server(dir.path()), &["PUSH_API_KEYS", "no key"]).await;
}

#[tokio::test]
async fn a_jwt_secret_shorter_than_32_bytes_exits_2_without_printing_it() {
    let dir = workdir();
    for secret in ["x", "a-secret-of-thirty-one-bytes-31"] {
        let mut command = loopback_server(dir.path());
        command.env("JWT_SECRET", secret);
        let line = assert_config_error(
            command,
            &["JWT_SECRET", "(--jwt-secret)", "at least 32 bytes"],
        )
        .await;
        assert!(
            !line.contains(&format!("\"{secret}\"")),
            "the secret is printed: {line}"
        );
    }
}

#[tokio::test]
async fn a_public_key_file_without_a_usable_public_key_exits_2_naming_the_reason() {
    let dir = workdir();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key at all\n").expect("write garbage");
    let truncated = dir.path().join("truncated.pem");
    let public = std::fs::read_to_string(jwt_fixture("rs256_public.pem")).expect("fixture");
    std::fs::write(&truncated, public.replace("A", "B")).expect("write truncated");
    let cases = [
        (jwt_fixture("rs256_private.pem"), "a private key"),
        (jwt_fixture("es256_private.pem"), "a private key"),
        (garbage.display().to_string(), "no PEM"),
        (truncated.display().to_string(), "not a valid"),
        (jwt_fixture("es384_public.pem"), "P-256"),
        (jwt_fixture("rs1024_public.pem"), "2048 bits"),
        (jwt_fixture("missing.pem"), "cannot read"),
    ];
    for (file, reason) in cases {
        let mut command = loopback_server(dir.path());
        command.env("JWT_PUBLIC_KEY_FILE", &file);
        assert_config_error(command, &["JWT_PUBLIC_KEY_FILE", &file, reason]).await;
    }
}

#[tokio::test]
async fn the_example_env_file_copied_to_dotenv_starts_the_server() {
    let dir = workdir();
    let example = format!("{}/.env.example", env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(example, dir.path().join(".env")).expect("copy .env.example");
    // The environment beats .env: loopback and a free port instead of 0.0.0.0:8080.
    let server = start_process(loopback_server(dir.path())).await;
    assert!(server.addr.ip().is_loopback(), "{}", server.addr);
}

// --- precedence: flag > environment > .env > default --------------------------------------------

#[tokio::test]
async fn dotenv_in_the_working_directory_is_read() {
    let dir = workdir();
    std::fs::write(
        dir.path().join(".env"),
        "# settings for the test\nPORT=0\nHOST=127.0.0.1\nWS_PATH=/from-dotenv\n",
    )
    .expect("write .env");
    // No HOST or PORT in the environment: both come from .env (the default port 8080 would
    // otherwise be bound on every interface).
    let server = start_process(server_command(dir.path())).await;
    assert!(server.addr.ip().is_loopback(), "{}", server.addr);
    assert_ne!(server.addr.port(), 8080);

    let _ws = connect(server.addr, "/from-dotenv", "u").await;
    TestApp::at(server.addr).wait_for_connections(1).await;
    assert_eq!(refused_status(server.addr, "/ws").await, 404);
}

#[tokio::test]
async fn environment_beats_dotenv() {
    let dir = workdir();
    std::fs::write(
        dir.path().join(".env"),
        "PORT=0\nHOST=127.0.0.1\nWS_PATH=/from-dotenv\n",
    )
    .expect("write .env");
    let mut command = server_command(dir.path());
    command.env("WS_PATH", "/from-env");
    let server = start_process(command).await;

    let _ws = connect(server.addr, "/from-env", "u").await;
    assert_eq!(refused_status(server.addr, "/from-dotenv").await, 404);
}

#[tokio::test]
async fn flag_beats_environment() {
    let dir = workdir();
    std::fs::write(dir.path().join(".env"), "WS_PATH=/from-dotenv\n").expect("write .env");
    let mut command = loopback_server(dir.path());
    command
        .env("WS_PATH", "/from-env")
        .args(["--ws-path", "/from-flag"]);
    let server = start_process(command).await;

    let _ws = connect(server.addr, "/from-flag", "u").await;
    assert_eq!(refused_status(server.addr, "/from-env").await, 404);
    assert_eq!(refused_status(server.addr, "/from-dotenv").await, 404);
}

#[tokio::test]
async fn help_lists_every_variable_and_its_default() {
    let dir = workdir();
    let mut command = server_command(dir.path());
    command.arg("--help");
    let exit = run_to_exit(command).await;
    assert_eq!(exit.code, Some(0), "stderr: {}", exit.stderr);
    let help = exit.stdout;
    for (variable, default) in [
        ("HOST", "0.0.0.0"),
        ("PORT", "8080"),
        ("DEBUG", "false"),
        ("WS_PATH", "/ws"),
        ("WS_PING_INTERVAL", "30"),
        ("WS_PING_TIMEOUT", "10"),
        ("SSE_PATH", "/sse/push"),
        ("SSE_BATCH_PATH", "/sse/push/batch"),
        ("LOG_LEVEL", "INFO"),
        (
            "LOG_FORMAT",
            r#""{time:YYYY-MM-DD HH:mm:ss} | {level} | {message}""#,
        ),
        ("CORS_ORIGINS", "*"),
        ("MAX_BODY_BYTES", "1048576"),
        ("MAX_BATCH_SIZE", "1000"),
        ("MAX_CONNECTIONS", "0"),
        ("MAX_CONNECTIONS_PER_USER", "32"),
        ("WS_SEND_QUEUE", "1024"),
        ("WS_MAX_MESSAGE_BYTES", "65536"),
        ("SHUTDOWN_TIMEOUT", "10"),
    ] {
        let entry = format!("[env: {variable}=]");
        let position = help
            .find(&entry)
            .unwrap_or_else(|| panic!("{entry} in --help:\n{help}"));
        let after = &help[position + entry.len()..];
        let default_line = after
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .unwrap_or_default();
        assert_eq!(
            default_line,
            format!("[default: {default}]"),
            "default of {variable}"
        );
    }
    let summary = help.split("Usage:").next().unwrap_or_default();
    assert!(
        summary.contains("WebSocket") && summary.contains("Server-Sent Events (SSE)"),
        "the summary names both transports: {summary:?}"
    );
    assert!(help.contains(".env"), "help mentions the .env file");
    assert!(help.contains("healthcheck"), "help lists the subcommand");
}

// --- logging ----------------------------------------------------------------------------------

#[tokio::test]
async fn default_log_lines_follow_the_seed_template_without_debug_lines() {
    let dir = workdir();
    let command = loopback_server(dir.path());
    let mut server = start_process_with(command, template_addr).await;

    let first = &server.startup[0];
    assert!(has_template_prefix(first, "INFO"), "first line: {first:?}");
    let listening = server.startup.last().expect("the listening line");
    assert!(has_template_prefix(listening, "INFO"), "{listening:?}");
    assert!(
        listening.contains("websocket-sse-server listening")
            && listening.contains(&format!("address={}", server.addr)),
        "{listening:?}"
    );
    assert!(
        listening.contains(&format!("console=http://{}/ ", server.addr))
            && listening.contains(&format!("docs=http://{}/docs", server.addr)),
        "the start-up line says where the console and the API documentation are: {listening:?}"
    );

    // A connection would log at DEBUG level, which INFO does not show.
    let mut ws = connect(server.addr, "/ws", "quiet").await;
    TestApp::at(server.addr).wait_for_connections(1).await;
    sigterm(&server.child);
    // (The close handshake itself is checked in `sigterm_closes_clients_with_1001_and_exits_0`.)
    let _ = close_of(&mut ws).await;
    drop(ws);
    assert_eq!(exit_code(&mut server.child).await, Some(0));

    let lines = server.rest_of_log().await;
    assert!(
        lines
            .iter()
            .any(|line| line.contains("shutdown signal received")),
        "{lines:#?}"
    );
    for line in &lines {
        assert!(
            has_template_prefix(line, "INFO") || has_template_prefix(line, "WARNING"),
            "template line at INFO or above: {line:?}"
        );
    }
}

#[tokio::test]
async fn json_log_format_writes_one_json_object_per_line() {
    let dir = workdir();
    let mut command = loopback_server(dir.path());
    command.env("LOG_FORMAT", "json");
    let mut server = start_process_with(command, json_addr).await;

    let listening: Value =
        serde_json::from_str(server.startup.last().expect("listening line")).expect("JSON line");
    assert_eq!(listening["level"], "INFO", "{listening}");
    assert_eq!(
        listening["fields"]["message"], "websocket-sse-server listening",
        "{listening}"
    );
    assert_eq!(
        listening["fields"]["address"],
        server.addr.to_string(),
        "{listening}"
    );
    assert!(listening["timestamp"].is_string(), "{listening}");
    for line in &server.startup {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    }

    let (status, _) = TestApp::at(server.addr).get_json("/health").await;
    assert_eq!(status, 200);
    sigterm(&server.child);
    assert_eq!(exit_code(&mut server.child).await, Some(0));
    let lines = server.rest_of_log().await;
    assert!(!lines.is_empty(), "shutdown is logged");
    for line in &lines {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("JSON log line ({e}): {line:?}"));
        assert!(value["fields"]["message"].is_string(), "{line}");
    }
}

/// Both transports log a connection's start and end in the same words, with a `transport` field.
#[tokio::test]
async fn debug_true_logs_connections() {
    let dir = workdir();
    let mut command = loopback_server(dir.path());
    command.env("DEBUG", "true");
    let mut server = start_process(command).await;

    let ws = connect(server.addr, "/ws", "dbg").await;
    let line = server
        .wait_for_log("about the connection", |line| {
            line.contains(" connected") && line.contains("user=dbg")
        })
        .await;
    assert!(has_template_prefix(&line, "DEBUG"), "{line:?}");
    assert!(line.contains("transport=websocket"), "{line:?}");

    drop(ws);
    let line = server
        .wait_for_log("about the disconnection", |line| {
            line.contains("disconnected") && line.contains("user=dbg")
        })
        .await;
    assert!(has_template_prefix(&line, "DEBUG"), "{line:?}");
    assert!(line.contains("transport=websocket"), "{line:?}");

    let stream = TestApp::at(server.addr)
        .sse_stream("user_id=dbg-sse", &[])
        .await;
    let line = server
        .wait_for_log("about the SSE connection", |line| {
            line.contains("user=dbg-sse") && !line.contains("disconnected")
        })
        .await;
    assert!(
        line.contains(" connected") && !line.contains("sse connected"),
        "{line:?}"
    );
    assert!(line.contains("transport=sse"), "{line:?}");
    drop(stream);
    let line = server
        .wait_for_log("about the SSE disconnection", |line| {
            line.contains("disconnected") && line.contains("user=dbg-sse")
        })
        .await;
    assert!(
        !line.contains("sse disconnected") && line.contains("transport=sse"),
        "{line:?}"
    );
}

// --- signals ----------------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_0() {
    let dir = workdir();
    let mut command = loopback_server(dir.path());
    command.env("SHUTDOWN_TIMEOUT", "5");
    let mut server = start_process(command).await;
    let mut ws = connect(server.addr, "/ws", "bye").await;
    TestApp::at(server.addr).wait_for_connections(1).await;

    let started = tokio::time::Instant::now();
    sigterm(&server.child);
    let close = close_of(&mut ws).await;
    assert_eq!(
        close.as_ref().map(|(code, _)| *code),
        Some(1001),
        "the client gets a going-away close frame, not a reset: {close:?}"
    );
    // Keep reading so the client's close reply goes out; the server then ends at once.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert_eq!(exit_code(&mut server.child).await, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exited within SHUTDOWN_TIMEOUT (took {:?})",
        started.elapsed()
    );
}

// --- healthcheck subcommand -------------------------------------------------------------------

#[tokio::test]
async fn healthcheck_passes_against_a_running_server() {
    let dir = workdir();
    let server = start_process(loopback_server(dir.path())).await;

    // HOST left at its default (0.0.0.0): the probe goes to loopback.
    let mut probe = server_command(dir.path());
    probe
        .arg("healthcheck")
        .env("PORT", server.addr.port().to_string());
    let exit = run_to_exit(probe).await;
    assert_eq!(exit.code, Some(0), "stderr: {}", exit.stderr);
}

#[tokio::test]
async fn healthcheck_fails_when_nothing_listens() {
    let dir = workdir();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let mut probe = server_command(dir.path());
    probe
        .arg("healthcheck")
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string());
    let exit = run_to_exit(probe).await;
    assert_eq!(exit.code, Some(1), "stderr: {}", exit.stderr);
    assert!(exit.stderr.starts_with("unhealthy:"), "{}", exit.stderr);
}

#[tokio::test]
async fn a_non_utf8_environment_variable_is_no_reason_to_crash() {
    use std::os::unix::ffi::OsStrExt;
    let dir = workdir();
    let mut command = loopback_server(dir.path());
    command.env("UNRELATED", std::ffi::OsStr::from_bytes(b"\xff\xfe"));
    let server = start_process(command).await;
    let health = reqwest::get(format!("http://{}/health", server.addr))
        .await
        .expect("request");
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn sigterm_still_shuts_down_after_the_log_pipe_closed() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = workdir();
    let mut command = loopback_server(dir.path());
    command.env("SHUTDOWN_TIMEOUT", "3");
    let mut child = command.spawn().expect("server starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    tokio::time::timeout(PROMPTLY, async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            if template_addr(&line).is_some() {
                return;
            }
        }
        panic!("server exited before listening");
    })
    .await
    .expect("server announces its address");
    drop(lines); // nobody reads the log any more: every later log line fails to write

    sigterm(&child);
    assert_eq!(exit_code(&mut child).await, Some(0));
}
