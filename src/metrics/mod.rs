//! Counters for what the server has done since it started, and the `/metrics` JSON view of them.
//!
//! Every counter is a relaxed atomic: recording costs one uncontended atomic add on the hot path
//! and never takes a lock. Gauges that must be exact at the moment they are read (connections,
//! users online) live in the hub, which owns the registry they count; the snapshot reads both.
//! No counter is keyed by user, so memory here is fixed whatever the traffic.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

use crate::history::ResyncReason;
pub mod http;

use crate::hub::{Delivery, DisconnectReason, Resumed, Transport};

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
    const ALL: [Self; 8] = [
        Self::ServerFull,
        Self::ShuttingDown,
        Self::UserLimit,
        Self::BadRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::RateLimited,
        Self::BrokerUnavailable,
    ];

    fn label(self) -> &'static str {
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
    const ALL: [Self; 6] = [
        Self::Invalid,
        Self::TooLarge,
        Self::UnsupportedMediaType,
        Self::Unavailable,
        Self::Unauthorized,
        Self::RateLimited,
    ];

    fn label(self) -> &'static str {
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

/// The server's counters.
#[derive(Debug, Default)]
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
    /// Event copies a connection could not take (slow consumer or closing).
    events_failed: AtomicU64,
    /// Events for users with no connection on this node.
    events_offline: AtomicU64,
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
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
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
            bump(&self.events_failed, delivery.failed as u64);
        }
        if delivery.delivered + delivery.failed == 0 {
            bump(&self.events_offline, 1);
        }
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

    /// The `/metrics` JSON: the seed's keys first, then every counter.
    pub fn snapshot(&self, gauges: &Gauges) -> Value {
        let labelled = |labels: &mut dyn Iterator<Item = (&'static str, u64)>| -> Value {
            Value::Object(
                labels
                    .map(|(label, value)| (label.to_owned(), json!(value)))
                    .collect::<Map<_, _>>(),
            )
        };
        json!({
            "active_connections": gauges.connections.iter().sum::<usize>(),
            "service": crate::SERVICE_NAME,
            "connections_by_transport": labelled(&mut Transport::ALL
                .iter()
                .map(|transport| (transport.label(), gauges.connections[*transport as usize] as u64))),
            "users_online": gauges.users_online,
            "uptime_seconds": gauges.uptime_seconds,
            "connections_opened_total": read(&self.connections_opened),
            "connections_closed_total": labelled(&mut DisconnectReason::ALL
                .iter()
                .map(|reason| (reason.label(), read(&self.connections_closed[reason.index()])))),
            "connections_refused_total": labelled(&mut Refusal::ALL
                .iter()
                .map(|refusal| (refusal.label(), read(&self.connections_refused[*refusal as usize])))),
            "events_accepted_total": read(&self.events_accepted),
            "push_requests_rejected_total": labelled(&mut Rejection::ALL
                .iter()
                .map(|rejection| (rejection.label(), read(&self.requests_rejected[*rejection as usize])))),
            "events_delivered_total": read(&self.events_delivered),
            "events_failed_total": read(&self.events_failed),
            "events_offline_total": read(&self.events_offline),
            "client_messages_total": read(&self.client_messages),
            "duplicate_pushes_total": read(&self.duplicate_pushes),
            "history_users": gauges.history_users,
            "history_events": gauges.history_events,
            "resumes_replayed_total": read(&self.resumes_replayed),
            "events_replayed_total": read(&self.events_replayed),
            "resyncs_total": labelled(&mut ResyncReason::ALL
                .iter()
                .map(|reason| (reason.label(), read(&self.resyncs[*reason as usize])))),
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
    }
}
