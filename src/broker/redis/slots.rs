//! Redis Cluster: the partitions of this server's users over the cluster's hash slots, and which
//! master serves a partition now.
//!
//! With `REDIS_CLUSTER=true` the users are spread over `REDIS_CLUSTER_PARTITIONS` partitions (by
//! the same hash as independent shards, [`super::shards`]); each partition is one hash tag, so
//! all of its keys and channels share one hash slot, and one script may handle several of its
//! users atomically. The tags are chosen so that the partitions' slots are evenly spaced over the
//! 16384 slots: partition `k` of `P` sits at slot `(2k+1)·16384/(2P)`, the middle of its 1/P of
//! the slot space. A cluster whose masters hold equal contiguous slot ranges (what
//! `redis-cli --cluster create` makes) therefore holds equal numbers of partitions when `P` is a
//! multiple of the number of masters.
//!
//! The broker treats each partition as a shard of its own, linked to whichever master serves its
//! slot: [`Seeds::owner_of`] asks the cluster (`CLUSTER SLOTS`) at every (re)connection. A
//! failover or a slot migration shows as `MOVED` on that link, which then reconnects to the new
//! owner and catches its connections up from the history, as after any outage.

use parking_lot::Mutex;

use super::{MISCONFIGURED, client_for};
use redis::{
    ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, RedisError, Value,
};

/// A node's `host` and `port`.
type Address = (String, u16);

/// How many hash slots a Redis Cluster has.
const SLOTS: u32 = 16384;

/// The hash slot of a key or channel named `name` (CRC16/XMODEM of its hash tag, or of the whole
/// name when it has none), as Redis Cluster computes it.
pub fn slot_of(name: &str) -> u16 {
    let hashed = hash_tag(name).unwrap_or(name);
    let slot = u32::from(crc16::State::<crc16::XMODEM>::calculate(hashed.as_bytes())) % SLOTS;
    u16::try_from(slot).unwrap_or(0)
}

/// The part of `name` between the first `{` and the next `}`, when not empty.
fn hash_tag(name: &str) -> Option<&str> {
    let open = name.find('{')?;
    let rest = &name[open + 1..];
    let close = rest.find('}')?;
    (close > 0).then(|| &rest[..close])
}

/// The hash tag (braces included) and slot of each of `partitions` partitions: the first tag of
/// the form `{pK.N}` (N = 0, 1, …) whose slot is partition K's (see the module's documentation).
/// The same for every node and every version, since it decides where each user lives.
pub fn partition_tags(partitions: usize) -> Vec<Address> {
    let count = u32::try_from(partitions.max(1)).unwrap_or(SLOTS).min(SLOTS);
    (0..count)
        .map(|k| {
            let target = u16::try_from((2 * k + 1) * SLOTS / (2 * count)).unwrap_or(0);
            let tag = (0_u32..)
                .map(|n| format!("{{p{k}.{n}}}"))
                .find(|tag| slot_of(tag) == target)
                .unwrap_or_default();
            (tag, target)
        })
        .collect()
}

/// The cluster's nodes this server knows: the seeds of `REDIS_URL`, and the nodes that the last
/// `CLUSTER SLOTS` answer named (so that losing the seeds does not lose the cluster).
pub struct Seeds {
    /// The first seed's settings (credentials, TLS), applied to every node.
    template: ConnectionInfo,
    /// `REDIS_CA_FILE`'s certificate, if any.
    root_cert: Option<Vec<u8>>,
    /// `host:port` of each seed.
    seeds: Vec<Address>,
    /// The node that answered last, then the nodes its answer named.
    known: Mutex<Vec<Address>>,
}

impl Seeds {
    /// The nodes of `urls` (`redis://`/`rediss://`), trusting `root_cert` for TLS.
    pub fn new(urls: &[String], root_cert: Option<Vec<u8>>) -> Result<Self, String> {
        let mut infos = Vec::with_capacity(urls.len());
        for url in urls {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(|error| format!("invalid REDIS_URL: {error}"))?;
            infos.push(info);
        }
        let seeds: Vec<Address> = infos
            .iter()
            .filter_map(|info| host_port(info.addr()))
            .collect();
        let template = infos
            .into_iter()
            .next()
            .ok_or_else(|| "REDIS_URL names no Redis".to_owned())?;
        Ok(Self {
            template,
            root_cert,
            seeds,
            known: Mutex::new(Vec::new()),
        })
    }

    /// A client for the node at `host:port`, with the seeds' credentials and TLS settings,
    /// speaking `protocol`.
    pub fn client(
        &self,
        host: &str,
        port: u16,
        protocol: ProtocolVersion,
    ) -> Result<redis::Client, RedisError> {
        let addr = match self.template.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        client_for(
            self.template.clone().set_addr(addr),
            protocol,
            self.root_cert.as_deref(),
        )
    }

    /// `host:port` of the master that serves `slot` now, asking in turn (within `timeout` each)
    /// the node that answered last, the nodes it named, then the seeds; remembers who answered
    /// and what it named. A node that says it is not in a cluster makes this a misconfiguration.
    pub async fn owner_of(
        &self,
        slot: u16,
        timeout: std::time::Duration,
    ) -> Result<Address, RedisError> {
        let mut nodes = self.known.lock().clone();
        for seed in &self.seeds {
            if !nodes.contains(seed) {
                nodes.push(seed.clone());
            }
        }
        let mut errors = Vec::new();
        for (host, port) in nodes {
            match self.ask(&host, port, slot, timeout).await {
                Ok((owner, named)) => {
                    let mut known = vec![(host, port)];
                    for node in named {
                        if !known.contains(&node) {
                            known.push(node);
                        }
                    }
                    *self.known.lock() = known;
                    return Ok(owner);
                }
                Err(error) => errors.push(error),
            }
        }
        let misconfigured = errors
            .iter()
            .position(|error| error.to_string().contains(MISCONFIGURED));
        Err(match misconfigured {
            Some(at) => errors.swap_remove(at),
            None => errors.pop().unwrap_or_else(|| no_owner(slot)),
        })
    }

    /// Asks the node at `host:port` for the cluster's slots: the master of `slot`, and every
    /// node named.
    async fn ask(
        &self,
        host: &str,
        port: u16,
        slot: u16,
        timeout: std::time::Duration,
    ) -> Result<(Address, Vec<Address>), RedisError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let mut connection = self
            .client(host, port, ProtocolVersion::RESP2)?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let ranges: Vec<Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut connection)
            .await
            .map_err(|error| {
                if !error.to_string().contains("cluster support disabled") {
                    return error;
                }
                RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    MISCONFIGURED,
                    format!("{host}:{port} is not a Redis Cluster node: unset REDIS_CLUSTER"),
                ))
            })?;
        let (owner, named) = read_slots(&ranges, slot, host);
        owner
            .map(|owner| (owner, named))
            .ok_or_else(|| no_owner(slot))
    }
}

/// From a `CLUSTER SLOTS` answer (`[[start, end, master, replica…], …]`) given by `asked`: the
/// master serving `slot`, if named, and every node named.
fn read_slots(ranges: &[Value], slot: u16, asked: &str) -> (Option<Address>, Vec<Address>) {
    let mut owner = None;
    let mut named = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            continue;
        };
        let (Some(start), Some(end)) = (fields.first(), fields.get(1)) else {
            continue;
        };
        let covers = int(start)
            .zip(int(end))
            .is_some_and(|(start, end)| (start..=end).contains(&i64::from(slot)));
        // The range's master comes first, its replicas after.
        if covers {
            owner = fields.get(2).and_then(|master| node_address(master, asked));
        }
        named.extend(
            fields
                .iter()
                .skip(2)
                .filter_map(|node| node_address(node, asked)),
        );
    }
    (owner, named)
}

/// `host:port` of a TCP address.
fn host_port(addr: &ConnectionAddr) -> Option<Address> {
    match addr {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            Some((host.clone(), *port))
        }
        _ => None,
    }
}

/// A node of a `CLUSTER SLOTS` range: `[host, port, id, …]`; an empty, `?` or null host (a
/// cluster that announces no endpoint) means the host that was asked.
fn node_address(node: &Value, asked: &str) -> Option<Address> {
    let Value::Array(fields) = node else {
        return None;
    };
    let host = match fields.first()? {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(text) => text.clone(),
        Value::Nil => String::new(),
        _ => return None,
    };
    let host = if host.is_empty() || host == "?" {
        asked.to_owned()
    } else {
        host
    };
    let port = u16::try_from(int(fields.get(1)?)?).ok()?;
    Some((host, port))
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(number) => Some(*number),
        _ => None,
    }
}

fn no_owner(slot: u16) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
        "no master serves the partition's hash slot",
        format!("slot {slot}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("user:1000"), 1649);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        assert_eq!(slot_of("foo{}{bar}"), 8363);
        assert_eq!(slot_of("foo{{bar}}zap"), 4015);
        assert_eq!(slot_of("wss:{p0.0}:x"), 5226);
    }

    fn node(host: Value, port: i64) -> Value {
        Value::Array(vec![
            host,
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    fn text(host: &str) -> Value {
        Value::BulkString(host.as_bytes().to_vec())
    }

    #[test]
    fn the_owner_is_the_master_of_the_range_and_a_missing_host_is_the_one_asked() {
        let ranges = vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(text("10.0.0.1"), 7000),
                node(text("10.0.0.4"), 7003),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node(Value::Nil, 7001),
                node(text(""), 7004),
            ]),
        ];
        let (owner, named) = read_slots(&ranges, 682, "seed");
        assert_eq!(owner, Some(("10.0.0.1".to_owned(), 7000)));
        assert_eq!(named.len(), 4);
        let (owner, _) = read_slots(&ranges, 9000, "seed");
        assert_eq!(owner, Some(("seed".to_owned(), 7001)));
        // A range whose master cannot be read names no owner (never one of its replicas).
        let broken = vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            Value::Int(3),
            node(text("10.0.0.4"), 7003),
        ])];
        assert_eq!(read_slots(&broken, 1, "seed").0, None);
    }

    #[test]
    fn partitions_sit_in_the_middle_of_equal_slot_ranges() {
        let tags = partition_tags(12);
        assert_eq!(tags.len(), 12);
        for (k, (tag, slot)) in tags.iter().enumerate() {
            assert_eq!(slot_of(&format!("wss:{tag}:c:alice")), *slot);
            let width = 16384 / 12;
            assert!(usize::from(*slot) / width == k, "{tag} at {slot}");
        }
        // Pinned: the tags decide where every user's data lives.
        assert_eq!(tags[0].1, 682);
        assert_eq!(tags[11].1, 15701);
        assert_eq!(partition_tags(12), tags);
    }

    #[test]
    fn three_masters_made_by_redis_cli_hold_four_partitions_each() {
        // `redis-cli --cluster create` with three masters: 0-5460, 5461-10922, 10923-16383.
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
        for (start, end) in ranges {
            let held = partition_tags(12)
                .iter()
                .filter(|(_, slot)| (start..=end).contains(slot))
                .count();
            assert_eq!(held, 4);
        }
    }
}
