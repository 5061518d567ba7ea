//! What every request handler and session shares: settings, registry, broker, counters, lifecycle.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::broker::Broker;
use crate::config::Settings;
use crate::hub::Hub;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

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
    /// One permit per WebSocket or SSE connection this node will hold (`MAX_CONNECTIONS`); a handshake
    /// that finds none left is refused with 503 before the upgrade.
    pub connection_slots: Arc<Semaphore>,
    /// The effective connection limit (`MAX_CONNECTIONS`, or derived from the descriptor limit).
    pub max_connections: usize,
    /// When the server started, for `uptime_seconds`.
    pub started_at: Instant,
}
