//! A real Redis Cluster (`REDIS_CLUSTER=true`): three masters with a replica each, started by the
//! test on loopback ports (`redis-server --cluster-enabled yes` ×6, `redis-cli --cluster
//! create`). Users are spread over the masters by hash slot; delivery uses sharded pub/sub, so a
//! user's messages go to the one shard that holds the user; a failover during pushes loses
//! nothing and repeats nothing, without a resync.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::helpers::{PROMPTLY, TestApp};
use crate::redis::{RedisServer, unique_prefix};
use crate::support::{Client, QUIET, node_id, wait_for_ready_status};

/// How long the cluster may take to agree on its slots, or a failover to complete.
const SETTLE: Duration = Duration::from_secs(20);

/// The cluster's nodes, for as long as the test runs.
struct RedisCluster {
    servers: Vec<RedisServer>,
    /// The servers' working directory (cluster configuration, replication snapshots), removed
    /// after them.
    _dir: tempfile::TempDir,
}

/// A command's answer from the Redis at `port`.
async fn query<T: ::redis::FromRedisValue>(port: u16, command: &::redis::Cmd) -> T {
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("a Redis URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("the test reaches its Redis");
    command
        .query_async(&mut connection)
        .await
        .unwrap_or_else(|error| panic!("{command:?} on port {port}: {error}"))
}

fn cmd(words: &[&str]) -> ::redis::Cmd {
    let mut command = ::redis::cmd(words[0]);
    for word in &words[1..] {
        command.arg(*word);
    }
    command
}

/// One line of `CLUSTER NODES`: a node's port, id, whether it is a master (and failed), and
/// whose replica.
struct NodeLine {
    port: u16,
    id: String,
    master: bool,
    failed: bool,
    master_id: String,
}

impl RedisCluster {
    /// Six cluster-enabled servers joined as three masters with a replica each; `None` (after
    /// printing `SKIPPED`) when `redis-server` is not available and this is not CI.
    async fn start(test: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut servers = Vec::new();
        for n in 0..6 {
            let config = format!("nodes-{n}.conf");
            let extra = [
                "--dir",
                &dir.path().to_string_lossy(),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &config,
                "--cluster-node-timeout",
                "1000",
            ]
            .map(str::to_owned)
            .to_vec();
            servers.push(RedisServer::start_with(test, extra).await?);
        }
        let addresses: Vec<String> = servers
            .iter()
            .map(|server| format!("127.0.0.1:{}", server.port))
            .collect();
        let created = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        let created = match created {
            Ok(created) => created,
            Err(error) => {
                crate::redis::unavailable(test, &format!("cannot run redis-cli: {error}"));
                return None;
            }
        };
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = Self { servers, _dir: dir };
        cluster
            .wait_until("every node sees the cluster ok", |_| true)
            .await;
        // A replica that never synced may not be elected: wait for every replica's first sync.
        let deadline = Instant::now() + SETTLE;
        for server in &cluster.servers {
            loop {
                let info: String = query(server.port, &cmd(&["INFO", "replication"])).await;
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {} never synced",
                    server.port
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Some(cluster)
    }

    /// A seed URL: the node at `n`.
    fn url(&self, n: usize) -> String {
        self.servers[n].url()
    }

    /// Every node's view of the cluster, from the first node that answers.
    async fn nodes(&self) -> Vec<NodeLine> {
        let text: String = query(self.servers[0].port, &cmd(&["CLUSTER", "NODES"])).await;
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let port = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
                let flags: Vec<&str> = fields.get(2)?.split(',').collect();
                Some(NodeLine {
                    port,
                    id: fields[0].to_owned(),
                    master: flags.contains(&"master"),
                    failed: flags.contains(&"fail"),
                    master_id: fields.get(3)?.to_string(),
                })
            })
            .collect()
    }

    /// The masters' ports.
    async fn masters(&self) -> Vec<u16> {
        let nodes = self.nodes().await;
        nodes
            .iter()
            .filter(|node| node.master)
            .map(|node| node.port)
            .collect()
    }

    /// Waits until every node reports `cluster_state:ok` and `check` holds for the first node's
    /// `CLUSTER NODES`.
    async fn wait_until(&self, what: &str, check: impl Fn(&[NodeLine]) -> bool) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut ok = true;
            for server in &self.servers {
                let info: String = query(server.port, &cmd(&["CLUSTER", "INFO"])).await;
                ok &= info.contains("cluster_state:ok");
            }
            if ok && check(&self.nodes().await) {
                return;
            }
            assert!(Instant::now() < deadline, "the Redis Cluster: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs the master at `port` (it loses everything it had not replicated), waits until
    /// its replica took over its slots, then starts it again, empty: it rejoins as that replica's
    /// replica (so that the new master has one again).
    async fn kill(&mut self, port: u16) {
        let at = self
            .servers
            .iter()
            .position(|server| server.port == port)
            .expect("a node of the cluster");
        let mut killed = self.servers.remove(at);
        killed.kill();
        self.wait_until("a replica took over the killed master's slots", |nodes| {
            nodes.iter().any(|node| node.port == port && node.failed)
        })
        .await;
        killed.restart().await;
        self.servers.push(killed);
        self.wait_until("the killed master came back as a replica", |nodes| {
            nodes
                .iter()
                .any(|node| node.port == port && !node.master && !node.failed)
        })
        .await;
    }

    /// Makes the replica of the master at `master` take over (`CLUSTER FAILOVER`, the graceful
    /// kind: no acknowledged write is lost) and waits until every node agrees; returns the new
    /// master's port.
    async fn fail_over(&self, master: u16) -> u16 {
        let nodes = self.nodes().await;
        let id = &nodes
            .iter()
            .find(|node| node.port == master)
            .expect("the master")
            .id;
        let replica = nodes
            .iter()
            .find(|node| &node.master_id == id)
            .expect("the master has a replica")
            .port;
        let answer: String = query(replica, &cmd(&["CLUSTER", "FAILOVER"])).await;
        assert_eq!(answer, "OK");
        self.wait_until("the replica took over", |nodes| {
            nodes.iter().any(|node| node.port == replica && node.master)
                && nodes.iter().any(|node| node.port == master && !node.master)
        })
        .await;
        replica
    }
}

/// A node of the server on the Redis Cluster, seeded by `seed`, with `extra` flags.
async fn node_with(seed: &str, prefix: &str, name: &str, extra: &[&str]) -> TestApp {
    let node_id = node_id(name);
    let mut flags = vec![
        "--broker",
        "redis",
        "--redis-url",
        seed,
        "--redis-cluster",
        "true",
        "--redis-key-prefix",
        prefix,
        "--node-id",
        &node_id,
        "--redis-timeout",
        "2",
    ];
    flags.extend_from_slice(extra);
    crate::helpers::spawn_app(&flags).await
}

/// A node of the server on the Redis Cluster, seeded by `seed`.
async fn node(seed: &str, prefix: &str, name: &str) -> TestApp {
    node_with(seed, prefix, name, &[]).await
}

/// The shard channels each master has subscribers on.
async fn shard_channels(masters: &[u16]) -> HashMap<u16, HashSet<String>> {
    let mut channels = HashMap::new();
    for &master in masters {
        let names: Vec<String> = query(master, &cmd(&["PUBSUB", "SHARDCHANNELS"])).await;
        channels.insert(master, names.into_iter().collect());
    }
    channels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_spread_over_the_masters_and_each_message_goes_to_its_users_shard_only() {
    let Some(cluster) = RedisCluster::start("redis_cluster_spread").await else {
        return;
    };
    let prefix = unique_prefix("redis_cluster_spread");
    // Any node of the cluster is a seed; the rest is discovered.
    let a = node(&cluster.url(0), &prefix, "a").await;
    let b = node(&cluster.url(4), &prefix, "b").await;
    for node in [&a, &b] {
        wait_for_ready_status(node, 200, PROMPTLY).await;
    }
    let health = a.health().await;
    let shards = health["redis_shards"].as_array().expect("redis_shards");
    assert_eq!(shards.len(), 12, "{health}");

    let users: Vec<String> = (0..24).map(|n| format!("clustered-{n}")).collect();
    let mut clients = Vec::new();
    for (n, user) in users.iter().enumerate() {
        let node = if n % 2 == 0 { &a } else { &b };
        clients.push(Client::ws(node, user).await);
    }
    for (n, user) in users.iter().enumerate() {
        let via = if n % 2 == 0 { &b } else { &a };
        let reply = via
            .post_with(
                "/sse/push",
                &json!({"user_id": user, "data": {"n": n}}),
                &[],
            )
            .await;
        assert_eq!(
            (reply.status, reply.json()["delivered"].as_u64()),
            (200, Some(1))
        );
    }
    for (n, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.next().await["data"]["n"], n);
    }

    // Every master holds some of the users' keys and subscriptions; no classic channel is used.
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3);
    let subscribed = shard_channels(&masters).await;
    let mut seen = HashSet::new();
    for &master in &masters {
        let keys: i64 = query(master, &cmd(&["DBSIZE"])).await;
        assert!(keys > 0, "master {master} holds no key");
        let users_here = subscribed[&master]
            .iter()
            .filter(|channel| channel.contains(":c:clustered-"))
            .count();
        assert!(users_here > 0, "master {master}: {:?}", subscribed[&master]);
        let classic: Vec<String> = query(master, &cmd(&["PUBSUB", "CHANNELS"])).await;
        assert!(
            classic.is_empty(),
            "classic channels on {master}: {classic:?}"
        );
        for channel in &subscribed[&master] {
            assert!(seen.insert(channel.clone()), "{channel} on two masters");
        }
    }
    for user in &users {
        assert!(
            seen.iter()
                .any(|channel| channel.ends_with(&format!(":c:{user}"))),
            "{user}'s channel is subscribed on a master"
        );
    }

    // One request for all of them, and a broadcast, reach every user once.
    let reply = a
        .post_with(
            "/sse/push",
            &json!({"user_ids": users, "data": {"to": "all"}}),
            &[],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    let reply = b
        .post_with("/sse/broadcast", &json!({"data": {"to": "everyone"}}), &[])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    for client in &mut clients {
        assert_eq!(client.next().await["data"], json!({"to": "all"}));
        assert_eq!(client.next().await["data"], json!({"to": "everyone"}));
        client.assert_quiet(QUIET).await;
    }
}

/// Pushes `count` events (`{"seq": n}`, event ids `<user>-<n>`) to each of `users` through
/// `node`, retrying a refused push (503, 504) with the same event id until it is accepted.
async fn push_all(node: &TestApp, users: &[String], count: usize) -> usize {
    let mut retries = 0;
    for n in 0..count {
        for user in users {
            let body =
                json!({"user_id": user, "event_id": format!("{user}-{n}"), "data": {"seq": n}});
            let deadline = Instant::now() + SETTLE;
            loop {
                let reply = node.post_with("/sse/push", &body, &[]).await;
                if reply.status == 200 {
                    break;
                }
                assert!(
                    [503, 504].contains(&reply.status) && Instant::now() < deadline,
                    "push {n} to {user}: {} {}",
                    reply.status,
                    reply.json()
                );
                retries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    retries
}

/// How a test takes a master away during pushes.
#[derive(Clone, Copy)]
enum Takeover {
    /// `CLUSTER FAILOVER` on its replica.
    Failover,
    /// SIGKILL: the replica is elected after `cluster-node-timeout`.
    Kill,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_during_pushes_loses_nothing_and_repeats_nothing() {
    take_a_master_away_during_pushes("redis_cluster_failover", Takeover::Failover).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_master_is_replaced_and_its_users_lose_nothing() {
    take_a_master_away_during_pushes("redis_cluster_kill", Takeover::Kill).await;
}

/// Subscribers on node a, pushes through node b (retried on 503/504 with the same event id);
/// meanwhile a master is taken away. Every subscriber gets every event once, in order, with no
/// resync; both nodes moved the master's partitions to its replica. A killed master may not have
/// replicated its last writes: there, pushes are only answered once a replica has them
/// (`REDIS_WAIT_REPLICAS=1`), so none that was answered can be lost.
async fn take_a_master_away_during_pushes(test: &str, takeover: Takeover) {
    const EVENTS: usize = 120;
    let Some(mut cluster) = RedisCluster::start(test).await else {
        return;
    };
    let prefix = unique_prefix(test);
    let wait: &[&str] = match takeover {
        Takeover::Failover => &[],
        Takeover::Kill => &["--redis-wait-replicas", "1"],
    };
    let a = node_with(&cluster.url(1), &prefix, "a", wait).await;
    let b = node_with(&cluster.url(2), &prefix, "b", wait).await;
    for node in [&a, &b] {
        wait_for_ready_status(node, 200, PROMPTLY).await;
    }
    // Users on every master: subscribers on node a, pushes through node b.
    let users: Vec<String> = (0..12).map(|n| format!("failover-{n}")).collect();
    let mut clients = Vec::new();
    for user in &users {
        clients.push(Client::ws(&a, user).await);
    }
    let masters = cluster.masters().await;
    let pushing = {
        let users = users.clone();
        let publisher = TestApp::at(b.addr);
        tokio::spawn(async move { push_all(&publisher, &users, EVENTS).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let promoted = match takeover {
        Takeover::Failover => Some(cluster.fail_over(masters[0]).await),
        Takeover::Kill => {
            cluster.kill(masters[0]).await;
            None
        }
    };
    let retries = pushing.await.expect("the publisher finishes");

    for (user, client) in users.iter().zip(&mut clients) {
        let mut received = Vec::new();
        while received.len() < EVENTS {
            let event = client
                .next_by(Instant::now() + SETTLE)
                .await
                .unwrap_or_else(|| panic!("{user}: only {} events", received.len()));
            assert_ne!(event["type"], "resync", "{user}: {event}");
            let seq = event["data"]["seq"].as_u64();
            received.push(seq.unwrap_or_else(|| panic!("{user}: {event} after {received:?}")));
        }
        let expected: Vec<u64> = (0..EVENTS as u64).collect();
        assert_eq!(received, expected, "{user}: in order, each once");
        client.assert_quiet(QUIET).await;
    }
    // The new master serves its partitions' users now: their subscriptions moved to it.
    if let Some(promoted) = promoted {
        let subscribed = shard_channels(&[promoted]).await;
        assert!(
            subscribed[&promoted]
                .iter()
                .any(|channel| channel.contains(":c:failover-")),
            "no user's channel on the promoted master {promoted} ({retries} retried pushes)"
        );
    }
    // Both nodes followed the partitions of the old master to the new one.
    for node in [&a, &b] {
        wait_for_ready_status(node, 200, PROMPTLY).await;
        let (_, metrics) = node.get_json("/metrics").await;
        assert!(
            metrics["broker"]["reconnects"].as_u64() >= Some(1),
            "{metrics}"
        );
    }
    eprintln!("{test}: {retries} pushes retried");
}

/// Runs the server binary with `env` until it exits (it must, within a few seconds): its exit
/// code and everything it printed.
async fn exit_of(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut command = crate::helpers::server_command(dir.path());
    command.envs(env.iter().copied());
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .expect("the server exits")
        .expect("the server runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), printed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixing_up_a_cluster_node_and_an_independent_redis_is_a_start_up_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cluster_node = [
        "--dir",
        &dir.path().to_string_lossy(),
        "--cluster-enabled",
        "yes",
    ]
    .map(str::to_owned)
    .to_vec();
    let Some(cluster_node) = RedisServer::start_with("redis_cluster_mixup", cluster_node).await
    else {
        return;
    };
    let Some(independent) = RedisServer::start("redis_cluster_mixup").await else {
        return;
    };
    let common = [("PORT", "0"), ("BROKER", "redis"), ("REDIS_TIMEOUT", "2")];

    let url = cluster_node.url();
    let (code, printed) =
        exit_of(&[common.as_slice(), &[("REDIS_URL", url.as_str())]].concat()).await;
    assert_eq!(code, Some(2), "{printed}");
    assert!(printed.contains("set REDIS_CLUSTER=true"), "{printed}");

    let url = independent.url();
    let cluster = [("REDIS_URL", url.as_str()), ("REDIS_CLUSTER", "true")];
    let (code, printed) = exit_of(&[common.as_slice(), &cluster].concat()).await;
    assert_eq!(code, Some(2), "{printed}");
    assert!(printed.contains("is not a Redis Cluster node"), "{printed}");
}
