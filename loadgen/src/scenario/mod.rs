//! The scenarios (`push`, `batch`, `fanout`, `idle`, `churn`, `history`, `broadcast`,
//! `user-ids`) and helpers they share.

pub mod batch;
pub mod broadcast;
pub mod churn;
pub mod fanout;
pub mod history;
pub mod idle;
pub mod load;
pub mod payload;
pub mod push;
pub mod user_ids;

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::sse;
use crate::target::{Target, TargetKind};

/// Quiet time before the server's RSS is read again after connections were opened (`idle`),
/// churned (`churn`) or history was filled (`history`), and before the idle RSS is read in
/// `broadcast` and `user-ids`.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Tries per connection opened by [`open_connections`] (the number in flight at once is the
/// target's [`crate::target::Protocol::max_handshakes_in_flight`]).
pub const CONNECT_ATTEMPTS: u32 = 3;

/// Result of opening many connections.
#[derive(Debug)]
pub struct Opened<T> {
    /// What `on_open` returned for every connection that opened.
    pub items: Vec<T>,
    /// Connections that failed every attempt.
    pub failed: u64,
    /// Retries needed in total.
    pub retries: u64,
    /// The first handshake error seen, for the report.
    pub first_error: Option<String>,
    /// Wall time spent opening.
    pub elapsed: Duration,
}

/// Opens one connection per `(user_id, user_index)` with `connect(user_id)` (a WebSocket, an
/// event stream), with bounded concurrency and up to [`CONNECT_ATTEMPTS`] tries each, handing each
/// open stream to `on_open` right away (so it is read, and answers pings, while the rest open).
pub async fn open_connections<S, T, C, Fut, F>(
    target: &Target,
    specs: Vec<(String, u64)>,
    connect: C,
    mut on_open: F,
) -> Opened<T>
where
    C: Fn(String) -> Fut,
    Fut: Future<Output = anyhow::Result<S>>,
    F: FnMut(S, String, u64) -> T,
{
    let started = Instant::now();
    let mut opened = Opened {
        items: Vec::with_capacity(specs.len()),
        failed: 0,
        retries: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    let connect = &connect;
    let mut attempts = futures_util::stream::iter(specs)
        .map(|(user_id, user_index)| async move {
            let (result, retries) =
                connect_with_retry(CONNECT_ATTEMPTS, || connect(user_id.clone())).await;
            (result, retries, user_id, user_index)
        })
        .buffer_unordered(target.protocol.max_handshakes_in_flight().max(1));
    while let Some((result, retries, user_id, user_index)) = attempts.next().await {
        opened.retries += u64::from(retries);
        match result {
            Ok(stream) => opened.items.push(on_open(stream, user_id, user_index)),
            Err(error) => {
                opened.failed += 1;
                opened
                    .first_error
                    .get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    opened.elapsed = started.elapsed();
    opened
}

/// Calls `connect` up to `attempts` times (short linear backoff) until it succeeds; returns the
/// stream or the last error, and how many retries were needed.
pub async fn connect_with_retry<S, Fut>(
    attempts: u32,
    mut connect: impl FnMut() -> Fut,
) -> (anyhow::Result<S>, u32)
where
    Fut: Future<Output = anyhow::Result<S>>,
{
    let mut retries = 0;
    loop {
        match connect().await {
            Ok(stream) => return (Ok(stream), retries),
            Err(error) if retries + 1 >= attempts.max(1) => return (Err(error), retries),
            Err(_) => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(50 * u64::from(retries))).await;
            }
        }
    }
}

/// Refuses a run that would need more file descriptors than the soft limit allows.
pub fn check_fd_budget(connections: u64, publishers: u64) -> anyhow::Result<()> {
    let limit = crate::sys::raise_nofile_limit();
    let needed = connections + publishers + 64;
    if limit != 0 && needed > limit {
        anyhow::bail!(
            "{connections} connections + {publishers} publishers need ~{needed} file descriptors, \
             but RLIMIT_NOFILE is {limit}"
        );
    }
    Ok(())
}

/// Options every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Which server to drive: its API, WebSocket protocol and default port.
    #[arg(long, value_enum, default_value_t = TargetKind::Ours)]
    pub target: TargetKind,
    /// Base URL of the server's WebSocket side (loopback only); default by target: ours and
    /// fastapi http://127.0.0.1:8080, pushpin http://127.0.0.1:18000, sockudo
    /// http://127.0.0.1:18300.
    #[arg(long)]
    pub url: Option<String>,
    /// Base URL publishers POST to (loopback only); default: --url, for pushpin --url's port + 1.
    #[arg(long)]
    pub publish_url: Option<String>,
    /// PEM certificate (the server's own, or its CA) to trust for `https://` URLs; WebSockets go
    /// over `wss://` then.
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Publishers speak HTTP/2 (by ALPN over TLS, with prior knowledge in cleartext), one
    /// connection each.
    #[arg(long)]
    pub http2: bool,
    /// Print one JSON object on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Server process id, for its CPU time (and RSS in `idle`, `churn`, `history`, `broadcast` and
    /// `user-ids`) from /proc, summed over the process and all its descendants (Pushpin is a tree
    /// of processes; `broadcast` and `user-ids`, ours only, read the RSS of the process alone).
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// How receiving connections reach the server (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// One WebSocket per receiving connection.
    Websocket,
    /// One Server-Sent Events stream (`GET {--sse-path}?user_id=`) per receiving connection;
    /// `--target ours` only.
    Sse,
}

impl Transport {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Websocket => "websocket",
            Self::Sse => "sse",
        }
    }

    /// What one connection is called in messages.
    pub fn connection_noun(self) -> &'static str {
        match self {
            Self::Websocket => "WebSocket connection",
            Self::Sse => "SSE stream",
        }
    }
}

/// Options of the scenarios whose receivers may use either transport (`push`, `batch`,
/// `fanout`).
#[derive(Debug, Clone, clap::Args)]
pub struct TransportArgs {
    /// How receivers connect: WebSockets, or Server-Sent Events streams (`--target ours` only).
    #[arg(long, value_enum, default_value_t = Transport::Websocket)]
    pub transport: Transport,
    /// Path of the server's event stream (its SSE_STREAM_PATH), with `--transport sse`.
    #[arg(long, default_value = sse::DEFAULT_STREAM_PATH, value_parser = sse::parse_stream_path)]
    pub sse_path: String,
}

/// Message capacity for a run: the open-loop schedule (plus slack) or the closed-loop `cap`.
pub fn message_capacity(rate: Option<u64>, duration_s: u64, slack: u64, cap: u64) -> u64 {
    match rate {
        Some(rate) => rate
            .saturating_mul(duration_s)
            .saturating_add(slack)
            .min(cap),
        None => cap,
    }
}
