//! `loadgen idle`: open many WebSocket connections that receive nothing and measure the server's
//! resident memory per connection and the handshake rate. Connections are counted in by the
//! server's own connection count where it has one; otherwise (Pushpin) by one subscription probe
//! per connection.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::value_parser;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::CommonArgs;
use crate::http;
use crate::probe::{self, ProbeBoard};
use crate::report::Report;
use crate::stats::round3;
use crate::sys::{self, CpuSnapshot, ratio};
use crate::target::Target;
use crate::ws::{self, HoldOutcome};

/// Longest wait for `/health` to drop back to the baseline after closing.
const CLOSE_WAIT: Duration = Duration::from_secs(15);

/// Options of `loadgen idle`.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Options shared by every scenario (`--server-pid` is required here).
    #[command(flatten)]
    pub common: CommonArgs,
    /// WebSocket connections to open and hold.
    #[arg(long, default_value_t = 10_000, value_parser = value_parser!(u64).range(1..=50_000))]
    pub connections: u64,
    /// Distinct users (ids `idle-u{i % users}`); default one user per connection. The server's
    /// MAX_CONNECTIONS_PER_USER (default 32) must allow connections/users.
    #[arg(long, value_parser = value_parser!(u64).range(1..=50_000))]
    pub users: Option<u64>,
}

/// Runs the scenario.
pub async fn run(args: IdleArgs, target: Target) -> Result<Report> {
    let Some(pid) = args.common.server_pid else {
        bail!("idle needs --server-pid to read the server's VmRSS");
    };
    let connections = args.connections;
    let users = args.users.unwrap_or(connections).min(connections);
    super::check_fd_budget(connections, 1)?;
    let counted = target.protocol.connection_count().is_some();
    let baseline = if counted {
        Some(
            http::server_connections(&target)
                .await
                .context("server not reachable (connection count)")?,
        )
    } else {
        None
    };
    let rss_before = sys::tree_rss_bytes(pid)?;
    let cpu_start = CpuSnapshot::take(Some(pid));

    let cancel = CancellationToken::new();
    let user_ids: Vec<String> = (0..users).map(|i| format!("idle-u{i}")).collect();
    let specs = (0..connections)
        .map(|i| (user_ids[(i % users) as usize].clone(), i % users))
        .collect();
    let probes = Arc::new(ProbeBoard::new(
        users as usize,
        (0..connections).map(|i| i % users),
    ));
    eprintln!("loadgen: opening {connections} idle connection(s) for {users} user(s)");
    let config = ws::client_config(true);
    let opened = super::open_connections(
        &target,
        specs,
        |user_id| {
            let target = &target;
            async move { ws::connect(target, &user_id, config).await }
        },
        |stream, _user_id, user_index| {
            tokio::spawn(ws::hold(
                stream,
                user_index,
                Arc::clone(&target.protocol),
                Arc::clone(&probes),
                cancel.clone(),
            ))
        },
    )
    .await;
    let count = opened.items.len() as u64;
    let open_s = opened.elapsed.as_secs_f64();
    let wait = Duration::from_secs(10) + Duration::from_millis(count);
    let shown = match baseline {
        Some(baseline) => http::wait_for_connections(&target, baseline + count, wait)
            .await
            .map(Some),
        None if opened.failed == 0 => {
            probe::confirm_subscriptions(&target, &user_ids, &probes, wait)
                .await
                .map(|_| None)
        }
        None => Ok(None),
    };
    let cpu = cpu_start.until(&CpuSnapshot::take(Some(pid)));
    tokio::time::sleep(super::SETTLE).await;
    let rss_after = sys::tree_rss_bytes(pid);

    cancel.cancel();
    let mut held = HoldOutcome::default();
    let mut panics = 0u64;
    for task in opened.items {
        match task.await {
            Ok(outcome) => {
                held.frames += outcome.frames;
                held.closed_early |= outcome.closed_early;
            }
            Err(_) => panics += 1,
        }
    }
    let after_close = match baseline {
        Some(baseline) => http::wait_for_at_most(&target, baseline, CLOSE_WAIT).await,
        None => None,
    };

    let shown = shown?;
    let rss_after = rss_after?;
    let grown = rss_after.saturating_sub(rss_before);
    let mut report = Report::new("idle");
    report.set("target", target.kind.name());
    report.set(
        "config",
        json!({ "connections": connections, "users": users, "server_pid": pid }),
    );
    report.set(
        "connections",
        json!({
            "opened": count,
            "failed": opened.failed,
            "handshake_retries": opened.retries,
            "server_count_baseline": baseline,
            "server_count_when_open": shown,
            "server_count_after_close": after_close,
            "confirmed_by_probe": probes.confirmed(),
        }),
    );
    report.set("open_s", round3(open_s));
    report.set("handshakes_per_s", round3(ratio(count as f64, open_s)));
    report.set(
        "server_rss",
        json!({
            "before_mib": sys::mib(rss_before),
            "after_mib": sys::mib(rss_after),
            "growth_mib": sys::mib(grown),
            "bytes_per_connection": round3(ratio(grown as f64, count as f64)),
        }),
    );
    report.set(
        "server_cpu_while_opening",
        json!({
            "server_s": cpu.server_s.map(round3),
            "server_s_per_1000_handshakes": cpu.server_s.map(|s| round3(ratio(s, count as f64 / 1000.0))),
            "loadgen_s": round3(cpu.loadgen_s),
        }),
    );
    report.set("unexpected_frames", held.frames);
    report.fail_if_nonzero("failed connections", opened.failed);
    report.fail_if_nonzero("holder task panics", panics);
    if let Some(error) = opened.first_error {
        report
            .warnings
            .push(format!("first handshake error: {error}"));
    }
    if held.closed_early {
        report
            .warnings
            .push("some connections were closed by the server while held".to_owned());
    }
    if let Some(baseline) = baseline
        && after_close.is_none_or(|now| now > baseline)
    {
        report.warnings.push(format!(
            "the server's connection count did not drop back to {baseline} within {CLOSE_WAIT:?}"
        ));
    }
    report.warn_if_loadgen_busy(cpu.loadgen_cores(), "while opening");
    Ok(report)
}
