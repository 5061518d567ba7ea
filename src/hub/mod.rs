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
//! In cluster mode the user's stream lives in the broker, and [`cluster`] keeps each connection
//! in step with it (see there).
//!
//! The hub never touches sockets and knows nothing about WebSocket or HTTP: it hands events to
//! queues and raises close requests; the transports do the rest.

mod cluster;

pub use cluster::{CatchUp, Departure, Lagging, Present, Sequenced};

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use crate::config::UserLimitPolicy;
use crate::history::{
    History, HistoryLimits, Offered, Resume, ResyncReason, ShardHistory, StreamPosition,
};
use crate::metrics::Metrics;
use crate::protocol::{Event, Frame, Published, RESYNC_EVENT_TYPE, UserId, resync_frame};

/// Number of independently locked partitions of the registry.
pub const SHARDS: usize = 64;

/// Why a connection ended. Each maps to a close code in the transport and a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DisconnectReason {
    /// The client closed the connection or went away.
    ClientClosed = 1,
    /// The client did not answer a ping in time.
    PingTimeout,
    /// The client's outbound queue filled up, or a write to it took too long.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
    /// The client sent a frame over the size limit.
    MessageTooBig,
    /// The client sent a text frame that is not valid UTF-8.
    InvalidPayload,
    /// The client broke the WebSocket protocol.
    ProtocolError,
    /// The client sent a binary frame; this server only speaks text.
    UnsupportedData,
    /// A newer connection of the same user took this one's place (`replace-oldest` policy).
    Replaced,
    /// The network failed under the connection (reset, broken pipe).
    NetworkError,
    /// The client's token expired (its `exp`): it may reconnect with a new one and resume.
    TokenExpired,
    /// The client sent frames faster than `CLIENT_MESSAGE_RATE`.
    MessageRate,
    /// An operator disconnected the user (`DELETE /admin/users/{user_id}/connections`).
    Disconnected,
}

impl DisconnectReason {
    /// Every reason, in declaration order (for metrics).
    pub const ALL: [Self; 13] = [
        Self::ClientClosed,
        Self::PingTimeout,
        Self::SlowConsumer,
        Self::Shutdown,
        Self::MessageTooBig,
        Self::InvalidPayload,
        Self::ProtocolError,
        Self::UnsupportedData,
        Self::Replaced,
        Self::NetworkError,
        Self::TokenExpired,
        Self::MessageRate,
        Self::Disconnected,
    ];

    /// A stable snake_case name, used as a metrics key.
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::PingTimeout => "ping_timeout",
            Self::SlowConsumer => "slow_consumer",
            Self::Shutdown => "shutdown",
            Self::MessageTooBig => "message_too_big",
            Self::InvalidPayload => "invalid_payload",
            Self::ProtocolError => "protocol_error",
            Self::UnsupportedData => "unsupported_data",
            Self::Replaced => "replaced",
            Self::NetworkError => "network_error",
            Self::TokenExpired => "token_expired",
            Self::MessageRate => "message_rate",
            Self::Disconnected => "disconnected",
        }
    }

    /// Position in [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize - 1
    }

    fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.get(usize::from(value).checked_sub(1)?).copied()
    }
}

/// What one delivery achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Connections whose queue took the event.
    pub delivered: usize,
    /// Connections that could not take it (queue full: now closing as slow consumers; or closed).
    pub failed: usize,
}

impl Delivery {
    /// At least one connection took the event and none failed: what a push reports as `success`.
    pub fn is_success(self) -> bool {
        self.delivered > 0 && self.failed == 0
    }
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

/// Per-connection limits the hub enforces.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Most connections per user.
    pub per_user: usize,
    /// What to do beyond `per_user`.
    pub policy: UserLimitPolicy,
    /// Capacity of each connection's outbound queue, in frames.
    pub queue_capacity: usize,
}

/// How a client is connected. Serialized as its [label](Self::label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A WebSocket.
    WebSocket,
    /// A Server-Sent Events stream.
    Sse,
}

impl Transport {
    /// Every transport, in declaration order.
    pub const ALL: [Self; 2] = [Self::WebSocket, Self::Sse];

    /// A stable snake_case name, used as a metrics key.
    pub fn label(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
        }
    }
}

/// One item of a connection's outbox.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// An event (pushed, replayed, or a resync notice), shared with the history and other outboxes.
    Event(Arc<Published>),
    /// A reply to this client alone (a WebSocket ack).
    Reply(Frame),
}

impl Outgoing {
    /// The JSON to send.
    pub fn frame(&self) -> &Frame {
        match self {
            Self::Event(event) => &event.frame,
            Self::Reply(frame) => frame,
        }
    }
}

/// The hub's handle on one connection: its queue and a way to ask it to close.
#[derive(Debug)]
struct Connection {
    /// Unique on this node, to find the connection again when it unregisters.
    id: u64,
    transport: Transport,
    /// Frames for the connection's writer. Bounded: a full queue means a slow consumer.
    queue: mpsc::Sender<Outgoing>,
    /// Set once, when the hub asks the connection to close (slow consumer, replaced); 0 otherwise.
    /// The session's own reasons to end (ping timeout, client close, errors) unregister it instead.
    close_reason: AtomicU8,
    /// Wakes the connection's task after `close_reason` is set.
    close_requested: Notify,
    /// When it connected, in unix milliseconds.
    connected_at_ms: u64,
    /// Its place in the user's cluster-wide stream (cluster mode only).
    feed: Option<Mutex<cluster::Feed>>,
}

impl Connection {
    /// Whether someone has asked this connection to close.
    fn is_closing(&self) -> bool {
        self.close_reason.load(Ordering::Acquire) != 0
    }

    /// Queues `event` for the connection without waiting. A full queue means the client is not
    /// reading: the connection is asked to close as a slow consumer. Returns whether it took it.
    fn offer(&self, event: &Arc<Published>) -> bool {
        match self.queue.try_send(Outgoing::Event(Arc::clone(event))) {
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
        if self
            .close_reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.close_requested.notify_one();
        }
    }
}

/// One partition of the registry: its users' connections and their histories, under one lock.
#[derive(Debug, Default)]
struct Shard {
    connections: HashMap<UserId, Vec<Arc<Connection>>, foldhash::fast::RandomState>,
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

/// How a resume went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// This many missed events were replayed (0: the client had missed nothing).
    Replayed(usize),
    /// The client's point was unknown or lost; it was sent a resync notice.
    Resync(ResyncReason),
}

/// The registry of this node's connections, and the history of its users.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    /// Picks a user's shard; randomly seeded so clients cannot aim at one shard.
    shard_hasher: foldhash::fast::RandomState,
    /// Registered connections by transport, kept exact for `/health` and `/metrics`.
    connections: [AtomicUsize; Transport::ALL.len()],
    /// Users with at least one registered connection.
    users: AtomicUsize,
    next_connection_id: AtomicU64,
    limits: HubLimits,
    history: History,
    metrics: Arc<Metrics>,
    /// Where departing connections are reported (cluster mode).
    departures: OnceLock<mpsc::UnboundedSender<Departure>>,
}

impl Hub {
    /// Creates an empty hub.
    pub fn new(limits: HubLimits, history: HistoryLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_hasher: foldhash::fast::RandomState::default(),
            connections: Default::default(),
            users: AtomicUsize::new(0),
            next_connection_id: AtomicU64::new(1),
            limits,
            history: History::new(history),
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

    /// The users' history (for its counts).
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Registers a new connection for `user`, applying the per-user limit and its policy. When
    /// the client resumes from `resume_from` (an `event_id` or position token), the events it
    /// missed, or a resync notice, are queued first, in the same critical section as the
    /// registration: no live event can fall between them or come twice. `want_head` asks for the
    /// stream's position even without a resume (SSE announces it).
    pub fn attach(
        self: &Arc<Self>,
        user: UserId,
        transport: Transport,
        resume_from: Option<&str>,
        want_head: bool,
    ) -> Result<Attached, UserLimitReached> {
        let (connection, outbox) = self.new_connection(transport, None);
        let shard_index = self.shard_index(&user);
        let (head, resumed) = {
            let mut guard = self.shards[shard_index].lock();
            let Shard {
                connections,
                history,
            } = &mut *guard;
            let connections = connections.entry(user.clone()).or_default();
            self.enforce_user_limit(connections)?;
            let consult = self.history.enabled() && (want_head || resume_from.is_some());
            let (resume, head) = if consult {
                let (resume, head) =
                    history.resume(&self.history, &user, resume_from, Instant::now());
                (resume, Some(head))
            } else if resume_from.is_some() {
                (Resume::Resync(ResyncReason::HistoryDisabled), None)
            } else {
                (Resume::Replay(Vec::new()), None)
            };
            let resumed = resume_from.map(|from| {
                let resumed = queue_resume(&connection, resume, &user, from, head.as_ref());
                self.metrics.resumed(resumed);
                resumed
            });
            self.add_connection(connections, &connection);
            (head, resumed)
        };
        self.keep_history_under_cap(shard_index);
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
        let (sender, outbox) = mpsc::channel(self.limits.queue_capacity);
        let connection = Arc::new(Connection {
            id: self.next_connection_id.fetch_add(1, Ordering::Relaxed),
            transport,
            queue: sender,
            close_reason: AtomicU8::new(0),
            close_requested: Notify::new(),
            connected_at_ms: cluster::unix_millis_now(),
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

    /// Makes room for one more connection among `connections` of one user, or refuses it.
    fn enforce_user_limit(&self, connections: &[Arc<Connection>]) -> Result<(), UserLimitReached> {
        // Connections already closing (replaced, slow) no longer count against the user.
        let open = connections.iter().filter(|c| !c.is_closing()).count();
        if open < self.limits.per_user {
            return Ok(());
        }
        match self.limits.policy {
            UserLimitPolicy::Reject => Err(UserLimitReached {
                limit: self.limits.per_user,
            }),
            UserLimitPolicy::ReplaceOldest => {
                // The replaced connection stays registered until its task unregisters it, which
                // keeps the counts exact; it receives nothing new meanwhile.
                for oldest in connections
                    .iter()
                    .filter(|c| !c.is_closing())
                    .take(open + 1 - self.limits.per_user)
                {
                    oldest.request_close(DisconnectReason::Replaced);
                }
                Ok(())
            }
        }
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

    /// Stores `event` in its user's history (when on) and hands it to every open connection of
    /// the user, without waiting. Connections whose queue is full are asked to close as slow
    /// consumers. A repeat of an upstream `event_id` still in the history is not delivered again.
    pub fn publish(&self, event: &Event) -> Outcome {
        let shard_index = self.shard_index(&event.user_id);
        let outcome = {
            let mut guard = self.shards[shard_index].lock();
            let Shard {
                connections,
                history,
            } = &mut *guard;
            let connections = connections.get(&event.user_id);
            if self.history.enabled() {
                let deliver = || deliver(connections, &event.published);
                match history.offer(&self.history, event, Instant::now(), deliver) {
                    Offered::Stored { at, outcome } => Outcome {
                        delivery: outcome,
                        stored: Some(at),
                        duplicate: false,
                    },
                    Offered::Duplicate { at, outcome } => Outcome {
                        delivery: outcome,
                        stored: Some(at),
                        duplicate: true,
                    },
                }
            } else {
                let delivery = deliver(connections, &event.published);
                Outcome {
                    delivery,
                    stored: None,
                    duplicate: false,
                }
            }
        };
        self.keep_history_under_cap(shard_index);
        if outcome.duplicate {
            self.metrics.duplicate_push();
        } else {
            self.metrics.record_delivery(outcome.delivery);
        }
        outcome
    }

    /// After a stream was created in shard `creator`, which had nothing else to give up: evicts
    /// idlest streams from the other shards until the history is back under its user cap. The
    /// creator's own new stream must stay. Takes one lock at a time, none held on entry.
    fn keep_history_under_cap(&self, creator: usize) {
        if !self.history.over_capacity() {
            return;
        }
        let others = self
            .shards
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != creator);
        for (_, shard) in others {
            if !self.history.over_capacity() {
                return;
            }
            shard.lock().history.evict_idlest(&self.history);
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
        let now = Instant::now();
        for shard in self.shards.iter() {
            shard.lock().history.sweep(&self.history, now);
        }
    }
}

/// Hands `event` to each open connection in `connections`.
fn deliver(connections: Option<&Vec<Arc<Connection>>>, event: &Arc<Published>) -> Delivery {
    let mut delivery = Delivery::default();
    for connection in connections.into_iter().flatten() {
        // A closing connection is no longer part of the user's live set: the push that made it a
        // slow consumer already counted it as failed.
        if connection.is_closing() {
            continue;
        }
        if connection.offer(event) {
            delivery.delivered += 1;
        } else {
            delivery.failed += 1;
        }
    }
    delivery
}

/// Queues a resuming connection's replay, or its resync notice, into its fresh queue. The queue
/// is larger than the history (a start-up rule), so everything fits.
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
    for item in &items {
        if !connection.offer(item) {
            connection.request_close(DisconnectReason::SlowConsumer);
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
) -> Published {
    let event_id: Arc<str> = head.map_or_else(|| Arc::from(""), |head| head.to_string().into());
    Published {
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
        DisconnectReason::from_u8(self.connection.close_reason.load(Ordering::Acquire))
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
        let limits = HubLimits {
            per_user,
            policy,
            queue_capacity,
        };
        Arc::new(Hub::new(limits, history, Arc::new(Metrics::default())))
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

    fn event(user_name: &str, id: &str) -> Event {
        Event {
            user_id: user(user_name),
            upstream_id: true,
            published: Arc::new(Published {
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

    #[test]
    fn reasons_round_trip_through_their_index() {
        for (index, reason) in DisconnectReason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), index);
            assert_eq!(DisconnectReason::from_u8(reason as u8), Some(reason));
        }
        assert_eq!(DisconnectReason::from_u8(0), None);
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
        let Outgoing::Event(notice) = attached.outbox.try_recv().unwrap() else {
            panic!("expected an event");
        };
        let head = attached.head.clone().unwrap();
        assert_eq!(&*notice.event_type, RESYNC_EVENT_TYPE);
        assert_eq!(*notice.event_id, head.to_string());
        let json: serde_json::Value = serde_json::from_str(notice.frame.as_str()).unwrap();
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
            assert!(hub.history().stream_count() <= 3);
        }
        assert_eq!(hub.history().stream_count(), 3);
        assert_eq!(hub.history().event_count(), 3);
    }
}
