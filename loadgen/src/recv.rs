//! Receiving pushed messages, whatever the transport: the state shared by every receiving
//! connection of a run, what one connection saw, and the per-frame checks. A WebSocket text frame
//! ([`crate::ws::receive`]) and a Server-Sent Events block's data ([`crate::sse::receive`]) carry
//! the same JSON text and go through the same [`FrameChecker`].

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::probe::ProbeBoard;
use crate::stats::{LocalSamples, SeenSet, SharedHistogram};
use crate::target::{Frame, Incoming, Protocol, string_after};

/// State shared by every receiving connection of one run.
#[derive(Debug)]
pub struct RecvContext {
    /// How the target's frames look.
    pub protocol: Arc<dyn Protocol>,
    /// Where connections report their first subscription probe.
    pub probes: Arc<ProbeBoard>,
    /// The instant `sent_ns` values are measured from.
    pub start: Instant,
    /// Number of distinct users; message `seq` goes to user `seq % users`.
    pub users: u64,
    /// Sequence numbers at or beyond this are invalid.
    pub max_seq: u64,
    /// End-to-end latency (µs), from `sent_ns` to frame arrival.
    pub latency: SharedHistogram,
    /// Message frames (not probes or protocol messages) received so far by all connections (for
    /// the end-of-run grace wait).
    pub frames: AtomicU64,
    /// Acknowledge every pushed message (`{"type":"ack","event_id":…}`, ours).
    pub ack: bool,
}

/// What one receiving connection saw.
#[derive(Debug, Default)]
pub struct RecvOutcome {
    /// Index of the user the connection belongs to.
    pub user_index: u64,
    /// Message frames received (valid or not; probes and protocol messages excluded).
    pub frames: u64,
    /// Frames for a message this connection had already received.
    pub duplicates: u64,
    /// Frames whose `user_id` or sequence number belongs to another user.
    pub misrouted: u64,
    /// Frames that could not be parsed or carried an out-of-range sequence number.
    pub invalid: u64,
    /// Per-user message indices (`seq / users`) received.
    pub seen: SeenSet,
    /// Arrival of the last valid frame, ns since the shared start.
    pub last_recv_ns: u64,
    /// The server closed the connection (or it failed) before the run ended.
    pub closed_early: bool,
    /// Why the connection closed early: a WebSocket close frame's reason, an SSE `close` event's
    /// `reason`, or how the connection ended or failed.
    pub close_reason: Option<String>,
}

/// One receiving connection's checks: classifies each text frame, counts it, checks it against
/// what this connection may receive and records its latency.
#[derive(Debug)]
pub struct FrameChecker {
    user_id: String,
    ctx: Arc<RecvContext>,
    outcome: RecvOutcome,
    samples: LocalSamples,
    probed: bool,
}

impl FrameChecker {
    /// A checker for a connection of user `user_id` (index `user_index`).
    pub fn new(user_id: String, user_index: u64, ctx: Arc<RecvContext>) -> Self {
        Self {
            user_id,
            ctx,
            outcome: RecvOutcome {
                user_index,
                ..RecvOutcome::default()
            },
            samples: LocalSamples::default(),
            probed: false,
        }
    }

    /// Handles one text frame (a WebSocket text message or an SSE event's data); returns the
    /// answer the frame asks for, if any (a protocol message like a Pusher ping, or the
    /// acknowledgement of a pushed message with `ack`).
    pub fn text(&mut self, text: &str) -> Option<Cow<'static, str>> {
        match self.ctx.protocol.classify(text) {
            Incoming::Push(frame) => {
                self.count_frame();
                check_frame(
                    &frame,
                    &self.user_id,
                    &self.ctx,
                    &mut self.outcome,
                    &mut self.samples,
                );
                if self.ctx.ack {
                    let id = string_after(text, "\"event_id\":\"")?;
                    return Some(format!(r#"{{"type":"ack","event_id":"{id}"}}"#).into());
                }
            }
            Incoming::Invalid => {
                self.count_frame();
                self.outcome.invalid += 1;
            }
            Incoming::Probe => {
                if !std::mem::replace(&mut self.probed, true) {
                    self.ctx.probes.confirm(self.outcome.user_index);
                }
            }
            Incoming::Reply(answer) => return Some(answer.into()),
            Incoming::Ignore => {}
        }
        None
    }

    /// Ends the connection's record: flushes the latency samples and notes whether (`Some(why)`)
    /// the server ended the connection before the run did (`None`).
    pub fn finish(mut self, closed_early: Option<String>) -> RecvOutcome {
        self.samples.flush(&self.ctx.latency);
        self.outcome.closed_early = closed_early.is_some();
        self.outcome.close_reason = closed_early;
        self.outcome
    }

    /// Counts one message frame.
    fn count_frame(&mut self) {
        self.outcome.frames += 1;
        self.ctx.frames.fetch_add(1, Ordering::Relaxed);
    }
}

/// Checks one pushed message (route, duplicate, range) and records its latency.
fn check_frame(
    frame: &Frame<'_>,
    user_id: &str,
    ctx: &RecvContext,
    outcome: &mut RecvOutcome,
    samples: &mut LocalSamples,
) {
    if frame.seq >= ctx.max_seq {
        outcome.invalid += 1;
        return;
    }
    if frame.user_id != user_id || frame.seq % ctx.users != outcome.user_index {
        outcome.misrouted += 1;
        return;
    }
    if !outcome.seen.insert(frame.seq / ctx.users) {
        outcome.duplicates += 1;
        return;
    }
    let now_ns = u64::try_from(ctx.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    samples.record(now_ns.saturating_sub(frame.sent_ns) / 1000, &ctx.latency);
    outcome.last_recv_ns = outcome.last_recv_ns.max(now_ns);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::ours::Ours;

    fn context(users: u64) -> Arc<RecvContext> {
        Arc::new(RecvContext {
            protocol: Arc::new(Ours),
            probes: Arc::new(ProbeBoard::new(users as usize, 0..users)),
            start: Instant::now(),
            users,
            max_seq: 100,
            latency: SharedHistogram::default(),
            frames: AtomicU64::new(0),
            ack: false,
        })
    }

    #[test]
    fn checks_and_counts_frames() {
        let ctx = context(2);
        let mut checker = FrameChecker::new("u1".to_owned(), 1, Arc::clone(&ctx));
        let frame = |user: &str, seq: u64| {
            format!(r#"{{"user_id":"{user}","data":{{"seq":{seq},"sent_ns":0}}}}"#)
        };
        assert_eq!(checker.text(r#"{"user_id":"u1","data":{"probe":1}}"#), None);
        assert_eq!(checker.text(&frame("u1", 1)), None);
        checker.text(&frame("u1", 1)); // duplicate
        checker.text(&frame("u1", 2)); // seq 2 belongs to user 0
        checker.text(&frame("u0", 3)); // another user's id
        checker.text(&frame("u1", 101)); // out of range
        checker.text("not json");
        let outcome = checker.finish(Some("slow_consumer".to_owned()));
        assert_eq!(outcome.frames, 6);
        assert_eq!(outcome.duplicates, 1);
        assert_eq!(outcome.misrouted, 2);
        assert_eq!(outcome.invalid, 2);
        assert!(outcome.seen.contains(0));
        assert!(outcome.closed_early);
        assert_eq!(ctx.frames.load(Ordering::Relaxed), 6);
        assert_eq!(ctx.probes.confirmed(), 1);
    }
}
