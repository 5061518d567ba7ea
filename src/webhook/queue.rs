//! The webhook queue: one FIFO lane per delivery slot, a user's webhooks always in the same lane
//! (so in order), bounded in items and bytes across all lanes. A webhook being delivered (or
//! waiting to be retried) stays counted until it is done. When a new one would go over a bound,
//! the oldest waiting ones are dropped, counted and warned about: queueing never blocks and never
//! grows without bound. Also keeps the delivery counters the metrics report.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::WebhookType;
use crate::metrics::WebhookReport;
use crate::metrics::histogram::AtomicHistogram;
use crate::protocol::{Frame, Ledger, UserId};

/// A webhook's body as queued: its own JSON, and for `message.undelivered` the event's frame
/// spliced in by reference (the payload shared with the history and the queues, counted once in
/// [`Ledger::Webhooks`]) and then `}}`. Joined into one piece only when it is sent.
#[derive(Debug)]
pub struct Body {
    before: Bytes,
    frame: Option<Frame>,
}

impl Body {
    /// A body that is all its own.
    pub fn whole(json: Vec<u8>) -> Self {
        Self {
            before: json.into(),
            frame: None,
        }
    }

    /// `before`, then `frame`, then `}}`.
    pub fn framed(before: Vec<u8>, frame: Frame) -> Self {
        Self {
            before: before.into(),
            frame: Some(frame),
        }
    }

    /// The body in one piece.
    pub fn join(&self) -> Bytes {
        let Some(frame) = &self.frame else {
            return self.before.clone();
        };
        let mut body = Vec::with_capacity(self.before.len() + frame.len() + FRAMED_END.len());
        body.extend_from_slice(&self.before);
        frame.write_to(&mut body);
        body.extend_from_slice(FRAMED_END);
        body.into()
    }

    /// Its size in bytes, joined.
    pub fn len(&self) -> usize {
        self.before.len()
            + self
                .frame
                .as_ref()
                .map_or(0, |frame| frame.len() + FRAMED_END.len())
    }

    /// Whether it is empty (it never is: a body is a JSON object).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts counting the body: returns the bytes the queue's total grows by (a shared payload
    /// only for its first holder).
    fn hold(&self) -> usize {
        self.before.len()
            + self.frame.as_ref().map_or(0, |frame| {
                frame.head().len() + FRAMED_END.len() + frame.payload().hold(Ledger::Webhooks)
            })
    }

    /// Stops counting the body: returns the bytes the queue's total shrinks by.
    fn release(&self) -> usize {
        self.before.len()
            + self.frame.as_ref().map_or(0, |frame| {
                frame.head().len() + FRAMED_END.len() + frame.payload().release(Ledger::Webhooks)
            })
    }
}

/// What closes a framed body: the `data` object and the body.
const FRAMED_END: &[u8] = b"}}";

/// One webhook to deliver.
#[derive(Debug)]
pub struct Pending {
    /// `webhook-id`: the same on every attempt.
    pub id: String,
    /// Its type (for logs).
    pub kind: WebhookType,
    /// What is signed and sent.
    pub body: Body,
    /// When it was queued: the start of its delivery latency.
    pub queued_at: Instant,
    /// Its place in the order of queueing, to find the oldest across lanes.
    seq: u64,
}

/// Upper bounds of the delivery latency buckets, in milliseconds (1 ms to 10 min).
const LATENCY_BOUNDS_MILLIS: &[u64] = &[
    1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 600_000,
];

/// Least time between two warnings about dropped webhooks.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The lanes and their bounds.
pub struct Queue {
    state: Mutex<State>,
    /// One per lane: something was queued there.
    ready: Box<[Notify]>,
    hasher: foldhash::fast::FixedState,
    max_items: usize,
    max_bytes: usize,
    sent: AtomicU64,
    failed_attempts: AtomicU64,
    given_up: AtomicU64,
    latency: AtomicHistogram,
    last_error: Mutex<Option<String>>,
}

#[derive(Default)]
struct State {
    lanes: Vec<VecDeque<Pending>>,
    /// Webhooks queued or in delivery, and their bytes.
    items: usize,
    bytes: usize,
    /// How many of them are `client.message`.
    client_messages: usize,
    next_seq: u64,
    dropped: u64,
    last_drop_warning: Option<Instant>,
}

impl Queue {
    /// An empty queue of `lanes` lanes, holding at most `max_items` webhooks and `max_bytes`.
    pub fn new(lanes: usize, max_items: usize, max_bytes: usize) -> Self {
        let lanes = lanes.max(1);
        Self {
            state: Mutex::new(State {
                lanes: (0..lanes).map(|_| VecDeque::new()).collect(),
                ..State::default()
            }),
            ready: (0..lanes).map(|_| Notify::new()).collect(),
            hasher: foldhash::fast::FixedState::default(),
            max_items: max_items.max(1),
            max_bytes,
            sent: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
            latency: AtomicHistogram::new(LATENCY_BOUNDS_MILLIS, 1000.0),
            last_error: Mutex::new(None),
        }
    }

    /// How many lanes deliver.
    pub fn lanes(&self) -> usize {
        self.ready.len()
    }

    /// Queues `body` in `user`'s lane, dropping the oldest waiting webhooks to stay in bounds.
    /// Refused outright (dropped and counted) are a body larger than the whole byte bound, and a
    /// `client.message` when those already fill half of the queue's items: what clients type
    /// never pushes presence or undelivered-event webhooks out.
    pub fn push(&self, kind: WebhookType, user: &UserId, body: Body) {
        let lane = self.hasher.hash_one(user) as usize % self.ready.len();
        let mut state = self.state.lock();
        let client_message = kind == WebhookType::ClientMessage;
        if body.len() > self.max_bytes
            || (client_message && state.client_messages >= self.max_items.div_ceil(2))
        {
            state.note_dropped(1);
            return;
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.items += 1;
        state.bytes += body.hold();
        state.client_messages += usize::from(client_message);
        state.lanes[lane].push_back(Pending {
            id: format!("msg_{}", ulid::Ulid::new()),
            kind,
            body,
            queued_at: Instant::now(),
            seq,
        });
        let mut dropped = 0;
        while state.items > self.max_items || state.bytes > self.max_bytes {
            let Some(oldest) = state.oldest_lane() else {
                break;
            };
            if let Some(gone) = state.lanes[oldest].pop_front() {
                state.forget(&gone);
                dropped += 1;
            }
        }
        state.note_dropped(dropped);
        drop(state);
        self.ready[lane].notify_one();
    }

    /// Waits for the next webhook of `lane` and takes it; it stays counted until [`Self::done`].
    pub async fn next(&self, lane: usize) -> Pending {
        loop {
            let ready = self.ready[lane].notified();
            if let Some(pending) = self.state.lock().lanes[lane].pop_front() {
                return pending;
            }
            ready.await;
        }
    }

    /// `pending` was delivered (`Ok`) or given up on (`Err`, why the last attempt failed).
    pub fn done(&self, pending: &Pending, outcome: Result<(), String>) {
        {
            self.state.lock().forget(pending);
        }
        match outcome {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                let millis = pending.queued_at.elapsed().as_millis();
                self.latency
                    .observe(u64::try_from(millis).unwrap_or(u64::MAX));
            }
            Err(_) => {
                self.given_up.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// An attempt failed for `why`.
    pub fn attempt_failed(&self, why: String) {
        self.failed_attempts.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(why);
    }

    /// The counters and the queue's state now.
    pub fn report(&self) -> WebhookReport {
        let (queued, queued_bytes, dropped) = {
            let state = self.state.lock();
            (state.items, state.bytes, state.dropped)
        };
        WebhookReport {
            enabled: true,
            sent: self.sent.load(Ordering::Relaxed),
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            given_up: self.given_up.load(Ordering::Relaxed),
            dropped,
            queued: queued as u64,
            queued_bytes: queued_bytes as u64,
            last_error: self.last_error.lock().clone(),
            latency: self.latency.snapshot(),
        }
    }
}

impl State {
    /// Stops counting `pending` (delivered, given up or dropped).
    fn forget(&mut self, pending: &Pending) {
        self.items -= 1;
        self.bytes -= pending.body.release();
        self.client_messages -= usize::from(pending.kind == WebhookType::ClientMessage);
    }

    /// Counts `count` dropped webhooks, and warns about it at most every
    /// [`DROP_WARNING_INTERVAL`].
    fn note_dropped(&mut self, count: u64) {
        if count == 0 {
            return;
        }
        self.dropped += count;
        let now = Instant::now();
        if self
            .last_drop_warning
            .is_none_or(|at| now.duration_since(at) >= DROP_WARNING_INTERVAL)
        {
            self.last_drop_warning = Some(now);
            tracing::warn!(
                dropped_total = self.dropped,
                "webhook queue full (WEBHOOK_QUEUE_SIZE / WEBHOOK_QUEUE_BYTES): webhooks were \
                 dropped, the oldest first; is the receiver down or slow?"
            );
        }
    }

    /// The lane whose first waiting webhook is the oldest of all.
    fn oldest_lane(&self) -> Option<usize> {
        self.lanes
            .iter()
            .enumerate()
            .filter_map(|(index, lane)| lane.front().map(|pending| (pending.seq, index)))
            .min()
            .map(|(_, index)| index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_waiting_and_counts_it() {
        let queue = Queue::new(2, 3, 1 << 20);
        for (index, name) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            queue.push(
                WebhookType::UserConnected,
                &user(name),
                Body::whole(index.to_string().into_bytes()),
            );
        }
        let report = queue.report();
        assert_eq!((report.queued, report.dropped), (3, 2));
        let mut left = Vec::new();
        for lane in 0..2 {
            while let Some(pending) = queue.state.lock().lanes[lane].pop_front() {
                left.push(pending.body.join());
            }
        }
        left.sort();
        assert_eq!(left, ["2", "3", "4"]);
    }

    #[tokio::test]
    async fn client_messages_fill_half_the_queue_at_most_and_a_huge_body_is_refused() {
        let queue = Queue::new(1, 4, 100);
        for _ in 0..3 {
            queue.push(
                WebhookType::ClientMessage,
                &user("a"),
                Body::whole(b"m".to_vec()),
            );
        }
        queue.push(
            WebhookType::UserConnected,
            &user("a"),
            Body::whole(b"c".to_vec()),
        );
        queue.push(
            WebhookType::UserConnected,
            &user("a"),
            Body::whole(vec![b'x'; 101]),
        );
        let report = queue.report();
        assert_eq!((report.queued, report.dropped), (3, 2));
        let mut left = Vec::new();
        while let Some(pending) = queue.state.lock().lanes[0].pop_front() {
            left.push(pending.body.join());
        }
        assert_eq!(left, ["m", "m", "c"]);
    }

    #[tokio::test]
    async fn bytes_are_bounded_too_and_one_user_keeps_its_order() {
        let queue = Queue::new(4, 100, 10);
        for index in 0..5 {
            queue.push(
                WebhookType::ClientMessage,
                &user("a"),
                Body::whole(format!("{index}{index}{index}").into_bytes()),
            );
        }
        let report = queue.report();
        assert_eq!(
            (report.queued, report.queued_bytes, report.dropped),
            (3, 9, 2)
        );
        let lane = (0..4)
            .find(|&lane| !queue.state.lock().lanes[lane].is_empty())
            .unwrap();
        let first = queue.next(lane).await;
        assert_eq!(first.body.join(), "222");
        queue.done(&first, Ok(()));
        assert_eq!(queue.report().sent, 1);
        assert_eq!(queue.next(lane).await.body.join(), "333");
    }
}
