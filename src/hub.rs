//! This node's registry of live connections: who is connected, and delivery to them.
//!
//! The registry is split into [`SHARDS`] independently locked maps from user to connections, so
//! pushes for different users rarely contend and no lock is global. Delivery to one user happens
//! entirely under that user's shard lock: the order in which pushes take the lock is the order
//! every connection of that user receives them, so all of a user's tabs see the same sequence.
//!
//! Delivery never waits. Each connection has a bounded queue (its [`Outbox`]) drained by
//! its own writer task; when a queue is full the connection is told to close as a slow consumer
//! and the event counts as not delivered to it. One stalled client therefore costs the others
//! nothing, and the server's memory per connection is bounded by the queue capacity.
//!
//! The hub never touches sockets and knows nothing about WebSocket or HTTP: it hands frames to
//! queues and raises close requests; the transport does the rest.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use crate::config::UserLimitPolicy;
use crate::metrics::Metrics;
use crate::protocol::{Frame, UserId};

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
}

impl DisconnectReason {
    /// Every reason, in declaration order (for metrics).
    pub const ALL: [Self; 10] = [
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

/// The hub's handle on one connection: its queue and a way to ask it to close.
#[derive(Debug)]
struct Connection {
    /// Unique on this node, to find the connection again when it unregisters.
    id: u64,
    /// Frames for the connection's writer. Bounded: a full queue means a slow consumer.
    queue: mpsc::Sender<Frame>,
    /// Set once, when the hub asks the connection to close (slow consumer, replaced); 0 otherwise.
    /// The session's own reasons to end (ping timeout, client close, errors) unregister it instead.
    close_reason: AtomicU8,
    /// Wakes the connection's task after `close_reason` is set.
    close_requested: Notify,
}

impl Connection {
    /// Whether someone has asked this connection to close.
    fn is_closing(&self) -> bool {
        self.close_reason.load(Ordering::Acquire) != 0
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

type Shard = HashMap<UserId, Vec<Arc<Connection>>, foldhash::fast::RandomState>;

/// The registry of this node's connections.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    /// Picks a user's shard; randomly seeded so clients cannot aim at one shard.
    shard_hasher: foldhash::fast::RandomState,
    /// Registered connections, kept exact for `/health` and `/metrics`.
    connections: AtomicUsize,
    /// Users with at least one registered connection.
    users: AtomicUsize,
    next_connection_id: AtomicU64,
    limits: HubLimits,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// Creates an empty hub.
    pub fn new(limits: HubLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_hasher: foldhash::fast::RandomState::default(),
            connections: AtomicUsize::new(0),
            users: AtomicUsize::new(0),
            next_connection_id: AtomicU64::new(1),
            limits,
            metrics,
        }
    }

    fn shard(&self, user: &UserId) -> &Mutex<Shard> {
        let index = self.shard_hasher.hash_one(user) as usize % self.shards.len();
        &self.shards[index]
    }

    /// Connections registered right now.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Users with at least one connection right now.
    pub fn user_count(&self) -> usize {
        self.users.load(Ordering::Acquire)
    }

    /// Registers a new connection for `user`, applying the per-user limit and its policy. Returns
    /// the registration, which unregisters the connection when dropped, and the connection's
    /// outbox: the frames to write to the client, in order.
    pub fn register(
        self: &Arc<Self>,
        user: UserId,
    ) -> Result<(Registration, Outbox), UserLimitReached> {
        let (sender, outbox) = mpsc::channel(self.limits.queue_capacity);
        let connection = Arc::new(Connection {
            id: self.next_connection_id.fetch_add(1, Ordering::Relaxed),
            queue: sender,
            close_reason: AtomicU8::new(0),
            close_requested: Notify::new(),
        });
        {
            let mut shard = self.shard(&user).lock();
            let connections = shard.entry(user.clone()).or_default();
            // Connections already closing (replaced, slow) no longer count against the user.
            let open = connections.iter().filter(|c| !c.is_closing()).count();
            if open >= self.limits.per_user {
                match self.limits.policy {
                    UserLimitPolicy::Reject => {
                        return Err(UserLimitReached {
                            limit: self.limits.per_user,
                        });
                    }
                    UserLimitPolicy::ReplaceOldest => {
                        // The replaced connection stays registered until its task unregisters it,
                        // which keeps the counts exact; it receives nothing new meanwhile.
                        for oldest in connections
                            .iter()
                            .filter(|c| !c.is_closing())
                            .take(open + 1 - self.limits.per_user)
                        {
                            oldest.request_close(DisconnectReason::Replaced);
                        }
                    }
                }
            }
            if connections.is_empty() {
                self.users.fetch_add(1, Ordering::AcqRel);
            }
            connections.push(Arc::clone(&connection));
            self.connections.fetch_add(1, Ordering::AcqRel);
        }
        Ok((
            Registration {
                hub: Arc::clone(self),
                user,
                connection,
            },
            outbox,
        ))
    }

    fn unregister(&self, user: &UserId, id: u64) {
        let mut shard = self.shard(user).lock();
        let Some(connections) = shard.get_mut(user) else {
            return;
        };
        let Some(position) = connections.iter().position(|c| c.id == id) else {
            return;
        };
        connections.remove(position);
        self.connections.fetch_sub(1, Ordering::AcqRel);
        if connections.is_empty() {
            shard.remove(user);
            self.users.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Hands `frame` to every open connection of `user`, without waiting. Connections whose queue
    /// is full are asked to close as slow consumers.
    pub fn deliver(&self, user: &UserId, frame: &Frame) -> Delivery {
        let mut delivery = Delivery::default();
        {
            let shard = self.shard(user).lock();
            for connection in shard.get(user).into_iter().flatten() {
                // A closing connection is no longer part of the user's live set: the push
                // that made it a slow consumer already counted it as failed.
                if connection.is_closing() {
                    continue;
                }
                match connection.queue.try_send(frame.clone()) {
                    Ok(()) => delivery.delivered += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        connection.request_close(DisconnectReason::SlowConsumer);
                        delivery.failed += 1;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => delivery.failed += 1,
                }
            }
        }
        self.metrics.record_delivery(delivery);
        delivery
    }
}

/// One registered connection, owned by its session task. Dropping it unregisters the connection.
#[derive(Debug)]
pub struct Registration {
    hub: Arc<Hub>,
    user: UserId,
    connection: Arc<Connection>,
}

/// A connection's queue of frames to write to its client, in order: pushes and replies. Bounded
/// by `WS_SEND_QUEUE`.
pub type Outbox = mpsc::Receiver<Frame>;

impl Registration {
    /// The user this connection belongs to.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// This connection's node-unique id (for logs).
    pub fn id(&self) -> u64 {
        self.connection.id
    }

    /// Queues a reply to this client behind the pushes already queued. A full queue means the
    /// client is not reading: the connection must close as a slow consumer.
    pub fn queue_reply(&self, frame: Frame) -> Result<(), DisconnectReason> {
        self.connection
            .queue
            .try_send(frame)
            .map_err(|_| DisconnectReason::SlowConsumer)
    }

    /// Completes when the hub has asked this connection to close, with the reason.
    pub async fn close_requested(&self) -> DisconnectReason {
        loop {
            if let Some(reason) =
                DisconnectReason::from_u8(self.connection.close_reason.load(Ordering::Acquire))
            {
                return reason;
            }
            self.connection.close_requested.notified().await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.user, self.connection.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(per_user: usize, policy: UserLimitPolicy, queue_capacity: usize) -> Arc<Hub> {
        let limits = HubLimits {
            per_user,
            policy,
            queue_capacity,
        };
        Arc::new(Hub::new(limits, Arc::new(Metrics::default())))
    }

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[test]
    fn counts_follow_register_and_drop() {
        let hub = hub(4, UserLimitPolicy::Reject, 8);
        let a1 = hub.register(user("a")).unwrap();
        let a2 = hub.register(user("a")).unwrap();
        let b = hub.register(user("b")).unwrap();
        assert_eq!((hub.connection_count(), hub.user_count()), (3, 2));
        drop(a1);
        assert_eq!((hub.connection_count(), hub.user_count()), (2, 2));
        drop((a2, b));
        assert_eq!((hub.connection_count(), hub.user_count()), (0, 0));
    }

    #[test]
    fn delivery_reaches_every_connection_of_the_user_in_order() {
        let hub = hub(4, UserLimitPolicy::Reject, 8);
        let (_a1, mut a1) = hub.register(user("a")).unwrap();
        let (_a2, mut a2) = hub.register(user("a")).unwrap();
        let (_b, mut b) = hub.register(user("b")).unwrap();
        for n in 0..3 {
            let delivery = hub.deliver(&user("a"), &Frame::from(n.to_string()));
            assert_eq!(
                delivery,
                Delivery {
                    delivered: 2,
                    failed: 0
                }
            );
        }
        for outbox in [&mut a1, &mut a2] {
            for n in 0..3 {
                assert_eq!(outbox.try_recv().unwrap().as_str(), n.to_string());
            }
        }
        assert!(b.try_recv().is_err());
        assert_eq!(
            hub.deliver(&user("nobody"), &Frame::from("x")),
            Delivery::default()
        );
    }

    #[tokio::test]
    async fn full_queue_closes_only_that_connection() {
        let hub = hub(4, UserLimitPolicy::Reject, 2);
        let (slow, _slow_outbox) = hub.register(user("a")).unwrap();
        let (_fast, mut fast) = hub.register(user("a")).unwrap();
        for _ in 0..2 {
            hub.deliver(&user("a"), &Frame::from("x"));
            fast.try_recv().unwrap();
        }
        let delivery = hub.deliver(&user("a"), &Frame::from("x"));
        assert_eq!(
            delivery,
            Delivery {
                delivered: 1,
                failed: 1
            }
        );
        assert_eq!(slow.close_requested().await, DisconnectReason::SlowConsumer);
        assert_eq!(fast.try_recv().unwrap().as_str(), "x");
    }

    #[tokio::test]
    async fn per_user_limit_rejects_or_replaces() {
        let strict = hub(2, UserLimitPolicy::Reject, 8);
        let _keep = (
            strict.register(user("a")).unwrap(),
            strict.register(user("a")).unwrap(),
        );
        assert_eq!(
            strict.register(user("a")).unwrap_err(),
            UserLimitReached { limit: 2 }
        );
        assert!(strict.register(user("b")).is_ok());

        let replacing = hub(1, UserLimitPolicy::ReplaceOldest, 8);
        let (old, _old_outbox) = replacing.register(user("a")).unwrap();
        let (_new, mut new_outbox) = replacing.register(user("a")).unwrap();
        assert_eq!(old.close_requested().await, DisconnectReason::Replaced);
        let delivery = replacing.deliver(&user("a"), &Frame::from("x"));
        assert_eq!(
            delivery,
            Delivery {
                delivered: 1,
                failed: 0
            },
            "the replaced one is not counted"
        );
        assert!(new_outbox.try_recv().is_ok());
        let (_newest, _) = replacing.register(user("a")).unwrap();
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
}
