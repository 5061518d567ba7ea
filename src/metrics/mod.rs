//! Counters for what the server has done since it started, and their two views: the `/metrics`
//! JSON and the Prometheus text exposition (`prometheus`).
//!
//! Every counter is a relaxed atomic in a fixed array indexed by its reason: recording costs one
//! atomic add on the hot path, never a lock or a map lookup. The two histograms (batch sizes,
//! push-to-socket-write latency) are lock-free too ([`histogram`]). Gauges that must be exact at
//! the moment they are read (connections, users online, history size) live with their owners (the
//! hub, the broker); a snapshot reads both. Both views are rendered from one [`Counts`] read, so
//! they never disagree. No counter is keyed by user, so memory here is fixed whatever the traffic,
//! and no label carries a user id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{Map, Value, json};

use crate::history::ResyncReason;
use crate::hub::{Delivery, DisconnectReason, Outgoing, Resumed, Transport};

pub mod histogram;
pub mod http;
pub mod prometheus;

use histogram::{AtomicHistogram, HistogramSnapshot};

/// Why a WebSocket connection attempt was turned away before it was registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `MAX_CONNECTIONS` reached (503 before the upgrade).
    ServerFull,
    /// The server is shutting down (503 before the upgrade).
    ShuttingDown,
    /// `MAX_CONNECTIONS_PER_USER` reached with the `reject` policy (close 1008 after the upgrade).
    UserLimit,
    /// Missing or invalid `user_id`, or not a WebSocket handshake (400).
    BadRequest,
    /// Missing or invalid token (401).
    Unauthorized,
    /// An origin not in `CORS_ORIGINS`, or a `user_id` other than the token's (403).
    Forbidden,
    /// Over `CONNECT_RATE_PER_IP` (429).
    RateLimited,
    /// The cluster's broker (Redis) is unreachable (503 before the upgrade).
    BrokerUnavailable,
}

impl Refusal {
    /// Every refusal, in declaration order.
    pub const ALL: [Self; 8] = [
        Self::ServerFull,
        Self::ShuttingDown,
        Self::UserLimit,
        Self::BadRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::RateLimited,
        Self::BrokerUnavailable,
    ];

    /// A stable snake_case name, used as a metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::ServerFull => "server_full",
            Self::ShuttingDown => "shutting_down",
            Self::UserLimit => "user_limit",
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::BrokerUnavailable => "broker_unavailable",
        }
    }
}

/// Why a push request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The body failed validation (422) or was not JSON.
    Invalid,
    /// The body was over `MAX_BODY_BYTES` (413).
    TooLarge,
    /// The body was declared as something other than JSON (415).
    UnsupportedMediaType,
    /// The broker could not route it (503); only a networked (cluster) broker can fail so.
    Unavailable,
    /// No API key, or a wrong one (401).
    Unauthorized,
    /// Over `PUSH_RATE` (429).
    RateLimited,
}

impl Rejection {
    /// Every rejection, in declaration order.
    pub const ALL: [Self; 6] = [
        Self::Invalid,
        Self::TooLarge,
        Self::UnsupportedMediaType,
        Self::Unavailable,
        Self::Unauthorized,
        Self::RateLimited,
    ];

    /// A stable snake_case name, used as a metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unavailable => "unavailable",
            Self::Unauthorized => "unauthorized",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// Why an event did not reach a client's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The user had no connection on this node (counted once per event; with history on, the event
    /// is still stored for a client that resumes).
    Offline,
    /// A connection's queue could not take the event: it was full (the connection is then closed
    /// as a slow consumer) or the connection was already closing. Counted per connection.
    Failed,
    /// Still queued, never written, when its connection was closed as a slow consumer.
    SlowConsumer,
    /// Still queued, never written, when its connection closed for another reason (client gone,
    /// token expired, replaced, disconnected by an administrator, ...).
    Closed,
}

impl DropReason {
    /// Every reason, in declaration order.
    pub const ALL: [Self; 4] = [
        Self::Offline,
        Self::Failed,
        Self::SlowConsumer,
        Self::Closed,
    ];

    /// A stable snake_case name, used as a metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::Failed => "failed",
            Self::SlowConsumer => "slow_consumer",
            Self::Closed => "closed",
        }
    }
}

/// Upper bounds of the batch size buckets (items per `POST /sse/push/batch`).
const BATCH_SIZE_BOUNDS: &[u64] = &[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];

/// Upper bounds of the delivery latency buckets, in microseconds (100 µs to 10 s).
const LATENCY_BOUNDS_MICROS: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// The server's counters.
#[derive(Debug)]
pub struct Metrics {
    connections_opened: AtomicU64,
    connections_closed: [AtomicU64; DisconnectReason::ALL.len()],
    connections_refused: [AtomicU64; Refusal::ALL.len()],
    /// Events accepted from upstreams (a batch counts each item; duplicates are not counted).
    events_accepted: AtomicU64,
    /// Push requests refused, by reason.
    requests_rejected: [AtomicU64; Rejection::ALL.len()],
    /// Event copies handed to connection queues.
    events_delivered: AtomicU64,
    /// Events that did not reach a socket, by reason.
    events_dropped: [AtomicU64; DropReason::ALL.len()],
    /// Text frames received from clients (each answered with an ack).
    client_messages: AtomicU64,
    /// Pushes that repeated an `event_id` still in the user's history (not delivered again).
    duplicate_pushes: AtomicU64,
    /// Connections that resumed and were replayed what they missed (possibly nothing).
    resumes_replayed: AtomicU64,
    /// Events replayed to resuming connections.
    events_replayed: AtomicU64,
    /// Connections that could not resume and were sent a resync notice, by reason.
    resyncs: [AtomicU64; ResyncReason::ALL.len()],
    /// Bytes written to clients, by transport.
    bytes_sent: [AtomicU64; Transport::ALL.len()],
    /// Items per batch push request.
    batch_size: AtomicHistogram,
    /// From an event's acceptance on this node to the write of its frame to a socket, in µs.
    delivery_latency: AtomicHistogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections_opened: AtomicU64::default(),
            connections_closed: Default::default(),
            connections_refused: Default::default(),
            events_accepted: AtomicU64::default(),
            requests_rejected: Default::default(),
            events_delivered: AtomicU64::default(),
            events_dropped: Default::default(),
            client_messages: AtomicU64::default(),
            duplicate_pushes: AtomicU64::default(),
            resumes_replayed: AtomicU64::default(),
            events_replayed: AtomicU64::default(),
            resyncs: Default::default(),
            bytes_sent: Default::default(),
            batch_size: AtomicHistogram::new(BATCH_SIZE_BOUNDS, 1.0),
            delivery_latency: AtomicHistogram::new(LATENCY_BOUNDS_MICROS, 1e6),
        }
    }
}

/// Point-in-time values the counters do not hold, read from their owners for a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    /// Connections by transport, in [`Transport::ALL`] order.
    pub connections: [usize; Transport::ALL.len()],
    /// Users with at least one connection.
    pub users_online: usize,
    /// Users with a history stream.
    pub history_users: usize,
    /// Events held in history.
    pub history_events: usize,
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// The connection limit this node enforces (`MAX_CONNECTIONS`, or the derived one).
    pub max_connections: usize,
}

/// Every counter and histogram, read once: what both views render.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    /// Connections registered.
    pub connections_opened: u64,
    /// Connections ended, in [`DisconnectReason::ALL`] order.
    pub connections_closed: [u64; DisconnectReason::ALL.len()],
    /// Connection attempts turned away, in `Refusal` declaration order.
    pub connections_refused: [u64; Refusal::ALL.len()],
    /// Events accepted (duplicates excluded).
    pub events_accepted: u64,
    /// Push requests refused, in `Rejection` declaration order.
    pub requests_rejected: [u64; Rejection::ALL.len()],
    /// Event copies handed to connection queues.
    pub events_delivered: u64,
    /// Events that did not reach a socket, in [`DropReason::ALL`] order.
    pub events_dropped: [u64; DropReason::ALL.len()],
    /// Text frames received from clients.
    pub client_messages: u64,
    /// Pushes that repeated a stored `event_id`.
    pub duplicate_pushes: u64,
    /// Connections that resumed with a replay.
    pub resumes_replayed: u64,
    /// Events replayed.
    pub events_replayed: u64,
    /// Resync notices, in [`ResyncReason::ALL`] order.
    pub resyncs: [u64; ResyncReason::ALL.len()],
    /// Bytes written to clients, in [`Transport::ALL`] order.
    pub bytes_sent: [u64; Transport::ALL.len()],
    /// Items per batch request.
    pub batch_size: HistogramSnapshot,
    /// Push-to-socket-write latency, in seconds.
    pub delivery_latency: HistogramSnapshot,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn read_all<const N: usize>(counters: &[AtomicU64; N]) -> [u64; N] {
    std::array::from_fn(|index| read(&counters[index]))
}

impl Metrics {
    /// A connection was registered.
    pub fn connection_opened(&self) {
        bump(&self.connections_opened, 1);
    }

    /// A registered connection ended.
    pub fn connection_closed(&self, reason: DisconnectReason) {
        bump(&self.connections_closed[reason.index()], 1);
    }

    /// A connection attempt was turned away.
    pub fn connection_refused(&self, refusal: Refusal) {
        bump(&self.connections_refused[refusal as usize], 1);
    }

    /// Upstreams' events were accepted for delivery.
    pub fn events_accepted(&self, count: usize) {
        bump(&self.events_accepted, count as u64);
    }

    /// A batch push request of `len` items was accepted (recorded in the batch size histogram).
    pub fn observe_batch(&self, len: usize) {
        self.batch_size.observe(len as u64);
    }

    /// A push request was refused.
    pub fn request_rejected(&self, rejection: Rejection) {
        bump(&self.requests_rejected[rejection as usize], 1);
    }

    /// The outcome of delivering one event on this node.
    pub fn record_delivery(&self, delivery: Delivery) {
        if delivery.delivered > 0 {
            bump(&self.events_delivered, delivery.delivered as u64);
        }
        if delivery.failed > 0 {
            bump(
                &self.events_dropped[DropReason::Failed as usize],
                delivery.failed as u64,
            );
        }
        if delivery.delivered + delivery.failed == 0 {
            bump(&self.events_dropped[DropReason::Offline as usize], 1);
        }
    }

    /// A connection that ended for `reason` left `count` events in its queue, never written.
    pub fn events_unwritten(&self, reason: DisconnectReason, count: usize) {
        if count == 0 {
            return;
        }
        let dropped = match reason {
            DisconnectReason::SlowConsumer => DropReason::SlowConsumer,
            _ => DropReason::Closed,
        };
        bump(&self.events_dropped[dropped as usize], count as u64);
    }

    /// A session wrote `items` to its client's socket, `bytes` bytes in all. Each event accepted
    /// at or after `live_since` (when the session started: earlier ones are replays from
    /// history) is timed from its acceptance to now. One clock read and a few atomic adds per
    /// write, whatever the number of items.
    pub fn record_written(
        &self,
        transport: Transport,
        items: &[Outgoing],
        bytes: usize,
        live_since: Instant,
    ) {
        bump(&self.bytes_sent[transport as usize], bytes as u64);
        let mut tally = self.delivery_latency.tally();
        let mut now = None;
        for item in items {
            if let Outgoing::Event(event) = item
                && event.accepted_at >= live_since
            {
                let now = *now.get_or_insert_with(Instant::now);
                let micros = now.saturating_duration_since(event.accepted_at).as_micros();
                tally.observe(u64::try_from(micros).unwrap_or(u64::MAX));
            }
        }
        tally.commit();
    }

    /// Bytes written to a client outside [`Self::record_written`] (SSE stream openings, keepalive
    /// comments, close events).
    pub fn bytes_sent(&self, transport: Transport, bytes: usize) {
        bump(&self.bytes_sent[transport as usize], bytes as u64);
    }

    /// A client sent a text frame.
    pub fn client_message(&self) {
        bump(&self.client_messages, 1);
    }

    /// A push repeated an `event_id` already in its user's history.
    pub fn duplicate_push(&self) {
        bump(&self.duplicate_pushes, 1);
    }

    /// A connection asked to resume; this is how it went.
    pub fn resumed(&self, resumed: Resumed) {
        match resumed {
            Resumed::Replayed(count) => {
                bump(&self.resumes_replayed, 1);
                bump(&self.events_replayed, count as u64);
            }
            Resumed::Resync(reason) => bump(&self.resyncs[reason as usize], 1),
        }
    }

    /// Every counter and histogram, as of now.
    pub fn counts(&self) -> Counts {
        Counts {
            connections_opened: read(&self.connections_opened),
            connections_closed: read_all(&self.connections_closed),
            connections_refused: read_all(&self.connections_refused),
            events_accepted: read(&self.events_accepted),
            requests_rejected: read_all(&self.requests_rejected),
            events_delivered: read(&self.events_delivered),
            events_dropped: read_all(&self.events_dropped),
            client_messages: read(&self.client_messages),
            duplicate_pushes: read(&self.duplicate_pushes),
            resumes_replayed: read(&self.resumes_replayed),
            events_replayed: read(&self.events_replayed),
            resyncs: read_all(&self.resyncs),
            bytes_sent: read_all(&self.bytes_sent),
            batch_size: self.batch_size.snapshot(),
            delivery_latency: self.delivery_latency.snapshot(),
        }
    }

    /// The `/metrics` JSON: the seed's keys first, then every counter.
    pub fn snapshot(&self, gauges: &Gauges) -> Value {
        self.counts().to_json(gauges)
    }
}

/// A JSON object of `label: value`, in the given order.
fn labelled<T: Copy>(
    labels: impl IntoIterator<Item = T>,
    label: impl Fn(T) -> &'static str,
    values: &[u64],
) -> Value {
    Value::Object(
        labels
            .into_iter()
            .zip(values)
            .map(|(key, value)| (label(key).to_owned(), json!(value)))
            .collect::<Map<_, _>>(),
    )
}

impl Counts {
    /// The `/metrics` JSON: the seed's keys first (`active_connections`, `service`), then every
    /// counter. Keys are only ever added, so that existing readers (the console) keep working.
    pub fn to_json(&self, gauges: &Gauges) -> Value {
        let dropped = |reason: DropReason| self.events_dropped[reason as usize];
        let histogram = |histogram: &HistogramSnapshot| json!({ "count": histogram.count, "sum": histogram.sum });
        let connections = gauges.connections.map(|count| count as u64);
        json!({
            "active_connections": gauges.connections.iter().sum::<usize>(),
            "service": crate::SERVICE_NAME,
            "connections_by_transport": labelled(Transport::ALL, Transport::label, &connections),
            "users_online": gauges.users_online,
            "max_connections": gauges.max_connections,
            "uptime_seconds": gauges.uptime_seconds,
            "connections_opened_total": self.connections_opened,
            "connections_closed_total":
                labelled(DisconnectReason::ALL, DisconnectReason::label, &self.connections_closed),
            "connections_refused_total":
                labelled(Refusal::ALL, Refusal::label, &self.connections_refused),
            "events_accepted_total": self.events_accepted,
            "push_requests_rejected_total":
                labelled(Rejection::ALL, Rejection::label, &self.requests_rejected),
            "events_delivered_total": self.events_delivered,
            "events_failed_total": dropped(DropReason::Failed),
            "events_offline_total": dropped(DropReason::Offline),
            "events_dropped_total": labelled(DropReason::ALL, DropReason::label, &self.events_dropped),
            "client_messages_total": self.client_messages,
            "duplicate_pushes_total": self.duplicate_pushes,
            "history_users": gauges.history_users,
            "history_events": gauges.history_events,
            "resumes_replayed_total": self.resumes_replayed,
            "events_replayed_total": self.events_replayed,
            "resyncs_total": labelled(ResyncReason::ALL, ResyncReason::label, &self.resyncs),
            "bytes_sent_total": labelled(Transport::ALL, Transport::label, &self.bytes_sent),
            "batch_size": histogram(&self.batch_size),
            "delivery_latency_seconds": histogram(&self.delivery_latency),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_starts_with_the_seed_keys_and_counts() {
        let metrics = Metrics::default();
        metrics.connection_opened();
        metrics.connection_closed(DisconnectReason::SlowConsumer);
        metrics.record_delivery(Delivery {
            delivered: 2,
            failed: 1,
        });
        metrics.record_delivery(Delivery::default());
        metrics.request_rejected(Rejection::TooLarge);
        metrics.resumed(Resumed::Replayed(4));
        metrics.resumed(Resumed::Resync(ResyncReason::Expired));
        let snapshot = metrics.snapshot(&Gauges {
            connections: [2, 1],
            users_online: 2,
            history_users: 5,
            history_events: 7,
            uptime_seconds: 1.5,
            max_connections: 10,
        });
        let keys: Vec<&String> = snapshot.as_object().unwrap().keys().take(2).collect();
        assert_eq!(keys, ["active_connections", "service"]);
        assert_eq!(snapshot["active_connections"], 3);
        assert_eq!(snapshot["connections_closed_total"]["slow_consumer"], 1);
        assert_eq!(snapshot["events_delivered_total"], 2);
        assert_eq!(snapshot["events_failed_total"], 1);
        assert_eq!(snapshot["events_offline_total"], 1);
        assert_eq!(snapshot["push_requests_rejected_total"]["too_large"], 1);
        assert_eq!(snapshot["connections_by_transport"]["sse"], 1);
        assert_eq!(snapshot["events_replayed_total"], 4);
        assert_eq!(snapshot["resyncs_total"]["expired"], 1);
        assert_eq!(snapshot["history_events"], 7);
        assert_eq!(snapshot["events_dropped_total"]["failed"], 1);
        assert_eq!(snapshot["events_dropped_total"]["offline"], 1);
    }

    #[test]
    fn unwritten_events_count_as_dropped_by_how_their_connection_ended() {
        let metrics = Metrics::default();
        metrics.events_unwritten(DisconnectReason::SlowConsumer, 3);
        metrics.events_unwritten(DisconnectReason::ClientClosed, 2);
        metrics.events_unwritten(DisconnectReason::PingTimeout, 0);
        let counts = metrics.counts();
        assert_eq!(counts.events_dropped[DropReason::SlowConsumer as usize], 3);
        assert_eq!(counts.events_dropped[DropReason::Closed as usize], 2);
    }

    #[test]
    fn writes_count_bytes_and_time_live_events_only() {
        use std::sync::Arc;
        use std::time::Duration;

        use crate::protocol::{Frame, Published};

        let event = |accepted_at| {
            Outgoing::Event(Arc::new(Published {
                event_id: Arc::from("e"),
                event_type: Arc::from("message"),
                frame: Frame::from("{}".to_owned()),
                accepted_at,
            }))
        };
        let metrics = Metrics::default();
        let since = Instant::now();
        let replayed = since.checked_sub(Duration::from_secs(60)).unwrap_or(since);
        let items = [
            event(replayed),
            event(Instant::now()),
            Outgoing::Reply(Frame::from("{}".to_owned())),
            event(Instant::now()),
        ];
        metrics.record_written(Transport::Sse, &items, 100, since);
        metrics.bytes_sent(Transport::Sse, 5);
        let counts = metrics.counts();
        assert_eq!(counts.bytes_sent[Transport::Sse as usize], 105);
        assert_eq!(counts.bytes_sent[Transport::WebSocket as usize], 0);
        let expected = if replayed < since { 2 } else { 3 };
        assert_eq!(counts.delivery_latency.count, expected);
        assert!(counts.delivery_latency.sum < 1.0);
    }

    #[test]
    fn batches_are_observed() {
        let metrics = Metrics::default();
        metrics.observe_batch(1);
        metrics.observe_batch(250);
        let batch = metrics.counts().batch_size;
        assert_eq!(batch.count, 2);
        assert_eq!(batch.sum, 251.0);
        assert_eq!(batch.buckets[0], (1.0, 1));
    }
}
