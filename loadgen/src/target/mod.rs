//! The server under test and everything that differs between the servers loadgen can drive.
//!
//! The scenarios are target-agnostic: they talk to a [`Target`], whose [`Protocol`] says how to
//! open and subscribe a WebSocket for a user, how to encode a publish request (one message or a
//! batch), how to read the publisher's reply, and how to recognise a pushed frame. One file per
//! server implements it:
//!
//! | `--target` | module | server |
//! | --- | --- | --- |
//! | `ours` | [`ours`] | this project (`POST /sse/push`, `/sse/push/batch`, `ws /ws?user_id=`) |
//! | `fastapi` | [`fastapi`] | the FastAPI seed: the same API, but replies without delivery counts |
//! | `pushpin` | [`pushpin`] | Pushpin: GRIP publish of `ws-message` items, one channel per user |
//! | `sockudo` | [`sockudo`] | Sockudo (Pusher protocol 7): signed HTTP API, channel `user-<id>` |
//!
//! Every message's `data` object is written by the scenarios (`{"seq":…,"sent_ns":…,"pad":…}`, or
//! `{"probe":1}` for subscription probes); a protocol only wraps it for its server and finds it
//! again in the frames the server pushes.

pub mod fastapi;
pub mod ours;
pub mod pushpin;
pub mod sockudo;

use std::fmt;
use std::sync::Arc;

use anyhow::Result;
use futures_util::future::BoxFuture;

use crate::endpoint::Endpoint;
use crate::ws::WsStream;

/// Which server loadgen drives (`--target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// This project, websocket-sse-server.
    Ours,
    /// The FastAPI seed (`/work/shared/peers/fastapi_seed`), the same HTTP and WebSocket API.
    Fastapi,
    /// Pushpin with a WebSocket-over-HTTP backend, publishing through its HTTP control API.
    Pushpin,
    /// Sockudo, a Pusher-protocol server, publishing through the signed Pusher HTTP API.
    Sockudo,
}

impl TargetKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Fastapi => "fastapi",
            Self::Pushpin => "pushpin",
            Self::Sockudo => "sockudo",
        }
    }

    /// The base URL of the server's client (WebSocket) side when `--url` is not given.
    pub fn default_url(self) -> &'static str {
        match self {
            Self::Ours | Self::Fastapi => "http://127.0.0.1:8080",
            Self::Pushpin => "http://127.0.0.1:18000",
            Self::Sockudo => "http://127.0.0.1:18300",
        }
    }

    fn protocol(self) -> Arc<dyn Protocol> {
        match self {
            Self::Ours => Arc::new(ours::Ours),
            Self::Fastapi => Arc::new(fastapi::FastApi),
            Self::Pushpin => Arc::new(pushpin::Pushpin),
            Self::Sockudo => Arc::new(sockudo::Sockudo::bench_app()),
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One message of a publish request: the user it is addressed to and its `data` object
/// (compact JSON text).
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    /// The user id.
    pub user_id: &'a str,
    /// The message's `data` object as compact JSON.
    pub data: &'a str,
}

/// What a publish reply says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// The server delivered it to this many connections (0: the user was not connected).
    Delivered(u64),
    /// The server accepted it without saying to how many connections it went; loadgen expects
    /// it on every connection of the user (all of them confirmed their subscription first).
    Accepted,
}

/// What a text frame (a WebSocket text message, or an SSE event's data) is.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A pushed loadgen message.
    Push(Frame<'a>),
    /// A subscription probe (`{"probe":…}`), see [`crate::scenario::ProbeBoard`].
    Probe,
    /// A protocol message that needs this text frame as the answer (e.g. a Pusher ping).
    Reply(&'static str),
    /// A protocol message to ignore (e.g. an acknowledgement or a Pusher internal event).
    Ignore,
    /// Anything else: counted as an invalid frame.
    Invalid,
}

/// The fields loadgen needs from one pushed frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The user the frame says it is for.
    pub user_id: &'a str,
    /// `data.seq`: the global message sequence number.
    pub seq: u64,
    /// `data.sent_ns`: when the message was (scheduled to be) sent, ns since the shared start.
    pub sent_ns: u64,
}

/// Where a server reports its number of open WebSocket connections.
#[derive(Debug, Clone, Copy)]
pub struct CountSource {
    /// Path of the JSON document, fetched with `GET` from the API endpoint.
    pub path: &'static str,
    /// JSON pointer to the count inside it.
    pub pointer: &'static str,
}

/// Everything that differs between target servers.
pub trait Protocol: fmt::Debug + Send + Sync {
    /// Path and query of the WebSocket URL for `user_id` (ids used by loadgen need no escaping).
    fn ws_path(&self, user_id: &str) -> String;

    /// The step after the WebSocket handshake that makes the connection receive `user_id`'s
    /// messages (nothing for servers that subscribe by URL).
    fn subscribe<'a>(
        &'a self,
        _ws: &'a mut WsStream,
        _user_id: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Writes the body of one publish request carrying `items` (at least one) into `body` and
    /// returns the request's path and query.
    fn publish(&self, items: &[Item<'_>], body: &mut Vec<u8>) -> String;

    /// Reads a 2xx publish reply for `count` messages; `None` if it cannot be understood.
    fn parse_reply(&self, reply: &[u8], count: usize) -> Option<Vec<Ack>>;

    /// Classifies a text frame received on a WebSocket (or an SSE event's data).
    fn classify<'a>(&self, text: &'a str) -> Incoming<'a>;

    /// Where the server reports its open connections, if it does.
    fn connection_count(&self) -> Option<CountSource> {
        None
    }

    /// Most WebSocket handshakes to keep in flight at once.
    fn max_handshakes_in_flight(&self) -> usize {
        200
    }

    /// Most messages per publish request when loadgen sends probes.
    fn probe_batch(&self) -> usize {
        100
    }
}

/// The server under test: its kind, its client (WebSocket) and API (publish) endpoints.
#[derive(Debug, Clone)]
pub struct Target {
    /// Which server this is.
    pub kind: TargetKind,
    /// Where WebSocket clients connect.
    pub ws: Endpoint,
    /// Where publishers send their requests (the same as `ws` except for Pushpin).
    pub api: Endpoint,
    /// How to talk to it.
    pub protocol: Arc<dyn Protocol>,
}

impl Target {
    /// Resolves the endpoints: `url` (default: the kind's usual port) for WebSocket clients, and
    /// `publish_url` for publishers (default: `url`; for Pushpin, `url`'s port + 1).
    pub async fn resolve(
        kind: TargetKind,
        url: Option<&str>,
        publish_url: Option<&str>,
        tls_ca: Option<&std::path::Path>,
        http2: bool,
    ) -> Result<Self> {
        let ws = Endpoint::resolve(url.unwrap_or(kind.default_url()), tls_ca).await?;
        let mut api = match (publish_url, kind) {
            (Some(publish_url), _) => Endpoint::resolve(publish_url, tls_ca).await?,
            (None, TargetKind::Pushpin) => {
                Endpoint::resolve(&ws.with_port(ws.port().saturating_add(1)), tls_ca).await?
            }
            (None, _) => ws.clone(),
        };
        api.http2 = http2;
        Ok(Self {
            kind,
            ws,
            api,
            protocol: kind.protocol(),
        })
    }

    /// The full WebSocket URL for one user id.
    pub fn ws_url(&self, user_id: &str) -> String {
        format!(
            "{}://{}{}",
            self.ws.ws_scheme(),
            self.ws.authority,
            self.protocol.ws_path(user_id)
        )
    }
}

/// Appends `text` as the contents of a JSON string (quotes, backslashes and control characters
/// escaped; the surrounding quotes are not written).
pub fn push_json_escaped(out: &mut Vec<u8>, text: &str) {
    for &byte in text.as_bytes() {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => out.extend_from_slice(format!("\\u{byte:04x}").as_bytes()),
            _ => out.push(byte),
        }
    }
}

/// Finds loadgen's fields in a message's `data` (starting at `data`): `seq` and `sent_ns`, or a
/// probe. `quote` is `"` when `data` is a JSON object in the frame, `\"` when the server delivers
/// it as an escaped JSON string (Pusher).
pub fn scan_data<'a>(user_id: &'a str, data: &str, quote: &str) -> Incoming<'a> {
    let key = |name: &str| format!("{quote}{name}{quote}:");
    if let (Some(seq), Some(sent_ns)) = (
        number_after(data, &key("seq")),
        number_after(data, &key("sent_ns")),
    ) {
        return Incoming::Push(Frame {
            user_id,
            seq,
            sent_ns,
        });
    }
    if data.contains(&key("probe")) {
        return Incoming::Probe;
    }
    Incoming::Invalid
}

/// The string value right after the first `"key":"` in `text` (no escapes expected).
pub fn string_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// The unsigned integer right after the first `key` in `text`.
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_json_strings() {
        let mut out = Vec::new();
        push_json_escaped(&mut out, "{\"a\":\"b\\c\"}\n\u{1}");
        assert_eq!(
            String::from_utf8(out).ok().as_deref(),
            Some(r#"{\"a\":\"b\\c\"}\n\u0001"#)
        );
    }

    #[tokio::test]
    async fn pushpin_publishes_on_the_next_port() {
        let target = Target::resolve(TargetKind::Pushpin, None, None, None, false)
            .await
            .expect("loopback");
        assert_eq!(target.api.port(), 18001);
        assert_eq!(target.ws_url("u1"), "ws://127.0.0.1:18000/ws?user_id=u1");
        let target = Target::resolve(
            TargetKind::Ours,
            Some("http://127.0.0.2:9000"),
            None,
            None,
            false,
        )
        .await
        .expect("loopback");
        assert_eq!(target.api.port(), 9000);
        assert!(
            Target::resolve(
                TargetKind::Ours,
                None,
                Some("http://10.0.0.1:1"),
                None,
                false
            )
            .await
            .is_err()
        );
    }
}
