//! The arguments of the client subcommands `push` and `listen` (parsed by [`crate::cli`]).

use std::time::Duration;

use clap::Args;

use crate::config::parse_seconds;

/// Arguments of `push`.
#[derive(Debug, Clone, Args)]
#[command(group = clap::ArgGroup::new("recipients").required(true).args(["user", "user_ids"]))]
pub struct PushArgs {
    /// The user to push to.
    #[arg(long, value_name = "USER_ID")]
    pub user: Option<String>,
    /// Several users, comma-separated: one event (one event_id) for all of them, one result each.
    #[arg(long, value_name = "ID,ID,...", value_delimiter = ',')]
    pub user_ids: Vec<String>,
    /// The event's payload: a JSON object, `@FILE` to read it from a file, or `-` for stdin.
    #[arg(long, value_name = "JSON")]
    pub data: String,
    /// The event's type (the server's default is `message`).
    #[arg(long, value_name = "TYPE")]
    pub event_type: Option<String>,
    /// The event's id, for safe retries: the server recognises a repeated id (default: it makes
    /// one up).
    #[arg(long, value_name = "ID")]
    pub event_id: Option<String>,
    /// The server's base URL, http:// or https:// [default: this machine's server on PORT from
    /// the settings, over TLS when TLS_CERT_FILE is set].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// PEM file with a certificate authority to trust for an https:// URL, besides the public
    /// roots (a private CA).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// The push endpoint's path, appended to the URL [default: SSE_PATH from the settings].
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    /// Publisher API key, sent as `Authorization: Bearer`, when the server has PUSH_API_KEYS
    /// [default: PUSH_API_KEY from the environment, else the first key of PUSH_API_KEYS, so
    /// that it works next to the server's own .env].
    #[arg(long, value_name = "KEY", env = "PUSH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,
}

/// Arguments of `listen`.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// The user to connect as (with --token, the token's `sub` decides; this may be left out).
    #[arg(long, value_name = "USER_ID", required_unless_present = "token")]
    pub user: Option<String>,
    /// Subscriber JWT, sent as `Authorization: Bearer`, when the server verifies tokens.
    #[arg(long, value_name = "JWT", env = "LISTEN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Use the Server-Sent Events stream instead of the WebSocket.
    #[arg(long)]
    pub sse: bool,
    /// The server's base URL, http(s):// or ws(s):// [default: this machine's server on PORT
    /// from the settings, over TLS when TLS_CERT_FILE is set].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// PEM file with a certificate authority to trust for an https:// or wss:// URL, besides the
    /// public roots (a private CA).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// The endpoint's path, appended to the URL [default: WS_PATH, or SSE_STREAM_PATH with
    /// --sse, from the settings].
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    /// Resume from this event id (or `<epoch>:<position>` token) on the first connection.
    #[arg(long, value_name = "ID")]
    pub last_event_id: Option<String>,
    /// Exit (status 0) after printing this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Seconds before the first reconnection attempt; each failed attempt doubles it (with
    /// jitter).
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = parse_seconds)]
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts, in seconds.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    pub reconnect_max: Duration,
}
