//! HTTP publishers: each owns one keep-alive connection and POSTs pushes (single or batch),
//! closed-loop or on a fixed open-loop schedule, recording what the server acknowledged.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use crate::http::HttpConn;
use crate::stats::{AckTable, LocalSamples, SharedHistogram, new_histogram};
use crate::target::{Ack, Item, Target};

/// How long after the window open-loop sends already due may still start.
pub const LATE_ALLOWANCE: Duration = Duration::from_secs(1);

/// What every publisher of one run does.
#[derive(Debug)]
pub struct PublishPlan {
    /// The server.
    pub target: Target,
    /// User ids; message `seq` goes to `user_ids[seq % len]`.
    pub user_ids: Vec<String>,
    /// Messages per request: 1 uses the single-push endpoint, more use the batch endpoint.
    pub per_request: u64,
    /// Deliveries to expect for a message the server accepted without a count (the number of
    /// connections each user has).
    pub conns_per_user: u64,
    /// Size of each message's `data` object in bytes (padded with `x`).
    pub payload_bytes: usize,
    /// Ask for acknowledgement: `"ack": true` in each single push (ours only).
    pub ack: bool,
    /// Open-loop: the shared queue of scheduled send times fed by a [`spawn_pacer`] thread;
    /// `None` for closed-loop.
    pub tickets: Option<Tickets>,
    /// The instant `sent_ns` is measured from (shared with the receivers).
    pub start: Instant,
    /// When the send window closes: no request starts after it.
    pub deadline: Instant,
}

/// Scheduled send times, taken by whichever publisher is free first.
pub type Tickets = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Instant>>>;

/// Starts the open-loop pacer: an OS thread (finer sleeps than tokio's 1 ms timer) that emits
/// one ticket per `interval` from `first` until `deadline`, each carrying its scheduled time.
/// Publishers measure latency from that time, so a slow server cannot hide queueing delay.
/// The thread returns how late (µs) it emitted each ticket.
pub fn spawn_pacer(
    first: Instant,
    interval: Duration,
    deadline: Instant,
) -> std::io::Result<(Tickets, std::thread::JoinHandle<Histogram<u64>>)> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let interval_ns = u64::try_from(interval.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    let thread = std::thread::Builder::new()
        .name("loadgen-pacer".into())
        .spawn(move || {
            let mut lag = new_histogram();
            for k in 0u64.. {
                let due = first + Duration::from_nanos(interval_ns.saturating_mul(k));
                if due >= deadline {
                    break;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let late_us = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
                lag.saturating_record(late_us.max(1));
                if sender.send(due).is_err() {
                    break;
                }
            }
            lag
        })?;
    Ok((Arc::new(tokio::sync::Mutex::new(receiver)), thread))
}

/// State shared by all publishers of one run.
#[derive(Debug)]
pub struct PublishShared {
    /// The next unused message sequence number.
    pub next_seq: AtomicU64,
    /// Deliveries the server acknowledged, per sequence number.
    pub acks: AckTable,
    /// Request round-trip (µs); open-loop measures from the scheduled send time.
    pub rtt: SharedHistogram,
}

/// What one publisher did.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// HTTP requests that got a response.
    pub requests: u64,
    /// Messages in requests that were attempted.
    pub messages: u64,
    /// Per-message outcome counts: `success` (delivered), `partial` (no connection), `accepted`
    /// (no delivery count given), `http_<code>`, `transport_error`, `bad_response`, …
    pub responses: BTreeMap<String, u64>,
    /// Messages the server acknowledged with `delivered >= 1` or accepted without a count.
    pub acked_messages: u64,
    /// Connections re-opened after a failure.
    pub reconnects: u64,
    /// Open-loop sends still due when the window closed (the publisher fell behind).
    pub unsent_behind_schedule: u64,
    /// The sequence-number cap was hit (the run stopped early).
    pub seq_cap_reached: bool,
}

impl PublisherStats {
    fn count(&mut self, key: &str, messages: u64) {
        *self.responses.entry(key.to_owned()).or_default() += messages;
    }

    /// Adds another publisher's counts into this one.
    pub fn merge(&mut self, other: PublisherStats) {
        self.requests += other.requests;
        self.messages += other.messages;
        for (key, value) in other.responses {
            *self.responses.entry(key).or_default() += value;
        }
        self.acked_messages += other.acked_messages;
        self.reconnects += other.reconnects;
        self.unsent_behind_schedule += other.unsent_behind_schedule;
        self.seq_cap_reached |= other.seq_cap_reached;
    }
}

/// Appends one message's `data` object, `{"seq":…,"sent_ns":…,"pad":"xxx…"}`, padded to
/// `payload_bytes` (or as short as possible).
pub fn write_data(buf: &mut Vec<u8>, seq: u64, sent_ns: u64, payload_bytes: usize) {
    let data_start = buf.len();
    // Writing into a Vec cannot fail.
    let _ = write!(buf, "{{\"seq\":{seq},\"sent_ns\":{sent_ns},\"pad\":\"");
    let closing = b"\"}";
    let used = buf.len() - data_start + closing.len();
    buf.resize(buf.len() + payload_bytes.saturating_sub(used), b'x');
    buf.extend_from_slice(closing);
}

/// Runs one publisher until the window closes (or, open-loop, the tickets run out) or the
/// sequence cap is hit.
pub async fn run_publisher(
    plan: Arc<PublishPlan>,
    shared: Arc<PublishShared>,
    mut conn: Option<HttpConn>,
) -> PublisherStats {
    let mut stats = PublisherStats::default();
    let mut rtt = LocalSamples::default();
    let users = plan.user_ids.len().max(1) as u64;
    let per_request = plan.per_request.max(1);
    let capacity = plan.payload_bytes.saturating_add(64) * per_request as usize;
    let mut data = Vec::with_capacity(capacity);
    let mut ends = Vec::with_capacity(per_request as usize);
    let mut body = Vec::with_capacity(capacity * 2);
    for k in 0u64.. {
        let scheduled = match &plan.tickets {
            Some(tickets) => {
                let ticket = tokio::select! {
                    ticket = async { tickets.lock().await.recv().await } => ticket,
                    () = tokio::time::sleep_until((plan.deadline + LATE_ALLOWANCE).into()) => None,
                };
                let Some(due) = ticket else { break };
                if Instant::now() >= plan.deadline + LATE_ALLOWANCE {
                    // Due inside the window but no publisher got to it in time.
                    stats.unsent_behind_schedule += per_request;
                    continue;
                }
                due
            }
            None => {
                let now = Instant::now();
                if now >= plan.deadline {
                    break;
                }
                now
            }
        };
        let first_seq = shared.next_seq.fetch_add(per_request, Ordering::Relaxed);
        if first_seq + per_request > shared.acks.capacity() {
            stats.seq_cap_reached = true;
            break;
        }
        let sent_ns = u64::try_from(scheduled.duration_since(plan.start).as_nanos()).unwrap_or(0);
        data.clear();
        ends.clear();
        for seq in first_seq..first_seq + per_request {
            write_data(&mut data, seq, sent_ns, plan.payload_bytes);
            ends.push(data.len());
        }
        // The data objects are ASCII, written just above.
        let data_text = std::str::from_utf8(&data).unwrap_or_default();
        let items: Vec<Item<'_>> = (first_seq..first_seq + per_request)
            .zip(&ends)
            .scan(0, |begin, (seq, &end)| {
                let item = Item {
                    user_id: &plan.user_ids[(seq % users) as usize],
                    data: data_text.get(*begin..end).unwrap_or_default(),
                };
                *begin = end;
                Some(item)
            })
            .collect();
        body.clear();
        let path = plan.target.protocol.publish(&items, &mut body);
        if plan.ack {
            // A single push to ours is one JSON object: the field goes first.
            body.splice(1..1, *b"\"ack\":true,");
        }
        stats.messages += per_request;

        let live = match conn.take() {
            Some(open) if open.is_open() => Some(open),
            _ => {
                stats.reconnects += u64::from(k > 0);
                HttpConn::connect(&plan.target.api).await.ok()
            }
        };
        let Some(mut live) = live else {
            stats.count("connect_error", per_request);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        match live.post_json(&path, Bytes::copy_from_slice(&body)).await {
            Ok((status, reply)) => {
                stats.requests += 1;
                let rtt_us = scheduled.elapsed().as_micros();
                rtt.record(u64::try_from(rtt_us).unwrap_or(u64::MAX), &shared.rtt);
                if status.is_success() {
                    record_reply(&plan, &reply, first_seq, &shared.acks, &mut stats);
                } else {
                    stats.count(&format!("http_{}", status.as_u16()), per_request);
                }
                conn = Some(live);
            }
            Err(_) => stats.count("transport_error", per_request),
        }
    }
    rtt.flush(&shared.rtt);
    stats
}

/// Parses a successful reply and records per-message acknowledgements.
fn record_reply(
    plan: &PublishPlan,
    reply: &[u8],
    first_seq: u64,
    acks: &AckTable,
    stats: &mut PublisherStats,
) {
    let per_request = plan.per_request.max(1);
    let Some(outcomes) = plan
        .target
        .protocol
        .parse_reply(reply, per_request as usize)
    else {
        stats.count("bad_response", per_request);
        return;
    };
    for (seq, ack) in (first_seq..).zip(outcomes) {
        let delivered = match ack {
            Ack::Delivered(0) => {
                stats.count("partial", 1);
                continue;
            }
            Ack::Delivered(count) => {
                stats.count("success", 1);
                count
            }
            Ack::Accepted => {
                stats.count("accepted", 1);
                plan.conns_per_user
            }
        };
        acks.record(seq, delivered);
        stats.acked_messages += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_data_has_the_requested_size() {
        let mut buf = Vec::new();
        write_data(&mut buf, 12, 3456, 256);
        assert_eq!(buf.len(), 256);
        let value: serde_json::Value = serde_json::from_slice(&buf).expect("json");
        assert_eq!(value["seq"], 12);
        assert_eq!(value["sent_ns"], 3456);
        buf.clear();
        write_data(&mut buf, 1, 1, 0);
        assert!(serde_json::from_slice::<serde_json::Value>(&buf).is_ok());
    }
}
