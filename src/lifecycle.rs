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
//!
//! Background tasks (the housekeeping task; the Redis broker's link, departures and catch-up
//! tasks) are spawned here too, with [`Lifecycle::spawn_background`]: tracked, and ended by
//! [`Lifecycle::stop_background`] as the last step of a shutdown (after the broker left the
//! cluster).

use std::future::Future;

use tokio::task::JoinHandle;
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
    /// Background tasks, so that shutdown can end them and wait for them.
    background: TaskTracker,
    /// Cancelled when background tasks must end.
    stopping: CancellationToken,
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

    /// Spawns a background task that runs until it completes or [`Self::stop_background`] is
    /// called, whichever comes first (it is then dropped at its next await).
    pub fn spawn_background<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stopping = self.stopping.clone();
        self.background.spawn(async move {
            tokio::select! {
                () = stopping.cancelled() => {}
                () = task => {}
            }
        })
    }

    /// Ends every background task and waits until all have ended.
    pub async fn stop_background(&self) {
        self.stopping.cancel();
        self.background.close();
        self.background.wait().await;
    }
}
