//! `--target fastapi`: the FastAPI seed. The same requests and frames as ours, but its replies
//! give no per-message delivery count: a single push says `"delivered to N connection(s)"` (or
//! `"partial"`), a batch result only `"success"`.

use serde::Deserialize;

use super::ours::{HEALTH, classify_seed_frame, seed_ws_path, write_seed_request};
use super::{Ack, CountSource, Incoming, Item, Protocol, number_after};

/// The FastAPI seed's protocol.
#[derive(Debug, Clone, Copy)]
pub struct FastApi;

impl Protocol for FastApi {
    fn ws_path(&self, user_id: &str) -> String {
        seed_ws_path(user_id)
    }

    fn publish(&self, items: &[Item<'_>], body: &mut Vec<u8>) -> String {
        write_seed_request(items, body)
    }

    fn parse_reply(&self, reply: &[u8], count: usize) -> Option<Vec<Ack>> {
        #[derive(Deserialize)]
        struct Push {
            status: String,
            message: String,
        }
        #[derive(Deserialize)]
        struct Result {
            success: bool,
        }
        #[derive(Deserialize)]
        struct Batch {
            results: Vec<Result>,
        }
        if count == 1 {
            let push: Push = serde_json::from_slice(reply).ok()?;
            let ack = match push.status.as_str() {
                "success" => number_after(&push.message, "delivered to ")
                    .map_or(Ack::Accepted, Ack::Delivered),
                _ => Ack::Delivered(0),
            };
            return Some(vec![ack]);
        }
        let batch: Batch = serde_json::from_slice(reply).ok()?;
        (batch.results.len() == count).then(|| {
            batch
                .results
                .iter()
                .map(|item| {
                    if item.success {
                        Ack::Accepted
                    } else {
                        Ack::Delivered(0)
                    }
                })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Frame;

    #[test]
    fn reads_replies_and_frames() {
        assert_eq!(
            FastApi.parse_reply(
                br#"{"status":"success","message":"delivered to 3 connection(s)"}"#,
                1
            ),
            Some(vec![Ack::Delivered(3)])
        );
        assert_eq!(
            FastApi.parse_reply(br#"{"status":"partial","message":"user not connected"}"#, 1),
            Some(vec![Ack::Delivered(0)])
        );
        assert_eq!(
            FastApi.parse_reply(
                br#"{"results":[{"user_id":"a","success":true},{"user_id":"b","success":false}]}"#,
                2
            ),
            Some(vec![Ack::Accepted, Ack::Delivered(0)])
        );
        let frame = r#"{"user_id":"u1","data":{"seq":5,"sent_ns":9,"pad":""},"event_type":"message","event_id":null,"timestamp":null}"#;
        assert_eq!(
            FastApi.classify(frame),
            Incoming::Push(Frame {
                user_id: "u1",
                seq: 5,
                sent_ns: 9
            })
        );
    }
}
