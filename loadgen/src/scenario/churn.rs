//! `loadgen churn`: connection churn. For `--duration` seconds, `--concurrency` workers each open
//! a WebSocket for a user (including the target's subscribe step), optionally hold it for
//! `--hold-ms`, close it cleanly (send a close frame, wait for the server's close frame and the end
//! of the stream) and start over. Reports completed open+close cycles per second, handshake
//! latency, failures by kind, the server's RSS and CPU per thousand connections, and checks that
//! the server's connection count returns to its value before the run.

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::value_parser;
use serde_json::json;
use tokio::net::TcpStream;

use super::CommonArgs;
use crate::http;
use crate::report::Report;
use crate::stats::{LocalSamples, SharedHistogram, round3};
use crate::sys::{self, CpuSnapshot, ratio};
use crate::target::Target;
use crate::ws;

/// Most open+close cycles one run attempts.
pub const MAX_CONNECTIONS: u64 = 2_000_000;
/// Longest wait for the server's connection count to return to its baseline after the run.
const COUNT_RETURN_WAIT: Duration = Duration::from_secs(5);
/// Highest fraction of failed cycles that still passes.
const MAX_FAILURE_RATE: f64 = 0.001;
/// Pause after a failed cycle, so that a refusing server is not hammered in a tight loop.
const FAILURE_BACKOFF: Duration = Duration::from_millis(10);
/// Longest wait for the reachability check before the run.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `loadgen churn`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChurnArgs {
    /// Options shared by every scenario (`--server-pid` adds RSS and CPU figures).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Seconds during which workers start new cycles (cycles in progress then finish).
    #[arg(long, default_value_t = 10, value_parser = value_parser!(u64).range(1..=300))]
    pub duration: u64,
    /// Workers, each with at most one connection open at a time.
    #[arg(long, default_value_t = 100, value_parser = value_parser!(u64).range(1..=10_000))]
    pub concurrency: u64,
    /// Distinct users (ids `churn-u{i}`), taken in turn by successive connections.
    #[arg(long, default_value_t = 1000, value_parser = value_parser!(u64).range(1..=20_000))]
    pub users: u64,
    /// Milliseconds each connection stays open between its handshake and its close.
    #[arg(long, default_value_t = 0, value_parser = value_parser!(u64).range(0..=60_000))]
    pub hold_ms: u64,
}

/// Why a cycle failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The TCP connection was refused.
    Refused,
    /// A handshake, subscribe step or closing handshake ran out of time.
    Timeout,
    /// Anything else (an HTTP error instead of the 101, a reset, a missing close frame, …).
    Error,
}

impl FailureKind {
    /// Classifies an error from [`ws::connect`] or [`ws::close_handshake`] by its cause chain.
    pub fn of(error: &anyhow::Error) -> Self {
        if error
            .chain()
            .any(|cause| cause.is::<tokio::time::error::Elapsed>())
        {
            return Self::Timeout;
        }
        let refused = error.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == ErrorKind::ConnectionRefused)
        });
        if refused { Self::Refused } else { Self::Error }
    }
}

/// What the workers did, summed over all of them.
#[derive(Debug, Default)]
pub struct Tally {
    /// Completed open+close cycles.
    pub cycles: u64,
    /// Failed cycles whose TCP connect was refused.
    pub refused: u64,
    /// Failed cycles that timed out.
    pub timeout: u64,
    /// Failed cycles that failed otherwise.
    pub error: u64,
    /// Failures while opening (connect, handshake, subscribe).
    pub while_opening: u64,
    /// Failures while closing.
    pub while_closing: u64,
    /// The first failure seen, for the report.
    pub first_error: Option<String>,
}

impl Tally {
    /// Counts one failed cycle.
    fn fail(&mut self, error: &anyhow::Error, closing: bool) {
        match FailureKind::of(error) {
            FailureKind::Refused => self.refused += 1,
            FailureKind::Timeout => self.timeout += 1,
            FailureKind::Error => self.error += 1,
        }
        if closing {
            self.while_closing += 1;
        } else {
            self.while_opening += 1;
        }
        self.first_error.get_or_insert_with(|| format!("{error:#}"));
    }

    /// Adds another worker's tally.
    fn merge(&mut self, other: Tally) {
        self.cycles += other.cycles;
        self.refused += other.refused;
        self.timeout += other.timeout;
        self.error += other.error;
        self.while_opening += other.while_opening;
        self.while_closing += other.while_closing;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Failed cycles of every kind.
    pub fn failures(&self) -> u64 {
        self.refused + self.timeout + self.error
    }

    /// Failed cycles as a fraction of all attempted cycles (0 when none was attempted).
    pub fn failure_rate(&self) -> f64 {
        let failures = self.failures();
        ratio(failures as f64, (self.cycles + failures) as f64)
    }
}

/// What the workers do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Distinct users; connection `n` belongs to user `n % users` (`churn-u{…}`).
    pub users: u64,
    /// How long each connection stays open before it is closed.
    pub hold: Duration,
    /// No cycle starts after this instant.
    pub deadline: Instant,
    /// No more than this many cycles are attempted in all.
    pub max_cycles: u64,
}

/// Runs `concurrency` workers until `plan`'s deadline or cycle cap; records every successful
/// handshake's latency (µs, connect to subscribed) in `handshakes`. Returns the summed tally and
/// the number of worker tasks that panicked.
pub async fn churn(
    target: &Arc<Target>,
    plan: &Arc<Plan>,
    concurrency: u64,
    handshakes: &Arc<SharedHistogram>,
) -> (Tally, u64) {
    let tickets = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(worker(
                Arc::clone(target),
                Arc::clone(plan),
                Arc::clone(&tickets),
                Arc::clone(handshakes),
            ))
        })
        .collect();
    let mut tally = Tally::default();
    let mut panics = 0;
    for worker in workers {
        match worker.await {
            Ok(own) => tally.merge(own),
            Err(_) => panics += 1,
        }
    }
    (tally, panics)
}

/// One worker: open, (hold,) close cleanly, repeat. Every step is bounded by a timeout.
async fn worker(
    target: Arc<Target>,
    plan: Arc<Plan>,
    tickets: Arc<AtomicU64>,
    handshakes: Arc<SharedHistogram>,
) -> Tally {
    let mut tally = Tally::default();
    let mut samples = LocalSamples::default();
    let config = ws::client_config(true);
    while Instant::now() < plan.deadline {
        let ticket = tickets.fetch_add(1, Ordering::Relaxed);
        if ticket >= plan.max_cycles {
            break;
        }
        let user_id = format!("churn-u{}", ticket % plan.users.max(1));
        let started = Instant::now();
        let stream = match ws::connect(&target, &user_id, config).await {
            Ok(stream) => stream,
            Err(error) => {
                tally.fail(&error, false);
                tokio::time::sleep(FAILURE_BACKOFF).await;
                continue;
            }
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        samples.record(micros, &handshakes);
        if !plan.hold.is_zero() {
            tokio::time::sleep(plan.hold).await;
        }
        match ws::close_handshake(stream, ws::CLOSE_TIMEOUT).await {
            Ok(()) => tally.cycles += 1,
            Err(error) => {
                tally.fail(&error, true);
                tokio::time::sleep(FAILURE_BACKOFF).await;
            }
        }
    }
    samples.flush(&handshakes);
    tally
}

/// Runs the scenario.
pub async fn run(args: ChurnArgs, target: Target) -> Result<Report> {
    super::check_fd_budget(args.concurrency, 1)?;
    let pid = args.common.server_pid;
    tokio::time::timeout(PREFLIGHT_TIMEOUT, TcpStream::connect(target.ws.addr))
        .await
        .context("server not reachable: TCP connect timed out")?
        .context("server not reachable")?;
    let baseline = match target.protocol.connection_count() {
        Some(_) => Some(
            http::server_connections(&target)
                .await
                .context("server not reachable (connection count)")?,
        ),
        None => None,
    };
    let rss = || pid.map(sys::tree_rss_bytes).transpose();
    let rss_before = rss()?;

    let target = Arc::new(target);
    let plan = Arc::new(Plan {
        users: args.users,
        hold: Duration::from_millis(args.hold_ms),
        deadline: Instant::now() + Duration::from_secs(args.duration),
        max_cycles: MAX_CONNECTIONS,
    });
    let handshakes = Arc::new(SharedHistogram::default());
    eprintln!(
        "loadgen: churning connections for {} s with {} worker(s) over {} user(s)",
        args.duration, args.concurrency, args.users
    );
    let cpu_start = CpuSnapshot::take(pid);
    let (tally, panics) = churn(&target, &plan, args.concurrency, &handshakes).await;
    let finished = Instant::now();
    let cpu = cpu_start.until(&CpuSnapshot::take(pid));
    let rss_after = rss()?;
    let count_after = match baseline {
        Some(baseline) => http::wait_for_at_most(&target, baseline, COUNT_RETURN_WAIT).await,
        None => None,
    };
    tokio::time::sleep((finished + super::SETTLE).saturating_duration_since(Instant::now())).await;
    let rss_settled = rss()?;

    let attempted = tally.cycles + tally.failures();
    let delta_mib = |from: u64, to: u64| round3((to as f64 - from as f64) / 1_048_576.0);
    let returned = baseline.map(|baseline| count_after.is_some_and(|now| now <= baseline));

    let mut report = Report::new("churn");
    report.set("target", target.kind.name());
    report.set(
        "config",
        json!({
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "users": args.users,
            "hold_ms": args.hold_ms,
            "max_connections": MAX_CONNECTIONS,
            "server_pid": pid,
        }),
    );
    report.set("cycles", tally.cycles);
    report.set(
        "cycles_per_s",
        round3(ratio(tally.cycles as f64, cpu.wall_s)),
    );
    report.set("handshake_ms", handshakes.summary_ms());
    report.set(
        "failed_cycles",
        json!({
            "total": tally.failures(),
            "refused": tally.refused,
            "timeout": tally.timeout,
            "error": tally.error,
            "while_opening": tally.while_opening,
            "while_closing": tally.while_closing,
            "rate_pct": round3(tally.failure_rate() * 100.0),
        }),
    );
    report.set(
        "server_count",
        json!({
            "baseline": baseline,
            "after": count_after,
            "returned": returned,
        }),
    );
    report.set(
        "server_rss",
        match (rss_before, rss_after, rss_settled) {
            (Some(before), Some(after), Some(settled)) => json!({
                "before_mib": sys::mib(before),
                "after_mib": sys::mib(after),
                "settled_mib": sys::mib(settled),
                "growth_mib": delta_mib(before, settled),
                "growth_at_end_mib": delta_mib(before, after),
            }),
            _ => serde_json::Value::Null,
        },
    );
    report.set_cpu_per(&cpu, tally.cycles as f64 / 1000.0, "1000_connections");

    report.fail_if_nonzero("worker task panics", panics);
    if tally.cycles == 0 {
        report
            .failures
            .push("no open+close cycle completed".to_owned());
    }
    if tally.failure_rate() > MAX_FAILURE_RATE {
        report.failures.push(format!(
            "failed cycles: {} of {attempted} ({:.3}% > {}%; refused {}, timeout {}, error {})",
            tally.failures(),
            tally.failure_rate() * 100.0,
            MAX_FAILURE_RATE * 100.0,
            tally.refused,
            tally.timeout,
            tally.error,
        ));
    }
    if let Some(error) = &tally.first_error {
        report.warnings.push(format!("first failure: {error}"));
    }
    match (baseline, returned) {
        (Some(baseline), Some(false)) => report.failures.push(format!(
            "the server's connection count did not return to {baseline} within \
             {COUNT_RETURN_WAIT:?} (last seen: {})",
            count_after.map_or_else(|| "no answer".to_owned(), |count| count.to_string())
        )),
        (None, _) => report.warnings.push(format!(
            "{} reports no connection count: the return-to-baseline check was skipped",
            target.kind
        )),
        _ => {}
    }
    if attempted >= MAX_CONNECTIONS {
        report.warnings.push(format!(
            "stopped at the cap of {MAX_CONNECTIONS} connections before --duration ended"
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use futures_util::StreamExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::target::TargetKind;

    /// A loopback WebSocket server (standing in for a target with no subscribe step) that answers
    /// the closing handshake, or, with `answer_close = false`, never reads anything.
    async fn spawn_server(answer_close: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    if answer_close {
                        while let Some(Ok(_)) = ws.next().await {}
                    } else {
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        addr
    }

    async fn target_at(addr: SocketAddr) -> Arc<Target> {
        Arc::new(
            Target::resolve(
                TargetKind::Ours,
                Some(&format!("http://{addr}")),
                None,
                None,
                false,
            )
            .await
            .expect("loopback target"),
        )
    }

    #[tokio::test]
    async fn churns_until_the_cap_and_the_deadline() {
        let target = target_at(spawn_server(true).await).await;
        let handshakes = Arc::new(SharedHistogram::default());
        let capped = Arc::new(Plan {
            users: 3,
            hold: Duration::ZERO,
            deadline: Instant::now() + Duration::from_secs(30),
            max_cycles: 25,
        });
        let (tally, panics) = churn(&target, &capped, 4, &handshakes).await;
        assert_eq!((tally.cycles, tally.failures(), panics), (25, 0, 0));
        assert_eq!(handshakes.summary_ms()["count"], 25);

        let timed = Arc::new(Plan {
            users: 2,
            hold: Duration::from_millis(5),
            deadline: Instant::now() + Duration::from_millis(200),
            max_cycles: MAX_CONNECTIONS,
        });
        let started = Instant::now();
        let (tally, _) = churn(&target, &timed, 2, &handshakes).await;
        assert!(tally.cycles > 0 && tally.failures() == 0, "{tally:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn classifies_failures() {
        // Refused: a port that was just free.
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = free.local_addr().expect("address");
        drop(free);
        let refused = ws::connect(&*target_at(addr).await, "u", ws::client_config(true))
            .await
            .expect_err("nothing listens");
        assert_eq!(FailureKind::of(&refused), FailureKind::Refused);

        // Timeout: a server that never answers the close frame.
        let target = target_at(spawn_server(false).await).await;
        let stream = ws::connect(&target, "u", ws::client_config(true))
            .await
            .expect("handshake");
        let error = ws::close_handshake(stream, Duration::from_millis(100))
            .await
            .expect_err("no close frame comes back");
        assert_eq!(FailureKind::of(&error), FailureKind::Timeout);

        let other = anyhow::anyhow!("HTTP error: 503").context("WebSocket handshake");
        assert_eq!(FailureKind::of(&other), FailureKind::Error);

        let mut tally = Tally::default();
        tally.fail(&refused, false);
        tally.fail(&error, true);
        tally.cycles = 1998;
        assert_eq!((tally.failures(), tally.while_closing), (2, 1));
        assert!((tally.failure_rate() - 0.001).abs() < 1e-12);
    }
}
