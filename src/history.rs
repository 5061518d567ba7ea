//! Per-user event history: each user's recent events, kept for replay on resume and for
//! recognising an upstream's retried push.
//!
//! Every user who receives pushes while history is on has a *stream*: the events accepted for
//! them, each at a position (1, 2, 3, … per user) in an *epoch*, an opaque name for this
//! incarnation of the stream. A stream that is lost (evicted, or the process restarted) comes back
//! with a new epoch, so a client holding an old position learns that it cannot resume instead of
//! silently missing events. A client resumes from the `event_id` of the last event it received,
//! or from a position token `<epoch>:<position>` (what the resync event and the SSE stream's
//! opening `id:` carry).
//!
//! Streams live inside the hub's shards, under the same lock as the user's connections: appending
//! an event and handing it to the connections is one critical section, and so is replaying to a
//! new connection and registering it. That is what makes the seam between replay and live events
//! exact. This module holds the data and the rules; the hub takes the locks.
//!
//! Memory is bounded three ways: `HISTORY_SIZE` events per stream, `HISTORY_TTL` of age, and
//! `HISTORY_MAX_USERS` streams (beyond it, creating a stream evicts the idlest stream of the same
//! shard, an approximation of the idlest overall). Expired events are reclaimed without scanning:
//! a stream drops its expired events from the front of its ring whenever it is touched, and the
//! [sweeper](ShardHistory::sweep) moves streams idle for longer than the TTL from the `recent` map
//! (ordered by last push) to the `dormant` map, dropping their events; it stops at the first stream
//! still fresh. A dormant stream keeps only its epoch, position and last `event_id`, so a client
//! that missed nothing still resumes without a resync.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;
use hashlink::linked_hash_map::Entry as MapEntry;

use crate::protocol::{
    Delivery, Event, IdOrigin, Publication, ResyncReason, StreamPosition, UserId, parse_token,
};

/// How much history to keep.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Most events kept per user (`HISTORY_SIZE`); 0 disables history.
    pub size: usize,
    /// How long an event is kept (`HISTORY_TTL`); zero disables history.
    pub ttl: Duration,
    /// Most users with a stream (`HISTORY_MAX_USERS`).
    pub max_users: usize,
}

impl HistoryLimits {
    /// Whether history is kept at all.
    pub fn enabled(&self) -> bool {
        self.size > 0 && !self.ttl.is_zero() && self.max_users > 0
    }
}

/// What a resuming client gets before live events.
#[derive(Debug)]
pub enum Resume {
    /// Every event after the client's point, oldest first (empty when it missed nothing).
    Replay(Vec<Arc<Event>>),
    /// The client's point is unknown or lost: it must reload its state.
    Resync(ResyncReason),
}

/// The outcome of offering an event to a user's stream.
#[derive(Debug)]
pub enum Offered {
    /// The event was new: delivered, then stored.
    Stored {
        /// Where it was stored.
        at: StreamPosition,
        /// What its delivery achieved.
        delivery: Delivery,
    },
    /// An event with the same upstream `event_id` is already stored: not delivered again.
    Duplicate {
        /// Where the original was stored.
        at: StreamPosition,
        /// What the original delivery achieved.
        delivery: Delivery,
    },
}

/// Settings and counts shared by every shard's history.
#[derive(Debug)]
pub struct History {
    limits: HistoryLimits,
    /// Streams in all shards, kept under `max_users`.
    streams: AtomicUsize,
    /// Events stored in all streams.
    events: AtomicUsize,
}

impl History {
    /// Empty history with these limits.
    pub fn new(limits: HistoryLimits) -> Self {
        Self {
            limits,
            streams: AtomicUsize::new(0),
            events: AtomicUsize::new(0),
        }
    }

    /// Whether history is kept at all.
    pub fn enabled(&self) -> bool {
        self.limits.enabled()
    }

    /// Users with a stream right now.
    pub fn stream_count(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Events stored right now.
    pub fn event_count(&self) -> usize {
        self.events.load(Ordering::Relaxed)
    }

    /// Whether there are more streams than `HISTORY_MAX_USERS` (some shard could not make room).
    pub fn over_capacity(&self) -> bool {
        self.stream_count() > self.limits.max_users
    }

    /// How often the sweeper should run: often enough that expired events do not linger much
    /// beyond the TTL, rarely enough to cost nothing.
    pub fn sweep_interval(&self) -> Duration {
        (self.limits.ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    /// A new, empty stream, counted.
    fn new_stream(&self, now: Instant) -> Stream {
        self.streams.fetch_add(1, Ordering::Relaxed);
        Stream::new(now)
    }

    fn stored(&self, count: usize) {
        self.events.fetch_add(count, Ordering::Relaxed);
    }

    fn dropped(&self, count: usize) {
        if count > 0 {
            self.events.fetch_sub(count, Ordering::Relaxed);
        }
    }
}

/// One stored event.
#[derive(Debug)]
struct Entry {
    event: Arc<Event>,
    position: u64,
    delivery: Delivery,
    stored_at: Instant,
}

/// One user's stream.
#[derive(Debug)]
struct Stream {
    epoch: Arc<str>,
    /// The last position assigned.
    position: u64,
    /// The `event_id` and position of the newest event dropped from `entries`, so that a client
    /// whose last event just expired (a quiet user) still resumes without a resync.
    newest_dropped: Option<(Arc<str>, u64)>,
    last_push: Instant,
    /// Positions `position - entries.len() + 1 ..= position`, oldest first.
    entries: VecDeque<Entry>,
}

impl Stream {
    fn new(now: Instant) -> Self {
        let mut epoch = [0; ulid::ULID_LEN];
        Self {
            epoch: Arc::from(&*ulid::Ulid::new().array_to_str(&mut epoch)),
            position: 0,
            newest_dropped: None,
            last_push: now,
            entries: VecDeque::new(),
        }
    }

    fn head(&self) -> StreamPosition {
        StreamPosition {
            epoch: Arc::clone(&self.epoch),
            position: self.position,
        }
    }

    fn at(&self, position: u64) -> StreamPosition {
        StreamPosition {
            epoch: Arc::clone(&self.epoch),
            position,
        }
    }

    /// Drops entries older than `ttl` and beyond `size`; returns how many.
    fn trim(&mut self, now: Instant, limits: &HistoryLimits) -> usize {
        let mut dropped = 0;
        while self.entries.len() > limits.size
            || self
                .entries
                .front()
                .is_some_and(|entry| now.duration_since(entry.stored_at) >= limits.ttl)
        {
            self.drop_oldest();
            dropped += 1;
        }
        dropped
    }

    fn drop_oldest(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.newest_dropped = Some((Arc::clone(&entry.event.event_id), entry.position));
        }
    }

    /// Drops every entry, releasing the ring's memory; returns how many.
    fn clear(&mut self) -> usize {
        let dropped = self.entries.len();
        if let Some(newest) = self.entries.back() {
            self.newest_dropped = Some((Arc::clone(&newest.event.event_id), newest.position));
        }
        self.entries = VecDeque::new();
        dropped
    }

    /// The index in `entries` of the event with this id, newest first (resumes are usually recent).
    fn find(&self, event_id: &str) -> Option<usize> {
        self.entries
            .iter()
            .rposition(|entry| &*entry.event.event_id == event_id)
    }

    fn first_position(&self) -> u64 {
        self.position + 1 - self.entries.len() as u64
    }

    /// What a client whose last event was `from` (an event id or a position token) has missed.
    fn resume_after(&self, from: &str) -> Resume {
        let replay_from = |index: usize| {
            Resume::Replay(
                self.entries
                    .range(index..)
                    .map(|entry| Arc::clone(&entry.event))
                    .collect(),
            )
        };
        if let Some(index) = self.find(from) {
            return replay_from(index + 1);
        }
        if let Some((_, position)) = self.newest_dropped.as_ref().filter(|(id, _)| &**id == from) {
            // Every event after it is still in `entries`.
            return replay_from((position + 1 - self.first_position()) as usize);
        }
        let Some((epoch, position)) = parse_token(from) else {
            return Resume::Resync(ResyncReason::UnknownEventId);
        };
        if epoch != &*self.epoch || position > self.position {
            return Resume::Resync(ResyncReason::EpochChanged);
        }
        if position + 1 < self.first_position() {
            return Resume::Resync(ResyncReason::Expired);
        }
        replay_from((position + 1 - self.first_position()) as usize)
    }
}

type StreamMap = LinkedHashMap<UserId, Stream, foldhash::fast::RandomState>;

/// The streams of one hub shard's users. Each stream is in exactly one of two maps: `recent`
/// (has events, ordered by last push, idlest first) or `dormant` (no events: all expired, or none
/// yet; ordered by when they got there). Eviction takes from `dormant` first.
#[derive(Debug, Default)]
pub struct ShardHistory {
    recent: StreamMap,
    dormant: StreamMap,
}

impl ShardHistory {
    /// Offers `event` to its user's stream, creating the stream if needed. A push whose
    /// upstream-supplied `event_id` is already in the stream is a duplicate: it is neither
    /// delivered nor stored again. Otherwise `deliver` hands it to the connections and the event
    /// is stored with that outcome (which a retry of the push reports), all in the caller's
    /// critical section.
    pub fn offer(
        &mut self,
        history: &History,
        event: &Publication,
        now: Instant,
        deliver: impl FnOnce() -> Delivery,
    ) -> Offered {
        let limits = &history.limits;
        let stream = self.touch(history, &event.user_id, now);
        history.dropped(stream.trim(now, limits));
        let original = (event.id_origin == IdOrigin::Upstream)
            .then(|| stream.find(event.event_id()))
            .flatten()
            .and_then(|index| stream.entries.get(index));
        if let Some(entry) = original {
            return Offered::Duplicate {
                at: stream.at(entry.position),
                delivery: entry.delivery,
            };
        }
        let delivery = deliver();
        stream.position += 1;
        stream.last_push = now;
        if stream.entries.len() == limits.size {
            stream.drop_oldest();
        } else {
            history.stored(1);
        }
        stream.entries.push_back(Entry {
            event: Arc::clone(&event.event),
            position: stream.position,
            delivery,
            stored_at: now,
        });
        Offered::Stored {
            at: stream.head(),
            delivery,
        }
    }

    /// What a connecting client of `user` gets before live events when it resumes from `from`
    /// (none: a fresh connection), and the stream's current head. Creates the stream if needed,
    /// so that the head is a valid point to resume from later.
    pub fn resume(
        &mut self,
        history: &History,
        user: &UserId,
        from: Option<&str>,
        now: Instant,
    ) -> (Resume, StreamPosition) {
        let stream = self.find_or_create(history, user, now);
        history.dropped(stream.trim(now, &history.limits));
        let resume = match from {
            None => Resume::Replay(Vec::new()),
            Some(from) => stream.resume_after(from),
        };
        (resume, stream.head())
    }

    /// The user's stream, moved to the back of `recent` (it is being pushed to), created if absent.
    /// Streams only enter `recent` here, so every stream in it was pushed to at `last_push`.
    fn touch(&mut self, history: &History, user: &UserId, now: Instant) -> &mut Stream {
        self.make_room_for(history, user);
        let Self { recent, dormant } = self;
        match recent.entry(user.clone()) {
            MapEntry::Occupied(mut entry) => {
                entry.to_back();
                entry.into_mut()
            }
            MapEntry::Vacant(entry) => entry.insert(
                dormant
                    .remove(user)
                    .unwrap_or_else(|| history.new_stream(now)),
            ),
        }
    }

    /// The user's stream wherever it is (its order unchanged), or a new one. A new stream has no
    /// events yet, so it starts in `dormant`: connecting users then never push out the history of
    /// users who have events, only older empty records (whose clients would get a resync).
    fn find_or_create(&mut self, history: &History, user: &UserId, now: Instant) -> &mut Stream {
        self.make_room_for(history, user);
        let Self { recent, dormant } = self;
        if let Some(stream) = recent.get_mut(user) {
            return stream;
        }
        dormant
            .entry(user.clone())
            .or_insert_with(|| history.new_stream(now))
    }

    /// When a stream for `user` would be created at `HISTORY_MAX_USERS`, evicts the idlest of this
    /// shard first. If this shard has nothing to evict, the count goes over the cap and the hub
    /// evicts elsewhere.
    fn make_room_for(&mut self, history: &History, user: &UserId) {
        if history.stream_count() >= history.limits.max_users
            && !self.recent.contains_key(user)
            && !self.dormant.contains_key(user)
        {
            self.evict_idlest(history);
        }
    }

    /// Removes this shard's idlest stream, if it has one. Returns whether it did.
    pub fn evict_idlest(&mut self, history: &History) -> bool {
        let Some((_, mut stream)) = self.dormant.pop_front().or_else(|| self.recent.pop_front())
        else {
            return false;
        };
        history.dropped(stream.clear());
        history.streams.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Moves streams with no push for a whole TTL to `dormant`, dropping their events. Costs one
    /// step per stream moved, plus one.
    pub fn sweep(&mut self, history: &History, now: Instant) {
        let idle = |stream: &Stream| now.duration_since(stream.last_push) >= history.limits.ttl;
        while self.recent.front().is_some_and(|(_, stream)| idle(stream)) {
            let Some((user, mut stream)) = self.recent.pop_front() else {
                break;
            };
            history.dropped(stream.clear());
            self.dormant.insert(user, stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Frame, Label};

    const SECOND: Duration = Duration::from_secs(1);

    fn history(size: usize, ttl_seconds: u64, max_users: usize) -> History {
        History::new(HistoryLimits {
            size,
            ttl: Duration::from_secs(ttl_seconds),
            max_users,
        })
    }

    fn event(user: &str, id: &str, upstream_id: bool) -> Publication {
        Publication {
            user_id: UserId::parse(user).unwrap(),
            id_origin: if upstream_id {
                IdOrigin::Upstream
            } else {
                IdOrigin::Assigned
            },
            event: Arc::new(Event {
                event_id: Arc::from(id),
                event_type: Arc::from("message"),
                frame: Frame::from(format!("{{\"event_id\":\"{id}\"}}")),
                accepted_at: Instant::now(),
            }),
        }
    }

    fn store(shard: &mut ShardHistory, history: &History, user: &str, id: &str, now: Instant) {
        let delivered = || Delivery {
            delivered: 1,
            failed: 0,
        };
        let offered = shard.offer(history, &event(user, id, true), now, delivered);
        assert!(
            matches!(offered, Offered::Stored { .. }),
            "{id} should be new"
        );
    }

    fn ids(resume: &Resume) -> Vec<String> {
        match resume {
            Resume::Replay(events) => events.iter().map(|e| e.event_id.to_string()).collect(),
            Resume::Resync(reason) => vec![format!("resync:{}", reason.label())],
        }
    }

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[test]
    fn positions_count_up_and_resume_replays_what_followed() {
        let (history, mut shard, now) =
            (history(10, 60, 10), ShardHistory::default(), Instant::now());
        for id in ["a", "b", "c"] {
            store(&mut shard, &history, "u", id, now);
        }
        let (resume, head) = shard.resume(&history, &user("u"), Some("a"), now);
        assert_eq!(ids(&resume), ["b", "c"]);
        assert_eq!(head.position, 3);
        let (resume, _) = shard.resume(&history, &user("u"), Some("c"), now);
        assert!(ids(&resume).is_empty(), "caught up");
        let token = StreamPosition {
            position: 1,
            ..head.clone()
        }
        .to_string();
        assert_eq!(
            ids(&shard.resume(&history, &user("u"), Some(&token), now).0),
            ["b", "c"]
        );
        let zero = format!("{}:0", head.epoch);
        assert_eq!(
            ids(&shard.resume(&history, &user("u"), Some(&zero), now).0),
            ["a", "b", "c"]
        );
        assert_eq!(history.event_count(), 3);
        assert_eq!(history.stream_count(), 1);
    }

    #[test]
    fn unknown_ids_and_foreign_epochs_resync() {
        let (history, mut shard, now) =
            (history(10, 60, 10), ShardHistory::default(), Instant::now());
        store(&mut shard, &history, "u", "a", now);
        let resume = |shard: &mut ShardHistory, from: &str| {
            ids(&shard.resume(&history, &user("u"), Some(from), now).0)
        };
        assert_eq!(resume(&mut shard, "zzz"), ["resync:unknown_event_id"]);
        assert_eq!(
            resume(&mut shard, "01ARZ3NDEKTSV4RRFFQ69G5FAV:1"),
            ["resync:epoch_changed"]
        );
        assert_eq!(resume(&mut shard, "order:7"), ["resync:unknown_event_id"]);
        let (_, head) = shard.resume(&history, &user("u"), None, now);
        assert_eq!(
            resume(&mut shard, &format!("{}:9", head.epoch)),
            ["resync:epoch_changed"],
            "a position from the future is not this stream's"
        );
    }

    #[test]
    fn size_bounds_the_ring_and_old_positions_resync_as_expired() {
        let (history, mut shard, now) =
            (history(2, 60, 10), ShardHistory::default(), Instant::now());
        for id in ["a", "b", "c", "d"] {
            store(&mut shard, &history, "u", id, now);
        }
        assert_eq!(history.event_count(), 2);
        let (resume, head) = shard.resume(&history, &user("u"), Some("c"), now);
        assert_eq!(ids(&resume), ["d"]);
        assert_eq!(
            ids(&shard.resume(&history, &user("u"), Some("b"), now).0),
            ["c", "d"],
            "b was the last to go: what followed it is all here"
        );
        assert_eq!(
            ids(&shard.resume(&history, &user("u"), Some("a"), now).0),
            ["resync:unknown_event_id"]
        );
        let old = format!("{}:0", head.epoch);
        assert_eq!(
            ids(&shard.resume(&history, &user("u"), Some(&old), now).0),
            ["resync:expired"]
        );
    }

    #[test]
    fn ttl_expires_entries_but_a_caught_up_client_still_resumes() {
        let (history, mut shard, start) =
            (history(10, 5, 10), ShardHistory::default(), Instant::now());
        store(&mut shard, &history, "u", "a", start);
        store(&mut shard, &history, "u", "b", start + 3 * SECOND);
        shard.sweep(&history, start + 6 * SECOND);
        assert_eq!(
            history.event_count(),
            2,
            "b is 3s old: the stream is not idle yet"
        );
        let (resume, _) = shard.resume(&history, &user("u"), Some("b"), start + 6 * SECOND);
        assert!(ids(&resume).is_empty());
        assert_eq!(
            history.event_count(),
            1,
            "a expired when the stream was touched"
        );
        shard.sweep(&history, start + 9 * SECOND);
        assert_eq!(history.event_count(), 0, "swept");
        let later = start + 20 * SECOND;
        assert!(ids(&shard.resume(&history, &user("u"), Some("b"), later).0).is_empty());
        assert_eq!(
            ids(&shard.resume(&history, &user("u"), Some("a"), later).0),
            ["resync:unknown_event_id"]
        );
        store(&mut shard, &history, "u", "c", later);
        assert_eq!(
            ids(&shard.resume(&history, &user("u"), Some("b"), later).0),
            ["c"],
            "a quiet user's client resumes from its expired last event"
        );
        assert_eq!(history.stream_count(), 1);
    }

    #[test]
    fn upstream_ids_are_deduplicated_and_generated_ones_are_not_looked_up() {
        let (history, mut shard, now) =
            (history(10, 60, 10), ShardHistory::default(), Instant::now());
        store(&mut shard, &history, "u", "a", now);
        match shard.offer(&history, &event("u", "a", true), now, Delivery::default) {
            Offered::Duplicate { at, delivery } => {
                assert_eq!(at.position, 1);
                assert_eq!(delivery.delivered, 1);
            }
            other => panic!("expected a duplicate, got {other:?}"),
        }
        assert!(matches!(
            shard.offer(&history, &event("u", "a", false), now, Delivery::default),
            Offered::Stored { .. }
        ));
        assert!(matches!(
            shard.offer(&history, &event("other", "a", true), now, Delivery::default),
            Offered::Stored { .. }
        ));
    }

    #[test]
    fn the_user_cap_evicts_the_idlest_stream() {
        let (history, mut shard, now) =
            (history(10, 60, 2), ShardHistory::default(), Instant::now());
        store(&mut shard, &history, "old", "1", now);
        store(&mut shard, &history, "mid", "2", now);
        store(&mut shard, &history, "old", "3", now);
        store(&mut shard, &history, "new", "4", now);
        assert_eq!(history.stream_count(), 2);
        assert_eq!(history.event_count(), 3);
        assert_eq!(
            ids(&shard.resume(&history, &user("old"), Some("1"), now).0),
            ["3"],
            "old was pushed to recently, so mid was the idlest"
        );
        assert!(shard.evict_idlest(&history));
        assert!(shard.evict_idlest(&history));
        assert!(!shard.evict_idlest(&history));
        assert_eq!((history.stream_count(), history.event_count()), (0, 0));
    }

    #[test]
    fn streams_created_by_connecting_clients_are_evicted_before_streams_with_events() {
        let (history, mut shard, now) =
            (history(10, 60, 2), ShardHistory::default(), Instant::now());
        store(&mut shard, &history, "pushed", "1", now);
        let (_, watcher_head) = shard.resume(&history, &user("watcher"), None, now);
        assert_eq!(watcher_head.position, 0);
        shard.resume(&history, &user("newcomer"), None, now);
        assert_eq!(history.stream_count(), 2);
        assert_eq!(
            ids(&shard.resume(&history, &user("pushed"), Some("1"), now).0),
            Vec::<String>::new(),
            "the stream with events survived"
        );
        let stale = format!("{}:0", watcher_head.epoch);
        assert_eq!(
            ids(&shard
                .resume(&history, &user("watcher"), Some(&stale), now)
                .0),
            ["resync:epoch_changed"],
            "the evicted empty stream comes back with a new epoch"
        );
    }
}
