//! The cluster broker: several nodes share Redis (one server, several independent ones, or a Redis
//! Cluster). Redis assigns each user's positions and keeps their history, recognises retried
//! pushes, and counts the cluster's connections; each node subscribes to the channels of the
//! users connected to it and delivers to them.
//!
//! A push runs one script ([`scripts::PUBLISH`]) that, atomically for the whole cluster, checks
//! the event id against the user's history, assigns the next position, publishes the event on
//! the user's channel and appends it to the history. A batch is one pipeline of scripts (one per
//! 100 events), so one round trip. Concurrent requests are merged by the shard's publisher task:
//! those that arrive while its pipeline is in flight go together in the next, so that
//! concurrent single pushes share script calls.
//!
//! With several Redis servers (`REDIS_URL` lists them) each user lives on one shard
//! ([`shards`]); with a Redis Cluster (`REDIS_CLUSTER=true`), on one partition, a hash slot
//! ([`slots`]). The broker is a router over one [`Shared`] per shard or partition, each with its
//! own link.
//!
//! One event for several users (a `user_ids` push, a broadcast: publications whose frames share
//! one payload) is planned as a group: its payload goes to Redis once, as a payload record that
//! the users' history entries name (each entry keeps only the user's head), and reaches each node
//! once, in a message on the groups channel that lists the users' heads and positions. A group of
//! more than 100 users takes several scripts; only the first carries the record, and only the
//! first message published carries it on. Single events larger than [`INLINE_MAX`] are stored by
//! reference too, so that `HISTORY_MAX_BYTES` bounds every large payload Redis keeps.
//!
//! A connection joins in three steps: this node subscribes to the user's channel (if it was not
//! already), registers the connection as joining (its live events wait), and runs
//! [`scripts::JOIN`], which applies the cluster-wide per-user limit, records the connection's
//! presence and returns what the connection missed. The hub then delivers that and the waiting
//! live events, each once, in position order (see [`crate::hub`]'s cluster part).
//!
//! Everything that keeps the link to Redis alive (reconnecting with backoff, resubscribing,
//! re-registering presence, heartbeats, catching connections up after an outage) is in [`link`].

mod link;
mod scripts;
mod shards;
mod slots;
mod wire;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use parking_lot::{Mutex, RwLock};
use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};

use self::wire::{Content, Names};
use super::{AttachError, Broker, BrokerError, UserConnection};
use crate::acks::Acks;
use crate::config::Settings;
use crate::history::HistoryLimits;
use crate::hub::{
    Attached, CatchUp, Departure, Hub, Lagging, Outcome, Sequenced, UserLimitPolicy,
    UserLimitReached,
};
use crate::lifecycle::Lifecycle;
use crate::metrics::{BrokerReport, ClusterStats, LinkCounts, ShardReport};
use crate::protocol::{
    Delivery, DisconnectReason, IdOrigin, Label, Publication, Resumed, ResyncReason,
    StreamPosition, Transport, UserId, parse_token, user_in_head,
};
use crate::webhook::{WebhookType, Webhooks};

/// How long a user's stream position outlives its last event or connection: a client that comes
/// back within it resumes without a resync even when its history expired (if it missed nothing).
const META_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Most events one publish script handles: a large batch becomes several scripts in one pipeline
/// (still one round trip), so that Redis serves other clients between them.
const EVENTS_PER_SCRIPT: usize = 100;

/// Largest envelope of a single event kept inline in its user's history; a larger one is kept in
/// a payload record of its own, counted against `HISTORY_MAX_BYTES`.
const INLINE_MAX: usize = 1024;

/// How long a payload record lives when history is off: long enough for the rest of its group's
/// scripts to be published (they name it), and for nodes that missed it to fetch it.
const PASSING_RECORD_TTL: Duration = Duration::from_secs(60);

/// Most publish requests merged into one pipeline by a shard's publisher (see
/// [`publish_merged`]).
const MERGED_REQUESTS: usize = 64;

/// Most merged pipelines a shard's publisher has in flight at once (not counting those that take
/// several round trips). One: the requests that arrive meanwhile wait for its answer and go
/// together in the next, so that under load each script call carries many events (a script
/// call costs Redis about 20 µs before its first event; measured in BENCHMARKS.md).
const PIPELINES_IN_FLIGHT: usize = 1;

/// Most scripts in one round trip: a batch (at most `MAX_BATCH_SIZE`) is usually one round trip;
/// a broadcast to many users takes several, one after the other.
const SCRIPTS_PER_ROUND_TRIP: usize = 10;

/// Most catch-ups (history reads) in flight at once: after an outage every connection catches up,
/// and they wait for a permit here rather than in Redis's queue (where they would time out).
const CATCH_UPS_IN_FLIGHT: usize = 64;

/// Rounds of catching up one connection before giving up on it (each round normally completes it).
const CATCH_UP_ROUNDS: usize = 3;

/// How many payload records a node keeps at hand: for the later messages of a group (which name
/// the record only) and for catch-ups, which then need not fetch them again.
const RECENT_RECORDS: usize = 16;

/// Why a Redis cannot serve as configured (retrying would not help): a start-up error.
const MISCONFIGURED: &str = "redis misconfigured";

/// The cluster broker. Cheap to share; its background tasks are the lifecycle's, and end when it
/// stops them (after the node left the cluster).
pub struct RedisBroker {
    /// This node's name in the cluster.
    node: String,
    /// One per Redis of `REDIS_URL` (or per Redis Cluster partition), in order: a user's
    /// everything lives on one (see [`shards`]).
    shards: Vec<Arc<Shared>>,
}

/// Which shard a [`Shared`] is, among how many, and where.
#[derive(Debug)]
struct Place {
    index: usize,
    count: usize,
    /// `host:port` of its Redis (no credentials), for reports and errors.
    address: String,
}

/// A change of this node's interest in a user's channel, applied in order by the link.
#[derive(Debug)]
enum Change {
    /// A connection of the user is joining: subscribe if needed, answer once subscribed.
    Subscribe(UserId, oneshot::Sender<Result<(), BrokerError>>),
    /// A connection of the user left: unsubscribe when it was the last.
    Unsubscribe(UserId),
}

/// The broker's counters, for `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    outages: AtomicU64,
    reconnects: AtomicU64,
    errors: AtomicU64,
    messages_received: AtomicU64,
    malformed_messages: AtomicU64,
    catch_ups: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// How connections join: the cluster-wide per-user limit.
#[derive(Debug, Clone, Copy)]
struct JoinRules {
    per_user: usize,
    replace_oldest: bool,
}

/// Where a shard's Redis is.
enum Target {
    /// One of the independent Redis servers of `REDIS_URL`: a client for commands and one that
    /// speaks RESP3, for subscriptions.
    Server {
        commands: Box<redis::Client>,
        subscriptions: Box<redis::Client>,
    },
    /// A partition of a Redis Cluster: whichever master serves its hash slot now.
    Partition { seeds: Arc<slots::Seeds>, slot: u16 },
}

impl Target {
    /// Clients for commands and for subscriptions (RESP3) to the Redis that serves the shard now.
    async fn clients(
        &self,
        timeout: Duration,
    ) -> Result<(redis::Client, redis::Client), redis::RedisError> {
        match self {
            Self::Server {
                commands,
                subscriptions,
            } => Ok((
                redis::Client::clone(commands),
                redis::Client::clone(subscriptions),
            )),
            Self::Partition { seeds, slot } => {
                let (host, port) = seeds.owner_of(*slot, timeout).await?;
                Ok((
                    seeds.client(&host, port, redis::ProtocolVersion::RESP2)?,
                    seeds.client(&host, port, redis::ProtocolVersion::RESP3)?,
                ))
            }
        }
    }

    /// Whether this is a partition of a Redis Cluster.
    fn is_partition(&self) -> bool {
        matches!(self, Self::Partition { .. })
    }
}

/// What the broker and its link tasks share.
struct Shared {
    target: Target,
    place: Place,
    names: Names,
    node: String,
    hub: Arc<Hub>,
    /// Where the broker's tasks run: tracked, and stopped at the end of a shutdown.
    lifecycle: Lifecycle,
    counters: Counters,
    join_rules: JoinRules,
    history: HistoryLimits,
    /// `HISTORY_MAX_BYTES`: the bytes of payload records Redis keeps.
    max_bytes: usize,
    lease: Duration,
    timeout: Duration,
    /// `REDIS_WAIT_REPLICAS`: replicas that must confirm each publish pipeline.
    wait_replicas: u8,
    /// The command connection while Redis is reachable, with the link generation it belongs to.
    commands: RwLock<Option<(u64, MultiplexedConnection)>>,
    /// `None` while connected; otherwise why not (for `/ready` and refusals).
    down: watch::Sender<Option<String>>,
    /// Set while a live link's probe waits for Redis past [`link::PROBE_TIMEOUT`]: Redis is
    /// stalled (paused, swapping, a long script). The node is unready and refuses new pushes and
    /// connections at once, until Redis answers again or the link is given up.
    stalled: AtomicBool,
    /// The generation of the link a command failed on (the link supervisor reconnects).
    failed_generation: AtomicU64,
    failed: Notify,
    changes: mpsc::UnboundedSender<Change>,
    /// To the shard's publisher task (see [`publish_merged`]).
    publishes: mpsc::UnboundedSender<PublishRequest>,
    /// Acknowledgements of events this node does not track, to tell the other nodes (see
    /// [`relay_acks`]); at most [`ACK_NOTICES_QUEUED`].
    ack_notices: mpsc::Sender<(UserId, Vec<Arc<str>>)>,
    /// Bounds the catch-ups in flight ([`CATCH_UPS_IN_FLIGHT`]).
    catch_up_slots: Semaphore,
    cluster: Mutex<Option<ClusterStats>>,
    /// The payload records this node received last.
    records: Mutex<Recent>,
    /// Set once this node has left the cluster (shutdown): no more heartbeats.
    left: AtomicBool,
    /// The events this node tracks for acknowledgement (acknowledgements from other nodes
    /// arrive on the groups channel).
    acks: Arc<Acks>,
    /// Where presence webhooks go.
    webhooks: Webhooks,
    /// `WEBHOOK_PRESENCE_GRACE`.
    grace: Duration,
}

/// What [`Shared::join`] found.
enum Joined {
    /// The user is at the per-user limit.
    AtLimit,
    /// The connection's starting point, and what its arrival means for the user's presence.
    Accepted(CatchUp, Arrival),
}

/// What a connection's join means for its user's presence in the cluster (see
/// [`scripts::JOIN`]'s `arrived`).
#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    /// The user was connected already (or came back within the grace): nothing to report.
    Known,
    /// The user had no connection: `user.connected`.
    First,
    /// The user's departure was past its grace but not reported yet: `user.disconnected` of
    /// that connection (`<node>/<connection>`, reason), then `user.connected`.
    AfterDeparture(String, String),
}

impl Arrival {
    fn read(arrived: &str) -> Result<Self, String> {
        match arrived {
            "" => Ok(Self::Known),
            "first" => Ok(Self::First),
            record => match wire::read_departure(record) {
                Some((token, reason)) => {
                    Ok(Self::AfterDeparture(token.to_owned(), reason.to_owned()))
                }
                None => Err(format!("arrival {record:?}")),
            },
        }
    }
}

impl RedisBroker {
    /// Starts the broker's background tasks for this node, one link per Redis of `REDIS_URL` (or
    /// per Redis Cluster partition), and waits (up to `REDIS_TIMEOUT`) for the first connection
    /// to each. A Redis that cannot be reached yet is not an error: its users are refused (the
    /// node is unready if none can be reached) and the node keeps trying. A malformed `REDIS_URL`
    /// is, and so is a Redis that answers but is not what the settings say (a cluster node or not).
    pub async fn start(
        settings: &Settings,
        hub: Arc<Hub>,
        lifecycle: &Lifecycle,
        acks: &Arc<Acks>,
        webhooks: &Webhooks,
    ) -> Result<Self, String> {
        let node = settings
            .node_id
            .clone()
            .unwrap_or_else(|| ulid::Ulid::new().to_string());
        let targets = targets(settings)?;
        let count = targets.len();
        let mut shards = Vec::with_capacity(count);
        let mut departure_queues = Vec::with_capacity(count);
        for (index, (target, address, names)) in targets.into_iter().enumerate() {
            let (changes, changes_rx) = mpsc::unbounded_channel();
            let (departures, departures_rx) = mpsc::unbounded_channel();
            let (publishes, publishes_rx) = mpsc::unbounded_channel();
            let (ack_notices, ack_notices_rx) = mpsc::channel(ACK_NOTICES_QUEUED);
            let shared = Arc::new(Shared {
                target,
                place: Place {
                    index,
                    count,
                    address,
                },
                names,
                node: node.clone(),
                hub: Arc::clone(&hub),
                lifecycle: lifecycle.clone(),
                counters: Counters::default(),
                join_rules: JoinRules {
                    per_user: settings.max_connections_per_user,
                    replace_oldest: settings.user_limit_policy == UserLimitPolicy::ReplaceOldest,
                },
                history: settings.history_limits(),
                max_bytes: settings.history_max_bytes,
                lease: settings.presence_lease,
                timeout: settings.redis_timeout,
                wait_replicas: settings.redis_wait_replicas,
                commands: RwLock::new(None),
                down: watch::Sender::new(Some("redis: not connected yet".to_owned())),
                stalled: AtomicBool::new(false),
                failed_generation: AtomicU64::new(0),
                failed: Notify::new(),
                changes,
                publishes,
                ack_notices,
                catch_up_slots: Semaphore::new(CATCH_UPS_IN_FLIGHT),
                cluster: Mutex::new(None),
                records: Mutex::new(Recent::default()),
                left: AtomicBool::new(false),
                acks: Arc::clone(acks),
                webhooks: webhooks.clone(),
                grace: settings.webhook_presence_grace,
            });
            lifecycle.spawn_background(link::supervise(Arc::clone(&shared), changes_rx));
            lifecycle.spawn_background(publish_merged(Arc::clone(&shared), publishes_rx));
            lifecycle.spawn_background(relay_acks(Arc::clone(&shared), ack_notices_rx));
            lifecycle.spawn_background(link::forget_departures(Arc::clone(&shared), departures_rx));
            departure_queues.push(departures);
            shards.push(shared);
        }
        let (departures, departures_rx) = mpsc::unbounded_channel();
        hub.report_departures(departures);
        lifecycle.spawn_background(route_departures(departures_rx, departure_queues));
        let connected = join_all(shards.iter().map(|shard| {
            let mut down = shard.down.subscribe();
            async move {
                // Up, or known to be wrong (no need to wait for that to change).
                let up = down.wait_for(|reason| {
                    reason
                        .as_ref()
                        .is_none_or(|reason| reason.contains(MISCONFIGURED))
                });
                if tokio::time::timeout(settings.redis_timeout, up)
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        node = %shard.node,
                        redis = %shard.place.address,
                        "redis not reachable yet; its users are refused until it is (retrying)"
                    );
                }
            }
        }));
        connected.await;
        let misconfigured = shards.iter().find_map(|shard| {
            let reason = shard.down.borrow().clone()?;
            reason
                .contains(MISCONFIGURED)
                .then(|| shard.on_this_shard(reason))
        });
        if let Some(reason) = misconfigured {
            return Err(reason);
        }
        Ok(Self { node, shards })
    }

    /// The shard that holds `user`.
    fn shard(&self, user: &UserId) -> &Arc<Shared> {
        &self.shards[shards::shard_of(user.as_str(), self.shards.len())]
    }

    /// Publishes events of users of several shards: each shard's part, in order, on that shard,
    /// all parts at once. Nothing is published unless every shard concerned is up; if one fails
    /// on the way while another succeeded, the outcome is unknown (retrying with the same
    /// `event_id`s publishes nothing twice).
    async fn publish_across_shards(
        &self,
        events: &[Publication],
    ) -> Result<Vec<Outcome>, BrokerError> {
        let count = self.shards.len();
        let mut parts: Vec<ShardPart> = std::iter::repeat_with(ShardPart::default)
            .take(count)
            .collect();
        for (at, event) in events.iter().enumerate() {
            let part = &mut parts[shards::shard_of(event.user_id.as_str(), count)];
            part.positions.push(at);
            part.events.push(event.clone());
        }
        let concerned: Vec<(&Arc<Shared>, ShardPart)> = self
            .shards
            .iter()
            .zip(parts)
            .filter(|(_, part)| !part.events.is_empty())
            .collect();
        for (shard, _) in &concerned {
            shard.ready()?;
        }
        let mut publishing = Vec::with_capacity(concerned.len());
        let mut positions = Vec::with_capacity(concerned.len());
        for (shard, part) in concerned {
            publishing.push(shard.publish(part.events));
            positions.push(part.positions);
        }
        let results = join_all(publishing).await;
        let mut outcomes: Vec<Option<Outcome>> =
            std::iter::repeat_with(|| None).take(events.len()).collect();
        let (mut published, mut failure) = (false, None);
        for (positions, result) in positions.iter().zip(results) {
            match result {
                Ok(answers) => {
                    published = true;
                    for (&at, outcome) in positions.iter().zip(answers) {
                        outcomes[at] = Some(outcome);
                    }
                }
                // An unknown outcome wins over a refusal: something may have been published.
                Err(error) => {
                    if !matches!(failure, Some(BrokerError::OutcomeUnknown(_))) {
                        failure = Some(error);
                    }
                }
            }
        }
        match failure {
            // Another shard published its part: whatever this one did, the whole is partial.
            Some(BrokerError::Unavailable(why)) if published => {
                Err(BrokerError::OutcomeUnknown(why))
            }
            Some(error) => Err(error),
            None => Ok(outcomes.into_iter().flatten().collect()),
        }
    }
}

/// The events of a request that go to one shard, and where each stands in the request.
#[derive(Default)]
struct ShardPart {
    positions: Vec<usize>,
    events: Vec<Publication>,
}

/// A publish waiting for its shard's publisher task.
struct PublishRequest {
    events: Vec<Publication>,
    answer: oneshot::Sender<Result<Vec<Outcome>, BrokerError>>,
}

/// A shard's publisher: sends the publish requests as merged pipelines, at most
/// [`PIPELINES_IN_FLIGHT`] at a time. While they are all in flight, the requests that arrive
/// wait, and go together in the next (at most [`MERGED_REQUESTS`]): concurrent single pushes
/// then cost Redis one script call, not one each, and a request waits at most for a round trip.
/// A publication too large for one round trip (a broadcast to many users) does not hold a slot,
/// so that the pushes behind it are not held up for all of its round trips (except with
/// `REDIS_WAIT_REPLICAS`, whose `WAIT`s must not pile up on the command connection).
/// Each request's events stay together and in order (requests in flight at once have no order
/// between them anyway); its answer is its part of the outcomes, or its pipeline's error.
async fn publish_merged(
    shared: Arc<Shared>,
    mut requests: mpsc::UnboundedReceiver<PublishRequest>,
) {
    let slots = Arc::new(Semaphore::new(PIPELINES_IN_FLIGHT));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut waiting = Vec::new();
        if requests.recv_many(&mut waiting, MERGED_REQUESTS).await == 0 {
            return;
        }
        // With REDIS_WAIT_REPLICAS every publication keeps its slot: a `WAIT` blocks the command
        // connection, and one at a time keeps the others' answers within REDIS_TIMEOUT.
        let events: usize = waiting.iter().map(|request| request.events.len()).sum();
        let long = events > EVENTS_PER_SCRIPT * SCRIPTS_PER_ROUND_TRIP;
        let slot = (!long || shared.wait_replicas > 0).then_some(slot);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            publish_together(&shared, waiting).await;
            drop(slot);
        });
    }
}

/// Publishes `requests` in one pipeline and answers each.
async fn publish_together(shared: &Shared, requests: Vec<PublishRequest>) {
    let mut answers = Vec::with_capacity(requests.len());
    let mut merged = Vec::new();
    for PublishRequest { events, answer } in requests {
        answers.push((events.len(), answer));
        merged.extend(events);
    }
    match shared.publish_now(&merged).await {
        Ok(outcomes) => {
            let mut outcomes = outcomes.into_iter();
            for (len, answer) in answers {
                let _ = answer.send(Ok(outcomes.by_ref().take(len).collect()));
            }
        }
        Err(error) => {
            for (_, answer) in answers {
                let _ = answer.send(Err(error.clone()));
            }
        }
    }
}

/// Hands each departure the hub reports to the shard of its user (which forgets its presence).
async fn route_departures(
    mut departures: mpsc::UnboundedReceiver<Departure>,
    queues: Vec<mpsc::UnboundedSender<Departure>>,
) {
    while let Some(departure) = departures.recv().await {
        let shard = shards::shard_of(departure.user.as_str(), queues.len());
        let _ = queues[shard].send(departure);
    }
}

impl Shared {
    /// Publishes `events`, all of users of this shard, in order: through the shard's publisher
    /// task, which merges the requests that wait meanwhile into one pipeline (see
    /// [`publish_merged`]).
    async fn publish(&self, events: Vec<Publication>) -> Result<Vec<Outcome>, BrokerError> {
        self.ready()?;
        let (answer, answered) = oneshot::channel();
        let stopped = || BrokerError::Unavailable(self.on_this_shard("the publisher stopped"));
        self.publishes
            .send(PublishRequest { events, answer })
            .map_err(|_| stopped())?;
        // Taken by the publisher but not answered (its task ended): it may have been sent.
        answered
            .await
            .map_err(|_| BrokerError::OutcomeUnknown(self.on_this_shard("the publisher stopped")))?
    }

    /// Publishes `events` now, in order (see [`scripts::PUBLISH`]): one pipeline of scripts of
    /// at most [`EVENTS_PER_SCRIPT`] events per round trip.
    async fn publish_now(&self, events: &[Publication]) -> Result<Vec<Outcome>, BrokerError> {
        let shared = self;
        shared.accepting()?;
        let (generation, mut commands) = shared.commands()?;
        let size = shared.history_size();
        let mut replies = Vec::with_capacity(events.len());
        // Round trips of bounded size, one after the other (a broadcast to many users must not be
        // one pipeline that outlasts REDIS_TIMEOUT).
        for round in shared.plan(events).chunks(SCRIPTS_PER_ROUND_TRIP) {
            let mut pipeline = redis::pipe();
            for script in round {
                pipeline.add_command(shared.publish_command(script));
            }
            if shared.wait_replicas > 0 {
                // Answered once that many replicas have the round (or the wait is over).
                pipeline
                    .cmd("WAIT")
                    .arg(shared.wait_replicas)
                    .arg((shared.timeout / 2).as_millis().max(1));
            }
            let mut result = pipeline
                .query_async::<Vec<redis::Value>>(&mut commands)
                .await;
            if matches!(&result, Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
            {
                // Redis forgot the script (SCRIPT FLUSH): nothing ran; load it and run again.
                if let Err(error) = scripts::PUBLISH.load_async(&mut commands).await {
                    return Err(shared.command_failed(generation, &error));
                }
                result = pipeline.query_async(&mut commands).await;
            }
            let scripts_in_round = round.len();
            let answers = result.map_err(|error| {
                let failed = shared.command_failed(generation, &error);
                // Sent over a link that broke (it may have run), after earlier rounds that were
                // published, or as one of several scripts of which the others may have run: the
                // outcome is unknown. Only a lone script Redis refused, or a round every script of
                // which was redirected (its slot moved: nothing ran), surely did nothing.
                let partial = !replies.is_empty()
                    || (scripts_in_round > 1 && !all_redirected(&error, scripts_in_round))
                    || only_after_scripts(&error, scripts_in_round);
                match failed {
                    BrokerError::Unavailable(why) if link_broken(&error) || partial => {
                        BrokerError::OutcomeUnknown(why)
                    }
                    failed => failed,
                }
            })?;
            let mut answers = answers.into_iter();
            for answer in answers.by_ref().take(scripts_in_round) {
                let part: Vec<(u8, String, u64, usize)> =
                    redis::from_redis_value(answer).map_err(|error| {
                        BrokerError::OutcomeUnknown(
                            shared.on_this_shard(format!("redis: unexpected answer: {error}")),
                        )
                    })?;
                replies.extend(part);
            }
            if shared.wait_replicas > 0 {
                let confirmed: i64 = answers
                    .next()
                    .and_then(|answer| redis::from_redis_value(answer).ok())
                    .unwrap_or(0);
                if confirmed < i64::from(shared.wait_replicas) {
                    return Err(BrokerError::OutcomeUnknown(shared.on_this_shard(format!(
                        "redis: published, but {confirmed} of the {} replicas asked for \
                         (REDIS_WAIT_REPLICAS) confirmed it in time; a failover may lose it",
                        shared.wait_replicas
                    ))));
                }
            }
        }
        let outcomes = replies
            .into_iter()
            .map(|(duplicate, epoch, position, delivered)| {
                let duplicate = duplicate == 1;
                Outcome {
                    delivery: Delivery {
                        delivered,
                        failed: 0,
                    },
                    stored: (size > 0).then(|| StreamPosition {
                        epoch: Arc::from(epoch),
                        position,
                    }),
                    duplicate,
                }
            })
            .collect();
        Ok(outcomes)
    }

    /// Attaches a connection of `user`, a user of this shard (see [`Broker::attach`]).
    async fn attach(
        self: &Arc<Self>,
        user: UserId,
        transport: Transport,
        resume_from: Option<&str>,
        _want_head: bool,
    ) -> Result<Attached, AttachError> {
        let shared = self;
        shared.ready()?;
        shared.subscribe(&user).await?;
        // From here on, dropping the registration unsubscribes and forgets the presence.
        let (registration, outbox) = shared.hub.attach_joining(user.clone(), transport);
        let presence = presence_value(transport, registration.connected_at_ms());
        let joining = Some((registration.id(), presence));
        let catch_up = match shared.join(&user, resume_from, joining).await? {
            Joined::AtLimit => {
                return Err(AttachError::UserLimit(UserLimitReached {
                    limit: shared.join_rules.per_user,
                }));
            }
            Joined::Accepted(catch_up, arrival) => {
                shared.report_arrival(&user, registration.id(), transport, arrival);
                catch_up
            }
        };
        let resumed = resume_from.map(|_| match catch_up.resync {
            Some(reason) => Resumed::Resync(reason),
            None => Resumed::Replayed(catch_up.events.len()),
        });
        let head = (shared.history_size() > 0).then(|| catch_up.head.clone());
        if let Some(cursor) = shared
            .hub
            .complete_catch_up(&user, registration.id(), catch_up)
        {
            shared.spawn_catch_up(Lagging {
                user,
                connection: registration.id(),
                cursor,
            });
        }
        Ok(Attached {
            registration,
            outbox,
            head,
            resumed,
        })
    }

    /// Whether departures are recorded in Redis and reported (`user.disconnected` is wanted).
    fn reports_departures(&self) -> bool {
        self.webhooks.wants(WebhookType::UserDisconnected)
    }

    /// The grace a departure waits out in Redis before it is reported: none when nobody wants
    /// `user.disconnected` (no departure records, no confirmation).
    fn presence_grace_ms(&self) -> u64 {
        if self.reports_departures() {
            self.grace.as_millis() as u64
        } else {
            0
        }
    }

    /// Sends the presence webhooks a join calls for.
    fn report_arrival(
        &self,
        user: &UserId,
        connection: u64,
        transport: Transport,
        arrival: Arrival,
    ) {
        if let Arrival::AfterDeparture(token, reason) = &arrival {
            self.webhooks.user_disconnected(user, token, reason);
        }
        if arrival != Arrival::Known {
            let connection_id = format!("{}/{connection}", self.node);
            self.webhooks
                .user_connected(user, &connection_id, transport);
        }
    }

    /// The command connection, or why there is none.
    fn commands(&self) -> Result<(u64, MultiplexedConnection), BrokerError> {
        self.commands.read().clone().ok_or_else(|| {
            let reason = self.down.borrow().clone().unwrap_or_default();
            BrokerError::Unavailable(reason)
        })
    }

    /// Whether the link is down, or a command on it just failed in a way that makes the
    /// supervisor rebuild it (which catches every connection up).
    fn link_failing(&self) -> bool {
        match &*self.commands.read() {
            None => true,
            Some((generation, _)) => self.failed_generation.load(Ordering::Acquire) == *generation,
        }
    }

    /// Whether `user` lives on this shard.
    fn owns(&self, user: &UserId) -> bool {
        shards::shard_of(user.as_str(), self.place.count) == self.place.index
    }

    /// `reason`, naming this shard when there are several.
    fn on_this_shard(&self, reason: impl std::fmt::Display) -> String {
        if self.place.count == 1 {
            return reason.to_string();
        }
        let Place {
            index,
            count,
            address,
        } = &self.place;
        format!("redis shard {} of {count} ({address}): {reason}", index + 1)
    }

    /// Why this shard cannot take work now (down, or stalled), if it cannot.
    fn unavailable(&self) -> Option<String> {
        let down = self.down.borrow().clone();
        let stalled = || self.stalled.load(Ordering::Acquire);
        down.or_else(|| stalled().then(|| self.on_this_shard(link::STALLED)))
    }

    /// The users with a connection somewhere whose shard this is.
    async fn online_users(&self) -> Result<Vec<UserId>, BrokerError> {
        let (generation, mut commands) = self.commands()?;
        let users: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}online", self.names.prefix()))
            .query_async(&mut commands)
            .await
            .map_err(|error| self.command_failed(generation, &error))?;
        Ok(users
            .iter()
            .filter_map(|user| UserId::parse(user).ok())
            .collect())
    }

    /// Whether new work (a push, a connection) may be sent to Redis now: not while it is stalled
    /// (what is in flight waits for it; new work would only pile up behind).
    fn accepting(&self) -> Result<(), BrokerError> {
        if self.stalled.load(Ordering::Acquire) {
            return Err(BrokerError::Unavailable(self.on_this_shard(link::STALLED)));
        }
        Ok(())
    }

    /// Whether this shard can take new work now: linked, and not stalled.
    fn ready(&self) -> Result<(), BrokerError> {
        self.accepting()?;
        self.commands().map(drop)
    }

    /// Counts a failed command; if it failed because the link is broken, has it rebuilt.
    fn command_failed(&self, generation: u64, error: &redis::RedisError) -> BrokerError {
        bump(&self.counters.errors);
        if link_broken(error) || moved_away(error) {
            self.failed_generation.store(generation, Ordering::Release);
            self.failed.notify_one();
        } else {
            tracing::error!(%error, redis = %self.place.address, "redis script failed");
        }
        BrokerError::Unavailable(self.on_this_shard(format!("redis: {error}")))
    }

    /// Subscribes this node to `user`'s channel (counted: one per joining connection).
    async fn subscribe(&self, user: &UserId) -> Result<(), BrokerError> {
        let (answer, answered) = oneshot::channel();
        let gone = || BrokerError::Unavailable("redis link stopped".to_owned());
        self.changes
            .send(Change::Subscribe(user.clone(), answer))
            .map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }

    fn history_size(&self) -> usize {
        if self.history.enabled() {
            self.history.size
        } else {
            0
        }
    }

    fn history_ttl_ms(&self) -> u128 {
        self.history.ttl.as_millis().max(1)
    }

    fn meta_ttl_ms(&self) -> u128 {
        META_TTL.max(self.history.ttl * 2).as_millis()
    }

    fn record_ttl_ms(&self) -> u128 {
        if self.history_size() > 0 {
            self.history_ttl_ms()
        } else {
            PASSING_RECORD_TTL.as_millis()
        }
    }

    /// The [`scripts::PUBLISH`] call for `parts`.
    fn publish_command(&self, parts: &[Part<'_>]) -> redis::Cmd {
        let mut command = redis::cmd("EVALSHA");
        command
            .arg(scripts::PUBLISH.get_hash())
            .arg(1)
            .arg(self.names.prefix())
            .arg(self.names.publish_command())
            .arg(self.history_size())
            .arg(self.history_ttl_ms())
            .arg(self.meta_ttl_ms())
            .arg(ulid::Ulid::new().to_string())
            .arg(self.max_bytes)
            .arg(self.record_ttl_ms());
        let upstream = |event: &Publication| {
            if event.id_origin == IdOrigin::Upstream {
                "1"
            } else {
                "0"
            }
        };
        for part in parts {
            match part {
                Part::Single { event, record } => {
                    command
                        .arg(if record.is_some() { "L" } else { "E" })
                        .arg(event.user_id.as_str())
                        .arg(event.event_id().as_ref())
                        .arg(upstream(event))
                        .arg(wire::envelope(&event.event));
                    if let Some(record) = record {
                        command.arg(record);
                    }
                }
                Part::Shared {
                    record,
                    content,
                    more,
                    template,
                    events,
                } => {
                    let first = &events[0];
                    command
                        .arg("G")
                        .arg(record)
                        .arg(first.event_id().as_ref())
                        .arg(upstream(first))
                        .arg(content.as_deref().unwrap_or_default())
                        .arg(if *more { "1" } else { "0" })
                        .arg(template.before)
                        .arg(template.after)
                        .arg(events.len());
                    for event in *events {
                        command
                            .arg(event.user_id.as_str())
                            .arg(template.user_of(event).unwrap_or_default());
                    }
                }
            }
        }
        command
    }

    /// Splits `events` into publish scripts of at most [`EVENTS_PER_SCRIPT`] events, in order.
    fn plan<'a>(&self, events: &'a [Publication]) -> Vec<Vec<Part<'a>>> {
        let by_reference = self.history_size() > 0;
        let mut scripts = Vec::new();
        let mut script = Vec::new();
        let mut room = EVENTS_PER_SCRIPT;
        let mut rest = events;
        while !rest.is_empty() {
            if room == 0 {
                scripts.push(std::mem::take(&mut script));
                room = EVENTS_PER_SCRIPT;
            }
            let (shared, template) = sharing_payload(rest);
            let Some(template) = template.filter(|_| shared >= 2) else {
                let event = &rest[0];
                let record = (by_reference && event.event.frame.len() > INLINE_MAX)
                    .then(|| ulid::Ulid::new().to_string());
                script.push(Part::Single { event, record });
                room -= 1;
                rest = &rest[1..];
                continue;
            };
            let (mut group, after) = rest.split_at(shared);
            let record = ulid::Ulid::new().to_string();
            let mut content = Some(wire::shared_record(&group[0].event));
            while !group.is_empty() {
                if room == 0 {
                    scripts.push(std::mem::take(&mut script));
                    room = EVENTS_PER_SCRIPT;
                }
                let (now, later) = group.split_at(room.min(group.len()));
                script.push(Part::Shared {
                    record: record.clone(),
                    content: content.take(),
                    more: !later.is_empty(),
                    template,
                    events: now,
                });
                room -= now.len();
                group = later;
            }
            rest = after;
        }
        if !script.is_empty() {
            scripts.push(script);
        }
        scripts
    }

    /// Runs [`scripts::JOIN`]: for a joining connection (`joining`: its id and presence value)
    /// or one catching up (`None`), from the point `from`.
    async fn join(
        &self,
        user: &UserId,
        from: Option<&str>,
        joining: Option<(u64, String)>,
    ) -> Result<Joined, BrokerError> {
        let (generation, mut commands) = self.commands()?;
        let (token_epoch, token_position) = from
            .and_then(parse_token)
            .map_or((String::new(), String::new()), |(epoch, position)| {
                (epoch.to_owned(), position.to_string())
            });
        let (connection, presence, limit) = match joining {
            Some((connection, presence)) => (connection, presence, self.join_rules.per_user),
            None => (0, String::new(), 0),
        };
        // Records at hand are not sent again; held until the reply is read.
        let held = self.records.lock().snapshot();
        let mut invocation = scripts::JOIN.prepare_invoke();
        invocation
            .key(self.names.prefix())
            .arg(self.names.publish_command())
            .arg(self.history_size())
            .arg(self.history_ttl_ms())
            .arg(self.meta_ttl_ms())
            .arg(ulid::Ulid::new().to_string())
            .arg(user.as_str())
            .arg(from.unwrap_or_default())
            .arg(token_epoch)
            .arg(token_position)
            .arg(&self.node)
            .arg(connection)
            .arg(presence)
            .arg(limit)
            .arg(if self.join_rules.replace_oldest {
                "1"
            } else {
                "0"
            });
        for (id, _) in &held {
            invocation.arg(id);
        }
        let reply: Vec<redis::Value> = invocation
            .invoke_async(&mut commands)
            .await
            .map_err(|error| self.command_failed(generation, &error))?;
        read_join_reply(reply, from, held, &self.records).map_err(|error| {
            bump(&self.counters.errors);
            tracing::error!(%error, "unexpected JOIN reply");
            BrokerError::Unavailable(error.to_string())
        })
    }

    /// The connections of `user` on live nodes (see [`scripts::CONNECTIONS`]), oldest first;
    /// with `disconnect`, they are all told to close.
    async fn connections(
        &self,
        user: &UserId,
        disconnect: bool,
    ) -> Result<Vec<UserConnection>, BrokerError> {
        let (generation, mut commands) = self.commands()?;
        let pairs: Vec<(String, String)> = scripts::CONNECTIONS
            .prepare_invoke()
            .key(self.names.prefix())
            .arg(self.names.publish_command())
            .arg(user.as_str())
            .arg(if disconnect { "1" } else { "0" })
            .invoke_async(&mut commands)
            .await
            .map_err(|error| self.command_failed(generation, &error))?;
        let mut connections: Vec<UserConnection> = pairs
            .into_iter()
            .filter_map(|(field, value)| read_presence(field, &value))
            .collect();
        connections.sort_by(|a, b| a.connected_since.total_cmp(&b.connected_since));
        Ok(connections)
    }

    /// Catches one lagging connection up from its cursor, in the background. If Redis fails
    /// meanwhile, the reconnection catches every connection up anyway.
    fn spawn_catch_up(self: &Arc<Self>, lagging: Lagging) {
        let shared = Arc::clone(self);
        self.lifecycle.spawn_background(async move {
            let Lagging {
                user,
                connection,
                mut cursor,
            } = lagging;
            let Ok(_permit) = shared.catch_up_slots.acquire().await else {
                return;
            };
            for _ in 0..CATCH_UP_ROUNDS {
                bump(&shared.counters.catch_ups);
                let from = cursor.to_string();
                let mut catch_up = match shared.join(&user, Some(&from), None).await {
                    Ok(Joined::Accepted(catch_up, _)) => catch_up,
                    // The link broke: reconnecting catches every connection up.
                    Err(_) if shared.link_failing() => return,
                    Ok(Joined::AtLimit) | Err(_) => break,
                };
                catch_up.after = Some(cursor.clone());
                match shared.hub.complete_catch_up(&user, connection, catch_up) {
                    None => return,
                    Some(still_behind) => cursor = still_behind,
                }
            }
            // Never left waiting forever: closed, the client reconnects and resumes.
            tracing::warn!(%user, connection, "connection could not catch up; closing it");
            shared
                .hub
                .kick(&user, connection, DisconnectReason::SlowConsumer);
        });
    }
}

/// The payload records a node received last, by id, newest last (at most [`RECENT_RECORDS`]):
/// events that name one share its payload, and it need not cross the link again.
#[derive(Default)]
struct Recent(VecDeque<(String, Content)>);

impl Recent {
    /// The record `id`, if it is at hand.
    fn get(&self, id: &str) -> Option<Content> {
        self.0
            .iter()
            .rev()
            .find(|(held, _)| held == id)
            .map(|(_, content)| content.clone())
    }

    /// The record `id` as this node shares it: the one at hand, else `content`, now kept.
    fn share(&mut self, id: &str, content: Content) -> Content {
        if let Some(held) = self.get(id) {
            return held;
        }
        if self.0.len() == RECENT_RECORDS {
            self.0.pop_front();
        }
        self.0.push_back((id.to_owned(), content.clone()));
        content
    }

    /// Everything at hand.
    fn snapshot(&self) -> Vec<(String, Content)> {
        self.0.iter().cloned().collect()
    }
}

/// One item of a publish script (see [`scripts::PUBLISH`]).
enum Part<'a> {
    /// One user's event; with a record id when it is stored by reference (larger than
    /// [`INLINE_MAX`]).
    Single {
        event: &'a Publication,
        record: Option<String>,
    },
    /// Consecutive events of one group (several users, one payload): the record's id, the record
    /// itself in the group's first part only, whether more parts of the group follow, the heads'
    /// common parts around the user.
    Shared {
        record: String,
        content: Option<Vec<u8>>,
        more: bool,
        template: Template<'a>,
        events: &'a [Publication],
    },
}

/// What the heads of one group's events have in common: all of a head but the user's id (a JSON
/// string, see [`user_in_head`]), which stands between `before` and `after`.
#[derive(Clone, Copy)]
struct Template<'a> {
    before: &'a [u8],
    after: &'a [u8],
}

impl<'a> Template<'a> {
    /// The template of `event`'s head, if it is a push's head naming its user.
    fn of(event: &'a Publication) -> Option<Self> {
        let head = event.event.frame.head();
        let user = user_in_head(head, &event.user_id)?;
        Some(Self {
            before: &head[..user.start],
            after: &head[user.end..],
        })
    }

    /// The user's id in `event`'s head, if the head follows this template.
    fn user_of(&self, event: &'a Publication) -> Option<&'a [u8]> {
        let head = event.event.frame.head();
        head.strip_prefix(self.before)?.strip_suffix(self.after)
    }
}

/// How many publications at the start of `events` form one group (frames sharing the first one's
/// payload, with the same event id, type and id origin, whose heads differ only by the user), and
/// their heads' template.
fn sharing_payload(events: &[Publication]) -> (usize, Option<Template<'_>>) {
    let Some((first, template)) = events
        .first()
        .and_then(|first| Some((first, Template::of(first)?)))
    else {
        return (events.len().min(1), None);
    };
    let same = |event: &Publication| {
        let (a, b) = (&first.event, &event.event);
        Arc::ptr_eq(a.frame.payload(), b.frame.payload())
            && a.event_id == b.event_id
            && a.event_type == b.event_type
            && first.id_origin == event.id_origin
            && template.user_of(event).is_some()
    };
    let count = events.iter().take_while(|event| same(event)).count();
    (count, Some(template))
}

/// Whether `error` means the link to Redis is broken (rather than one command failing).
fn link_broken(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
}

/// Whether a Redis error of this kind says it does not serve the shard's slot (a Redis Cluster
/// moved it, is moving it, or made this Redis a replica): nothing ran.
fn redirects(kind: redis::ServerErrorKind) -> bool {
    use redis::ServerErrorKind::{Ask, ClusterDown, MasterDown, Moved, ReadOnly, TryAgain};
    matches!(
        kind,
        Moved | Ask | TryAgain | ClusterDown | ReadOnly | MasterDown
    )
}

/// Whether `error` says this Redis no longer serves the shard ([`redirects`]): the link must
/// reconnect to the new owner.
fn moved_away(error: &redis::RedisError) -> bool {
    matches!(error.kind(), redis::ErrorKind::Server(kind) if redirects(kind))
}

/// Whether each of the `scripts` scripts of a pipeline was refused because this Redis does not
/// serve the shard's slot ([`redirects`]): none of them ran.
fn all_redirected(error: &redis::RedisError, scripts: usize) -> bool {
    error.clone().into_server_errors().is_some_and(|errors| {
        // A `WAIT` after the scripts (REDIS_WAIT_REPLICAS) may fail too: only the scripts count.
        let refused: Vec<_> = errors.iter().filter(|(at, _)| *at < scripts).collect();
        refused.len() == scripts
            && refused
                .iter()
                .all(|(_, error)| error.kind().is_some_and(redirects))
    })
}

/// Whether the only commands of a pipeline that failed came after its `scripts` scripts (a
/// `WAIT`): the scripts all ran.
fn only_after_scripts(error: &redis::RedisError, scripts: usize) -> bool {
    error
        .clone()
        .into_server_errors()
        .is_some_and(|errors| !errors.is_empty() && errors.iter().all(|(at, _)| *at >= scripts))
}

/// Each shard's target, address (for reports) and names: one per server of `REDIS_URL`, or one
/// per partition of a Redis Cluster.
fn targets(settings: &Settings) -> Result<Vec<(Target, String, Names)>, String> {
    let prefix = &settings.redis_key_prefix;
    let root_cert = match &settings.redis_ca_file {
        None => None,
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|error| format!("invalid REDIS_CA_FILE={}: {error}", path.display()))?,
        ),
    };
    if !settings.redis_cluster {
        return settings
            .redis_url
            .iter()
            .map(|url| {
                use redis::IntoConnectionInfo as _;
                let info = url
                    .expose()
                    .into_connection_info()
                    .map_err(|error| format!("invalid REDIS_URL: {error}"))?;
                let address = info.addr().to_string();
                let client = |protocol| {
                    client_for(info.clone(), protocol, root_cert.as_deref())
                        .map(Box::new)
                        .map_err(|error| format!("invalid REDIS_URL or REDIS_CA_FILE: {error}"))
                };
                let target = Target::Server {
                    commands: client(redis::ProtocolVersion::RESP2)?,
                    subscriptions: client(redis::ProtocolVersion::RESP3)?,
                };
                Ok((target, address, Names::new(prefix, false)))
            })
            .collect();
    }
    let urls: Vec<String> = settings
        .redis_url
        .iter()
        .map(|url| url.expose().to_owned())
        .collect();
    let seeds = Arc::new(slots::Seeds::new(&urls, root_cert)?);
    let partitions = usize::from(settings.redis_cluster_partitions);
    Ok(slots::partition_tags(partitions)
        .into_iter()
        .map(|(tag, slot)| {
            let target = Target::Partition {
                seeds: Arc::clone(&seeds),
                slot,
            };
            let names = Names::new(&format!("{prefix}{tag}:"), true);
            (target, format!("cluster slot {slot}"), names)
        })
        .collect())
}

/// A Redis client for `info`, speaking `protocol`, trusting `root_cert` (`REDIS_CA_FILE`) when
/// given (else, for TLS, the public roots).
fn client_for(
    info: redis::ConnectionInfo,
    protocol: redis::ProtocolVersion,
    root_cert: Option<&[u8]>,
) -> Result<redis::Client, redis::RedisError> {
    let settings = info.redis_settings().clone().set_protocol(protocol);
    let info = info.set_redis_settings(settings);
    match root_cert {
        None => redis::Client::open(info),
        Some(root_cert) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert.to_vec()),
            },
        ),
    }
}

/// Most acknowledgement notices waiting for [`relay_acks`] per shard; beyond, they are dropped
/// (and counted as errors): their events are reported undelivered when they time out.
const ACK_NOTICES_QUEUED: usize = 4096;

/// Most acknowledgement notices sent in one round trip.
const ACK_NOTICES_PER_ROUND: usize = 256;

/// Tells every node (on the shard's groups channel) about acknowledgements of events this node
/// does not track: the node that tracks them resolves them. Notices waiting meanwhile go in one
/// pipeline per round trip. Tried once: a notice lost with the link leaves its event to be
/// reported undelivered when it times out (at least once, never silently).
async fn relay_acks(shared: Arc<Shared>, mut notices: mpsc::Receiver<(UserId, Vec<Arc<str>>)>) {
    let mut batch = Vec::with_capacity(ACK_NOTICES_PER_ROUND);
    while notices.recv_many(&mut batch, ACK_NOTICES_PER_ROUND).await > 0 {
        let Ok((generation, mut commands)) = shared.commands() else {
            batch.clear();
            continue;
        };
        let mut pipeline = redis::pipe();
        for (user, ids) in batch.drain(..) {
            pipeline
                .cmd(shared.names.publish_command())
                .arg(shared.names.groups_channel())
                .arg(wire::ack_notice(&user, &ids))
                .ignore();
        }
        if let Err(error) = pipeline.query_async::<()>(&mut commands).await {
            shared.command_failed(generation, &error);
        }
    }
}

/// Reads [`scripts::JOIN`]'s reply (see there for its shape); the records it names but does not
/// carry are among `held`. Records it carries join the node's `recent` ones.
fn read_join_reply(
    reply: Vec<redis::Value>,
    from: Option<&str>,
    held: Vec<(String, Content)>,
    recent: &Mutex<Recent>,
) -> Result<Joined, String> {
    let mut fields = reply.into_iter();
    let mut next = || fields.next().ok_or_else(|| "short reply".to_owned());
    let text = |value: redis::Value| {
        redis::from_redis_value::<String>(value).map_err(|error| error.to_string())
    };
    let number = |value: redis::Value| {
        redis::from_redis_value::<u64>(value).map_err(|error| error.to_string())
    };
    let status = text(next()?)?;
    if status == "limit" {
        return Ok(Joined::AtLimit);
    }
    let epoch: Arc<str> = Arc::from(text(next()?)?);
    let head = StreamPosition {
        epoch: Arc::clone(&epoch),
        position: number(next()?)?,
    };
    let arrival = Arrival::read(&text(next()?)?)?;
    let reason = text(next()?)?;
    let resync = if reason.is_empty() {
        None
    } else {
        Some(
            reason
                .parse::<ResyncReason>()
                .map_err(|_| format!("reason {reason:?}"))?,
        )
    };
    let count = usize::try_from(number(next()?)?).map_err(|error| error.to_string())?;
    let bytes = |value: redis::Value| {
        redis::from_redis_value::<Vec<u8>>(value)
            .map(bytes::Bytes::from)
            .map_err(|error| error.to_string())
    };
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let position = number(next()?)?;
        let stored = bytes(next()?)?;
        let record = text(next()?)?;
        entries.push((position, stored, record));
    }
    let mut records: HashMap<String, Content> = held.into_iter().collect();
    while let Some(id) = fields.next() {
        let record = fields.next().ok_or_else(|| "missing record".to_owned())?;
        let content = wire::open_record(bytes(record)?).map_err(|error| error.to_string())?;
        let id = text(id)?;
        let content = recent.lock().share(&id, content);
        records.insert(id, content);
    }
    let mut events = Vec::with_capacity(count);
    for (position, stored, record) in entries {
        let event = if record.is_empty() {
            wire::open_envelope(stored)
        } else {
            let content = records
                .get(&record)
                .ok_or_else(|| format!("record {record} missing"))?;
            content.event(stored)
        };
        events.push(Sequenced {
            at: StreamPosition {
                epoch: Arc::clone(&epoch),
                position,
            },
            event: event.map_err(|error| error.to_string())?,
        });
    }
    Ok(Joined::Accepted(
        CatchUp {
            head,
            events,
            resync,
            from: from.map(str::to_owned),
            after: None,
        },
        arrival,
    ))
}

/// One presence entry (`<node>/<connection>` → `<transport> <connected-at ms>`) as the
/// administrative API shows it.
fn read_presence(field: String, value: &str) -> Option<UserConnection> {
    let (node, _) = field.rsplit_once('/')?;
    let (transport, since) = value.split_once(' ')?;
    let transport = transport.parse::<Transport>().ok()?;
    Some(UserConnection {
        node_id: Some(node.to_owned()),
        connected_since: super::unix_seconds(since.parse().ok()?),
        transport,
        connection_id: field,
    })
}

/// A connection's presence value: `<transport> <connected-at ms>`.
fn presence_value(transport: Transport, connected_at_ms: u64) -> String {
    format!("{} {connected_at_ms}", transport.label())
}

#[async_trait]
impl Broker for RedisBroker {
    fn acknowledge(&self, user: &UserId, ids: Vec<Arc<str>>) {
        let shard = self.shard(user);
        // Acknowledged on the node that pushed: nothing to tell the others.
        let elsewhere = shard.acks.acknowledge(user, ids);
        if elsewhere.is_empty() {
            return;
        }
        if shard
            .ack_notices
            .try_send((user.clone(), elsewhere))
            .is_err()
        {
            // Redis is slower than the acknowledgements: those events are reported undelivered
            // when they time out (at least once, never silently).
            bump(&shard.counters.errors);
        }
    }

    fn connection_id(&self, connection: u64) -> String {
        format!("{}/{connection}", self.node)
    }

    async fn publish(&self, events: &[Publication]) -> Result<Vec<Outcome>, BrokerError> {
        let [shard] = self.shards.as_slice() else {
            return self.publish_across_shards(events).await;
        };
        shard.publish(events.to_vec()).await
    }

    async fn attach(
        &self,
        user: UserId,
        transport: Transport,
        resume_from: Option<&str>,
        want_head: bool,
    ) -> Result<Attached, AttachError> {
        self.shard(&user)
            .attach(user, transport, resume_from, want_head)
            .await
    }

    async fn connections_of(&self, user: &UserId) -> Result<Vec<UserConnection>, BrokerError> {
        self.shard(user).connections(user, false).await
    }

    async fn disconnect(&self, user: &UserId) -> Result<usize, BrokerError> {
        Ok(self.shard(user).connections(user, true).await?.len())
    }

    async fn online_users(&self) -> Result<Vec<UserId>, BrokerError> {
        let lists = join_all(self.shards.iter().map(|shard| shard.online_users())).await;
        let mut users = Vec::new();
        for list in lists {
            users.extend(list?);
        }
        Ok(users)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn unavailable(&self) -> Option<String> {
        // All shards down: nothing can be served. One of several down concerns its users only
        // (see `shards`): every node is in the same position, so turning unready would only
        // take the others' users down too.
        let reasons: Option<Vec<String>> = self.shards.iter().map(|s| s.unavailable()).collect();
        reasons.map(|reasons| reasons.join("; "))
    }

    fn shards(&self) -> Vec<ShardReport> {
        if self.shards.len() == 1 {
            return Vec::new();
        }
        self.shards
            .iter()
            .map(|shard| ShardReport {
                shard: shard.place.index + 1,
                redis: shard.place.address.clone(),
                unavailable: shard.unavailable(),
            })
            .collect()
    }

    fn cluster(&self) -> Option<ClusterStats> {
        // Every node reports its counts to every shard; users are split among the shards.
        let mut stats: Option<ClusterStats> = None;
        for shard in &self.shards {
            let Some(seen) = shard.cluster.lock().clone() else {
                continue;
            };
            stats = Some(match stats {
                None => seen,
                Some(total) => ClusterStats {
                    nodes: total.nodes.max(seen.nodes),
                    connections: total.connections.max(seen.connections),
                    websocket_connections: total
                        .websocket_connections
                        .max(seen.websocket_connections),
                    sse_connections: total.sse_connections.max(seen.sse_connections),
                    users: total.users + seen.users,
                    ..total
                },
            });
        }
        stats
    }

    fn report(&self) -> BrokerReport {
        let read = |counter: fn(&Counters) -> &AtomicU64| -> u64 {
            self.shards
                .iter()
                .map(|shard| counter(&shard.counters).load(Ordering::Relaxed))
                .sum()
        };
        BrokerReport {
            kind: self.kind(),
            node_id: Some(self.node.clone()),
            connected: self
                .shards
                .iter()
                .all(|shard| shard.unavailable().is_none()),
            link: Some(LinkCounts {
                outages: read(|c| &c.outages),
                reconnects: read(|c| &c.reconnects),
                errors: read(|c| &c.errors),
                messages_received: read(|c| &c.messages_received),
                malformed_messages: read(|c| &c.malformed_messages),
                catch_ups: read(|c| &c.catch_ups),
            }),
        }
    }

    async fn shutdown(&self) {
        join_all(self.shards.iter().map(|shard| link::leave_cluster(shard))).await;
    }
}
