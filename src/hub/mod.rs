//! This node's registry of live connections and its users' history: who is connected, what they
//! were sent, and delivery to them.
//!
//! The registry is split into [`SHARDS`] independently locked parts, each holding its users'
//! connections and history streams, so pushes for different users rarely contend and no lock is
//! global. Publishing to one user happens entirely under that user's shard lock: storing the event
//! in the history and handing it to the connections is one step, so the order in which pushes take
//! the lock is the order of positions in the history and the order every connection of the user
//! receives them. Attaching a resuming connection is one step under the same lock too: its missed
//! events (or a resync notice) are queued before it is registered, so nothing falls between
//! replay and live and nothing comes twice.
//!
//! Delivery never waits. Each connection has a bounded queue (its [`Outbox`]) drained by
//! its own session; when a queue is full the connection is told to close as a slow consumer
//! and the event counts as not delivered to it. One stalled client therefore costs the others
//! nothing, and the server's memory per connection is bounded by the queue capacity.
//!
//! A hub runs in one of two [modes](HubMode): standalone (it keeps the history and enforces the
//! per-user limit itself) or as one node of a cluster (the broker does both, and [`cluster`] keeps
//! each connection in step with its user's cluster-wide stream).
//!
//! The hub never touches sockets and knows nothing about WebSocket or HTTP: it hands events to
//! queues and raises close requests; the transports do the rest. It counts the events it hands to
//! queues (and those that did not fit); what a push achieved as a whole is counted by its caller.

mod cluster;

pub use cluster::{CatchUp, Departure, Lagging, Sequenced};

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use strum::{EnumCount, VariantArray};
use tokio::sync::{Notify, mpsc};

use crate::history::{History, HistoryLimits, Offered, Resume, ShardHistory};
use crate::metrics::Metrics;
use crate::protocol::{
    Delivery, DisconnectReason, Event, Frame, Label, Publication, RESYNC_EVENT_TYPE, Resumed,
    ResyncReason, StreamPosition, Transport, UserId, resync_frame,
};

/// Number of independently locked partitions of the registry.
pub const SHARDS: usize = 64;

/// What to do with a connection that would exceed the per-user limit (`USER_LIMIT_POLICY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UserLimitPolicy {
    /// Refuse the new connection (close code 1008); the existing ones are untouched.
    Reject,
    /// Accept the new connection and close the user's oldest one (close code 1008).
    ReplaceOldest,
}

/// How many connections one user may hold, and what happens beyond.
#[derive(Debug, Clone, Copy)]
pub struct UserLimit {
    /// Most connections per user (`MAX_CONNECTIONS_PER_USER`).
    pub per_user: usize,
    /// What to do beyond `per_user`.
    pub policy: UserLimitPolicy,
}

/// How a hub serves its users: alone, or as one node of a cluster.
#[derive(Debug, Clone, Copy)]
pub enum HubMode {
    /// A single node: the hub keeps each user's history and enforces the per-user limit.
    Standalone {
        /// The per-user connection limit.
        user_limit: UserLimit,
        /// How much history to keep.
        history: HistoryLimits,
    },
    /// One node of a cluster: the broker keeps the history and enforces the per-user limit
    /// cluster-wide; every connection here follows its user's cluster-wide stream (see
    /// [`cluster`]).
    Cluster,
}

/// The mode with its running state.
#[derive(Debug)]
enum Mode {
    Standalone {
        user_limit: UserLimit,
        history: History,
    },
    Cluster,
}

/// What publishing one event achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Its delivery to live connections (for a duplicate: the original's).
    pub delivery: Delivery,
    /// Where it is stored in the user's history, when history is on.
    pub stored: Option<StreamPosition>,
    /// Whether it repeats an event already in the history (same upstream `event_id`), and so was
    /// not delivered again.
    pub duplicate: bool,
}

/// Refusal of a new connection by the per-user limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("user already has {limit} connections (MAX_CONNECTIONS_PER_USER)")]
pub struct UserLimitReached {
    /// The configured limit.
    pub limit: usize,
}

/// One item of a connection's outbox.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// An event pushed while the connection was registered: timed from its acceptance to its
    /// write (push-to-socket latency). Shared with the history and other outboxes.
    Live(Arc<Event>),
    /// An event the connection missed, replayed from history, or a resync notice: written like
    /// a live one, not timed.
    Replay(Arc<Event>),
    /// A reply to this client alone (a WebSocket ack).
    Reply(Frame),
}

impl Outgoing {
    /// The JSON to send.
    pub fn frame(&self) -> &Frame {
        match self {
            Self::Live(event) | Self::Replay(event) => &event.frame,
            Self::Reply(frame) => frame,
        }
    }

    /// The event, unless this is a reply.
    pub fn event(&self) -> Option<&Event> {
        match self {
            Self::Live(event) | Self::Replay(event) => Some(event),
            Self::Reply(_) => None,
        }
    }
}

/// A connection as the cluster's presence and the administrative API see it.
#[derive(Debug, Clone)]
pub struct Present {
    /// Its user.
    pub user: UserId,
    /// Its node-unique id.
    pub connection: u64,
    /// How it is connected.
    pub transport: Transport,
    /// When it connected, in unix milliseconds.
    pub connected_at_ms: u64,
}

/// The current time in unix milliseconds.
fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The hub's handle on one connection: its queue and a way to ask it to close.
#[derive(Debug)]
struct Connection {
    /// Unique on this node, to find the connection again when it unregisters.
    id: u64,
    transport: Transport,
    /// Frames for the connection's writer. Bounded: a full queue means a slow consumer.
    queue: mpsc::Sender<Outgoing>,
    /// Set once, when the hub asks the connection to close (slow consumer, replaced): the
    /// reason's index + 1; 0 otherwise. The session's own reasons to end (ping timeout, client
    /// close, errors) unregister it instead.
    close_reason: AtomicU8,
    /// Wakes the connection's task after `close_reason` is set.
    close_requested: Notify,
    /// When it connected, in unix milliseconds.
    connected_at_ms: u64,
    /// Its place in the user's cluster-wide stream: `Some` exactly in cluster mode.
    feed: Option<Mutex<cluster::Feed>>,
}

impl Connection {
    /// Whether someone has asked this connection to close.
    fn is_closing(&self) -> bool {
        self.close_reason.load(Ordering::Acquire) != 0
    }

    /// Queues `item` for the connection without waiting. A full queue means the client is not
    /// reading: the connection is asked to close as a slow consumer. Returns whether it took it.
    fn offer(&self, item: Outgoing) -> bool {
        match self.queue.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.request_close(DisconnectReason::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// This connection of `user` as the cluster's presence and the admin API see it.
    fn present(&self, user: &UserId) -> Present {
        Present {
            user: user.clone(),
            connection: self.id,
            transport: self.transport,
            connected_at_ms: self.connected_at_ms,
        }
    }

    /// Asks the connection to close; the first reason given wins.
    fn request_close(&self, reason: DisconnectReason) {
        let code = reason as u8 + 1;
        if self
            .close_reason
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.close_requested.notify_one();
        }
    }

    /// The reason the hub asked this connection to close, if it has.
    fn close_reason(&self) -> Option<DisconnectReason> {
        let code = self.close_reason.load(Ordering::Acquire);
        let index = usize::from(code).checked_sub(1)?;
        DisconnectReason::VARIANTS.get(index).copied()
    }
}

/// One partition of the registry: its users' connections and their histories, under one lock.
#[derive(Debug, Default)]
struct Shard {
    connections: HashMap<UserId, Vec<Arc<Connection>>, foldhash::fast::RandomState>,
    /// Empty in cluster mode.
    history: ShardHistory,
}

/// A newly registered connection: its registration, its outbox (already holding the replay or
/// resync notice, if any) and how its resume went.
#[derive(Debug)]
pub struct Attached {
    /// Unregisters the connection when dropped.
    pub registration: Registration,
    /// What to write to the client, in order.
    pub outbox: Outbox,
    /// The user's stream position when the connection joined it (history on and consulted).
    pub head: Option<StreamPosition>,
    /// What the resume achieved, when the client asked to resume.
    pub resumed: Option<Resumed>,
}

/// The registry of this node's connections, and the history of its users.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    /// Picks a user's shard; randomly seeded so clients cannot aim at one shard.
    shard_hasher: foldhash::fast::RandomState,
    /// Registered connections by transport, kept exact for `/health` and `/metrics`.
    connections: [AtomicUsize; Transport::COUNT],
    /// Users with at least one registered connection.
    users: AtomicUsize,
    next_connection_id: AtomicU64,
    /// Capacity of each connection's outbound queue, in items (`WS_SEND_QUEUE`).
    queue_capacity: usize,
    mode: Mode,
    metrics: Arc<Metrics>,
    /// Where departing connections are reported (cluster mode).
    departures: OnceLock<mpsc::UnboundedSender<Departure>>,
}

impl Hub {
    /// Creates an empty hub whose connections queue at most `queue_capacity` items each.
    pub fn new(mode: HubMode, queue_capacity: usize, metrics: Arc<Metrics>) -> Self {
        let mode = match mode {
            HubMode::Standalone {
                user_limit,
                history,
            } => Mode::Standalone {
                user_limit,
                history: History::new(history),
            },
            HubMode::Cluster => Mode::Cluster,
        };
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_hasher: foldhash::fast::RandomState::default(),
            connections: Default::default(),
            users: AtomicUsize::new(0),
            next_connection_id: AtomicU64::new(1),
            queue_capacity,
            mode,
            metrics,
            departures: OnceLock::new(),
        }
    }

    fn shard_index(&self, user: &UserId) -> usize {
        self.shard_hasher.hash_one(user) as usize % self.shards.len()
    }

    fn shard(&self, user: &UserId) -> &Mutex<Shard> {
        &self.shards[self.shard_index(user)]
    }

    /// Connections registered right now, all transports.
    pub fn connection_count(&self) -> usize {
        self.connections
            .iter()
            .map(|count| count.load(Ordering::Acquire))
            .sum()
    }

    /// Connections registered right now over one transport.
    pub fn transport_count(&self, transport: Transport) -> usize {
        self.connections[transport as usize].load(Ordering::Acquire)
    }

    /// Users with at least one connection right now.
    pub fn user_count(&self) -> usize {
        self.users.load(Ordering::Acquire)
    }

    /// The users' history when this hub keeps one (standalone with history on).
    pub fn history(&self) -> Option<&History> {
        match &self.mode {
            Mode::Standalone { history, .. } if history.enabled() => Some(history),
            _ => None,
        }
    }

    /// Registers a new connection for `user` (standalone mode), applying the per-user limit and
    /// its policy. When the client resumes from `resume_from` (an `event_id` or position token),
    /// the events it missed, or a resync notice, are queued first, in the same critical section
    /// as the registration: no live event can fall between them or come twice. `want_head` asks
    /// for the stream's position even without a resume (SSE announces it).
    pub fn attach(
        self: &Arc<Self>,
        user: UserId,
        transport: Transport,
        resume_from: Option<&str>,
        want_head: bool,
    ) -> Result<Attached, UserLimitReached> {
        let (connection, outbox) = self.new_connection(transport, None);
        let shard_index = self.shard_index(&user);
        let (user_limit, history) = match &self.mode {
            Mode::Standalone {
                user_limit,
                history,
            } => (Some(*user_limit), history.enabled().then_some(history)),
            Mode::Cluster => (None, None),
        };
        let (head, resumed) = {
            let mut guard = self.shards[shard_index].lock();
            let Shard {
                connections,
                history: shard_history,
            } = &mut *guard;
            let connections = connections.entry(user.clone()).or_default();
            if let Some(limit) = user_limit {
                enforce_user_limit(limit, connections)?;
            }
            let (resume, head) = match history {
                Some(history) if want_head || resume_from.is_some() => {
                    let now = Instant::now();
                    let (resume, head) = shard_history.resume(history, &user, resume_from, now);
                    (resume, Some(head))
                }
                None if resume_from.is_some() => {
                    (Resume::Resync(ResyncReason::HistoryDisabled), None)
                }
                _ => (Resume::Replay(Vec::new()), None),
            };
            let resumed = resume_from
                .map(|from| queue_resume(&connection, resume, &user, from, head.as_ref()));
            self.add_connection(connections, &connection);
            (head, resumed)
        };
        if history.is_some() {
            self.keep_history_under_cap(shard_index);
        }
        Ok(Attached {
            registration: Registration {
                hub: Arc::clone(self),
                user,
                connection,
            },
            outbox,
            head,
            resumed,
        })
    }

    fn new_connection(
        &self,
        transport: Transport,
        feed: Option<Mutex<cluster::Feed>>,
    ) -> (Arc<Connection>, Outbox) {
        let (sender, outbox) = mpsc::channel(self.queue_capacity);
        let connection = Arc::new(Connection {
            id: self.next_connection_id.fetch_add(1, Ordering::Relaxed),
            transport,
            queue: sender,
            close_reason: AtomicU8::new(0),
            close_requested: Notify::new(),
            connected_at_ms: unix_millis_now(),
            feed,
        });
        (connection, outbox)
    }

    /// Adds `connection` to its user's `connections` (under the shard lock) and counts it.
    fn add_connection(&self, connections: &mut Vec<Arc<Connection>>, connection: &Arc<Connection>) {
        if connections.is_empty() {
            self.users.fetch_add(1, Ordering::AcqRel);
        }
        connections.push(Arc::clone(connection));
        self.connections[connection.transport as usize].fetch_add(1, Ordering::AcqRel);
    }

    fn unregister(&self, user: &UserId, connection: &Connection) {
        let mut shard = self.shard(user).lock();
        let Some(connections) = shard.connections.get_mut(user) else {
            return;
        };
        let Some(position) = connections.iter().position(|c| c.id == connection.id) else {
            return;
        };
        connections.remove(position);
        self.connections[connection.transport as usize].fetch_sub(1, Ordering::AcqRel);
        if connections.is_empty() {
            shard.connections.remove(user);
            self.users.fetch_sub(1, Ordering::AcqRel);
        }
        drop(shard);
        if let Some(departures) = self.departures.get() {
            // The receiver only goes away with the broker, at exit.
            let _ = departures.send(Departure {
                user: user.clone(),
                connection: connection.id,
            });
        }
    }

    /// Stores `publication` in its user's history (when this hub keeps one) and hands it to every
    /// open connection of the user, without waiting. Connections whose queue is full are asked to
    /// close as slow consumers. A repeat of an upstream `event_id` still in the history is not
    /// delivered again.
    pub fn publish(&self, publication: &Publication) -> Outcome {
        let shard_index = self.shard_index(&publication.user_id);
        let history = self.history();
        let outcome = {
            let mut guard = self.shards[shard_index].lock();
            let Shard {
                connections,
                history: shard_history,
            } = &mut *guard;
            let connections = connections.get(&publication.user_id);
            let deliver = || self.deliver(connections, &publication.event);
            match history {
                Some(history) => {
                    match shard_history.offer(history, publication, Instant::now(), deliver) {
                        Offered::Stored { at, delivery } => Outcome {
                            delivery,
                            stored: Some(at),
                            duplicate: false,
                        },
                        Offered::Duplicate { at, delivery } => Outcome {
                            delivery,
                            stored: Some(at),
                            duplicate: true,
                        },
                    }
                }
                None => Outcome {
                    delivery: deliver(),
                    stored: None,
                    duplicate: false,
                },
            }
        };
        if history.is_some() {
            self.keep_history_under_cap(shard_index);
        }
        outcome
    }

    /// Hands a live `event` to each open connection in `connections`, and counts the handoffs.
    fn deliver(&self, connections: Option<&Vec<Arc<Connection>>>, event: &Arc<Event>) -> Delivery {
        let mut delivery = Delivery::default();
        for connection in connections.into_iter().flatten() {
            // A closing connection is no longer part of the user's live set: the push that made
            // it a slow consumer already counted it as failed.
            if !connection.is_closing() {
                hand_over(connection, event, &mut delivery);
            }
        }
        self.metrics.events_handed_over(delivery);
        delivery
    }

    /// After a stream was created in shard `creator`, which had nothing else to give up: evicts
    /// idlest streams from the other shards until the history is back under its user cap. The
    /// creator's own new stream must stay. Takes one lock at a time, none held on entry.
    fn keep_history_under_cap(&self, creator: usize) {
        let Some(history) = self.history() else {
            return;
        };
        if !history.over_capacity() {
            return;
        }
        let others = self
            .shards
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != creator);
        for (_, shard) in others {
            if !history.over_capacity() {
                return;
            }
            shard.lock().history.evict_idlest(history);
        }
    }

    /// The connections of `user` on this node, oldest first.
    pub fn connections_of(&self, user: &UserId) -> Vec<Present> {
        let shard = self.shard(user).lock();
        shard
            .connections
            .get(user)
            .into_iter()
            .flatten()
            .map(|connection| connection.present(user))
            .collect()
    }

    /// Asks every connection of `user` on this node to close for `reason`; returns how many were
    /// asked (those already closing are not counted again).
    pub fn disconnect_user(&self, user: &UserId, reason: DisconnectReason) -> usize {
        let shard = self.shard(user).lock();
        let open = shard
            .connections
            .get(user)
            .into_iter()
            .flatten()
            .filter(|connection| !connection.is_closing());
        let mut count = 0;
        for connection in open {
            connection.request_close(reason);
            count += 1;
        }
        count
    }

    /// Every user with a connection on this node right now.
    pub fn online_users(&self) -> Vec<UserId> {
        let mut users = Vec::with_capacity(self.user_count());
        for shard in self.shards.iter() {
            users.extend(shard.lock().connections.keys().cloned());
        }
        users
    }

    /// Reclaims the events of streams idle for longer than the TTL, one shard at a time.
    pub fn sweep_history(&self) {
        let Some(history) = self.history() else {
            return;
        };
        let now = Instant::now();
        for shard in self.shards.iter() {
            shard.lock().history.sweep(history, now);
        }
    }
}

/// Offers a live `event` to one connection, counting the result in `delivery`: the one place, in
/// both modes, where a live push is offered to a connection and counted (replays, resync notices
/// and a joiner's waiting events are queued by `Connection::offer` uncounted, as deliveries of
/// pushes already counted).
fn hand_over(connection: &Connection, event: &Arc<Event>, delivery: &mut Delivery) {
    if connection.offer(Outgoing::Live(Arc::clone(event))) {
        delivery.delivered += 1;
    } else {
        delivery.failed += 1;
    }
}

/// Makes room for one more connection among `connections` of one user, or refuses it.
fn enforce_user_limit(
    limit: UserLimit,
    connections: &[Arc<Connection>],
) -> Result<(), UserLimitReached> {
    // Connections already closing (replaced, slow) no longer count against the user.
    let open = connections.iter().filter(|c| !c.is_closing()).count();
    if open < limit.per_user {
        return Ok(());
    }
    match limit.policy {
        UserLimitPolicy::Reject => Err(UserLimitReached {
            limit: limit.per_user,
        }),
        UserLimitPolicy::ReplaceOldest => {
            // The replaced connection stays registered until its task unregisters it, which
            // keeps the counts exact; it receives nothing new meanwhile.
            for oldest in connections
                .iter()
                .filter(|c| !c.is_closing())
                .take(open + 1 - limit.per_user)
            {
                oldest.request_close(DisconnectReason::Replaced);
            }
            Ok(())
        }
    }
}

/// Queues a resuming connection's replay, or its resync notice, into its fresh queue. The queue
/// is larger than the history (a start-up rule), so everything fits; if it ever did not, the
/// connection is closing as a slow consumer and the rest is not offered.
fn queue_resume(
    connection: &Connection,
    resume: Resume,
    user: &UserId,
    from: &str,
    head: Option<&StreamPosition>,
) -> Resumed {
    let (items, resumed) = match resume {
        Resume::Replay(events) => {
            let count = events.len();
            (events, Resumed::Replayed(count))
        }
        Resume::Resync(reason) => {
            let notice = resync_notice(user, reason, from, head);
            (vec![Arc::new(notice)], Resumed::Resync(reason))
        }
    };
    for item in items {
        if !connection.offer(Outgoing::Replay(item)) {
            break;
        }
    }
    resumed
}

/// The resync notice: an event of type `resync` whose `event_id` is the stream's head token, so a
/// client that resumes from the last `event_id` it saw resumes from here next time.
fn resync_notice(
    user: &UserId,
    reason: ResyncReason,
    requested: &str,
    head: Option<&StreamPosition>,
) -> Event {
    let event_id: Arc<str> = head.map_or_else(|| Arc::from(""), |head| head.to_string().into());
    Event {
        frame: resync_frame(user, &event_id, reason.label(), requested, head),
        accepted_at: Instant::now(),
        event_id,
        event_type: Arc::from(RESYNC_EVENT_TYPE),
    }
}

/// One registered connection, owned by its session. Dropping it unregisters the connection.
#[derive(Debug)]
pub struct Registration {
    hub: Arc<Hub>,
    user: UserId,
    connection: Arc<Connection>,
}

/// A connection's queue of what to write to its client, in order: events and replies. Bounded by
/// `WS_SEND_QUEUE`.
pub type Outbox = mpsc::Receiver<Outgoing>;

impl Registration {
    /// The user this connection belongs to.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// This connection's node-unique id (for logs).
    pub fn id(&self) -> u64 {
        self.connection.id
    }

    /// When this connection connected, in unix milliseconds.
    pub fn connected_at_ms(&self) -> u64 {
        self.connection.connected_at_ms
    }

    /// Queues a reply to this client behind the events already queued. A full queue means the
    /// client is not reading: the connection must close as a slow consumer.
    pub fn queue_reply(&self, frame: Frame) -> Result<(), DisconnectReason> {
        self.connection
            .queue
            .try_send(Outgoing::Reply(frame))
            .map_err(|_| DisconnectReason::SlowConsumer)
    }

    /// The reason the hub asked this connection to close, if it has.
    pub fn close_reason(&self) -> Option<DisconnectReason> {
        self.connection.close_reason()
    }

    /// Completes when the hub has asked this connection to close, with the reason.
    pub async fn close_requested(&self) -> DisconnectReason {
        loop {
            if let Some(reason) = self.close_reason() {
                return reason;
            }
            self.connection.close_requested.notified().await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.user, &self.connection);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::IdOrigin;

    const NO_HISTORY: HistoryLimits = HistoryLimits {
        size: 0,
        ttl: Duration::ZERO,
        max_users: 1,
    };

    fn hub_with(
        per_user: usize,
        policy: UserLimitPolicy,
        queue_capacity: usize,
        history: HistoryLimits,
    ) -> Arc<Hub> {
        let mode = HubMode::Standalone {
            user_limit: UserLimit { per_user, policy },
            history,
        };
        Arc::new(Hub::new(mode, queue_capacity, Arc::new(Metrics::default())))
    }

    fn hub(per_user: usize, policy: UserLimitPolicy, queue_capacity: usize) -> Arc<Hub> {
        hub_with(per_user, policy, queue_capacity, NO_HISTORY)
    }

    fn history_hub(size: usize, max_users: usize) -> Arc<Hub> {
        let history = HistoryLimits {
            size,
            ttl: Duration::from_secs(60),
            max_users,
        };
        hub_with(8, UserLimitPolicy::Reject, size + 16, history)
    }

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn event(user_name: &str, id: &str) -> Publication {
        Publication {
            user_id: user(user_name),
            id_origin: IdOrigin::Upstream,
            event: Arc::new(Event {
                event_id: Arc::from(id),
                event_type: Arc::from("message"),
                frame: Frame::from(id.to_owned()),
                accepted_at: Instant::now(),
            }),
        }
    }

    fn connect(hub: &Arc<Hub>, name: &str) -> (Registration, Outbox) {
        let attached = hub
            .attach(user(name), Transport::WebSocket, None, false)
            .unwrap();
        (attached.registration, attached.outbox)
    }

    fn drain(outbox: &mut Outbox) -> Vec<String> {
        std::iter::from_fn(|| outbox.try_recv().ok())
            .map(|item| item.frame().to_string())
            .collect()
    }

    fn delivered(delivered: usize, failed: usize) -> Delivery {
        Delivery { delivered, failed }
    }

    #[test]
    fn counts_follow_register_and_drop() {
        let hub = hub(4, UserLimitPolicy::Reject, 8);
        let a1 = connect(&hub, "a");
        let a2 = connect(&hub, "a");
        let b = hub.attach(user("b"), Transport::Sse, None, true).unwrap();
        assert_eq!((hub.connection_count(), hub.user_count()), (3, 2));
        assert_eq!(hub.transport_count(Transport::Sse), 1);
        assert_eq!(b.head, None, "no history, no head");
        drop(a1);
        assert_eq!((hub.connection_count(), hub.user_count()), (2, 2));
        drop((a2, b));
        assert_eq!((hub.connection_count(), hub.user_count()), (0, 0));
        assert_eq!(hub.transport_count(Transport::Sse), 0);
    }

    #[test]
    fn delivery_reaches_every_connection_of_the_user_in_order() {
        let hub = hub(4, UserLimitPolicy::Reject, 8);
        let (_a1, mut a1) = connect(&hub, "a");
        let (_a2, mut a2) = connect(&hub, "a");
        let (_b, mut b) = connect(&hub, "b");
        for n in 0..3 {
            let outcome = hub.publish(&event("a", &n.to_string()));
            assert_eq!(outcome.delivery, delivered(2, 0));
            assert_eq!(outcome.stored, None);
        }
        assert_eq!(drain(&mut a1), ["0", "1", "2"]);
        assert_eq!(drain(&mut a2), ["0", "1", "2"]);
        assert!(drain(&mut b).is_empty());
        assert_eq!(
            hub.publish(&event("nobody", "x")).delivery,
            Delivery::default()
        );
    }

    #[tokio::test]
    async fn full_queue_closes_only_that_connection() {
        let hub = hub(4, UserLimitPolicy::Reject, 2);
        let (slow, _slow_outbox) = connect(&hub, "a");
        let (_fast, mut fast) = connect(&hub, "a");
        for _ in 0..2 {
            hub.publish(&event("a", "x"));
            fast.try_recv().unwrap();
        }
        assert_eq!(hub.publish(&event("a", "x")).delivery, delivered(1, 1));
        assert_eq!(slow.close_requested().await, DisconnectReason::SlowConsumer);
        assert_eq!(drain(&mut fast), ["x"]);
    }

    #[tokio::test]
    async fn per_user_limit_rejects_or_replaces() {
        let strict = hub(2, UserLimitPolicy::Reject, 8);
        let _keep = (connect(&strict, "a"), connect(&strict, "a"));
        assert_eq!(
            strict
                .attach(user("a"), Transport::WebSocket, None, false)
                .unwrap_err(),
            UserLimitReached { limit: 2 }
        );
        let _b = connect(&strict, "b");

        let replacing = hub(1, UserLimitPolicy::ReplaceOldest, 8);
        let (old, _old_outbox) = connect(&replacing, "a");
        let (_new, mut new_outbox) = connect(&replacing, "a");
        assert_eq!(old.close_requested().await, DisconnectReason::Replaced);
        assert_eq!(
            replacing.publish(&event("a", "x")).delivery,
            delivered(1, 0),
            "the replaced one is not counted"
        );
        assert_eq!(drain(&mut new_outbox), ["x"]);
        let _newest = connect(&replacing, "a");
        assert_eq!(
            replacing.connection_count(),
            3,
            "closing ones stay counted until they unregister"
        );
    }

    #[tokio::test]
    async fn every_close_reason_survives_the_request() {
        let hub = hub(DisconnectReason::COUNT + 1, UserLimitPolicy::Reject, 8);
        for &reason in DisconnectReason::VARIANTS {
            let (registration, _outbox) = connect(&hub, "a");
            assert_eq!(registration.close_reason(), None);
            hub.disconnect_user(&user("a"), reason);
            assert_eq!(registration.close_requested().await, reason);
        }
    }

    #[test]
    fn offline_pushes_are_stored_and_replayed_before_live_ones() {
        let hub = history_hub(10, 100);
        let (first, mut outbox) = connect(&hub, "u");
        hub.publish(&event("u", "seen"));
        assert_eq!(drain(&mut outbox), ["seen"]);
        drop((first, outbox));
        for id in ["m1", "m2"] {
            let outcome = hub.publish(&event("u", id));
            assert_eq!(outcome.delivery, Delivery::default());
            assert!(outcome.stored.is_some(), "stored while offline");
        }
        let mut back = hub
            .attach(user("u"), Transport::Sse, Some("seen"), true)
            .unwrap();
        assert_eq!(back.resumed, Some(Resumed::Replayed(2)));
        assert_eq!(back.head.as_ref().map(|head| head.position), Some(3));
        hub.publish(&event("u", "live"));
        assert_eq!(drain(&mut back.outbox), ["m1", "m2", "live"]);
    }

    #[test]
    fn a_lost_resume_point_gets_a_resync_notice_carrying_the_head() {
        let with_history = history_hub(10, 100);
        with_history.publish(&event("u", "a"));
        let mut attached = with_history
            .attach(user("u"), Transport::WebSocket, Some("gone"), false)
            .unwrap();
        assert_eq!(
            attached.resumed,
            Some(Resumed::Resync(ResyncReason::UnknownEventId))
        );
        let Outgoing::Replay(notice) = attached.outbox.try_recv().unwrap() else {
            panic!("expected a replayed event");
        };
        let head = attached.head.clone().unwrap();
        assert_eq!(&*notice.event_type, RESYNC_EVENT_TYPE);
        assert_eq!(*notice.event_id, head.to_string());
        let json: serde_json::Value = serde_json::from_str(&notice.frame.to_string()).unwrap();
        assert_eq!(json["data"]["reason"], "unknown_event_id");
        assert_eq!(json["data"]["position"], 1);
        assert_eq!(json["data"]["last_event_id"], "gone");

        let no_history = hub(4, UserLimitPolicy::Reject, 8);
        let attached = no_history
            .attach(user("u"), Transport::WebSocket, Some("x"), false)
            .unwrap();
        assert_eq!(
            attached.resumed,
            Some(Resumed::Resync(ResyncReason::HistoryDisabled))
        );
    }

    #[test]
    fn a_retried_push_is_not_delivered_twice() {
        let hub = history_hub(10, 100);
        let (_connection, mut outbox) = connect(&hub, "u");
        let first = hub.publish(&event("u", "once"));
        let retry = hub.publish(&event("u", "once"));
        assert!(!first.duplicate && retry.duplicate);
        assert_eq!(retry.delivery, first.delivery, "the original outcome");
        assert_eq!(retry.stored, first.stored);
        assert_eq!(drain(&mut outbox), ["once"]);
    }

    #[test]
    fn the_user_cap_holds_across_shards() {
        let hub = history_hub(4, 3);
        for n in 0..50 {
            hub.publish(&event(&format!("user{n}"), "e"));
            assert!(hub.history().unwrap().stream_count() <= 3);
        }
        assert_eq!(hub.history().unwrap().stream_count(), 3);
        assert_eq!(hub.history().unwrap().event_count(), 3);
    }
}
