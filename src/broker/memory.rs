//! The single-node broker: events go straight to this node's hub, synchronously.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Broker, BrokerError};
use crate::hub::{Delivery, Hub};
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
    async fn publish(&self, events: &[Event]) -> Result<Vec<Delivery>, BrokerError> {
        Ok(events
            .iter()
            .map(|event| self.hub.deliver(&event.user_id, &event.frame))
            .collect())
    }
}
