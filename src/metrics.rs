//! Counters for what the server has done since it started, and the `/metrics` JSON view of them.
//!
//! Every counter is a relaxed atomic: recording costs one uncontended atomic add on the hot path
//! and never takes a lock. Gauges that must be exact at the moment they are read (connections,
//! users online) live in the hub, which owns the registry they count; the snapshot reads both.
//! No counter is keyed by user, so memory here is fixed whatever the traffic.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

use crate::hub::{Delivery, DisconnectReason};

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
}

impl Refusal {
    const ALL: [Self; 4] = [
        Self::ServerFull,
        Self::ShuttingDown,
        Self::UserLimit,
        Self::BadRequest,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::ServerFull => "server_full",
            Self::ShuttingDown => "shutting_down",
            Self::UserLimit => "user_limit",
            Self::BadRequest => "bad_request",
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
}

impl Rejection {
    const ALL: [Self; 4] = [
        Self::Invalid,
        Self::TooLarge,
        Self::UnsupportedMediaType,
        Self::Unavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unavailable => "unavailable",
        }
    }
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    connections_opened: AtomicU64,
    connections_closed: [AtomicU64; DisconnectReason::ALL.len()],
    connections_refused: [AtomicU64; Refusal::ALL.len()],
    /// Events accepted from upstreams (a batch counts each item).
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

    /// The `/metrics` JSON: the seed's keys first, then every counter.
    pub fn snapshot(
        &self,
        active_connections: usize,
        users_online: usize,
        uptime_seconds: f64,
    ) -> Value {
        let labelled = |labels: &mut dyn Iterator<Item = (&'static str, u64)>| -> Value {
            Value::Object(
                labels
                    .map(|(label, value)| (label.to_owned(), json!(value)))
                    .collect::<Map<_, _>>(),
            )
        };
        json!({
            "active_connections": active_connections,
            "service": crate::SERVICE_NAME,
            "users_online": users_online,
            "uptime_seconds": uptime_seconds,
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
        let snapshot = metrics.snapshot(3, 2, 1.5);
        let keys: Vec<&String> = snapshot.as_object().unwrap().keys().take(2).collect();
        assert_eq!(keys, ["active_connections", "service"]);
        assert_eq!(snapshot["active_connections"], 3);
        assert_eq!(snapshot["connections_closed_total"]["slow_consumer"], 1);
        assert_eq!(snapshot["events_delivered_total"], 2);
        assert_eq!(snapshot["events_failed_total"], 1);
        assert_eq!(snapshot["events_offline_total"], 1);
        assert_eq!(snapshot["push_requests_rejected_total"]["too_large"], 1);
    }
}
