//! The single-node broker: events go straight to this node's hub (and its in-memory history),
//! synchronously.

use std::sync::Arc;

use async_trait::async_trait;

use super::{AttachError, Broker, BrokerError, UserConnection, unix_seconds};
use crate::hub::{Attached, Hub, Outcome};
use crate::metrics::{BrokerReport, ClusterStats};
use crate::protocol::{DisconnectReason, Publication, Transport, UserId};

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
    async fn publish(&self, events: &[Publication]) -> Result<Vec<Outcome>, BrokerError> {
        Ok(events.iter().map(|event| self.hub.publish(event)).collect())
    }

    async fn attach(
        &self,
        user: UserId,
        transport: Transport,
        resume_from: Option<&str>,
        want_head: bool,
    ) -> Result<Attached, AttachError> {
        Ok(self.hub.attach(user, transport, resume_from, want_head)?)
    }

    async fn connections_of(&self, user: &UserId) -> Result<Vec<UserConnection>, BrokerError> {
        let connections = self.hub.connections_of(user);
        Ok(connections
            .into_iter()
            .map(|present| UserConnection {
                connection_id: present.connection.to_string(),
                node_id: None,
                transport: present.transport,
                connected_since: unix_seconds(present.connected_at_ms),
            })
            .collect())
    }

    async fn disconnect(&self, user: &UserId) -> Result<usize, BrokerError> {
        Ok(self
            .hub
            .disconnect_user(user, DisconnectReason::Disconnected))
    }

    async fn online_users(&self) -> Result<Vec<UserId>, BrokerError> {
        Ok(self.hub.online_users())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn unavailable(&self) -> Option<String> {
        None
    }

    fn cluster(&self) -> Option<ClusterStats> {
        None
    }

    fn report(&self) -> BrokerReport {
        BrokerReport {
            kind: self.kind(),
            node_id: None,
            connected: true,
            link: None,
        }
    }

    async fn shutdown(&self) {}
}
