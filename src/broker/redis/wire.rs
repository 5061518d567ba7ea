//! How the cluster names things in Redis and what travels through it: key and channel names,
//! the event envelope stored in history and published to nodes, and the channel messages.
//!
//! Every name starts with `REDIS_KEY_PREFIX` (`P` below). Per user `u`: `Pm:u` (stream meta: epoch,
//! last position, newest dropped id), `Ps:u` (history, a Redis stream whose entry ids are
//! `<position>-0`), `Pi:u` (event id → position, for resume and duplicates), `Pp:u` (presence:
//! `<node>/<connection>` → `<transport> <connected-at ms>`) and the channel `Pc:u`. Per node `n`:
//! `Pn:n` (its lease: connection counts, expiring) and `Pnu:n` (users it has connections of).
//! Cluster-wide: `Pnodes` and `Ponline` (users with a connection).
//!
//! An envelope is `<id length> <type length>\n<event_id><event_type><frame JSON>`: built once per
//! event by the publishing node, copied verbatim by the scripts, parsed by receiving nodes.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::hub::Sequenced;
use crate::protocol::{Event, Frame, Publication, StreamPosition, UserId};

/// Builds key and channel names under one prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
    channel_prefix: String,
}

impl Names {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            channel_prefix: format!("{prefix}c:"),
        }
    }

    /// The prefix itself (the scripts build the other names from it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The channel that carries `user`'s events and kicks.
    pub fn channel(&self, user: &UserId) -> String {
        format!("{}{}", self.channel_prefix, user.as_str())
    }

    /// The user a channel belongs to, if it is one of this cluster's.
    pub fn user_of_channel(&self, channel: &str) -> Option<UserId> {
        UserId::parse(channel.strip_prefix(&self.channel_prefix)?).ok()
    }
}

/// The envelope of `event` (see the module docs).
pub fn envelope(event: &Publication) -> Vec<u8> {
    let published = &event.event;
    let header = format!(
        "{} {}\n",
        published.event_id.len(),
        published.event_type.len()
    );
    let frame = &published.frame;
    let mut out = Vec::with_capacity(
        header.len() + published.event_id.len() + published.event_type.len() + frame.len(),
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(published.event_id.as_bytes());
    out.extend_from_slice(published.event_type.as_bytes());
    frame.write_to(&mut out);
    out
}

/// Why a message from Redis could not be read. Only another program writing under our prefix (or
/// a version mismatch between nodes) produces one.
#[derive(Debug, thiserror::Error)]
#[error("malformed cluster message: {0}")]
pub struct Malformed(&'static str);

/// Reads an envelope back into the event clients receive. The frame shares `envelope`'s bytes.
pub fn open_envelope(envelope: Bytes) -> Result<Event, Malformed> {
    let newline = envelope
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(Malformed("no header"))?;
    let header = std::str::from_utf8(&envelope[..newline]).map_err(|_| Malformed("header"))?;
    let (id_len, type_len) = header.split_once(' ').ok_or(Malformed("header"))?;
    let id_len: usize = id_len.parse().map_err(|_| Malformed("id length"))?;
    let type_len: usize = type_len.parse().map_err(|_| Malformed("type length"))?;
    let id_start = newline + 1;
    let type_start = id_start.checked_add(id_len).ok_or(Malformed("id length"))?;
    let frame_start = type_start
        .checked_add(type_len)
        .ok_or(Malformed("type length"))?;
    if frame_start > envelope.len() {
        return Err(Malformed("truncated"));
    }
    let text = |range: std::ops::Range<usize>| {
        std::str::from_utf8(&envelope[range]).map_err(|_| Malformed("not UTF-8"))
    };
    let event_id = Arc::from(text(id_start..type_start)?);
    let event_type = Arc::from(text(type_start..frame_start)?);
    let frame = Frame::from_utf8(envelope.slice(frame_start..)).map_err(|_| Malformed("frame"))?;
    Ok(Event {
        event_id,
        event_type,
        frame,
        accepted_at: Instant::now(),
    })
}

/// A message on a user's channel.
#[derive(Debug)]
pub enum ChannelMessage {
    /// An event of the user's stream.
    Event(Sequenced),
    /// A connection to close (another took its place): `<node>/<connection>`.
    Kick {
        /// The node that holds it.
        node: String,
        /// Its id on that node.
        connection: u64,
    },
    /// Every connection of the user is to close (an operator disconnected the user).
    DisconnectAll,
}

/// Reads a channel message: `E <epoch> <position> <envelope>`, `K <node>/<connection>` or `X`.
pub fn read_message(payload: Bytes) -> Result<ChannelMessage, Malformed> {
    let word_end = |from: usize| {
        payload
            .get(from..)?
            .iter()
            .position(|&b| b == b' ')
            .map(|offset| from + offset)
    };
    match payload.first() {
        Some(b'E') => {
            let epoch_end = word_end(2).ok_or(Malformed("epoch"))?;
            let position_end = word_end(epoch_end + 1).ok_or(Malformed("position"))?;
            let epoch =
                std::str::from_utf8(&payload[2..epoch_end]).map_err(|_| Malformed("epoch"))?;
            let position = std::str::from_utf8(&payload[epoch_end + 1..position_end])
                .ok()
                .and_then(|p| p.parse().ok())
                .ok_or(Malformed("position"))?;
            let at = StreamPosition {
                epoch: Arc::from(epoch),
                position,
            };
            let published = open_envelope(payload.slice(position_end + 1..))?;
            Ok(ChannelMessage::Event(Sequenced {
                at,
                event: Arc::new(published),
            }))
        }
        Some(b'K') => {
            let target = std::str::from_utf8(payload.get(2..).unwrap_or_default())
                .map_err(|_| Malformed("kick"))?;
            let (node, connection) = target.rsplit_once('/').ok_or(Malformed("kick"))?;
            let connection = connection.parse().map_err(|_| Malformed("kick"))?;
            Ok(ChannelMessage::Kick {
                node: node.to_owned(),
                connection,
            })
        }
        Some(b'X') if payload.len() == 1 => Ok(ChannelMessage::DisconnectAll),
        _ => Err(Malformed("unknown kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::IdOrigin;

    fn event(id: &str, event_type: &str, frame: &str) -> Publication {
        Publication {
            user_id: UserId::parse("u").unwrap(),
            id_origin: IdOrigin::Upstream,
            event: Arc::new(Event {
                event_id: Arc::from(id),
                event_type: Arc::from(event_type),
                frame: Frame::from(frame.to_owned()),
                accepted_at: Instant::now(),
            }),
        }
    }

    #[test]
    fn envelopes_round_trip_whatever_the_text() {
        for (id, event_type, frame) in [
            ("01J", "message", r#"{"a":1}"#),
            ("id with spaces\nand newline", "type 2", "{\"x\":\"é \\n\"}"),
            ("", "", "{}"),
        ] {
            let bytes = Bytes::from(envelope(&event(id, event_type, frame)));
            let published = open_envelope(bytes).unwrap();
            assert_eq!(&*published.event_id, id);
            assert_eq!(&*published.event_type, event_type);
            assert_eq!(published.frame.to_string(), frame);
        }
    }

    #[test]
    fn channel_messages_are_read_or_refused() {
        let mut payload = b"E 01HZZZZZZZZZZZZZZZZZZZZZZZ 42 ".to_vec();
        payload.extend(envelope(&event("e1", "message", "{}")));
        let ChannelMessage::Event(event) = read_message(Bytes::from(payload)).unwrap() else {
            panic!("expected an event");
        };
        assert_eq!(event.at.to_string(), "01HZZZZZZZZZZZZZZZZZZZZZZZ:42");
        assert_eq!(&*event.event.event_id, "e1");

        let ChannelMessage::Kick { node, connection } =
            read_message(Bytes::from_static(b"K node-a/7")).unwrap()
        else {
            panic!("expected a kick");
        };
        assert_eq!((node.as_str(), connection), ("node-a", 7));
        assert!(matches!(
            read_message(Bytes::from_static(b"X")),
            Ok(ChannelMessage::DisconnectAll)
        ));

        for bad in [
            &b""[..],
            b"Y",
            b"XX",
            b"E",
            b"E epoch",
            b"E e x {}",
            b"E e 1 9 9\nab",
            b"K x",
        ] {
            assert!(
                read_message(Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn channels_name_their_user() {
        let names = Names::new("app:");
        let user = UserId::parse("user 42").unwrap();
        assert_eq!(names.channel(&user), "app:c:user 42");
        assert_eq!(names.user_of_channel("app:c:user 42"), Some(user));
        assert_eq!(names.user_of_channel("other:c:user 42"), None);
    }
}
