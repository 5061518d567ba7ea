//! Abuse limits: how often one client may connect, one publisher may push, one connection may
//! send, and who "one client" is: behind proxies (`X-Forwarded-For`), and by address — an IPv6
//! client is its network (`RATE_LIMIT_IPV6_PREFIX`, a /64 by default: one subscriber gets 2^64
//! addresses), an IPv4-mapped IPv6 address is its IPv4 address.
//!
//! Limits are GCRA token buckets (the `governor` crate): a steady rate per second with a burst of
//! twice that. A refusal says how long to wait, which becomes `Retry-After`. Keyed limiters forget
//! keys whose bucket is full again when [`KeyedLimit::forget_idle`] runs (the housekeeping task does
//! it every second), so their memory follows the number of recently active clients.

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::Clock as _;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::clock::Clock;
use crate::config::TrustedProxies;
use crate::protocol::UserId;

/// A rate limit per key (client IP, publisher), on the server's [`Clock`]. Keys are counted by
/// client ([`LimitKey::client`]).
#[derive(Debug)]
pub struct KeyedLimit<K: LimitKey> {
    limiter: RateLimiter<K, DashMapStateStore<K>, Clock, NoOpMiddleware<Duration>>,
    clock: Clock,
    ipv6_prefix: u8,
}

/// What a [`KeyedLimit`] counts by.
pub trait LimitKey: Hash + Eq + Clone {
    /// The key `self` is counted under: a key holding a client address holds its client instead
    /// ([`client_network`]).
    fn client(&self, ipv6_prefix: u8) -> Self;
}

impl LimitKey for IpAddr {
    fn client(&self, ipv6_prefix: u8) -> Self {
        client_network(*self, ipv6_prefix)
    }
}

impl LimitKey for UserId {
    /// A user is counted as itself.
    fn client(&self, _ipv6_prefix: u8) -> Self {
        self.clone()
    }
}

/// The client an address stands for: an IPv4 address is itself (an IPv4-mapped IPv6 address is
/// its IPv4 address); an IPv6 address is its network of `ipv6_prefix` leading bits, written as
/// the network's first address.
pub fn client_network(address: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let host_bits = 128 - u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// Refusal by a rate limit: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for a `Retry-After` header: rounded up, at least 1.
    pub fn seconds(self) -> u64 {
        self.0.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// The quota for `per_second` (with a burst of twice that), or `None` when it is 0 (no limit).
fn quota(per_second: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl<K: LimitKey> KeyedLimit<K> {
    /// A limit of `per_second` per key on `clock`, IPv6 clients counted by networks of
    /// `ipv6_prefix` bits; `None` when `per_second` is 0.
    pub fn new(per_second: u32, clock: &Clock, ipv6_prefix: u8) -> Option<Self> {
        quota(per_second).map(|quota| Self {
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            clock: clock.clone(),
            ipv6_prefix,
        })
    }

    /// Takes one unit for `key`'s client, or says how long to wait.
    pub fn check(&self, key: &K) -> Result<(), RetryAfter> {
        self.limiter
            .check_key(&key.client(self.ipv6_prefix))
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    /// Drops keys whose bucket has refilled, so that memory follows recent activity.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// A rate limit for one thing (a connection's inbound frames), on the server's [`Clock`] (a
/// limiter's own default clock is calibrated when made, which costs every new connection).
#[derive(Debug)]
pub struct Limit {
    limiter: RateLimiter<NotKeyed, InMemoryState, Clock, NoOpMiddleware<Duration>>,
}

impl Limit {
    /// A limit of `per_second` on `clock`, or `None` when it is 0.
    pub fn new(per_second: u32, clock: &Clock) -> Option<Self> {
        quota(per_second).map(|quota| Self {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
        })
    }

    /// Takes one unit; `false` when over the limit.
    pub fn check(&self) -> bool {
        self.limiter.check().is_ok()
    }
}

/// The client's IP address: the peer's, unless the peer is a trusted proxy, in which case the
/// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy (entries to its left could
/// have been written by anyone). Entries may carry a port; IPv4-mapped IPv6 addresses are
/// returned (and checked against the proxies) as IPv4.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer.ip().to_canonical();
    if !trusted.contains(client) {
        return client;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for entry in forwarded.into_iter().rev() {
        let Some(address) = forwarded_address(entry) else {
            // Garbage in the chain: stop at the last address we could trust.
            break;
        };
        client = address;
        if !trusted.contains(address) {
            break;
        }
    }
    client
}

/// An address as an `X-Forwarded-For` entry may write it: bare (`1.2.3.4`, `2001:db8::1`), with
/// a port (`1.2.3.4:5678`, `[2001:db8::1]:443`) or bracketed (`[2001:db8::1]`); IPv4-mapped
/// addresses become IPv4.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let address = entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|socket| socket.ip()))
        .ok()
        .or_else(|| {
            let bracketed = entry.strip_prefix('[')?.strip_suffix(']')?;
            bracketed.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        })?;
    Some(address.to_canonical())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_waits_and_other_keys_are_unaffected() {
        let clock = Clock::default();
        let limit = KeyedLimit::new(2, &clock, 64).unwrap();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        for _ in 0..4 {
            assert_eq!(limit.check(&a), Ok(()));
        }
        let refused = limit.check(&a).unwrap_err();
        assert!(refused.0 <= Duration::from_millis(500), "{refused:?}");
        assert_eq!(refused.seconds(), 1);
        assert_eq!(limit.check(&b), Ok(()));
        assert!(
            KeyedLimit::<IpAddr>::new(0, &clock, 64).is_none(),
            "0 disables"
        );
        clock.advance(refused.0);
        assert_eq!(limit.check(&a), Ok(()), "refilled when the clock moved on");
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_ipv6_client_is_its_network_and_a_mapped_ipv4_client_its_address() {
        for (address, prefix, client) in [
            ("2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::"),
            ("2001:db8:1:2:3:4:5:6", 48, "2001:db8:1::"),
            ("2001:db8:1:2:3:4:5:6", 56, "2001:db8:1::"),
            ("2001:db8:1:2ff:3:4:5:6", 56, "2001:db8:1:200::"),
            ("2001:db8:1:2:3:4:5:6", 128, "2001:db8:1:2:3:4:5:6"),
            ("2001:db8:1:2:3:4:5:6", 1, "::"),
            ("::ffff:203.0.113.9", 64, "203.0.113.9"),
            ("203.0.113.9", 1, "203.0.113.9"),
        ] {
            assert_eq!(
                client_network(ip(address), prefix),
                ip(client),
                "{address}/{prefix}"
            );
        }
        let clock = Clock::default();
        let limit = KeyedLimit::new(1, &clock, 64).unwrap();
        for address in ["2001:db8::1", "2001:db8::ffff:1"] {
            assert_eq!(limit.check(&ip(address)), Ok(()));
        }
        assert!(
            limit.check(&ip("2001:db8::2")).is_err(),
            "one /64, one budget"
        );
        assert_eq!(limit.check(&ip("2001:db8:0:1::1")), Ok(()), "the next /64");
        for address in ["198.51.100.1", "::ffff:198.51.100.1"] {
            assert_eq!(limit.check(&ip(address)), Ok(()));
        }
        assert!(
            limit.check(&ip("198.51.100.1")).is_err(),
            "mapped is the same client"
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.1.2.3"),
        );
        let proxy: SocketAddr = "192.168.1.1:4000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.9:4000".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap(),
            "the rightmost untrusted entry; the spoofable left part is ignored"
        );
        assert_eq!(client_ip(stranger, &headers, &trusted), stranger.ip());
        assert_eq!(
            client_ip(proxy, &HeaderMap::new(), &trusted),
            proxy.ip(),
            "a trusted proxy without the header is the client"
        );
    }

    #[test]
    fn forwarded_entries_with_ports_brackets_or_ipv4_mapping_are_read_as_addresses() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let proxy: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        for (entry, client) in [
            ("1.2.3.4:5678", "1.2.3.4"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("::ffff:1.2.3.4", "1.2.3.4"),
            ("[::ffff:1.2.3.4]:80", "1.2.3.4"),
            // A trusted proxy written with a port is still skipped.
            ("1.2.3.4, 10.9.9.9:80", "1.2.3.4"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("x-forwarded-for", HeaderValue::from_str(entry).unwrap());
            assert_eq!(
                client_ip(proxy, &headers, &trusted),
                client.parse::<IpAddr>().unwrap(),
                "{entry}"
            );
        }
        // A peer on a dual-stack socket shows IPv4 clients as mapped addresses.
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:4000".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        assert_eq!(
            client_ip(mapped, &headers, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap(),
            "a mapped trusted proxy is trusted"
        );
        let garbage: [(&str, &str); 2] =
            [("1.2.3.4, :80", "10.0.0.1"), ("1.2.3.4:99999", "10.0.0.1")];
        for (entry, client) in garbage {
            let mut headers = HeaderMap::new();
            headers.insert("x-forwarded-for", HeaderValue::from_str(entry).unwrap());
            assert_eq!(
                client_ip(proxy, &headers, &trusted),
                client.parse::<IpAddr>().unwrap(),
                "garbage stops the walk: {entry}"
            );
        }
    }
}
