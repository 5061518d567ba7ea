//! The server's life after start: serving, draining, closing; and the tasks that must finish first.
//!
//! Shutdown runs in three phases (driven by [`crate::server::Application::run_until_stopped`]):
//! 1. **draining** — [`Lifecycle::begin_shutdown`] was called (SIGTERM/SIGINT): `/ready` answers
//!    503 and new WebSocket handshakes are refused, while pushes are still served for
//!    `SHUTDOWN_DRAIN` seconds so load balancers can move traffic away;
//! 2. the listener closes and in-flight HTTP requests (tracked here) finish;
//! 3. **closing** — every session writes what is queued for it and ends (WebSocket: close 1001;
//!    SSE: the stream ends, so the browser reconnects elsewhere); the server waits for all of them
//!    (tracked here) until `SHUTDOWN_TIMEOUT` runs out.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// Shared shutdown state. Cloning gives another handle on the same state.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    /// Cancelled when shutdown begins.
    draining: CancellationToken,
    /// Cancelled when sessions must close (after in-flight pushes finished).
    closing: CancellationToken,
    /// Every WebSocket and SSE session, so shutdown can wait for them to close.
    sessions: TaskTracker,
    /// HTTP requests whose handler has not answered yet.
    requests: TaskTracker,
}

impl Lifecycle {
    /// Starts a graceful shutdown. Calling it again has no further effect.
    pub fn begin_shutdown(&self) {
        self.draining.cancel();
    }

    /// Whether shutdown has begun (the server is no longer ready).
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Completes when shutdown begins.
    pub async fn draining(&self) {
        self.draining.cancelled().await;
    }

    /// Completes when sessions must close.
    pub async fn closing(&self) {
        self.closing.cancelled().await;
    }

    /// Registers a session; shutdown waits until the returned token is dropped.
    pub fn track_session(&self) -> TaskTrackerToken {
        self.sessions.token()
    }

    /// Counts a request as in flight until the returned token is dropped.
    pub fn track_request(&self) -> TaskTrackerToken {
        self.requests.token()
    }

    /// Completes once no request is in flight.
    pub async fn finish_requests(&self) {
        self.requests.close();
        self.requests.wait().await;
    }

    /// Tells every session to close, then waits until all of them have.
    pub async fn close_sessions(&self) {
        self.closing.cancel();
        self.sessions.close();
        self.sessions.wait().await;
    }
}
