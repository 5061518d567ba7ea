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
//! an event and handing it to the connections is one critical section, and so is reading a page
//! of a replay and switching a connection to live events. That is what makes the seam between
//! replay and live events exact. This module holds the data and the rules; the hub takes the
//! locks and picks, across its shards, whom to evict.
//!
//! Memory is bounded four ways, each eviction counted by its [cause](EvictionCause):
//! `HISTORY_SIZE` events per stream (the oldest goes), `HISTORY_TTL` of age, `HISTORY_MAX_USERS`
//! streams and `HISTORY_MAX_BYTES` of stored events. Beyond the last two, the hub evicts the least
//! recently pushed user of the node (streams without events first): a whole stream for the user
//! cap, its oldest events for the byte budget. Bytes are counted as each entry's own part (its
//! frame's head and a fixed bookkeeping cost) plus each payload once, however many entries share
//! it (a broadcast's `data` is stored once). Expired events are reclaimed without scanning: a
//! stream drops its expired events from the front of its ring whenever it is touched, and the
//! [sweeper](ShardHistory::sweep) moves streams idle for longer than the TTL from the `recent` map
//! (ordered by last push) to the `dormant` map, dropping their events; it stops at the first
//! stream still fresh. A dormant stream keeps only its epoch, position and last `event_id`, so a
//! client that missed nothing still resumes without a resync.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;
use hashlink::linked_hash_map::Entry as MapEntry;
use strum::EnumCount;

use crate::protocol::{
    Delivery, Event, EvictionCause, IdOrigin, Ledger, Publication, ResyncReason, StreamPosition,
    UserId, parse_token,
};

/// What one stored event costs besides its frame's text: the ring slot, the event, its id and its
/// payload's record, with the allocator's rounding (measured: a 256-byte push costs about 770
/// bytes of RSS in history, about 400 of them its text). Counted against `HISTORY_MAX_BYTES` so
/// that many tiny events are bounded by their real footprint too.
pub const ENTRY_OVERHEAD_BYTES: usize = 256;

/// How much history to keep.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Most events kept per user (`HISTORY_SIZE`); 0 disables history.
    pub size: usize,
    /// How long an event is kept (`HISTORY_TTL`); zero disables history.
    pub ttl: Duration,
    /// Most users with a stream (`HISTORY_MAX_USERS`).
    pub max_users: usize,
    /// Most bytes of stored events (`HISTORY_MAX_BYTES`).
    pub max_bytes: usize,
}

impl HistoryLimits {
    /// Whether history is kept at all.
    pub fn enabled(&self) -> bool {
        self.size > 0 && !self.ttl.is_zero() && self.max_users > 0 && self.max_bytes > 0
    }
}

/// Where a resuming client picks up, as its stream found it.
#[derive(Debug)]
pub enum Resume {
    /// Replay every event after this position (none when it is the head).
    After(u64),
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
    /// Streams in all shards.
    streams: AtomicUsize,
    /// Events stored in all streams.
    events: AtomicUsize,
    /// Bytes of the stored events, each shared payload counted once.
    bytes: AtomicUsize,
    /// Events dropped, by cause.
    evicted: [AtomicU64; EvictionCause::COUNT],
}

impl History {
    /// Empty history with these limits.
    pub fn new(limits: HistoryLimits) -> Self {
        Self {
            limits,
            streams: AtomicUsize::new(0),
            events: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            evicted: Default::default(),
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

    /// Bytes of the events stored right now (see the module docs for what counts).
    pub fn byte_count(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Events dropped so far for `cause`.
    pub fn evicted(&self, cause: EvictionCause) -> u64 {
        self.evicted[cause as usize].load(Ordering::Relaxed)
    }

    /// Whether there are more streams than `HISTORY_MAX_USERS`.
    pub fn over_user_cap(&self) -> bool {
        self.stream_count() > self.limits.max_users
    }

    /// Whether the stored events take more than `HISTORY_MAX_BYTES`.
    pub fn over_byte_budget(&self) -> bool {
        self.byte_count() > self.limits.max_bytes
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

    /// Counts an entry stored.
    fn stored(&self, entry: &Entry) {
        let payload = entry.event.frame.payload().hold(Ledger::History);
        self.bytes
            .fetch_add(entry.own_bytes() + payload, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an entry dropped for `cause`.
    fn dropped(&self, entry: Entry, cause: EvictionCause) {
        let payload = entry.event.frame.payload().release(Ledger::History);
        self.bytes
            .fetch_sub(entry.own_bytes() + payload, Ordering::Relaxed);
        self.events.fetch_sub(1, Ordering::Relaxed);
        self.evicted[cause as usize].fetch_add(1, Ordering::Relaxed);
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

impl Entry {
    /// What this entry costs apart from its (possibly shared) payload.
    fn own_bytes(&self) -> usize {
        ENTRY_OVERHEAD_BYTES + self.event.frame.head().len()
    }
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
    /// When it was last pushed to (when created, for a stream never pushed to).
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

    /// Drops entries older than the TTL.
    fn expire(&mut self, now: Instant, history: &History) {
        while self
            .entries
            .front()
            .is_some_and(|entry| now.duration_since(entry.stored_at) >= history.limits.ttl)
        {
            self.drop_oldest(history, EvictionCause::Age);
        }
    }

    /// Drops the oldest entry, if any; returns whether there was one.
    fn drop_oldest(&mut self, history: &History, cause: EvictionCause) -> bool {
        let Some(entry) = self.entries.pop_front() else {
            return false;
        };
        self.newest_dropped = Some((Arc::clone(&entry.event.event_id), entry.position));
        history.dropped(entry, cause);
        true
    }

    /// Drops every entry for `cause`, releasing the ring's memory.
    fn clear(&mut self, history: &History, cause: EvictionCause) {
        while self.drop_oldest(history, cause) {}
        self.entries = VecDeque::new();
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

    /// Where a client whose last event was `from` (an event id or a position token) picks up.
    fn resume_after(&self, from: &str) -> Resume {
        if let Some(index) = self.find(from) {
            return Resume::After(self.first_position() + index as u64);
        }
        if let Some((_, position)) = self.newest_dropped.as_ref().filter(|(id, _)| &**id == from) {
            // Every event after it is still in `entries`.
            return Resume::After(*position);
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
        Resume::After(position)
    }

    /// Up to `limit` events after `position` of `epoch`, oldest first, or why they are gone.
    fn events_after(
        &self,
        epoch: &str,
        position: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, ResyncReason> {
        if epoch != &*self.epoch || position > self.position {
            return Err(ResyncReason::EpochChanged);
        }
        if position + 1 < self.first_position() {
            return Err(ResyncReason::Expired);
        }
        let start = (position + 1 - self.first_position()) as usize;
        Ok(self
            .entries
            .range(start..)
            .take(limit)
            .map(|entry| Arc::clone(&entry.event))
            .collect())
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

/// Which of a shard's streams an eviction would take, and how idle it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Idlest {
    /// A stream without events, idle since then.
    Dormant(Instant),
    /// A stream with events, last pushed to then.
    Recent(Instant),
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
        let stream = self.touch(history, &event.user_id, now);
        stream.expire(now, history);
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
        if stream.entries.len() >= history.limits.size {
            stream.drop_oldest(history, EvictionCause::Size);
        }
        let entry = Entry {
            event: Arc::clone(&event.event),
            position: stream.position,
            delivery,
            stored_at: now,
        };
        history.stored(&entry);
        stream.entries.push_back(entry);
        Offered::Stored {
            at: stream.head(),
            delivery,
        }
    }

    /// Where a connecting client of `user` that resumes from `from` (none: a fresh connection)
    /// picks up, and the stream's current head. Creates the stream if needed, so that the head is
    /// a valid point to resume from later.
    pub fn resume(
        &mut self,
        history: &History,
        user: &UserId,
        from: Option<&str>,
        now: Instant,
    ) -> (Resume, StreamPosition) {
        let stream = self.find_or_create(history, user, now);
        stream.expire(now, history);
        let resume = match from {
            None => Resume::After(stream.position),
            Some(from) => stream.resume_after(from),
        };
        (resume, stream.head())
    }

    /// A page of a replay: up to `limit` events of `user`'s stream after `after`, oldest first,
    /// with the stream's head; or why they can no longer be replayed (evicted or expired while
    /// the client was catching up), with the head to resume from.
    pub fn page(
        &mut self,
        history: &History,
        user: &UserId,
        after: &StreamPosition,
        limit: usize,
        now: Instant,
    ) -> (Result<Vec<Arc<Event>>, ResyncReason>, StreamPosition) {
        let stream = self.find_or_create(history, user, now);
        stream.expire(now, history);
        let page = stream.events_after(&after.epoch, after.position, limit);
        (page, stream.head())
    }

    /// The user's stream, moved to the back of `recent` (it is being pushed to), created if absent.
    /// Streams only enter `recent` here, so every stream in it was pushed to at `last_push`.
    fn touch(&mut self, history: &History, user: &UserId, now: Instant) -> &mut Stream {
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
        let Self { recent, dormant } = self;
        if let Some(stream) = recent.get_mut(user) {
            return stream;
        }
        dormant
            .entry(user.clone())
            .or_insert_with(|| history.new_stream(now))
    }

    /// The stream an eviction would take here, if any: the first dormant one, else the least
    /// recently pushed.
    pub fn idlest(&self) -> Option<Idlest> {
        if let Some((_, stream)) = self.dormant.front() {
            return Some(Idlest::Dormant(stream.last_push));
        }
        self.recent
            .front()
            .map(|(_, stream)| Idlest::Recent(stream.last_push))
    }

    /// When this shard's least recently pushed user with events was pushed to, if it has one.
    pub fn least_recently_pushed(&self) -> Option<Instant> {
        self.recent.front().map(|(_, stream)| stream.last_push)
    }

    /// Removes this shard's idlest stream (see [`Self::idlest`]), if it has one, for the user cap.
    /// Returns whether it did.
    pub fn evict_idlest(&mut self, history: &History) -> bool {
        let Some((_, mut stream)) = self.dormant.pop_front().or_else(|| self.recent.pop_front())
        else {
            return false;
        };
        stream.clear(history, EvictionCause::Users);
        history.streams.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Drops the oldest events of this shard's least recently pushed user until the history is
    /// within its byte budget or the user has none left (its stream then turns dormant, keeping
    /// its epoch and position, so its clients get a resync only if they missed what went).
    /// Returns whether it dropped anything or moved a stream.
    pub fn shed_oldest_bytes(&mut self, history: &History) -> bool {
        let Some(user) = self.recent.front().map(|(user, _)| user.clone()) else {
            return false;
        };
        let Some(stream) = self.recent.get_mut(&user) else {
            return false;
        };
        let mut dropped = false;
        while history.over_byte_budget() && stream.drop_oldest(history, EvictionCause::Bytes) {
            dropped = true;
        }
        if stream.entries.is_empty()
            && let Some((user, mut stream)) = self.recent.pop_front()
        {
            stream.entries = VecDeque::new();
            self.dormant.insert(user, stream);
            return true;
        }
        dropped
    }

    /// Moves streams with no push for a whole TTL to `dormant`, dropping their events. Costs one
    /// step per stream moved, plus one.
    pub fn sweep(&mut self, history: &History, now: Instant) {
        let idle = |stream: &Stream| now.duration_since(stream.last_push) >= history.limits.ttl;
        while self.recent.front().is_some_and(|(_, stream)| idle(stream)) {
            let Some((user, mut stream)) = self.recent.pop_front() else {
                break;
            };
            stream.clear(history, EvictionCause::Age);
            self.dormant.insert(user, stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Frame, Label, Payload};

    const SECOND: Duration = Duration::from_secs(1);

    fn history(size: usize, ttl_seconds: u64, max_users: usize) -> History {
        History::new(HistoryLimits {
            size,
            ttl: Duration::from_secs(ttl_seconds),
            max_users,
            max_bytes: usize::MAX,
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
            ack: false,
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

    /// What a client of `name` resuming from `from` is replayed (every page), with the head.
    fn replay(
        shard: &mut ShardHistory,
        history: &History,
        name: &str,
        from: Option<&str>,
        now: Instant,
    ) -> (Vec<String>, StreamPosition) {
        let (resume, head) = shard.resume(history, &user(name), from, now);
        let ids = match resume {
            Resume::After(position) => {
                let after = StreamPosition {
                    epoch: Arc::clone(&head.epoch),
                    position,
                };
                let (page, _) = shard.page(history, &user(name), &after, usize::MAX, now);
                page.unwrap()
                    .iter()
                    .map(|e| e.event_id.to_string())
                    .collect()
            }
            Resume::Resync(reason) => vec![format!("resync:{}", reason.label())],
        };
        (ids, head)
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
        let (resume, head) = replay(&mut shard, &history, "u", Some("a"), now);
        assert_eq!(resume, ["b", "c"]);
        assert_eq!(head.position, 3);
        let (resume, _) = replay(&mut shard, &history, "u", Some("c"), now);
        assert!(resume.is_empty(), "caught up");
        let token = StreamPosition {
            position: 1,
            ..head.clone()
        }
        .to_string();
        assert_eq!(
            replay(&mut shard, &history, "u", Some(&token), now).0,
            ["b", "c"]
        );
        let zero = format!("{}:0", head.epoch);
        assert_eq!(
            replay(&mut shard, &history, "u", Some(&zero), now).0,
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
        let resume =
            |shard: &mut ShardHistory, from: &str| replay(shard, &history, "u", Some(from), now).0;
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
        let (resume, head) = replay(&mut shard, &history, "u", Some("c"), now);
        assert_eq!(resume, ["d"]);
        assert_eq!(
            replay(&mut shard, &history, "u", Some("b"), now).0,
            ["c", "d"],
            "b was the last to go: what followed it is all here"
        );
        assert_eq!(
            replay(&mut shard, &history, "u", Some("a"), now).0,
            ["resync:unknown_event_id"]
        );
        let old = format!("{}:0", head.epoch);
        assert_eq!(
            replay(&mut shard, &history, "u", Some(&old), now).0,
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
        let (resume, _) = replay(&mut shard, &history, "u", Some("b"), start + 6 * SECOND);
        assert!(resume.is_empty());
        assert_eq!(
            history.event_count(),
            1,
            "a expired when the stream was touched"
        );
        shard.sweep(&history, start + 9 * SECOND);
        assert_eq!(history.event_count(), 0, "swept");
        let later = start + 20 * SECOND;
        assert!(
            replay(&mut shard, &history, "u", Some("b"), later)
                .0
                .is_empty()
        );
        assert_eq!(
            replay(&mut shard, &history, "u", Some("a"), later).0,
            ["resync:unknown_event_id"]
        );
        store(&mut shard, &history, "u", "c", later);
        assert_eq!(
            replay(&mut shard, &history, "u", Some("b"), later).0,
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

    /// What the hub does after a change: evicts this (only) shard's idlest streams.
    fn enforce_user_cap(shard: &mut ShardHistory, history: &History) {
        while history.over_user_cap() && shard.evict_idlest(history) {}
    }

    #[test]
    fn the_user_cap_evicts_the_idlest_stream() {
        let (history, mut shard, start) =
            (history(10, 60, 2), ShardHistory::default(), Instant::now());
        store(&mut shard, &history, "old", "1", start);
        store(&mut shard, &history, "mid", "2", start + SECOND);
        store(&mut shard, &history, "old", "3", start + 2 * SECOND);
        assert_eq!(
            shard.least_recently_pushed(),
            Some(start + SECOND),
            "old was pushed to again: mid is the least recently pushed"
        );
        store(&mut shard, &history, "new", "4", start + 3 * SECOND);
        enforce_user_cap(&mut shard, &history);
        assert_eq!(history.stream_count(), 2);
        assert_eq!(history.event_count(), 3);
        assert_eq!(history.evicted(EvictionCause::Users), 1);
        assert_eq!(
            replay(&mut shard, &history, "old", Some("1"), start).0,
            ["3"],
            "mid went, old stayed"
        );
        assert!(shard.evict_idlest(&history));
        assert!(shard.evict_idlest(&history));
        assert!(!shard.evict_idlest(&history));
        assert_eq!((history.stream_count(), history.event_count()), (0, 0));
        assert_eq!(history.byte_count(), 0);
    }

    #[test]
    fn streams_created_by_connecting_clients_are_evicted_before_streams_with_events() {
        let (history, mut shard, now) =
            (history(10, 60, 2), ShardHistory::default(), Instant::now());
        store(&mut shard, &history, "pushed", "1", now);
        let (_, watcher_head) = shard.resume(&history, &user("watcher"), None, now);
        assert_eq!(watcher_head.position, 0);
        shard.resume(&history, &user("newcomer"), None, now);
        enforce_user_cap(&mut shard, &history);
        assert_eq!(history.stream_count(), 2);
        assert_eq!(
            replay(&mut shard, &history, "pushed", Some("1"), now).0,
            Vec::<String>::new(),
            "the stream with events survived"
        );
        let stale = format!("{}:0", watcher_head.epoch);
        assert_eq!(
            replay(&mut shard, &history, "watcher", Some(&stale), now).0,
            ["resync:epoch_changed"],
            "the evicted empty stream comes back with a new epoch"
        );
    }

    #[test]
    fn the_byte_budget_drops_the_least_recently_pushed_users_oldest_events() {
        let history = History::new(HistoryLimits {
            size: 10,
            ttl: Duration::from_secs(60),
            max_users: 10,
            max_bytes: 3 * (ENTRY_OVERHEAD_BYTES + 20),
        });
        let (mut shard, start) = (ShardHistory::default(), Instant::now());
        store(&mut shard, &history, "a", "a1", start);
        store(&mut shard, &history, "a", "a2", start);
        store(&mut shard, &history, "b", "b1", start + SECOND);
        assert!(!history.over_byte_budget());
        store(&mut shard, &history, "b", "b2", start + SECOND);
        assert!(history.over_byte_budget());
        assert!(shard.shed_oldest_bytes(&history));
        assert!(!history.over_byte_budget());
        assert_eq!(history.evicted(EvictionCause::Bytes), 1);
        let (after_a1, head) = replay(&mut shard, &history, "a", Some("a1"), start);
        assert_eq!(after_a1, ["a2"], "a client that saw a1 missed nothing");
        assert_eq!(
            replay(
                &mut shard,
                &history,
                "a",
                Some(&format!("{}:0", head.epoch)),
                start
            )
            .0,
            ["resync:expired"],
            "a was pushed to least recently: its oldest went"
        );
        assert_eq!(
            replay(&mut shard, &history, "b", Some("b1"), start).0,
            ["b2"]
        );
        assert_eq!(history.event_count(), 3);
    }

    #[test]
    fn a_shared_payload_is_counted_once_while_any_entry_holds_it() {
        let history = history(10, 60, 10);
        let mut shard = ShardHistory::default();
        let payload = Payload::new("x".repeat(10_000));
        let shared = |user: &str| Publication {
            user_id: UserId::parse(user).unwrap(),
            id_origin: IdOrigin::Assigned,
            ack: false,
            event: Arc::new(Event {
                event_id: Arc::from("e"),
                event_type: Arc::from("message"),
                frame: Frame::split(format!("{{\"u\":\"{user}\",\"d\":"), Arc::clone(&payload)),
                accepted_at: Instant::now(),
            }),
        };
        let now = Instant::now();
        for user in ["a", "b", "c"] {
            shard.offer(&history, &shared(user), now, Delivery::default);
        }
        let per_entry = ENTRY_OVERHEAD_BYTES + "{\"u\":\"a\",\"d\":".len();
        assert_eq!(history.byte_count(), 10_000 + 3 * per_entry);
        assert!(shard.evict_idlest(&history));
        assert!(shard.evict_idlest(&history));
        assert_eq!(history.byte_count(), 10_000 + per_entry);
        assert!(shard.evict_idlest(&history));
        assert_eq!(history.byte_count(), 0);
    }
}
