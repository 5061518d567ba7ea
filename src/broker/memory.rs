//! The single-node broker: events go straight to this node's hub (and its in-memory history),
//! synchronously.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Broker, BrokerError};
use crate::hub::{Hub, Outcome};
use crate::protocol::Event;

/// Delivers to the local [`Hub`] only. It cannot fail and never waits.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
}

impl MemoryBroker {
    /// A broker over `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, events: &[Event]) -> Result<Vec<Outcome>, BrokerError> {
        Ok(events.iter().map(|event| self.hub.publish(event)).collect())
    }
}
