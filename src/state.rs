//! What every request handler and session shares: settings, registry, broker, counters, lifecycle,
//! credentials and rate limits.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::acks::Acks;
use crate::auth::{KeyId, PublisherKeys, TokenVerifier};
use crate::broker::Broker;
use crate::clock::Clock;
use crate::config::Settings;
use crate::hub::Hub;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::metrics::requests::RequestDurations;
use crate::protocol::UserId;
use crate::rate_limit::{KeyedLimit, LimitKey};
use crate::webhook::Webhooks;

/// The state behind every handler, shared by reference count.
pub type SharedState = Arc<AppState>;

/// Application state, built once by [`crate::server::Application::build`].
pub struct AppState {
    /// The validated settings the server runs with.
    pub settings: Settings,
    /// This node's connections.
    pub hub: Arc<Hub>,
    /// Where pushes go.
    pub broker: Arc<dyn Broker>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Readiness and shutdown.
    pub lifecycle: Lifecycle,
    /// Where webhooks to the backend go (a no-op when `WEBHOOK_URL` is unset).
    pub webhooks: Webhooks,
    /// The events pushed from this node that wait for a client's acknowledgement.
    pub acks: Arc<Acks>,
    /// One permit per WebSocket or SSE connection this node will hold (`MAX_CONNECTIONS`); a handshake
    /// that finds none left is refused with 503 before the upgrade.
    pub connection_slots: Arc<Semaphore>,
    /// One permit per refused browser handshake being closed with a close code (see
    /// [`crate::transport::ws`]); beyond them, refusals are plain HTTP answers, so that a flood of
    /// refused handshakes cannot hold sockets without bound.
    pub refusal_slots: Arc<Semaphore>,
    /// The effective connection limit (`MAX_CONNECTIONS`, or derived from the descriptor limit).
    pub max_connections: usize,
    /// When the server started, for `uptime_seconds`.
    pub started_at: Instant,
    /// Publisher API keys; `None`: pushes are open.
    pub publishers: Option<PublisherKeys>,
    /// Administrator API keys (`ADMIN_API_KEYS`); `None`: the publisher keys administer too.
    pub admins: Option<PublisherKeys>,
    /// Subscriber token verification; `None`: open mode (the user is `?user_id=`).
    pub tokens: Option<TokenVerifier>,
    /// Connection attempts per client IP (`CONNECT_RATE_PER_IP`).
    pub connect_limit: Option<KeyedLimit<IpAddr>>,
    /// SSE acknowledgement requests per user (`CLIENT_MESSAGE_RATE`, as a WebSocket client's
    /// frames).
    pub ack_limit: Option<KeyedLimit<UserId>>,
    /// Push requests per publisher (`PUSH_RATE`).
    pub push_limit: Option<KeyedLimit<Publisher>>,
    /// The clock every rate limit runs on.
    pub clock: Clock,
    /// How long each route takes to answer.
    pub request_durations: RequestDurations,
}

/// Who a push request comes from, for its rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Publisher {
    /// The holder of this publisher key (`PUSH_API_KEYS`).
    Key(KeyId),
    /// The holder of this administrator key (`ADMIN_API_KEYS`).
    Admin(KeyId),
    /// A client at this address (no API keys configured).
    Address(IpAddr),
}

impl LimitKey for Publisher {
    /// A key is its own publisher; an address is counted by its client network.
    fn client(&self, ipv6_prefix: u8) -> Self {
        match self {
            Self::Key(_) | Self::Admin(_) => *self,
            Self::Address(address) => Self::Address(address.client(ipv6_prefix)),
        }
    }
}
