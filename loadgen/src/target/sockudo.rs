//! `--target sockudo`: Sockudo speaking the Pusher Channels protocol 7. A client connects to
//! `/app/<key>?protocol=7`, waits for `pusher:connection_established`, subscribes to the public
//! channel `user-<id>` and waits for `pusher_internal:subscription_succeeded`. Publishers use the
//! signed Pusher HTTP API: `POST /apps/<app>/events` for one message, `/batch_events` for several.
//! Events arrive as `{"event":"message","channel":"user-<id>","data":"<data as a JSON string>"}`.
//! Replies (`{"ok":true}`, `{}`) say nothing about delivery: every message is [`Ack::Accepted`].

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;

use super::{
    Ack, CountSource, Incoming, Item, Protocol, push_json_escaped, scan_data, string_after,
};
use crate::ws::WsStream;

/// Prefix of the channel each user's connections subscribe to (public channels; the peer's
/// `config.json` configures no channel namespaces, so `:` is not allowed).
pub const CHANNEL_PREFIX: &str = "user-";
/// Event name of every published message.
const EVENT_NAME: &str = "message";
/// Frames read while waiting for one subscription step before giving up (the caller bounds the
/// time as well).
const MAX_CONTROL_FRAMES: usize = 16;

/// Sockudo's protocol, for one app.
#[derive(Debug, Clone)]
pub struct Sockudo {
    app_id: String,
    key: String,
    secret: String,
}

impl Sockudo {
    /// The app of the peer's `config.json`: id `bench-app`, key `bench-key`, secret `bench-secret`.
    pub fn bench_app() -> Self {
        Self {
            app_id: "bench-app".to_owned(),
            key: "bench-key".to_owned(),
            secret: "bench-secret".to_owned(),
        }
    }

    /// `path?auth_key=…&auth_timestamp=…&auth_version=1.0&body_md5=…&auth_signature=…`: the
    /// signature is hex HMAC-SHA256(secret, "POST\n<path>\n<query without auth_signature>"),
    /// the query's keys sorted (they are written in sorted order).
    pub fn signed_path(&self, path: &str, body: &[u8], timestamp: u64) -> String {
        let query = format!(
            "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={}",
            self.key,
            hex::encode(Md5::digest(body))
        );
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(format!("POST\n{path}\n{query}").as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        format!("{path}?{query}&auth_signature={signature}")
    }

    async fn subscribe_channel(&self, ws: &mut WsStream, user_id: &str) -> Result<()> {
        let channel = format!("{CHANNEL_PREFIX}{user_id}");
        wait_for_event(ws, "pusher:connection_established", None).await?;
        let request =
            format!("{{\"event\":\"pusher:subscribe\",\"data\":{{\"channel\":\"{channel}\"}}}}");
        ws.send(Message::text(request))
            .await
            .context("sending pusher:subscribe")?;
        wait_for_event(ws, "pusher_internal:subscription_succeeded", Some(&channel)).await
    }
}

/// Reads frames until one has `"event":"<event>"` (and, when given, `"channel":"<channel>"`);
/// fails on a `pusher:error`, on the connection ending, or after [`MAX_CONTROL_FRAMES`] others.
async fn wait_for_event(ws: &mut WsStream, event: &str, channel: Option<&str>) -> Result<()> {
    for _ in 0..MAX_CONTROL_FRAMES {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => bail!("closed while waiting for {event}: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error).context(format!("waiting for {event}")),
            None => bail!("connection ended while waiting for {event}"),
        };
        if string_after(&text, "\"event\":\"") == Some(event)
            && channel.is_none_or(|channel| string_after(&text, "\"channel\":\"") == Some(channel))
        {
            return Ok(());
        }
        if text.contains("\"event\":\"pusher:error\"") {
            bail!("{text}");
        }
    }
    bail!("no {event} among the first {MAX_CONTROL_FRAMES} frames")
}

impl Protocol for Sockudo {
    fn ws_path(&self, _user_id: &str) -> String {
        format!("/app/{}?protocol=7&client=loadgen&version=1.0", self.key)
    }

    fn subscribe<'a>(
        &'a self,
        ws: &'a mut WsStream,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.subscribe_channel(ws, user_id))
    }

    fn publish(&self, items: &[Item<'_>], body: &mut Vec<u8>) -> String {
        let write_event = |body: &mut Vec<u8>, item: &Item<'_>| {
            body.extend_from_slice(b"{\"name\":\"");
            body.extend_from_slice(EVENT_NAME.as_bytes());
            body.extend_from_slice(b"\",\"channel\":\"");
            body.extend_from_slice(CHANNEL_PREFIX.as_bytes());
            body.extend_from_slice(item.user_id.as_bytes());
            body.extend_from_slice(b"\",\"data\":\"");
            push_json_escaped(body, item.data);
            body.extend_from_slice(b"\"}");
        };
        let path = if let [item] = items {
            write_event(body, item);
            format!("/apps/{}/events", self.app_id)
        } else {
            body.extend_from_slice(b"{\"batch\":[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                write_event(body, item);
            }
            body.extend_from_slice(b"]}");
            format!("/apps/{}/batch_events", self.app_id)
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        self.signed_path(&path, body, now)
    }

    fn parse_reply(&self, reply: &[u8], count: usize) -> Option<Vec<Ack>> {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(reply)
            .ok()
            .map(|_| vec![Ack::Accepted; count])
    }

    fn classify<'a>(&self, text: &'a str) -> Incoming<'a> {
        if text.contains("\"event\":\"pusher:ping\"") {
            return Incoming::Reply("{\"event\":\"pusher:pong\",\"data\":{}}");
        }
        if text.contains("\"event\":\"pusher") {
            return Incoming::Ignore;
        }
        let key = format!("\"channel\":\"{CHANNEL_PREFIX}");
        let (Some(user_id), Some(data_at)) = (string_after(text, &key), text.find("\"data\":\""))
        else {
            return Incoming::Invalid;
        };
        scan_data(user_id, &text[data_at..], "\\\"")
    }

    fn connection_count(&self) -> Option<CountSource> {
        Some(CountSource {
            path: "/stats",
            pointer: "/totals/connections",
        })
    }

    /// Sockudo's listen backlog is 128.
    fn max_handshakes_in_flight(&self) -> usize {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Frame;

    #[test]
    fn signs_like_the_peer_readme() {
        let sockudo = Sockudo::bench_app();
        let body = br#"{"name":"message","channel":"user-u1","data":"{\"text\":\"hi\"}"}"#;
        assert_eq!(
            sockudo.signed_path("/apps/bench-app/events", body, 1_700_000_000),
            "/apps/bench-app/events?auth_key=bench-key&auth_timestamp=1700000000&auth_version=1.0\
             &body_md5=2ee3ce54c2c9bb4be989012610aa19a4\
             &auth_signature=7ba38f5a15af61d01057c019a1640978431f75e18a65c5428a0da859739781f8"
        );
        let batch = br#"{"batch":[{"name":"message","channel":"user-u1","data":"{\"n\":1}"},{"name":"message","channel":"user-u2","data":"{\"n\":2}"}]}"#;
        assert!(
            sockudo
                .signed_path("/apps/bench-app/batch_events", batch, 1_700_000_000)
                .ends_with(
                    "body_md5=991ea09e9486eefc6e07f57b50c3a727&auth_signature=\
                     24ff139609ed08870f4f5b8276a681112ea6d25fe114c2c82fc54a2b2bb7724a"
                )
        );
    }

    #[test]
    fn publishes_and_reads_events() {
        let sockudo = Sockudo::bench_app();
        let mut body = Vec::new();
        let items = [
            Item {
                user_id: "u1",
                data: r#"{"n":1}"#,
            },
            Item {
                user_id: "u2",
                data: r#"{"n":2}"#,
            },
        ];
        let path = sockudo.publish(&items, &mut body);
        assert!(path.starts_with("/apps/bench-app/batch_events?auth_key=bench-key&"));
        assert_eq!(
            body,
            br#"{"batch":[{"name":"message","channel":"user-u1","data":"{\"n\":1}"},{"name":"message","channel":"user-u2","data":"{\"n\":2}"}]}"#
        );
        let frame = r#"{"event":"message","channel":"user-bench-u3","data":"{\"seq\":7,\"sent_ns\":99,\"pad\":\"xx\"}"}"#;
        assert_eq!(
            sockudo.classify(frame),
            Incoming::Push(Frame {
                user_id: "bench-u3",
                seq: 7,
                sent_ns: 99
            })
        );
        assert_eq!(
            sockudo.classify(r#"{"event":"message","channel":"user-a","data":"{\"probe\":1}"}"#),
            Incoming::Probe
        );
        assert!(matches!(
            sockudo.classify(r#"{"event":"pusher:ping","data":{}}"#),
            Incoming::Reply(_)
        ));
        assert_eq!(
            sockudo.classify(r#"{"event":"pusher_internal:subscription_succeeded","channel":"user-a","data":"{}"}"#),
            Incoming::Ignore
        );
        assert_eq!(sockudo.parse_reply(b"{}", 2), Some(vec![Ack::Accepted; 2]));
        assert_eq!(sockudo.parse_reply(b"nope", 1), None);
    }
}
