//! Webhooks: what the gateway tells the backend, signed per Standard Webhooks and delivered at
//! least once, in order per user, without ever slowing a push or a session.
//!
//! Callers describe what happened ([`Webhooks::user_connected`], [`Webhooks::undelivered`], …);
//! the body (`{"type","timestamp","data"}`) is serialized once, at that moment, and queued
//! ([`queue`]: bounded in items and bytes, the oldest dropped and counted when full). A fixed set
//! of lanes sends them ([`send`]): a user's webhooks always take the same lane, one at a time,
//! so they arrive in the order they happened; each is retried with capped exponential backoff
//! and jitter, re-signed per attempt under the same `webhook-id`. Nothing here is awaited by a
//! push or a session: [`Webhooks`] methods only lock the queue for an append.

mod queue;
pub mod send;
pub mod sign;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use self::queue::{Body, Queue};
pub use self::sign::WebhookSecret;
use crate::lifecycle::Lifecycle;
use crate::metrics::WebhookReport;
use crate::protocol::{Event, Frame, Transport, UserId};

/// How often [`Webhooks::drain`] looks at the queue.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// The kinds of webhook, by their `type`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::EnumCount,
    strum::VariantArray,
    strum::IntoStaticStr,
    strum::EnumString,
)]
pub enum WebhookType {
    /// A user went from no connection to one, cluster-wide.
    #[strum(serialize = "user.connected")]
    UserConnected,
    /// A user's last connection closed, cluster-wide, and the grace passed.
    #[strum(serialize = "user.disconnected")]
    UserDisconnected,
    /// An event reached no connection, or none acknowledged it in time.
    #[strum(serialize = "message.undelivered")]
    MessageUndelivered,
    /// A client sent a frame that is not a protocol message.
    #[strum(serialize = "client.message")]
    ClientMessage,
}

/// A set of webhook types (`WEBHOOK_EVENTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookTypes(u8);

impl WebhookTypes {
    /// Every type.
    pub const ALL: Self = Self(0b1111);

    /// Parses a comma-separated list of types (`user.connected,message.undelivered`).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut set = 0;
        for name in list
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            let kind: WebhookType = name.parse().map_err(|_| {
                format!(
                    "unknown webhook type {name:?}; expected user.connected, user.disconnected, \
                     message.undelivered or client.message"
                )
            })?;
            set |= 1 << kind as u8;
        }
        if set == 0 {
            return Err("no webhook type listed".into());
        }
        Ok(Self(set))
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: WebhookType) -> bool {
        self.0 & (1 << kind as u8) != 0
    }
}

#[cfg(doc)]
use crate::protocol::DisconnectReason;

/// Why an event did not reach its user (`message.undelivered`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum UndeliveredReason {
    /// The user had no connection.
    Offline,
    /// It was delivered but no connection acknowledged it within `ACK_TIMEOUT`.
    NotAcked,
    /// The user's only connections could not take it (closed as slow consumers).
    SlowConsumer,
}

/// Where and how webhooks are delivered (the `WEBHOOK_*` settings).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The endpoint (`http` or `https`).
    pub url: hyper::Uri,
    /// The signing key.
    pub secret: WebhookSecret,
    /// Which types are sent.
    pub types: WebhookTypes,
    /// Time limit of one attempt (connect, send, answer).
    pub timeout: Duration,
    /// Attempts per webhook, the first included.
    pub max_attempts: u32,
    /// The wait before the first retry; each next one doubles, up to [`send::MAX_BACKOFF`].
    pub retry_initial: Duration,
    /// Most webhooks queued (waiting or being sent).
    pub queue_items: usize,
    /// Most bytes of webhook bodies queued.
    pub queue_bytes: usize,
    /// Deliveries in flight at once (lanes).
    pub concurrency: usize,
}

/// The handle every part of the server emits webhooks through; does nothing when webhooks are
/// off. Cheap to clone.
#[derive(Clone, Default)]
pub struct Webhooks {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    types: WebhookTypes,
    queue: Arc<Queue>,
}

impl Webhooks {
    /// Webhooks off: every method is a no-op.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Starts delivering webhooks per `settings`: the lanes run as background tasks of
    /// `lifecycle` (what is still queued at exit is lost, and counted).
    pub fn start(settings: WebhookSettings, lifecycle: &Lifecycle) -> Result<Self, String> {
        let queue = Arc::new(Queue::new(
            settings.concurrency,
            settings.queue_items,
            settings.queue_bytes,
        ));
        let types = settings.types;
        send::start(settings, Arc::clone(&queue), lifecycle)?;
        Ok(Self {
            inner: Some(Arc::new(Inner { types, queue })),
        })
    }

    /// Whether webhooks of `kind` are sent: callers skip the work of describing one otherwise.
    pub fn wants(&self, kind: WebhookType) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| inner.types.contains(kind))
    }

    /// `user.connected`.
    pub fn user_connected(&self, user: &UserId, connection_id: &str, transport: Transport) {
        #[derive(Serialize)]
        struct Data<'a> {
            user_id: &'a UserId,
            connection_id: &'a str,
            transport: Transport,
        }
        self.emit(
            WebhookType::UserConnected,
            user,
            &Data {
                user_id: user,
                connection_id,
                transport,
            },
        );
    }

    /// `user.disconnected`; `reason` is a [`DisconnectReason`]'s label.
    pub fn user_disconnected(&self, user: &UserId, connection_id: &str, reason: &str) {
        #[derive(Serialize)]
        struct Data<'a> {
            user_id: &'a UserId,
            connection_id: &'a str,
            reason: &'a str,
        }
        self.emit(
            WebhookType::UserDisconnected,
            user,
            &Data {
                user_id: user,
                connection_id,
                reason,
            },
        );
    }

    /// `message.undelivered`, with the frame the client would have received as `data.event`.
    /// The frame is not copied here: the queued body refers to it (its payload shared with the
    /// history and the queues, and counted once by the webhook queue), and is joined in the lane
    /// that sends it.
    pub fn undelivered(&self, user: &UserId, event: &Event, reason: UndeliveredReason) {
        if !self.wants(WebhookType::MessageUndelivered) {
            return;
        }
        #[derive(Serialize)]
        struct Data<'a> {
            user_id: &'a UserId,
            event_id: &'a str,
            event_type: &'a str,
            reason: &'static str,
        }
        let data = Data {
            user_id: user,
            event_id: &event.event_id,
            event_type: &event.event_type,
            reason: reason.into(),
        };
        self.emit_framed(
            WebhookType::MessageUndelivered,
            user,
            &data,
            Some(event.frame.clone()),
        );
    }

    /// `client.message`: a client's text frame that is not a protocol message.
    pub fn client_message(&self, user: &UserId, connection_id: &str, message: &str) {
        #[derive(Serialize)]
        struct Data<'a> {
            user_id: &'a UserId,
            connection_id: &'a str,
            message: &'a str,
        }
        self.emit(
            WebhookType::ClientMessage,
            user,
            &Data {
                user_id: user,
                connection_id,
                message,
            },
        );
    }

    /// Queues a webhook of `kind` about `user` whose `data` is `data`.
    fn emit(&self, kind: WebhookType, user: &UserId, data: &impl Serialize) {
        self.emit_framed(kind, user, data, None);
    }

    /// Queues a webhook of `kind` about `user` whose `data` is `data`, plus `"event": <frame>`
    /// when a frame is given.
    fn emit_framed(
        &self,
        kind: WebhookType,
        user: &UserId,
        data: &impl Serialize,
        frame: Option<Frame>,
    ) {
        let Some(inner) = &self.inner else { return };
        if !inner.types.contains(kind) {
            return;
        }
        #[derive(Serialize)]
        struct Envelope<'a, D> {
            #[serde(rename = "type")]
            kind: &'static str,
            timestamp: String,
            data: &'a D,
        }
        let body = Envelope {
            kind: kind.into(),
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            data,
        };
        // Serializing plain values into memory does not fail.
        let Ok(mut text) = serde_json::to_vec(&body) else {
            return;
        };
        let body = match frame {
            None => Body::whole(text),
            Some(frame) => {
                // `…,"data":{…}}` becomes `…,"data":{…,"event":` + the frame + `}}`.
                text.truncate(text.len().saturating_sub(2));
                text.extend_from_slice(b",\"event\":");
                Body::framed(text, frame)
            }
        };
        inner.queue.push(kind, user, body);
    }

    /// Waits until every queued webhook is delivered or given up, or `deadline` passes (on
    /// shutdown: what is still queued then is lost).
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        let Some(inner) = &self.inner else { return };
        while inner.queue.report().queued > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        let left = inner.queue.report().queued;
        if left > 0 {
            tracing::warn!(
                webhooks = left,
                "shutting down with webhooks still queued: lost"
            );
        }
    }

    /// Counters and queue state, for `/metrics` and the console.
    pub fn report(&self) -> WebhookReport {
        match &self.inner {
            Some(inner) => inner.queue.report(),
            None => WebhookReport::default(),
        }
    }
}
