//! A user's stream as clients see it: positions and epochs, the resume tokens that name them,
//! and why a client could not resume where it asked to.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// A place in a user's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamPosition {
    /// The stream's incarnation.
    pub epoch: Arc<str>,
    /// The last position assigned in it (0 before the first event).
    pub position: u64,
}

impl fmt::Display for StreamPosition {
    /// The resume token: `<epoch>:<position>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.position)
    }
}

/// Reads a position token `<epoch>:<position>` into its epoch and position. Epochs are ULIDs, so
/// an upstream id that merely contains a colon (`order:7`) is not taken for a token.
pub fn parse_token(token: &str) -> Option<(&str, u64)> {
    let (epoch, position) = token.rsplit_once(':')?;
    if epoch.len() != ulid::ULID_LEN {
        return None;
    }
    Some((epoch, position.parse().ok()?))
}

/// Why a client cannot resume where it asked to. Its label (snake_case) is the resync event's
/// `reason` and a metrics label.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::EnumCount,
    strum::VariantArray,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[strum(serialize_all = "snake_case")]
pub enum ResyncReason {
    /// No event with that id is in the user's history (never was, or already expired).
    UnknownEventId,
    /// The position is older than the oldest event still kept.
    Expired,
    /// The position belongs to an earlier incarnation of the stream (restart, eviction).
    EpochChanged,
    /// This server keeps no history.
    HistoryDisabled,
}

/// How a client's resume went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// This many missed events were replayed (0: the client had missed nothing).
    Replayed(usize),
    /// The client's point was unknown or lost; it was sent a resync notice.
    Resync(ResyncReason),
}

/// Why stored events were dropped before anyone asked for them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumCount, strum::VariantArray, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum EvictionCause {
    /// The user's stream was full (`HISTORY_SIZE`): its oldest event made room.
    Size,
    /// The event was older than `HISTORY_TTL`.
    Age,
    /// The node had `HISTORY_MAX_USERS` streams: the least recently pushed user's went.
    Users,
    /// The node held `HISTORY_MAX_BYTES`: the least recently pushed users lost their oldest events.
    Bytes,
}
