//! The publishing endpoints: one event to one user or several (`POST {SSE_PATH}`), a batch
//! (`POST {SSE_BATCH_PATH}`) and a broadcast to every connected user (`POST /sse/broadcast`).
//! Bodies are parsed into [`crate::protocol`] values, encoded once, and handed to the broker;
//! what the publications achieved is counted here, in one place, whatever the broker.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;

use super::{JsonBody, respond};
use crate::error::ApiError;
use crate::hub::Outcome;
use crate::protocol::{
    BatchItemResult, BatchResponse, BroadcastResponse, Delivery, MultiPushResponse, Publication,
    Push, PushFields, PushResponse, PushStatus, UserId, parse_batch, parse_broadcast,
    parse_push_targets, unix_seconds_now,
};
use crate::state::SharedState;

/// `POST {SSE_PATH}`: one event to every connection of one user (`user_id`), or of several
/// (`user_ids`).
pub async fn push(State(state): State<SharedState>, body: Result<JsonBody, ApiError>) -> Response {
    let JsonBody(bytes) = match body {
        Ok(body) => body,
        Err(error) => return respond::<()>(&state, Err(error)),
    };
    match parse_push_targets(&bytes, state.settings.max_batch_size) {
        Ok(Push::One(message)) => {
            let result = async {
                let event = message.encode(unix_seconds_now())?;
                let outcomes = publish(&state, std::slice::from_ref(&event)).await?;
                let outcome = outcomes.into_iter().next().unwrap_or_default();
                Ok::<_, ApiError>(push_response(event, outcome))
            };
            respond(&state, result.await)
        }
        Ok(Push::Many(fields, users)) => {
            let result = async {
                let (event_id, results) = publish_shared(&state, &fields, users).await?;
                let delivered = results.iter().map(|result| result.delivered).sum();
                let succeeded = results.iter().filter(|result| result.success).count();
                let status = if succeeded == results.len() {
                    PushStatus::Success
                } else {
                    PushStatus::Partial
                };
                let message = format!(
                    "delivered to {delivered} connection(s) of {} user(s); {succeeded} of the \
                     users' pushes succeeded",
                    results.len()
                );
                Ok::<_, ApiError>(MultiPushResponse {
                    status,
                    message,
                    event_id,
                    delivered,
                    results,
                })
            };
            respond(&state, result.await)
        }
        Err(issues) => respond::<()>(&state, Err(ApiError::Validation(issues))),
    }
}

/// `POST /sse/broadcast`: one event to every user connected at this moment (cluster-wide in a
/// cluster), stored in each one's history like a push.
pub async fn broadcast(
    State(state): State<SharedState>,
    body: Result<JsonBody, ApiError>,
) -> Response {
    let result = async {
        let JsonBody(bytes) = body?;
        let fields = parse_broadcast(&bytes).map_err(ApiError::Validation)?;
        let users = state.broker.online_users().await?;
        let (event_id, results) = publish_shared(&state, &fields, users).await?;
        let delivered: usize = results.iter().map(|result| result.delivered).sum();
        let (status, message) = if delivered > 0 {
            (
                PushStatus::Success,
                format!(
                    "delivered to {delivered} connection(s) of {} user(s)",
                    results.len()
                ),
            )
        } else {
            (PushStatus::Partial, "no user connected".to_owned())
        };
        Ok::<_, ApiError>(BroadcastResponse {
            status,
            message,
            event_id,
            users: results.len(),
            delivered,
        })
    };
    respond(&state, result.await)
}

/// Publishes one event to several users: each user's frame names its user, all share one
/// `event_id` and one copy of the `data` (see [`PushFields::encode_for`]).
async fn publish_shared(
    state: &SharedState,
    fields: &PushFields<'_>,
    users: Vec<UserId>,
) -> Result<(Arc<str>, Vec<BatchItemResult>), ApiError> {
    let (event_id, events) = fields.encode_for(users, unix_seconds_now())?;
    let outcomes = if events.is_empty() {
        Vec::new()
    } else {
        publish(state, &events).await?
    };
    Ok((event_id, batch_results(events, outcomes)))
}

/// One batch-shaped result per event.
fn batch_results(events: Vec<Publication>, outcomes: Vec<Outcome>) -> Vec<BatchItemResult> {
    events
        .into_iter()
        .zip(outcomes)
        .map(|(event, outcome)| BatchItemResult {
            event_id: Arc::clone(event.event_id()),
            user_id: event.user_id,
            success: outcome.delivery.is_success(),
            delivered: outcome.delivery.delivered,
            stored: outcome.stored.is_some(),
            duplicate: outcome.duplicate,
        })
        .collect()
}

/// Hands `publications` to the broker and counts what they achieved: new events, duplicates
/// of events already accepted, and new events that found their user offline. The one place
/// where these are counted, whatever the broker (the hub counts its handoffs to queues).
async fn publish(
    state: &SharedState,
    publications: &[Publication],
) -> Result<Vec<Outcome>, ApiError> {
    let outcomes = state.broker.publish(publications).await?;
    let duplicates = outcomes.iter().filter(|outcome| outcome.duplicate).count();
    let offline = outcomes
        .iter()
        .filter(|outcome| !outcome.duplicate && outcome.delivery.is_offline())
        .count();
    let new = outcomes.len() - duplicates;
    state.metrics.pushes_published(new, duplicates, offline);
    Ok(outcomes)
}

fn push_response(event: Publication, outcome: Outcome) -> PushResponse {
    let Delivery { delivered, failed } = outcome.delivery;
    let stored = outcome.stored.is_some();
    let (status, mut message) = match (delivered, failed) {
        (0, 0) if stored => (
            PushStatus::Partial,
            "user not connected; stored in history, delivered when a client of the user resumes"
                .to_owned(),
        ),
        (0, 0) => (PushStatus::Partial, "user not connected".to_owned()),
        (n, 0) => (
            PushStatus::Success,
            format!("delivered to {n} connection(s)"),
        ),
        (n, f) => (
            PushStatus::Partial,
            format!(
                "delivered to {n} of {} connection(s); {f} could not take it (slow or closing)",
                n + f
            ),
        ),
    };
    if outcome.duplicate {
        message = format!(
            "duplicate: an event with this event_id was already accepted for this user and is \
             not delivered again; its outcome: {message}"
        );
    }
    PushResponse {
        status,
        message,
        event_id: Arc::clone(event.event_id()),
        delivered,
        stored,
        duplicate: outcome.duplicate,
        position: outcome.stored,
    }
}

/// `POST {SSE_BATCH_PATH}`: many events, validated as a whole, delivered in order.
pub async fn push_batch(
    State(state): State<SharedState>,
    body: Result<JsonBody, ApiError>,
) -> Response {
    let result = async {
        let JsonBody(bytes) = body?;
        let messages =
            parse_batch(&bytes, state.settings.max_batch_size).map_err(ApiError::Validation)?;
        let accepted_at = unix_seconds_now();
        let events = messages
            .iter()
            .map(|message| message.encode(accepted_at))
            .collect::<Result<Vec<Publication>, _>>()?;
        let outcomes = publish(&state, &events).await?;
        state.metrics.observe_batch(events.len());
        let results = batch_results(events, outcomes);
        Ok::<_, ApiError>(BatchResponse { results })
    }
    .await;
    respond(&state, result)
}
