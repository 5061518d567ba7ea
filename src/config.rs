//! Settings: where every tunable comes from and what values it accepts.
//!
//! Precedence, highest first: command-line flags, process environment, a `.env` file in the working
//! directory (loaded by `main` before parsing, never overriding the environment), built-in defaults.
//! Every value is parsed into its final type here, once, at start-up; a bad value stops the program
//! with one line that names the variable, the flag and the accepted values (see [`describe_error`]).
//!
//! The table of every setting (variable, default, meaning) is `docs/configuration.md`, checked
//! against the definitions here by a test; `--help` prints the same from the doc comments below.
//! The command line as a whole (subcommands, the `.env` merge) is [`crate::cli`]'s.

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::acks::AckLimits;
use crate::history::HistoryLimits;
use crate::hub::{QueueLimits, UserLimitPolicy};
use crate::logging::{LogFormat, LogLevel};
use crate::protocol::push::WAIT_MS_MAX;
use crate::webhook::{WebhookSecret, WebhookSettings, WebhookTypes};

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
    /// Bytes queued per connection (frame text); a client whose queue would hold more is closed
    /// as a slow consumer. An empty queue always takes one event, whatever its size.
    #[arg(long, env = "WS_SEND_QUEUE_BYTES", default_value = "4194304", value_parser = parse_bytes)]
    pub ws_send_queue_bytes: usize,
    /// Bytes queued for all connections of this node (a payload shared by several queues counted
    /// once); beyond it the connections holding the most are closed as slow consumers first.
    #[arg(long, env = "SEND_QUEUES_MAX_BYTES", default_value = "268435456", value_parser = parse_bytes)]
    pub send_queues_max_bytes: usize,
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
    /// PEM file with the server's certificate chain (its own certificate first): with
    /// `TLS_KEY_FILE`, the listener speaks TLS (`https://`, `wss://`), HTTP/2 by ALPN.
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM file with the private key of `TLS_CERT_FILE` (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TLS_KEY_FILE")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Seconds between two checks of the TLS files for a renewed certificate, loaded without a
    /// restart (SIGHUP also reloads); `0`: on SIGHUP only.
    #[arg(long, env = "TLS_RELOAD_INTERVAL", default_value = "10", value_parser = parse_seconds_or_zero)]
    pub tls_reload_interval: Duration,
    /// Most concurrent streams (requests, SSE streams) on one HTTP/2 connection.
    #[arg(long, env = "HTTP2_MAX_CONCURRENT_STREAMS", default_value = "250",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub http2_max_concurrent_streams: u32,
    /// Most messages in one batch request; longer batches get 422 and nothing is sent.
    #[arg(long, env = "MAX_BATCH_SIZE", default_value = "1000", value_parser = parse_count)]
    pub max_batch_size: usize,

    /// Server-Sent Events endpoint path (`GET`, `text/event-stream`).
    #[arg(long, env = "SSE_STREAM_PATH", default_value = "/sse/stream", value_parser = parse_path)]
    pub sse_stream_path: String,
    /// Path where SSE clients acknowledge events (`POST`, with the credentials of their stream).
    #[arg(long, env = "SSE_ACK_PATH", default_value = "/sse/ack", value_parser = parse_path)]
    pub sse_ack_path: String,
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
    /// Most users with a history; beyond it the least recently pushed user's history is dropped.
    #[arg(long, env = "HISTORY_MAX_USERS", default_value = "10000", value_parser = parse_count)]
    pub history_max_users: usize,
    /// Bytes of stored events (a payload shared by several users counted once); beyond it the
    /// least recently pushed users lose their oldest events first.
    #[arg(long, env = "HISTORY_MAX_BYTES", default_value = "268435456", value_parser = parse_bytes)]
    pub history_max_bytes: usize,

    /// WebSocket and SSE connections this node accepts; more get 503 before the upgrade. 0 derives the
    /// limit from the file-descriptor limit.
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "0", value_parser = parse_count_or_zero)]
    pub max_connections: usize,
    /// Connections one IP address may hold that have not yet sent a complete request head; more
    /// are closed at once.
    #[arg(long, env = "MAX_PENDING_CONNECTIONS_PER_IP", default_value = "256", value_parser = parse_count)]
    pub max_pending_connections_per_ip: usize,
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
    /// nodes sharing Redis: every node delivers to its own clients, history lives in Redis).
    #[arg(
        long,
        env = "BROKER",
        default_value = "memory",
        value_enum,
        ignore_case = true
    )]
    pub broker: BrokerKind,
    /// The Redis of a cluster (`redis://[:password@]host:port[/db]`, `rediss://` for TLS), or
    /// several independent ones separated by commas: each user lives on one of them (shards); or,
    /// with `REDIS_CLUSTER=true`, one or more nodes of a Redis Cluster.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379",
          value_parser = RedisUrls::parse, hide_default_value = true, hide_env_values = true)]
    pub redis_url: RedisUrls,
    /// Whether `REDIS_URL` names nodes of one Redis Cluster (any of them: the rest is discovered)
    /// rather than independent Redis servers. Users are then spread over
    /// `REDIS_CLUSTER_PARTITIONS` hash slots, and delivery uses sharded pub/sub (Redis 7 or later).
    #[arg(long, env = "REDIS_CLUSTER", default_value = "false", value_parser = parse_bool,
          action = clap::ArgAction::Set)]
    pub redis_cluster: bool,
    /// How many partitions (hash slots) a Redis Cluster's users are spread over: the unit the
    /// cluster's masters share, so best a multiple of their number (12 suits 1, 2, 3, 4 or 6
    /// masters). Every node must use the same; changing it moves users (their clients resync).
    #[arg(long, env = "REDIS_CLUSTER_PARTITIONS", default_value = "12",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub redis_cluster_partitions: u16,
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
    /// Replicas of the Redis (or of the Redis Cluster master) that must have each publish before
    /// it is answered (`WAIT`, up to half of `REDIS_TIMEOUT`): 0 answers as soon as the master has
    /// it; 1 or more makes an answered push survive a failover to a replica. A publish not
    /// confirmed in time is answered 504 (retry with the same `event_id`).
    #[arg(long, env = "REDIS_WAIT_REPLICAS", default_value = "0",
          value_parser = clap::value_parser!(u8).range(0..=16))]
    pub redis_wait_replicas: u8,

    /// Where webhooks are POSTed (http:// or https://): user.connected, user.disconnected,
    /// message.undelivered, client.message. Unset: no webhooks.
    #[arg(long, env = "WEBHOOK_URL", value_parser = parse_webhook_url)]
    pub webhook_url: Option<hyper::Uri>,
    /// The Standard Webhooks signing secret, `whsec_<base64 key>` (24 to 64 bytes of key);
    /// required with WEBHOOK_URL.
    #[arg(long, env = "WEBHOOK_SECRET", value_parser = WebhookSecret::parse, hide_env_values = true)]
    pub webhook_secret: Option<WebhookSecret>,
    /// Comma-separated webhook types to send.
    #[arg(long, env = "WEBHOOK_EVENTS",
          default_value = "user.connected,user.disconnected,message.undelivered,client.message",
          value_parser = WebhookTypes::parse)]
    pub webhook_events: WebhookTypes,
    /// Seconds one webhook attempt may take (connect, send, answer) before it counts as failed.
    #[arg(long, env = "WEBHOOK_TIMEOUT", default_value = "5", value_parser = parse_seconds)]
    pub webhook_timeout: Duration,
    /// Attempts per webhook, the first included; then it is given up (counted, logged).
    #[arg(long, env = "WEBHOOK_MAX_ATTEMPTS", default_value = "8",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub webhook_max_attempts: u32,
    /// Seconds before the first retry of a failed webhook; each next wait doubles (at most 60 s),
    /// drawn at random between half and all of it.
    #[arg(long, env = "WEBHOOK_RETRY_INITIAL", default_value = "1", value_parser = parse_seconds)]
    pub webhook_retry_initial: Duration,
    /// Most webhooks queued on this node; beyond it the oldest are dropped (counted, warned).
    #[arg(long, env = "WEBHOOK_QUEUE_SIZE", default_value = "10000", value_parser = parse_count)]
    pub webhook_queue_size: usize,
    /// Most bytes of webhook bodies queued on this node; beyond it the oldest are dropped.
    #[arg(long, env = "WEBHOOK_QUEUE_BYTES", default_value = "67108864", value_parser = parse_bytes)]
    pub webhook_queue_bytes: usize,
    /// Webhook deliveries in flight at once from this node (each user's webhooks go one at a
    /// time, in order).
    #[arg(long, env = "WEBHOOK_CONCURRENCY", default_value = "8",
          value_parser = |raw: &str| parse_bounded(raw, 1, 256))]
    pub webhook_concurrency: usize,
    /// Seconds a user's last connection may be gone before user.disconnected is sent: a user who
    /// reconnects (to any node) within it produces neither user.disconnected nor user.connected.
    #[arg(long, env = "WEBHOOK_PRESENCE_GRACE", default_value = "5",
          value_parser = parse_seconds_or_zero)]
    pub webhook_presence_grace: Duration,
    /// Seconds an event pushed with `"ack": true` waits for a client's acknowledgement before
    /// message.undelivered is sent.
    #[arg(long, env = "ACK_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub ack_timeout: Duration,
    /// Longest `wait_ms` a push may ask for, in milliseconds.
    #[arg(long, env = "ACK_WAIT_MAX_MS", default_value = "30000",
          value_parser = |raw: &str| parse_bounded(raw, 0, WAIT_MS_MAX as usize))]
    pub ack_wait_max_ms: usize,
    /// Most events waiting for acknowledgement per user on this node; beyond it the user's oldest
    /// is reported undelivered at once.
    #[arg(long, env = "ACK_PENDING_PER_USER", default_value = "1000", value_parser = parse_count)]
    pub ack_pending_per_user: usize,
    /// Most events waiting for acknowledgement on this node; beyond it the oldest is reported
    /// undelivered at once.
    #[arg(long, env = "ACK_PENDING_MAX", default_value = "100000", value_parser = parse_count)]
    pub ack_pending_max: usize,
    /// Most bytes of events waiting for acknowledgement on this node (each entry's frame counted);
    /// beyond it the oldest are reported undelivered at once.
    #[arg(long, env = "ACK_PENDING_MAX_BYTES", default_value = "67108864",
          value_parser = parse_bytes)]
    pub ack_pending_max_bytes: usize,

    /// Seconds `/ready` answers 503 (pushes are still served; new WebSocket and SSE connections are
    /// refused) before the listener closes, so load balancers stop sending traffic first.
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
    /// Comma-separated hosts (`host` or `host:port`) this server answers for besides loopback:
    /// a browser page served from one of them (the console) is the server's own origin, whatever
    /// CORS_ORIGINS says. Guards against DNS rebinding.
    #[arg(long, env = "ALLOWED_HOSTS", default_value = "", value_parser = AllowedHosts::parse,
          hide_default_value = true)]
    pub allowed_hosts: AllowedHosts,

    /// Comma-separated API keys that publishers must present (`Authorization: Bearer <key>` or
    /// `X-API-Key`) to push and to call administrative endpoints; several allow rotation. Unset:
    /// anyone who can reach the port may push; set, it must hold at least one key.
    #[arg(long, env = "PUSH_API_KEYS", value_parser = ApiKeys::parse, hide_env_values = true)]
    pub push_api_keys: Option<ApiKeys>,
    /// Comma-separated API keys for the administrative endpoints and broadcasts. Unset: the
    /// publisher keys (PUSH_API_KEYS) may use them too; set, it must hold at least one key.
    #[arg(long, env = "ADMIN_API_KEYS", value_parser = ApiKeys::parse, hide_env_values = true)]
    pub admin_api_keys: Option<ApiKeys>,
    /// Whether `/metrics` is served without an API key (when keys are set).
    #[arg(long, env = "METRICS_PUBLIC", default_value = "true", value_parser = parse_bool,
          action = clap::ArgAction::Set)]
    pub metrics_public: bool,
    /// HS256 secret (at least 32 bytes) that signs subscriber tokens. With it (or
    /// JWT_PUBLIC_KEY_FILE) WebSocket and SSE clients need a token, and the token's `sub` is their
    /// user.
    #[arg(long, env = "JWT_SECRET", value_parser = Secret::parse_hs256, hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// PEM file with the public key that verifies subscriber tokens: RSA of at least 2048 bits
    /// (RS256) or EC P-256 (ES256). Read and checked at start-up.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE", value_parser = JwtPublicKey::load)]
    pub jwt_public_key_file: Option<JwtPublicKey>,
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
    /// Leading bits of an IPv6 address that make one client for the per-IP limits
    /// (CONNECT_RATE_PER_IP, PUSH_RATE without keys): one subscriber usually gets a whole /64.
    /// 128 counts every address on its own.
    #[arg(long, env = "RATE_LIMIT_IPV6_PREFIX", default_value = "64", value_parser = parse_ipv6_prefix)]
    pub rate_limit_ipv6_prefix: u8,
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
    /// Accepts an HS256 secret of at least [`MIN_HS256_SECRET_BYTES`] bytes.
    pub fn parse_hs256(raw: &str) -> Result<Self, String> {
        if raw.len() < MIN_HS256_SECRET_BYTES {
            return Err(format!(
                "expected at least {MIN_HS256_SECRET_BYTES} bytes, got {} (RFC 7518 section 3.2: \
                 an HS256 key is at least as long as its 256-bit hash); generate one with \
                 `openssl rand -base64 48`",
                raw.len()
            ));
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

/// The Redis servers of a cluster, in the order given (it decides which shard holds a user, so
/// every node must list them alike). Secret: URLs may carry passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrls(Vec<Secret>);

impl RedisUrls {
    /// Accepts one `redis://`/`rediss://` URL, or several separated by commas, each once.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut urls: Vec<Secret> = Vec::new();
        for (n, part) in raw.split(',').map(str::trim).enumerate() {
            let url = Secret::parse_redis_url(part).map_err(|error| {
                if raw.contains(',') {
                    format!("URL {} of the list: {error}", n + 1)
                } else {
                    error
                }
            })?;
            let server = Self::server_of(&url);
            let same = |earlier: &Secret| server.is_some() && Self::server_of(earlier) == server;
            if let Some(first) = urls.iter().position(same) {
                return Err(format!(
                    "URL {} of the list names the same Redis server and database as URL {}: each \
                     shard must be a different Redis",
                    n + 1,
                    first + 1
                ));
            }
            urls.push(url);
        }
        Ok(Self(urls))
    }

    /// The server (`host:port`, any case of the host) and database a URL names, to tell two
    /// spellings of one apart from two servers.
    fn server_of(url: &Secret) -> Option<(String, i64)> {
        use redis::IntoConnectionInfo as _;
        let info = url.expose().into_connection_info().ok()?;
        Some((
            info.addr().to_string().to_ascii_lowercase(),
            info.redis_settings().db(),
        ))
    }

    /// The URLs, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.0.iter()
    }

    /// How many there are (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a list holds at least one URL.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for RedisUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrls({} × ***)", self.0.len())
    }
}

/// Shortest HS256 secret accepted (RFC 7518 §3.2: a key of the hash's size, 256 bits, or longer).
const MIN_HS256_SECRET_BYTES: usize = 32;

/// The publisher API keys (`PUSH_API_KEYS`): at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeys(pub Vec<Secret>);

impl ApiKeys {
    /// Parses a comma-separated list; blanks around keys are ignored. A list without a key is
    /// refused: a variable that is set asks for keys (it fails closed); open pushes are asked for
    /// by leaving it unset.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let keys: Vec<Secret> = raw
            .split(',')
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .map(|key| Secret(key.to_owned()))
            .collect();
        if keys.is_empty() {
            return Err(
                "it is set but holds no key: give comma-separated keys of at least 16 \
                 characters, or unset it"
                    .into(),
            );
        }
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

/// The public key that verifies subscriber tokens (`JWT_PUBLIC_KEY_FILE`), read and checked at
/// start-up; its type picks the one algorithm tokens may use.
///
/// The file's first PEM block must be a public key that really parses — checked with the `rsa`
/// and `p256` crates, the ones `jsonwebtoken` verifies with — so that a private key, a
/// certificate, a key on another curve, a short RSA key or garbage stops the server at start-up
/// instead of refusing every token later.
#[derive(Clone)]
pub struct JwtPublicKey {
    /// The key, as `jsonwebtoken` verifies with it.
    pub key: jsonwebtoken::DecodingKey,
    /// RS256 for an RSA key, ES256 for an EC P-256 key.
    pub algorithm: jsonwebtoken::Algorithm,
}

/// Smallest RSA modulus accepted, in bits (RFC 7518 §3.3).
const MIN_RSA_BITS: usize = 2048;

impl JwtPublicKey {
    /// Reads the PEM file at `path` and checks its key (see [`JwtPublicKey::from_pem`]).
    pub fn load(path: &str) -> Result<Self, String> {
        let pem =
            std::fs::read_to_string(path).map_err(|error| format!("cannot read it: {error}"))?;
        Self::from_pem(&pem)
    }

    /// The key of the first PEM block of `pem`: `PUBLIC KEY` (SubjectPublicKeyInfo) holding an
    /// RSA key of at least 2048 bits or an EC P-256 key, or `RSA PUBLIC KEY` (PKCS#1). Anything
    /// else is refused with the reason.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        use p256::pkcs8::DecodePublicKey as _;
        use rsa::pkcs1::DecodeRsaPublicKey as _;

        let (label, block) = first_pem_block(pem)
            .ok_or("no PEM block in it; expected -----BEGIN PUBLIC KEY-----")?;
        match label {
            "PUBLIC KEY" => {
                if let Ok(key) = rsa::RsaPublicKey::from_public_key_pem(block) {
                    Self::rsa(&key)
                } else if let Ok(key) = p256::PublicKey::from_public_key_pem(block) {
                    Ok(Self::p256(&key))
                } else {
                    Err(
                        "not a valid RSA or EC P-256 public key (the keys of RS256 and ES256)"
                            .into(),
                    )
                }
            }
            "RSA PUBLIC KEY" => rsa::RsaPublicKey::from_pkcs1_pem(block)
                .map_err(|_| "not a valid PKCS#1 RSA public key".to_owned())
                .and_then(|key| Self::rsa(&key)),
            "CERTIFICATE" => Err("it holds a certificate; give the server its public key: \
                                  openssl x509 -in cert.pem -pubkey -noout"
                .into()),
            label if label.ends_with("PRIVATE KEY") => Err(format!(
                "it holds a private key ({label}); give the server only the public key: \
                 openssl pkey -in private.pem -pubout"
            )),
            label => Err(format!(
                "it holds a {label}, not a PUBLIC KEY (RSA for RS256 or EC P-256 for ES256)"
            )),
        }
    }

    fn rsa(key: &rsa::RsaPublicKey) -> Result<Self, String> {
        use rsa::traits::PublicKeyParts as _;

        let bits = key.n().bits();
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "an RSA key of {bits} bits; RS256 needs at least {MIN_RSA_BITS} bits (RFC 7518 \
                 section 3.3)"
            ));
        }
        Ok(Self {
            key: jsonwebtoken::DecodingKey::from_rsa_raw_components(
                &key.n().to_bytes_be(),
                &key.e().to_bytes_be(),
            ),
            algorithm: jsonwebtoken::Algorithm::RS256,
        })
    }

    fn p256(key: &p256::PublicKey) -> Self {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;

        Self {
            key: jsonwebtoken::DecodingKey::from_ec_der(key.to_encoded_point(false).as_bytes()),
            algorithm: jsonwebtoken::Algorithm::ES256,
        }
    }
}

impl std::fmt::Debug for JwtPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtPublicKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The label and the text (from its BEGIN line to its END line) of the first PEM block in `text`.
fn first_pem_block(text: &str) -> Option<(&str, &str)> {
    let start = text.find("-----BEGIN ")?;
    let after = &text[start + "-----BEGIN ".len()..];
    let label = &after[..after.find("-----")?];
    let end_line = format!("-----END {label}-----");
    let end = start + text[start..].find(&end_line)? + end_line.len();
    Some((label, &text[start..end]))
}

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

/// The hosts a browser may reach this server under besides loopback (`ALLOWED_HOSTS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// Parses a comma-separated list of `host` or `host:port`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                let valid = !item.contains('/') && item.chars().all(|c| c.is_ascii_graphic());
                if valid {
                    Ok(item.to_ascii_lowercase())
                } else {
                    Err(format!(
                        "{item:?} is not a host or host:port such as push.example.com"
                    ))
                }
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `authority` (a `Host` header: `host[:port]`) is listed, as it is or, for an entry
    /// without a port, on any port.
    pub fn contains(&self, authority: &str) -> bool {
        let authority = authority.to_ascii_lowercase();
        let host = host_of(&authority);
        self.0
            .iter()
            .any(|entry| *entry == authority || *entry == host)
    }
}

/// The host part of an authority `host[:port]` (an IPv6 literal keeps its brackets).
pub fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _port)| host)
}

/// Which broker routes pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BrokerKind {
    /// In this process: a single node.
    Memory,
    /// Through Redis: a cluster of nodes.
    Redis,
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
    /// The command line that parses these settings from flags alone: no argument is bound to an
    /// environment variable (the derive's `env = …` bindings are reset).
    pub fn flags_only_command() -> clap::Command {
        Self::augment_args(clap::Command::new("websocket-sse-server"))
            .mut_args(|arg| arg.env(None::<&'static str>))
    }

    /// Parses settings from flags alone (program name first): the environment is not read, so the
    /// result depends on `args` and the defaults only. Tests build servers with it.
    pub fn from_flags<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::flags_only_command().try_get_matches_from(args)?;
        <Self as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    /// The history bounds these settings ask for.
    pub fn history_limits(&self) -> HistoryLimits {
        HistoryLimits {
            size: self.history_size,
            ttl: self.history_ttl,
            max_users: self.history_max_users,
            max_bytes: self.history_max_bytes,
        }
    }

    /// The webhook settings, when WEBHOOK_URL is set (with its secret: see
    /// [`Self::check_consistency`]).
    pub fn webhook_settings(&self) -> Option<WebhookSettings> {
        Some(WebhookSettings {
            url: self.webhook_url.clone()?,
            secret: self.webhook_secret.clone()?,
            types: self.webhook_events,
            timeout: self.webhook_timeout,
            max_attempts: self.webhook_max_attempts,
            retry_initial: self.webhook_retry_initial,
            queue_items: self.webhook_queue_size,
            queue_bytes: self.webhook_queue_bytes,
            concurrency: self.webhook_concurrency,
        })
    }

    /// The acknowledgement bounds these settings ask for.
    pub fn ack_limits(&self) -> AckLimits {
        AckLimits {
            timeout: self.ack_timeout,
            wait_max: Duration::from_millis(self.ack_wait_max_ms as u64),
            per_user: self.ack_pending_per_user,
            max: self.ack_pending_max,
            max_bytes: self.ack_pending_max_bytes,
        }
    }

    /// The send-queue bounds these settings ask for.
    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            items: self.ws_send_queue,
            bytes: self.ws_send_queue_bytes,
            node_bytes: self.send_queues_max_bytes,
        }
    }

    /// Checks rules that involve several settings at once (the endpoint paths are checked against
    /// the route table: [`crate::routes::check_paths`]). Returns the first problem, in one line.
    pub fn check_consistency(&self) -> Result<(), String> {
        if self.broker == BrokerKind::Redis && self.ws_send_queue <= self.history_size {
            return Err(format!(
                "invalid WS_SEND_QUEUE={}: with BROKER=redis it must be larger than \
                 HISTORY_SIZE={} (a cluster catch-up is queued whole)",
                self.ws_send_queue, self.history_size
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("invalid TLS_CERT_FILE/TLS_KEY_FILE: set both (TLS on) or neither".into());
        }
        if self.jwt_secret.is_some() && self.jwt_public_key_file.is_some() {
            return Err(
                "invalid JWT_SECRET with JWT_PUBLIC_KEY_FILE: set one of them (HS256 with a \
                 secret, or RS256/ES256 with a public key)"
                    .into(),
            );
        }
        if !self.metrics_public && self.push_api_keys.is_none() {
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
        let plain = |url: &Secret| !url.expose().starts_with("rediss://");
        if self.redis_ca_file.is_some() && self.redis_url.iter().any(plain) {
            return Err(
                "invalid REDIS_CA_FILE: it needs TLS REDIS_URLs (rediss://host:port)".into(),
            );
        }
        let not_db_0 = |url: &Secret| RedisUrls::server_of(url).is_some_and(|(_, db)| db != 0);
        if self.redis_cluster && self.redis_url.iter().any(not_db_0) {
            return Err("invalid REDIS_URL: a Redis Cluster has only database 0".into());
        }
        match (&self.webhook_url, &self.webhook_secret) {
            (Some(_), None) => {
                return Err(
                    "invalid WEBHOOK_URL: it needs WEBHOOK_SECRET (whsec_<base64 key>), \
                            which signs every webhook"
                        .into(),
                );
            }
            (None, Some(_)) => {
                return Err(
                    "invalid WEBHOOK_SECRET: it needs WEBHOOK_URL, where webhooks go".into(),
                );
            }
            _ => {}
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

/// Highest byte-size setting: 1 TiB.
const MAX_BYTES: usize = 1 << 40;

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

/// A size in bytes, from 1 to 1 TiB.
fn parse_bytes(raw: &str) -> Result<usize, String> {
    parse_bounded(raw, 1, MAX_BYTES)
}

fn parse_count_or_zero(raw: &str) -> Result<usize, String> {
    parse_bounded(raw, 0, MAX_COUNT)
}

fn parse_rate(raw: &str) -> Result<u32, String> {
    parse_bounded(raw, 0, MAX_RATE).map(|rate| rate as u32)
}

/// Highest rate setting, per second.
const MAX_RATE: usize = 1_000_000;

/// A prefix length of an IPv6 address, from 1 to 128 bits.
fn parse_ipv6_prefix(raw: &str) -> Result<u8, String> {
    parse_bounded(raw, 1, 128).map(|bits| bits as u8)
}

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

/// Parses a positive number of seconds (fractions allowed), at most a day: the parser of every
/// duration setting that may not be zero, and of the client commands' durations.
pub fn parse_seconds(raw: &str) -> Result<Duration, String> {
    match parse_seconds_or_zero(raw) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err("expected a number of seconds greater than 0, such as 10 or 0.5".into()),
    }
}

/// Upper bound for any duration setting: a day is longer than any sensible timeout.
const MAX_SECONDS: f64 = 86_400.0;
const SECONDS_EXPECTED: &str = "expected a number of seconds from 0 to 86400, such as 30 or 0.5";

/// An `http://` or `https://` URL with a host.
fn parse_webhook_url(raw: &str) -> Result<hyper::Uri, String> {
    let url: hyper::Uri = raw
        .trim()
        .parse()
        .map_err(|e| format!("expected an http:// or https:// URL ({e})"))?;
    let http = matches!(url.scheme_str(), Some("http" | "https"));
    if !http || url.host().is_none_or(str::is_empty) {
        return Err("expected an http:// or https:// URL with a host".into());
    }
    Ok(url)
}

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

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        Settings::from_flags(std::iter::once("websocket-sse-server").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_seed() {
        let settings = parse(&[]).expect("defaults parse");
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
    fn python_level_names_are_accepted() {
        let settings = parse(&["--log-level", "WARNING"]).unwrap();
        assert_eq!(settings.log_level, LogLevel::Warn);
        let settings = parse(&["--log-level", "critical"]).unwrap();
        assert_eq!(settings.log_level, LogLevel::Error);
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
    fn public_keys_pick_their_algorithm_and_everything_else_is_refused() {
        let fixture = |name: &str| {
            let path = format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
            JwtPublicKey::load(&path)
        };
        use jsonwebtoken::Algorithm::{ES256, RS256};
        for (name, algorithm) in [
            ("rs256_public.pem", RS256),
            ("rs256_public_pkcs1.pem", RS256),
            ("es256_public.pem", ES256),
        ] {
            assert_eq!(fixture(name).unwrap().algorithm, algorithm, "{name}");
        }
        for (name, reason) in [
            ("rs256_private.pem", "private key"),
            ("es256_private.pem", "private key"),
            ("es384_public.pem", "P-256"),
            ("rs1024_public.pem", "1024 bits"),
        ] {
            let refused = fixture(name).unwrap_err();
            assert!(refused.contains(reason), "{name}: {refused}");
        }
        let public = std::fs::read_to_string(format!(
            "{}/tests/fixtures/jwt/es256_public.pem",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let with_text = format!("A comment before the key\n{public}trailing text\n");
        assert_eq!(JwtPublicKey::from_pem(&with_text).unwrap().algorithm, ES256);
        let certificate = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert!(
            JwtPublicKey::from_pem(certificate)
                .unwrap_err()
                .contains("certificate")
        );
        assert!(JwtPublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nMIIB\n").is_err());
        assert!(
            JwtPublicKey::from_pem("")
                .unwrap_err()
                .contains("no PEM block")
        );
    }

    #[test]
    fn key_lists_and_secrets_fail_closed() {
        for empty in ["", " ", ",", " , ,"] {
            assert!(
                ApiKeys::parse(empty).unwrap_err().contains("no key"),
                "{empty:?}"
            );
        }
        assert!(parse(&["--push-api-keys", ""]).is_err());
        assert!(parse(&[]).unwrap().push_api_keys.is_none(), "unset: open");
        assert!(Secret::parse_hs256(&"s".repeat(31)).is_err());
        assert!(Secret::parse_hs256(&"s".repeat(32)).is_ok());
        assert!(Secret::parse_hs256("").is_err());
    }

    #[test]
    fn the_ipv6_prefix_is_a_prefix_length() {
        assert_eq!(parse(&[]).unwrap().rate_limit_ipv6_prefix, 64);
        assert_eq!(parse_ipv6_prefix("128"), Ok(128));
        for bad in ["0", "129", "/64", "x"] {
            assert!(parse_ipv6_prefix(bad).is_err(), "{bad}");
        }
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
