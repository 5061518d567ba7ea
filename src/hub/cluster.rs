//! The hub's side of cluster mode: delivering a user's cluster-wide stream to this node's
//! connections, each exactly once and in order, across joins, gaps and broker outages.
//!
//! In cluster mode the stream (positions, history) lives in the broker; events reach this node
//! already [`Sequenced`] (epoch and position), possibly while a connection is still joining or
//! catching up. Every connection therefore carries a [`Feed`]: the position of the last event it
//! was given (its cursor) and, while the broker is fetching what it missed, a buffer of the live
//! events that arrived meanwhile. A [`CatchUp`] from the broker (replayed events, or a resync)
//! is applied under the shard lock, then the buffer is flushed behind it, skipping what the
//! replay already covered. Live events that do not follow the cursor (a gap after a lost
//! subscription, or a new epoch after the broker lost its data) put the connection back into
//! catching up instead of being delivered out of order.
//!
//! The broker never touches a connection directly: it asks the hub, by user and connection id.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{Hub, Outbox, Outgoing, Present, Registration, hand_over, resync_notice};
use crate::protocol::{
    Delivery, DisconnectReason, Event, Resumed, ResyncReason, SlowConsumerCause, StreamPosition,
    Transport, UserId,
};

/// An event of a user's cluster-wide stream, with its place in it.
#[derive(Debug, Clone)]
pub struct Sequenced {
    /// Its epoch and position.
    pub at: StreamPosition,
    /// What clients receive.
    pub event: Arc<Event>,
}

/// What the broker found for a connection that joins or catches up.
#[derive(Debug)]
pub struct CatchUp {
    /// The user's stream head when the broker looked.
    pub head: StreamPosition,
    /// The events after the connection's point (after `head` when resyncing), oldest first.
    pub events: Vec<Sequenced>,
    /// Set when the connection's point cannot be resumed from: it gets a resync notice naming
    /// `head`, then `events`.
    pub resync: Option<ResyncReason>,
    /// The point the connection asked to resume from (quoted in a resync notice).
    pub from: Option<String>,
    /// For a connection catching up: the cursor the broker fetched from. A catch-up whose cursor
    /// is no longer the connection's is stale (another one overtook it) and is ignored.
    pub after: Option<StreamPosition>,
}

/// A connection whose live events went missing and must be caught up from the broker.
#[derive(Debug, Clone)]
pub struct Lagging {
    /// Its user.
    pub user: UserId,
    /// Its node-unique id.
    pub connection: u64,
    /// The last event it was given.
    pub cursor: StreamPosition,
}

/// A connection that left this node (sent to the broker, which forgets its presence).
#[derive(Debug, Clone)]
pub struct Departure {
    /// Its user.
    pub user: UserId,
    /// Its node-unique id.
    pub connection: u64,
    /// Why it ended.
    pub reason: DisconnectReason,
}

/// One connection's place in its user's cluster-wide stream.
#[derive(Debug, Default)]
pub(super) struct Feed {
    /// The last event given to the connection; `None` until its join completes.
    cursor: Option<StreamPosition>,
    /// `Some` while the broker fetches what the connection missed: live events wait here.
    pending: Option<Vec<Sequenced>>,
}

impl Feed {
    /// A feed for a joining connection: everything waits until its catch-up arrives.
    pub(super) fn joining() -> Mutex<Self> {
        Mutex::new(Self {
            cursor: None,
            pending: Some(Vec::new()),
        })
    }
}

/// Where `event` stands relative to `cursor`.
enum Fit {
    /// The next event: deliver it.
    Next,
    /// Already given: skip it.
    Seen,
    /// Something is missing before it (or it is from another epoch): catch up first.
    Gap,
}

fn fit(cursor: Option<&StreamPosition>, event: &StreamPosition) -> Fit {
    match cursor {
        None => Fit::Next,
        // Epochs are ULIDs, ordered by creation: an event of an older stream than the cursor's
        // was overtaken by a resync.
        Some(cursor) if event.epoch < cursor.epoch => Fit::Seen,
        Some(cursor) if cursor.epoch != event.epoch => Fit::Gap,
        Some(cursor) if event.position <= cursor.position => Fit::Seen,
        Some(cursor) if event.position == cursor.position + 1 => Fit::Next,
        Some(_) => Fit::Gap,
    }
}

impl Hub {
    /// Has every connection that leaves this node reported to `departures` (cluster mode).
    pub fn report_departures(&self, departures: mpsc::UnboundedSender<Departure>) {
        // Set once, at start-up; a second call is a no-op.
        let _ = self.departures.set(departures);
    }

    /// Registers a connection of `user` that joins the cluster-wide stream: it receives nothing
    /// until [`Hub::complete_catch_up`] gives it its starting point. The cluster enforces the
    /// per-user limit, not this hub.
    pub fn attach_joining(
        self: &Arc<Self>,
        user: UserId,
        transport: Transport,
    ) -> (Registration, Outbox) {
        let (connection, outbox) = self.new_connection(transport, Some(Feed::joining()));
        {
            let mut shard = self.shard(&user).lock();
            let connections = shard.connections.entry(user.clone()).or_default();
            self.add_connection(&user, connections, &connection);
        }
        let registration = Registration {
            hub: Arc::clone(self),
            user,
            connection,
        };
        (registration, outbox)
    }

    /// Applies what the broker found for one catching-up connection: its missed events or a
    /// resync notice, then the live events that waited meanwhile. Returns the connection's cursor
    /// when the waiting events do not follow on (they stay waiting: fetch again from there).
    pub fn complete_catch_up(
        &self,
        user: &UserId,
        connection: u64,
        catch_up: CatchUp,
    ) -> Option<StreamPosition> {
        let cursor = self.apply_catch_up(user, connection, catch_up);
        self.after_change();
        cursor
    }

    /// [`Hub::complete_catch_up`] under the user's shard lock.
    fn apply_catch_up(
        &self,
        user: &UserId,
        connection: u64,
        catch_up: CatchUp,
    ) -> Option<StreamPosition> {
        let shard = self.shard(user).lock();
        let connection = shard
            .connections
            .get(user)?
            .iter()
            .find(|c| c.id == connection)?;
        let mut feed = connection.feed.as_ref()?.lock();
        if catch_up.after.is_some() && catch_up.after != feed.cursor {
            return None;
        }
        let waiting = feed.pending.take()?;
        if let Some(reason) = catch_up.resync {
            let from = catch_up.from.as_deref().unwrap_or_default();
            let notice = resync_notice(user, reason, from, Some(&catch_up.head));
            connection.offer(Outgoing::Replay(Arc::new(notice)));
            feed.cursor = Some(catch_up.head.clone());
            // A joining connection's resync is counted with its resume; this one came live.
            if catch_up.after.is_some() {
                self.metrics.resumed(Resumed::Resync(reason));
            }
        }
        for event in &catch_up.events {
            if let Fit::Next = fit(feed.cursor.as_ref(), &event.at) {
                connection.offer(Outgoing::Replay(Arc::clone(&event.event)));
                feed.cursor = Some(event.at.clone());
            }
        }
        if feed.cursor.is_none() {
            feed.cursor = Some(catch_up.head);
        }
        let mut waiting = waiting.into_iter();
        while let Some(event) = waiting.next() {
            match fit(feed.cursor.as_ref(), &event.at) {
                Fit::Seen => {}
                Fit::Next => {
                    connection.offer(Outgoing::Live(event.event));
                    feed.cursor = Some(event.at);
                }
                Fit::Gap => {
                    feed.pending = Some(std::iter::once(event).chain(waiting).collect());
                    return feed.cursor.clone();
                }
            }
        }
        None
    }

    /// Hands an event of `user`'s stream to each of the user's connections here that is due to
    /// receive it next; buffers it for those catching up. Returns the connections it revealed a
    /// gap for (now catching up, with this event waiting): the broker must fetch what they missed.
    pub fn deliver_sequenced(&self, user: &UserId, event: &Sequenced) -> Vec<Lagging> {
        let mut lagging = Vec::new();
        let mut delivery = Delivery::default();
        {
            let shard = self.shard(user).lock();
            for connection in shard.connections.get(user).into_iter().flatten() {
                let Some(feed) = connection.feed.as_ref() else {
                    continue;
                };
                if connection.is_closing() {
                    continue;
                }
                let mut feed = feed.lock();
                let Feed { cursor, pending } = &mut *feed;
                if let Some(waiting) = pending {
                    if waiting.len() >= self.queue_limits.items {
                        connection.slow_consumer(SlowConsumerCause::QueueEvents);
                    } else {
                        waiting.push(event.clone());
                    }
                    continue;
                }
                match fit(cursor.as_ref(), &event.at) {
                    Fit::Seen => {}
                    Fit::Next => {
                        hand_over(connection, &event.event, &mut delivery);
                        *cursor = Some(event.at.clone());
                    }
                    Fit::Gap => {
                        *pending = Some(vec![event.clone()]);
                        if let Some(cursor) = cursor.clone() {
                            lagging.push(Lagging {
                                user: user.clone(),
                                connection: connection.id,
                                cursor,
                            });
                        }
                    }
                }
            }
        }
        self.metrics.events_handed_over(delivery);
        self.after_change();
        lagging
    }

    /// Puts every connection of the `concerned` users that is not already catching up into
    /// catching up (after the broker lost events, e.g. while its subscription was down), and
    /// returns every such connection with a cursor to fetch from. Connections still joining are
    /// left to their join.
    pub fn begin_catch_up_where(&self, concerned: impl Fn(&UserId) -> bool) -> Vec<Lagging> {
        let mut lagging = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (user, connections) in shard.connections.iter().filter(|(user, _)| concerned(user))
            {
                for connection in connections {
                    let Some(feed) = connection.feed.as_ref() else {
                        continue;
                    };
                    let mut feed = feed.lock();
                    let Some(cursor) = feed.cursor.clone() else {
                        continue;
                    };
                    feed.pending.get_or_insert_with(Vec::new);
                    lagging.push(Lagging {
                        user: user.clone(),
                        connection: connection.id,
                        cursor,
                    });
                }
            }
        }
        lagging
    }

    /// Whether `user` has a connection on this node (joining ones included).
    pub fn holds(&self, user: &UserId) -> bool {
        self.shard(user).lock().connections.contains_key(user)
    }

    /// Every connection of the `concerned` users on this node, as the cluster's presence records it.
    pub fn present_where(&self, concerned: impl Fn(&UserId) -> bool) -> Vec<Present> {
        let mut present = Vec::with_capacity(self.connection_count());
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (user, connections) in shard.connections.iter().filter(|(user, _)| concerned(user))
            {
                present.extend(
                    connections
                        .iter()
                        .map(|connection| connection.present(user)),
                );
            }
        }
        present
    }

    /// Asks one connection of `user` to close (another node took its place, or an operator).
    pub fn kick(&self, user: &UserId, connection: u64, reason: DisconnectReason) {
        let shard = self.shard(user).lock();
        if let Some(connection) = shard
            .connections
            .get(user)
            .and_then(|connections| connections.iter().find(|c| c.id == connection))
        {
            connection.request_close(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::QueueLimits;
    use super::*;
    use crate::hub::HubMode;
    use crate::metrics::Metrics;
    use crate::protocol::Frame;

    const CAPACITY: usize = 8;

    fn hub() -> Arc<Hub> {
        let metrics = Arc::new(Metrics::default());
        let limits = QueueLimits {
            items: CAPACITY,
            bytes: usize::MAX,
            node_bytes: usize::MAX,
        };
        Arc::new(Hub::new(HubMode::Cluster, limits, metrics))
    }

    fn user() -> UserId {
        UserId::parse("u").unwrap()
    }

    fn at(epoch: &str, position: u64) -> StreamPosition {
        StreamPosition {
            epoch: Arc::from(epoch),
            position,
        }
    }

    fn event(epoch: &str, position: u64) -> Sequenced {
        let id = format!("{epoch}{position}");
        Sequenced {
            at: at(epoch, position),
            event: Arc::new(Event {
                event_id: Arc::from(id.as_str()),
                event_type: Arc::from("message"),
                frame: Frame::from(id),
                accepted_at: Instant::now(),
            }),
        }
    }

    fn catch_up(head: StreamPosition, events: Vec<Sequenced>) -> CatchUp {
        CatchUp {
            head,
            events,
            resync: None,
            from: None,
            after: None,
        }
    }

    fn drain(outbox: &mut Outbox) -> Vec<String> {
        std::iter::from_fn(|| outbox.try_recv().ok())
            .map(|item| item.frame().to_string())
            .collect()
    }

    #[test]
    fn live_events_wait_for_the_join_and_are_not_given_twice() {
        let hub = hub();
        let (registration, mut outbox) = hub.attach_joining(user(), Transport::WebSocket);
        // Published while the broker looked up the replay: 3 is also in the replay.
        for position in [3, 4] {
            assert!(
                hub.deliver_sequenced(&user(), &event("A", position))
                    .is_empty()
            );
        }
        assert!(
            drain(&mut outbox).is_empty(),
            "nothing before the join completes"
        );
        let joined = catch_up(at("A", 3), vec![event("A", 2), event("A", 3)]);
        assert_eq!(
            hub.complete_catch_up(&user(), registration.id(), joined),
            None
        );
        assert_eq!(drain(&mut outbox), ["A2", "A3", "A4"]);
        hub.deliver_sequenced(&user(), &event("A", 5));
        hub.deliver_sequenced(&user(), &event("A", 5));
        assert_eq!(drain(&mut outbox), ["A5"], "a repeat is skipped");
    }

    #[test]
    fn a_gap_holds_events_back_until_caught_up() {
        let hub = hub();
        let (registration, mut outbox) = hub.attach_joining(user(), Transport::Sse);
        hub.complete_catch_up(&user(), registration.id(), catch_up(at("A", 1), vec![]));
        let lagging = hub.deliver_sequenced(&user(), &event("A", 4));
        assert_eq!(lagging.len(), 1);
        assert_eq!(lagging[0].cursor, at("A", 1));
        hub.deliver_sequenced(&user(), &event("A", 5));
        assert!(drain(&mut outbox).is_empty(), "held back behind the gap");
        let found = catch_up(
            at("A", 4),
            vec![event("A", 2), event("A", 3), event("A", 4)],
        );
        assert_eq!(
            hub.complete_catch_up(&user(), registration.id(), found),
            None
        );
        assert_eq!(drain(&mut outbox), ["A2", "A3", "A4", "A5"]);
    }

    #[test]
    fn a_catch_up_that_still_leaves_a_gap_asks_for_another() {
        let hub = hub();
        let (registration, mut outbox) = hub.attach_joining(user(), Transport::WebSocket);
        hub.deliver_sequenced(&user(), &event("A", 9));
        let stale = catch_up(at("A", 5), vec![]);
        assert_eq!(
            hub.complete_catch_up(&user(), registration.id(), stale),
            Some(at("A", 5))
        );
        let rest = catch_up(
            at("A", 8),
            vec![event("A", 6), event("A", 7), event("A", 8)],
        );
        assert_eq!(
            hub.complete_catch_up(&user(), registration.id(), rest),
            None
        );
        assert_eq!(drain(&mut outbox), ["A6", "A7", "A8", "A9"]);
    }

    #[test]
    fn a_lost_stream_gets_a_resync_then_the_new_epoch() {
        let hub = hub();
        let (registration, mut outbox) = hub.attach_joining(user(), Transport::WebSocket);
        hub.complete_catch_up(&user(), registration.id(), catch_up(at("A", 7), vec![]));
        let lagging = hub.begin_catch_up_where(|_| true);
        assert_eq!(lagging.len(), 1, "after an outage everyone catches up");
        hub.deliver_sequenced(&user(), &event("B", 1));
        hub.deliver_sequenced(&user(), &event("B", 2));
        hub.deliver_sequenced(&user(), &event("B", 3));
        // The new stream is whole from its start: the resync point is B:0, and B1, B2 follow.
        let lost = CatchUp {
            head: at("B", 0),
            events: vec![event("B", 1), event("B", 2)],
            resync: Some(ResyncReason::EpochChanged),
            from: Some("A:7".to_owned()),
            after: None,
        };
        assert_eq!(
            hub.complete_catch_up(&user(), registration.id(), lost),
            None
        );
        let frames = drain(&mut outbox);
        assert_eq!(frames.len(), 4, "{frames:?}");
        let notice: serde_json::Value = serde_json::from_str(&frames[0]).unwrap();
        assert_eq!(notice["event_type"], "resync");
        assert_eq!(notice["event_id"], "B:0");
        assert_eq!(notice["data"]["reason"], "epoch_changed");
        assert_eq!(frames[1..], ["B1", "B2", "B3"]);
    }

    #[test]
    fn stale_catch_ups_and_events_of_a_lost_stream_change_nothing() {
        let hub = hub();
        let (registration, mut outbox) = hub.attach_joining(user(), Transport::WebSocket);
        hub.complete_catch_up(&user(), registration.id(), catch_up(at("A", 2), vec![]));
        hub.begin_catch_up_where(|_| true);
        // Still waiting: an old-stream event (overtaken later) and a new-stream one.
        hub.deliver_sequenced(&user(), &event("A", 5));
        hub.deliver_sequenced(&user(), &event("B", 1));
        let lost = CatchUp {
            head: at("B", 0),
            events: Vec::new(),
            resync: Some(ResyncReason::EpochChanged),
            from: Some("A:2".to_owned()),
            after: Some(at("A", 2)),
        };
        assert_eq!(
            hub.complete_catch_up(&user(), registration.id(), lost),
            None
        );
        let frames = drain(&mut outbox);
        assert_eq!(
            frames.len(),
            2,
            "resync, then B1; A5 is dropped: {frames:?}"
        );
        assert_eq!(frames[1], "B1");
        let resyncs = || hub.metrics.counts().resyncs[ResyncReason::EpochChanged as usize];
        assert_eq!(resyncs(), 1, "a live resync is counted");
        // A second catch-up fetched from the old cursor arrives late: ignored.
        hub.begin_catch_up_where(|_| true);
        let late = CatchUp {
            head: at("B", 0),
            events: vec![event("B", 1)],
            resync: Some(ResyncReason::EpochChanged),
            from: Some("A:2".to_owned()),
            after: Some(at("A", 2)),
        };
        assert_eq!(
            hub.complete_catch_up(&user(), registration.id(), late),
            None
        );
        hub.complete_catch_up(
            &user(),
            registration.id(),
            CatchUp {
                after: Some(at("B", 1)),
                ..catch_up(at("B", 1), vec![])
            },
        );
        hub.deliver_sequenced(&user(), &event("B", 2));
        assert_eq!(drain(&mut outbox), ["B2"], "no second resync, no B1 again");
        assert_eq!(resyncs(), 1, "nor counted");
    }

    #[tokio::test]
    async fn a_joiner_that_waits_too_long_is_closed_as_a_slow_consumer() {
        let hub = hub();
        let (registration, _outbox) = hub.attach_joining(user(), Transport::WebSocket);
        for position in 1..=CAPACITY as u64 + 1 {
            hub.deliver_sequenced(&user(), &event("A", position));
        }
        assert_eq!(
            registration.close_requested().await,
            DisconnectReason::SlowConsumer
        );
    }

    #[tokio::test]
    async fn kicks_and_presence_name_connections() {
        let hub = hub();
        let (first, _a) = hub.attach_joining(user(), Transport::WebSocket);
        let (_second, _b) = hub.attach_joining(user(), Transport::Sse);
        let present = hub.present_where(|_| true);
        assert_eq!(present.len(), 2);
        assert!(present.iter().any(|p| p.transport == Transport::Sse));
        assert!(present.iter().all(|p| p.connected_at_ms > 0));
        hub.kick(&user(), first.id(), DisconnectReason::Replaced);
        assert_eq!(first.close_requested().await, DisconnectReason::Replaced);
    }
}
