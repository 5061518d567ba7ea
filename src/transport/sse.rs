//! The Server-Sent Events transport: `GET {SSE_STREAM_PATH}?user_id=<id>`, answered with a
//! `text/event-stream` that stays open.
//!
//! Each event is written as `id: <event_id>`, `event: <event_type>` and `data: <the WebSocket
//! frame's JSON>`. The stream opens with a `retry:` hint and, on a fresh connection, an `id:` of
//! the user's current stream position (an empty block: no event fires, but the browser remembers
//! it), so that an EventSource that drops before its first event still resumes without a gap.
//! Browsers resume with the `Last-Event-ID` header; the `last_event_id` query parameter does the
//! same for a first connection. An idle stream gets a keepalive comment every `SSE_KEEPALIVE`.
//!
//! The response body *is* the session: hyper pulls the next chunk when it can write, and the
//! session waits for events, keepalive time, a close request or shutdown. A client that stops
//! reading fills its queue and is ended as a slow consumer; a stalled write is cut by the server's
//! connection write timeout. Refusals the client should retry (shutting down, server or user
//! full, over the connect rate) are answered `200` with a `retry:` hint and a comment, then end:
//! per the WHATWG spec an EventSource that gets a 4xx/5xx never reconnects. Final refusals (a bad
//! request: 400; a refused token: 401; a foreign origin or user: 403) should stop it, and do.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::body::{Body, Bytes};
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, BytesMut};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep, sleep};
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::{WRITE_BATCH, authorize, top_up};
use crate::api::ApiError;
use crate::auth::remaining;
use crate::broker::AttachError;
use crate::hub::{DisconnectReason, Outbox, Outgoing, Registration, Transport};
use crate::metrics::Refusal;
use crate::state::SharedState;

/// `GET {SSE_STREAM_PATH}`: opens an event stream for one user.
pub async fn stream(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let admission = match authorize(&state, query.as_deref(), &headers, peer) {
        Ok(admission) => admission,
        Err((refusal, error)) => {
            return match (refusal, &error) {
                // Temporary: answered so that an EventSource comes back later.
                (Refusal::ShuttingDown | Refusal::ServerFull, _) => {
                    come_back_later(&state, refusal, &error.to_string(), None)
                }
                (
                    Refusal::RateLimited,
                    ApiError::TooManyRequests {
                        retry_after_seconds,
                        ..
                    },
                ) => {
                    let wait = Duration::from_secs(*retry_after_seconds);
                    come_back_later(&state, refusal, &error.to_string(), Some(wait))
                }
                // Final (bad request, credentials, origin): an EventSource must stop.
                _ => {
                    state.metrics.connection_refused(refusal);
                    error.into_response()
                }
            };
        }
    };
    let fresh = admission.resume_from.is_none();
    // Events accepted before this instant are replays: they are not timed as live deliveries.
    let live_since = std::time::Instant::now();
    let attached = match state
        .broker
        .attach(
            admission.user,
            Transport::Sse,
            admission.resume_from.as_deref(),
            true,
        )
        .await
    {
        Ok(attached) => attached,
        Err(AttachError::UserLimit(limit)) => {
            return come_back_later(&state, Refusal::UserLimit, &limit.to_string(), None);
        }
        Err(AttachError::Unavailable(error)) => {
            let why = error.to_string();
            return come_back_later(&state, Refusal::BrokerUnavailable, &why, None);
        }
    };
    state.metrics.connection_opened();
    tracing::debug!(user = %attached.registration.user(), connection = attached.registration.id(), "sse connected");

    let mut opening = BytesMut::new();
    write_retry(&mut opening, state.settings.sse_retry);
    if let Some(head) = attached.head.as_ref().filter(|_| fresh) {
        opening.put_slice(format!("id: {head}\n").as_bytes());
    }
    opening.put_u8(b'\n');
    let keepalive = state.settings.sse_keepalive;
    let session = Session {
        keepalive,
        keepalive_timer: Box::pin(sleep(keepalive)),
        registration: Some(attached.registration),
        outbox: attached.outbox,
        batch: Vec::new(),
        opening: Some(opening.freeze()),
        reason: None,
        live_since,
        _tracked: state.lifecycle.track_session(),
        _slot: admission.slot,
        expiry: admission
            .expires_at
            .map(|at| Box::pin(sleep(remaining(at)))),
        state,
    };
    let chunks = futures_util::stream::unfold(session, |mut session| async move {
        let chunk = session.next_chunk().await?;
        session
            .state
            .metrics
            .bytes_sent(Transport::Sse, chunk.len());
        Some((Ok::<_, Infallible>(chunk), session))
    });
    event_stream_response(Body::from_stream(chunks))
}

/// A `200 text/event-stream` response with headers that keep caches and proxies from holding
/// events back.
fn event_stream_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Turns a client away in a way an EventSource retries: a stream holding only a `retry:` hint
/// (`SSE_RETRY`, or `wait` when longer) and a comment saying why, ended at once.
fn come_back_later(
    state: &SharedState,
    refusal: Refusal,
    why: &str,
    wait: Option<Duration>,
) -> Response {
    state.metrics.connection_refused(refusal);
    let mut body = BytesMut::new();
    write_retry(
        &mut body,
        wait.unwrap_or_default().max(state.settings.sse_retry),
    );
    write_comment(&mut body, why);
    event_stream_response(Body::from(body.freeze()))
}

fn write_retry(buffer: &mut BytesMut, retry: Duration) {
    buffer.put_slice(format!("retry: {}\n", retry.as_millis()).as_bytes());
}

/// A comment line (ignored by EventSource), ending a block. `text` holds no line breaks.
fn write_comment(buffer: &mut BytesMut, text: &str) {
    buffer.put_slice(b": ");
    buffer.put_slice(text.replace(['\r', '\n'], " ").as_bytes());
    buffer.put_slice(b"\n\n");
}

/// Appends the `close` event that ends a stream the server chose to end (slow consumer, replaced by
/// a newer connection, token expired). It has no `id:`, so the client's resume point is unchanged.
/// A page may close its `EventSource` on `reason: "replaced"` (reconnecting would only replace the
/// newer connection in turn, with `USER_LIMIT_POLICY=replace-oldest`), and should reconnect with a
/// fresh token on `reason: "token_expired"`.
fn write_close_event(buffer: &mut BytesMut, reason: DisconnectReason) {
    buffer.put_slice(b"event: close\ndata: {\"event_type\":\"close\",\"reason\":\"");
    buffer.put_slice(reason.label().as_bytes());
    buffer.put_slice(b"\"}\n\n");
}

/// Appends one event. The JSON goes on `data:` lines: it can only hold line breaks as whitespace
/// between tokens (inside strings they are escaped), which an upstream's raw `data` may contain, so
/// each line becomes its own `data:` line and the client's parser joins them back with `\n`.
fn write_event(buffer: &mut BytesMut, item: &Outgoing) {
    if let Outgoing::Event(event) = item {
        buffer.put_slice(b"id: ");
        buffer.put_slice(event.event_id.as_bytes());
        buffer.put_slice(b"\nevent: ");
        buffer.put_slice(event.event_type.as_bytes());
        buffer.put_u8(b'\n');
    }
    for line in item.frame().as_str().split(['\r', '\n']) {
        if !line.is_empty() {
            buffer.put_slice(b"data: ");
            buffer.put_slice(line.as_bytes());
            buffer.put_u8(b'\n');
        }
    }
    buffer.put_u8(b'\n');
}

/// One SSE client, from its first chunk to its end. Dropping it (the stream ended, or hyper
/// dropped the body because the client went away) unregisters the connection and counts it.
struct Session {
    state: SharedState,
    /// `SSE_KEEPALIVE`; zero: no keepalive comments.
    keepalive: Duration,
    /// Fires `keepalive` after the last chunk; pushed back after each one.
    keepalive_timer: Pin<Box<Sleep>>,
    /// `None` once unregistered (shutting down).
    registration: Option<Registration>,
    outbox: Outbox,
    batch: Vec<Outgoing>,
    /// The first chunk, until it is sent.
    opening: Option<Bytes>,
    /// Why the session ended, once it has.
    reason: Option<DisconnectReason>,
    /// When the session started: events accepted earlier are replays, not timed as deliveries.
    live_since: std::time::Instant,
    /// Held until the session ends: shutdown waits for it.
    _tracked: TaskTrackerToken,
    /// Held until the session ends: its `MAX_CONNECTIONS` slot.
    _slot: OwnedSemaphorePermit,
    /// Fires when the client's token expires: the stream ends then.
    expiry: Option<Pin<Box<Sleep>>>,
}

impl Session {
    /// The next chunk to send, or `None` to end the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(opening) = self.opening.take() {
            return Some(opening);
        }
        if self.reason.is_some() {
            return None;
        }
        let registration = self.registration.as_ref()?;
        let keepalive_on = !self.keepalive.is_zero();
        let expires = self.expiry.is_some();
        let expiry = async {
            if let Some(expiry) = self.expiry.as_mut() {
                expiry.await;
            }
        };
        let mut buffer = BytesMut::new();
        tokio::select! {
            () = self.state.lifecycle.closing() => {
                self.reason = Some(DisconnectReason::Shutdown);
                // Unregister first: after that nothing more can be queued, so draining misses
                // nothing. Then the stream ends; the browser reconnects, elsewhere.
                self.registration = None;
                while let Ok(item) = self.outbox.try_recv() {
                    write_event(&mut buffer, &item);
                }
                write_comment(&mut buffer, "server shutting down; reconnect");
            }
            reason = registration.close_requested() => {
                self.reason = Some(reason);
                write_close_event(&mut buffer, reason);
            }
            received = self.outbox.recv_many(&mut self.batch, WRITE_BATCH) => {
                if received == 0 {
                    self.reason = Some(DisconnectReason::NetworkError);
                    return None;
                }
                top_up(&mut self.outbox, &mut self.batch).await;
                for item in &self.batch {
                    write_event(&mut buffer, item);
                }
                // Bytes are counted with every chunk, where the stream is polled.
                let metrics = &self.state.metrics;
                metrics.record_written(Transport::Sse, &self.batch, 0, self.live_since);
                self.batch.clear();
            }
            () = self.keepalive_timer.as_mut(), if keepalive_on => {
                buffer.put_slice(b": keepalive\n\n");
            }
            () = expiry, if expires => {
                self.reason = Some(DisconnectReason::TokenExpired);
                write_close_event(&mut buffer, DisconnectReason::TokenExpired);
            }
        }
        if keepalive_on {
            self.keepalive_timer
                .as_mut()
                .reset(Instant::now() + self.keepalive);
        }
        Some(buffer.freeze())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Ended before it chose to: the client went away, or a write stalled past the timeout
        // after the hub had asked it to close.
        let reason = self.reason.unwrap_or_else(|| {
            self.registration
                .as_ref()
                .and_then(Registration::close_reason)
                .unwrap_or(DisconnectReason::ClientClosed)
        });
        if let Some(registration) = self.registration.take() {
            tracing::debug!(user = %registration.user(), connection = registration.id(), reason = reason.label(), "sse disconnected");
        }
        self.state.metrics.connection_closed(reason);
        // Unregistered: nothing more can be queued. What is left was never written.
        let mut unwritten = self.batch.len();
        while let Ok(item) = self.outbox.try_recv() {
            if let Outgoing::Event(_) = item {
                unwritten += 1;
            }
        }
        self.state.metrics.events_unwritten(reason, unwritten);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::protocol::{Frame, Published};

    fn event(frame: &str) -> Outgoing {
        Outgoing::Event(Arc::new(Published {
            event_id: Arc::from("e1"),
            event_type: Arc::from("message"),
            frame: Frame::from(frame.to_owned()),
            accepted_at: std::time::Instant::now(),
        }))
    }

    #[test]
    fn events_are_framed_with_id_type_and_data() {
        let mut buffer = BytesMut::new();
        write_event(&mut buffer, &event(r#"{"a":1}"#));
        assert_eq!(&buffer[..], b"id: e1\nevent: message\ndata: {\"a\":1}\n\n");
    }

    #[test]
    fn line_breaks_in_the_json_become_separate_data_lines() {
        let mut buffer = BytesMut::new();
        write_event(&mut buffer, &event("{\"a\":\r\n1,\r\"b\":\n2}"));
        assert_eq!(
            &buffer[..],
            b"id: e1\nevent: message\ndata: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n"
        );
    }
}
