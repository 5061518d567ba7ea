//! Abuse limits: how often one client may connect, one publisher may push, one connection may
//! send, and who "one client" is behind proxies.
//!
//! Limits are GCRA token buckets (the `governor` crate): a steady rate per second with a burst of
//! twice that. A refusal says how long to wait, which becomes `Retry-After`. Keyed limiters forget
//! keys whose bucket is full again when [`KeyedLimit::forget_idle`] runs (the housekeeping task does
//! it every second), so their memory follows the number of recently active clients.

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
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

/// A rate limit per key (client IP, publisher), on the server's [`Clock`].
#[derive(Debug)]
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    limiter: RateLimiter<K, DashMapStateStore<K>, Clock, NoOpMiddleware<Duration>>,
    clock: Clock,
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

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    /// A limit of `per_second` per key on `clock`, or `None` when it is 0.
    pub fn new(per_second: u32, clock: &Clock) -> Option<Self> {
        quota(per_second).map(|quota| Self {
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            clock: clock.clone(),
        })
    }

    /// Takes one unit for `key`, or says how long to wait.
    pub fn check(&self, key: &K) -> Result<(), RetryAfter> {
        self.limiter
            .check_key(key)
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
/// have been written by anyone).
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer.ip();
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
        let Ok(address) = entry.parse::<IpAddr>() else {
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_waits_and_other_keys_are_unaffected() {
        let clock = Clock::default();
        let limit = KeyedLimit::new(2, &clock).unwrap();
        for _ in 0..4 {
            assert_eq!(limit.check(&"a"), Ok(()));
        }
        let refused = limit.check(&"a").unwrap_err();
        assert!(refused.0 <= Duration::from_millis(500), "{refused:?}");
        assert_eq!(refused.seconds(), 1);
        assert_eq!(limit.check(&"b"), Ok(()));
        assert!(KeyedLimit::<&str>::new(0, &clock).is_none(), "0 disables");
        clock.advance(refused.0);
        assert_eq!(
            limit.check(&"a"),
            Ok(()),
            "refilled when the clock moved on"
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
}
