//! Keeping this node linked to the cluster: connecting to Redis (and reconnecting with backoff and
//! jitter), the channel subscriptions of the users connected here, presence (registration,
//! heartbeat, departures) and the recovery after an outage.
//!
//! One supervisor task owns the subscription connection and the set of subscribed users; every
//! subscription change goes through it, in order, so a user's channel is subscribed exactly while
//! this node has connections of theirs. The groups channel (events of several users sharing one
//! payload) is subscribed whenever the link is up; the receiving task delivers its messages to the
//! members connected here. While the shard's Redis is unreachable its users' joins and pushes are
//! refused (503), existing connections stay open, and the node is unready if no shard is up. On reconnection the supervisor
//! resubscribes every local user, re-registers this node's connections (forgetting whatever
//! presence it had, since departures may have been lost), renews its lease, and only then declares
//! the link up and catches every connection up from the history: events published during the
//! outage are replayed, or, if Redis lost its data, the client is told to resync.
//!
//! A live link is checked at every heartbeat (`PRESENCE_LEASE`/3): the command connection by the
//! heartbeat script, the subscription connection by a PING (a socket cut silently by a NAT would
//! otherwise never deliver again). Between heartbeats a probe task asks Redis for a PING every
//! [`PROBE_INTERVAL`] on a connection of its own: a Redis that stalls with its connections open
//! makes the node unready, refusing new work, within about a second, and ready again as soon as it
//! answers. A heartbeat that finds this node reaped (its lease ran out
//! while it was paused) registers its connections again.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::wire::{self, ChannelMessage, Content, Group, Member};
use super::{
    Change, MISCONFIGURED, Shared, bump, link_broken, moved_away, presence_value, scripts,
};
use crate::broker::BrokerError;
use crate::hub::{Departure, Present, Sequenced};
use crate::metrics::ClusterStats;
use crate::protocol::{DisconnectReason, Label, Transport, UserId};

/// First wait before reconnecting; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// Longest wait between reconnection attempts: short, so that service resumes within about this
/// long once Redis is back. An attempt is cheap (a refused TCP connection, or one that waits for
/// a stalled Redis and completes as soon as it answers).
const MAX_BACKOFF: Duration = Duration::from_millis(100);
/// How often a live link's probe asks Redis for a `PING`.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How long the probe waits for the answer before calling Redis stalled (it keeps waiting, up to
/// `REDIS_TIMEOUT`, after which the link is given up).
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Why the node refuses work while Redis is stalled.
pub(super) const STALLED: &str = "redis unavailable: it does not answer (stalled)";
/// Most subscription changes, connections or departures sent to Redis in one command.
const CHUNK: usize = 1000;

/// A live link: the command connection, the subscription connection with the messages it
/// receives, and the probe's own connection (so that no command of this node's can delay its
/// `PING`).
struct Link {
    commands: MultiplexedConnection,
    subscriptions: Subscriber,
    messages: mpsc::UnboundedReceiver<PushInfo>,
    probe: MultiplexedConnection,
}

/// This node's subscription connection. It speaks RESP3, so messages arrive as pushes and other
/// commands (a `PING`) may be sent while subscribed. Each (un)subscription is a command of its
/// own channel, answered by exactly one confirmation: the client library pairs confirmations with
/// requests one to one. With a Redis Cluster it uses sharded pub/sub (`SSUBSCRIBE`).
struct Subscriber {
    connection: MultiplexedConnection,
    sharded: bool,
}

impl Subscriber {
    async fn subscribe(&mut self, channels: &[String]) -> Result<(), redis::RedisError> {
        if self.sharded {
            self.send("SSUBSCRIBE", PushKind::SSubscribe, channels)
                .await
        } else {
            self.send("SUBSCRIBE", PushKind::Subscribe, channels).await
        }
    }

    async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), redis::RedisError> {
        if self.sharded {
            self.send("SUNSUBSCRIBE", PushKind::SUnsubscribe, channels)
                .await
        } else {
            self.send("UNSUBSCRIBE", PushKind::Unsubscribe, channels)
                .await
        }
    }

    /// Sends `command` for each channel and checks that each was answered by its own
    /// confirmation. Anything else (Redis ended a subscription by itself, as a Redis Cluster does
    /// when it moves a slot, and that push was taken for an answer) fails: the link is rebuilt.
    async fn send(
        &mut self,
        command: &str,
        confirmation: PushKind,
        channels: &[String],
    ) -> Result<(), redis::RedisError> {
        if channels.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        for channel in channels {
            pipeline.cmd(command).arg(channel);
        }
        let answers: Vec<Value> = pipeline.query_async(&mut self.connection).await?;
        for (channel, answer) in channels.iter().zip(answers) {
            let confirms = |kind: &PushKind, data: &[Value]| {
                *kind == confirmation
                    && matches!(data.first(), Some(Value::BulkString(named)) if named == channel.as_bytes())
            };
            match answer {
                Value::ServerError(error) => return Err(error.into()),
                Value::Push { kind, data } if confirms(&kind, &data) => {}
                other => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "unexpected answer to a subscription",
                        format!("{command} {channel}: {other:?}"),
                    )));
                }
            }
        }
        Ok(())
    }

    async fn ping(&mut self) -> Result<(), redis::RedisError> {
        redis::cmd("PING").query_async(&mut self.connection).await
    }
}

/// The users whose channels this node subscribes to, with their joining/joined connection counts.
type Subscribed = HashMap<UserId, usize, foldhash::fast::RandomState>;

/// Runs until the lifecycle stops it: connects, serves, and reconnects after every failure.
pub(super) async fn supervise(shared: Arc<Shared>, mut changes: mpsc::UnboundedReceiver<Change>) {
    let mut subscribed = Subscribed::default();
    let mut failures = 0u32;
    let mut generation = 0u64;
    let mut down_since = Instant::now();
    loop {
        let link = match connect(&shared, &subscribed).await {
            Ok(link) => link,
            Err(error) => {
                set_down(&shared, format!("redis unavailable: {error}"));
                let wait = backoff(failures);
                failures = failures.saturating_add(1);
                refuse_changes_for(wait, &mut changes, &mut subscribed).await;
                continue;
            }
        };
        generation += 1;
        failures = 0;
        let reason = serve(
            &shared,
            link,
            generation,
            &mut changes,
            &mut subscribed,
            down_since,
        )
        .await;
        down_since = Instant::now();
        bump(&shared.counters.outages);
        set_down(&shared, format!("redis unavailable: {reason}"));
    }
}

/// Connects the link's connections (to the shard's Redis, or to the master that serves the
/// partition's slot now) and restores this node's state in Redis: subscriptions, presence, lease.
/// Nothing is declared up until all of it is done.
async fn connect(shared: &Shared, subscribed: &Subscribed) -> Result<Link, redis::RedisError> {
    let (client, subscriber) = shared.target.clients(shared.timeout).await?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(shared.timeout))
        .set_response_timeout(Some(shared.timeout));
    let mut commands = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    check_mode(shared, &mut commands).await?;
    let (pushes, messages) = mpsc::unbounded_channel();
    let mut subscriptions = Subscriber {
        connection: subscriber
            .get_multiplexed_async_connection_with_config(&config.clone().set_push_sender(pushes))
            .await?,
        sharded: shared.target.is_partition(),
    };
    let mut channels: Vec<String> = subscribed
        .keys()
        .map(|user| shared.names.channel(user))
        .collect();
    channels.push(shared.names.groups_channel().to_owned());
    for chunk in channels.chunks(CHUNK) {
        with_timeout(shared, subscriptions.subscribe(chunk)).await?;
    }
    let probe = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    register(shared, &mut commands).await?;
    heartbeat(shared, &mut commands).await?;
    Ok(Link {
        commands,
        subscriptions,
        messages,
        probe,
    })
}

/// Refuses a Redis that is not what the settings say: a Redis Cluster node named as an independent
/// server would answer only for its own slots.
async fn check_mode(
    shared: &Shared,
    commands: &mut MultiplexedConnection,
) -> Result<(), redis::RedisError> {
    if shared.target.is_partition() {
        return Ok(());
    }
    // `INFO` may be denied to this user (`-@dangerous`): then nothing is known, nothing refused
    // (and a broken connection fails the next command).
    let info: Option<String> = redis::cmd("INFO")
        .arg("cluster")
        .query_async(commands)
        .await
        .ok();
    let cluster =
        info.is_some_and(|info| info.lines().any(|line| line.trim() == "cluster_enabled:1"));
    if cluster {
        return Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            MISCONFIGURED,
            "it is a Redis Cluster node: set REDIS_CLUSTER=true".to_owned(),
        )));
    }
    Ok(())
}

/// Registers every connection of this node afresh, forgetting whatever presence it had (after
/// a (re)connection, or after it was reaped while alive): departures may have been lost.
async fn register(
    shared: &Shared,
    commands: &mut MultiplexedConnection,
) -> Result<(), redis::RedisError> {
    let present = shared.hub.present_where(|user| shared.owns(user));
    let mut chunks = present.chunks(CHUNK);
    // The first call forgets, even with nothing to register.
    let first = chunks.next().unwrap_or_default();
    reset(shared, commands, true, false, first).await?;
    for chunk in chunks {
        reset(shared, commands, false, false, chunk).await?;
    }
    Ok(())
}

/// Runs [`scripts::RESET`] for `present` (forgetting this node's earlier presence first when
/// `forget`; dropping its lease when `drop_lease`).
async fn reset(
    shared: &Shared,
    commands: &mut MultiplexedConnection,
    forget: bool,
    drop_lease: bool,
    present: &[Present],
) -> Result<(), redis::RedisError> {
    let flag = |on: bool| if on { "1" } else { "0" };
    let mut invocation = scripts::RESET.prepare_invoke();
    invocation
        .key(shared.names.prefix())
        .arg(shared.names.publish_command())
        .arg(&shared.node)
        .arg(flag(forget))
        .arg(flag(drop_lease))
        .arg(shared.lease.as_millis())
        .arg(if shared.reports_departures() {
            i64::try_from(shared.grace.as_millis()).unwrap_or(i64::MAX)
        } else {
            -1
        });
    for connection in present {
        invocation
            .arg(connection.user.as_str())
            .arg(connection.connection)
            .arg(presence_value(
                connection.transport,
                connection.connected_at_ms,
            ));
    }
    invocation.invoke_async(commands).await
}

/// Renews this node's lease and refreshes the cluster's counts. If the node had been reaped (its
/// lease ran out while it lived: a long pause), it registers its connections again.
async fn heartbeat(
    shared: &Shared,
    commands: &mut MultiplexedConnection,
) -> Result<(), redis::RedisError> {
    let hub = &shared.hub;
    let (nodes, websocket, sse, users, registered, swept): (u64, u64, u64, u64, u8, Vec<String>) =
        scripts::HEARTBEAT
            .prepare_invoke()
            .key(shared.names.prefix())
            .arg(shared.names.publish_command())
            .arg(&shared.node)
            .arg(shared.lease.as_millis())
            .arg(hub.transport_count(Transport::WebSocket))
            .arg(hub.transport_count(Transport::Sse))
            .arg(hub.user_count())
            .arg(if shared.reports_departures() {
                "1"
            } else {
                "0"
            })
            .invoke_async(commands)
            .await?;
    report_swept(shared, &swept);
    *shared.cluster.lock() = Some(ClusterStats {
        node_id: shared.node.clone(),
        nodes,
        connections: websocket + sse,
        websocket_connections: websocket,
        sse_connections: sse,
        users,
    });
    if registered == 0 && !shared.left.load(Ordering::Acquire) {
        tracing::warn!(
            node = %shared.node,
            "this node's lease had run out (paused?): registering its connections again"
        );
        register(shared, commands).await?;
    }
    Ok(())
}

/// Serves a live link until it fails; returns why it failed.
async fn serve(
    shared: &Arc<Shared>,
    link: Link,
    generation: u64,
    changes: &mut mpsc::UnboundedReceiver<Change>,
    subscribed: &mut Subscribed,
    down_since: Instant,
) -> String {
    let Link {
        mut commands,
        mut subscriptions,
        messages,
        probe,
    } = link;
    *shared.commands.write() = Some((generation, commands.clone()));
    // An aborted probe of the last link may have marked a stall after it was torn down.
    shared.stalled.store(false, Ordering::Release);
    shared.down.send_replace(None);
    if generation == 1 {
        tracing::info!(node = %shared.node, "connected to redis");
    } else {
        bump(&shared.counters.reconnects);
        tracing::warn!(
            node = %shared.node,
            outage_seconds = down_since.elapsed().as_secs_f64(),
            "reconnected to redis; catching connections up"
        );
    }
    let mut receiver = shared
        .lifecycle
        .spawn_background(receive(Arc::clone(shared), messages));
    for lagging in shared.hub.begin_catch_up_where(|user| shared.owns(user)) {
        shared.spawn_catch_up(lagging);
    }
    let mut beat = tokio::time::interval(shared.lease / 3);
    beat.tick().await;
    let mut batch = Vec::new();
    // A task of its own: the loop below waits in its arms (a heartbeat, a subscription).
    let (probe_failed, mut unresponsive) = tokio::sync::oneshot::channel();
    let prober = shared.lifecycle.spawn_background({
        let shared = Arc::clone(shared);
        async move {
            let _ = probe_failed.send(watch_responsiveness(&shared, probe).await);
        }
    });
    let reason = loop {
        tokio::select! {
            _ = &mut receiver => break "subscription connection lost".to_owned(),
            reason = &mut unresponsive => break reason.unwrap_or_else(|_| "probe stopped".to_owned()),
            () = shared.failed.notified() => {
                if shared.failed_generation.load(Ordering::Acquire) == generation {
                    break "a command failed".to_owned();
                }
            }
            _ = beat.tick(), if !shared.left.load(Ordering::Acquire) => {
                if let Err(error) = heartbeat(shared, &mut commands).await {
                    break format!("heartbeat failed: {error}");
                }
                // A subscription connection silently cut (a NAT's idle timeout) would never
                // deliver again: it must answer too.
                if let Err(error) = with_timeout(shared, subscriptions.ping()).await {
                    break format!("subscription connection does not answer: {error}");
                }
            }
            received = changes.recv_many(&mut batch, CHUNK) => {
                if received == 0 {
                    break "broker stopped".to_owned();
                }
                if let Err(error) = apply(shared, &mut subscriptions, subscribed, &mut batch).await {
                    break format!("subscribing failed: {error}");
                }
            }
        }
    };
    receiver.abort();
    prober.abort();
    reason
}

/// Asks Redis for a `PING` every [`PROBE_INTERVAL`] on the probe's connection, whatever the
/// node's own traffic. An answer later than [`PROBE_TIMEOUT`] marks Redis stalled (the node turns
/// unready and refuses new work at once) until it comes; no answer within `REDIS_TIMEOUT` (the
/// connection's response timeout), or a broken connection, ends the link: returns why.
async fn watch_responsiveness(shared: &Shared, mut probe: MultiplexedConnection) -> String {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let command = redis::cmd("PING");
    loop {
        tick.tick().await;
        let ping = command.query_async::<()>(&mut probe);
        tokio::pin!(ping);
        let answer = match tokio::time::timeout(PROBE_TIMEOUT, &mut ping).await {
            Ok(answer) => answer,
            Err(_late) => {
                let since = Instant::now();
                shared.stalled.store(true, Ordering::Release);
                tracing::error!(node = %shared.node, "redis does not answer: not ready, refusing new pushes and connections");
                let answer = ping.await;
                shared.stalled.store(false, Ordering::Release);
                if answer.is_ok() {
                    tracing::warn!(
                        node = %shared.node,
                        stalled_seconds = (since.elapsed() + PROBE_TIMEOUT).as_secs_f64(),
                        "redis answers again"
                    );
                }
                answer
            }
        };
        if let Err(error) = answer {
            return format!("redis does not answer: {error}");
        }
    }
}

/// Applies a batch of subscription changes: (S)SUBSCRIBEs and (S)UNSUBSCRIBEs (one command per
/// channel, in one pipeline each) for the users whose interest started or ended, then answers the
/// joiners.
async fn apply(
    shared: &Shared,
    sink: &mut Subscriber,
    subscribed: &mut Subscribed,
    batch: &mut Vec<Change>,
) -> Result<(), redis::RedisError> {
    let mut started = Vec::new();
    let mut ended = Vec::new();
    let mut answers = Vec::new();
    for change in batch.drain(..) {
        match change {
            Change::Subscribe(user, answer) => {
                let count = subscribed.entry(user.clone()).or_insert(0);
                *count += 1;
                if *count == 1 {
                    started.push(user.clone());
                }
                answers.push((user, answer));
            }
            Change::Unsubscribe(user) => unsubscribe(subscribed, &user, &mut ended),
        }
    }
    // A user who both started and ended in this batch is handled by the final state.
    let channels = |users: Vec<UserId>, want: bool| -> Vec<String> {
        users
            .into_iter()
            .filter(|user| subscribed.contains_key(user) == want)
            .map(|user| shared.names.channel(&user))
            .collect()
    };
    let (started, ended) = (channels(started, true), channels(ended, false));
    let result = async {
        if !started.is_empty() {
            with_timeout(shared, sink.subscribe(&started)).await?;
        }
        if !ended.is_empty() {
            with_timeout(shared, sink.unsubscribe(&ended)).await?;
        }
        Ok(())
    };
    let result: Result<(), redis::RedisError> = result.await;
    let mut abandoned = Vec::new();
    for (user, answer) in answers {
        match &result {
            Ok(()) => {
                // A joiner that went away meanwhile (the client hung up) will never register,
                // so never unsubscribe: its interest is given back here.
                if answer.send(Ok(())).is_err() {
                    unsubscribe(subscribed, &user, &mut abandoned);
                }
            }
            Err(error) => {
                // Not counted: the joiner gives up, and will not unsubscribe.
                unsubscribe(subscribed, &user, &mut Vec::new());
                let _ = answer.send(Err(BrokerError::Unavailable(format!("redis: {error}"))));
            }
        }
    }
    result?;
    if !abandoned.is_empty() {
        let channels: Vec<String> = abandoned
            .iter()
            .map(|user| shared.names.channel(user))
            .collect();
        with_timeout(shared, sink.unsubscribe(&channels)).await?;
    }
    Ok(())
}

fn unsubscribe(subscribed: &mut Subscribed, user: &UserId, ended: &mut Vec<UserId>) {
    if let Entry::Occupied(mut entry) = subscribed.entry(user.clone()) {
        *entry.get_mut() -= 1;
        if *entry.get() == 0 {
            entry.remove();
            ended.push(user.clone());
        }
    }
}

/// While the link is down for `wait`: joiners are refused at once, departures are counted.
async fn refuse_changes_for(
    wait: Duration,
    changes: &mut mpsc::UnboundedReceiver<Change>,
    subscribed: &mut Subscribed,
) {
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return,
            change = changes.recv() => match change {
                Some(Change::Subscribe(_, answer)) => {
                    let refusal = BrokerError::Unavailable("redis unavailable".to_owned());
                    let _ = answer.send(Err(refusal));
                }
                Some(Change::Unsubscribe(user)) => unsubscribe(subscribed, &user, &mut Vec::new()),
                None => return,
            },
        }
    }
}

/// Delivers the messages of this node's subscriptions until the subscription connection ends, or
/// Redis ends the subscription to the groups channel (a Redis Cluster does when the partition's
/// slot moves to another master: a failover, a migration): then the link reconnects, to the new
/// owner.
async fn receive(shared: Arc<Shared>, mut messages: mpsc::UnboundedReceiver<PushInfo>) {
    while let Some(PushInfo { kind, data }) = messages.recv().await {
        let mut data = data.into_iter();
        let (Some(Value::BulkString(channel)), payload) = (data.next(), data.next()) else {
            if kind == PushKind::Disconnection {
                return;
            }
            continue;
        };
        let channel = String::from_utf8_lossy(&channel);
        let groups = channel == shared.names.groups_channel();
        let payload = match (kind, payload) {
            (PushKind::Message | PushKind::SMessage, Some(Value::BulkString(payload))) => {
                Bytes::from(payload)
            }
            (PushKind::Unsubscribe | PushKind::SUnsubscribe, _) if groups => return,
            _ => continue,
        };
        bump(&shared.counters.messages_received);
        let channel = channel.as_ref();
        if groups && wire::is_ack_notice(&payload) {
            match wire::read_ack_notice(&payload) {
                Ok((user, ids)) => {
                    shared.acks.acknowledge(&user, ids);
                }
                Err(error) => {
                    bump(&shared.counters.malformed_messages);
                    tracing::warn!(%error, channel, "ignored");
                }
            }
            continue;
        }
        if groups {
            match wire::read_group(payload) {
                Ok(group) => deliver_group(&shared, group).await,
                Err(error) => {
                    bump(&shared.counters.malformed_messages);
                    tracing::warn!(%error, channel, "ignored");
                }
            }
            continue;
        }
        let Some(user) = shared.names.user_of_channel(channel) else {
            continue;
        };
        match wire::read_message(payload) {
            Ok(ChannelMessage::Event(event)) => {
                for lagging in shared.hub.deliver_sequenced(&user, &event) {
                    shared.spawn_catch_up(lagging);
                }
            }
            Ok(ChannelMessage::Kick { node, connection }) => {
                if node == shared.node {
                    shared
                        .hub
                        .kick(&user, connection, DisconnectReason::Replaced);
                }
            }
            Ok(ChannelMessage::DisconnectAll) => {
                shared
                    .hub
                    .disconnect_user(&user, DisconnectReason::Disconnected);
            }
            Err(error) => {
                bump(&shared.counters.malformed_messages);
                tracing::warn!(%error, channel, "ignored");
            }
        }
    }
}

/// Delivers a group message to the local connections of its members: every member's event shares
/// one payload. The payload comes with the message, or was received with an earlier message of
/// the group (or a catch-up) and is among the node's recent records, or (rarely: after a
/// reconnection in the middle of a group, or when many groups interleave) is read from Redis. If
/// the link breaks meanwhile, the reconnection catches every connection up anyway. If Redis no
/// longer has it (dropped for `HISTORY_MAX_BYTES`), those members' connections here are closed:
/// they reconnect, resume, and are told to resync.
async fn deliver_group(shared: &Arc<Shared>, group: Group) {
    let Group {
        record,
        members,
        content,
    } = group;
    let members: Vec<Member> = members
        .into_iter()
        .filter(|member| shared.hub.holds(&member.user))
        .collect();
    let content = match content {
        Some(content) => Some(shared.records.lock().share(&record, content)),
        None if members.is_empty() => return,
        None => {
            let recent = shared.records.lock().get(&record);
            match recent {
                Some(content) => Some(content),
                None => match fetch_record(shared, &record).await {
                    Ok(fetched) => {
                        fetched.map(|content| shared.records.lock().share(&record, content))
                    }
                    // The reconnection catches every connection up, this event included.
                    Err(LinkBroken) => return,
                },
            }
        }
    };
    for member in members {
        let event = content.as_ref().map(|content| content.event(member.head));
        let Some(Ok(event)) = event else {
            tracing::warn!(user = %member.user, record, "payload of a group event is gone; closing the user's connections here");
            shared
                .hub
                .disconnect_user(&member.user, DisconnectReason::SlowConsumer);
            continue;
        };
        let event = Sequenced {
            at: member.at,
            event,
        };
        for lagging in shared.hub.deliver_sequenced(&member.user, &event) {
            shared.spawn_catch_up(lagging);
        }
    }
}

/// The link to Redis broke.
struct LinkBroken;

/// Reads the payload record `record` from Redis: `None` if Redis no longer has it (or it cannot
/// be read).
async fn fetch_record(shared: &Shared, record: &str) -> Result<Option<Content>, LinkBroken> {
    let (generation, mut commands) = shared.commands().map_err(|_| LinkBroken)?;
    let held: Option<Vec<u8>> = match redis::cmd("HGET")
        .arg(shared.names.record(record))
        .arg("v")
        .query_async(&mut commands)
        .await
    {
        Ok(held) => held,
        Err(error) => {
            shared.command_failed(generation, &error);
            return if link_broken(&error) || moved_away(&error) {
                Err(LinkBroken)
            } else {
                Ok(None)
            };
        }
    };
    Ok(held.and_then(|held| wire::open_record(Bytes::from(held)).ok()))
}

/// Forwards the connections that left this node: unsubscribes their channels (in order with the
/// joins) and removes their presence, in batches, whenever Redis is reachable.
pub(super) async fn forget_departures(
    shared: Arc<Shared>,
    mut departures: mpsc::UnboundedReceiver<Departure>,
) {
    let mut batch = Vec::new();
    let mut up = shared.down.subscribe();
    while departures.recv_many(&mut batch, CHUNK).await > 0 {
        for departure in &batch {
            let _ = shared
                .changes
                .send(Change::Unsubscribe(departure.user.clone()));
        }
        loop {
            if up.wait_for(Option::is_none).await.is_err() {
                return;
            }
            let Ok((generation, mut commands)) = shared.commands() else {
                continue;
            };
            let mut invocation = scripts::LEAVE.prepare_invoke();
            invocation
                .key(shared.names.prefix())
                .arg(shared.names.publish_command())
                .arg(&shared.node)
                .arg(shared.presence_grace_ms())
                .arg(shared.lease.as_millis() as u64);
            for departure in &batch {
                invocation
                    .arg(departure.user.as_str())
                    .arg(departure.connection)
                    .arg(departure.reason.label());
            }
            match invocation.invoke_async::<Vec<String>>(&mut commands).await {
                Ok(last) => {
                    report_departures(&shared, last);
                    break;
                }
                Err(error) => {
                    shared.command_failed(generation, &error);
                    // Whatever the failure (link, out of memory, busy), try again shortly; a
                    // broken link is waited for at the top of the loop.
                    tokio::time::sleep(FIRST_BACKOFF.max(shared.lease / 10)).await;
                }
            }
        }
        batch.clear();
    }
}

/// Reports the departures [`scripts::LEAVE`] found to be their users' last (`user, token,
/// reason, state` each): at once without a grace, otherwise after it, through
/// [`scripts::GONE`] (which reports only those nobody came back for).
fn report_departures(shared: &Arc<Shared>, last: Vec<String>) {
    let mut waiting = Vec::new();
    for departure in last.chunks_exact(4) {
        let [user, token, reason, state] = departure else {
            continue;
        };
        let Ok(user) = UserId::parse(user) else {
            continue;
        };
        if state == "gone" {
            shared.webhooks.user_disconnected(&user, token, reason);
        } else {
            waiting.push((user, token.clone(), reason.clone()));
        }
    }
    if waiting.is_empty() {
        return;
    }
    let shared = Arc::clone(shared);
    let lifecycle = shared.lifecycle.clone();
    lifecycle.spawn_background(async move {
        tokio::time::sleep(shared.grace).await;
        confirm_departures(&shared, waiting).await;
    });
}

/// Reports the departures a heartbeat took over (`user, record` pairs; a record is
/// `<node>/<connection> <due ms> <reason>`): their node stopped or died before reporting them.
fn report_swept(shared: &Shared, swept: &[String]) {
    for pair in swept.chunks_exact(2) {
        let [user, record] = pair else { continue };
        let (Ok(user), Some((token, reason))) = (UserId::parse(user), wire::read_departure(record))
        else {
            continue;
        };
        shared.webhooks.user_disconnected(&user, token, reason);
    }
}

/// Runs [`scripts::GONE`] for departures whose grace passed, retrying while Redis cannot be
/// reached, and reports those it confirms.
async fn confirm_departures(shared: &Shared, waiting: Vec<(UserId, String, String)>) {
    let mut up = shared.down.subscribe();
    loop {
        if up.wait_for(Option::is_none).await.is_err() {
            return;
        }
        let Ok((generation, mut commands)) = shared.commands() else {
            continue;
        };
        let mut invocation = scripts::GONE.prepare_invoke();
        invocation
            .key(shared.names.prefix())
            .arg(shared.names.publish_command());
        for (user, token, _) in &waiting {
            invocation.arg(user.as_str()).arg(token);
        }
        match invocation.invoke_async::<Vec<String>>(&mut commands).await {
            Ok(gone) => {
                for (user, token, reason) in &waiting {
                    if gone.iter().any(|name| name == user.as_str()) {
                        shared.webhooks.user_disconnected(user, token, reason);
                    }
                }
                return;
            }
            Err(error) => {
                shared.command_failed(generation, &error);
                tokio::time::sleep(FIRST_BACKOFF.max(shared.lease / 10)).await;
            }
        }
    }
}

/// On a graceful shutdown: removes this node's presence and lease at once, so the cluster's
/// counts drop without waiting for the lease to run out.
pub(super) async fn leave_cluster(shared: &Shared) {
    shared.left.store(true, Ordering::Release);
    let Ok((_, mut commands)) = shared.commands() else {
        return;
    };
    match reset(shared, &mut commands, true, true, &[]).await {
        Ok(()) => tracing::info!(node = %shared.node, "left the cluster"),
        Err(error) => tracing::warn!(%error, "could not leave the cluster; its lease will expire"),
    }
}

/// Marks the link down (if it was up), logging the transition once. The state turns down before
/// the command connection goes, so that "up" always comes with a connection.
fn set_down(shared: &Shared, reason: String) {
    let reason = shared.on_this_shard(reason);
    let was_up = shared.down.borrow().is_none();
    if was_up {
        tracing::error!(node = %shared.node, %reason, "redis link down: not ready, pushes answer 503");
    } else {
        tracing::debug!(%reason, "redis still unreachable");
    }
    shared.down.send_replace(Some(reason));
    *shared.commands.write() = None;
    shared.stalled.store(false, Ordering::Release);
}

/// The wait before reconnection attempt `failures + 1`: exponential, capped, with full jitter
/// (between half and all of it) so that nodes do not reconnect in lockstep.
fn backoff(failures: u32) -> Duration {
    let ceiling = FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(MAX_BACKOFF);
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
}

async fn with_timeout<T>(
    shared: &Shared,
    operation: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, redis::RedisError> {
    tokio::time::timeout(shared.timeout, operation)
        .await
        .map_err(|_| timed_out("subscribing"))?
}

fn timed_out(what: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        for failures in 0..40 {
            let wait = backoff(failures);
            let ceiling = FIRST_BACKOFF
                .saturating_mul(2u32.saturating_pow(failures.min(16)))
                .min(MAX_BACKOFF);
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{failures}: {wait:?}"
            );
        }
        assert!(backoff(30) >= MAX_BACKOFF / 2);
    }
}
