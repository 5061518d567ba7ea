//! `loadgen history` (ours only): what the server's per-user history costs, and whether a resuming
//! client gets back exactly what was stored.
//!
//! With every user offline, publishers fill the history: `--users` × `--events` events of
//! `--payload-bytes` each, sent through the batch endpoint. Each publisher owns a share of the
//! users and sends their events in order, so every user's events are accepted in sequence order.
//! Every reply item must say `stored: true`. The server's `/metrics` `history_events` must then
//! have grown by exactly users × events, and the growth of its resident memory over that many
//! events gives the bytes per stored event.
//!
//! Then the integrity check: for `--sample` users, a WebSocket resumes from `<epoch>:0` (replay
//! everything stored). The epoch comes from the first event of each sampled user, which is sent
//! as a single push (its reply carries the epoch; batch replies do not). Once the connection is
//! up, one marker event is pushed to the user: the server queues the replay ahead of anything live,
//! so the replay must be exactly the user's events in sequence order, followed by the marker.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::value_parser;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::CommonArgs;
use crate::http::HttpConn;
use crate::probe::PROBE_DATA;
use crate::publisher::write_data;
use crate::report::Report;
use crate::stats::round3;
use crate::sys::{self, CpuSnapshot, ratio};
use crate::target::ours::{BATCH_PATH, PUSH_PATH};
use crate::target::{Incoming, Target, TargetKind};
use crate::ws;

/// Most events one run stores (users × events).
const MAX_TOTAL_EVENTS: u64 = 50_000_000;
/// Largest batch body loadgen sends: under the server's default `MAX_BODY_BYTES` (1 MiB).
const MAX_BODY_BYTES: usize = 900_000;
/// Bytes a batch item takes beyond its `data` (`{"user_id":"hist-u…","data":…}` and a comma).
const ITEM_OVERHEAD_BYTES: usize = 48;
/// Longest wait for one sampled user's replay and marker.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(15);
/// Sampled users checked at once.
const REPLAY_CONCURRENCY: usize = 16;

/// Options of `loadgen history`.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// Options shared by every scenario (`--server-pid` is required here).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Users pushed to while offline (ids `hist-u{i}`). The server's HISTORY_MAX_USERS (default
    /// 10,000) must allow them all.
    #[arg(long, default_value_t = 10_000, value_parser = value_parser!(u64).range(1..=1_000_000))]
    pub users: u64,
    /// Events per user. The server's HISTORY_SIZE (default 100) must be at least this.
    #[arg(long, default_value_t = 100, value_parser = value_parser!(u64).range(1..=100_000))]
    pub events: u64,
    /// Size of each event's `data` object in bytes.
    #[arg(long, default_value_t = 256, value_parser = value_parser!(u64).range(0..=65_536))]
    pub payload_bytes: u64,
    /// Events per batch POST (the server's MAX_BATCH_SIZE defaults to 1000); lowered when a body
    /// would exceed ~900 kB.
    #[arg(long, default_value_t = 1000, value_parser = value_parser!(u64).range(1..=10_000))]
    pub batch: u64,
    /// Concurrent publishers (one keep-alive connection each, each owning a share of the users).
    #[arg(long, default_value_t = 4, value_parser = value_parser!(u64).range(1..=64))]
    pub publishers: u64,
    /// Users whose replay from `<epoch>:0` is checked (spread evenly over all users).
    #[arg(long, default_value_t = 50, value_parser = value_parser!(u64).range(0..=10_000))]
    pub sample: u64,
    /// Time limit for the whole run, in seconds.
    #[arg(long, default_value_t = 180, value_parser = value_parser!(u64).range(1..=3_600))]
    pub timeout: u64,
}

/// Runs the scenario.
pub async fn run(args: HistoryArgs, target: Target) -> Result<Report> {
    if target.kind != TargetKind::Ours {
        bail!(
            "history runs against --target ours only: it relies on ours' per-user history (push \
             replies with stored/epoch, /metrics history_events, resuming with last_event_id), \
             which {} does not have",
            target.kind
        );
    }
    let Some(pid) = args.common.server_pid else {
        bail!("history needs --server-pid to read the server's VmRSS");
    };
    if args.users.saturating_mul(args.events) > MAX_TOTAL_EVENTS {
        bail!(
            "--users × --events = {} is over the cap of {MAX_TOTAL_EVENTS} events",
            args.users.saturating_mul(args.events)
        );
    }
    let limit = Duration::from_secs(args.timeout);
    tokio::time::timeout(limit, fill_and_check(args, target, pid))
        .await
        .with_context(|| format!("history did not finish within {limit:?} (--timeout)"))?
}

/// The server's history counts from `/metrics`.
#[derive(Debug, Clone, Copy, Deserialize)]
struct HistoryCounts {
    history_users: u64,
    history_events: u64,
}

async fn history_counts(target: &Target) -> Result<HistoryCounts> {
    let mut conn = HttpConn::connect(&target.api).await?;
    let (status, body) = conn.get("/metrics").await?;
    if !status.is_success() {
        bail!("/metrics answered {status}");
    }
    serde_json::from_slice(&body).context("/metrics has no history_users/history_events")
}

/// What the reply to a push says about one event.
#[derive(Debug, Deserialize)]
struct Stored {
    stored: bool,
    duplicate: bool,
    delivered: u64,
    /// Only in single-push replies (when stored).
    epoch: Option<String>,
    /// Only in single-push replies (when stored).
    position: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct BatchReply {
    results: Vec<Stored>,
}

/// Counts over the push replies.
#[derive(Debug, Default, Clone, Copy)]
struct PushCounts {
    requests: u64,
    events: u64,
    stored: u64,
    not_stored: u64,
    duplicates: u64,
    /// Events that reached a connection (the users were meant to be offline).
    delivered: u64,
}

impl PushCounts {
    fn count(&mut self, reply: &Stored) {
        self.events += 1;
        if reply.stored {
            self.stored += 1;
        } else {
            self.not_stored += 1;
        }
        self.duplicates += u64::from(reply.duplicate);
        self.delivered += reply.delivered;
    }

    fn merge(&mut self, other: PushCounts) {
        self.requests += other.requests;
        self.events += other.events;
        self.stored += other.stored;
        self.not_stored += other.not_stored;
        self.duplicates += other.duplicates;
        self.delivered += other.delivered;
    }
}

/// The run's shape, shared by the publishers.
#[derive(Debug)]
struct Plan {
    users: u64,
    events: u64,
    payload_bytes: usize,
    batch: usize,
    /// `sampled[u]`: user `u`'s first event was sent as a single push already.
    sampled: Vec<bool>,
}

impl Plan {
    /// The id of user `u`.
    fn user_id(u: u64) -> String {
        format!("hist-u{u}")
    }

    /// The sequence number of user `u`'s `k`-th event (`seq % users` is the user, `seq / users`
    /// the event's index for that user).
    fn seq(&self, u: u64, k: u64) -> u64 {
        k * self.users + u
    }
}

/// Appends one push object for user `u`'s `k`-th event.
fn write_item(body: &mut Vec<u8>, plan: &Plan, u: u64, k: u64) {
    body.extend_from_slice(b"{\"user_id\":\"");
    body.extend_from_slice(Plan::user_id(u).as_bytes());
    body.extend_from_slice(b"\",\"data\":");
    write_data(body, plan.seq(u, k), 0, plan.payload_bytes);
    body.push(b'}');
}

async fn fill_and_check(args: HistoryArgs, target: Target, pid: u32) -> Result<Report> {
    let users = args.users;
    let events = args.events;
    let payload_bytes = args.payload_bytes as usize;
    let batch = (args.batch as usize)
        .min(MAX_BODY_BYTES / (payload_bytes + ITEM_OVERHEAD_BYTES))
        .max(1);
    let sample = args.sample.min(users);
    // Distinct because `users >= sample`.
    let sample_users: Vec<u64> = (0..sample).map(|i| i * users / sample).collect();
    let mut sampled = vec![false; users as usize];
    for &u in &sample_users {
        sampled[u as usize] = true;
    }
    let plan = std::sync::Arc::new(Plan {
        users,
        events,
        payload_bytes,
        batch,
        sampled,
    });

    let before = history_counts(&target)
        .await
        .context("server not reachable (/metrics)")?;
    let rss_before = sys::tree_rss_bytes(pid)?;

    // The sampled users' first events, one single push each, for their epochs.
    eprintln!("loadgen: {sample} single push(es) for the sampled users' epochs");
    let mut singles = PushCounts::default();
    let mut epochs = Vec::with_capacity(sample_users.len());
    let mut not_fresh = 0u64;
    let mut conn = HttpConn::connect(&target.api).await?;
    let mut body = Vec::new();
    for &u in &sample_users {
        body.clear();
        write_item(&mut body, &plan, u, 0);
        let (status, reply) = conn
            .post_json(PUSH_PATH, Bytes::copy_from_slice(&body))
            .await
            .context("single push")?;
        if !status.is_success() {
            bail!(
                "{PUSH_PATH} answered {status}: {}",
                String::from_utf8_lossy(&reply)
            );
        }
        let reply: Stored = serde_json::from_slice(&reply).with_context(|| {
            format!(
                "{PUSH_PATH} reply without stored/duplicate/delivered: {}",
                String::from_utf8_lossy(&reply)
            )
        })?;
        singles.requests += 1;
        singles.count(&reply);
        not_fresh += u64::from(reply.position.is_some_and(|position| position != 1));
        epochs.push(reply.epoch);
    }

    // The fill: publisher p owns users p, p + P, …, and sends their events in order.
    let publishers = args.publishers.min(users);
    eprintln!(
        "loadgen: storing {users} user(s) × {events} event(s) of {payload_bytes} B with \
         {publishers} publisher(s), {batch} per batch"
    );
    let cpu_start = CpuSnapshot::take(Some(pid));
    let fill_started = Instant::now();
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let plan = std::sync::Arc::clone(&plan);
            let target = target.clone();
            tokio::spawn(async move { fill(&target, &plan, p, publishers).await })
        })
        .collect();
    let mut fills = PushCounts::default();
    for task in tasks {
        fills.merge(task.await.context("publisher task panicked")??);
    }
    let fill_s = fill_started.elapsed().as_secs_f64();
    let cpu = cpu_start.until(&CpuSnapshot::take(Some(pid)));

    tokio::time::sleep(super::SETTLE).await;
    let after = history_counts(&target).await?;
    let rss_after = sys::tree_rss_bytes(pid)?;

    // The integrity check.
    eprintln!("loadgen: checking the replay of {sample} user(s) from <epoch>:0");
    let replay_started = Instant::now();
    let checks = futures_util::stream::iter(sample_users.iter().zip(epochs))
        .map(|(&u, epoch)| {
            let target = &target;
            let plan = &plan;
            async move {
                match epoch {
                    Some(epoch) => {
                        check_replay(target, plan, u, &epoch)
                            .await
                            .unwrap_or_else(|error| ReplayOutcome {
                                error: Some(format!("{error:#}")),
                                ..ReplayOutcome::default()
                            })
                    }
                    None => ReplayOutcome {
                        error: Some("its first push was not stored (no epoch)".to_owned()),
                        ..ReplayOutcome::default()
                    },
                }
            }
        })
        .buffer_unordered(REPLAY_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let replay_s = replay_started.elapsed().as_secs_f64();
    let mut replay = ReplayOutcome::default();
    let mut users_exact = 0u64;
    let mut errors = 0u64;
    for check in checks {
        users_exact += u64::from(check.exact(events));
        errors += u64::from(check.error.is_some());
        replay.merge(check);
    }

    let total = users * events;
    let stored_events = after.history_events.saturating_sub(before.history_events);
    let grown = rss_after.saturating_sub(rss_before);
    let mut pushes = PushCounts::default();
    pushes.merge(singles);
    pushes.merge(fills);

    let mut report = Report::new("history");
    report.set("target", target.kind.name());
    report.set(
        "config",
        json!({
            "users": users,
            "events_per_user": events,
            "payload_bytes": payload_bytes,
            "batch": batch,
            "publishers": publishers,
            "sample": sample,
            "server_pid": pid,
        }),
    );
    report.set("expected_events", total);
    report.set("stored_events", stored_events);
    report.set(
        "history_metrics",
        json!({
            "users_before": before.history_users,
            "users_after": after.history_users,
            "events_before": before.history_events,
            "events_after": after.history_events,
        }),
    );
    report.set("rss_before_mib", sys::mib(rss_before));
    report.set("rss_after_mib", sys::mib(rss_after));
    report.set("rss_growth_mib", sys::mib(grown));
    report.set(
        "bytes_per_stored_event",
        round3(ratio(grown as f64, total as f64)),
    );
    report.set(
        "fill",
        json!({
            "events": fills.events,
            "requests": fills.requests,
            "seconds": round3(fill_s),
            "events_per_s": round3(ratio(fills.events as f64, fill_s)),
        }),
    );
    report.set(
        "pushes",
        json!({
            "requests": pushes.requests,
            "events": pushes.events,
            "stored": pushes.stored,
            "not_stored": pushes.not_stored,
            "duplicate": pushes.duplicates,
            "delivered": pushes.delivered,
        }),
    );
    report.set_cpu_per(&cpu, fills.events as f64 / 1e6, "million_events");
    report.set(
        "replay",
        json!({
            "users_checked": sample,
            "users_exact": users_exact,
            "events": replay.received,
            "missing": replay.missing,
            "duplicates": replay.duplicates,
            "out_of_order": replay.out_of_order,
            "misrouted": replay.misrouted,
            "unexpected_frames": replay.unexpected,
            "no_marker": replay.no_marker,
            "errors": errors,
            "seconds": round3(replay_s),
        }),
    );

    let limits_hint = "the server needs HISTORY_SIZE >= --events, HISTORY_MAX_USERS >= --users, \
                       and room in its history (a fresh server)";
    report.fail_if_nonzero("pushes not stored", pushes.not_stored);
    report.fail_if_nonzero("pushes taken for duplicates", pushes.duplicates);
    report.fail_if_nonzero("sampled users that already had history", not_fresh);
    if pushes.events != total {
        report
            .failures
            .push(format!("{} events pushed, expected {total}", pushes.events));
    }
    if after.history_events != before.history_events + total {
        report.failures.push(format!(
            "history_events went from {} to {}, expected +{total}; {limits_hint}",
            before.history_events, after.history_events
        ));
    }
    report.fail_if_nonzero(
        "replayed users not exactly their events in order",
        sample - users_exact,
    );
    report.fail_if_nonzero("replay: missing events", replay.missing);
    report.fail_if_nonzero("replay: duplicate events", replay.duplicates);
    report.fail_if_nonzero("replay: events out of order", replay.out_of_order);
    report.fail_if_nonzero("replay: misrouted events", replay.misrouted);
    report.fail_if_nonzero("replay: unexpected frames (resync?)", replay.unexpected);
    report.fail_if_nonzero("replay: marker never arrived", replay.no_marker);
    report.fail_if_nonzero("replay: errors", errors);
    if let Some(error) = replay.error {
        report.warnings.push(format!("first replay error: {error}"));
    }
    if pushes.delivered > 0 {
        report.warnings.push(format!(
            "{} event(s) reached a connection: some hist-u* users were online, so the memory \
             figure includes their queues",
            pushes.delivered
        ));
    }
    if before.history_events > 0 || before.history_users > 0 {
        report.warnings.push(format!(
            "the server already held {} event(s) of {} user(s): use a fresh server for a clean \
             RSS baseline",
            before.history_events, before.history_users
        ));
    }
    Ok(report)
}

/// One publisher: the events of users `p, p + publishers, …`, in order (event 0 of every one of
/// its users, then event 1, …), in batches of `plan.batch`.
async fn fill(target: &Target, plan: &Plan, p: u64, publishers: u64) -> Result<PushCounts> {
    let mut counts = PushCounts::default();
    let mut conn: Option<HttpConn> = None;
    let mut body = Vec::with_capacity(plan.batch * (plan.payload_bytes + ITEM_OVERHEAD_BYTES));
    let mut items = (0..plan.events)
        .flat_map(|k| {
            (p..plan.users)
                .step_by(publishers as usize)
                .map(move |u| (u, k))
        })
        .filter(|&(u, k)| !(k == 0 && plan.sampled[u as usize]))
        .peekable();
    while items.peek().is_some() {
        body.clear();
        body.push(b'[');
        let mut count = 0;
        for (u, k) in items.by_ref().take(plan.batch) {
            if count > 0 {
                body.push(b',');
            }
            write_item(&mut body, plan, u, k);
            count += 1;
        }
        body.push(b']');
        let mut live = match conn.take() {
            Some(open) if open.is_open() => open,
            _ => HttpConn::connect(&target.api).await?,
        };
        // No retry: events without an event_id would be stored twice.
        let (status, reply) = live
            .post_json(BATCH_PATH, Bytes::copy_from_slice(&body))
            .await
            .context("batch push")?;
        if !status.is_success() {
            bail!(
                "{BATCH_PATH} answered {status}: {}",
                String::from_utf8_lossy(&reply)
            );
        }
        let reply: BatchReply = serde_json::from_slice(&reply).with_context(|| {
            format!(
                "{BATCH_PATH} reply without stored/duplicate/delivered: {}",
                String::from_utf8_lossy(&reply)
            )
        })?;
        if reply.results.len() != count {
            bail!(
                "{BATCH_PATH} answered {} result(s) for {count} event(s)",
                reply.results.len()
            );
        }
        counts.requests += 1;
        for item in &reply.results {
            counts.count(item);
        }
        conn = Some(live);
    }
    Ok(counts)
}

/// What one sampled user's replay looked like.
#[derive(Debug, Default)]
struct ReplayOutcome {
    /// The user's events received.
    received: u64,
    /// Events of the user that did not arrive.
    missing: u64,
    /// Events that arrived more than once.
    duplicates: u64,
    /// Events that arrived after a later one.
    out_of_order: u64,
    /// Events of another user.
    misrouted: u64,
    /// Frames that are no event of this run (a resync notice, an unknown sequence number).
    unexpected: u64,
    /// The marker pushed after connecting never arrived (timeout or the connection ended).
    no_marker: u64,
    /// Why the check could not run (the first one, when merged).
    error: Option<String>,
}

impl ReplayOutcome {
    /// Whether the replay was exactly the user's `events` events, in order, then the marker.
    fn exact(&self, events: u64) -> bool {
        self.error.is_none()
            && self.received == events
            && self.missing + self.duplicates + self.out_of_order == 0
            && self.misrouted + self.unexpected + self.no_marker == 0
    }

    fn merge(&mut self, other: ReplayOutcome) {
        self.received += other.received;
        self.missing += other.missing;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.misrouted += other.misrouted;
        self.unexpected += other.unexpected;
        self.no_marker += other.no_marker;
        if self.error.is_none() {
            self.error = other.error;
        }
    }
}

/// Resumes user `u` from `<epoch>:0`, pushes a marker, and reads until the marker arrives.
async fn check_replay(target: &Target, plan: &Plan, u: u64, epoch: &str) -> Result<ReplayOutcome> {
    let user_id = Plan::user_id(u);
    let url = format!("{}&last_event_id={epoch}:0", target.ws_url(&user_id));
    let mut ws = ws::connect_url(target, &url, &user_id, ws::client_config(false)).await?;
    // The connection is registered (and its replay queued) before the handshake completes, so the
    // marker comes after every replayed event.
    let mut conn = HttpConn::connect(&target.api).await?;
    let marker = format!("{{\"user_id\":\"{user_id}\",\"data\":{PROBE_DATA}}}");
    let (status, reply) = conn.post_json(PUSH_PATH, Bytes::from(marker)).await?;
    if !status.is_success() {
        bail!(
            "marker push answered {status}: {}",
            String::from_utf8_lossy(&reply)
        );
    }

    let mut outcome = ReplayOutcome::default();
    let mut indices = Vec::with_capacity(plan.events as usize);
    let deadline = tokio::time::Instant::now() + REPLAY_TIMEOUT;
    let mut marked = false;
    while !marked {
        let message = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(_) | Err(_) => break,
        };
        let Message::Text(text) = message else {
            continue;
        };
        match target.protocol.classify(&text) {
            Incoming::Push(frame) => {
                if frame.user_id != user_id || frame.seq % plan.users != u {
                    outcome.misrouted += 1;
                } else if frame.seq / plan.users >= plan.events {
                    outcome.unexpected += 1;
                } else {
                    indices.push(frame.seq / plan.users);
                }
            }
            Incoming::Probe => marked = true,
            Incoming::Reply(_) | Incoming::Ignore | Incoming::Invalid => outcome.unexpected += 1,
        }
    }
    ws::close(ws).await;
    outcome.no_marker = u64::from(!marked);
    outcome.received = indices.len() as u64;
    let mut seen = vec![false; plan.events as usize];
    for (i, &k) in indices.iter().enumerate() {
        if std::mem::replace(&mut seen[k as usize], true) {
            outcome.duplicates += 1;
        } else if i > 0 && k < indices[i - 1] {
            outcome.out_of_order += 1;
        }
    }
    outcome.missing = seen.iter().filter(|&&seen| !seen).count() as u64;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_the_seed_push_shape() {
        let plan = Plan {
            users: 10,
            events: 3,
            payload_bytes: 64,
            batch: 1000,
            sampled: vec![false; 10],
        };
        let mut body = Vec::new();
        write_item(&mut body, &plan, 7, 2);
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(value["user_id"], "hist-u7");
        assert_eq!(value["data"]["seq"], 27);
        assert_eq!(
            serde_json::to_string(&value["data"]).map(|s| s.len()).ok(),
            Some(64)
        );
    }

    #[test]
    fn a_replay_is_exact_only_when_complete_and_in_order() {
        let exact = ReplayOutcome {
            received: 3,
            ..ReplayOutcome::default()
        };
        assert!(exact.exact(3));
        assert!(!exact.exact(4));
        let late = ReplayOutcome {
            received: 3,
            no_marker: 1,
            ..ReplayOutcome::default()
        };
        assert!(!late.exact(3));
    }
}
