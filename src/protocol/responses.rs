//! The JSON bodies of the push API's answers.

use std::sync::Arc;

use serde::Serialize;

use super::{StreamPosition, UserId};

/// Outcome of a single push, for the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PushStatus {
    /// At least one connection received the event and none failed.
    Success,
    /// The user had no connection, or some connections could not take the event.
    Partial,
}

/// Response body of a single push.
#[derive(Debug, Serialize)]
pub struct PushResponse {
    /// `success` or `partial`.
    pub status: PushStatus,
    /// What happened, for a person.
    pub message: String,
    /// The event's id (the upstream's or the assigned one).
    pub event_id: Arc<str>,
    /// How many connections received it.
    pub delivered: usize,
    /// Whether it is kept in the user's history, for clients that resume.
    pub stored: bool,
    /// Whether it repeated an `event_id` already in the user's history, and so was not delivered
    /// again (the other fields then describe the original).
    pub duplicate: bool,
    /// Where it is stored: the stream's epoch and the event's position (absent when not stored).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub position: Option<StreamPosition>,
    /// With `wait_ms`: whether a connection acknowledged the event in that time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked: Option<bool>,
}

/// Response body of a batch push.
#[derive(Debug, Serialize)]
pub struct BatchResponse {
    /// One result per input item, in input order.
    pub results: Vec<BatchItemResult>,
}

/// The outcome of one batch item.
#[derive(Debug, Serialize)]
pub struct BatchItemResult {
    /// The item's user.
    pub user_id: UserId,
    /// Whether at least one connection received it and none failed.
    pub success: bool,
    /// The event's id (the upstream's or the assigned one).
    pub event_id: Arc<str>,
    /// How many connections received it.
    pub delivered: usize,
    /// Whether it is kept in the user's history.
    pub stored: bool,
    /// Whether it repeated an `event_id` already in the user's history.
    pub duplicate: bool,
    /// With `wait_ms`: whether a connection of the user acknowledged the event in that time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked: Option<bool>,
}

/// Response body of a push to several users (`user_ids`).
#[derive(Debug, Serialize)]
pub struct MultiPushResponse {
    /// `success` when every user's push succeeded, `partial` otherwise.
    pub status: PushStatus,
    /// What happened, for a person.
    pub message: String,
    /// The event's id, shared by every user's copy.
    pub event_id: Arc<str>,
    /// Connections that received it, all users together.
    pub delivered: usize,
    /// With `wait_ms`: whether every user acknowledged the event in that time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked: Option<bool>,
    /// One result per user, in the order given (duplicates removed).
    pub results: Vec<BatchItemResult>,
}

/// Response body of a broadcast.
#[derive(Debug, Serialize)]
pub struct BroadcastResponse {
    /// `success` when at least one connection received it, `partial` otherwise.
    pub status: PushStatus,
    /// What happened, for a person.
    pub message: String,
    /// The event's id, shared by every user's copy.
    pub event_id: Arc<str>,
    /// Users it was sent to (those connected when it was accepted).
    pub users: usize,
    /// Connections that received it.
    pub delivered: usize,
}
