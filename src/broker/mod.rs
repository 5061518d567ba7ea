//! Routing of accepted events to the connections that should receive them, wherever they are.
//!
//! The HTTP handlers only ever talk to a [`Broker`]: they hand it validated, encoded events and get
//! back what happened to each (delivered, stored in history, duplicate). The [`MemoryBroker`] (the single-node default) delivers straight to
//! this node's [`Hub`](crate::hub::Hub); a clustered broker publishes to the other nodes and slots
//! in behind the same trait without any handler changing.

mod memory;

pub use memory::MemoryBroker;

use async_trait::async_trait;

use crate::hub::Outcome;
use crate::protocol::Event;

/// Why a broker could not take events.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The backend cannot be reached; nothing in the call was published. The memory broker never
    /// fails; this is the contract a networked (cluster) broker answers with, mapped to 503.
    #[error("message broker unavailable: {0}")]
    Unavailable(String),
}

/// Publishes events to every connection of their users.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes `events` in order and reports, in the same order, what happened to each. Events
    /// for one user are stored and delivered in the order of this slice and of successive calls.
    async fn publish(&self, events: &[Event]) -> Result<Vec<Outcome>, BrokerError>;
}
