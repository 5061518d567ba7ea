//! `--target ours`: this project. Also home of the seed API's request and frame formats, which
//! the FastAPI seed shares and Pushpin's frames copy.

use serde::Deserialize;

use super::{Ack, CountSource, Incoming, Item, Protocol, scan_data, string_after};

/// Path of the single-push endpoint.
pub const PUSH_PATH: &str = "/sse/push";
/// Path of the batch-push endpoint.
pub const BATCH_PATH: &str = "/sse/push/batch";
/// Path of the broadcast endpoint (every user connected at that moment).
pub const BROADCAST_PATH: &str = "/sse/broadcast";
/// Where the seed API reports its open connections.
pub const HEALTH: CountSource = CountSource {
    path: "/health",
    pointer: "/connections",
};

/// This project's protocol: replies report `delivered` per message.
#[derive(Debug, Clone, Copy)]
pub struct Ours;

impl Protocol for Ours {
    fn ws_path(&self, user_id: &str) -> String {
        seed_ws_path(user_id)
    }

    fn publish(&self, items: &[Item<'_>], body: &mut Vec<u8>) -> String {
        write_seed_request(items, body)
    }

    fn parse_reply(&self, reply: &[u8], count: usize) -> Option<Vec<Ack>> {
        #[derive(Deserialize)]
        struct Push {
            delivered: u64,
        }
        #[derive(Deserialize)]
        struct Batch {
            results: Vec<Push>,
        }
        if count == 1 {
            let push: Push = serde_json::from_slice(reply).ok()?;
            return Some(vec![Ack::Delivered(push.delivered)]);
        }
        let batch: Batch = serde_json::from_slice(reply).ok()?;
        (batch.results.len() == count).then(|| {
            batch
                .results
                .iter()
                .map(|item| Ack::Delivered(item.delivered))
                .collect()
        })
    }

    fn classify<'a>(&self, text: &'a str) -> Incoming<'a> {
        classify_seed_frame(text)
    }

    fn connection_count(&self) -> Option<CountSource> {
        Some(HEALTH)
    }
}

/// `/ws?user_id=<id>`.
pub fn seed_ws_path(user_id: &str) -> String {
    format!("/ws?user_id={user_id}")
}

/// One message as the seed API takes it: `{"user_id":…,"data":…}`.
fn write_seed_message(item: &Item<'_>, body: &mut Vec<u8>) {
    body.extend_from_slice(b"{\"user_id\":\"");
    body.extend_from_slice(item.user_id.as_bytes());
    body.extend_from_slice(b"\",\"data\":");
    body.extend_from_slice(item.data.as_bytes());
    body.push(b'}');
}

/// A seed-API publish: one message to [`PUSH_PATH`], several as a JSON array to [`BATCH_PATH`].
pub fn write_seed_request(items: &[Item<'_>], body: &mut Vec<u8>) -> String {
    if let [item] = items {
        write_seed_message(item, body);
        return PUSH_PATH.to_owned();
    }
    body.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        write_seed_message(item, body);
    }
    body.push(b']');
    BATCH_PATH.to_owned()
}

/// Reads a seed-style frame: top-level `"user_id"` and a `"data"` object, in any order among the
/// other fields (the server writes compact JSON and copies `data` verbatim).
pub fn classify_seed_frame(text: &str) -> Incoming<'_> {
    let (Some(user_id), Some(data_at)) =
        (string_after(text, "\"user_id\":\""), text.find("\"data\":"))
    else {
        return Incoming::Invalid;
    };
    scan_data(user_id, &text[data_at..], "\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Frame;

    #[test]
    fn scans_server_frames() {
        let text = r#"{"event_type":"message","event_id":"01J","user_id":"bench-u7","timestamp":1.5,"data":{"seq":42,"sent_ns":123456,"pad":"xx"}}"#;
        assert_eq!(
            Ours.classify(text),
            Incoming::Push(Frame {
                user_id: "bench-u7",
                seq: 42,
                sent_ns: 123_456
            })
        );
        assert_eq!(
            Ours.classify(r#"{"user_id":"a","data":{"probe":1}}"#),
            Incoming::Probe
        );
        assert_eq!(
            Ours.classify(r#"{"user_id":"a","data":{"other":1}}"#),
            Incoming::Invalid
        );
        assert_eq!(Ours.classify("not json"), Incoming::Invalid);
    }

    #[test]
    fn single_and_batch_requests() {
        let mut body = Vec::new();
        let one = [Item {
            user_id: "u1",
            data: r#"{"seq":1}"#,
        }];
        assert_eq!(Ours.publish(&one, &mut body), PUSH_PATH);
        assert_eq!(body, br#"{"user_id":"u1","data":{"seq":1}}"#);
        body.clear();
        let two = [
            one[0],
            Item {
                user_id: "u2",
                data: "{}",
            },
        ];
        assert_eq!(Ours.publish(&two, &mut body), BATCH_PATH);
        assert_eq!(
            body,
            br#"[{"user_id":"u1","data":{"seq":1}},{"user_id":"u2","data":{}}]"#
        );
        assert_eq!(
            Ours.parse_reply(br#"{"status":"success","delivered":2}"#, 1),
            Some(vec![Ack::Delivered(2)])
        );
        assert_eq!(
            Ours.parse_reply(
                br#"{"results":[{"success":true,"delivered":1},{"success":false,"delivered":0}]}"#,
                2
            ),
            Some(vec![Ack::Delivered(1), Ack::Delivered(0)])
        );
        assert_eq!(Ours.parse_reply(br#"{"results":[]}"#, 2), None);
    }
}
