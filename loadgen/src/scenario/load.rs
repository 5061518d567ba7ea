//! The push engine shared by `push`, `batch` and `fanout`: open receivers (WebSockets, or SSE
//! streams with `--transport sse`), drive publishers for the window, wait out a grace period, then
//! check every acknowledged message arrived exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Opened, Transport, TransportArgs};

use crate::http::HttpConn;
use crate::probe::{self, ProbeBoard};
use crate::publisher::{self, PublishPlan, PublishShared, PublisherStats};
use crate::recv::{RecvContext, RecvOutcome};
use crate::report::Report;
use crate::stats::{AckTable, SeenSet, SharedHistogram, round3, summary_ms};
use crate::sys::{CpuSnapshot, ratio};
use crate::target::{Target, TargetKind};
use crate::{sse, ws};

/// After the send window, loadgen waits for acknowledged messages still in flight until all have
/// arrived, or none arrived for this long (servers that acknowledge before delivering, like
/// Pushpin and Sockudo, may still be draining a queue)...
const GRACE_QUIET: Duration = Duration::from_secs(2);
/// ...or this much time has passed in all.
const GRACE_MAX: Duration = Duration::from_secs(20);

/// One push-style run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Scenario name for the report.
    pub scenario: &'static str,
    /// Users; message `seq` goes to `user_ids[seq % len]`.
    pub user_ids: Vec<String>,
    /// Receiving connections per user.
    pub conns_per_user: u64,
    /// How the receivers connect.
    pub transport: TransportArgs,
    /// HTTP publishers (one keep-alive connection each).
    pub publishers: u64,
    /// Messages per request (1 = single push endpoint).
    pub per_request: u64,
    /// Size of each message's `data` in bytes.
    pub payload_bytes: usize,
    /// Length of the send window.
    pub duration: Duration,
    /// Open-loop total messages per second; `None` = closed-loop.
    pub rate: Option<f64>,
    /// Hard cap on messages sent (the run stops early when reached).
    pub max_messages: u64,
    /// Server pid for CPU accounting.
    pub server_pid: Option<u32>,
    /// Push with `"ack": true` and acknowledge every event (ours, WebSockets, single pushes).
    pub ack: bool,
}

/// Runs `spec` against `target` and builds the report.
pub async fn run(target: Target, spec: LoadSpec) -> Result<Report> {
    let users = spec.user_ids.len() as u64;
    if users == 0 || spec.conns_per_user == 0 || spec.publishers == 0 {
        bail!("users, connections and publishers must all be at least 1");
    }
    let connections = users * spec.conns_per_user;
    let transport = spec.transport.transport;
    if transport == Transport::Sse && target.kind != TargetKind::Ours {
        bail!(
            "--transport sse works only with --target ours (got --target {}): the other targets \
             are driven over WebSockets only",
            target.kind
        );
    }
    if spec.ack
        && (target.kind != TargetKind::Ours
            || transport != Transport::Websocket
            || spec.per_request != 1)
    {
        bail!("--ack works only with --target ours, WebSocket receivers and single pushes");
    }
    super::check_fd_budget(connections, spec.publishers)?;

    let start = Instant::now();
    let probes = Arc::new(ProbeBoard::new(
        users as usize,
        (0..connections).map(|i| i % users),
    ));
    let ctx = Arc::new(RecvContext {
        protocol: Arc::clone(&target.protocol),
        probes: Arc::clone(&probes),
        start,
        users,
        max_seq: spec.max_messages,
        latency: SharedHistogram::default(),
        frames: AtomicU64::new(0),
        ack: spec.ack,
    });
    let cancel = CancellationToken::new();
    let specs: Vec<(String, u64)> = (0..connections)
        .map(|i| {
            let user = i % users;
            (spec.user_ids[user as usize].clone(), user)
        })
        .collect();
    let noun = transport.connection_noun();
    eprintln!("loadgen: opening {connections} {noun}(s) for {users} user(s)");
    let opened = open_receivers(&target, &spec.transport, specs, &ctx, &cancel).await;
    let receivers = opened.items;
    if opened.failed > 0 {
        cancel.cancel();
        bail!(
            "{} of {connections} {noun}(s) failed: {}",
            opened.failed,
            opened.first_error.unwrap_or_default()
        );
    }
    let wait = Duration::from_secs(10) + Duration::from_millis(connections);
    let probe_time =
        match probe::confirm_subscriptions(&target, &spec.user_ids, &probes, wait).await {
            Ok(elapsed) => elapsed,
            Err(error) => {
                cancel.cancel();
                return Err(error);
            }
        };

    let mut conns = Vec::new();
    for _ in 0..spec.publishers {
        match HttpConn::connect(&target.api).await {
            Ok(conn) => conns.push(Some(conn)),
            Err(error) => {
                cancel.cancel();
                return Err(error.context("opening a publisher connection"));
            }
        }
    }
    let shared = Arc::new(PublishShared {
        next_seq: AtomicU64::new(0),
        acks: AckTable::new(spec.max_messages),
        rtt: SharedHistogram::default(),
    });
    eprintln!(
        "loadgen: {connections} connection(s) up; sending for {:?} with {} publisher(s)",
        spec.duration, spec.publishers
    );
    let cpu_start = CpuSnapshot::take(spec.server_pid);
    let window_start = Instant::now();
    let deadline = window_start + spec.duration;
    let pacer = match spec.rate {
        Some(rate) => {
            let interval = Duration::from_secs_f64(spec.per_request as f64 / rate);
            match publisher::spawn_pacer(window_start, interval, deadline) {
                Ok(pacer) => Some(pacer),
                Err(error) => {
                    cancel.cancel();
                    return Err(anyhow::Error::new(error).context("starting the pacer thread"));
                }
            }
        }
        None => None,
    };
    let plan = Arc::new(PublishPlan {
        target: target.clone(),
        user_ids: spec.user_ids.clone(),
        per_request: spec.per_request,
        conns_per_user: spec.conns_per_user,
        payload_bytes: spec.payload_bytes,
        ack: spec.ack,
        tickets: pacer.as_ref().map(|(tickets, _)| Arc::clone(tickets)),
        start,
        deadline,
    });
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            tokio::spawn(publisher::run_publisher(
                Arc::clone(&plan),
                Arc::clone(&shared),
                conn,
            ))
        })
        .collect();
    let mut sent = PublisherStats::default();
    for task in tasks {
        match task.await {
            Ok(stats) => sent.merge(stats),
            Err(_) => sent.merge(PublisherStats {
                responses: [("publisher_panicked".to_owned(), 1)].into(),
                ..PublisherStats::default()
            }),
        }
    }
    let send_elapsed = window_start.elapsed();
    let mut pacer_lag = None;
    if let Some((tickets, thread)) = pacer {
        // The pacer stops at the deadline; tickets nobody took were never sent.
        if let Ok(Ok(lag)) = tokio::task::spawn_blocking(move || thread.join()).await {
            pacer_lag = Some(summary_ms(&lag));
        }
        let mut queue = tickets.lock().await;
        while queue.try_recv().is_ok() {
            sent.unsent_behind_schedule += spec.per_request;
        }
    }

    let grace_deadline = Instant::now() + GRACE_MAX;
    let (mut seen, mut progress_at) = (ctx.frames.load(Ordering::Relaxed), Instant::now());
    while seen < shared.acks.expected_total()
        && Instant::now() < grace_deadline
        && progress_at.elapsed() < GRACE_QUIET
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now_seen = ctx.frames.load(Ordering::Relaxed);
        if now_seen != seen {
            (seen, progress_at) = (now_seen, Instant::now());
        }
    }
    let cpu = cpu_start.until(&CpuSnapshot::take(spec.server_pid));
    cancel.cancel();
    let mut outcomes = Vec::with_capacity(receivers.len());
    let mut receiver_panics = 0u64;
    for receiver in receivers {
        match receiver.await {
            Ok(outcome) => outcomes.push(outcome),
            Err(_) => receiver_panics += 1,
        }
    }

    let check = verify(&shared, &outcomes, users);
    let close_reasons = close_reasons(&outcomes);
    let mut report = Report::new(spec.scenario);
    report.set("target", target.kind.name());
    let window_to_last =
        Duration::from_nanos(check.last_recv_ns).saturating_sub(window_start.duration_since(start));
    report.set(
        "config",
        json!({
            "users": users,
            "connections": connections,
            "transport": transport.name(),
            "publishers": spec.publishers,
            "messages_per_request": spec.per_request,
            "payload_bytes": spec.payload_bytes,
            "duration_s": spec.duration.as_secs_f64(),
            "mode": if spec.rate.is_some() { "open-loop" } else { "closed-loop" },
            "rate_msgs_per_s": spec.rate,
        }),
    );
    report.set(
        "connections",
        json!({
            "opened": connections,
            "handshake_retries": opened.retries,
            "open_s": round3(opened.elapsed.as_secs_f64()),
            "subscriptions_confirmed_s": round3(probe_time.as_secs_f64()),
            "closed_early": check.closed_early,
            "closed_early_reasons": close_reasons,
        }),
    );
    report.set("requests", sent.requests);
    report.set("publisher_reconnects", sent.reconnects);
    report.set("messages_sent", sent.messages);
    report.set(
        "send_rate_msgs_per_s",
        round3(ratio(sent.messages as f64, send_elapsed.as_secs_f64())),
    );
    report.set("responses", json!(sent.responses));
    report.set("acked_messages", sent.acked_messages);
    report.set("unsent_behind_schedule", sent.unsent_behind_schedule);
    report.set("expected_deliveries", shared.acks.expected_total());
    report.set("delivered_frames", check.delivered);
    report.set(
        "delivered_per_s",
        round3(ratio(check.delivered as f64, window_to_last.as_secs_f64())),
    );
    report.set("loss", check.loss);
    report.set("duplicates", check.duplicates);
    report.set("misrouted", check.misrouted);
    report.set("invalid_frames", check.invalid);
    report.set("received_unacked", check.unacked);
    report.set("latency_ms", ctx.latency.summary_ms());
    report.set("request_rtt_ms", shared.rtt.summary_ms());
    if let Some(lag) = pacer_lag {
        report.set("pacer_lag_ms", lag);
    }
    report.set_cpu(&cpu, check.delivered);

    report.fail_if_nonzero("loss", check.loss);
    report.fail_if_nonzero("duplicates", check.duplicates);
    report.fail_if_nonzero("misrouted", check.misrouted);
    report.fail_if_nonzero("invalid frames", check.invalid);
    report.fail_if_nonzero("receiver task panics", receiver_panics);
    if sent.acked_messages == 0 {
        report
            .failures
            .push("no message was acknowledged as delivered".to_owned());
    }
    if sent.seq_cap_reached {
        report.warnings.push(format!(
            "the message cap ({}) was reached; the window ended early",
            spec.max_messages
        ));
    }
    if sent.unsent_behind_schedule > 0 {
        report.warnings.push(format!(
            "{} scheduled message(s) were never sent: publishers fell behind the rate \
             (add --publishers or lower --rate)",
            sent.unsent_behind_schedule
        ));
    }
    if check.closed_early > 0 {
        report.warnings.push(format!(
            "{} connection(s) were closed by the server during the run ({})",
            check.closed_early,
            close_reasons
                .iter()
                .map(|(reason, count)| format!("{count} × {reason}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let errors: u64 = sent
        .responses
        .iter()
        .filter(|(key, _)| !matches!(key.as_str(), "success" | "partial" | "accepted"))
        .map(|(_, count)| count)
        .sum();
    if errors > 0 {
        report.warnings.push(format!(
            "{errors} message(s) got an error instead of a push response"
        ));
    }
    Ok(report)
}

/// Opens the receiving connections over `transport`, each read by its own task from the moment
/// it opens.
async fn open_receivers(
    target: &Target,
    transport: &TransportArgs,
    specs: Vec<(String, u64)>,
    ctx: &Arc<RecvContext>,
    cancel: &CancellationToken,
) -> Opened<JoinHandle<RecvOutcome>> {
    let many = specs.len() > 1000;
    match transport.transport {
        Transport::Websocket => {
            let config = ws::client_config(many);
            super::open_connections(
                target,
                specs,
                |user_id| async move { ws::connect(target, &user_id, config).await },
                |stream, user_id, user_index| {
                    let (ctx, cancel) = (Arc::clone(ctx), cancel.clone());
                    tokio::spawn(ws::receive(stream, user_id, user_index, ctx, cancel))
                },
            )
            .await
        }
        Transport::Sse => {
            let (path, read_size) = (transport.sse_path.as_str(), sse::read_buffer_size(many));
            super::open_connections(
                target,
                specs,
                |user_id| async move { sse::connect(target, path, &user_id, read_size).await },
                |stream, user_id, user_index| {
                    let (ctx, cancel) = (Arc::clone(ctx), cancel.clone());
                    tokio::spawn(sse::receive(stream, user_id, user_index, ctx, cancel))
                },
            )
            .await
        }
    }
}

/// How many receivers the server ended early, by reason.
fn close_reasons(outcomes: &[RecvOutcome]) -> BTreeMap<String, u64> {
    let mut reasons = BTreeMap::new();
    for outcome in outcomes.iter().filter(|outcome| outcome.closed_early) {
        let reason = outcome.close_reason.as_deref().unwrap_or("unknown");
        *reasons.entry(reason.to_owned()).or_default() += 1;
    }
    reasons
}

/// Totals from checking every receiver against the acknowledgement table.
#[derive(Debug, Default)]
struct Check {
    delivered: u64,
    loss: u64,
    duplicates: u64,
    misrouted: u64,
    invalid: u64,
    unacked: u64,
    closed_early: u64,
    last_recv_ns: u64,
}

/// Compares what each user's connections received with what the server acknowledged.
fn verify(shared: &PublishShared, outcomes: &[RecvOutcome], users: u64) -> Check {
    let mut check = Check::default();
    let mut by_user: Vec<Vec<&SeenSet>> = vec![Vec::new(); users as usize];
    for outcome in outcomes {
        check.duplicates += outcome.duplicates;
        check.misrouted += outcome.misrouted;
        check.invalid += outcome.invalid;
        check.delivered +=
            outcome.frames - outcome.duplicates - outcome.misrouted - outcome.invalid;
        check.closed_early += u64::from(outcome.closed_early);
        check.last_recv_ns = check.last_recv_ns.max(outcome.last_recv_ns);
        if let Some(list) = by_user.get_mut(outcome.user_index as usize) {
            list.push(&outcome.seen);
        }
    }
    let issued = shared
        .next_seq
        .load(Ordering::Relaxed)
        .min(shared.acks.capacity());
    for seq in 0..issued {
        let acked = shared.acks.delivered(seq);
        let index = seq / users;
        let received = by_user[(seq % users) as usize]
            .iter()
            .filter(|seen| seen.contains(index))
            .count() as u64;
        check.loss += acked.saturating_sub(received);
        check.unacked += received.saturating_sub(acked);
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_counts_loss_and_unacked() {
        let shared = PublishShared {
            next_seq: AtomicU64::new(4),
            acks: AckTable::new(8),
            rtt: SharedHistogram::default(),
        };
        // Two users: seq 0 and 2 go to user 0, seq 1 and 3 to user 1.
        for seq in 0..3 {
            shared.acks.record(seq, 1);
        }
        let mut user0 = RecvOutcome::default();
        user0.seen.insert(0); // seq 0
        user0.frames = 2;
        user0.duplicates = 1;
        let mut user1 = RecvOutcome {
            user_index: 1,
            ..RecvOutcome::default()
        };
        user1.seen.insert(0); // seq 1
        user1.seen.insert(1); // seq 3 (never acknowledged)
        user1.frames = 2;
        let check = verify(&shared, &[user0, user1], 2);
        assert_eq!(check.loss, 1, "seq 2 was acknowledged but never arrived");
        assert_eq!(check.unacked, 1);
        assert_eq!(check.duplicates, 1);
        assert_eq!(check.delivered, 3);
    }
}
