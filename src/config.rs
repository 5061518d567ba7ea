//! Settings: where every tunable comes from and what values it accepts.
//!
//! Precedence, highest first: command-line flags, process environment, a `.env` file in the working
//! directory (loaded by `main` before parsing, never overriding the environment), built-in defaults.
//! Every value is parsed into its final type here, once, at start-up; a bad value stops the program
//! with one line that names the variable, the flag and the accepted values (see [`describe_error`]).
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `HOST` | `0.0.0.0` | address to bind |
//! | `PORT` | `8080` | port to bind (`0` picks a free one) |
//! | `DEBUG` | `false` | `true` forces debug-level logging |
//! | `WORKERS` | `0` | runtime worker threads; `0` uses every core this process may run on |
//! | `WS_PATH` | `/ws` | WebSocket endpoint |
//! | `WS_PING_INTERVAL` | `30` | seconds between keepalive pings; `0` disables pings |
//! | `WS_PING_TIMEOUT` | `10` | seconds a client has to answer a ping before it is closed |
//! | `WS_MAX_MESSAGE_BYTES` | `65536` | largest client frame; bigger ones close the socket with 1009 |
//! | `WS_SEND_QUEUE` | `1024` | events queued per connection (WebSocket or SSE) before it is closed as a slow consumer; must exceed `HISTORY_SIZE` |
//! | `WS_WRITE_TIMEOUT` | `10` | seconds one socket write (WebSocket, SSE or HTTP response) may stall before the client counts as slow |
//! | `SSE_PATH` | `/sse/push` | single push endpoint |
//! | `SSE_BATCH_PATH` | `/sse/push/batch` | batch push endpoint |
//! | `MAX_BODY_BYTES` | `1048576` | largest push request body (413 beyond) |
//! | `HTTP_REQUEST_TIMEOUT` | `30` | seconds to send a request head (or stay idle between requests), and a body (408) |
//! | `MAX_BATCH_SIZE` | `1000` | most messages in one batch (422 beyond) |
//! | `SSE_STREAM_PATH` | `/sse/stream` | Server-Sent Events endpoint |
//! | `SSE_KEEPALIVE` | `15` | seconds between keepalive comments on an idle SSE stream; `0` disables them |
//! | `SSE_RETRY` | `3` | seconds an EventSource waits before reconnecting (`retry:` hint) |
//! | `HISTORY_SIZE` | `100` | events kept per user for resume and duplicate detection; `0` disables history |
//! | `HISTORY_TTL` | `300` | seconds an event stays in history; `0` disables history |
//! | `HISTORY_MAX_USERS` | `10000` | most users with a history; the idlest is dropped beyond it |
//! | `MAX_CONNECTIONS` | `0` | WebSocket and SSE connections on this node (503 beyond); `0` derives it from the file-descriptor limit |
//! | `MAX_CONNECTIONS_PER_USER` | `32` | connections one user may hold |
//! | `USER_LIMIT_POLICY` | `reject` | at the per-user limit: `reject` the new connection or `replace-oldest` |
//! | `CONSOLE_ENABLED` | `true` | whether the web console is served |
//! | `CONSOLE_PATH` | `/` | path of the web console |
//! | `BROKER` | `memory` | `memory` (single node) or `redis` (cluster over Redis) |
//! | `REDIS_URL` | `redis://127.0.0.1:6379` | the cluster's Redis (`rediss://` for TLS; may carry a password) |
//! | `REDIS_CA_FILE` | (none) | PEM CA of the Redis server's TLS certificate (`rediss://`), instead of the public roots |
//! | `REDIS_KEY_PREFIX` | `wss:` | prefix of the cluster's Redis keys and channels |
//! | `NODE_ID` | (random) | this node's name in the cluster's presence |
//! | `PRESENCE_LEASE` | `15` | seconds a silent node's connections still count cluster-wide |
//! | `REDIS_TIMEOUT` | `2` | seconds to connect to Redis or wait for an answer |
//! | `SHUTDOWN_DRAIN` | `0` | seconds `/ready` answers 503 before the listener closes on shutdown |
//! | `SHUTDOWN_TIMEOUT` | `10` | seconds a graceful shutdown may take in all |
//! | `LOG_LEVEL` | `INFO` | `TRACE`, `DEBUG`, `INFO`, `WARNING`, `ERROR` (`RUST_LOG`, when set, wins) |
//! | `LOG_FORMAT` | `{time:YYYY-MM-DD HH:mm:ss} \| {level} \| {message}` | a loguru-style template, or `json` |
//! | `CORS_ORIGINS` | `*` | `*` or a comma-separated list of allowed origins (HTTP API, WebSocket and SSE) |
//! | `PUSH_API_KEYS` | (none) | comma-separated publisher keys; when set, pushes and admin endpoints need one |
//! | `METRICS_PUBLIC` | `true` | whether `/metrics` is open when API keys are set |
//! | `JWT_SECRET` | (none) | HS256 secret of subscriber tokens; turns subscriber authentication on |
//! | `JWT_PUBLIC_KEY_FILE` | (none) | PEM public key (RS256 or ES256) of subscriber tokens; instead of `JWT_SECRET` |
//! | `JWT_AUDIENCE`, `JWT_ISSUER` | (none) | the `aud` / `iss` tokens must carry |
//! | `CONNECT_RATE_PER_IP` | `0` | connection attempts per second per client IP (429 beyond); `0` disables |
//! | `PUSH_RATE` | `0` | push requests per second per API key (or client IP); `0` disables |
//! | `CLIENT_MESSAGE_RATE` | `10` | frames per second a WebSocket client may send (1008 beyond); `0` disables |
//! | `TRUSTED_PROXIES` | (none) | proxies whose `X-Forwarded-For` is believed |

use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::history::HistoryLimits;
use crate::logging::LogFormat;

/// The whole command line: server settings plus an optional subcommand.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "websocket-sse-server",
    version,
    about = "Real-time push gateway: upstream services POST JSON messages for a user_id; every \
             WebSocket client connected as that user receives them at once, in order.",
    after_help = "Every option can also be set by the environment variable shown, or in a .env file \
                  in the working directory. Flags beat the environment, which beats .env."
)]
pub struct Cli {
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings shared by every subcommand.
    #[command(flatten)]
    pub settings: Settings,
}

/// The program's subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Ask the server on HOST:PORT for `/health`; exit 0 when it answers 200, 1 otherwise. Made for
    /// container health checks, so the image needs no curl.
    Healthcheck,
    /// Push one event to a user (or several) through a running server, and print its JSON answer.
    #[command(
        after_help = "Exit status: 0 when the server answers 2xx, 1 otherwise (refused, \
                            unreachable, timed out), 2 for bad arguments such as --data that is \
                            not a JSON object (nothing is sent then).\n\n\
                            Example:\n  websocket-sse-server push --user 42 \
                            --data '{\"text\":\"hello\"}' --event-type chat"
    )]
    Push(PushArgs),
    /// Connect to a running server as a user and print every event it delivers, one JSON line per
    /// event on stdout (status lines go to stderr); reconnect and resume when the connection
    /// drops.
    #[command(
        after_help = "Reconnects with exponential backoff (with jitter, capped at \
                            --reconnect-max) and resumes from the last event id seen, so nothing \
                            is lost or repeated while the event is in the server's history (else \
                            the server sends a resync event).\n\n\
                            Exit status: 0 after --count events or on Ctrl-C/SIGTERM; 1 when the \
                            server refuses the connection for good (400, 401, 403) or an \
                            administrator disconnects the user (close code 4003); 2 for bad \
                            arguments; 3 when the token expired (close code 4001): get a new \
                            token and run again with --token <new> --last-event-id <the id \
                            printed>.\n\n\
                            Example:\n  websocket-sse-server listen --user 42 --count 1"
    )]
    Listen(ListenArgs),
}

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
    /// The server's base URL, http:// (plain only) [default: http://127.0.0.1:PORT, PORT from
    /// the settings].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
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
    /// The server's base URL, http:// or ws:// (plain only) [default: ws://127.0.0.1:PORT, or
    /// http://127.0.0.1:PORT with --sse; PORT from the settings].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
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

/// Every server setting, parsed and validated.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to bind (an IP address or a host name).
    #[arg(long, env = "HOST", default_value = "0.0.0.0", value_parser = parse_host)]
    pub host: String,
    /// Port to bind; 0 picks a free port.
    #[arg(long, env = "PORT", default_value = "8080", value_parser = parse_port)]
    pub port: u16,
    /// Debug-level logging, whatever LOG_LEVEL says.
    #[arg(long, env = "DEBUG", default_value = "false", value_parser = parse_bool,
          num_args = 0..=1, default_missing_value = "true")]
    pub debug: bool,
    /// Runtime worker threads; 0 uses every core this process may run on.
    #[arg(long, env = "WORKERS", default_value = "0", value_parser = parse_workers)]
    pub workers: usize,

    /// WebSocket endpoint path.
    #[arg(long, env = "WS_PATH", default_value = "/ws", value_parser = parse_path)]
    pub ws_path: String,
    /// Seconds between keepalive pings to each WebSocket client; 0 disables pings.
    #[arg(long, env = "WS_PING_INTERVAL", default_value = "30", value_parser = parse_seconds_or_zero)]
    pub ws_ping_interval: Duration,
    /// Seconds a client has to answer a ping before it is closed and unregistered.
    #[arg(long, env = "WS_PING_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub ws_ping_timeout: Duration,
    /// Largest frame a client may send, in bytes; bigger frames close that socket with 1009.
    #[arg(long, env = "WS_MAX_MESSAGE_BYTES", default_value = "65536", value_parser = parse_count)]
    pub ws_max_message_bytes: usize,
    /// Events queued per connection; a client whose queue is full is closed as a slow consumer.
    #[arg(long, env = "WS_SEND_QUEUE", default_value = "1024", value_parser = parse_count)]
    pub ws_send_queue: usize,
    /// Seconds one write to a client socket may take before the client is closed as slow.
    #[arg(long, env = "WS_WRITE_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub ws_write_timeout: Duration,

    /// Single-message push endpoint path.
    #[arg(long, env = "SSE_PATH", default_value = "/sse/push", value_parser = parse_path)]
    pub sse_path: String,
    /// Batch push endpoint path.
    #[arg(long, env = "SSE_BATCH_PATH", default_value = "/sse/push/batch", value_parser = parse_path)]
    pub sse_batch_path: String,
    /// Largest push request body in bytes; bigger bodies get 413.
    #[arg(long, env = "MAX_BODY_BYTES", default_value = "1048576", value_parser = parse_count)]
    pub max_body_bytes: usize,
    /// Seconds a client may take to send a request head (also the idle time allowed between
    /// keep-alive requests) and, separately, a request body (408 beyond).
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub http_request_timeout: Duration,
    /// Most messages in one batch request; longer batches get 422 and nothing is sent.
    #[arg(long, env = "MAX_BATCH_SIZE", default_value = "1000", value_parser = parse_count)]
    pub max_batch_size: usize,

    /// Server-Sent Events endpoint path (`GET`, `text/event-stream`).
    #[arg(long, env = "SSE_STREAM_PATH", default_value = "/sse/stream", value_parser = parse_path)]
    pub sse_stream_path: String,
    /// Seconds between keepalive comments on an idle SSE stream; 0 disables them.
    #[arg(long, env = "SSE_KEEPALIVE", default_value = "15", value_parser = parse_seconds_or_zero)]
    pub sse_keepalive: Duration,
    /// Seconds an EventSource waits before reconnecting (the `retry:` hint sent first).
    #[arg(long, env = "SSE_RETRY", default_value = "3", value_parser = parse_seconds)]
    pub sse_retry: Duration,

    /// Events kept per user for clients that resume after a disconnect; 0 disables history
    /// (and with it resume and duplicate detection).
    #[arg(long, env = "HISTORY_SIZE", default_value = "100", value_parser = parse_count_or_zero)]
    pub history_size: usize,
    /// Seconds an event stays in history; 0 disables history.
    #[arg(long, env = "HISTORY_TTL", default_value = "300", value_parser = parse_seconds_or_zero)]
    pub history_ttl: Duration,
    /// Most users with a history; beyond it the idlest user's history is dropped.
    #[arg(long, env = "HISTORY_MAX_USERS", default_value = "10000", value_parser = parse_count)]
    pub history_max_users: usize,

    /// WebSocket and SSE connections this node accepts; more get 503 before the upgrade. 0 derives the
    /// limit from the file-descriptor limit.
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "0", value_parser = parse_count_or_zero)]
    pub max_connections: usize,
    /// Connections one user may hold at once (tabs, devices).
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value = "32", value_parser = parse_count)]
    pub max_connections_per_user: usize,
    /// What happens to a connection beyond MAX_CONNECTIONS_PER_USER.
    #[arg(
        long,
        env = "USER_LIMIT_POLICY",
        default_value = "reject",
        value_enum,
        ignore_case = true
    )]
    pub user_limit_policy: UserLimitPolicy,

    /// Whether the web console (a page to connect as a user, push, and watch live stats) is served.
    #[arg(long, env = "CONSOLE_ENABLED", default_value = "true", value_parser = parse_bool,
          action = clap::ArgAction::Set)]
    pub console_enabled: bool,
    /// Path of the web console.
    #[arg(long, env = "CONSOLE_PATH", default_value = "/", value_parser = parse_console_path)]
    pub console_path: String,

    /// Where pushes are routed: `memory` (this node only, the default) or `redis` (a cluster of
    /// nodes sharing one Redis: every node delivers to its own clients, history lives in Redis).
    #[arg(
        long,
        env = "BROKER",
        default_value = "memory",
        value_enum,
        ignore_case = true
    )]
    pub broker: BrokerKind,
    /// The Redis of a cluster (`redis://[:password@]host:port[/db]`, `rediss://` for TLS).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379",
          value_parser = Secret::parse_redis_url, hide_default_value = true, hide_env_values = true)]
    pub redis_url: Secret,
    /// PEM file with the certificate authority that signed the Redis server's TLS certificate
    /// (`rediss://` only), when it is not one of the public roots.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// Prefix of every Redis key and channel this cluster uses (several clusters may share a Redis).
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "wss:", value_parser = parse_key_prefix)]
    pub redis_key_prefix: String,
    /// This node's name in the cluster's presence; a random one (a ULID) when unset. Letters,
    /// digits, `-`, `_`, `.`; at most 64.
    #[arg(long, env = "NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,
    /// Seconds a node's presence (its connections, counted cluster-wide) outlives its last
    /// heartbeat; nodes heartbeat every third of it. A node that dies unannounced is forgotten
    /// after this long.
    #[arg(long, env = "PRESENCE_LEASE", default_value = "15", value_parser = parse_seconds)]
    pub presence_lease: Duration,
    /// Seconds to connect to Redis or to wait for one of its answers before counting it unreachable.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "2", value_parser = parse_seconds)]
    pub redis_timeout: Duration,

    /// Seconds `/ready` answers 503 (while everything else is still served) before the listener
    /// closes, so load balancers stop sending traffic first.
    #[arg(long, env = "SHUTDOWN_DRAIN", default_value = "0", value_parser = parse_seconds_or_zero)]
    pub shutdown_drain: Duration,
    /// Seconds a graceful shutdown may take in all, drain included; then the process exits anyway.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub shutdown_timeout: Duration,

    /// Log level; RUST_LOG, when set, overrides it with a full filter.
    #[arg(
        long,
        env = "LOG_LEVEL",
        default_value = "INFO",
        value_enum,
        ignore_case = true
    )]
    pub log_level: LogLevel,
    /// Log line template in loguru syntax ({time:FORMAT}, {level}, {message}, {name}), or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = crate::logging::DEFAULT_TEMPLATE,
          value_parser = LogFormat::parse)]
    pub log_format: LogFormat,
    /// `*` or a comma-separated list of origins allowed to call the HTTP API from a browser, and
    /// to open WebSocket and SSE connections (a browser's other origins get 403).
    #[arg(long, env = "CORS_ORIGINS", default_value = "*", value_parser = CorsOrigins::parse)]
    pub cors_origins: CorsOrigins,

    /// Comma-separated API keys that publishers must present (`Authorization: Bearer <key>` or
    /// `X-API-Key`) to push and to call administrative endpoints; several allow rotation. Empty:
    /// anyone who can reach the port may push.
    #[arg(long, env = "PUSH_API_KEYS", default_value = "", value_parser = ApiKeys::parse,
          hide_default_value = true, hide_env_values = true)]
    pub push_api_keys: ApiKeys,
    /// Whether `/metrics` is served without an API key (when keys are set).
    #[arg(long, env = "METRICS_PUBLIC", default_value = "true", value_parser = parse_bool,
          action = clap::ArgAction::Set)]
    pub metrics_public: bool,
    /// HS256 secret that signs subscriber tokens. With it (or JWT_PUBLIC_KEY_FILE) WebSocket and
    /// SSE clients need a token, and the token's `sub` is their user.
    #[arg(long, env = "JWT_SECRET", value_parser = Secret::parse, hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// PEM file with the RSA (RS256) or EC P-256 (ES256) public key that verifies subscriber tokens.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// The `aud` subscriber tokens must carry, if set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The `iss` subscriber tokens must carry, if set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// WebSocket and SSE connection attempts per second from one client IP (twice that in a
    /// burst); more get 429. 0 (the default) disables the limit: behind a load balancer every
    /// client would share its address unless TRUSTED_PROXIES names it.
    #[arg(long, env = "CONNECT_RATE_PER_IP", default_value = "0", value_parser = parse_rate)]
    pub connect_rate_per_ip: u32,
    /// Push requests per second per publisher: per API key, or per client IP without keys (twice
    /// that in a burst); more get 429. 0 disables the limit.
    #[arg(long, env = "PUSH_RATE", default_value = "0", value_parser = parse_rate)]
    pub push_rate: u32,
    /// Frames per second one WebSocket client may send (twice that in a burst); a client over it
    /// is closed with 1008. 0 disables the limit.
    #[arg(long, env = "CLIENT_MESSAGE_RATE", default_value = "10", value_parser = parse_rate)]
    pub client_message_rate: u32,
    /// Comma-separated proxy addresses or networks (`10.0.0.0/8`) whose `X-Forwarded-For` is
    /// believed when working out a client's IP for rate limits. Empty: the peer address is the
    /// client's.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = TrustedProxies::parse)]
    pub trusted_proxies: TrustedProxies,
}

/// A secret setting: never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Accepts any non-empty value.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("expected a non-empty value".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// Accepts a `redis://` or `rediss://` URL (which may carry a password, hence secret).
    pub fn parse_redis_url(raw: &str) -> Result<Self, String> {
        let valid = ["redis://", "rediss://"]
            .iter()
            .any(|scheme| raw.len() > scheme.len() && raw.starts_with(scheme));
        if !valid {
            return Err("expected a URL such as redis://127.0.0.1:6379, \
                        redis://:password@host:6379/0 or rediss://host:6380"
                .into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// The secret itself, for the code that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The publisher API keys (`PUSH_API_KEYS`); empty means pushes are open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeys(pub Vec<Secret>);

impl ApiKeys {
    /// Parses a comma-separated list; blanks around keys are ignored.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let keys: Vec<Secret> = raw
            .split(',')
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .map(|key| Secret(key.to_owned()))
            .collect();
        if keys.iter().any(|key| key.0.len() < MIN_API_KEY_BYTES) {
            return Err(format!(
                "every key must have at least {MIN_API_KEY_BYTES} characters (use long random keys)"
            ));
        }
        Ok(Self(keys))
    }
}

/// Shortest API key accepted: shorter ones are guessable.
const MIN_API_KEY_BYTES: usize = 16;

/// Proxies whose `X-Forwarded-For` header is believed (`TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Parses a comma-separated list of IP addresses and CIDR networks.
    pub fn parse(raw: &str) -> Result<Self, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<ipnet::IpNet>()
                    .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!("{item:?} is not an IP address or network such as 10.0.0.0/8")
                    })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `address` is one of the trusted proxies.
    pub fn contains(&self, address: std::net::IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&address))
    }
}

/// Which broker routes pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BrokerKind {
    /// In this process: a single node.
    Memory,
    /// Through Redis: a cluster of nodes.
    Redis,
}

/// What to do with a connection that would exceed `MAX_CONNECTIONS_PER_USER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UserLimitPolicy {
    /// Refuse the new connection (close code 1008); the existing ones are untouched.
    Reject,
    /// Accept the new connection and close the user's oldest one (close code 1008).
    ReplaceOldest,
}

/// Logging verbosity, with the seed's Python level names accepted as aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Everything, including per-frame detail.
    Trace,
    /// Connection and push detail.
    Debug,
    /// Start-up, shutdown and notable events.
    Info,
    /// Problems the server worked around.
    #[value(alias = "warning")]
    Warn,
    /// Failures only.
    #[value(alias = "critical")]
    Error,
}

/// Browser origins allowed by CORS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: every origin.
    Any,
    /// Only these exact origins (`scheme://host[:port]`).
    List(Vec<String>),
}

impl CorsOrigins {
    /// Parses `*` or a comma-separated list of `scheme://host[:port]` origins.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw == "*" {
            return Ok(Self::Any);
        }
        let origins: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|origin| !origin.is_empty())
            .map(|origin| origin.trim_end_matches('/').to_owned())
            .collect();
        if origins.is_empty() {
            return Err("expected * or a comma-separated list of origins such as \
                        https://app.example.com"
                .into());
        }
        for origin in &origins {
            let valid = origin.split_once("://").is_some_and(|(scheme, host)| {
                !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                    && !host.is_empty()
                    && !host.contains('/')
                    && host.chars().all(|c| c.is_ascii_graphic())
            });
            if !valid {
                return Err(format!(
                    "{origin:?} is not an origin; expected * or a comma-separated list of \
                     scheme://host[:port] such as https://app.example.com"
                ));
            }
        }
        Ok(Self::List(origins))
    }
}

impl Settings {
    /// Parses settings from a full argument list (program name first) and the environment.
    /// Integration tests use this to build servers with chosen flags.
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::try_parse_from(args).map(|cli| cli.settings)
    }

    /// The history bounds these settings ask for.
    pub fn history_limits(&self) -> HistoryLimits {
        HistoryLimits {
            size: self.history_size,
            ttl: self.history_ttl,
            max_users: self.history_max_users,
        }
    }

    /// Checks rules that involve several settings at once. Returns one line per problem.
    pub fn check_consistency(&self) -> Result<(), String> {
        let paths = [
            ("WS_PATH", self.ws_path.as_str()),
            ("SSE_PATH", self.sse_path.as_str()),
            ("SSE_BATCH_PATH", self.sse_batch_path.as_str()),
            ("SSE_STREAM_PATH", self.sse_stream_path.as_str()),
            ("CONSOLE_PATH", self.console_path.as_str()),
        ];
        for (i, (name, path)) in paths.iter().enumerate() {
            if let Some((reserved, _)) = RESERVED_PATHS.iter().find(|(p, _)| p == path) {
                return Err(format!(
                    "invalid {name}={path:?}: {reserved} is reserved for the {} endpoint",
                    RESERVED_PATHS
                        .iter()
                        .find(|(p, _)| p == reserved)
                        .map_or("", |(_, what)| what)
                ));
            }
            if let Some((other, _)) = paths[..i].iter().find(|(_, p)| p == path) {
                return Err(format!(
                    "invalid {name}={path:?}: {other} already uses that path"
                ));
            }
        }
        if self.history_limits().enabled() && self.ws_send_queue <= self.history_size {
            return Err(format!(
                "invalid WS_SEND_QUEUE={}: must be larger than HISTORY_SIZE={} so that a replay \
                 of the whole history fits in a connection's queue",
                self.ws_send_queue, self.history_size
            ));
        }
        if self.jwt_secret.is_some() && self.jwt_public_key_file.is_some() {
            return Err(
                "invalid JWT_SECRET with JWT_PUBLIC_KEY_FILE: set one of them (HS256 with a \
                 secret, or RS256/ES256 with a public key)"
                    .into(),
            );
        }
        if !self.metrics_public && self.push_api_keys.0.is_empty() {
            return Err(
                "invalid METRICS_PUBLIC=false: it needs PUSH_API_KEYS, the keys /metrics would \
                 then require"
                    .into(),
            );
        }
        let verifies_tokens = self.jwt_secret.is_some() || self.jwt_public_key_file.is_some();
        if !verifies_tokens && (self.jwt_audience.is_some() || self.jwt_issuer.is_some()) {
            return Err("invalid JWT_AUDIENCE/JWT_ISSUER: they need JWT_SECRET or \
                        JWT_PUBLIC_KEY_FILE, which turn subscriber tokens on"
                .into());
        }
        if self.redis_ca_file.is_some() && !self.redis_url.expose().starts_with("rediss://") {
            return Err(
                "invalid REDIS_CA_FILE: it needs a TLS REDIS_URL (rediss://host:port)".into(),
            );
        }
        if !self.shutdown_drain.is_zero() && self.shutdown_drain >= self.shutdown_timeout {
            return Err(format!(
                "invalid SHUTDOWN_DRAIN={}: must be shorter than SHUTDOWN_TIMEOUT={}",
                self.shutdown_drain.as_secs_f64(),
                self.shutdown_timeout.as_secs_f64()
            ));
        }
        Ok(())
    }
}

/// Paths the server always serves, which the configurable paths must not shadow.
const RESERVED_PATHS: [(&str, &str); 7] = [
    ("/health", "health"),
    ("/ready", "readiness"),
    ("/metrics", "metrics"),
    ("/metrics/prometheus", "Prometheus metrics"),
    ("/openapi.json", "OpenAPI document"),
    ("/docs", "API documentation"),
    ("/sse/broadcast", "broadcast"),
];

impl Cli {
    /// Parses flags, the environment and `dotenv` (the `.env` file's settings that the environment
    /// does not set). On a bad value, returns the one-line message to print; help and version
    /// requests and usage errors are handled by clap (printed, then exit).
    ///
    /// `.env` settings become flags placed before the command line's, and a later flag overrides
    /// an earlier one, so the command line still wins; the environment is never modified. Keys
    /// that are not settings are ignored.
    pub fn parse_or_exit(dotenv: Vec<(String, String)>) -> Result<Self, String> {
        let command = Self::command().args_override_self(true);
        let mut given = std::env::args_os();
        let program = given
            .next()
            .unwrap_or_else(|| "websocket-sse-server".into());
        let from_dotenv: Vec<std::ffi::OsString> = dotenv
            .into_iter()
            .filter_map(|(key, value)| {
                let long = command
                    .get_arguments()
                    .find(|arg| arg.get_env().is_some_and(|env| env == key.as_str()))?
                    .get_long()?;
                Some(format!("--{long}={value}").into())
            })
            .collect();
        let args = std::iter::once(program).chain(from_dotenv).chain(given);
        let parsed = command.try_get_matches_from(args).and_then(|mut matches| {
            <Self as clap::FromArgMatches>::from_arg_matches_mut(&mut matches)
        });
        match parsed {
            Ok(cli) => cli.settings.check_consistency().map(|()| cli),
            Err(err) => match err.kind() {
                ErrorKind::ValueValidation | ErrorKind::InvalidValue => Err(describe_error(&err)),
                _ => err.exit(),
            },
        }
    }
}

/// Turns clap's report of a bad value into one line naming the environment variable, the flag,
/// the value and what is accepted, e.g. `invalid PORT="abc" (--port): expected an integer from 0
/// to 65535`.
pub fn describe_error(err: &clap::Error) -> String {
    let context_string = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let flag = context_string(ContextKind::InvalidArg).unwrap_or_default();
    let value = context_string(ContextKind::InvalidValue).unwrap_or_default();
    let long = flag
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_start_matches("--");
    let command = Cli::command();
    let env = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned());
    let expected = match err.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(values)) => format!("expected one of {}", values.join(", ")),
        _ => std::error::Error::source(err).map_or_else(
            || "the value is not accepted".to_owned(),
            |source| source.to_string(),
        ),
    };
    match env {
        Some(env) => format!("invalid {env}={value:?} (--{long}): {expected}"),
        // A subcommand's flag (`push`, `listen`): no variable to name.
        None => format!("invalid value {value:?} for --{long}: {expected}"),
    }
}

fn parse_host(raw: &str) -> Result<String, String> {
    // `[::]` is how IPv6 addresses appear in URLs; binding wants them bare.
    let host = raw.trim().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err("expected an IP address or host name such as 0.0.0.0 or localhost".into());
    }
    Ok(host.to_owned())
}

fn parse_port(raw: &str) -> Result<u16, String> {
    raw.trim()
        .parse()
        .map_err(|_| "expected an integer from 0 to 65535".to_owned())
}

fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// Upper bound for every count setting: far above any sensible value, far below what the
/// structures sized by them (semaphores, channels) can hold.
pub const MAX_COUNT: usize = 100_000_000;

/// Upper bound for `WORKERS`.
const MAX_WORKERS: usize = 1024;

fn parse_bounded(raw: &str, min: usize, max: usize) -> Result<usize, String> {
    match raw.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

fn parse_count(raw: &str) -> Result<usize, String> {
    parse_bounded(raw, 1, MAX_COUNT)
}

fn parse_count_or_zero(raw: &str) -> Result<usize, String> {
    parse_bounded(raw, 0, MAX_COUNT)
}

fn parse_rate(raw: &str) -> Result<u32, String> {
    parse_bounded(raw, 0, MAX_RATE).map(|rate| rate as u32)
}

/// Highest rate setting, per second.
const MAX_RATE: usize = 1_000_000;

fn parse_workers(raw: &str) -> Result<usize, String> {
    parse_bounded(raw, 0, MAX_WORKERS)
}

fn parse_seconds_or_zero(raw: &str) -> Result<Duration, String> {
    let seconds: f64 = raw
        .trim()
        .parse()
        .map_err(|_| SECONDS_EXPECTED.to_owned())?;
    if !(0.0..=MAX_SECONDS).contains(&seconds) {
        return Err(SECONDS_EXPECTED.into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_seconds(raw: &str) -> Result<Duration, String> {
    match parse_seconds_or_zero(raw) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err("expected a number of seconds greater than 0, such as 10 or 0.5".into()),
    }
}

/// Upper bound for any duration setting: a day is longer than any sensible timeout.
const MAX_SECONDS: f64 = 86_400.0;
const SECONDS_EXPECTED: &str = "expected a number of seconds from 0 to 86400, such as 30 or 0.5";

fn parse_console_path(raw: &str) -> Result<String, String> {
    if raw.trim() == "/" {
        Ok("/".to_owned())
    } else {
        parse_path(raw)
    }
}

fn parse_key_prefix(raw: &str) -> Result<String, String> {
    let valid = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '{' && c != '}');
    if valid {
        Ok(raw.to_owned())
    } else {
        Err(
            "expected 1 to 64 visible ASCII characters without braces, such as wss: or app1:"
                .into(),
        )
    }
}

fn parse_node_id(raw: &str) -> Result<String, String> {
    let valid = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid {
        Ok(raw.to_owned())
    } else {
        Err("expected 1 to 64 letters, digits, '-', '_' or '.', such as node-a".into())
    }
}

fn parse_path(raw: &str) -> Result<String, String> {
    let path = raw.trim();
    let valid = path.len() > 1
        && path.starts_with('/')
        && !path.ends_with('/')
        && !path.contains("//")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-._~".contains(c));
    if valid {
        Ok(path.to_owned())
    } else {
        Err(
            "expected a URL path such as /ws: starts with /, letters, digits and - . _ ~ / only, \
             no trailing or double slash"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("websocket-sse-server").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_seed() {
        let settings = parse(&[]).expect("defaults parse").settings;
        assert_eq!(settings.port, 8080);
        assert_eq!(settings.host, "0.0.0.0");
        assert_eq!(settings.ws_path, "/ws");
        assert_eq!(settings.sse_path, "/sse/push");
        assert_eq!(settings.sse_batch_path, "/sse/push/batch");
        assert_eq!(settings.ws_ping_interval, Duration::from_secs(30));
        assert_eq!(settings.ws_ping_timeout, Duration::from_secs(10));
        assert_eq!(settings.cors_origins, CorsOrigins::Any);
        assert_eq!(settings.log_level, LogLevel::Info);
        assert!(!settings.debug);
    }

    #[test]
    fn bad_port_names_variable_flag_and_range() {
        let err = parse(&["--port", "abc"]).unwrap_err();
        assert_eq!(
            describe_error(&err),
            r#"invalid PORT="abc" (--port): expected an integer from 0 to 65535"#
        );
    }

    #[test]
    fn bad_log_level_lists_the_choices() {
        let err = parse(&["--log-level", "loud"]).unwrap_err();
        let line = describe_error(&err);
        assert!(
            line.starts_with(r#"invalid LOG_LEVEL="loud" (--log-level): expected one of"#),
            "{line}"
        );
        assert!(line.contains("info") && line.contains("warn"), "{line}");
    }

    #[test]
    fn negative_interval_is_refused() {
        let err = parse(&["--ws-ping-interval=-1"]).unwrap_err();
        assert!(describe_error(&err).starts_with(r#"invalid WS_PING_INTERVAL="-1""#));
    }

    #[test]
    fn python_level_names_are_accepted() {
        let cli = parse(&["--log-level", "WARNING"]).unwrap();
        assert_eq!(cli.settings.log_level, LogLevel::Warn);
        let cli = parse(&["--log-level", "critical"]).unwrap();
        assert_eq!(cli.settings.log_level, LogLevel::Error);
    }

    #[test]
    fn cors_list_is_split_and_checked() {
        assert_eq!(
            CorsOrigins::parse("https://a.example, http://b.example:8080/").unwrap(),
            CorsOrigins::List(vec![
                "https://a.example".into(),
                "http://b.example:8080".into()
            ])
        );
        assert!(CorsOrigins::parse("not-an-origin").is_err());
        assert!(CorsOrigins::parse(" , ").is_err());
    }

    #[test]
    fn clashing_paths_are_refused() {
        let cli = parse(&["--sse-path", "/health"]).unwrap();
        let err = cli.settings.check_consistency().unwrap_err();
        assert!(err.starts_with(r#"invalid SSE_PATH="/health""#), "{err}");
        let cli = parse(&["--ws-path", "/sse/push"]).unwrap();
        assert!(cli.settings.check_consistency().is_err());
    }

    #[test]
    fn cluster_settings_are_checked_and_the_redis_url_stays_secret() {
        let cli = parse(&[
            "--broker",
            "REDIS",
            "--redis-url",
            "redis://:hunter2@redis:6379/1",
            "--node-id",
            "node-a.eu_1",
        ])
        .unwrap();
        assert_eq!(cli.settings.broker, BrokerKind::Redis);
        assert_eq!(
            cli.settings.redis_url.expose(),
            "redis://:hunter2@redis:6379/1"
        );
        assert!(!format!("{:?}", cli.settings).contains("hunter2"));
        assert_eq!(cli.settings.presence_lease, Duration::from_secs(15));
        for (flag, bad) in [
            ("--redis-url", "http://redis:6379"),
            ("--redis-url", "redis://"),
            ("--node-id", "a/b"),
            ("--node-id", ""),
            ("--redis-key-prefix", "a{b}"),
            ("--redis-key-prefix", "has space"),
            ("--broker", "kafka"),
        ] {
            let err = parse(&[flag, bad]).unwrap_err();
            assert!(describe_error(&err).starts_with("invalid "), "{flag} {bad}");
        }
    }

    #[test]
    fn paths_must_be_plain() {
        assert!(parse_path("/ws").is_ok());
        for bad in ["ws", "/", "/ws/", "/{id}", "/a//b", "/:x", "/*rest"] {
            assert!(parse_path(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn counts_are_bounded() {
        assert!(parse(&["--max-connections", "18446744073709551615"]).is_err());
        assert!(parse(&["--ws-send-queue", "4000000000000000000"]).is_err());
        assert!(parse(&["--workers", "100000"]).is_err());
        assert_eq!(parse_host("[::]").unwrap(), "::");
    }

    #[test]
    fn seconds_accept_fractions_and_refuse_nonsense() {
        assert_eq!(parse_seconds("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_seconds("0").is_err());
        assert_eq!(parse_seconds_or_zero("0").unwrap(), Duration::ZERO);
        for bad in ["-1", "NaN", "inf", "1e9", "ten"] {
            assert!(
                parse_seconds_or_zero(bad).is_err(),
                "{bad} should be refused"
            );
        }
    }
}
