//! Routing of accepted events to the connections that should receive them, wherever they are.
//!
//! The HTTP handlers and the transports only ever talk to a [`Broker`]: handlers hand it
//! validated, encoded events and get back what happened to each (delivered, stored in history,
//! duplicate); transports attach new connections through it. The [`MemoryBroker`] (the
//! single-node default) works on this node's [`Hub`](crate::hub::Hub) directly; the
//! [`RedisBroker`] runs a cluster of nodes over one Redis, where positions, history and presence
//! are shared and each node delivers to its own connections.

mod memory;
mod redis;

pub use self::redis::RedisBroker;
pub use memory::MemoryBroker;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::hub::{Attached, Outcome, UserLimitReached};
use crate::metrics::{BrokerReport, ClusterStats, ShardReport};
use crate::protocol::{Publication, Transport, UserId};

/// Why a broker could not take events.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The backend cannot be reached, or refused the request: nothing was done (a publish may be
    /// retried as it is). Mapped to 503.
    #[error("message broker unavailable: {0}")]
    Unavailable(String),
    /// The request was sent (or may have been) but no answer came: the link broke or timed out
    /// meanwhile, or only part of a large publish was answered. A publish may or may not have
    /// happened: retried with the same `event_id`s, it is recognised and not delivered twice.
    /// Mapped to 504.
    #[error(
        "outcome unknown: the message broker did not answer ({0}); the events may have been \
         published: retry with the same event_id (recognised, not delivered twice)"
    )]
    OutcomeUnknown(String),
}

/// Why a connection could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The user is at `MAX_CONNECTIONS_PER_USER` (cluster-wide in a cluster).
    #[error(transparent)]
    UserLimit(#[from] UserLimitReached),
    /// The broker cannot be reached: the client should come back later.
    #[error(transparent)]
    Unavailable(#[from] BrokerError),
}

/// One connection of a user, as the administrative API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UserConnection {
    /// Unique in the cluster: `<node>/<number>` in a cluster, `<number>` on a single node.
    pub connection_id: String,
    /// The node that holds it (`None` on a single node).
    pub node_id: Option<String>,
    /// How it is connected.
    pub transport: Transport,
    /// When it connected, in unix seconds.
    pub connected_since: f64,
}

/// Milliseconds since the unix epoch as seconds, for `connected_since`.
fn unix_seconds(millis: u64) -> f64 {
    millis as f64 / 1000.0
}

/// Publishes events to every connection of their users, and attaches new connections.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes `events` in order and reports, in the same order, what happened to each. Events
    /// for one user are stored and delivered in the order of this slice and of successive calls.
    async fn publish(&self, events: &[Publication]) -> Result<Vec<Outcome>, BrokerError>;

    /// Registers a new connection of `user`: it receives every event published after this
    /// returns and, when it resumes from `resume_from`, what it missed first (or a resync
    /// notice). `want_head` asks for the stream's position even without a resume.
    async fn attach(
        &self,
        user: UserId,
        transport: Transport,
        resume_from: Option<&str>,
        want_head: bool,
    ) -> Result<Attached, AttachError>;

    /// The connections of `user`, wherever they are, oldest first.
    async fn connections_of(&self, user: &UserId) -> Result<Vec<UserConnection>, BrokerError>;

    /// Closes every connection of `user`, wherever they are, as disconnected by an operator;
    /// returns how many there were.
    async fn disconnect(&self, user: &UserId) -> Result<usize, BrokerError>;

    /// Every user with at least one connection, wherever it is.
    async fn online_users(&self) -> Result<Vec<UserId>, BrokerError>;

    /// A connection of `user` on this node acknowledged the events `ids`: resolves them on
    /// whichever node tracks them (see [`crate::acks`]). Never waits.
    fn acknowledge(&self, user: &UserId, ids: Vec<Arc<str>>);

    /// The cluster-unique id of this node's connection `connection`, as [`UserConnection`] and
    /// webhooks show it.
    fn connection_id(&self, connection: u64) -> String;

    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Why the broker cannot route events right now, if it cannot (`/ready` answers 503).
    fn unavailable(&self) -> Option<String>;

    /// The Redis shards, when there are several (each holds some users): which are up.
    fn shards(&self) -> Vec<ShardReport> {
        Vec::new()
    }

    /// The cluster's counts, in cluster mode once known.
    fn cluster(&self) -> Option<ClusterStats>;

    /// The broker's state and own counters, for `/metrics`.
    fn report(&self) -> BrokerReport;

    /// Leaves the cluster on a graceful shutdown (after the connections closed).
    async fn shutdown(&self);
}
