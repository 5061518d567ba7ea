//! The single-node broker: events go straight to this node's hub (and its in-memory history),
//! synchronously; acknowledgements straight to this node's tracker; and the hub's presence
//! changes become `user.connected` / `user.disconnected` webhooks after the grace.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::{AttachError, Broker, BrokerError, UserConnection, unix_seconds};
use crate::acks::Acks;
use crate::hub::{Attached, Hub, Outcome, PresenceChange};
use crate::lifecycle::Lifecycle;
use crate::metrics::{BrokerReport, ClusterStats};
use crate::protocol::{DisconnectReason, Label, Publication, Transport, UserId};
use crate::webhook::{WebhookType, Webhooks};

/// Delivers to the local [`Hub`] only. It cannot fail and never waits.
#[derive(Clone)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
    acks: Arc<Acks>,
}

impl MemoryBroker {
    /// A broker over `hub`, resolving acknowledgements in `acks`. When `webhooks` wants
    /// presence, the hub's presence changes are followed (a background task of `lifecycle`):
    /// a user gone for `grace` is reported disconnected, one back within it is reported neither
    /// gone nor back.
    pub fn new(
        hub: Arc<Hub>,
        acks: Arc<Acks>,
        webhooks: &Webhooks,
        grace: Duration,
        lifecycle: &Lifecycle,
    ) -> Self {
        if webhooks.wants(WebhookType::UserConnected)
            || webhooks.wants(WebhookType::UserDisconnected)
        {
            let (changes, changes_rx) = mpsc::unbounded_channel();
            hub.report_presence(changes);
            lifecycle.spawn_background(follow_presence(changes_rx, webhooks.clone(), grace));
        }
        Self { hub, acks }
    }
}

/// A user whose last connection ended, waiting out the grace.
struct Leaving {
    due: Instant,
    connection: u64,
    reason: DisconnectReason,
}

/// Turns this node's presence changes into webhooks, applying the grace: a departure is
/// reported once the user has stayed away `grace`; an arrival within it cancels the departure
/// and is not reported either.
async fn follow_presence(
    mut changes: mpsc::UnboundedReceiver<PresenceChange>,
    webhooks: Webhooks,
    grace: Duration,
) {
    let mut leaving: HashMap<UserId, Leaving> = HashMap::new();
    // Departures in the order they fall due (one grace for all); stale ones are skipped.
    let mut due: VecDeque<(Instant, UserId)> = VecDeque::new();
    loop {
        let next = due.front().map(|(at, _)| *at);
        tokio::select! {
            change = changes.recv() => match change {
                None => return,
                Some(PresenceChange::Arrived { user, connection, transport }) => {
                    if leaving.remove(&user).is_none() {
                        webhooks.user_connected(&user, &connection.to_string(), transport);
                    }
                }
                Some(PresenceChange::Left { user, connection, reason }) => {
                    if grace.is_zero() {
                        webhooks.user_disconnected(&user, &connection.to_string(), reason.label());
                    } else {
                        let at = Instant::now() + grace;
                        leaving.insert(user.clone(), Leaving { due: at, connection, reason });
                        due.push_back((at, user));
                    }
                }
            },
            () = sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let Some((at, user)) = due.pop_front() else { continue };
                if leaving.get(&user).is_some_and(|left| left.due == at)
                    && let Some(left) = leaving.remove(&user)
                {
                    webhooks.user_disconnected(
                        &user,
                        &left.connection.to_string(),
                        left.reason.label(),
                    );
                }
            }
        }
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

    fn acknowledge(&self, user: &UserId, ids: Vec<Arc<str>>) {
        // One node: an id not tracked here is tracked nowhere.
        self.acks.acknowledge(user, ids);
    }

    fn connection_id(&self, connection: u64) -> String {
        connection.to_string()
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
