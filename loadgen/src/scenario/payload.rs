//! The engine shared by `broadcast` and `user-ids` (ours only): large events, each addressed to
//! every user of the run, and what they cost the server.
//!
//! Unless the run is offline, every user has one WebSocket. Once each of them has received a
//! subscription probe and the server has had [`super::SETTLE`] to settle, its idle RSS is read.
//! Then `--count` events of `--payload-bytes` go out on a fixed schedule of `--rate` per second,
//! each on a connection of its own (so a slow reply does not hold the schedule back), each one
//! addressed to every user: `POST /sse/broadcast`, or `POST /sse/push` with `user_ids`. A thread
//! reads the server's RSS every [`RSS_INTERVAL`] from the first request until `--settle-seconds`
//! after the last frame. Every connection must receive every event exactly once. Receivers parse
//! only a frame's envelope and the start of its `data` (`seq`, `sent_ns`), then drop it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::value_parser;
use serde::Deserialize;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Opened;
use crate::http::{self, HttpConn};
use crate::probe::{self, ProbeBoard};
use crate::publisher::write_data;
use crate::report::Report;
use crate::stats::{LocalSamples, SeenSet, SharedHistogram, median_max, round3};
use crate::sys::{self, CpuSnapshot, PeakRss, RssPeak};
use crate::target::ours::{BROADCAST_PATH, PUSH_PATH};
use crate::target::{Frame, Incoming, Protocol, Target, TargetKind};
use crate::ws::{self, WsStream};

/// How often the server's RSS is read while events are delivered.
const RSS_INTERVAL: Duration = Duration::from_millis(10);
/// After the last reply, loadgen waits for frames still on their way until all have arrived or
/// none arrived for this long (or the run's time is up).
const QUIET: Duration = Duration::from_secs(5);
/// From this payload size on, receivers read 64 KiB at a time instead of 4 KiB.
const LARGE_FRAME_BYTES: usize = 64 * 1024;

/// Options shared by `broadcast` and `user-ids` (their users and payload sizes have defaults of
/// their own).
#[derive(Debug, Clone, clap::Args)]
pub struct PayloadRunArgs {
    /// Events to publish, each addressed to every user.
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u64).range(1..=1000))]
    pub count: u64,
    /// Events per second (open-loop, fixed schedule).
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u64).range(1..=100))]
    pub rate: u64,
    /// Seconds after the last frame (the last reply when offline) until the settled RSS is read;
    /// the peak is sampled until then.
    #[arg(long, default_value_t = 5, value_parser = value_parser!(u64).range(0..=600))]
    pub settle_seconds: u64,
    /// Time limit for the whole run, in seconds.
    #[arg(long, default_value_t = 120, value_parser = value_parser!(u64).range(1..=3_600))]
    pub timeout: u64,
}

/// How one event is addressed to every user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// `POST /sse/broadcast` `{"data":…}`: every user connected at that moment.
    Broadcast,
    /// `POST /sse/push` `{"user_ids":[…],"data":…}`: the run's users, online or not.
    UserIds,
}

impl Addressing {
    /// The request's path.
    fn path(self) -> &'static str {
        match self {
            Self::Broadcast => BROADCAST_PATH,
            Self::UserIds => PUSH_PATH,
        }
    }

    /// The request body up to its `data` object (which comes last, followed by `}`).
    fn body_prefix(self, user_ids: &[String]) -> Vec<u8> {
        match self {
            Self::Broadcast => b"{\"data\":".to_vec(),
            Self::UserIds => {
                let mut body = b"{\"user_ids\":[".to_vec();
                for (i, user_id) in user_ids.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.push(b'"');
                    body.extend_from_slice(user_id.as_bytes());
                    body.push(b'"');
                }
                body.extend_from_slice(b"],\"data\":");
                body
            }
        }
    }
}

/// One run of large events.
#[derive(Debug, Clone)]
pub struct PayloadSpec {
    /// Scenario name for the report.
    pub scenario: &'static str,
    /// How each event reaches the users.
    pub addressing: Addressing,
    /// The users (no escaping needed in JSON or URLs).
    pub user_ids: Vec<String>,
    /// Whether every user holds one WebSocket (otherwise the users are offline).
    pub online: bool,
    /// Size of each event's `data` object in bytes.
    pub payload_bytes: usize,
    /// Shared options: count, rate, settle time, time limit.
    pub run: PayloadRunArgs,
    /// Server pid for RSS and CPU.
    pub server_pid: Option<u32>,
}

/// Runs `spec` against `target` (ours only) within its time limit and builds the report.
pub async fn run(target: Target, spec: PayloadSpec) -> Result<Report> {
    if target.kind != TargetKind::Ours {
        bail!(
            "{} runs against --target ours only: it relies on ours' /sse/broadcast and user_ids \
             pushes, which {} does not have",
            spec.scenario,
            target.kind
        );
    }
    let connections = if spec.online {
        spec.user_ids.len() as u64
    } else {
        0
    };
    super::check_fd_budget(connections, spec.run.count)?;
    let limit = Duration::from_secs(spec.run.timeout);
    let scenario = spec.scenario;
    tokio::time::timeout(limit, measure(target, spec))
        .await
        .with_context(|| format!("{scenario} did not finish within {limit:?} (--timeout)"))?
}

/// What every receiving connection shares: the probes, and per event the first and last
/// arrival.
#[derive(Debug)]
struct Board {
    /// The instant `sent_ns` values are measured from.
    start: Instant,
    /// Where connections report their first subscription probe.
    probes: ProbeBoard,
    /// First arrivals of an event on a connection, all connections together.
    frames: AtomicU64,
    /// Per event: the first arrival on any connection, ns since `start` (`u64::MAX`: none yet).
    first_ns: Vec<AtomicU64>,
    /// Per event: the last arrival on any connection, ns since `start` (0: none yet).
    last_ns: Vec<AtomicU64>,
    /// End-to-end latency (µs) of every first arrival.
    latency: SharedHistogram,
}

impl Board {
    /// A board for `events` events and one connection per user of `users`.
    fn new(events: u64, users: u64) -> Self {
        Self {
            start: Instant::now(),
            probes: ProbeBoard::new(users as usize, 0..users),
            frames: AtomicU64::new(0),
            first_ns: (0..events).map(|_| AtomicU64::new(u64::MAX)).collect(),
            last_ns: (0..events).map(|_| AtomicU64::new(0)).collect(),
            latency: SharedHistogram::default(),
        }
    }

    /// Nanoseconds since `start`.
    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Event `seq`'s first and last arrival (ns since `start`), if it arrived anywhere.
    fn arrivals(&self, seq: usize) -> Option<(u64, u64)> {
        let first = self.first_ns[seq].load(Ordering::Relaxed);
        (first != u64::MAX).then(|| (first, self.last_ns[seq].load(Ordering::Relaxed)))
    }
}

/// What one receiving connection saw.
#[derive(Debug, Default)]
struct Received {
    /// Events received.
    seen: SeenSet,
    /// Frames of an event this connection had already received.
    duplicates: u64,
    /// Frames naming another user.
    misrouted: u64,
    /// Frames that could not be read, or named an event that was never sent.
    invalid: u64,
    /// Why the server ended the connection before the run did, if it did.
    closed_early: Option<String>,
}

impl Received {
    /// Checks one event frame and records its arrival.
    fn event(
        &mut self,
        frame: &Frame<'_>,
        user_id: &str,
        board: &Board,
        samples: &mut LocalSamples,
    ) {
        if frame.user_id != user_id {
            self.misrouted += 1;
            return;
        }
        let Some(seq) = usize::try_from(frame.seq)
            .ok()
            .filter(|&seq| seq < board.last_ns.len())
        else {
            self.invalid += 1;
            return;
        };
        if !self.seen.insert(frame.seq) {
            self.duplicates += 1;
            return;
        }
        let now_ns = board.now_ns();
        samples.record(now_ns.saturating_sub(frame.sent_ns) / 1000, &board.latency);
        board.first_ns[seq].fetch_min(now_ns, Ordering::Relaxed);
        board.last_ns[seq].fetch_max(now_ns, Ordering::Relaxed);
        board.frames.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads one user's WebSocket until `cancel` fires or the server ends it, checking each frame.
async fn receive(
    mut ws: WsStream,
    user_id: String,
    user_index: u64,
    protocol: Arc<dyn Protocol>,
    board: Arc<Board>,
    cancel: CancellationToken,
) -> Received {
    let mut received = Received::default();
    let mut samples = LocalSamples::default();
    let mut probed = false;
    let ended = ws::read_texts(&mut ws, &cancel, |text| {
        match protocol.classify(text) {
            Incoming::Push(frame) => received.event(&frame, &user_id, &board, &mut samples),
            Incoming::Probe => {
                if !std::mem::replace(&mut probed, true) {
                    board.probes.confirm(user_index);
                }
            }
            Incoming::Invalid => received.invalid += 1,
            Incoming::Reply(answer) => return Some(answer.into()),
            Incoming::Ignore => {}
        }
        None
    })
    .await;
    if ended.is_none() {
        ws::close(ws).await;
    }
    samples.flush(&board.latency);
    received.closed_early = ended;
    received
}

/// The parts of a reply loadgen reads (broadcast: `users`, the users it went to; `user_ids`:
/// `results`, one per user).
#[derive(Debug, Deserialize)]
struct Reply {
    delivered: u64,
    users: Option<u64>,
    #[serde(default)]
    results: Vec<Stored>,
}

/// One user's result in a `user_ids` reply.
#[derive(Debug, Deserialize)]
struct Stored {
    stored: bool,
}

/// One published event: when it went out, when its reply came, and what the reply said.
#[derive(Debug)]
struct Sent {
    sent_ns: u64,
    reply_ns: u64,
    reply: Reply,
}

/// Publishes event `seq` on a connection of its own: the body is written with `sent_ns` = now,
/// then POSTed; the reply may take up to `timeout`.
async fn publish(
    target: Target,
    addressing: Addressing,
    prefix: Arc<Vec<u8>>,
    seq: u64,
    payload_bytes: usize,
    board: Arc<Board>,
    timeout: Duration,
) -> Result<Sent> {
    let mut conn = HttpConn::connect(&target.api).await?;
    let mut body = Vec::with_capacity(prefix.len() + payload_bytes + 64);
    body.extend_from_slice(&prefix);
    let sent_ns = board.now_ns();
    write_data(&mut body, seq, sent_ns, payload_bytes);
    body.push(b'}');
    let path = addressing.path();
    let (status, reply) = conn
        .post_json_within(path, Bytes::from(body), timeout)
        .await
        .with_context(|| format!("POST {path}"))?;
    let reply_ns = board.now_ns();
    if !status.is_success() {
        let hint = if status.as_u16() == 413 {
            " (raise the server's MAX_BODY_BYTES)"
        } else {
            ""
        };
        bail!(
            "POST {path} answered {status}{hint}: {}",
            String::from_utf8_lossy(&reply[..reply.len().min(300)])
        );
    }
    let reply: Reply = serde_json::from_slice(&reply).with_context(|| {
        format!(
            "POST {path} reply without delivered: {}",
            String::from_utf8_lossy(&reply[..reply.len().min(300)])
        )
    })?;
    Ok(Sent {
        sent_ns,
        reply_ns,
        reply,
    })
}

/// Publishes every event on its schedule and waits for all the replies; fails with the first
/// failed request.
async fn publish_all(target: &Target, spec: &PayloadSpec, board: &Arc<Board>) -> Result<Vec<Sent>> {
    let prefix = Arc::new(spec.addressing.body_prefix(&spec.user_ids));
    let interval = Duration::from_secs_f64(1.0 / spec.run.rate as f64);
    let timeout = Duration::from_secs(spec.run.timeout);
    let first = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(spec.run.count as usize);
    for seq in 0..spec.run.count {
        tokio::time::sleep_until(first + interval.mul_f64(seq as f64)).await;
        tasks.push(tokio::spawn(publish(
            target.clone(),
            spec.addressing,
            Arc::clone(&prefix),
            seq,
            spec.payload_bytes,
            Arc::clone(board),
            timeout,
        )));
    }
    let mut sent = Vec::with_capacity(tasks.len());
    for task in tasks {
        sent.push(task.await.context("publisher task panicked")??);
    }
    Ok(sent)
}

/// Opens one WebSocket per user, each read by its own task from the moment it opens.
async fn open_receivers(
    target: &Target,
    spec: &PayloadSpec,
    board: &Arc<Board>,
    cancel: &CancellationToken,
) -> Opened<JoinHandle<Received>> {
    let config = ws::client_config(spec.payload_bytes < LARGE_FRAME_BYTES);
    let specs = spec
        .user_ids
        .iter()
        .enumerate()
        .map(|(i, user_id)| (user_id.clone(), i as u64))
        .collect();
    super::open_connections(
        target,
        specs,
        |user_id| async move { ws::connect(target, &user_id, config).await },
        |stream, user_id, user_index| {
            tokio::spawn(receive(
                stream,
                user_id,
                user_index,
                Arc::clone(&target.protocol),
                Arc::clone(board),
                cancel.clone(),
            ))
        },
    )
    .await
}

/// Waits until `expected` first arrivals have been recorded, none came for [`QUIET`], or
/// `deadline` passes.
async fn wait_for_frames(board: &Board, expected: u64, deadline: Instant) {
    let (mut seen, mut progress_at) = (board.frames.load(Ordering::Relaxed), Instant::now());
    while seen < expected && Instant::now() < deadline && progress_at.elapsed() < QUIET {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now_seen = board.frames.load(Ordering::Relaxed);
        if now_seen != seen {
            (seen, progress_at) = (now_seen, Instant::now());
        }
    }
}

/// The connections set up before the events: how long they took and what the server counted.
#[derive(Debug, Default)]
struct Setup {
    handshake_retries: u64,
    open_s: f64,
    confirmed_s: f64,
    /// The server's connection count (`/health`) once every probe arrived.
    server_count: u64,
}

/// Opens the receivers (when online) and confirms every subscription with a probe.
async fn set_up(
    target: &Target,
    spec: &PayloadSpec,
    board: &Arc<Board>,
    cancel: &CancellationToken,
) -> Result<(Vec<JoinHandle<Received>>, Setup)> {
    let mut setup = Setup::default();
    if spec.online {
        let users = spec.user_ids.len();
        eprintln!("loadgen: opening {users} WebSocket connection(s), one per user");
        let opened = open_receivers(target, spec, board, cancel).await;
        if opened.failed > 0 {
            bail!(
                "{} of {users} WebSocket connection(s) failed: {}",
                opened.failed,
                opened.first_error.unwrap_or_default()
            );
        }
        setup.handshake_retries = opened.retries;
        setup.open_s = opened.elapsed.as_secs_f64();
        let wait = Duration::from_secs(10) + Duration::from_millis(users as u64);
        setup.confirmed_s =
            probe::confirm_subscriptions(target, &spec.user_ids, &board.probes, wait)
                .await?
                .as_secs_f64();
        setup.server_count = http::server_connections(target).await?;
        return Ok((opened.items, setup));
    }
    setup.server_count = http::server_connections(target)
        .await
        .context("server not reachable (/health)")?;
    Ok((Vec::new(), setup))
}

/// Integrity totals over every receiving connection.
#[derive(Debug, Default)]
struct Check {
    delivered: u64,
    loss: u64,
    duplicates: u64,
    misrouted: u64,
    invalid: u64,
    closed_early: Vec<String>,
    panics: u64,
}

/// Collects the receivers and checks that each got each of `events` events exactly once.
async fn check_receivers(receivers: Vec<JoinHandle<Received>>, events: u64) -> Check {
    let mut check = Check::default();
    for receiver in receivers {
        let Ok(received) = receiver.await else {
            check.panics += 1;
            continue;
        };
        let got = (0..events)
            .filter(|&seq| received.seen.contains(seq))
            .count() as u64;
        check.delivered += got;
        check.loss += events - got;
        check.duplicates += received.duplicates;
        check.misrouted += received.misrouted;
        check.invalid += received.invalid;
        check.closed_early.extend(received.closed_early);
    }
    check
}

/// The server's memory over the run (all `None` without `--server-pid`).
#[derive(Debug, Default)]
struct Memory {
    idle: Option<u64>,
    peak: Option<PeakRss>,
    settled: Option<u64>,
}

impl Memory {
    /// The `server_rss` section: idle, peak and settled RSS, and the growth over idle, in MiB.
    fn to_json(&self) -> serde_json::Value {
        let peak = self
            .peak
            .map(|peak| peak.bytes.max(self.settled.unwrap_or(0)));
        let change = |after: Option<u64>| self.idle.zip(after).map(|(a, b)| sys::mib_change(a, b));
        json!({
            "idle_mib": self.idle.map(sys::mib),
            "peak_mib": peak.map(sys::mib),
            "settle_mib": self.settled.map(sys::mib),
            "peak_minus_idle_mib": change(peak),
            "settle_minus_idle_mib": change(self.settled),
            "samples": self.peak.map(|peak| peak.samples),
        })
    }
}

/// The whole run: set up, idle RSS, events, delivery, settle, checks, report.
async fn measure(target: Target, spec: PayloadSpec) -> Result<Report> {
    let users = spec.user_ids.len() as u64;
    let events = spec.run.count;
    let board = Arc::new(Board::new(events, users));
    let cancel = CancellationToken::new();
    // The receivers stop however this run ends (an error, or the time limit).
    let _stop_receivers = cancel.clone().drop_guard();
    let (receivers, setup) = set_up(&target, &spec, &board, &cancel).await?;

    tokio::time::sleep(super::SETTLE).await;
    let pid = spec.server_pid;
    let mut memory = Memory {
        idle: pid.map(sys::proc_rss_bytes).transpose()?,
        ..Memory::default()
    };
    let limit = Duration::from_secs(spec.run.timeout);
    let sampler = pid
        .map(|pid| RssPeak::start(pid, RSS_INTERVAL, limit))
        .transpose()
        .context("starting the RSS sampler thread")?;
    eprintln!(
        "loadgen: {events} event(s) of {} B to {users} user(s) via {} at {}/s",
        spec.payload_bytes,
        spec.addressing.path(),
        spec.run.rate
    );
    let cpu_start = CpuSnapshot::take(pid);
    let sent = publish_all(&target, &spec, &board).await?;
    if spec.online {
        wait_for_frames(&board, users * events, Instant::now() + limit).await;
    }
    let cpu = cpu_start.until(&CpuSnapshot::take(pid));
    tokio::time::sleep(Duration::from_secs(spec.run.settle_seconds)).await;
    memory.settled = pid.map(sys::proc_rss_bytes).transpose()?;
    memory.peak = sampler.map(RssPeak::finish);
    let cpu_with_settle = cpu_start.until(&CpuSnapshot::take(pid));
    cancel.cancel();
    let check = check_receivers(receivers, if spec.online { events } else { 0 }).await;

    let mut report = Report::new(spec.scenario);
    report.set("target", target.kind.name());
    report.set(
        "config",
        json!({
            "users": users,
            "online": spec.online,
            "endpoint": spec.addressing.path(),
            "payload_bytes": spec.payload_bytes,
            "count": events,
            "rate_per_s": spec.run.rate,
            "settle_s": spec.run.settle_seconds,
        }),
    );
    report.set(
        "connections",
        json!({
            "opened": if spec.online { users } else { 0 },
            "handshake_retries": setup.handshake_retries,
            "open_s": round3(setup.open_s),
            "subscriptions_confirmed_s": round3(setup.confirmed_s),
            "server_count": setup.server_count,
            "closed_early": check.closed_early.len(),
        }),
    );
    set_timings(&mut report, &spec, &sent, &board);
    report.set(
        "expected_frames",
        if spec.online { users * events } else { 0 },
    );
    report.set("delivered_frames", check.delivered);
    report.set("loss", check.loss);
    report.set("duplicates", check.duplicates);
    report.set("misrouted", check.misrouted);
    report.set("invalid_frames", check.invalid);
    report.set("latency_ms", board.latency.summary_ms());
    report.set("server_rss", memory.to_json());
    report.set_cpu_per(&cpu, events as f64, "event");
    report.set(
        "server_cpu_s_with_settle",
        cpu_with_settle.server_s.map(round3),
    );
    report.fail_if_nonzero("loss", check.loss);
    report.fail_if_nonzero("duplicates", check.duplicates);
    report.fail_if_nonzero("misrouted", check.misrouted);
    report.fail_if_nonzero("invalid frames", check.invalid);
    report.fail_if_nonzero("receiver task panics", check.panics);
    warn(&mut report, &spec, &sent, &setup, &check);
    Ok(report)
}

/// Adds what the replies said and, per event, the time to its reply and to its first and last
/// frame (median and max over the events, ms from the start of the POST).
fn set_timings(report: &mut Report, spec: &PayloadSpec, sent: &[Sent], board: &Board) {
    let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e6;
    let request: Vec<f64> = sent.iter().map(|s| ms(s.sent_ns, s.reply_ns)).collect();
    let arrivals: Vec<(u64, (u64, u64))> = sent
        .iter()
        .enumerate()
        .filter_map(|(seq, s)| board.arrivals(seq).map(|arrival| (s.sent_ns, arrival)))
        .collect();
    let first: Vec<f64> = arrivals.iter().map(|&(at, (f, _))| ms(at, f)).collect();
    let last: Vec<f64> = arrivals.iter().map(|&(at, (_, l))| ms(at, l)).collect();
    let stored: u64 = sent
        .iter()
        .flat_map(|s| &s.reply.results)
        .map(|result| u64::from(result.stored))
        .sum();
    let users: u64 = sent.iter().filter_map(|s| s.reply.users).sum();
    let (users, stored) = match spec.addressing {
        Addressing::Broadcast => (Some(users), None),
        Addressing::UserIds => (None, Some(stored)),
    };
    report.set(
        "replies",
        json!({
            "requests": sent.len(),
            "delivered": sent.iter().map(|s| s.reply.delivered).sum::<u64>(),
            "users": users,
            "stored": stored,
        }),
    );
    report.set("request_ms", median_max(&request));
    report.set("to_first_frame_ms", median_max(&first));
    report.set("to_last_frame_ms", median_max(&last));
}

/// Warnings: the server counting other connections (a broadcast reaches them too), users meant
/// to be offline that were reached, connections the server closed.
fn warn(report: &mut Report, spec: &PayloadSpec, sent: &[Sent], setup: &Setup, check: &Check) {
    let users = spec.user_ids.len() as u64;
    if spec.online && setup.server_count > users {
        report.warnings.push(format!(
            "the server counted {} connections for {users} user(s): other clients are connected \
             (a broadcast reaches them too; the memory figures include them)",
            setup.server_count
        ));
    }
    let delivered: u64 = sent.iter().map(|s| s.reply.delivered).sum();
    if !spec.online && delivered > 0 {
        report.warnings.push(format!(
            "{delivered} delivery(ies) reached a connection although the users were meant to be \
             offline"
        ));
    }
    if let Some(reason) = check.closed_early.first() {
        report.warnings.push(format!(
            "{} connection(s) were closed by the server during the run (first: {reason})",
            check.closed_early.len()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_end_with_the_data_object() {
        let ids = ["a".to_owned(), "b".to_owned()];
        let mut body = Addressing::UserIds.body_prefix(&ids);
        write_data(&mut body, 3, 7, 64);
        body.push(b'}');
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(value["user_ids"], json!(["a", "b"]));
        assert_eq!(value["data"]["seq"], 3);
        let mut body = Addressing::Broadcast.body_prefix(&ids);
        write_data(&mut body, 0, 0, 16);
        body.push(b'}');
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(value["data"]["seq"], 0);
    }

    #[test]
    fn frames_are_checked_once_per_event() {
        let board = Board::new(2, 1);
        let mut received = Received::default();
        let mut samples = LocalSamples::default();
        let frame = |user_id, seq| Frame {
            user_id,
            seq,
            sent_ns: 0,
        };
        received.event(&frame("u", 1), "u", &board, &mut samples);
        received.event(&frame("u", 1), "u", &board, &mut samples);
        received.event(&frame("v", 0), "u", &board, &mut samples);
        received.event(&frame("u", 2), "u", &board, &mut samples);
        assert_eq!(
            (received.duplicates, received.misrouted, received.invalid),
            (1, 1, 1)
        );
        assert!(received.seen.contains(1) && !received.seen.contains(0));
        assert_eq!(board.frames.load(Ordering::Relaxed), 1);
        assert!(board.arrivals(0).is_none());
        assert!(board.arrivals(1).is_some());
    }
}
