//! `loadgen push`: many users with one receiving connection (WebSocket or SSE stream) each;
//! publishers POST single pushes round-robin.

use std::time::Duration;

use anyhow::Result;
use clap::value_parser;

use super::load::{self, LoadSpec};
use super::{CommonArgs, TransportArgs};
use crate::report::Report;
use crate::target::Target;

/// Most messages one `push` run sends (bounds the acknowledgement table to 20 MB).
const MAX_MESSAGES: u64 = 10_000_000;

/// Options of `loadgen push`.
#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {
    /// Options shared by every scenario.
    #[command(flatten)]
    pub common: CommonArgs,
    /// How the receivers connect.
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Users, one receiving connection each (ids `bench-u{i}`).
    #[arg(long, default_value_t = 100, value_parser = value_parser!(u64).range(1..=20_000))]
    pub users: u64,
    /// Concurrent HTTP publishers (one keep-alive connection each).
    #[arg(long, default_value_t = 32, value_parser = value_parser!(u64).range(1..=1024))]
    pub publishers: u64,
    /// Send window in seconds.
    #[arg(long, default_value_t = 10, value_parser = value_parser!(u64).range(1..=300))]
    pub duration: u64,
    /// Size of each push's `data` object in bytes.
    #[arg(long, default_value_t = 256, value_parser = value_parser!(u64).range(0..=65_536))]
    pub payload_bytes: u64,
    /// Open-loop: total pushes per second on a fixed schedule (default: closed-loop).
    #[arg(long, value_parser = value_parser!(u64).range(1..=1_000_000))]
    pub rate: Option<u64>,
    /// Ours only, over WebSockets: push with `"ack": true`, and every receiver acknowledges
    /// every event it gets (`{"type":"ack","event_id":…}`). Run the server with
    /// `CLIENT_MESSAGE_RATE=0` (one acknowledgement per event exceeds the default rate).
    #[arg(long)]
    pub ack: bool,
}

/// Runs the scenario.
pub async fn run(args: PushArgs, target: Target) -> Result<Report> {
    load::run(
        target,
        LoadSpec {
            scenario: "push",
            user_ids: (0..args.users).map(|i| format!("bench-u{i}")).collect(),
            conns_per_user: 1,
            transport: args.transport,
            publishers: args.publishers,
            per_request: 1,
            payload_bytes: args.payload_bytes as usize,
            duration: Duration::from_secs(args.duration),
            rate: args.rate.map(|rate| rate as f64),
            max_messages: super::message_capacity(
                args.rate,
                args.duration,
                2 * args.publishers,
                MAX_MESSAGES,
            ),
            server_pid: args.common.server_pid,
            ack: args.ack,
        },
    )
    .await
}
