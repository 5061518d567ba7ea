//! Property tests of the input contract: pushes and batches (`protocol::parse_push`,
//! `protocol::parse_batch`, `PushMessage::encode`) and connect requests
//! (`transport::ConnectRequest::from_parts`), on generated inputs: unicode everywhere, nested
//! data, escaped and unescaped JSON, fields present, absent or `null`.
//!
//! Each property runs proptest's default 256 cases (about 5 s in all on 2 cores); set
//! `PROPTEST_CASES` to run more. A failure prints the shrunk input, and proptest saves its seed in
//! `tests/properties.proptest-regressions` (commit that file) so that the case is replayed first.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

use axum::http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use std::sync::Arc;

use websocket_sse_server::protocol::{
    EVENT_ID_MAX_CHARS, EVENT_TYPE_MAX_CHARS, IdOrigin, Issue, Loc, Push as ParsedPush,
    USER_ID_MAX_BYTES, parse_batch, parse_push, parse_push_targets,
};
use websocket_sse_server::transport::ConnectRequest;

/// The `accepted_at` every encoded event here gets when the push has no timestamp.
const ACCEPTED_AT: f64 = 1_704_067_200.125;
/// Longest resume point a client may send, in bytes (`transport::RESUME_FROM_MAX_BYTES`).
const RESUME_FROM_MAX_BYTES: usize = 512;
/// The batch limit the batch properties use.
const MAX_ITEMS: usize = 1000;

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Any character that is not a control character (Unicode category Cc): ASCII, other planes,
/// format characters such as U+202E, private use, unassigned code points.
fn text_char() -> impl Strategy<Value = char> {
    any::<char>().prop_filter("no control characters", |c| !c.is_control())
}

/// A control character: C0, DEL or C1.
fn control_char() -> impl Strategy<Value = char> {
    prop_oneof![
        (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap()),
        Just('\u{7f}'),
        (0x80u32..0xa0).prop_map(|c| char::from_u32(c).unwrap()),
    ]
}

/// Text of `min..=max` characters without control characters, mostly ASCII or mostly unicode.
fn text(min: usize, max: usize) -> BoxedStrategy<String> {
    prop_oneof![
        proptest::collection::vec(prop::char::range('!', '~'), min..=max),
        proptest::collection::vec(text_char(), min..=max),
    ]
    .prop_map(|chars| chars.into_iter().collect())
    .boxed()
}

/// Keeps the longest prefix of `text` that fits in `max` bytes, on a character boundary.
fn truncate_bytes(mut text: String, max: usize) -> String {
    while text.len() > max {
        text.pop();
    }
    text
}

/// A valid user id: 1–256 bytes (up to 256 characters, cut on a character boundary to 256
/// bytes), no control characters.
fn user_id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => text(1, 24),
        1 => text(1, USER_ID_MAX_BYTES),
    ]
    .prop_map(|id| truncate_bytes(id, USER_ID_MAX_BYTES))
}

/// Any JSON string: control characters, quotes and backslashes included (data is free-form).
fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![".{0,12}", "[\"\\\\/\\x00-\\x1f a-z]{0,8}"]
}

/// A JSON number as serde_json reads it back unchanged.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
    ]
}

/// Any JSON value, nested a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        any_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((any_string(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// A JSON object, the only valid `data`.
fn data_object() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::vec((any_string(), json_value()), 0..6)
        .prop_map(|entries| entries.into_iter().collect())
}

/// A non-negative timestamp, integer or not.
fn timestamp() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        (0.0..4.0e9f64).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Value::from(f.abs())),
        Just(json!(0)),
        Just(json!(0.0)),
    ]
}

/// A valid push, field by field.
#[derive(Debug, Clone)]
struct Push {
    user_id: String,
    data: Map<String, Value>,
    event_type: Option<String>,
    event_id: Option<String>,
    timestamp: Option<Value>,
    /// Keys that are not part of the contract, ignored by the server.
    extra: Vec<(String, Value)>,
}

fn push() -> impl Strategy<Value = Push> {
    (
        user_id(),
        data_object(),
        proptest::option::of(text(1, EVENT_TYPE_MAX_CHARS)),
        proptest::option::of(text(1, EVENT_ID_MAX_CHARS)),
        proptest::option::of(timestamp()),
        proptest::collection::vec(("[a-z_]{1,8}", json_value()), 0..3),
    )
        .prop_map(
            |(user_id, data, event_type, event_id, timestamp, extra)| Push {
                user_id,
                data,
                event_type,
                event_id,
                timestamp,
                extra: extra
                    .into_iter()
                    .filter(|(key, _)| !CONTRACT_KEYS.contains(&key.as_str()))
                    .collect(),
            },
        )
}

const CONTRACT_KEYS: [&str; 5] = ["user_id", "data", "event_type", "event_id", "timestamp"];

/// How a push is written: the order of its keys, `null` or nothing for an absent optional field,
/// and whether non-ASCII characters are written as `\u` escapes.
#[derive(Debug, Clone)]
struct Style {
    nulls: bool,
    escape: bool,
    reverse: bool,
}

fn style() -> impl Strategy<Value = Style> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(nulls, escape, reverse)| Style {
        nulls,
        escape,
        reverse,
    })
}

impl Push {
    fn to_value(&self, style: &Style) -> Value {
        let mut entries = vec![
            ("user_id".to_owned(), Value::from(self.user_id.clone())),
            ("data".to_owned(), Value::Object(self.data.clone())),
        ];
        let optional = [
            ("event_type", self.event_type.clone().map(Value::from)),
            ("event_id", self.event_id.clone().map(Value::from)),
            ("timestamp", self.timestamp.clone()),
        ];
        for (key, value) in optional {
            match value {
                Some(value) => entries.push((key.to_owned(), value)),
                None if style.nulls => entries.push((key.to_owned(), Value::Null)),
                None => {}
            }
        }
        entries.extend(self.extra.iter().cloned());
        if style.reverse {
            entries.reverse();
        }
        Value::Object(entries.into_iter().collect())
    }
}

/// Serializes a value, writing every non-ASCII character as a `\u` escape when `escape` is set
/// (outside strings JSON is ASCII, so only string contents change).
fn to_json(value: &Value, escape: bool) -> String {
    let json = serde_json::to_string(value).unwrap();
    if !escape {
        return json;
    }
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// An encoded event as a client reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Frame {
    event_type: String,
    event_id: String,
    user_id: String,
    timestamp: Value,
    data: Value,
}

/// Checks that `frame` (an encoded event's JSON) carries exactly `push`.
fn check_frame(frame: &str, push: &Push, raw_data: &str) -> Result<(), TestCaseError> {
    let keys: Vec<String> = serde_json::from_str::<Map<String, Value>>(frame)
        .unwrap()
        .keys()
        .cloned()
        .collect();
    prop_assert_eq!(
        keys,
        ["event_type", "event_id", "user_id", "timestamp", "data"],
        "the contract's field order"
    );
    let parsed: Frame = serde_json::from_str(frame).unwrap();
    prop_assert_eq!(&parsed.user_id, &push.user_id);
    prop_assert_eq!(
        parsed.event_type.as_str(),
        push.event_type.as_deref().unwrap_or("message")
    );
    match &push.event_id {
        Some(id) => prop_assert_eq!(&parsed.event_id, id),
        None => prop_assert_eq!(parsed.event_id.len(), 26, "an assigned ULID"),
    }
    match &push.timestamp {
        // Compared as serde_json reads the text sent (its float parsing is not exact).
        Some(timestamp) => prop_assert_eq!(&parsed.timestamp, &reparsed(timestamp)),
        None => prop_assert_eq!(parsed.timestamp, json!(ACCEPTED_AT)),
    }
    prop_assert_eq!(&parsed.data, &reparsed(&Value::Object(push.data.clone())));
    // Byte for byte, not just equal once parsed.
    #[derive(Deserialize)]
    struct RawData<'a> {
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let raw: RawData<'_> = serde_json::from_str(frame).unwrap();
    prop_assert_eq!(raw.data.get(), raw_data);
    Ok(())
}

/// `value` as it reads back from its JSON text. serde_json's float parsing is not exact without
/// its `float_roundtrip` feature, so a generated float may read back one unit in the last place
/// off; the server keeps the text itself (checked byte for byte), so that is no concern here.
fn reparsed(value: &Value) -> Value {
    serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap()
}

/// The raw text of `data` in a push body as sent.
fn raw_data(body: &str) -> &str {
    #[derive(Deserialize)]
    struct RawData<'a> {
        #[serde(borrow)]
        data: &'a RawValue,
    }
    serde_json::from_str::<RawData<'_>>(body)
        .unwrap()
        .data
        .get()
}

fn body_loc(rest: &[Loc]) -> Vec<Loc> {
    let mut loc = vec![Loc::Key("body")];
    loc.extend_from_slice(rest);
    loc
}

/// A push whose only problem is `field`: exactly one issue, located there, of kind `kind`.
fn check_single_issue(
    result: Result<impl std::fmt::Debug, Vec<Issue>>,
    loc: &[Loc],
    kinds: &[&str],
) -> Result<(), TestCaseError> {
    let issues = match result {
        Ok(accepted) => return Err(TestCaseError::fail(format!("accepted: {accepted:?}"))),
        Err(issues) => issues,
    };
    prop_assert_eq!(issues.len(), 1, "{:?}", issues);
    prop_assert_eq!(&issues[0].loc, &body_loc(loc));
    prop_assert!(
        kinds.contains(&issues[0].kind),
        "kind {} not in {:?}",
        issues[0].kind,
        kinds
    );
    // The 422 body names the field.
    let detail = serde_json::to_value(&issues).unwrap();
    prop_assert_eq!(
        &detail[0]["loc"][loc.len()],
        &serde_json::to_value(loc.last().unwrap()).unwrap()
    );
    Ok(())
}

/// Ways a single push can be invalid in exactly one field: the field's location and the kinds of
/// error that may be reported for it.
#[derive(Debug, Clone)]
enum Defect {
    EmptyUserId,
    LongUserId(String),
    ControlInUserId(String, usize, char),
    NonStringUserId(Value),
    MissingUserId,
    LongEventType(String),
    EmptyEventType,
    ControlInEventType(char),
    LongEventId(String),
    DataNotObject(Value),
    MissingData,
    NegativeTimestamp(f64),
    NonNumericTimestamp(String),
}

fn defect() -> impl Strategy<Value = Defect> {
    // Over 256 characters, so over 256 bytes.
    let long_user_id = text(USER_ID_MAX_BYTES + 1, 600);
    let not_object = prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        number(),
        any_string().prop_map(Value::String),
        proptest::collection::vec(json_value(), 0..4).prop_map(Value::Array),
    ];
    prop_oneof![
        Just(Defect::EmptyUserId),
        long_user_id.prop_map(Defect::LongUserId),
        (text(0, 60), any::<prop::sample::Index>(), control_char()).prop_map(|(id, at, c)| {
            let at = at.index(id.chars().count() + 1);
            Defect::ControlInUserId(id, at, c)
        }),
        prop_oneof![number(), Just(json!([])), Just(json!({}))].prop_map(Defect::NonStringUserId),
        Just(Defect::MissingUserId),
        text(EVENT_TYPE_MAX_CHARS + 1, 200).prop_map(Defect::LongEventType),
        Just(Defect::EmptyEventType),
        control_char().prop_map(Defect::ControlInEventType),
        text(EVENT_ID_MAX_CHARS + 1, 300).prop_map(Defect::LongEventId),
        not_object.prop_map(Defect::DataNotObject),
        Just(Defect::MissingData),
        (f64::MIN..-1e-300).prop_map(Defect::NegativeTimestamp),
        any_string().prop_map(Defect::NonNumericTimestamp),
    ]
}

impl Defect {
    /// Applies the defect to a valid push object; returns the field's key and the error kinds.
    fn apply(&self, object: &mut Map<String, Value>) -> (&'static str, &'static [&'static str]) {
        match self {
            Self::EmptyUserId => {
                object.insert("user_id".into(), json!(""));
                ("user_id", &["string_too_short"])
            }
            Self::LongUserId(id) => {
                object.insert("user_id".into(), json!(id));
                ("user_id", &["string_too_long"])
            }
            Self::ControlInUserId(id, at, c) => {
                let mut chars: Vec<char> = id.chars().collect();
                chars.insert(*at, *c);
                object.insert(
                    "user_id".into(),
                    json!(chars.into_iter().collect::<String>()),
                );
                ("user_id", &["value_error"])
            }
            Self::NonStringUserId(value) => {
                object.insert("user_id".into(), value.clone());
                ("user_id", &["string_type"])
            }
            Self::MissingUserId => {
                object.remove("user_id");
                ("user_id", &["missing"])
            }
            Self::LongEventType(event_type) => {
                object.insert("event_type".into(), json!(event_type));
                ("event_type", &["string_too_long"])
            }
            Self::EmptyEventType => {
                object.insert("event_type".into(), json!(""));
                ("event_type", &["string_too_short"])
            }
            Self::ControlInEventType(c) => {
                object.insert("event_type".into(), json!(format!("order{c}created")));
                ("event_type", &["value_error"])
            }
            Self::LongEventId(id) => {
                object.insert("event_id".into(), json!(id));
                ("event_id", &["string_too_long"])
            }
            Self::DataNotObject(value) => {
                object.insert("data".into(), value.clone());
                ("data", &["dict_type"])
            }
            Self::MissingData => {
                object.remove("data");
                ("data", &["missing"])
            }
            Self::NegativeTimestamp(seconds) => {
                object.insert("timestamp".into(), json!(seconds));
                ("timestamp", &["greater_than_equal"])
            }
            Self::NonNumericTimestamp(text) => {
                object.insert("timestamp".into(), json!(text));
                ("timestamp", &["float_type"])
            }
        }
    }
}

/// An invalid batch item: a push with one defect, or something that is not an object at all.
#[derive(Debug, Clone)]
enum BadItem {
    Defective(Box<(Push, Defect)>),
    NotAnObject(Value),
}

fn bad_item() -> impl Strategy<Value = BadItem> {
    prop_oneof![
        4 => (push(), defect()).prop_map(|(push, defect)| BadItem::Defective(Box::new((push, defect)))),
        1 => prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            number(),
            any_string().prop_map(Value::String),
            proptest::collection::vec(json_value(), 0..4).prop_map(Value::Array),
        ]
        .prop_map(BadItem::NotAnObject),
    ]
}

/// The characters JavaScript's `encodeURIComponent` leaves as they are.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&byte)
}

/// Encodes a query component the way a browser's `encodeURIComponent` does (`%20` for a space),
/// or as an HTML form does (`+`), so that both decodings are exercised.
fn encode_component(text: &str, form: bool) -> String {
    if form {
        return form_urlencoded::byte_serialize(text.as_bytes()).collect();
    }
    text.bytes()
        .map(|byte| {
            if is_unreserved(byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

fn query(params: &[(&str, &str)], form: bool) -> String {
    params
        .iter()
        .map(|(key, value)| {
            format!(
                "{}={}",
                encode_component(key, form),
                encode_component(value, form)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A resume point the server accepts: at most 512 bytes, no control characters (maybe empty).
fn resume_point() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[0-9A-Z]{26}(:[0-9]{1,6})?",
        text(1, 200).prop_map(|from| truncate_bytes(from, RESUME_FROM_MAX_BYTES)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    /// (a) Any valid push, however written, is accepted, and its encoded frame carries the same
    /// fields, `data` byte for byte.
    #[test]
    fn valid_push_round_trips(push in push(), style in style()) {
        let body = to_json(&push.to_value(&style), style.escape);
        let message = match parse_push(body.as_bytes()) {
            Ok(message) => message,
            Err(issues) => return Err(TestCaseError::fail(format!("refused: {issues:?}"))),
        };
        prop_assert_eq!(message.user_id.as_str(), push.user_id.as_str());
        let event = message.encode(ACCEPTED_AT).unwrap();
        prop_assert_eq!(event.user_id.as_str(), push.user_id.as_str());
        prop_assert_eq!(event.id_origin == IdOrigin::Upstream, push.event_id.is_some());
        prop_assert_eq!(
            &*event.event.event_type,
            push.event_type.as_deref().unwrap_or("message")
        );
        let frame = event.event.frame.to_string();
        let parsed: Frame = serde_json::from_str(&frame).unwrap();
        prop_assert_eq!(parsed.event_id.as_str(), &**event.event_id());
        check_frame(&frame, &push, raw_data(&body))?;
    }

    /// (a) The same push to several users (`user_ids`) shares one payload among their frames,
    /// and each user's frame is exactly the text a push to that user alone encodes.
    #[test]
    fn a_push_to_several_users_encodes_each_exactly_as_alone(push in push(), style in style()) {
        let Value::Object(mut object) = push.to_value(&style) else {
            unreachable!("a push is an object");
        };
        let single_body = to_json(&Value::Object(object.clone()), style.escape);
        let other = if push.user_id == "other" { "another" } else { "other" };
        object.remove("user_id");
        object.insert("user_ids".to_owned(), json!([push.user_id, other]));
        let body = to_json(&Value::Object(object), style.escape);
        let Ok(ParsedPush::Many(fields, users)) = parse_push_targets(body.as_bytes(), MAX_ITEMS) else {
            return Err(TestCaseError::fail("user_ids refused"));
        };
        let (event_id, events) = fields.encode_for(users, ACCEPTED_AT).unwrap();
        prop_assert_eq!(events.len(), 2);
        prop_assert!(Arc::ptr_eq(events[0].event.frame.payload(), events[1].event.frame.payload()));
        let mut alone = parse_push(single_body.as_bytes()).unwrap();
        alone.event_id = Some(event_id.to_string().into());
        let expected = alone.encode(ACCEPTED_AT).unwrap().event.frame.to_string();
        prop_assert_eq!(events[0].event.frame.to_string(), expected);
        prop_assert_eq!(events[1].user_id.as_str(), other);
    }

    /// (b) A push with one bad field is refused with exactly one issue that names the field.
    #[test]
    fn invalid_field_is_refused_and_named(push in push(), defect in defect(), escape in any::<bool>()) {
        let Value::Object(mut object) = push.to_value(&Style { nulls: false, escape, reverse: false }) else {
            unreachable!("a push is an object");
        };
        let (field, kinds) = defect.apply(&mut object);
        let body = to_json(&Value::Object(object), escape);
        check_single_issue(parse_push(body.as_bytes()), &[Loc::Key(field)], kinds)?;
    }

    /// (c) A batch of valid pushes is accepted whole, in order.
    #[test]
    fn valid_batch_round_trips_in_order(
        pushes in proptest::collection::vec(push(), 0..8),
        style in style(),
    ) {
        let items: Vec<Value> = pushes.iter().map(|push| push.to_value(&style)).collect();
        let body = to_json(&Value::Array(items), style.escape);
        let messages = match parse_batch(body.as_bytes(), MAX_ITEMS) {
            Ok(messages) => messages,
            Err(issues) => return Err(TestCaseError::fail(format!("refused: {issues:?}"))),
        };
        prop_assert_eq!(messages.len(), pushes.len());
        let sent: Vec<&RawValue> = serde_json::from_str(&body).unwrap();
        for ((message, push), item) in messages.iter().zip(&pushes).zip(sent) {
            let event = message.encode(ACCEPTED_AT).unwrap();
            check_frame(&event.event.frame.to_string(), push, raw_data(item.get()))?;
        }
        // The same batch is refused whole when it is over the limit.
        if !pushes.is_empty() {
            let issues = parse_batch(body.as_bytes(), pushes.len() - 1).unwrap_err();
            prop_assert_eq!(issues.len(), 1);
            prop_assert_eq!(issues[0].kind, "too_long");
            prop_assert_eq!(&issues[0].loc, &body_loc(&[]));
        }
    }

    /// (c) One invalid item anywhere in a batch refuses the whole batch, and every issue points
    /// at that item's index.
    #[test]
    fn one_bad_item_refuses_the_batch_at_its_index(
        pushes in proptest::collection::vec(push(), 0..6),
        bad in bad_item(),
        at in any::<prop::sample::Index>(),
        escape in any::<bool>(),
    ) {
        let style = Style { nulls: false, escape, reverse: false };
        let mut items: Vec<Value> = pushes.iter().map(|push| push.to_value(&style)).collect();
        let index = at.index(items.len() + 1);
        let (item, rest, kinds): (Value, Vec<Loc>, &[&str]) = match &bad {
            BadItem::Defective(defective) => {
                let (push, defect) = &**defective;
                let Value::Object(mut object) = push.to_value(&style) else {
                    unreachable!("a push is an object");
                };
                let (field, kinds) = defect.apply(&mut object);
                (Value::Object(object), vec![Loc::Index(index), Loc::Key(field)], kinds)
            }
            BadItem::NotAnObject(value) => {
                (value.clone(), vec![Loc::Index(index)], &["dict_type"])
            }
        };
        items.insert(index, item);
        let body = to_json(&Value::Array(items), escape);
        check_single_issue(parse_batch(body.as_bytes(), MAX_ITEMS), &rest, kinds)?;
    }

    /// (d) A form-encoded query carries the user id and resume point through, among other
    /// parameters, whichever way it was encoded; a `Last-Event-ID` header wins over the query.
    #[test]
    fn connect_query_round_trips(
        user in user_id(),
        from in proptest::option::of(resume_point()),
        header in proptest::option::of("[!-~]([ -~]{0,60}[!-~])?"),
        before in proptest::collection::vec(("[a-z]{1,6}", text(0, 8)), 0..3),
        after in proptest::collection::vec(("[a-z]{1,6}", text(0, 8)), 0..3),
        form in any::<bool>(),
    ) {
        let reserved = ["user_id", "last_event_id", "token"];
        let mut params: Vec<(&str, &str)> = before
            .iter()
            .chain(&after)
            .filter(|(key, _)| !reserved.contains(&key.as_str()))
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        let split = before.len().min(params.len());
        params.insert(split, ("user_id", &user));
        if let Some(from) = &from {
            params.push(("last_event_id", from));
        }
        let query = query(&params, form);

        let request = ConnectRequest::from_parts(Some(&query), &HeaderMap::new()).unwrap();
        prop_assert_eq!(request.user.as_ref().map(|user| user.as_str()), Some(user.as_str()));
        prop_assert_eq!(request.token, None);
        let expected = from.clone().filter(|from| !from.is_empty());
        prop_assert_eq!(&request.resume_from, &expected);

        if let Some(header) = header {
            let mut headers = HeaderMap::new();
            headers.insert("last-event-id", HeaderValue::from_str(&header).unwrap());
            let request = ConnectRequest::from_parts(Some(&query), &headers).unwrap();
            prop_assert_eq!(request.resume_from, Some(header));
        }
    }

    /// (d) A resume point that is too long or holds a control character is refused, located in
    /// the query; so is a user id that is.
    #[test]
    fn connect_query_refusals_are_located(
        user in user_id(),
        long in text(RESUME_FROM_MAX_BYTES + 1, 700),
        control in control_char(),
        form in any::<bool>(),
    ) {
        let check = |params: &[(&str, &str)], field: &'static str, kind: &str| -> Result<(), TestCaseError> {
            let issue = ConnectRequest::from_parts(Some(&query(params, form)), &HeaderMap::new())
                .unwrap_err();
            prop_assert_eq!(issue.loc, vec![Loc::Key("query"), Loc::Key(field)]);
            prop_assert_eq!(issue.kind, kind);
            Ok(())
        };
        check(&[("user_id", &user), ("last_event_id", &long)], "last_event_id", "string_too_long")?;
        let with_control = format!("a{control}b");
        check(&[("user_id", &user), ("last_event_id", &with_control)], "last_event_id", "value_error")?;
        check(&[("user_id", &with_control)], "user_id", "value_error")?;
        check(&[("user_id", ""), ("last_event_id", "x")], "user_id", "string_too_short")?;
    }
}
