//! The publishing endpoints: one event to one user or several (`POST {SSE_PATH}`), a batch
//! (`POST {SSE_BATCH_PATH}`) and a broadcast to every connected user (`POST /sse/broadcast`).
//! Bodies are parsed into [`crate::protocol`] values, encoded once, and handed to the broker;
//! what the publications achieved is counted here, in one place, whatever the broker. Here too
//! events asking for acknowledgement are tracked (before they are published, see
//! [`crate::acks`]), a push with `wait_ms` waits for its acknowledgements, and an event that
//! reached no connection is reported to the `message.undelivered` webhook.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use futures_util::future::join_all;
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout_at};

use super::{JsonBody, respond};
use crate::acks::{Published, Ticket};
use crate::broker::BrokerError;
use crate::error::ApiError;
use crate::hub::Outcome;
use crate::protocol::{
    AckRequest, BatchItemResult, BatchResponse, BroadcastResponse, Delivery, Issue, Loc,
    MultiPushResponse, Publication, Push, PushFields, PushResponse, PushStatus, UserId,
    parse_batch, parse_broadcast, parse_push_targets, unix_seconds_now,
};
use crate::state::SharedState;
use crate::webhook::UndeliveredReason;

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
                let wait = wait_for(&state, message.ack)?;
                let event = message.encode(unix_seconds_now())?;
                let (outcomes, waiters) =
                    publish(&state, std::slice::from_ref(&event), wait.is_some()).await?;
                let outcome = outcomes.into_iter().next().unwrap_or_default();
                let acked = acked(wait, waiters).await;
                let mut response = push_response(event, outcome);
                response.acked = acked.map(|acked| acked.iter().all(|acked| *acked));
                Ok::<_, ApiError>(response)
            };
            respond(&state, result.await)
        }
        Ok(Push::Many(fields, users)) => {
            let result = async {
                let wait = wait_for(&state, fields.ack())?;
                let (event_id, mut results, waiters) =
                    publish_shared(&state, &fields, users, wait.is_some()).await?;
                let acked = acked(wait, waiters).await;
                if let Some(acked) = &acked {
                    for (result, acked) in results.iter_mut().zip(acked) {
                        result.acked = Some(*acked);
                    }
                }
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
                    acked: acked.map(|acked| acked.iter().all(|acked| *acked)),
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
        let (event_id, results, _) = publish_shared(&state, &fields, users, false).await?;
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
/// `event_id` and one copy of the `data` (see [`PushFields::encode_for`]). With `wait`, also
/// returns what completes at each user's acknowledgement.
async fn publish_shared(
    state: &SharedState,
    fields: &PushFields<'_>,
    users: Vec<UserId>,
    wait: bool,
) -> Result<(Arc<str>, Vec<BatchItemResult>, Waiters), ApiError> {
    let (event_id, events) = fields.encode_for(users, unix_seconds_now())?;
    let (outcomes, waiters) = if events.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        publish(state, &events, wait).await?
    };
    Ok((event_id, batch_results(events, outcomes), waiters))
}

/// What completes when each event waited for is acknowledged (`None`: not waited for).
type Waiters = Vec<Option<oneshot::Receiver<()>>>;

/// How long a push may wait for its acknowledgement: `None` without `wait_ms`; a 422 naming
/// `ACK_WAIT_MAX_MS` beyond it.
fn wait_for(state: &SharedState, ack: AckRequest) -> Result<Option<Duration>, ApiError> {
    let Some(ms) = ack.wait_ms else {
        return Ok(None);
    };
    let max = state.acks.limits().wait_max;
    let wait = Duration::from_millis(ms);
    if wait > max {
        return Err(ApiError::Validation(vec![Issue {
            loc: vec![Loc::Key("body"), Loc::Key("wait_ms")],
            msg: format!(
                "Input should be less than or equal to {} (ACK_WAIT_MAX_MS)",
                max.as_millis()
            )
            .into(),
            kind: "less_than_equal",
        }]));
    }
    Ok(Some(wait))
}

/// Waits up to `wait` for every waiter; says which were acknowledged (`None` without `wait`).
async fn acked(wait: Option<Duration>, waiters: Waiters) -> Option<Vec<bool>> {
    let deadline = Instant::now() + wait?;
    let answers = waiters.into_iter().map(|waiter| async move {
        match waiter {
            Some(waiter) => matches!(timeout_at(deadline, waiter).await, Ok(Ok(()))),
            None => false,
        }
    });
    Some(join_all(answers).await)
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
            acked: None,
        })
        .collect()
}

/// Hands `publications` to the broker and counts what they achieved: new events, duplicates
/// of events already accepted, and new events that found their user offline. The one place
/// where these are counted, whatever the broker (the hub counts its handoffs to queues).
///
/// Events asking for acknowledgement are tracked before they are published (with `wait`, each
/// gets a waiter) and settled after; a new event that asks for none and reached no connection
/// is reported undelivered at once.
async fn publish(
    state: &SharedState,
    publications: &[Publication],
    wait: bool,
) -> Result<(Vec<Outcome>, Waiters), ApiError> {
    // Most pushes ask for no acknowledgement: then nothing is tracked, nor allocated for it.
    let tracking = publications.iter().any(|publication| publication.ack);
    let mut tickets: Vec<Option<Ticket>> = Vec::new();
    let mut waiters: Waiters = Vec::new();
    for publication in publications.iter().filter(|_| tracking) {
        let tracked = publication
            .ack
            .then(|| state.acks.expect(publication, wait))
            .flatten();
        let retried = publication.ack && wait && tracked.is_none();
        let (ticket, mut waiter) =
            tracked.map_or((None, None), |(ticket, waiter)| (Some(ticket), waiter));
        if retried {
            // A retry of a push whose original still waits: wait for the original's ack.
            waiter = state
                .acks
                .waiter(&publication.user_id, publication.event_id());
        }
        tickets.push(ticket);
        if wait {
            waiters.push(waiter);
        }
    }
    let outcomes = match state.broker.publish(publications).await {
        Ok(outcomes) => outcomes,
        Err(error) => {
            let published = match error {
                BrokerError::OutcomeUnknown(_) => Published::Unknown,
                BrokerError::Unavailable(_) => Published::Failed,
            };
            for ticket in tickets.into_iter().flatten() {
                state.acks.settle(ticket, published);
            }
            return Err(error.into());
        }
    };
    let duplicates = outcomes.iter().filter(|outcome| outcome.duplicate).count();
    let offline = outcomes
        .iter()
        .filter(|outcome| !outcome.duplicate && outcome.delivery.is_offline())
        .count();
    let new = outcomes.len() - duplicates;
    state.metrics.pushes_published(new, duplicates, offline);
    let mut tickets = tickets.into_iter();
    for (publication, outcome) in publications.iter().zip(&outcomes) {
        if let Some(ticket) = tickets.next().flatten() {
            let published = if outcome.duplicate {
                Published::Duplicate
            } else {
                Published::Delivered(outcome.delivery)
            };
            state.acks.settle(ticket, published);
        } else if !publication.ack && !outcome.duplicate && outcome.delivery.delivered == 0 {
            let reason = if outcome.delivery.is_offline() {
                UndeliveredReason::Offline
            } else {
                UndeliveredReason::SlowConsumer
            };
            state
                .webhooks
                .undelivered(&publication.user_id, &publication.event, reason);
        }
    }
    Ok((outcomes, waiters))
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
        acked: None,
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
        let (outcomes, _) = publish(&state, &events, false).await?;
        state.metrics.observe_batch(events.len());
        let results = batch_results(events, outcomes);
        Ok::<_, ApiError>(BatchResponse { results })
    }
    .await;
    respond(&state, result)
}
