//! What connections' send queues hold, counted in bytes: per connection (against
//! `WS_SEND_QUEUE_BYTES`) and for the whole node (against `SEND_QUEUES_MAX_BYTES`).
//!
//! Every item in a queue is a [`Queued`], which charges its frame to its connection's
//! [`QueueMeter`] when it is queued and releases the charge when it is dropped: after it was
//! written, or with the queue when the connection ends, whatever the path. A connection's count is
//! the text of every frame it holds (what it still has to write); the node's counts each frame's
//! head per item and each shared payload once, however many queues hold it, so it follows the
//! memory the queues really keep alive.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::Outgoing;
use crate::protocol::Ledger;

/// The node's total of queued bytes and its bound.
#[derive(Debug)]
pub(super) struct NodeQueues {
    bytes: AtomicUsize,
    max_bytes: usize,
}

impl NodeQueues {
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            bytes: AtomicUsize::new(0),
            max_bytes,
        }
    }

    /// Bytes queued for all connections right now.
    pub(super) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// By how much the queues hold more than the bound (0 within it).
    pub(super) fn excess(&self) -> usize {
        self.bytes().saturating_sub(self.max_bytes)
    }
}

/// One connection's queued bytes, and the node's total it adds to.
#[derive(Debug)]
pub(super) struct QueueMeter {
    bytes: AtomicUsize,
    node: Arc<NodeQueues>,
    /// Notified whenever a charge is released: a replay waiting for room may go on. (An SSE
    /// stream's items are released when the response body has taken them, after the session's
    /// write: nothing else would tell the session.)
    released: Notify,
}

impl QueueMeter {
    pub(super) fn new(node: Arc<NodeQueues>) -> Arc<Self> {
        Arc::new(Self {
            bytes: AtomicUsize::new(0),
            node,
            released: Notify::new(),
        })
    }

    /// Bytes this connection holds in its queue (and in the batch it is writing).
    pub(super) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Completes once a charge has been released since the last time it completed (at once if
    /// one was released meanwhile).
    pub(super) async fn released(&self) {
        self.released.notified().await;
    }
}

/// An item in a connection's queue, charged to its meter until dropped.
#[derive(Debug)]
pub struct Queued {
    item: Outgoing,
    meter: Arc<QueueMeter>,
}

impl Queued {
    /// Charges `item` to `meter`.
    pub(super) fn new(item: Outgoing, meter: &Arc<QueueMeter>) -> Self {
        let frame = item.frame();
        meter.bytes.fetch_add(frame.len(), Ordering::Relaxed);
        let node = frame.head().len() + frame.payload().hold(Ledger::Queues);
        meter.node.bytes.fetch_add(node, Ordering::Relaxed);
        Self {
            item,
            meter: Arc::clone(meter),
        }
    }
}

impl Deref for Queued {
    type Target = Outgoing;

    fn deref(&self) -> &Outgoing {
        &self.item
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        let frame = self.item.frame();
        self.meter.bytes.fetch_sub(frame.len(), Ordering::Relaxed);
        let node = frame.head().len() + frame.payload().release(Ledger::Queues);
        self.meter.node.bytes.fetch_sub(node, Ordering::Relaxed);
        self.meter.released.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::protocol::{Event, Frame, Payload};

    fn shared(payload: &Arc<Payload>, user: &str) -> Outgoing {
        Outgoing::Live(Arc::new(Event {
            event_id: Arc::from("e"),
            event_type: Arc::from("message"),
            frame: Frame::split(format!("{{\"u\":\"{user}\",\"d\":"), Arc::clone(payload)),
            accepted_at: Instant::now(),
        }))
    }

    #[test]
    fn a_shared_payload_counts_once_for_the_node_and_fully_per_connection() {
        let node = Arc::new(NodeQueues::new(100));
        let (a, b) = (QueueMeter::new(node.clone()), QueueMeter::new(node.clone()));
        let payload = Payload::new("x".repeat(1000));
        let first = Queued::new(shared(&payload, "a"), &a);
        let second = Queued::new(shared(&payload, "b"), &b);
        let head = first.frame().head().len();
        assert_eq!(a.bytes(), head + 1000);
        assert_eq!(b.bytes(), head + 1000);
        assert_eq!(node.bytes(), 2 * head + 1000);
        assert_eq!(node.excess(), 2 * head + 900);
        drop(first);
        assert_eq!((a.bytes(), node.bytes()), (0, head + 1000));
        drop(second);
        assert_eq!((b.bytes(), node.bytes()), (0, 0));
    }
}
