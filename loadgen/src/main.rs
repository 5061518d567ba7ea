//! `loadgen`: a load generator for websocket-sse-server.
//!
//! Scenarios: `push` (single pushes to many users), `batch` (batch pushes), `fanout` (one user,
//! many connections; these three receive over WebSockets or, with `--transport sse`, over
//! Server-Sent Events streams), `idle` (memory per idle connection), `churn` (open/close cycles),
//! `history` (memory per stored event and replay integrity, ours only), and `broadcast` and
//! `user-ids` (large events to many users: time to the last frame, server RSS peak; ours only). Every run prints a table
//! (or, with `--json`, one JSON object on stdout) and exits 2 when messages were lost, duplicated
//! or misrouted, 1 on any other error. Only loopback targets are accepted. `--target` picks the
//! server: this project (default) or one of the peers it is compared with (see [`target`]).

mod endpoint;
mod http;
mod probe;
mod publisher;
mod recv;
mod report;
mod scenario;
mod sse;
mod stats;
mod sys;
mod target;
mod tls;
mod ws;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::report::Report;
use crate::scenario::{CommonArgs, batch, broadcast, churn, fanout, history, idle, push, user_ids};
use crate::target::Target;

/// Load generator for websocket-sse-server (loopback targets only).
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
enum Scenario {
    /// One WebSocket (or SSE stream) per user; publishers POST single pushes round-robin (closed-
    /// or open-loop).
    Push(push::PushArgs),
    /// One WebSocket (or SSE stream) per user; publishers POST batches of messages round-robin.
    Batch(batch::BatchArgs),
    /// Hold many idle WebSockets and measure server RSS per connection and handshakes/s.
    Idle(idle::IdleArgs),
    /// One user with many WebSockets (or SSE streams); open-loop pushes fan out to all of them.
    Fanout(fanout::FanoutArgs),
    /// Workers open a WebSocket, close it cleanly and repeat: cycles/s, handshake latency, leaks.
    Churn(churn::ChurnArgs),
    /// Ours only: fill offline users' history, measure server RSS per stored event, then check
    /// that resuming from `<epoch>:0` replays exactly each sampled user's events in order.
    History(history::HistoryArgs),
    /// Ours only: users online with one WebSocket each, large broadcasts (`POST /sse/broadcast`):
    /// time to the last frame, latency, server RSS idle/peak/settled, exactly-once delivery.
    Broadcast(broadcast::BroadcastArgs),
    /// Ours only: large pushes to many users at once (`POST /sse/push` with `user_ids`), users
    /// online or `--offline`: the same figures as `broadcast`.
    UserIds(user_ids::UserIdsArgs),
}

impl Scenario {
    fn common(&self) -> &CommonArgs {
        match self {
            Self::Push(args) => &args.common,
            Self::Batch(args) => &args.common,
            Self::Idle(args) => &args.common,
            Self::Fanout(args) => &args.common,
            Self::Churn(args) => &args.common,
            Self::History(args) => &args.common,
            Self::Broadcast(args) => &args.common,
            Self::UserIds(args) => &args.common,
        }
    }

    async fn run(self) -> anyhow::Result<Report> {
        let common = self.common();
        let target = Target::resolve(
            common.target,
            common.url.as_deref(),
            common.publish_url.as_deref(),
            common.tls_ca.as_deref(),
            common.http2,
        )
        .await?;
        match self {
            Self::Push(args) => push::run(args, target).await,
            Self::Batch(args) => batch::run(args, target).await,
            Self::Idle(args) => idle::run(args, target).await,
            Self::Fanout(args) => fanout::run(args, target).await,
            Self::Churn(args) => churn::run(args, target).await,
            Self::History(args) => history::run(args, target).await,
            Self::Broadcast(args) => broadcast::run(args, target).await,
            Self::UserIds(args) => user_ids::run(args, target).await,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sys::raise_nofile_limit();
    let json = cli.scenario.common().json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadgen: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli.scenario.run());
    // Do not wait for tasks still parked on sockets.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(report) => {
            if json {
                eprint!("{}", report.to_table());
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(error) => {
            eprintln!("loadgen: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
