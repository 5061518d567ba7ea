//! The wire contract: what upstreams may push, what clients receive, and the error bodies.
//!
//! Inbound pushes are parsed straight from the request bytes into validated values ("parse, don't
//! validate"): past [`parse_push`] and [`parse_batch`] a [`UserId`] is known to be well formed and
//! `data` is known to be a JSON object. Each accepted push is serialized exactly once into a
//! [`Frame`] (reference-counted bytes) that every receiving connection shares.
//!
//! Validation errors use FastAPI's 422 shape (`{"detail":[{"loc":[…],"msg":…,"type":…}]}`) so
//! clients written against the seed keep working.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use crate::history::StreamPosition;

/// One encoded event or reply, as sent in a WebSocket text frame: shared, immutable JSON bytes.
/// Cloning is a reference-count increment, so one push costs one serialization however many
/// connections receive it.
pub type Frame = Utf8Bytes;

/// Longest `user_id`, in bytes.
pub const USER_ID_MAX_BYTES: usize = 256;
/// Longest `event_type`, in characters.
pub const EVENT_TYPE_MAX_CHARS: usize = 64;
/// Longest `event_id`, in characters.
pub const EVENT_ID_MAX_CHARS: usize = 128;
/// `event_type` when the upstream gives none.
pub const DEFAULT_EVENT_TYPE: &str = "message";

/// A validated user identifier: 1–256 bytes, no control characters. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(Arc<str>);

impl UserId {
    /// Validates a user id, explaining what is wrong when it is refused.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        if raw.is_empty() {
            return Err(FieldError::new(
                "string_too_short",
                "String should have at least 1 character",
            ));
        }
        if raw.len() > USER_ID_MAX_BYTES {
            return Err(FieldError::new(
                "string_too_long",
                format!("String should have at most {USER_ID_MAX_BYTES} bytes"),
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(FieldError::new(
                "value_error",
                "String must not contain control characters",
            ));
        }
        Ok(Self(raw.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why one field was refused: pydantic's error `type` and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Machine-readable kind, e.g. `missing`, `string_type`, `string_too_long`.
    pub kind: &'static str,
    /// What is wrong, for a person.
    pub msg: Cow<'static, str>,
}

impl FieldError {
    fn new(kind: &'static str, msg: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            msg: msg.into(),
        }
    }

    /// This error at `loc`.
    pub fn at(self, loc: Vec<Loc>) -> Issue {
        Issue {
            loc,
            msg: self.msg,
            kind: self.kind,
        }
    }
}

/// One element of an error location: a field name or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Loc {
    /// An object key, or `"body"` / `"query"` for the request part.
    Key(&'static str),
    /// A position in a list (the batch).
    Index(usize),
}

/// One entry of a 422 `detail` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// Where the problem is, e.g. `["body", 3, "user_id"]`.
    pub loc: Vec<Loc>,
    /// What is wrong.
    pub msg: Cow<'static, str>,
    /// pydantic's error type.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// A validated push, borrowing its JSON pieces from the request body until it is encoded.
#[derive(Debug)]
pub struct PushMessage<'a> {
    /// Whose connections receive it.
    pub user_id: UserId,
    /// The upstream's payload, a JSON object kept byte for byte.
    pub data: &'a RawValue,
    /// The event's kind, `message` by default.
    pub event_type: Cow<'a, str>,
    /// The upstream's id, if it gave one.
    pub event_id: Option<Cow<'a, str>>,
    /// The upstream's unix timestamp as it wrote it, if it gave one.
    pub timestamp: Option<&'a RawValue>,
}

/// A push serialized for delivery.
#[derive(Debug, Clone)]
pub struct Event {
    /// Whose connections receive it.
    pub user_id: UserId,
    /// Whether the `event_id` came from the upstream (and may therefore repeat on a retry) rather
    /// than being assigned here (and therefore unique).
    pub upstream_id: bool,
    /// The event as clients receive it, shared by the history and every outbox it is queued in.
    pub published: Arc<Published>,
}

impl Event {
    /// The upstream's `event_id`, or the one the server assigned.
    pub fn event_id(&self) -> &Arc<str> {
        &self.published.event_id
    }
}

/// An event as clients receive it. Immutable once encoded; shared by reference count.
#[derive(Debug)]
pub struct Published {
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
    pub fn encode(&self, accepted_at: f64) -> Result<Event, serde_json::Error> {
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
        Ok(Event {
            user_id: self.user_id.clone(),
            upstream_id: self.event_id.is_some(),
            published: Arc::new(Published {
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

/// The push body as it arrives: every field kept raw so that each can be checked on its own and
/// every problem reported, not just the first. Only a JSON object deserializes into it (serde's
/// derive would also take an array, field by field).
#[derive(Default)]
struct RawPush<'a> {
    user_id: Option<&'a RawValue>,
    user_ids: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    event_type: Option<&'a RawValue>,
    event_id: Option<&'a RawValue>,
    timestamp: Option<&'a RawValue>,
}

/// The keys of a push object; anything else is ignored.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum PushField {
    UserId,
    UserIds,
    Data,
    EventType,
    EventId,
    Timestamp,
    #[serde(other)]
    Unknown,
}

impl<'de> Deserialize<'de> for RawPush<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
            type Value = RawPush<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut push = RawPush::default();
                while let Some(field) = map.next_key::<PushField>()? {
                    let (slot, name) = match field {
                        PushField::UserId => (&mut push.user_id, "user_id"),
                        PushField::UserIds => (&mut push.user_ids, "user_ids"),
                        PushField::Data => (&mut push.data, "data"),
                        PushField::EventType => (&mut push.event_type, "event_type"),
                        PushField::EventId => (&mut push.event_id, "event_id"),
                        PushField::Timestamp => (&mut push.timestamp, "timestamp"),
                        PushField::Unknown => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(serde::de::Error::duplicate_field(name));
                    }
                    // `null` reads as absent, as for an optional field in the seed.
                    *slot = map.next_value::<Option<&'de RawValue>>()?;
                }
                Ok(push)
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Parses and validates a single push body (one `user_id`).
pub fn parse_push(body: &[u8]) -> Result<PushMessage<'_>, Vec<Issue>> {
    let raw = parse_object(body)?;
    let mut issues = Vec::new();
    let message = validate(raw, &[], &mut issues);
    message.ok_or(issues)
}

/// Reads a body that must be one JSON object, its fields kept raw.
fn parse_object(body: &[u8]) -> Result<RawPush<'_>, Vec<Issue>> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(vec![body_issue(body, Shape::Object, None)]);
    }
    serde_json::from_slice(body).map_err(|e| vec![body_issue(body, Shape::Object, Some(e))])
}

/// A push body for the single-push endpoint: one user (`user_id`) or several (`user_ids`).
#[derive(Debug)]
pub enum Push<'a> {
    /// `user_id`: one user.
    One(PushMessage<'a>),
    /// `user_ids`: the same event for each of these users (duplicates removed, order kept).
    Many(Vec<PushMessage<'a>>),
}

/// Parses and validates a body of the single-push endpoint, which takes either `user_id` or
/// `user_ids` (a list of 1 to `max_users` user ids).
pub fn parse_push_targets(body: &[u8], max_users: usize) -> Result<Push<'_>, Vec<Issue>> {
    let raw = parse_object(body)?;
    let mut issues = Vec::new();
    let Some(user_ids) = raw.user_ids else {
        return validate(raw, &[], &mut issues).map(Push::One).ok_or(issues);
    };
    let users = if raw.user_id.is_some() {
        issues.push(
            FieldError::new("value_error", "Give either user_id or user_ids, not both")
                .at(loc(&[], Some("user_ids"))),
        );
        None
    } else {
        user_list(user_ids, max_users, &mut issues)
    };
    let fields = validate_fields(&raw, &[], &mut issues);
    match (users, fields) {
        (Some(users), Some(fields)) if issues.is_empty() => Ok(Push::Many(
            users
                .into_iter()
                .map(|user_id| fields.clone().addressed_to(user_id))
                .collect(),
        )),
        _ => Err(issues),
    }
}

/// Parses and validates a broadcast body: a push without `user_id` (the event goes to every
/// connected user). Returns the message fields, to be addressed to each user.
pub fn parse_broadcast(body: &[u8]) -> Result<PushFields<'_>, Vec<Issue>> {
    let raw = parse_object(body)?;
    let mut issues = Vec::new();
    for (field, present) in [("user_id", raw.user_id), ("user_ids", raw.user_ids)] {
        if present.is_some() {
            issues.push(
                FieldError::new(
                    "extra_forbidden",
                    "A broadcast goes to every connected user: no user id is taken",
                )
                .at(loc(&[], Some(field))),
            );
        }
    }
    let fields = validate_fields(&raw, &[], &mut issues);
    match fields {
        Some(fields) if issues.is_empty() => Ok(fields),
        _ => Err(issues),
    }
}

/// The list of `user_ids`: a JSON array of 1 to `max` valid user ids; duplicates are dropped.
fn user_list(raw: &RawValue, max: usize, issues: &mut Vec<Issue>) -> Option<Vec<UserId>> {
    let at = |index: Option<usize>| {
        let mut loc = loc(&[], Some("user_ids"));
        loc.extend(index.map(Loc::Index));
        loc
    };
    let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
        issues.push(FieldError::new("list_type", "Input should be a valid list").at(at(None)));
        return None;
    };
    if items.is_empty() || items.len() > max {
        let (kind, msg) = if items.is_empty() {
            ("too_short", "List should have at least 1 item".to_owned())
        } else {
            (
                "too_long",
                format!("List should have at most {max} items (MAX_BATCH_SIZE)"),
            )
        };
        issues.push(FieldError::new(kind, msg).at(at(None)));
        return None;
    }
    let before = issues.len();
    let mut users: Vec<UserId> = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match string(item).and_then(|text| UserId::parse(&text)) {
            Ok(user) => {
                if seen.insert(user.clone()) {
                    users.push(user);
                }
            }
            Err(error) => issues.push(error.at(at(Some(index)))),
        }
    }
    (issues.len() == before).then_some(users)
}

/// Parses and validates a batch body: a JSON array of at most `max_items` pushes. The batch is
/// accepted whole or refused whole, with every problem listed by index.
pub fn parse_batch(body: &[u8], max_items: usize) -> Result<Vec<PushMessage<'_>>, Vec<Issue>> {
    // Fast path: one pass over a well-formed batch. Any problem sends us to the slow path, which
    // reparses item by item to say where the problem is.
    if let Ok(items) = serde_json::from_slice::<Vec<RawPush<'_>>>(body)
        && items.len() <= max_items
    {
        let mut issues = Vec::new();
        let messages: Vec<PushMessage<'_>> = items
            .into_iter()
            .enumerate()
            .filter_map(|(index, raw)| validate(raw, &[Loc::Index(index)], &mut issues))
            .collect();
        return if issues.is_empty() {
            Ok(messages)
        } else {
            Err(issues)
        };
    }
    let items: Vec<&RawValue> =
        serde_json::from_slice(body).map_err(|e| vec![body_issue(body, Shape::List, Some(e))])?;
    if items.len() > max_items {
        return Err(vec![Issue {
            loc: vec![Loc::Key("body")],
            msg: format!(
                "List should have at most {max_items} items (MAX_BATCH_SIZE), not {}",
                items.len()
            )
            .into(),
            kind: "too_long",
        }]);
    }
    let mut issues = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let prefix = [Loc::Index(index)];
        match serde_json::from_str::<RawPush<'_>>(item.get()) {
            Ok(raw) => {
                validate(raw, &prefix, &mut issues);
            }
            Err(error) => {
                let text: String = item.get().chars().take(32).collect();
                issues.push(
                    FieldError::new(
                        "dict_type",
                        format!("Input should be a valid dictionary ({error}; got {text})"),
                    )
                    .at(loc(&prefix, None)),
                );
            }
        }
    }
    if issues.is_empty() {
        issues.push(body_issue(body, Shape::List, None));
    }
    Err(issues)
}

/// The JSON shape a body must have.
#[derive(Clone, Copy)]
enum Shape {
    Object,
    List,
}

/// Describes a body that is not JSON (`json_invalid`), or not JSON of the expected shape. Runs
/// only on the error path, so it may re-read the body.
fn body_issue(body: &[u8], shape: Shape, error: Option<serde_json::Error>) -> Issue {
    let (kind, expected) = match shape {
        Shape::Object => ("dict_type", "Input should be a valid dictionary"),
        Shape::List => ("list_type", "Input should be a valid list"),
    };
    let syntax_error = if let Err(utf8) = std::str::from_utf8(body) {
        Some(format!("invalid UTF-8: {utf8}"))
    } else {
        match &error {
            Some(error) if error.classify() == serde_json::error::Category::Data => None,
            Some(error) => Some(error.to_string()),
            None => serde_json::from_slice::<serde::de::IgnoredAny>(body)
                .err()
                .map(|e| e.to_string()),
        }
    };
    let (kind, msg) = match (syntax_error, error) {
        (Some(syntax), _) => ("json_invalid", format!("JSON decode error: {syntax}")),
        (None, Some(error)) => (kind, format!("{expected}: {error}")),
        (None, None) => (kind, expected.to_owned()),
    };
    Issue {
        loc: vec![Loc::Key("body")],
        msg: msg.into(),
        kind,
    }
}

fn loc(prefix: &[Loc], field: Option<&'static str>) -> Vec<Loc> {
    let mut loc = Vec::with_capacity(prefix.len() + 2);
    loc.push(Loc::Key("body"));
    loc.extend_from_slice(prefix);
    loc.extend(field.map(Loc::Key));
    loc
}

/// The fields of a push other than its user: what a multi-user push or a broadcast shares.
#[derive(Debug, Clone)]
pub struct PushFields<'a> {
    data: &'a RawValue,
    event_type: Cow<'a, str>,
    event_id: Option<Cow<'a, str>>,
    timestamp: Option<&'a RawValue>,
}

impl<'a> PushFields<'a> {
    /// The push of these fields to `user_id`.
    pub fn addressed_to(self, user_id: UserId) -> PushMessage<'a> {
        PushMessage {
            user_id,
            data: self.data,
            event_type: self.event_type,
            event_id: self.event_id,
            timestamp: self.timestamp,
        }
    }
}

/// Checks every field of one push, appending problems to `issues`; `Some` only when all passed.
fn validate<'a>(
    raw: RawPush<'a>,
    prefix: &[Loc],
    issues: &mut Vec<Issue>,
) -> Option<PushMessage<'a>> {
    let user_id = required(raw.user_id)
        .and_then(string)
        .and_then(|s| UserId::parse(&s))
        .map_err(|error| issues.push(error.at(loc(prefix, Some("user_id")))))
        .ok();
    let fields = validate_fields(&raw, prefix, issues);
    Some(fields?.addressed_to(user_id?))
}

/// Checks the fields of a push other than its user, appending problems to `issues`; `Some` only
/// when all passed.
fn validate_fields<'a>(
    raw: &RawPush<'a>,
    prefix: &[Loc],
    issues: &mut Vec<Issue>,
) -> Option<PushFields<'a>> {
    let before = issues.len();
    let mut check = |field: &'static str, result: Result<(), FieldError>| {
        if let Err(error) = result {
            issues.push(error.at(loc(prefix, Some(field))));
        }
    };

    let mut data = None;
    check(
        "data",
        required(raw.data).and_then(|raw| {
            if raw.get().starts_with('{') {
                data = Some(raw);
                Ok(())
            } else {
                Err(FieldError::new(
                    "dict_type",
                    "Input should be a valid dictionary",
                ))
            }
        }),
    );

    let mut event_type = Cow::Borrowed(DEFAULT_EVENT_TYPE);
    if let Some(raw) = raw.event_type {
        check(
            "event_type",
            string(raw)
                .and_then(|s| bounded_text(s, 1, EVENT_TYPE_MAX_CHARS))
                .map(|s| event_type = s),
        );
    }

    let mut event_id = None;
    if let Some(raw) = raw.event_id {
        check(
            "event_id",
            string(raw)
                .and_then(|s| bounded_text(s, 1, EVENT_ID_MAX_CHARS))
                .map(|s| event_id = Some(s)),
        );
    }

    if let Some(raw) = raw.timestamp {
        check("timestamp", timestamp(raw));
    }

    if issues.len() > before {
        return None;
    }
    Some(PushFields {
        data: data?,
        event_type,
        event_id,
        timestamp: raw.timestamp,
    })
}

fn required(raw: Option<&RawValue>) -> Result<&RawValue, FieldError> {
    raw.ok_or_else(|| FieldError::new("missing", "Field required"))
}

fn string(raw: &RawValue) -> Result<Cow<'_, str>, FieldError> {
    // Borrow when the JSON string has no escapes (the usual case); unescape into a copy otherwise.
    if let Ok(text) = serde_json::from_str::<&str>(raw.get()) {
        return Ok(Cow::Borrowed(text));
    }
    serde_json::from_str::<String>(raw.get())
        .map(Cow::Owned)
        .map_err(|_| FieldError::new("string_type", "Input should be a valid string"))
}

/// Length in characters within bounds, and no control characters (CR, LF and NUL would break SSE
/// framing and log lines).
fn bounded_text(text: Cow<'_, str>, min: usize, max: usize) -> Result<Cow<'_, str>, FieldError> {
    let chars = text.chars().count();
    if chars < min {
        return Err(FieldError::new(
            "string_too_short",
            format!("String should have at least {min} character"),
        ));
    }
    if chars > max {
        return Err(FieldError::new(
            "string_too_long",
            format!("String should have at most {max} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(FieldError::new(
            "value_error",
            "String must not contain control characters",
        ));
    }
    Ok(text)
}

fn timestamp(raw: &RawValue) -> Result<(), FieldError> {
    match serde_json::from_str::<f64>(raw.get()) {
        Ok(seconds) if seconds >= 0.0 => Ok(()),
        Ok(_) => Err(FieldError::new(
            "greater_than_equal",
            "Input should be greater than or equal to 0",
        )),
        Err(_) => Err(FieldError::new(
            "float_type",
            "Input should be a valid number",
        )),
    }
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

/// Outcome of a single push, for the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PushStatus {
    /// At least one connection received the event and none failed.
    Success,
    /// The user had no connection, or some connections could not take the event.
    Partial,
}

/// Response body of a single push.
#[derive(Debug, Serialize)]
pub struct PushResponse {
    /// `success` or `partial`.
    pub status: PushStatus,
    /// What happened, for a person.
    pub message: String,
    /// The event's id (the upstream's or the assigned one).
    pub event_id: Arc<str>,
    /// How many connections received it.
    pub delivered: usize,
    /// Whether it is kept in the user's history, for clients that resume.
    pub stored: bool,
    /// Whether it repeated an `event_id` already in the user's history, and so was not delivered
    /// again (the other fields then describe the original).
    pub duplicate: bool,
    /// Where it is stored: the stream's epoch and the event's position (absent when not stored).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub position: Option<StreamPosition>,
}

/// Response body of a batch push.
#[derive(Debug, Serialize)]
pub struct BatchResponse {
    /// One result per input item, in input order.
    pub results: Vec<BatchItemResult>,
}

/// The outcome of one batch item.
#[derive(Debug, Serialize)]
pub struct BatchItemResult {
    /// The item's user.
    pub user_id: UserId,
    /// Whether at least one connection received it and none failed.
    pub success: bool,
    /// The event's id (the upstream's or the assigned one).
    pub event_id: Arc<str>,
    /// How many connections received it.
    pub delivered: usize,
    /// Whether it is kept in the user's history.
    pub stored: bool,
    /// Whether it repeated an `event_id` already in the user's history.
    pub duplicate: bool,
}

/// Response body of a push to several users (`user_ids`).
#[derive(Debug, Serialize)]
pub struct MultiPushResponse {
    /// `success` when every user's push succeeded, `partial` otherwise.
    pub status: PushStatus,
    /// What happened, for a person.
    pub message: String,
    /// The event's id, shared by every user's copy.
    pub event_id: Arc<str>,
    /// Connections that received it, all users together.
    pub delivered: usize,
    /// One result per user, in the order given (duplicates removed).
    pub results: Vec<BatchItemResult>,
}

/// Response body of a broadcast.
#[derive(Debug, Serialize)]
pub struct BroadcastResponse {
    /// `success` when at least one connection received it, `partial` otherwise.
    pub status: PushStatus,
    /// What happened, for a person.
    pub message: String,
    /// The event's id, shared by every user's copy.
    pub event_id: Arc<str>,
    /// Users it was sent to (those connected when it was accepted).
    pub users: usize,
    /// Connections that received it.
    pub delivered: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn issues_of(result: Result<impl fmt::Debug, Vec<Issue>>) -> Value {
        serde_json::to_value(result.expect_err("should be refused")).unwrap()
    }

    #[test]
    fn seed_example_encodes_in_contract_order() {
        let body = br#"{"user_id":"test123","data":{"message":"Hello"},"event_type":"message","timestamp":1704067200}"#;
        let event = parse_push(body)
            .unwrap()
            .encode(unix_seconds_now())
            .unwrap();
        let expected_prefix = r#"{"event_type":"message","event_id":""#;
        assert!(
            event.published.frame.as_str().starts_with(expected_prefix),
            "{}",
            event.published.frame.as_str()
        );
        let value: Value = serde_json::from_str(event.published.frame.as_str()).unwrap();
        assert_eq!(value["user_id"], "test123");
        assert_eq!(value["timestamp"], 1704067200);
        assert_eq!(value["data"], json!({"message": "Hello"}));
        assert_eq!(value["event_id"].as_str().unwrap(), &**event.event_id());
        assert_eq!(event.event_id().len(), 26, "a ULID");
    }

    #[test]
    fn defaults_are_filled_in() {
        let event = parse_push(br#"{"user_id":"u","data":{},"event_id":null}"#)
            .unwrap()
            .encode(unix_seconds_now())
            .unwrap();
        let value: Value = serde_json::from_str(event.published.frame.as_str()).unwrap();
        assert_eq!(value["event_type"], "message");
        assert!(value["timestamp"].as_f64().unwrap() > 1.7e9);
    }

    #[test]
    fn upstream_event_id_is_kept() {
        let event = parse_push(br#"{"user_id":"u","data":{},"event_id":"order-7"}"#)
            .unwrap()
            .encode(unix_seconds_now())
            .unwrap();
        assert_eq!(&**event.event_id(), "order-7");
    }

    #[test]
    fn every_bad_field_is_reported() {
        let detail = issues_of(parse_push(
            br#"{"data":[1],"event_type":"","event_id":5,"timestamp":"soon"}"#,
        ));
        assert_eq!(
            detail,
            json!([
                {"loc":["body","user_id"],"msg":"Field required","type":"missing"},
                {"loc":["body","data"],"msg":"Input should be a valid dictionary","type":"dict_type"},
                {"loc":["body","event_type"],"msg":"String should have at least 1 character","type":"string_too_short"},
                {"loc":["body","event_id"],"msg":"Input should be a valid string","type":"string_type"},
                {"loc":["body","timestamp"],"msg":"Input should be a valid number","type":"float_type"},
            ])
        );
    }

    #[test]
    fn user_id_rules() {
        assert!(UserId::parse("alice@example.com").is_ok());
        assert_eq!(UserId::parse("").unwrap_err().kind, "string_too_short");
        assert_eq!(
            UserId::parse(&"x".repeat(257)).unwrap_err().kind,
            "string_too_long"
        );
        assert_eq!(UserId::parse("a\nb").unwrap_err().kind, "value_error");
    }

    #[test]
    fn malformed_and_misshapen_bodies() {
        assert_eq!(
            issues_of(parse_push(b"{not json"))[0]["type"],
            "json_invalid"
        );
        assert_eq!(issues_of(parse_push(b"[1,2]"))[0]["type"], "dict_type");
        assert_eq!(
            issues_of(parse_push(b"\xff\xfe"))[0]["type"],
            "json_invalid"
        );
        let bad_utf8_in_string = b"{\"user_id\":\"\xff\",\"data\":{}}";
        assert_eq!(
            issues_of(parse_push(bad_utf8_in_string))[0]["type"],
            "json_invalid"
        );
        let bad_utf8_in_batch = b"[{\"data\":\"\xff\"}]";
        assert_eq!(
            issues_of(parse_batch(bad_utf8_in_batch, 9))[0]["type"],
            "json_invalid"
        );
        let duplicate_field = br#"{"user_id":"a","user_id":"b"}"#;
        assert_eq!(
            issues_of(parse_push(duplicate_field))[0]["type"],
            "dict_type"
        );
    }

    #[test]
    fn deep_nesting_is_skipped_without_recursion() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            issues_of(parse_push(deep.as_bytes()))[0]["type"],
            "dict_type"
        );
        let body = format!(r#"{{"user_id":"u","data":{{"x":{deep}}}}}"#);
        let event = parse_push(body.as_bytes())
            .expect("valid JSON object")
            .encode(unix_seconds_now())
            .unwrap();
        assert!(
            event
                .published
                .frame
                .as_str()
                .ends_with(&format!("{deep}}}}}"))
        );
        let unclosed = format!(
            r#"{{"user_id":"u","data":{{"x":{}}}}}"#,
            "[".repeat(100_000)
        );
        assert_eq!(
            issues_of(parse_push(unclosed.as_bytes()))[0]["type"],
            "json_invalid"
        );
    }

    #[test]
    fn batch_reports_items_by_index_and_enforces_length() {
        let detail = issues_of(parse_batch(
            br#"[{"user_id":"a","data":{}},{"user_id":"b"},7]"#,
            10,
        ));
        assert_eq!(detail[0]["loc"], json!(["body", 1, "data"]));
        assert_eq!(detail[1]["loc"], json!(["body", 2]));
        let detail = issues_of(parse_batch(
            br#"[{"user_id":"a","data":{}},{"user_id":"b","data":{}}]"#,
            1,
        ));
        assert_eq!(detail[0]["type"], "too_long");
        assert_eq!(
            issues_of(parse_batch(br#"{"user_id":"a"}"#, 10))[0]["type"],
            "list_type"
        );
        assert!(parse_batch(b"[]", 10).unwrap().is_empty());
    }

    #[test]
    fn arrays_are_not_read_as_objects_field_by_field() {
        let detail = issues_of(parse_batch(br#"[["u",{}],{"user_id":"","data":{}}]"#, 10));
        assert_eq!(detail[0]["loc"], json!(["body", 0]));
        assert_eq!(detail[0]["type"], "dict_type");
        assert_eq!(detail[1]["loc"], json!(["body", 1, "user_id"]));
        let ok = parse_batch(
            br#"[{"user_id":"a","data":{},"extra":[1]},{"user_id":"b","data":{"x":1}}]"#,
            2,
        );
        assert_eq!(ok.unwrap().len(), 2);
    }

    #[test]
    fn ack_echoes_the_text() {
        assert_eq!(
            ack_frame("hi \"you\"").as_str(),
            r#"{"event_type":"ack","data":{"received":"hi \"you\""}}"#
        );
    }
}
