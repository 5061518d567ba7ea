//! `loadgen fanout`: one user with many connections (WebSockets or SSE streams); every push is
//! delivered to all of them.

use std::time::Duration;

use anyhow::Result;
use clap::value_parser;

use super::load::{self, LoadSpec};
use super::{CommonArgs, TransportArgs};
use crate::report::Report;
use crate::target::Target;

/// Most pushes one `fanout` run sends.
const MAX_MESSAGES: u64 = 1_000_000;

/// Options of `loadgen fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Options shared by every scenario.
    #[command(flatten)]
    pub common: CommonArgs,
    /// How the receivers connect.
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Connections of the single user `bench-fanout` (the server's MAX_CONNECTIONS_PER_USER
    /// must allow them).
    #[arg(long, default_value_t = 1000, value_parser = value_parser!(u64).range(1..=20_000))]
    pub connections: u64,
    /// Pushes per second (open-loop, fixed schedule).
    #[arg(long, default_value_t = 1000, value_parser = value_parser!(u64).range(1..=100_000))]
    pub rate: u64,
    /// Concurrent HTTP publishers sharing the rate.
    #[arg(long, default_value_t = 4, value_parser = value_parser!(u64).range(1..=256))]
    pub publishers: u64,
    /// Send window in seconds.
    #[arg(long, default_value_t = 10, value_parser = value_parser!(u64).range(1..=300))]
    pub duration: u64,
    /// Size of each push's `data` object in bytes.
    #[arg(long, default_value_t = 256, value_parser = value_parser!(u64).range(0..=65_536))]
    pub payload_bytes: u64,
}

/// Runs the scenario.
pub async fn run(args: FanoutArgs, target: Target) -> Result<Report> {
    load::run(
        target,
        LoadSpec {
            scenario: "fanout",
            user_ids: vec!["bench-fanout".to_owned()],
            conns_per_user: args.connections,
            transport: args.transport,
            publishers: args.publishers,
            per_request: 1,
            payload_bytes: args.payload_bytes as usize,
            duration: Duration::from_secs(args.duration),
            rate: Some(args.rate as f64),
            max_messages: super::message_capacity(
                Some(args.rate),
                args.duration,
                2 * args.publishers,
                MAX_MESSAGES,
            ),
            server_pid: args.common.server_pid,
            ack: false,
        },
    )
    .await
}
