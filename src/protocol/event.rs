//! Outbound events: an accepted push serialized once into the JSON clients receive, shared by
//! reference count by the history and every connection queue it is handed to (a push to several
//! users serializes its `data` once, into a [`Payload`] their frames share); and the frames the
//! server writes on its own (acks, resync notices).

use std::cell::RefCell;
use std::ops::Range;
use std::sync::{Arc, LazyLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use serde_json::value::RawValue;

use super::frame::{Frame, Payload};
use super::{DEFAULT_EVENT_TYPE, PushFields, PushMessage, StreamPosition, UserId};

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
    /// Whether the upstream asked for the client's acknowledgement (`"ack": true`, also in the
    /// frame).
    pub ack: bool,
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

/// A push's `timestamp` as it goes out: the upstream's, byte for byte, or the acceptance time.
#[derive(Clone, Copy)]
enum Timestamp<'a> {
    Given(&'a RawValue),
    Accepted(f64),
}

/// The envelope fields of an outbound event other than its `data`.
struct Envelope<'a> {
    event_type: &'a str,
    event_id: &'a str,
    timestamp: Timestamp<'a>,
    ack: bool,
}

impl Envelope<'_> {
    /// Appends `{"event_type":…,"event_id":…,"user_id":…,"timestamp":…,"data":` (the wire
    /// contract's field order; `"ack":true` before `data` when acknowledgement was asked for),
    /// which the `data` JSON and a closing brace complete.
    fn write_head(&self, user_id: &str, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.extend_from_slice(b"{\"event_type\":");
        serde_json::to_writer(&mut *out, self.event_type)?;
        out.extend_from_slice(b",\"event_id\":");
        serde_json::to_writer(&mut *out, self.event_id)?;
        out.extend_from_slice(b",\"user_id\":");
        serde_json::to_writer(&mut *out, user_id)?;
        out.extend_from_slice(b",\"timestamp\":");
        match self.timestamp {
            Timestamp::Given(raw) => out.extend_from_slice(raw.get().as_bytes()),
            Timestamp::Accepted(seconds) => serde_json::to_writer(&mut *out, &seconds)?,
        }
        if self.ack {
            out.extend_from_slice(b",\"ack\":true");
        }
        out.extend_from_slice(b",\"data\":");
        Ok(())
    }
}

/// Appends the `data` JSON and the closing brace of an outbound event.
fn write_tail(data: &RawValue, out: &mut Vec<u8>) {
    out.extend_from_slice(data.get().as_bytes());
    out.push(b'}');
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
        let envelope = Envelope {
            event_type: &self.event_type,
            event_id: &event_id,
            timestamp: timestamp(self.timestamp, accepted_at),
            ack: self.ack.wanted,
        };
        let json = exact_text(|out| {
            envelope.write_head(self.user_id.as_str(), out)?;
            write_tail(self.data, out);
            Ok(())
        })?;
        let id_origin = match self.event_id {
            Some(_) => IdOrigin::Upstream,
            None => IdOrigin::Assigned,
        };
        Ok(publication(
            self.user_id.clone(),
            id_origin,
            event_id,
            shared_event_type(&self.event_type),
            Frame::whole(json),
        )
        .asking_ack(self.ack.wanted))
    }
}

impl PushFields<'_> {
    /// Serializes one event for each of `users`: the `data` once, into a payload every user's
    /// frame shares, and per user only the small envelope that names them. Each frame's text is
    /// exactly what [`PushMessage::encode`] makes for that user. All share one `event_id`: the
    /// upstream's, or a ULID assigned here (then unique, so never looked up as a duplicate).
    /// Returns that `event_id` and the publications, in the order of `users`.
    pub fn encode_for(
        &self,
        users: Vec<UserId>,
        accepted_at: f64,
    ) -> Result<(Arc<str>, Vec<Publication>), serde_json::Error> {
        let (event_id, id_origin): (Arc<str>, _) = match &self.event_id {
            Some(id) => (Arc::from(id.as_ref()), IdOrigin::Upstream),
            None => (Arc::from(ulid::Ulid::new().to_string()), IdOrigin::Assigned),
        };
        let envelope = Envelope {
            event_type: &self.event_type,
            event_id: &event_id,
            timestamp: timestamp(self.timestamp, accepted_at),
            ack: self.ack.wanted,
        };
        let payload = Payload::new(exact_text(|out| {
            write_tail(self.data, out);
            Ok(())
        })?);
        let event_type = shared_event_type(&self.event_type);
        let publications = users
            .into_iter()
            .map(|user| {
                let head = exact_text(|out| envelope.write_head(user.as_str(), out))?;
                let frame = Frame::split(head, Arc::clone(&payload));
                Ok(publication(
                    user,
                    id_origin,
                    Arc::clone(&event_id),
                    Arc::clone(&event_type),
                    frame,
                )
                .asking_ack(self.ack.wanted))
            })
            .collect::<Result<_, serde_json::Error>>()?;
        Ok((event_id, publications))
    }
}

/// Where the user's id stands, as a JSON string, in `head`, the head of a frame made for `user`
/// by [`PushFields::encode_for`]: the heads of one push's users differ only there. `None` when
/// `head` is not such a head.
pub fn user_in_head(head: &[u8], user: &UserId) -> Option<Range<usize>> {
    const FIELD: &[u8] = b",\"user_id\":";
    const NEXT: &[u8] = b",\"timestamp\":";
    let encoded = serde_json::to_string(user.as_str()).ok()?;
    // Inside the JSON strings before it a quote is escaped: the first match is the field.
    let field = head.windows(FIELD.len()).position(|part| part == FIELD)?;
    let start = field + FIELD.len();
    let end = start + encoded.len();
    let fits = head.get(start..end)? == encoded.as_bytes() && head.get(end..)?.starts_with(NEXT);
    fits.then_some(start..end)
}

fn timestamp(given: Option<&RawValue>, accepted_at: f64) -> Timestamp<'_> {
    match given {
        Some(raw) => Timestamp::Given(raw),
        None => Timestamp::Accepted(accepted_at),
    }
}

fn publication(
    user_id: UserId,
    id_origin: IdOrigin,
    event_id: Arc<str>,
    event_type: Arc<str>,
    frame: Frame,
) -> Publication {
    Publication {
        user_id,
        id_origin,
        event: Arc::new(Event {
            event_id,
            event_type,
            frame,
            accepted_at: Instant::now(),
        }),
        ack: false,
    }
}

impl Publication {
    fn asking_ack(mut self, ack: bool) -> Self {
        self.ack = ack;
        self
    }
}

/// The event type as events hold it; the default one is shared, so the common case allocates
/// nothing for it.
fn shared_event_type(event_type: &str) -> Arc<str> {
    if event_type == DEFAULT_EVENT_TYPE {
        Arc::clone(&DEFAULT_EVENT_TYPE_SHARED)
    } else {
        Arc::from(event_type)
    }
}

/// Runs `write` into this thread's scratch buffer, then copies the text into an allocation of
/// exactly its size: events live on in history and queues, so slack would be paid for per held
/// event.
fn exact_text(
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
) -> Result<String, serde_json::Error> {
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        let written = write(scratch);
        let text = std::str::from_utf8(scratch)
            .map(str::to_owned)
            .map_err(serde::ser::Error::custom);
        if scratch.capacity() > SCRATCH_KEEP_BYTES {
            *scratch = Vec::new();
        }
        written.and(text)
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Push, parse_push_targets};

    #[test]
    fn heads_of_one_push_differ_only_where_the_user_stands() {
        let body = br#"{"user_ids":["a","b \"q\"",",\"user_id\":"],"event_type":",\"user_id\":\"x\"","event_id":"e","data":{}}"#;
        let Ok(Push::Many(fields, users)) = parse_push_targets(body, 10) else {
            panic!("a push to several users");
        };
        let (_, publications) = fields.encode_for(users, 1.5).unwrap();
        let first = publications[0].event.frame.head();
        let at = user_in_head(first, &publications[0].user_id).unwrap();
        for publication in &publications {
            let head = publication.event.frame.head();
            let span = user_in_head(head, &publication.user_id).unwrap();
            assert_eq!(head[..span.start], first[..at.start]);
            assert_eq!(head[span.end..], first[at.end..]);
            let user: String = serde_json::from_slice(&head[span]).unwrap();
            assert_eq!(user, publication.user_id.as_str());
        }
        assert_eq!(user_in_head(first, &publications[1].user_id), None);
        assert_eq!(user_in_head(b"{}", &publications[0].user_id), None);
    }
}
