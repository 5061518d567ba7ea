//! Counters for what the server has done since it started, and their two views: the `/metrics`
//! JSON and the Prometheus text exposition ([`prometheus`]).
//!
//! Every counter is a relaxed atomic in a fixed array indexed by its reason: recording costs one
//! atomic add on the hot path, never a lock or a map lookup. The two histograms (batch sizes,
//! push-to-socket-write latency) are lock-free too ([`histogram`]). Gauges that must be exact at
//! the moment they are read (connections, users online, history size) live with their owners (the
//! hub, the broker); a snapshot reads both. Both views are rendered from one [`Counts`] read, so
//! they never disagree. No counter is keyed by user, so memory here is fixed whatever the traffic,
//! and no label carries a user id.
//!
//! A leaf of the crate: it knows only the shared vocabulary in [`crate::protocol`]. Callers tell
//! it what happened in those terms; the HTTP endpoints that serve the views live in the API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value, json};
use strum::{EnumCount, VariantArray};

use crate::protocol::{
    Delivery, DisconnectReason, EvictionCause, Label, Resumed, ResyncReason, SlowConsumerCause,
    Transport,
};

pub mod histogram;
pub mod process;
pub mod prometheus;
pub mod requests;

use histogram::{AtomicHistogram, HistogramSnapshot};

/// Why a WebSocket or SSE connection attempt was turned away before it was registered.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumCount, strum::VariantArray, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
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
    /// A token past its `exp` (401; WebSocket close 4001 for a browser).
    TokenExpired,
    /// An origin not in `CORS_ORIGINS`, or a `user_id` other than the token's (403).
    Forbidden,
    /// Over `CONNECT_RATE_PER_IP` (429).
    RateLimited,
    /// The cluster's broker (Redis) is unreachable (503 before the upgrade).
    BrokerUnavailable,
}

/// Why a push request was refused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumCount, strum::VariantArray, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
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
    /// From a browser origin not in `CORS_ORIGINS`, or a publisher key on an administrative
    /// route when `ADMIN_API_KEYS` is set (403).
    Forbidden,
    /// Over `PUSH_RATE` (429).
    RateLimited,
}

/// Why an event did not reach a client's socket.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumCount, strum::VariantArray, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum DropReason {
    /// The user had no connection (counted once per event by the node that accepted it; with
    /// history on, the event is still stored for a client that resumes).
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

/// What a broker reports about itself, for `/metrics` (JSON: the `broker` object) and the
/// Prometheus `broker_*` families.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerReport {
    /// `memory` or `redis`.
    pub kind: &'static str,
    /// This node's name in the cluster (cluster brokers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Whether the broker can route pushes now.
    pub connected: bool,
    /// The link's counters (cluster brokers only; a memory broker has no link to lose).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkCounts>,
}

/// What the webhook sender reports, for `/metrics` (JSON: the `webhooks` object), the
/// Prometheus `webhook_*` families and the console.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebhookReport {
    /// Whether webhooks are on (`WEBHOOK_URL`).
    pub enabled: bool,
    /// Webhooks delivered (answered 2xx).
    pub sent: u64,
    /// Attempts that failed (timeout, connection error, non-2xx); each may be retried.
    pub failed_attempts: u64,
    /// Webhooks given up after `WEBHOOK_MAX_ATTEMPTS`.
    pub given_up: u64,
    /// Webhooks dropped, oldest first, because the queue was full.
    pub dropped: u64,
    /// Webhooks queued or being delivered now.
    pub queued: u64,
    /// Their bytes.
    pub queued_bytes: u64,
    /// Why the last failed attempt failed, if one has.
    pub last_error: Option<String>,
    /// Seconds from queueing to a 2xx answer (Prometheus only).
    #[serde(skip)]
    pub latency: HistogramSnapshot,
}

impl Default for WebhookReport {
    fn default() -> Self {
        Self {
            enabled: false,
            sent: 0,
            failed_attempts: 0,
            given_up: 0,
            dropped: 0,
            queued: 0,
            queued_bytes: 0,
            last_error: None,
            latency: HistogramSnapshot::empty(),
        }
    }
}

/// What the acknowledgement tracker reports, for `/metrics` (JSON: the `acks` object), the
/// Prometheus `ack_*` families and the console.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AckReport {
    /// Events waiting for an acknowledgement on this node.
    pub pending: u64,
    /// Bytes they hold (their frames, counted per entry).
    pub pending_bytes: u64,
    /// Events acknowledged in time.
    pub acked: u64,
    /// Events no connection acknowledged within `ACK_TIMEOUT` (`message.undelivered` sent).
    pub expired: u64,
    /// Events given up early, oldest first, at the bounds (`ACK_PENDING_PER_USER`,
    /// `ACK_PENDING_MAX`, `ACK_PENDING_MAX_BYTES`): reported `message.undelivered` at once.
    pub evicted: u64,
}

/// One Redis shard of a cluster with several (`REDIS_URL` lists them), for `/health` and `/ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardReport {
    /// Its place in `REDIS_URL`, from 1.
    pub shard: usize,
    /// `host:port` of its Redis.
    pub redis: String,
    /// Why it cannot take work now (its users are refused), if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// Counters of a cluster broker's link to its backend (Redis).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinkCounts {
    /// Times the link went down.
    pub outages: u64,
    /// Times it came back.
    pub reconnects: u64,
    /// Command or connection errors.
    pub errors: u64,
    /// Messages received on the subscription.
    pub messages_received: u64,
    /// Messages received that could not be decoded.
    pub malformed_messages: u64,
    /// Catch-ups run for connections after an outage or a gap.
    pub catch_ups: u64,
}

/// The cluster's counts, as this node last saw them (refreshed at each heartbeat).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClusterStats {
    /// This node's name.
    pub node_id: String,
    /// Nodes with a live lease.
    pub nodes: u64,
    /// Connections on those nodes, all transports.
    pub connections: u64,
    /// WebSocket connections on those nodes.
    pub websocket_connections: u64,
    /// SSE connections on those nodes.
    pub sse_connections: u64,
    /// Users with at least one connection somewhere.
    pub users: u64,
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
    connections_closed: [AtomicU64; DisconnectReason::COUNT],
    slow_consumers: [AtomicU64; SlowConsumerCause::COUNT],
    connections_refused: [AtomicU64; Refusal::COUNT],
    /// Events accepted from upstreams (a batch counts each item; duplicates are not counted).
    events_accepted: AtomicU64,
    /// Push requests refused, by reason.
    requests_rejected: [AtomicU64; Rejection::COUNT],
    /// Event copies handed to connection queues.
    events_delivered: AtomicU64,
    /// Events that did not reach a socket, by reason.
    events_dropped: [AtomicU64; DropReason::COUNT],
    /// Text frames received from clients (each answered with an ack).
    client_messages: AtomicU64,
    /// Event ids acknowledged by clients on this node.
    client_acks: AtomicU64,
    /// Pushes that repeated an `event_id` still in the user's history (not delivered again).
    duplicate_pushes: AtomicU64,
    /// Connections that resumed and were replayed what they missed (possibly nothing).
    resumes_replayed: AtomicU64,
    /// Events replayed to resuming connections.
    events_replayed: AtomicU64,
    /// Connections that could not resume and were sent a resync notice, by reason.
    resyncs: [AtomicU64; ResyncReason::COUNT],
    /// Bytes written to clients, by transport.
    bytes_sent: [AtomicU64; Transport::COUNT],
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
            slow_consumers: Default::default(),
            connections_refused: Default::default(),
            events_accepted: AtomicU64::default(),
            requests_rejected: Default::default(),
            events_delivered: AtomicU64::default(),
            events_dropped: Default::default(),
            client_messages: AtomicU64::default(),
            client_acks: AtomicU64::default(),
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
    /// Connections by transport, in [`Transport`] declaration order.
    pub connections: [usize; Transport::COUNT],
    /// Users with at least one connection.
    pub users_online: usize,
    /// Users with a history stream.
    pub history_users: usize,
    /// Events held in history.
    pub history_events: usize,
    /// Bytes of the events held in history (shared payloads once).
    pub history_bytes: usize,
    /// Events evicted from history, in [`EvictionCause`] declaration order.
    pub history_evictions: [u64; EvictionCause::COUNT],
    /// Bytes queued for all connections (shared payloads once).
    pub queued_bytes: usize,
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
    /// Connections ended, in [`DisconnectReason`] declaration order.
    pub connections_closed: [u64; DisconnectReason::COUNT],
    /// Slow-consumer closes, in [`SlowConsumerCause`] declaration order.
    pub slow_consumers: [u64; SlowConsumerCause::COUNT],
    /// Connection attempts turned away, in [`Refusal`] declaration order.
    pub connections_refused: [u64; Refusal::COUNT],
    /// Events accepted (duplicates excluded).
    pub events_accepted: u64,
    /// Push requests refused, in [`Rejection`] declaration order.
    pub requests_rejected: [u64; Rejection::COUNT],
    /// Event copies handed to connection queues.
    pub events_delivered: u64,
    /// Events that did not reach a socket, in [`DropReason`] declaration order.
    pub events_dropped: [u64; DropReason::COUNT],
    /// Text frames received from clients.
    pub client_messages: u64,
    /// Event ids acknowledged by clients on this node.
    pub client_acks: u64,
    /// Pushes that repeated a stored `event_id`.
    pub duplicate_pushes: u64,
    /// Connections that resumed with a replay.
    pub resumes_replayed: u64,
    /// Events replayed.
    pub events_replayed: u64,
    /// Resync notices, in [`ResyncReason`] declaration order.
    pub resyncs: [u64; ResyncReason::COUNT],
    /// Bytes written to clients, in [`Transport`] declaration order.
    pub bytes_sent: [u64; Transport::COUNT],
    /// Items per batch request.
    pub batch_size: HistogramSnapshot,
    /// Push-to-socket-write latency, in seconds.
    pub delivery_latency: HistogramSnapshot,
}

/// Adds `by` to `counter`; adding nothing touches nothing (no shared cache line written).
fn bump(counter: &AtomicU64, by: u64) {
    if by > 0 {
        counter.fetch_add(by, Ordering::Relaxed);
    }
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
        bump(&self.connections_closed[reason as usize], 1);
    }

    /// A connection was asked to close as a slow consumer, for `cause`.
    pub fn slow_consumer(&self, cause: SlowConsumerCause) {
        bump(&self.slow_consumers[cause as usize], 1);
    }

    /// A connection attempt was turned away.
    pub fn connection_refused(&self, refusal: Refusal) {
        bump(&self.connections_refused[refusal as usize], 1);
    }

    /// A batch push request of `len` items was accepted (recorded in the batch size histogram).
    pub fn observe_batch(&self, len: usize) {
        self.batch_size.observe(len as u64);
    }

    /// A push request was refused.
    pub fn request_rejected(&self, rejection: Rejection) {
        bump(&self.requests_rejected[rejection as usize], 1);
    }

    /// Publications were accepted: `new` events (each stored and delivered), `duplicates` that
    /// repeated an `event_id` still in their user's history (not delivered again), and `offline`
    /// new events that found no connection of their user.
    pub fn pushes_published(&self, new: usize, duplicates: usize, offline: usize) {
        bump(&self.events_accepted, new as u64);
        bump(&self.duplicate_pushes, duplicates as u64);
        bump(
            &self.events_dropped[DropReason::Offline as usize],
            offline as u64,
        );
    }

    /// One event was handed to this node's connections of its user: `delivered` queues took it,
    /// `failed` could not.
    pub fn events_handed_over(&self, delivery: Delivery) {
        bump(&self.events_delivered, delivery.delivered as u64);
        bump(
            &self.events_dropped[DropReason::Failed as usize],
            delivery.failed as u64,
        );
    }

    /// A connection that ended for `reason` left `count` events in its queue, never written.
    pub fn events_unwritten(&self, reason: DisconnectReason, count: usize) {
        let dropped = match reason {
            DisconnectReason::SlowConsumer => DropReason::SlowConsumer,
            _ => DropReason::Closed,
        };
        bump(&self.events_dropped[dropped as usize], count as u64);
    }

    /// A session wrote `bytes` to its client's socket, among them live events accepted at
    /// `accepted` (replays and replies are not timed): each is timed from its acceptance to now.
    /// One clock read and a few atomic adds per write, whatever the number of events.
    pub fn record_written(
        &self,
        transport: Transport,
        bytes: usize,
        accepted: impl IntoIterator<Item = Instant>,
    ) {
        bump(&self.bytes_sent[transport as usize], bytes as u64);
        let mut tally = self.delivery_latency.tally();
        let mut now = None;
        for accepted_at in accepted {
            let now = *now.get_or_insert_with(Instant::now);
            let micros = now.saturating_duration_since(accepted_at).as_micros();
            tally.observe(u64::try_from(micros).unwrap_or(u64::MAX));
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

    /// A client acknowledged `count` events.
    pub fn client_acks(&self, count: usize) {
        bump(&self.client_acks, count as u64);
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
            slow_consumers: read_all(&self.slow_consumers),
            connections_refused: read_all(&self.connections_refused),
            events_accepted: read(&self.events_accepted),
            requests_rejected: read_all(&self.requests_rejected),
            events_delivered: read(&self.events_delivered),
            events_dropped: read_all(&self.events_dropped),
            client_messages: read(&self.client_messages),
            client_acks: read(&self.client_acks),
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

/// A JSON object of `label: value` for every variant of `T`, in declaration order.
fn labelled<T: Label + VariantArray>(values: &[u64]) -> Value {
    Value::Object(
        T::VARIANTS
            .iter()
            .zip(values)
            .map(|(key, value)| (key.label().to_owned(), json!(value)))
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
            "connections_by_transport": labelled::<Transport>(&connections),
            "users_online": gauges.users_online,
            "max_connections": gauges.max_connections,
            "uptime_seconds": gauges.uptime_seconds,
            "connections_opened_total": self.connections_opened,
            "connections_closed_total": labelled::<DisconnectReason>(&self.connections_closed),
            "slow_consumer_closes_total": labelled::<SlowConsumerCause>(&self.slow_consumers),
            "connections_refused_total": labelled::<Refusal>(&self.connections_refused),
            "events_accepted_total": self.events_accepted,
            "push_requests_rejected_total": labelled::<Rejection>(&self.requests_rejected),
            "events_delivered_total": self.events_delivered,
            "events_failed_total": dropped(DropReason::Failed),
            "events_offline_total": dropped(DropReason::Offline),
            "events_dropped_total": labelled::<DropReason>(&self.events_dropped),
            "client_messages_total": self.client_messages,
            "client_acks_total": self.client_acks,
            "duplicate_pushes_total": self.duplicate_pushes,
            "history_users": gauges.history_users,
            "history_events": gauges.history_events,
            "history_bytes": gauges.history_bytes,
            "history_evictions_total": labelled::<EvictionCause>(&gauges.history_evictions),
            "queued_bytes": gauges.queued_bytes,
            "resumes_replayed_total": self.resumes_replayed,
            "events_replayed_total": self.events_replayed,
            "resyncs_total": labelled::<ResyncReason>(&self.resyncs),
            "bytes_sent_total": labelled::<Transport>(&self.bytes_sent),
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
        metrics.events_handed_over(Delivery {
            delivered: 2,
            failed: 1,
        });
        metrics.pushes_published(2, 0, 1);
        metrics.request_rejected(Rejection::TooLarge);
        metrics.resumed(Resumed::Replayed(4));
        metrics.resumed(Resumed::Resync(ResyncReason::Expired));
        let snapshot = metrics.snapshot(&Gauges {
            connections: [2, 1],
            users_online: 2,
            history_users: 5,
            history_events: 7,
            history_bytes: 0,
            history_evictions: [0; 4],
            queued_bytes: 0,
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
    fn writes_count_bytes_and_time_the_live_events_given() {
        let metrics = Metrics::default();
        metrics.record_written(Transport::Sse, 100, [Instant::now(), Instant::now()]);
        metrics.record_written(Transport::Sse, 0, []);
        metrics.bytes_sent(Transport::Sse, 5);
        let counts = metrics.counts();
        assert_eq!(counts.bytes_sent[Transport::Sse as usize], 105);
        assert_eq!(counts.bytes_sent[Transport::WebSocket as usize], 0);
        assert_eq!(counts.delivery_latency.count, 2);
        assert!(counts.delivery_latency.sum < 1.0);
    }

    #[test]
    fn every_label_is_snake_case_and_distinct() {
        fn check<T: Label + VariantArray>() {
            let labels: Vec<&str> = T::VARIANTS.iter().map(|v| v.label()).collect();
            let mut unique = labels.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), labels.len(), "{labels:?}");
            for label in labels {
                assert!(
                    label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{label}"
                );
            }
        }
        check::<DisconnectReason>();
        check::<Refusal>();
        check::<Rejection>();
        check::<DropReason>();
        check::<ResyncReason>();
        check::<Transport>();
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
