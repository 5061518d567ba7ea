//! Outbound events: an accepted push serialized once into the JSON clients receive, shared by
//! reference count by the history and every connection queue it is handed to; and the frames the
//! server writes on its own (acks, resync notices).

use std::cell::RefCell;
use std::sync::{Arc, LazyLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::{DEFAULT_EVENT_TYPE, PushMessage, StreamPosition, UserId};

/// One encoded event or reply, as sent in a WebSocket text frame: shared, immutable JSON bytes.
/// Cloning is a reference-count increment, so one push costs one serialization however many
/// connections receive it.
pub type Frame = Utf8Bytes;

/// A push serialized for delivery.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Whose connections receive it.
    pub user_id: UserId,
    /// Who chose its `event_id`: an upstream's may repeat on a retry (and is recognised as a
    /// duplicate); one assigned here is unique, so it is never looked up.
    pub id_origin: IdOrigin,
    /// The event as clients receive it, shared by the history and every outbox it is queued in.
    pub event: Arc<Event>,
}

impl Publication {
    /// The upstream's `event_id`, or the one the server assigned.
    pub fn event_id(&self) -> &Arc<str> {
        &self.event.event_id
    }
}

/// Who chose an event's `event_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdOrigin {
    /// The upstream gave it: a retry of the push repeats it.
    Upstream,
    /// The server assigned it (a ULID): unique.
    Assigned,
}

/// An event as clients receive it. Immutable once encoded; shared by reference count.
#[derive(Debug)]
pub struct Event {
    /// What a client resumes from: the event's `event_id` (SSE `id:`).
    pub event_id: Arc<str>,
    /// SSE's `event:` field.
    pub event_type: Arc<str>,
    /// The JSON the client receives (a WebSocket text frame; SSE `data:`).
    pub frame: Frame,
    /// When this node accepted the event (or received it from the cluster): the start of its
    /// push-to-socket latency.
    pub accepted_at: Instant,
}

/// The outbound JSON shape, in the field order of the wire contract.
#[derive(Serialize)]
struct OutboundEvent<'a> {
    event_type: &'a str,
    event_id: &'a str,
    user_id: &'a str,
    timestamp: Timestamp<'a>,
    data: &'a RawValue,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Timestamp<'a> {
    Given(&'a RawValue),
    Accepted(f64),
}

impl PushMessage<'_> {
    /// Serializes the push once, assigning an `event_id` (a ULID: unique, sortable by time) and a
    /// timestamp (`accepted_at`, unix seconds from [`unix_seconds_now`]) where the upstream gave
    /// none. Every event of one request shares the request's `accepted_at`. Serializing validated
    /// values into memory does not fail in practice; if it ever did, the push fails with 500.
    pub fn encode(&self, accepted_at: f64) -> Result<Publication, serde_json::Error> {
        let mut ulid_text = [0; ulid::ULID_LEN];
        let event_id: Arc<str> = match &self.event_id {
            Some(id) => Arc::from(id.as_ref()),
            None => Arc::from(&*ulid::Ulid::new().array_to_str(&mut ulid_text)),
        };
        let timestamp = match self.timestamp {
            Some(raw) => Timestamp::Given(raw),
            None => Timestamp::Accepted(accepted_at),
        };
        let event = OutboundEvent {
            event_type: &self.event_type,
            event_id: &event_id,
            user_id: self.user_id.as_str(),
            timestamp,
            data: self.data,
        };
        // Serialized into this thread's scratch buffer, then copied into an allocation of exactly
        // the right size: events live on in history, so slack would be paid for per stored event,
        // and exact bytes become the frame without a separate reference-count block.
        let json = SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            let written = serde_json::to_writer(&mut *scratch, &event);
            let json = std::str::from_utf8(scratch)
                .map(str::to_owned)
                .map_err(serde::ser::Error::custom);
            if scratch.capacity() > SCRATCH_KEEP_BYTES {
                *scratch = Vec::new();
            }
            written.and(json)
        })?;
        let event_type = if self.event_type == DEFAULT_EVENT_TYPE {
            Arc::clone(&DEFAULT_EVENT_TYPE_SHARED)
        } else {
            Arc::from(self.event_type.as_ref())
        };
        Ok(Publication {
            user_id: self.user_id.clone(),
            id_origin: if self.event_id.is_some() {
                IdOrigin::Upstream
            } else {
                IdOrigin::Assigned
            },
            event: Arc::new(Event {
                event_id,
                event_type,
                frame: Frame::from(json),
                accepted_at: Instant::now(),
            }),
        })
    }
}

/// The default event type, shared so that the common case allocates nothing for it.
static DEFAULT_EVENT_TYPE_SHARED: LazyLock<Arc<str>> =
    LazyLock::new(|| Arc::from(DEFAULT_EVENT_TYPE));

thread_local! {
    /// Where events are serialized before being copied out at their exact size.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Largest scratch buffer a thread keeps between events; one grown by a rare huge event is let go.
const SCRATCH_KEEP_BYTES: usize = 64 * 1024;

/// The current time in unix seconds with millisecond precision.
pub fn unix_seconds_now() -> f64 {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    millis as f64 / 1000.0
}

/// The reply to a client's text frame: `{"event_type":"ack","data":{"received":"…"}}`.
pub fn ack_frame(received: &str) -> Frame {
    let ack = json!({ "event_type": "ack", "data": { "received": received } });
    Frame::from(ack.to_string())
}

/// `event_type` of the notice a resuming client gets when it cannot be resumed.
pub const RESYNC_EVENT_TYPE: &str = "resync";

/// The resync notice: `{"event_type":"resync","event_id":<head token>,"user_id":…,"timestamp":…,
/// "data":{"reason":…,"last_event_id":<what the client asked for>,"epoch":…,"position":…}}`.
/// `epoch` and `position` are `null` when the server keeps no history.
pub fn resync_frame(
    user: &UserId,
    event_id: &str,
    reason: &str,
    requested: &str,
    head: Option<&StreamPosition>,
) -> Frame {
    let resync = json!({
        "event_type": RESYNC_EVENT_TYPE,
        "event_id": event_id,
        "user_id": user.as_str(),
        "timestamp": unix_seconds_now(),
        "data": {
            "reason": reason,
            "last_event_id": requested,
            "epoch": head.map(|head| &*head.epoch),
            "position": head.map(|head| head.position),
        },
    });
    Frame::from(resync.to_string())
}
