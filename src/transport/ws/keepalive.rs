//! The WebSocket keepalive rule as a small state machine, free of I/O so it can be tested alone.
//!
//! Every `interval` the server pings; the client then has `timeout` to show any sign of life (a
//! pong, or any other frame). Silence past that closes the connection.

use std::time::Duration;

use tokio::time::Instant;

/// What the session must do when the keepalive deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// Send a ping now.
    Ping,
    /// The client did not answer the last ping in time.
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle { next_ping: Instant },
    AwaitingPong { ping_sent: Instant },
}

/// Keepalive state of one connection.
#[derive(Debug)]
pub(super) struct Keepalive {
    interval: Duration,
    timeout: Duration,
    state: State,
}

impl Keepalive {
    /// Starts the schedule at `now`; the first ping is due one interval later.
    pub(super) fn new(interval: Duration, timeout: Duration, now: Instant) -> Self {
        Self {
            interval,
            timeout,
            state: State::Idle {
                next_ping: now + interval,
            },
        }
    }

    /// When [`Self::on_deadline`] must next be called.
    pub(super) fn deadline(&self) -> Instant {
        match self.state {
            State::Idle { next_ping } => next_ping,
            State::AwaitingPong { ping_sent } => ping_sent + self.timeout,
        }
    }

    /// The deadline passed at `now`: says whether to ping or give up.
    pub(super) fn on_deadline(&mut self, now: Instant) -> Due {
        match self.state {
            State::Idle { .. } => {
                self.state = State::AwaitingPong { ping_sent: now };
                Due::Ping
            }
            State::AwaitingPong { .. } => Due::TimedOut,
        }
    }

    /// The client sent something. Returns whether the deadline moved.
    pub(super) fn on_client_activity(&mut self) -> bool {
        match self.state {
            State::AwaitingPong { ping_sent } => {
                self.state = State::Idle {
                    next_ping: ping_sent + self.interval,
                };
                true
            }
            State::Idle { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(30);
    const TIMEOUT: Duration = Duration::from_secs(10);

    #[test]
    fn silent_client_times_out_one_timeout_after_the_ping() {
        let start = Instant::now();
        let mut keepalive = Keepalive::new(INTERVAL, TIMEOUT, start);
        assert_eq!(keepalive.deadline(), start + INTERVAL);
        assert_eq!(keepalive.on_deadline(start + INTERVAL), Due::Ping);
        assert_eq!(keepalive.deadline(), start + INTERVAL + TIMEOUT);
        assert_eq!(
            keepalive.on_deadline(start + INTERVAL + TIMEOUT),
            Due::TimedOut
        );
    }

    #[test]
    fn an_answer_schedules_the_next_ping() {
        let start = Instant::now();
        let mut keepalive = Keepalive::new(INTERVAL, TIMEOUT, start);
        assert!(
            !keepalive.on_client_activity(),
            "activity while idle changes nothing"
        );
        keepalive.on_deadline(start + INTERVAL);
        assert!(keepalive.on_client_activity());
        assert_eq!(keepalive.deadline(), start + INTERVAL * 2);
        assert_eq!(keepalive.on_deadline(start + INTERVAL * 2), Due::Ping);
    }
}
