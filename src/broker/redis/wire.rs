//! How the cluster names things in Redis and what travels through it: key and channel names,
//! the envelopes and payload records stored in history and published to nodes, and the channel
//! messages.
//!
//! Every name starts with `REDIS_KEY_PREFIX` (`P` below). Per user `u`: `Pm:u` (stream meta: epoch,
//! last position, newest dropped id), `Ps:u` (history, a Redis stream whose entry ids are
//! `<position>-0`), `Pi:u` (event id → position, for resume and duplicates), `Pp:u` (presence:
//! `<node>/<connection>` → `<transport> <connected-at ms>`) and the channel `Pc:u`. Per node `n`:
//! `Pn:n` (its lease: connection counts, expiring) and `Pnu:n` (users it has connections of).
//! Cluster-wide: `Pnodes` and `Ponline` (users with a connection); the stored payloads `Pd:<id>`
//! (a hash: `v`, the record; `s`, set once a group message carried it), `Pdq` (their list, oldest
//! first: `<stored-at ms> <bytes> <id>`) and `Pdb` (the bytes they hold), for
//! `HISTORY_MAX_BYTES`; and the channel `Pg`, which carries the events of several users at once.
//!
//! An envelope is `<id length> <type length>\n<event_id><event_type><frame JSON>`: built once per
//! event by the publishing node, copied verbatim by the scripts, parsed by receiving nodes. A
//! payload record has the same shape with a shared payload in place of the frame: an event stored
//! by reference is that record plus the user's head (the frame up to `"data":`), kept in the
//! user's history entry. A group message on `Pg` is
//! `G <record id> <count> <before length> <after length>\n<before><after>`, then per user
//! `<epoch> <position> <user length> <named length>\n<user><named>`, then the record, unless an
//! earlier message of the same group carried it: a user's head is `<before><named><after>`, where
//! `named` is the user's id as the head has it (a JSON string).

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::hub::Sequenced;
use crate::protocol::{Event, Frame, Payload, StreamPosition, UserId};

/// Builds key and channel names under one prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
    channel_prefix: String,
    groups: String,
    sharded: bool,
}

impl Names {
    /// Names under `prefix`; `sharded` for a partition of a Redis Cluster, whose channels are
    /// shard channels (`SPUBLISH`).
    pub fn new(prefix: &str, sharded: bool) -> Self {
        Self {
            prefix: prefix.to_owned(),
            channel_prefix: format!("{prefix}c:"),
            groups: format!("{prefix}g"),
            sharded,
        }
    }

    /// The command that publishes on these channels.
    pub fn publish_command(&self) -> &'static str {
        if self.sharded { "SPUBLISH" } else { "PUBLISH" }
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

    /// The channel every node subscribes to: events of several users sharing one payload.
    pub fn groups_channel(&self) -> &str {
        &self.groups
    }

    /// The key of the stored payload record `id`.
    pub fn record(&self, id: &str) -> String {
        format!("{}d:{id}", self.prefix)
    }
}

/// The envelope of `event`, whole frame included: what a user's history keeps inline and a
/// user's channel carries.
pub fn envelope(event: &Event) -> Vec<u8> {
    let frame = &event.frame;
    write_envelope(event, &[frame.head(), frame.payload().as_bytes()])
}

/// The record of the payload `event` shares with other users' events: its envelope without the
/// head.
pub fn shared_record(event: &Event) -> Vec<u8> {
    write_envelope(event, &[event.frame.payload().as_bytes()])
}

fn write_envelope(event: &Event, frame: &[&Bytes]) -> Vec<u8> {
    let header = format!("{} {}\n", event.event_id.len(), event.event_type.len());
    let frame_len: usize = frame.iter().map(|part| part.len()).sum();
    let mut out = Vec::with_capacity(
        header.len() + event.event_id.len() + event.event_type.len() + frame_len,
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(event.event_id.as_bytes());
    out.extend_from_slice(event.event_type.as_bytes());
    for part in frame {
        out.extend_from_slice(part);
    }
    out
}

/// Why a message from Redis could not be read. Only another program writing under our prefix (or
/// a version mismatch between nodes) produces one.
#[derive(Debug, thiserror::Error)]
#[error("malformed cluster message: {0}")]
pub struct Malformed(&'static str);

/// What the events sharing a payload record have in common: id, type and payload (for an
/// envelope, the whole frame). Cloning shares it.
#[derive(Debug, Clone)]
pub struct Content {
    event_id: Arc<str>,
    event_type: Arc<str>,
    payload: Arc<Payload>,
}

impl Content {
    /// The event of the recipient whose head is `head` (empty for an envelope): its frame
    /// shares this payload.
    pub fn event(&self, head: Bytes) -> Result<Arc<Event>, Malformed> {
        let text = std::str::from_utf8(&head).map_err(|_| Malformed("head"))?;
        if text.contains(['\r', '\n']) {
            return Err(Malformed("head"));
        }
        Ok(Arc::new(Event {
            event_id: Arc::clone(&self.event_id),
            event_type: Arc::clone(&self.event_type),
            frame: Frame::split(head, Arc::clone(&self.payload)),
            accepted_at: Instant::now(),
        }))
    }
}

/// Reads a payload record or an envelope. The payload shares `record`'s bytes.
pub fn open_record(record: Bytes) -> Result<Content, Malformed> {
    let mut reader = Reader::new(record);
    let header = reader.line()?;
    let (id_len, type_len) = header.split_once(' ').ok_or(Malformed("header"))?;
    let id_len: usize = id_len.parse().map_err(|_| Malformed("id length"))?;
    let type_len: usize = type_len.parse().map_err(|_| Malformed("type length"))?;
    let event_id = Arc::from(reader.text(id_len)?);
    let event_type = Arc::from(reader.text(type_len)?);
    let payload = Payload::from_utf8(reader.rest()).map_err(|_| Malformed("frame"))?;
    Ok(Content {
        event_id,
        event_type,
        payload,
    })
}

/// Reads an envelope back into the event clients receive. The frame shares `envelope`'s bytes.
pub fn open_envelope(envelope: Bytes) -> Result<Arc<Event>, Malformed> {
    open_record(envelope)?.event(Bytes::new())
}

/// One recipient in a group message.
#[derive(Debug)]
pub struct Member {
    /// The user.
    pub user: UserId,
    /// The event's place in the user's stream.
    pub at: StreamPosition,
    /// The user's head of the frame.
    pub head: Bytes,
}

/// A message on the groups channel: one event for each of several users, sharing a payload.
#[derive(Debug)]
pub struct Group {
    /// The id of the payload's record.
    pub record: String,
    /// The recipients (users with a subscribed node when it was published).
    pub members: Vec<Member>,
    /// The shared part, when this message carries it: the first message of a group to be
    /// published does, later ones name it by `record` only.
    pub content: Option<Content>,
}

/// Reads a group message (see the module docs).
pub fn read_group(message: Bytes) -> Result<Group, Malformed> {
    let mut reader = Reader::new(message);
    let line = reader.line()?;
    let mut words = line.split(' ');
    let (Some("G"), Some(record), Some(count), Some(before), Some(after), None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return Err(Malformed("group header"));
    };
    let record = record.to_owned();
    let number = |word: &str| word.parse::<usize>().map_err(|_| Malformed("group header"));
    let (count, before, after) = (number(count)?, number(before)?, number(after)?);
    let (before, after) = (reader.take(before)?, reader.take(after)?);
    let mut members = Vec::with_capacity(count.min(reader.remaining() / 8));
    for _ in 0..count {
        let (epoch, position, user_len, named_len) = member_line(reader.line()?)?;
        let user = UserId::parse(reader.text(user_len)?).map_err(|_| Malformed("user"))?;
        let named = reader.take(named_len)?;
        let mut head = BytesMut::with_capacity(before.len() + named.len() + after.len());
        head.extend_from_slice(&before);
        head.extend_from_slice(&named);
        head.extend_from_slice(&after);
        members.push(Member {
            user,
            at: StreamPosition { epoch, position },
            head: head.freeze(),
        });
    }
    let rest = reader.rest();
    let content = if rest.is_empty() {
        None
    } else {
        Some(open_record(rest)?)
    };
    Ok(Group {
        record,
        members,
        content,
    })
}

/// A group member's line: epoch, position, user length, named length.
fn member_line(line: &str) -> Result<(Arc<str>, u64, usize, usize), Malformed> {
    let mut words = line.split(' ');
    let epoch = words.next().filter(|epoch| !epoch.is_empty());
    let epoch = Arc::from(epoch.ok_or(Malformed("epoch"))?);
    let position = words.next().and_then(|word| word.parse().ok());
    let position = position.ok_or(Malformed("position"))?;
    let mut number = |what| {
        words
            .next()
            .and_then(|word| word.parse().ok())
            .ok_or(Malformed(what))
    };
    let user_len = number("user length")?;
    let head_len = number("head length")?;
    if words.next().is_some() {
        return Err(Malformed("member"));
    }
    Ok((epoch, position, user_len, head_len))
}

/// Reads the parts of a message in order.
struct Reader {
    bytes: Bytes,
    at: usize,
}

impl Reader {
    fn new(bytes: Bytes) -> Self {
        Self { bytes, at: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// The text up to the next line break (which is skipped).
    fn line(&mut self) -> Result<&str, Malformed> {
        let rest = &self.bytes[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(Malformed("no line break"))?;
        let start = self.at;
        self.at += end + 1;
        std::str::from_utf8(&self.bytes[start..start + end]).map_err(|_| Malformed("not UTF-8"))
    }

    /// The next `len` bytes.
    fn take(&mut self, len: usize) -> Result<Bytes, Malformed> {
        if len > self.remaining() {
            return Err(Malformed("truncated"));
        }
        let part = self.bytes.slice(self.at..self.at + len);
        self.at += len;
        Ok(part)
    }

    /// The next `len` bytes, as text.
    fn text(&mut self, len: usize) -> Result<&str, Malformed> {
        if len > self.remaining() {
            return Err(Malformed("truncated"));
        }
        let start = self.at;
        self.at += len;
        std::str::from_utf8(&self.bytes[start..self.at]).map_err(|_| Malformed("not UTF-8"))
    }

    /// Everything not read yet.
    fn rest(self) -> Bytes {
        self.bytes.slice(self.at..)
    }
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
            let event = open_envelope(payload.slice(position_end + 1..))?;
            Ok(ChannelMessage::Event(Sequenced { at, event }))
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

/// Reads a departure record (`g:<user>`, see the LEAVE script): `<node>/<connection> <due ms>
/// <reason>` → the connection's cluster-wide id and the reason it ended.
pub fn read_departure(record: &str) -> Option<(&str, &str)> {
    let mut words = record.splitn(3, ' ');
    let (token, _due, reason) = (words.next()?, words.next()?, words.next()?);
    Some((token, reason))
}

/// The groups-channel message that carries acknowledgements to every node (the one that tracks
/// the events resolves them): `A <user>\n<event id>\n<event id>…`. Neither user ids nor event
/// ids hold control characters.
pub fn ack_notice(user: &UserId, ids: &[Arc<str>]) -> String {
    let mut notice = format!("A {user}");
    for id in ids {
        notice.push('\n');
        notice.push_str(id);
    }
    notice
}

/// Whether a groups-channel message is an acknowledgement notice.
pub fn is_ack_notice(payload: &[u8]) -> bool {
    payload.starts_with(b"A ")
}

/// Reads an [`ack_notice`].
pub fn read_ack_notice(payload: &[u8]) -> Result<(UserId, Vec<Arc<str>>), Malformed> {
    let text = std::str::from_utf8(payload).map_err(|_| Malformed("not UTF-8"))?;
    let mut lines = text.strip_prefix("A ").ok_or(Malformed("ack"))?.split('\n');
    let user = lines
        .next()
        .and_then(|user| UserId::parse(user).ok())
        .ok_or(Malformed("ack user"))?;
    let ids: Vec<Arc<str>> = lines.filter(|id| !id.is_empty()).map(Arc::from).collect();
    if ids.is_empty() {
        return Err(Malformed("ack ids"));
    }
    Ok((user, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_notices_round_trip() {
        let user = UserId::parse("user one").unwrap();
        let notice = ack_notice(&user, &["e1".into(), "e 2".into()]);
        assert!(is_ack_notice(notice.as_bytes()));
        let (read, ids) = read_ack_notice(notice.as_bytes()).unwrap();
        assert_eq!(read, user);
        assert_eq!(ids, [Arc::from("e1"), Arc::from("e 2")]);
        assert!(read_ack_notice(b"A u").is_err());
        assert!(!is_ack_notice(b"G r1 1 0 0\n"));
    }

    fn event(id: &str, event_type: &str, frame: Frame) -> Event {
        Event {
            event_id: Arc::from(id),
            event_type: Arc::from(event_type),
            frame,
            accepted_at: Instant::now(),
        }
    }

    fn whole(id: &str, event_type: &str, frame: &str) -> Event {
        event(id, event_type, Frame::from(frame.to_owned()))
    }

    #[test]
    fn envelopes_round_trip_whatever_the_text() {
        for (id, event_type, frame) in [
            ("01J", "message", r#"{"a":1}"#),
            ("id with spaces\nand newline", "type 2", "{\"x\":\"é \\n\"}"),
            ("", "", "{}"),
        ] {
            let bytes = Bytes::from(envelope(&whole(id, event_type, frame)));
            let published = open_envelope(bytes).unwrap();
            assert_eq!(&*published.event_id, id);
            assert_eq!(&*published.event_type, event_type);
            assert_eq!(published.frame.to_string(), frame);
        }
    }

    #[test]
    fn channel_messages_are_read_or_refused() {
        let mut payload = b"E 01HZZZZZZZZZZZZZZZZZZZZZZZ 42 ".to_vec();
        payload.extend(envelope(&whole("e1", "message", "{}")));
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
    fn group_messages_share_one_payload_among_their_members() {
        let payload = Payload::new("{\"big\":1}}".to_owned());
        let head = |user: &str| format!("{{\"event_id\":\"e7\",\"user_id\":\"{user}\",\"data\":");
        let shared = event(
            "e7",
            "news",
            Frame::split(head("ann"), Arc::clone(&payload)),
        );
        // As the publish script writes it: the heads' common parts, the members, then the record.
        let (before, after) = ("{\"event_id\":\"e7\",\"user_id\":", ",\"data\":");
        let mut message = format!("G r1 2 {} {}\n{before}{after}", before.len(), after.len());
        for (user, position) in [("ann", 3), ("bob b", 12)] {
            let named = format!("\"{user}\"");
            message += &format!(
                "EPOCH {position} {} {}\n{user}{named}",
                user.len(),
                named.len()
            );
        }
        let mut message = message.into_bytes();
        let record = shared_record(&shared);
        message.extend(&record);
        let group = read_group(Bytes::from(message.clone())).unwrap();
        assert_eq!(group.record, "r1");
        let content = group
            .content
            .expect("the record travels with the first message");
        let events: Vec<(String, Arc<Event>)> = group
            .members
            .into_iter()
            .map(|member| (member.at.to_string(), content.event(member.head).unwrap()))
            .collect();
        assert_eq!(events[0].0, "EPOCH:3");
        assert_eq!(events[1].0, "EPOCH:12");
        assert_eq!(
            events[1].1.frame.to_string(),
            "{\"event_id\":\"e7\",\"user_id\":\"bob b\",\"data\":{\"big\":1}}"
        );
        assert_eq!(events[0].1.frame.to_string(), shared.frame.to_string());
        assert!(Arc::ptr_eq(
            events[0].1.frame.payload(),
            events[1].1.frame.payload()
        ));
        assert_eq!(&*events[1].1.event_type, "news");

        // A later message of the group names the record only.
        message.truncate(message.len() - record.len());
        assert!(read_group(Bytes::from(message)).unwrap().content.is_none());
        for bad in [
            &b"G r1 1\n"[..],
            b"G r1 1 0 0\n",
            b"G r1 1 0 0\nE 1 4 0\nann",
            b"G r1 1 0 0\nE 1 3 1\nann",
            b"G r1 1 0 0\nE 1 9 1\nx\n",
            b"G r1 0 0 0\n1 0\n",
            b"G r1 0 5 0\nab",
        ] {
            assert!(read_group(Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn channels_name_their_user() {
        let names = Names::new("app:", false);
        let user = UserId::parse("user 42").unwrap();
        assert_eq!(names.channel(&user), "app:c:user 42");
        assert_eq!(names.user_of_channel("app:c:user 42"), Some(user));
        assert_eq!(names.user_of_channel("other:c:user 42"), None);
    }
}
