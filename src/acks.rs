//! Acknowledgements: which events pushed with `"ack": true` from this node still wait for a
//! client to acknowledge them, who waits for that (a push with `wait_ms`), and the
//! `message.undelivered` webhook for those that are not acknowledged within `ACK_TIMEOUT`.
//!
//! An event is tracked ([`Acks::expect`]) *before* it is published, so an acknowledgement can
//! never overtake its tracking, and settled ([`Ticket::published`]) with what publishing
//! achieved: a duplicate or a failed publish is forgotten; otherwise the event waits, remembering
//! why it would be undelivered (`offline` when no connection took it, `slow_consumer` when its
//! only connections could not, `not_acked` otherwise). An acknowledgement from any connection
//! of the user, on any node (the broker carries it to the others), resolves it; so does one that
//! comes after a resume replayed the event. Only the node that tracks an event sends its
//! webhook, so each unacknowledged event is reported once.
//!
//! Bounded: at most `ACK_PENDING_PER_USER` events per user and `ACK_PENDING_MAX` events and
//! `ACK_PENDING_MAX_BYTES` (each entry's frame head, id and bookkeeping, and each payload once
//! however many users' entries share it) on the node. At a bound the
//! oldest pending event (of the user, or of the node) is given up at once: its
//! `message.undelivered` goes out early and it is counted as evicted. Entries sit in the order
//! they were tracked, which is the order of their deadlines (one timeout for all), so expiry
//! only ever looks at the front.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::metrics::AckReport;
use crate::protocol::{Delivery, Event, Ledger, Publication, UserId};
use crate::webhook::{UndeliveredReason, Webhooks};

/// How long expiry sleeps between two looks at the front.
const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// Fixed cost of one pending entry beyond its frame, in bytes (key, entry, map and list slots).
const ENTRY_OVERHEAD: usize = 160;

/// The acknowledgement settings (`ACK_*`).
#[derive(Debug, Clone, Copy)]
pub struct AckLimits {
    /// How long an event waits for an acknowledgement (`ACK_TIMEOUT`).
    pub timeout: Duration,
    /// Longest `wait_ms` a push may ask for (`ACK_WAIT_MAX_MS`).
    pub wait_max: Duration,
    /// Most events pending per user (`ACK_PENDING_PER_USER`).
    pub per_user: usize,
    /// Most events pending on the node (`ACK_PENDING_MAX`).
    pub max: usize,
    /// Most bytes pending on the node (`ACK_PENDING_MAX_BYTES`).
    pub max_bytes: usize,
}

type Key = (UserId, Arc<str>);

struct Entry {
    event: Arc<Event>,
    deadline: Instant,
    /// Which tracking made the entry (a duplicate push of the same id must not settle it).
    ticket: u64,
    /// Why it would be undelivered; `None` until its publish is settled.
    reason: Option<UndeliveredReason>,
    waiters: Vec<oneshot::Sender<()>>,
    /// Its bytes other than the payload (counted once per payload in [`Ledger::Acks`]).
    own_bytes: usize,
}

#[derive(Default)]
struct State {
    entries: LinkedHashMap<Key, Entry>,
    /// Each user's pending event ids, oldest first.
    by_user: HashMap<UserId, VecDeque<Arc<str>>, foldhash::fast::RandomState>,
    bytes: usize,
    next_ticket: u64,
}

/// The events of this node waiting for an acknowledgement.
pub struct Acks {
    limits: AckLimits,
    state: Mutex<State>,
    webhooks: Webhooks,
    acked: AtomicU64,
    expired: AtomicU64,
    evicted: AtomicU64,
}

/// The tracking of one event, until its publish is settled.
#[must_use = "settle the ticket with the publish's outcome"]
pub struct Ticket {
    key: Key,
    ticket: u64,
}

/// What publishing a tracked event achieved.
#[derive(Debug, Clone, Copy)]
pub enum Published {
    /// Stored and handed to the user's connections: this is what it achieved.
    Delivered(Delivery),
    /// A repeat of an event already accepted: the original is the one tracked.
    Duplicate,
    /// Not published (the broker refused): nothing to wait for.
    Failed,
    /// Perhaps published (the broker did not answer; the push was answered 504): it keeps
    /// waiting, and is reported `not_acked` if no acknowledgement comes. A retry of the push is
    /// then a duplicate and leaves this tracking as it is.
    Unknown,
}

impl Acks {
    /// An empty tracker sending its webhooks through `webhooks`.
    pub fn new(limits: AckLimits, webhooks: Webhooks) -> Self {
        Self {
            limits,
            state: Mutex::new(State::default()),
            webhooks,
            acked: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    /// The settings.
    pub fn limits(&self) -> AckLimits {
        self.limits
    }

    /// Starts tracking `publication` (which asks for acknowledgement) before it is published;
    /// with `wait`, also returns what completes at its first acknowledgement. `None` when the
    /// same event of the user is tracked already (a retry of a push still pending).
    pub fn expect(
        &self,
        publication: &Publication,
        wait: bool,
    ) -> Option<(Ticket, Option<oneshot::Receiver<()>>)> {
        let key = (
            publication.user_id.clone(),
            Arc::clone(publication.event_id()),
        );
        let frame = &publication.event.frame;
        // The payload a push to several users shares is counted once (see `Ledger`).
        let own_bytes = frame.head().len() + publication.event_id().len() + ENTRY_OVERHEAD;
        let mut evicted = Vec::new();
        let answer = {
            let mut state = self.state.lock();
            if state.entries.contains_key(&key) {
                return None;
            }
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            let (sender, receiver) = if wait {
                let (sender, receiver) = oneshot::channel();
                (vec![sender], Some(receiver))
            } else {
                (Vec::new(), None)
            };
            let bytes = own_bytes + frame.payload().hold(Ledger::Acks);
            state.bytes += bytes;
            state.entries.insert(
                key.clone(),
                Entry {
                    event: Arc::clone(&publication.event),
                    deadline: Instant::now() + self.limits.timeout,
                    ticket,
                    reason: None,
                    waiters: sender,
                    own_bytes,
                },
            );
            let ids = state.by_user.entry(key.0.clone()).or_default();
            ids.push_back(Arc::clone(&key.1));
            if ids.len() > self.limits.per_user
                && let Some(oldest) = ids.front().cloned()
            {
                evicted.extend(state.remove(&(key.0.clone(), oldest)));
            }
            while state.entries.len() > self.limits.max || state.bytes > self.limits.max_bytes {
                let Some(oldest) = state.entries.front().map(|(key, _)| key.clone()) else {
                    break;
                };
                evicted.extend(state.remove(&oldest));
            }
            (Ticket { key, ticket }, receiver)
        };
        self.evicted
            .fetch_add(evicted.len() as u64, Ordering::Relaxed);
        self.report_undelivered(evicted);
        Some(answer)
    }

    /// What completes when the tracked event `id` of `user` is acknowledged (a push retried while
    /// its original still waits); `None` when it is not tracked here.
    pub fn waiter(&self, user: &UserId, id: &Arc<str>) -> Option<oneshot::Receiver<()>> {
        let mut state = self.state.lock();
        let entry = state.entries.get_mut(&(user.clone(), Arc::clone(id)))?;
        let (sender, receiver) = oneshot::channel();
        // Waiters whose push stopped waiting (retries of a push) are let go first.
        entry.waiters.retain(|waiter| !waiter.is_closed());
        entry.waiters.push(sender);
        Some(receiver)
    }

    /// Settles `ticket` with what publishing its event achieved.
    pub fn settle(&self, ticket: Ticket, published: Published) {
        let mut state = self.state.lock();
        let Some(entry) = state.entries.get_mut(&ticket.key) else {
            // Acknowledged already, or evicted.
            return;
        };
        if entry.ticket != ticket.ticket {
            return;
        }
        match published {
            Published::Delivered(delivery) => {
                entry.reason = Some(if delivery.is_offline() {
                    UndeliveredReason::Offline
                } else if delivery.delivered == 0 {
                    UndeliveredReason::SlowConsumer
                } else {
                    UndeliveredReason::NotAcked
                });
            }
            Published::Duplicate | Published::Failed => {
                state.remove(&ticket.key);
            }
            Published::Unknown => {}
        }
    }

    /// `user` acknowledged `ids`: those tracked here are resolved and their waiters woken.
    /// Returns the others (tracked on another node, or by nobody any more).
    pub fn acknowledge(&self, user: &UserId, ids: Vec<Arc<str>>) -> Vec<Arc<str>> {
        let mut elsewhere = Vec::new();
        let mut state = self.state.lock();
        for id in ids {
            match state.remove(&(user.clone(), Arc::clone(&id))) {
                Some((_, entry)) => {
                    self.acked.fetch_add(1, Ordering::Relaxed);
                    for waiter in entry.waiters {
                        let _ = waiter.send(());
                    }
                }
                None => elsewhere.push(id),
            }
        }
        elsewhere
    }

    /// Reports every event whose deadline passed; runs until the server stops.
    pub async fn expire(self: Arc<Self>) {
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.expire_due(Instant::now());
        }
    }

    /// Reports the events due at `now`; returns how many.
    fn expire_due(&self, now: Instant) -> usize {
        let mut due = Vec::new();
        {
            let mut state = self.state.lock();
            while let Some((key, entry)) = state.entries.front() {
                if entry.deadline > now {
                    break;
                }
                let key = key.clone();
                due.extend(state.remove(&key));
            }
        }
        let count = due.len();
        self.expired.fetch_add(count as u64, Ordering::Relaxed);
        self.report_undelivered(due);
        count
    }

    fn report_undelivered(&self, entries: Vec<(UserId, Entry)>) {
        for (user, entry) in entries {
            // An entry still unsettled when given up was still being published: whether it
            // reached a connection is not known yet, so it is reported as not acknowledged.
            let reason = entry.reason.unwrap_or(UndeliveredReason::NotAcked);
            self.webhooks.undelivered(&user, &entry.event, reason);
        }
    }

    /// Counters and the pending state, for `/metrics` and the console.
    pub fn report(&self) -> AckReport {
        let (pending, pending_bytes) = {
            let state = self.state.lock();
            (state.entries.len(), state.bytes)
        };
        AckReport {
            pending: pending as u64,
            pending_bytes: pending_bytes as u64,
            acked: self.acked.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
}

impl State {
    /// Removes `key`'s entry from every index.
    fn remove(&mut self, key: &Key) -> Option<(UserId, Entry)> {
        let entry = self.entries.remove(key)?;
        self.bytes -= entry.own_bytes + entry.event.frame.payload().release(Ledger::Acks);
        if let Some(ids) = self.by_user.get_mut(&key.0) {
            if let Some(at) = ids.iter().position(|id| *id == key.1) {
                ids.remove(at);
            }
            if ids.is_empty() {
                self.by_user.remove(&key.0);
            }
        }
        Some((key.0.clone(), entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_push;

    fn limits() -> AckLimits {
        AckLimits {
            timeout: Duration::from_secs(30),
            wait_max: Duration::from_secs(30),
            per_user: 2,
            max: 3,
            max_bytes: 1 << 20,
        }
    }

    fn publication(user: &str, id: &str) -> Publication {
        let body = format!(r#"{{"user_id":"{user}","event_id":"{id}","ack":true,"data":{{}}}}"#);
        parse_push(body.as_bytes()).unwrap().encode(1.0).unwrap()
    }

    fn delivered() -> Published {
        Published::Delivered(Delivery {
            delivered: 1,
            failed: 0,
        })
    }

    #[test]
    fn an_acknowledgement_resolves_and_wakes_the_waiter() {
        let acks = Acks::new(limits(), Webhooks::disabled());
        let event = publication("u", "e1");
        let (ticket, waiter) = acks.expect(&event, true).unwrap();
        assert!(acks.expect(&event, false).is_none(), "tracked once");
        acks.settle(ticket, delivered());
        let other = UserId::parse("v").unwrap();
        assert_eq!(
            acks.acknowledge(&other, vec!["e1".into()]).len(),
            1,
            "only its user"
        );
        assert!(
            acks.acknowledge(&event.user_id, vec!["e1".into()])
                .is_empty()
        );
        assert!(waiter.unwrap().try_recv().is_ok());
        assert_eq!(acks.report().pending, 0);
        assert_eq!(acks.report().acked, 1);
    }

    #[test]
    fn an_acknowledgement_before_the_settlement_still_counts() {
        let acks = Acks::new(limits(), Webhooks::disabled());
        let (ticket, _) = acks.expect(&publication("u", "e1"), false).unwrap();
        let user = UserId::parse("u").unwrap();
        assert!(acks.acknowledge(&user, vec!["e1".into()]).is_empty());
        acks.settle(ticket, delivered());
        assert_eq!(acks.report().pending, 0);
    }

    #[test]
    fn duplicates_and_failures_are_forgotten_without_touching_the_original() {
        let acks = Acks::new(limits(), Webhooks::disabled());
        let (first, _) = acks.expect(&publication("u", "e1"), false).unwrap();
        acks.settle(first, delivered());
        let (failed, _) = acks.expect(&publication("u", "e2"), false).unwrap();
        acks.settle(failed, Published::Failed);
        assert_eq!(acks.report().pending, 1);
    }

    #[test]
    fn bounds_give_up_the_oldest_and_deadlines_expire_in_order() {
        let acks = Acks::new(limits(), Webhooks::disabled());
        for id in ["a", "b", "c"] {
            let (ticket, _) = acks.expect(&publication("u", id), false).unwrap();
            acks.settle(ticket, delivered());
        }
        assert_eq!(acks.report().evicted, 1, "two per user");
        for user in ["v", "w"] {
            let (ticket, _) = acks.expect(&publication(user, "x"), false).unwrap();
            acks.settle(ticket, delivered());
        }
        let report = acks.report();
        assert_eq!(
            (report.pending, report.evicted),
            (3, 2),
            "three on the node"
        );
        let user = UserId::parse("u").unwrap();
        assert_eq!(
            acks.acknowledge(&user, vec!["b".into(), "c".into()]),
            [Arc::from("b")]
        );
        assert_eq!(acks.expire_due(Instant::now()), 0);
        assert_eq!(acks.expire_due(Instant::now() + Duration::from_secs(31)), 2);
        assert_eq!(acks.report().pending_bytes, 0);
    }
}
