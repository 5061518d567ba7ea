//! The single-node broker: events go straight to this node's hub (and its in-memory history),
//! synchronously; acknowledgements straight to this node's tracker; and the hub's presence
//! changes become `user.connected` / `user.disconnected` webhooks after the grace.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
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
    /// Asks the presence follower (when there is one) to report every departure at once.
    flush: Option<mpsc::UnboundedSender<oneshot::Sender<()>>>,
}

/// Longest a shutdown waits for the presence follower to report the departures it holds.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

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
        let mut flush = None;
        if webhooks.wants(WebhookType::UserConnected)
            || webhooks.wants(WebhookType::UserDisconnected)
        {
            let (changes, changes_rx) = mpsc::unbounded_channel();
            let (flushes, flushes_rx) = mpsc::unbounded_channel();
            hub.report_presence(changes);
            lifecycle.spawn_background(follow_presence(
                changes_rx,
                flushes_rx,
                webhooks.clone(),
                grace,
            ));
            flush = Some(flushes);
        }
        Self { hub, acks, flush }
    }
}

/// A user whose last connection ended, waiting out the grace.
struct Leaving {
    due: Instant,
    connection: u64,
    reason: DisconnectReason,
}

/// The presence follower's state: the users waiting out their grace.
struct Follower {
    webhooks: Webhooks,
    grace: Duration,
    leaving: HashMap<UserId, Leaving>,
    /// Departures in the order they fall due (one grace for all); stale ones are skipped.
    due: VecDeque<(Instant, UserId)>,
}

impl Follower {
    /// Applies one change: an arrival is reported unless it cancels a departure within its
    /// grace; a departure waits out the grace (or is reported at once without one).
    fn apply(&mut self, change: PresenceChange) {
        match change {
            PresenceChange::Arrived {
                user,
                connection,
                transport,
            } => {
                if self.leaving.remove(&user).is_none() {
                    self.webhooks
                        .user_connected(&user, &connection.to_string(), transport);
                }
            }
            PresenceChange::Left {
                user,
                connection,
                reason,
            } => {
                if self.grace.is_zero() {
                    self.report(&user, connection, reason);
                } else {
                    let at = Instant::now() + self.grace;
                    self.leaving.insert(
                        user.clone(),
                        Leaving {
                            due: at,
                            connection,
                            reason,
                        },
                    );
                    self.due.push_back((at, user));
                }
            }
        }
    }

    /// Reports the departure that falls due first, if it still stands.
    fn next_due(&mut self) {
        let Some((at, user)) = self.due.pop_front() else {
            return;
        };
        if self.leaving.get(&user).is_some_and(|left| left.due == at)
            && let Some(left) = self.leaving.remove(&user)
        {
            self.report(&user, left.connection, left.reason);
        }
    }

    /// Reports every departure at once (the node is going away).
    fn flush(&mut self) {
        for (user, left) in std::mem::take(&mut self.leaving) {
            self.report(&user, left.connection, left.reason);
        }
        self.due.clear();
    }

    fn report(&self, user: &UserId, connection: u64, reason: DisconnectReason) {
        self.webhooks
            .user_disconnected(user, &connection.to_string(), reason.label());
    }
}

/// Turns this node's presence changes into webhooks, applying the grace (see
/// [`Follower::apply`]). On a flush (shutdown, after every session closed) the departures still
/// within their grace are reported at once: the node is going away.
async fn follow_presence(
    mut changes: mpsc::UnboundedReceiver<PresenceChange>,
    mut flushes: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    webhooks: Webhooks,
    grace: Duration,
) {
    let mut follower = Follower {
        webhooks,
        grace,
        leaving: HashMap::new(),
        due: VecDeque::new(),
    };
    loop {
        let next = follower.due.front().map(|(at, _)| *at);
        tokio::select! {
            change = changes.recv() => match change {
                None => return,
                Some(change) => follower.apply(change),
            },
            Some(done) = flushes.recv() => {
                while let Ok(change) = changes.try_recv() {
                    follower.apply(change);
                }
                follower.flush();
                let _ = done.send(());
            }
            () = sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                follower.next_due();
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

    async fn shutdown(&self) {
        let Some(flush) = &self.flush else { return };
        let (done, flushed) = oneshot::channel();
        if flush.send(done).is_ok() {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, flushed).await;
        }
    }
}
