//! What a WebSocket client sends: acknowledgements (`{"type":"ack","event_id":…}` or
//! `"event_ids":[…]`), which the server takes without an echo, and anything else, which gets the
//! seed's echo ack and goes to the `client.message` webhook. The SSE acknowledgement body has the
//! same shape (without `type`).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::{EVENT_ID_MAX_CHARS, Frame};

/// Most event ids one acknowledgement may carry.
pub const ACK_IDS_MAX: usize = 100;

/// A client's text frame, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// An acknowledgement of these events (1 to [`ACK_IDS_MAX`] ids).
    Ack(Vec<Arc<str>>),
    /// An acknowledgement that names no valid event id: answered with an error frame.
    BadAck(String),
    /// Anything else (the frame's text): the seed's echo ack answers it.
    Message(String),
}

/// The fields of a frame that may be an acknowledgement; everything else is ignored.
#[derive(Deserialize)]
struct AckFields<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow)]
    event_ids: Option<&'a RawValue>,
}

/// Classifies a client's text frame: only a JSON object whose `type` is `"ack"` is an
/// acknowledgement.
pub fn classify_client_frame(text: &str) -> ClientFrame {
    let message = || ClientFrame::Message(text.to_owned());
    if !text.trim_start().starts_with('{') {
        return message();
    }
    let Ok(fields) = serde_json::from_str::<AckFields<'_>>(text) else {
        return message();
    };
    if fields.kind.map(RawValue::get) != Some("\"ack\"") {
        return message();
    }
    match acked_ids(fields.event_id, fields.event_ids) {
        Ok(ids) => ClientFrame::Ack(ids),
        Err(problem) => ClientFrame::BadAck(problem),
    }
}

/// The event ids of an acknowledgement body (`event_id`, or `event_ids`: 1 to [`ACK_IDS_MAX`]),
/// or what is wrong with it, naming the field.
pub fn acked_ids(
    event_id: Option<&RawValue>,
    event_ids: Option<&RawValue>,
) -> Result<Vec<Arc<str>>, String> {
    match (event_id, event_ids) {
        (Some(_), Some(_)) => Err("give either event_id or event_ids, not both".into()),
        (None, None) => Err("event_id or event_ids is required".into()),
        (Some(id), None) => Ok(vec![ack_id(id).map_err(|e| format!("event_id: {e}"))?]),
        (None, Some(ids)) => {
            let items: Vec<&RawValue> = serde_json::from_str(ids.get())
                .map_err(|_| "event_ids: should be a list of strings".to_owned())?;
            if items.is_empty() || items.len() > ACK_IDS_MAX {
                return Err(format!(
                    "event_ids: should have 1 to {ACK_IDS_MAX} items, not {}",
                    items.len()
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(index, id)| ack_id(id).map_err(|e| format!("event_ids[{index}]: {e}")))
                .collect()
        }
    }
}

fn ack_id(raw: &RawValue) -> Result<Arc<str>, &'static str> {
    let id: String = serde_json::from_str(raw.get()).map_err(|_| "should be a string")?;
    let chars = id.chars().count();
    if chars == 0 || chars > EVENT_ID_MAX_CHARS {
        return Err("should have 1 to 128 characters");
    }
    if id.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(id.into())
}

/// The body of an SSE acknowledgement (`POST` to the acknowledgement path). Read it with
/// [`AckBody::parse`]: serde's derive alone would also take a JSON array, field by field.
#[derive(Deserialize)]
pub struct AckBody<'a> {
    /// One event id.
    #[serde(borrow)]
    pub event_id: Option<&'a RawValue>,
    /// Several event ids.
    #[serde(borrow)]
    pub event_ids: Option<&'a RawValue>,
}

impl<'a> AckBody<'a> {
    /// Reads a body that must be one JSON object.
    pub fn parse(body: &'a [u8]) -> Result<Self, String> {
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err("expected a JSON object".into());
        }
        serde_json::from_slice(body).map_err(|error| format!("expected a JSON object: {error}"))
    }
}

/// The answer to an acknowledgement that names no valid event id:
/// `{"event_type":"error","data":{"detail":…}}`.
pub fn ack_error_frame(problem: &str) -> Frame {
    let error =
        json!({ "event_type": "error", "data": { "detail": format!("invalid ack: {problem}") } });
    Frame::from(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_objects_typed_ack_are_acknowledgements() {
        for text in [
            "hello",
            r#"{"type":"chat"}"#,
            r#"{"event_id":"a"}"#,
            "{not json",
        ] {
            assert_eq!(
                classify_client_frame(text),
                ClientFrame::Message(text.to_owned())
            );
        }
        assert_eq!(
            classify_client_frame(r#" {"type":"ack","event_id":"e1"}"#),
            ClientFrame::Ack(vec!["e1".into()])
        );
        assert_eq!(
            classify_client_frame(r#"{"type":"ack","event_ids":["a","b"]}"#),
            ClientFrame::Ack(vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn a_malformed_ack_names_its_field() {
        let bad = |text: &str| match classify_client_frame(text) {
            ClientFrame::BadAck(problem) => problem,
            other => panic!("{text}: {other:?}"),
        };
        assert!(bad(r#"{"type":"ack"}"#).contains("event_id"));
        assert!(bad(r#"{"type":"ack","event_id":5}"#).starts_with("event_id:"));
        assert!(bad(r#"{"type":"ack","event_ids":[]}"#).starts_with("event_ids:"));
        assert!(bad(r#"{"type":"ack","event_ids":["a",1]}"#).starts_with("event_ids[1]:"));
        let many = format!(r#"{{"type":"ack","event_ids":{:?}}}"#, vec!["x"; 101]);
        assert!(bad(&many).contains("1 to 100"));
    }
}
