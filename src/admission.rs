//! Which HTTP connections the server keeps when descriptors are scarce.
//!
//! Every accepted HTTP connection is registered here until its task ends. A connection is *idle*
//! while no request is in flight on it (fresh, or between keep-alive requests) and it has not
//! upgraded; it is *pending* while it has not yet sent a complete request head. Two rules follow:
//!
//! - one IP address may hold at most `MAX_PENDING_CONNECTIONS_PER_IP` pending connections; a new
//!   one beyond that is refused (closed at once), so one client cannot take every descriptor with
//!   sockets that never send anything;
//! - when descriptors become scarce (a connection is accepted near the descriptor limit) or run
//!   out (`accept` fails), the server asks for the connections idle the longest to be closed
//!   ([`Admission::reclaim_oldest`]), so that a new push or WebSocket can still be accepted. A request in flight (an SSE stream included) and an upgraded connection
//!   (a WebSocket) are never chosen.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// The registry of HTTP connections, shared by the accept loop and every connection's task.
#[derive(Debug)]
pub struct Admission {
    pending_per_ip: usize,
    inner: Mutex<Inner>,
}

/// What the registry knows, behind its lock.
#[derive(Debug, Default)]
struct Inner {
    /// Numbers connections, and orders their idle periods (a larger number is more recent).
    sequence: u64,
    connections: HashMap<u64, Entry>,
    /// Idle connections by the sequence number of the moment they became idle: oldest first.
    idle: BTreeMap<u64, u64>,
    /// Pending connections per IP address (absent at zero).
    pending: HashMap<IpAddr, usize>,
}

/// One registered connection.
#[derive(Debug)]
struct Entry {
    ip: IpAddr,
    /// No complete request head yet.
    pending: bool,
    /// Requests whose response (body included) is not finished.
    in_flight: usize,
    /// Handed over to a WebSocket session: never idle again.
    upgraded: bool,
    /// Its key in [`Inner::idle`] while idle.
    idle_since: Option<u64>,
    /// When it last became idle (its last response finished), while it is idle after a request.
    idle_at: Option<Instant>,
    /// Cancelled to ask the connection's task to close it.
    reclaim: CancellationToken,
}

impl Inner {
    fn next(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    fn forget_pending(&mut self, ip: IpAddr) {
        if let Some(count) = self.pending.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.pending.remove(&ip);
            }
        }
    }
}

impl Admission {
    /// A registry allowing each IP address `pending_per_ip` pending connections.
    pub fn new(pending_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            pending_per_ip,
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection from `ip`, idle and pending; `None` if `ip` already holds its
    /// share of pending connections (the caller closes the new one).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Connection> {
        let mut inner = self.lock();
        let pending = inner.pending.get(&ip).copied().unwrap_or(0);
        if pending >= self.pending_per_ip {
            return None;
        }
        inner.pending.insert(ip, pending + 1);
        let id = inner.next();
        let reclaim = CancellationToken::new();
        inner.idle.insert(id, id);
        inner.connections.insert(
            id,
            Entry {
                ip,
                pending: true,
                in_flight: 0,
                upgraded: false,
                idle_since: Some(id),
                idle_at: None,
                reclaim: reclaim.clone(),
            },
        );
        Some(Connection {
            admission: Arc::clone(self),
            id,
            reclaim,
        })
    }

    /// Asks up to `count` of the connections idle the longest to close, and returns how many it
    /// asked. They are no longer idle candidates from now on.
    pub fn reclaim_oldest(&self, count: usize) -> usize {
        let mut inner = self.lock();
        let mut asked = 0;
        while asked < count {
            let Some((_, id)) = inner.idle.pop_first() else {
                break;
            };
            if let Some(entry) = inner.connections.get_mut(&id) {
                entry.idle_since = None;
                entry.reclaim.cancel();
                asked += 1;
            }
        }
        asked
    }
}

/// A registered connection; dropping it (when its task ends) removes it from the registry.
#[derive(Debug)]
pub struct Connection {
    admission: Arc<Admission>,
    id: u64,
    reclaim: CancellationToken,
}

impl Connection {
    /// Completes when the server wants this connection closed to free its descriptor (it was
    /// idle the longest when descriptors ran out).
    pub async fn reclaimed(&self) {
        self.reclaim.cancelled().await;
    }

    /// How long this connection has been idle since its last response finished (`None` while a
    /// request is in flight, before its first request, or once it upgraded).
    pub fn idle_for(&self) -> Option<Duration> {
        let inner = self.admission.lock();
        let idle_at = inner.connections.get(&self.id)?.idle_at?;
        Some(idle_at.elapsed())
    }

    /// Whether no complete request head has arrived on this connection yet.
    pub fn is_pending(&self) -> bool {
        self.admission
            .lock()
            .connections
            .get(&self.id)
            .is_some_and(|entry| entry.pending)
    }

    /// A request head has arrived: the connection is no longer pending, nor idle until the
    /// returned guard (held until the response body is finished) is dropped.
    pub fn request_started(&self) -> Request {
        let mut inner = self.admission.lock();
        let Some(entry) = inner.connections.get_mut(&self.id) else {
            return self.request(true);
        };
        entry.in_flight += 1;
        let (ip, was_pending, idle_since) = (entry.ip, entry.pending, entry.idle_since.take());
        entry.idle_at = None;
        entry.pending = false;
        if was_pending {
            inner.forget_pending(ip);
        }
        if let Some(key) = idle_since {
            inner.idle.remove(&key);
        }
        self.request(false)
    }

    fn request(&self, done: bool) -> Request {
        Request {
            admission: Arc::clone(&self.admission),
            id: self.id,
            done,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut inner = self.admission.lock();
        let Some(entry) = inner.connections.remove(&self.id) else {
            return;
        };
        if entry.pending {
            inner.forget_pending(entry.ip);
        }
        if let Some(key) = entry.idle_since {
            inner.idle.remove(&key);
        }
    }
}

/// A request in flight on a [`Connection`]; when dropped, the connection is idle again unless
/// other requests are in flight or it upgraded.
#[derive(Debug)]
pub struct Request {
    admission: Arc<Admission>,
    id: u64,
    done: bool,
}

impl Request {
    /// The response switches protocols: the connection belongs to a WebSocket session now and is
    /// never idle again.
    pub fn upgraded(mut self) {
        if let Some(entry) = self.admission.lock().connections.get_mut(&self.id) {
            entry.upgraded = true;
            entry.in_flight -= 1;
        }
        self.done = true;
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut inner = self.admission.lock();
        let key = inner.next();
        let Some(entry) = inner.connections.get_mut(&self.id) else {
            return;
        };
        entry.in_flight -= 1;
        if entry.in_flight == 0 && !entry.upgraded && !entry.reclaim.is_cancelled() {
            entry.idle_since = Some(key);
            entry.idle_at = Some(Instant::now());
            inner.idle.insert(key, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn an_ip_holds_at_most_its_share_of_pending_connections() {
        let admission = Admission::new(2);
        let first = admission.admit(A).expect("first");
        let _second = admission.admit(A).expect("second");
        assert!(admission.admit(A).is_none(), "third from A refused");
        assert!(admission.admit(B).is_some(), "another IP is not affected");
        // A request head arrives on the first: it no longer counts as pending.
        let _request = first.request_started();
        assert!(admission.admit(A).is_some());
        drop(first);
        assert_eq!(
            admission.lock().connections.len(),
            1,
            "only the second is left"
        );
    }

    #[test]
    fn a_dropped_pending_connection_frees_its_share() {
        let admission = Admission::new(1);
        let first = admission.admit(A).expect("first");
        assert!(admission.admit(A).is_none());
        drop(first);
        assert!(admission.admit(A).is_some());
    }

    #[test]
    fn reclaims_the_longest_idle_first_and_never_busy_or_upgraded() {
        let admission = Admission::new(10);
        let old = admission.admit(A).expect("old");
        let busy = admission.admit(A).expect("busy");
        let upgraded = admission.admit(A).expect("upgraded");
        let newer = admission.admit(A).expect("newer");
        let _in_flight = busy.request_started();
        upgraded.request_started().upgraded();
        // `old` finished a request after `newer` was admitted: now `newer` is the oldest idle.
        drop(old.request_started());
        assert_eq!(admission.reclaim_oldest(1), 1);
        assert!(newer.reclaim.is_cancelled());
        assert!(!old.reclaim.is_cancelled());
        assert_eq!(admission.reclaim_oldest(10), 1);
        assert!(old.reclaim.is_cancelled());
        assert!(!busy.reclaim.is_cancelled());
        assert!(!upgraded.reclaim.is_cancelled());
        assert_eq!(admission.reclaim_oldest(10), 0);
    }
}
