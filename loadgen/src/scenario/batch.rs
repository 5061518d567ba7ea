//! `loadgen batch`: like `push`, but each POST to the batch endpoint carries many messages.

use std::time::Duration;

use anyhow::Result;
use clap::value_parser;

use super::load::{self, LoadSpec};
use super::{CommonArgs, TransportArgs};
use crate::report::Report;
use crate::target::Target;

/// Most messages one `batch` run sends (bounds the acknowledgement table to 40 MB).
const MAX_MESSAGES: u64 = 20_000_000;

/// Options of `loadgen batch`.
#[derive(Debug, Clone, clap::Args)]
pub struct BatchArgs {
    /// Options shared by every scenario.
    #[command(flatten)]
    pub common: CommonArgs,
    /// How the receivers connect.
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Users, one receiving connection each (ids `bench-u{i}`).
    #[arg(long, default_value_t = 1000, value_parser = value_parser!(u64).range(1..=20_000))]
    pub users: u64,
    /// Messages per POST (the server's MAX_BATCH_SIZE defaults to 1000).
    #[arg(long, default_value_t = 1000, value_parser = value_parser!(u64).range(1..=10_000))]
    pub batch: u64,
    /// Concurrent HTTP publishers (one keep-alive connection each).
    #[arg(long, default_value_t = 4, value_parser = value_parser!(u64).range(1..=256))]
    pub publishers: u64,
    /// Send window in seconds.
    #[arg(long, default_value_t = 10, value_parser = value_parser!(u64).range(1..=300))]
    pub duration: u64,
    /// Size of each message's `data` object in bytes.
    #[arg(long, default_value_t = 256, value_parser = value_parser!(u64).range(0..=65_536))]
    pub payload_bytes: u64,
    /// Open-loop: total messages per second on a fixed schedule (default: closed-loop).
    #[arg(long, value_parser = value_parser!(u64).range(1..=10_000_000))]
    pub rate: Option<u64>,
}

/// Runs the scenario.
pub async fn run(args: BatchArgs, target: Target) -> Result<Report> {
    load::run(
        target,
        LoadSpec {
            scenario: "batch",
            user_ids: (0..args.users).map(|i| format!("bench-u{i}")).collect(),
            conns_per_user: 1,
            transport: args.transport,
            publishers: args.publishers,
            per_request: args.batch,
            payload_bytes: args.payload_bytes as usize,
            duration: Duration::from_secs(args.duration),
            rate: args.rate.map(|rate| rate as f64),
            max_messages: super::message_capacity(
                args.rate,
                args.duration,
                2 * args.publishers * args.batch,
                MAX_MESSAGES,
            ),
            server_pid: args.common.server_pid,
            ack: false,
        },
    )
    .await
}
