//! How clients are connected, why their connections end, and what handing an event to them
//! achieved: the vocabulary every layer shares (the hub and the sessions decide, metrics count,
//! the transports turn reasons into close codes).

use serde::Serialize;

/// How a client is connected. Serialized as its label (`websocket`, `sse`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    strum::EnumCount,
    strum::VariantArray,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Transport {
    /// A WebSocket.
    WebSocket,
    /// A Server-Sent Events stream.
    Sse,
}

/// Why a connection ended. Each maps to a close code in the WebSocket transport, a close event in
/// the SSE transport, and a metrics label (its snake_case name).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumCount, strum::VariantArray, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum DisconnectReason {
    /// The client closed the connection or went away.
    ClientClosed,
    /// The client did not answer a ping in time.
    PingTimeout,
    /// The client's outbound queue filled up, or a write to it took too long.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
    /// The client sent a frame over the size limit.
    MessageTooBig,
    /// The client sent a text frame that is not valid UTF-8.
    InvalidPayload,
    /// The client broke the WebSocket protocol.
    ProtocolError,
    /// The client sent a binary frame; this server only speaks text.
    UnsupportedData,
    /// A newer connection of the same user took this one's place (`replace-oldest` policy).
    Replaced,
    /// The network failed under the connection (reset, broken pipe), or the client vanished
    /// without a close frame (killed, network cut).
    NetworkError,
    /// The client's token expired (its `exp`): it may reconnect with a new one and resume.
    TokenExpired,
    /// The client sent frames faster than `CLIENT_MESSAGE_RATE`.
    MessageRate,
    /// An operator disconnected the user (`DELETE /admin/users/{user_id}/connections`).
    Disconnected,
}

/// Which bound made a connection a slow consumer (a metrics label).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumCount, strum::VariantArray, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum SlowConsumerCause {
    /// Its queue held `WS_SEND_QUEUE` items.
    QueueEvents,
    /// Its queue would have held more than `WS_SEND_QUEUE_BYTES`.
    QueueBytes,
    /// The node's queues held more than `SEND_QUEUES_MAX_BYTES`, and it held among the most.
    NodeBudget,
    /// A write to it did not finish within `WS_WRITE_TIMEOUT`.
    WriteTimeout,
}

/// What handing one event to a user's connections achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Connections whose queue took the event.
    pub delivered: usize,
    /// Connections that could not take it (queue full: now closing as slow consumers; or closed).
    pub failed: usize,
}

impl Delivery {
    /// At least one connection took the event and none failed: what a push reports as `success`.
    pub fn is_success(self) -> bool {
        self.delivered > 0 && self.failed == 0
    }

    /// No connection was there to take it: the user is offline (on this node, or in the cluster).
    pub fn is_offline(self) -> bool {
        self.delivered + self.failed == 0
    }
}
