//! Inbound pushes: the request bodies upstreams send, parsed straight from their bytes into
//! validated values ("parse, don't validate"). Past [`parse_push`], [`parse_push_targets`],
//! [`parse_broadcast`] and [`parse_batch`] a [`UserId`] is known to be well formed and `data` is
//! known to be a JSON object. Problems are reported in FastAPI's 422 shape
//! (`{"detail":[{"loc":[…],"msg":…,"type":…}]}`), every one of them, so clients written against
//! the seed keep working.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

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
    /// What the upstream asked about the client's acknowledgement (`ack`, `wait_ms`).
    pub ack: AckRequest,
}

/// Whether a push asks its recipients to acknowledge it, and how long its response may wait.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckRequest {
    /// `"ack": true`: clients receive `"ack": true` and are expected to acknowledge.
    pub wanted: bool,
    /// `"wait_ms"`: the response waits up to this long for the first acknowledgement.
    pub wait_ms: Option<u64>,
}

/// Largest `wait_ms` the parser takes; the server's own bound (`ACK_WAIT_MAX_MS`) is usually
/// lower and is checked by the API.
pub const WAIT_MS_MAX: u64 = 3_600_000;

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
    ack: Option<&'a RawValue>,
    wait_ms: Option<&'a RawValue>,
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
    Ack,
    WaitMs,
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
                        PushField::Ack => (&mut push.ack, "ack"),
                        PushField::WaitMs => (&mut push.wait_ms, "wait_ms"),
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
    Many(PushFields<'a>, Vec<UserId>),
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
        (Some(users), Some(fields)) if issues.is_empty() => Ok(Push::Many(fields, users)),
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
    for (field, present) in [("ack", raw.ack), ("wait_ms", raw.wait_ms)] {
        if present.is_some() {
            issues.push(
                FieldError::new(
                    "extra_forbidden",
                    "A broadcast cannot ask for acknowledgements: push to user_ids instead",
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
            .filter_map(|(index, raw)| validate_item(raw, &[Loc::Index(index)], &mut issues))
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
                validate_item(raw, &prefix, &mut issues);
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
    pub(super) data: &'a RawValue,
    pub(super) event_type: Cow<'a, str>,
    pub(super) event_id: Option<Cow<'a, str>>,
    pub(super) timestamp: Option<&'a RawValue>,
    pub(super) ack: AckRequest,
}

impl PushFields<'_> {
    /// What the push asks about acknowledgements.
    pub fn ack(&self) -> AckRequest {
        self.ack
    }
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
            ack: self.ack,
        }
    }
}

/// Checks one batch item: a push that may ask for acknowledgement but not wait for it (a batch
/// answers at once).
fn validate_item<'a>(
    raw: RawPush<'a>,
    prefix: &[Loc],
    issues: &mut Vec<Issue>,
) -> Option<PushMessage<'a>> {
    if raw.wait_ms.is_some() {
        issues.push(
            FieldError::new(
                "extra_forbidden",
                "A batch item cannot wait for its acknowledgement: push it alone to use wait_ms",
            )
            .at(loc(prefix, Some("wait_ms"))),
        );
    }
    validate(raw, prefix, issues)
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

    let mut ack = AckRequest::default();
    if let Some(raw) = raw.ack {
        check(
            "ack",
            serde_json::from_str::<bool>(raw.get())
                .map(|wanted| ack.wanted = wanted)
                .map_err(|_| FieldError::new("bool_type", "Input should be a valid boolean")),
        );
    }
    if let Some(raw) = raw.wait_ms {
        check(
            "wait_ms",
            wait_ms(raw, ack.wanted).map(|ms| ack.wait_ms = Some(ms)),
        );
    }

    if issues.len() > before {
        return None;
    }
    Some(PushFields {
        data: data?,
        event_type,
        event_id,
        timestamp: raw.timestamp,
        ack,
    })
}

/// `wait_ms`: a whole number of milliseconds up to [`WAIT_MS_MAX`], only with `"ack": true`.
fn wait_ms(raw: &RawValue, ack: bool) -> Result<u64, FieldError> {
    let ms = serde_json::from_str::<u64>(raw.get())
        .map_err(|_| FieldError::new("int_type", "Input should be a valid non-negative integer"))?;
    if ms > WAIT_MS_MAX {
        return Err(FieldError::new(
            "less_than_equal",
            format!("Input should be less than or equal to {WAIT_MS_MAX}"),
        ));
    }
    if !ack {
        return Err(FieldError::new(
            "value_error",
            "wait_ms waits for an acknowledgement: it needs \"ack\": true",
        ));
    }
    Ok(ms)
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
