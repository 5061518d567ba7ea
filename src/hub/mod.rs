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
//! Delivery never waits. Each connection has a queue (its [`Outbox`]) drained by its own session,
//! bounded in items (`WS_SEND_QUEUE`) and in bytes (`WS_SEND_QUEUE_BYTES`, see [`queue`]); when
//! an event does not fit, the connection is told to close as a slow consumer and the event counts
//! as not delivered to it. One stalled client therefore costs the others nothing. The queues of
//! the whole node are bounded too (`SEND_QUEUES_MAX_BYTES`): beyond it, the connections holding
//! the most are closed as slow consumers first; pushes are never refused for it.
//!
//! A resuming client's replay is not queued whole: a page at a time is read from the history,
//! under the shard lock, whenever its queue has drained, and the connection switches to live
//! events when a page reaches the head (in the same critical section, so nothing falls between
//! and nothing comes twice). Live events meanwhile are stored and reach it through the replay.
//!
//! Beyond `HISTORY_MAX_USERS` or `HISTORY_MAX_BYTES`, the hub evicts from the least recently
//! pushed user of the whole node: it compares the idlest stream of every shard, one lock at a
//! time.
//!
//! A hub runs in one of two [modes](HubMode): standalone (it keeps the history and enforces the
//! per-user limit itself) or as one node of a cluster (the broker does both, and [`cluster`] keeps
//! each connection in step with its user's cluster-wide stream).
//!
//! The hub never touches sockets and knows nothing about WebSocket or HTTP: it hands events to
//! queues and raises close requests; the transports do the rest. It counts the events it hands to
//! queues (and those that did not fit); what a push achieved as a whole is counted by its caller.

mod cluster;
mod queue;

pub use cluster::{CatchUp, Departure, Lagging, Sequenced};
pub use queue::Queued;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use strum::{EnumCount, VariantArray};
use tokio::sync::{Notify, mpsc};

use self::queue::{NodeQueues, QueueMeter};
use crate::history::{History, HistoryLimits, Offered, Resume, ShardHistory};
use crate::metrics::Metrics;
use crate::protocol::{
    Delivery, DisconnectReason, Event, Frame, Label, Publication, RESYNC_EVENT_TYPE, Resumed,
    ResyncReason, SlowConsumerCause, StreamPosition, Transport, UserId, resync_frame,
};

/// Number of independently locked partitions of the registry.
pub const SHARDS: usize = 64;

/// Least time between two passes over the connections to bring the queues within their
/// node-wide bound.
const SHED_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Most events of a replay read from the history at once (one write batch).
const REPLAY_PAGE: usize = 64;

/// The bounds of connections' send queues.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Most items per connection (`WS_SEND_QUEUE`).
    pub items: usize,
    /// Most bytes per connection (`WS_SEND_QUEUE_BYTES`); an empty queue still takes one item.
    pub bytes: usize,
    /// Most bytes in all the node's queues (`SEND_QUEUES_MAX_BYTES`).
    pub node_bytes: usize,
}

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
    queue: mpsc::Sender<Queued>,
    /// The bytes its queue holds (and the node's total they add to).
    meter: Arc<QueueMeter>,
    /// Most bytes its queue may hold.
    max_bytes: usize,
    /// While it replays from history: the last event queued for it (changed under the shard
    /// lock). `None`: it receives live events.
    replay: Mutex<Option<StreamPosition>>,
    /// Where slow-consumer closes are counted.
    metrics: Arc<Metrics>,
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

    /// Queues `item` for the connection without waiting. A full queue (in items or bytes) means
    /// the client is not reading: the connection is asked to close as a slow consumer. Returns
    /// whether it took it.
    fn offer(&self, item: Outgoing) -> bool {
        match self.try_queue(item) {
            Ok(()) => true,
            Err(Some(cause)) => {
                self.slow_consumer(cause);
                false
            }
            Err(None) => false,
        }
    }

    /// Queues `item` if it fits: within `WS_SEND_QUEUE` items and `WS_SEND_QUEUE_BYTES` (an
    /// empty queue takes any one item). Otherwise says which bound it hit (`None`: the
    /// connection has ended).
    fn try_queue(&self, item: Outgoing) -> Result<(), Option<SlowConsumerCause>> {
        let queued = self.meter.bytes();
        if queued > 0 && queued + item.frame().len() > self.max_bytes {
            return Err(Some(SlowConsumerCause::QueueBytes));
        }
        match self.queue.try_send(Queued::new(item, &self.meter)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Some(SlowConsumerCause::QueueEvents)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(None),
        }
    }

    /// Asks the connection to close as a slow consumer, counting `cause` if it was not closing
    /// already.
    fn slow_consumer(&self, cause: SlowConsumerCause) {
        if self.request_close(DisconnectReason::SlowConsumer) {
            self.metrics.slow_consumer(cause);
        }
    }

    /// Whether it is replaying from history (and so takes no live events yet).
    fn is_replaying(&self) -> bool {
        self.replay.lock().is_some()
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

    /// Asks the connection to close; the first reason given wins. Returns whether this was it.
    fn request_close(&self, reason: DisconnectReason) -> bool {
        let code = reason as u8 + 1;
        let first = self
            .close_reason
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.close_requested.notify_one();
        }
        first
    }

    /// Why the connection ended: the reason it was asked to close, or the one its session gave
    /// when it ended ([`Registration::end`]); a client that went away otherwise.
    fn end_reason(&self) -> DisconnectReason {
        self.close_reason()
            .unwrap_or(DisconnectReason::ClientClosed)
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
    /// The bounds of each connection's queue and of all of them.
    queue_limits: QueueLimits,
    /// Bytes queued for all connections.
    queues: Arc<NodeQueues>,
    /// Held while closing connections to bring the queues back within their node-wide bound;
    /// holds when the last such pass ran.
    shedding: Mutex<Option<Instant>>,
    /// Held while evicting history beyond its user cap or byte budget.
    evicting: Mutex<()>,
    mode: Mode,
    metrics: Arc<Metrics>,
    /// Where departing connections are reported (cluster mode).
    departures: OnceLock<mpsc::UnboundedSender<Departure>>,
    /// Where users arriving on and leaving this node are reported, when someone listens.
    presence: OnceLock<mpsc::UnboundedSender<PresenceChange>>,
}

/// A user's presence on this node changed: their first connection here, or their last one ended.
/// Reported under the user's shard lock, so a user's changes arrive in the order they happened.
#[derive(Debug, Clone)]
pub enum PresenceChange {
    /// The user's first connection here.
    Arrived {
        /// The user.
        user: UserId,
        /// The connection's node-unique id.
        connection: u64,
        /// How it is connected.
        transport: Transport,
    },
    /// The user's last connection here ended.
    Left {
        /// The user.
        user: UserId,
        /// The connection's node-unique id.
        connection: u64,
        /// Why it ended.
        reason: DisconnectReason,
    },
}

impl Hub {
    /// Creates an empty hub whose connections' queues are bounded by `queue_limits`.
    pub fn new(mode: HubMode, queue_limits: QueueLimits, metrics: Arc<Metrics>) -> Self {
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
            queue_limits,
            queues: Arc::new(NodeQueues::new(queue_limits.node_bytes)),
            shedding: Mutex::new(None),
            evicting: Mutex::new(()),
            mode,
            metrics,
            departures: OnceLock::new(),
            presence: OnceLock::new(),
        }
    }

    /// Has users arriving on and leaving this node reported to `presence`.
    pub fn report_presence(&self, presence: mpsc::UnboundedSender<PresenceChange>) {
        // Set once, at start-up; a second call is a no-op.
        let _ = self.presence.set(presence);
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

    /// Bytes queued for all connections right now (each shared payload counted once).
    pub fn queued_bytes(&self) -> usize {
        self.queues.bytes()
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
    /// its replay starts (the first page of the events it missed is queued, the rest follows as
    /// its session asks, see [`Registration::continue_replay`]), or a resync notice is queued, in
    /// the same critical section as the registration: no live event can fall between them or
    /// come twice. `want_head` asks for the stream's position even without a resume (SSE
    /// announces it).
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
            let now = Instant::now();
            let (resume, head) = match history {
                Some(history) if want_head || resume_from.is_some() => {
                    let (resume, head) = shard_history.resume(history, &user, resume_from, now);
                    (Some(resume), Some(head))
                }
                None if resume_from.is_some() => {
                    (Some(Resume::Resync(ResyncReason::HistoryDisabled)), None)
                }
                _ => (None, None),
            };
            let resumed = match (resume_from, resume) {
                (Some(_), Some(Resume::After(position))) => {
                    let missed = head.as_ref().map_or(0, |head| head.position - position);
                    if let (Some(history), Some(head)) = (history, head.as_ref())
                        && missed > 0
                    {
                        let cursor = StreamPosition {
                            epoch: Arc::clone(&head.epoch),
                            position,
                        };
                        *connection.replay.lock() = Some(cursor);
                        replay_page(&connection, shard_history, history, &user, now);
                    }
                    Some(Resumed::Replayed(
                        usize::try_from(missed).unwrap_or(usize::MAX),
                    ))
                }
                (Some(from), Some(Resume::Resync(reason))) => {
                    let notice = resync_notice(&user, reason, from, head.as_ref());
                    connection.offer(Outgoing::Replay(Arc::new(notice)));
                    Some(Resumed::Resync(reason))
                }
                _ => None,
            };
            self.add_connection(&user, connections, &connection);
            (head, resumed)
        };
        self.after_change();
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
        let (sender, outbox) = mpsc::channel(self.queue_limits.items);
        let connection = Arc::new(Connection {
            id: self.next_connection_id.fetch_add(1, Ordering::Relaxed),
            transport,
            queue: sender,
            meter: QueueMeter::new(Arc::clone(&self.queues)),
            max_bytes: self.queue_limits.bytes,
            replay: Mutex::new(None),
            metrics: Arc::clone(&self.metrics),
            close_reason: AtomicU8::new(0),
            close_requested: Notify::new(),
            connected_at_ms: unix_millis_now(),
            feed,
        });
        (connection, outbox)
    }

    /// Adds `connection` to its `user`'s `connections` (under the shard lock) and counts it.
    fn add_connection(
        &self,
        user: &UserId,
        connections: &mut Vec<Arc<Connection>>,
        connection: &Arc<Connection>,
    ) {
        if connections.is_empty() {
            self.users.fetch_add(1, Ordering::AcqRel);
            if let Some(presence) = self.presence.get() {
                // The receiver only goes away with the broker, at exit.
                let _ = presence.send(PresenceChange::Arrived {
                    user: user.clone(),
                    connection: connection.id,
                    transport: connection.transport,
                });
            }
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
            if let Some(presence) = self.presence.get() {
                let _ = presence.send(PresenceChange::Left {
                    user: user.clone(),
                    connection: connection.id,
                    reason: connection.end_reason(),
                });
            }
        }
        drop(shard);
        if let Some(departures) = self.departures.get() {
            // The receiver only goes away with the broker, at exit.
            let _ = departures.send(Departure {
                user: user.clone(),
                connection: connection.id,
                reason: connection.end_reason(),
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
        self.after_change();
        outcome
    }

    /// Hands a live `event` to each open connection in `connections`, and counts the handoffs.
    fn deliver(&self, connections: Option<&Vec<Arc<Connection>>>, event: &Arc<Event>) -> Delivery {
        let mut delivery = Delivery::default();
        for connection in connections.into_iter().flatten() {
            // A closing connection is no longer part of the user's live set: the push that made
            // it a slow consumer already counted it as failed.
            if connection.is_closing() {
                continue;
            }
            if connection.is_replaying() {
                // Stored before this returns, it reaches the connection through its replay.
                delivery.delivered += 1;
            } else {
                hand_over(connection, event, &mut delivery);
            }
        }
        self.metrics.events_handed_over(delivery);
        delivery
    }

    /// After anything that stores events or queues items: brings the history back within its
    /// user cap and byte budget, and the queues within their node-wide bound. Takes one lock at a
    /// time, none held on entry.
    fn after_change(&self) {
        self.enforce_history_limits();
        if self.queues.excess() > 0 {
            self.shed_queued_bytes();
        }
    }

    /// Evicts from the least recently pushed users of the node until the history is within
    /// `HISTORY_MAX_USERS` (whole streams, empty ones first) and `HISTORY_MAX_BYTES` (oldest
    /// events first).
    fn enforce_history_limits(&self) {
        let Some(history) = self.history() else {
            return;
        };
        if !history.over_user_cap() && !history.over_byte_budget() {
            return;
        }
        let _evicting = self.evicting.lock();
        // Each pass takes from the shard that was idlest when compared. A race with a push there
        // may leave it nothing to take; every other pass drops something, so this ends.
        let mut fruitless = 0;
        while fruitless < SHARDS {
            let evicted = if history.over_user_cap() {
                self.idlest_shard(ShardHistory::idlest)
                    .is_some_and(|shard| self.shards[shard].lock().history.evict_idlest(history))
            } else if history.over_byte_budget() {
                self.idlest_shard(ShardHistory::least_recently_pushed)
                    .is_some_and(|shard| {
                        self.shards[shard].lock().history.shed_oldest_bytes(history)
                    })
            } else {
                return;
            };
            fruitless = if evicted { 0 } else { fruitless + 1 };
        }
    }

    /// The shard whose `idleness` is least (oldest), if any has one.
    fn idlest_shard<T: Ord>(&self, idleness: impl Fn(&ShardHistory) -> Option<T>) -> Option<usize> {
        self.shards
            .iter()
            .enumerate()
            .filter_map(|(index, shard)| idleness(&shard.lock().history).map(|at| (at, index)))
            .min()
            .map(|(_, index)| index)
    }

    /// Closes connections as slow consumers, those holding the most queued bytes first, until
    /// what they hold covers how far the node's queues are over `SEND_QUEUES_MAX_BYTES` (less
    /// what connections already closing hold: they are about to free it). One pass at a time,
    /// and at most one per [`SHED_INTERVAL`] (a pass reads every connection): a push that finds
    /// one running, or one just run, leaves it at that.
    fn shed_queued_bytes(&self) {
        let Some(mut last_pass) = self.shedding.try_lock() else {
            return;
        };
        let now = Instant::now();
        if last_pass.is_some_and(|at| now.duration_since(at) < SHED_INTERVAL) {
            return;
        }
        *last_pass = Some(now);
        let mut holders = Vec::new();
        let mut freeing = 0;
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for connection in shard.connections.values().flatten() {
                let bytes = connection.meter.bytes();
                if connection.is_closing() {
                    freeing += bytes;
                } else if bytes > 0 {
                    holders.push((bytes, Arc::clone(connection)));
                }
            }
        }
        let mut excess = self.queues.excess().saturating_sub(freeing);
        holders.sort_unstable_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        for (bytes, connection) in holders {
            if excess == 0 {
                break;
            }
            connection.slow_consumer(SlowConsumerCause::NodeBudget);
            excess = excess.saturating_sub(bytes);
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

    /// Queues the next page of `connection`'s replay, under its user's shard lock.
    fn continue_replay(&self, user: &UserId, connection: &Connection) {
        let Some(history) = self.history() else {
            return;
        };
        {
            let mut shard = self.shard(user).lock();
            replay_page(
                connection,
                &mut shard.history,
                history,
                user,
                Instant::now(),
            );
        }
        self.after_change();
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

/// Queues the next page of a replaying connection's missed events, as far as its queue has room
/// (a replay waits for room; it never makes a slow consumer), under its user's shard lock. When
/// the page reaches the stream's head the connection switches to live events; when the events it
/// needs are gone (expired or evicted while it caught up) it gets a resync notice and switches too.
fn replay_page(
    connection: &Connection,
    shard_history: &mut ShardHistory,
    history: &History,
    user: &UserId,
    now: std::time::Instant,
) {
    let mut replay = connection.replay.lock();
    let Some(cursor) = replay.as_mut() else {
        return;
    };
    let (page, head) = shard_history.page(history, user, cursor, REPLAY_PAGE, now);
    match page {
        Ok(events) => {
            for event in events {
                if connection.try_queue(Outgoing::Replay(event)).is_err() {
                    return;
                }
                cursor.position += 1;
            }
            if cursor.position == head.position {
                *replay = None;
            }
        }
        Err(reason) => {
            let from = cursor.to_string();
            *replay = None;
            let notice = resync_notice(user, reason, &from, Some(&head));
            connection.offer(Outgoing::Replay(Arc::new(notice)));
        }
    }
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
/// `WS_SEND_QUEUE` items and `WS_SEND_QUEUE_BYTES`.
pub type Outbox = mpsc::Receiver<Queued>;

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
        if self.connection.offer(Outgoing::Reply(frame)) {
            Ok(())
        } else {
            Err(DisconnectReason::SlowConsumer)
        }
    }

    /// Whether the connection is still replaying missed events from history.
    pub fn is_replaying(&self) -> bool {
        self.connection.is_replaying()
    }

    /// Completes when some of what the connection had queued has been released (written, or
    /// taken by the response body): a replay that found no room may find some now.
    pub async fn room_released(&self) {
        self.connection.meter.released().await;
    }

    /// Queues the next page of the connection's replay (call when its queue has drained).
    pub fn continue_replay(&self) {
        self.hub.continue_replay(&self.user, &self.connection);
    }

    /// Counts that the session ended the connection as a slow consumer because a write to it did
    /// not finish in time.
    pub fn write_timed_out(&self) {
        self.connection
            .slow_consumer(SlowConsumerCause::WriteTimeout);
    }

    /// The reason the hub asked this connection to close, if it has.
    pub fn close_reason(&self) -> Option<DisconnectReason> {
        self.connection.close_reason()
    }

    /// Unregisters the connection, which ended for `reason` (unless the hub had asked it to
    /// close for another).
    pub fn end(self, reason: DisconnectReason) {
        self.connection.request_close(reason);
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
        max_bytes: 1,
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
        let limits = QueueLimits {
            items: queue_capacity,
            bytes: usize::MAX,
            node_bytes: usize::MAX,
        };
        Arc::new(Hub::new(mode, limits, Arc::new(Metrics::default())))
    }

    fn hub(per_user: usize, policy: UserLimitPolicy, queue_capacity: usize) -> Arc<Hub> {
        hub_with(per_user, policy, queue_capacity, NO_HISTORY)
    }

    fn history_hub(size: usize, max_users: usize) -> Arc<Hub> {
        let history = HistoryLimits {
            size,
            ttl: Duration::from_secs(60),
            max_users,
            max_bytes: usize::MAX,
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
            ack: false,
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
        let Outgoing::Replay(notice) = &*attached.outbox.try_recv().unwrap() else {
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
