//! `loadgen broadcast` (ours only): `--users` users online, one WebSocket each, and `--count`
//! broadcasts (`POST /sse/broadcast`) of `--payload-bytes` at `--rate` per second. Reports the
//! time to each reply and to each broadcast's last frame, per-frame latency, the server's RSS
//! (idle, peak, settled) and CPU; every user must receive every broadcast exactly once.

use anyhow::Result;
use clap::value_parser;

use super::CommonArgs;
use super::payload::{self, Addressing, PayloadRunArgs, PayloadSpec};
use crate::report::Report;
use crate::target::Target;

/// Options of `loadgen broadcast`.
#[derive(Debug, Clone, clap::Args)]
pub struct BroadcastArgs {
    /// Options shared by every scenario (`--server-pid` adds RSS and CPU figures).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Count, rate, settle time and time limit.
    #[command(flatten)]
    pub run: PayloadRunArgs,
    /// Users online, one WebSocket each (ids `bcast-u{i}`).
    #[arg(long, default_value_t = 2000, value_parser = value_parser!(u64).range(1..=20_000))]
    pub users: u64,
    /// Size of each broadcast's `data` object in bytes (the server's MAX_BODY_BYTES, default
    /// 1 MiB, must allow the body).
    #[arg(long, default_value_t = 524_288, value_parser = value_parser!(u64).range(0..=8_388_608))]
    pub payload_bytes: u64,
}

/// Runs the scenario.
pub async fn run(args: BroadcastArgs, target: Target) -> Result<Report> {
    payload::run(
        target,
        PayloadSpec {
            scenario: "broadcast",
            addressing: Addressing::Broadcast,
            user_ids: (0..args.users).map(|i| format!("bcast-u{i}")).collect(),
            online: true,
            payload_bytes: args.payload_bytes as usize,
            run: args.run,
            server_pid: args.common.server_pid,
        },
    )
    .await
}
