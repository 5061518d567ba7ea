//! `--target pushpin`: Pushpin with the peer's WebSocket-over-HTTP backend. Each user is a GRIP
//! channel named after the user id; a publish is `POST /publish/` on the publish port with one
//! `ws-message` item per message, whose `content` is the exact frame text the client receives
//! (loadgen sends the FastAPI seed's frame, so the bytes on the wire match). The reply
//! (`Published`) says nothing about delivery, so every message counts as [`Ack::Accepted`].

use super::ours::{classify_seed_frame, seed_ws_path};
use super::{Ack, Incoming, Item, Protocol, push_json_escaped};

/// Path of Pushpin's publish endpoint (on the publish port).
pub const PUBLISH_PATH: &str = "/publish/";

/// Pushpin's protocol.
#[derive(Debug, Clone, Copy)]
pub struct Pushpin;

impl Protocol for Pushpin {
    fn ws_path(&self, user_id: &str) -> String {
        seed_ws_path(user_id)
    }

    fn publish(&self, items: &[Item<'_>], body: &mut Vec<u8>) -> String {
        body.extend_from_slice(b"{\"items\":[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"channel\":\"");
            body.extend_from_slice(item.user_id.as_bytes());
            body.extend_from_slice(b"\",\"formats\":{\"ws-message\":{\"content\":\"");
            // The FastAPI seed's frame: model_dump_json() of the message, all five fields.
            push_json_escaped(body, "{\"user_id\":\"");
            push_json_escaped(body, item.user_id);
            push_json_escaped(body, "\",\"data\":");
            push_json_escaped(body, item.data);
            push_json_escaped(
                body,
                ",\"event_type\":\"message\",\"event_id\":null,\"timestamp\":null}",
            );
            body.extend_from_slice(b"\"}}}");
        }
        body.extend_from_slice(b"]}");
        PUBLISH_PATH.to_owned()
    }

    fn parse_reply(&self, reply: &[u8], count: usize) -> Option<Vec<Ack>> {
        reply
            .starts_with(b"Published")
            .then(|| vec![Ack::Accepted; count])
    }

    fn classify<'a>(&self, text: &'a str) -> Incoming<'a> {
        classify_seed_frame(text)
    }

    /// Pushpin 1.36 answers 502 when more than ~100 handshakes are in flight.
    fn max_handshakes_in_flight(&self) -> usize {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Frame;

    #[test]
    fn publish_body_carries_the_exact_frame() {
        let mut body = Vec::new();
        let items = [
            Item {
                user_id: "u1",
                data: r#"{"seq":1,"sent_ns":2,"pad":"x"}"#,
            },
            Item {
                user_id: "u2",
                data: r#"{"probe":1}"#,
            },
        ];
        assert_eq!(Pushpin.publish(&items, &mut body), PUBLISH_PATH);
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let content = value["items"][0]["formats"]["ws-message"]["content"]
            .as_str()
            .expect("content");
        assert_eq!(
            content,
            r#"{"user_id":"u1","data":{"seq":1,"sent_ns":2,"pad":"x"},"event_type":"message","event_id":null,"timestamp":null}"#
        );
        assert_eq!(value["items"][1]["channel"], "u2");
        assert_eq!(
            Pushpin.classify(content),
            Incoming::Push(Frame {
                user_id: "u1",
                seq: 1,
                sent_ns: 2
            })
        );
        assert_eq!(
            Pushpin.parse_reply(b"Published\n", 2),
            Some(vec![Ack::Accepted; 2])
        );
        assert_eq!(Pushpin.parse_reply(b"oops", 1), None);
    }
}
