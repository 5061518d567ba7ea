//! The wire contract and the vocabulary every layer shares: what upstreams may push ([`push`]),
//! what clients receive ([`event`]), where they are in their user's stream and how they resume
//! ([`stream`]), how they are connected and why connections end ([`connection`]), the push
//! API's answers ([`responses`]), and how ids in URLs are decoded ([`percent`]).
//!
//! This is the bottom layer: it imports nothing from the rest of the crate. Pure values and
//! functions over bytes; it knows nothing about HTTP handlers, sockets, the hub or the broker.
//! Each accepted push is serialized exactly once into an [`Event`] whose [`Frame`]
//! (reference-counted bytes) every receiving connection shares; a push to several users shares
//! one [`Payload`] among all their frames ([`frame`]).

pub mod client_frame;
pub mod connection;
pub mod event;
pub mod frame;
pub mod percent;
pub mod push;
pub mod responses;
pub mod stream;

pub use client_frame::{
    ACK_IDS_MAX, AckBody, ClientFrame, ack_error_frame, acked_ids, classify_client_frame,
};
pub use connection::{Delivery, DisconnectReason, SlowConsumerCause, Transport};
pub use event::{
    Event, IdOrigin, Publication, RESYNC_EVENT_TYPE, ack_frame, resync_frame, unix_seconds_now,
    user_in_head,
};
pub use frame::{Frame, Ledger, Payload};
pub use push::{
    AckRequest, DEFAULT_EVENT_TYPE, EVENT_ID_MAX_CHARS, EVENT_TYPE_MAX_CHARS, FieldError, Issue,
    Loc, Push, PushFields, PushMessage, USER_ID_MAX_BYTES, UserId, parse_batch, parse_broadcast,
    parse_push, parse_push_targets,
};
pub use responses::{
    BatchItemResult, BatchResponse, BroadcastResponse, MultiPushResponse, PushResponse, PushStatus,
};
pub use stream::{EvictionCause, Resumed, ResyncReason, StreamPosition, parse_token};

/// A stable snake_case (or lowercase) name for a value of a closed set — a reason, a transport —
/// used on the wire and as a metrics label. Derived with `strum::IntoStaticStr`, never written by
/// hand.
pub trait Label: Copy + Into<&'static str> {
    /// The name.
    fn label(self) -> &'static str {
        self.into()
    }
}

impl<T: Copy + Into<&'static str>> Label for T {}

#[cfg(test)]
mod tests {
    use std::fmt;

    use serde_json::{Value, json};

    use super::*;

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
            event.event.frame.to_string().starts_with(expected_prefix),
            "{}",
            event.event.frame.to_string()
        );
        let value: Value = serde_json::from_str(&event.event.frame.to_string()).unwrap();
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
        let value: Value = serde_json::from_str(&event.event.frame.to_string()).unwrap();
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
                .event
                .frame
                .to_string()
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
            ack_frame("hi \"you\"").to_string(),
            r#"{"event_type":"ack","data":{"received":"hi \"you\""}}"#
        );
    }
}
