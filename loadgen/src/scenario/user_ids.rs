//! `loadgen user-ids` (ours only): `--count` pushes (`POST /sse/push` with `user_ids`) of
//! `--payload-bytes`, each to all `--users` users, at `--rate` per second; the users are online
//! (one WebSocket each) or, with `--offline`, not connected. Reports the time to each reply and to
//! each push's last frame, per-frame latency, the server's RSS (idle, peak, settled) and CPU;
//! online, every user must receive every push exactly once.

use anyhow::Result;
use clap::value_parser;

use super::CommonArgs;
use super::payload::{self, Addressing, PayloadRunArgs, PayloadSpec};
use crate::report::Report;
use crate::target::Target;

/// Options of `loadgen user-ids`.
#[derive(Debug, Clone, clap::Args)]
pub struct UserIdsArgs {
    /// Options shared by every scenario (`--server-pid` adds RSS and CPU figures).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Count, rate, settle time and time limit.
    #[command(flatten)]
    pub run: PayloadRunArgs,
    /// Users in each push's `user_ids` (ids `uids-u{i}`); the server's MAX_BATCH_SIZE (default
    /// 1000) must allow them.
    #[arg(long, default_value_t = 1000, value_parser = value_parser!(u64).range(1..=20_000))]
    pub users: u64,
    /// Size of each push's `data` object in bytes (the server's MAX_BODY_BYTES, default 1 MiB,
    /// must allow the body: the default needs more).
    #[arg(long, default_value_t = 1_048_576, value_parser = value_parser!(u64).range(0..=8_388_608))]
    pub payload_bytes: u64,
    /// Leave the users offline (no WebSockets): the pushes only go to their history.
    #[arg(long)]
    pub offline: bool,
}

/// Runs the scenario.
pub async fn run(args: UserIdsArgs, target: Target) -> Result<Report> {
    payload::run(
        target,
        PayloadSpec {
            scenario: "user-ids",
            addressing: Addressing::UserIds,
            user_ids: (0..args.users).map(|i| format!("uids-u{i}")).collect(),
            online: !args.offline,
            payload_bytes: args.payload_bytes as usize,
            run: args.run,
            server_pid: args.common.server_pid,
        },
    )
    .await
}
