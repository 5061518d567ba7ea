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
//! Over HTTP/1.1 the response body *is* the session: a [`SessionBody`] runs the
//! [session](super::session) over an [`SseLink`] inside the HTTP connection's task, polling it
//! whenever hyper asks for the next chunk (or a waker the session registered fires), and hands on
//! each chunk the link wrote. No task of its own, so an event costs no extra wakeup. A client that
//! stops reading stops the polling; its queue fills, the hub asks the connection to close as a
//! slow consumer, and the server's connection write timeout (`WS_WRITE_TIMEOUT` + 1 s) cuts it. A
//! client that goes away drops the body, and with it the session, which unregisters and counts the
//! connection then.
//!
//! Over HTTP/2 a stream whose client stops reading stalls alone (flow control), while its
//! connection goes on carrying other streams: no socket write ever times out. So there the
//! session runs in a task of its own and the body only hands on what it wrote; a chunk that the
//! body has not taken within `WS_WRITE_TIMEOUT` makes the session a slow consumer, closed like
//! any other. Refusals the client should retry
//! (shutting down, server or user full, over the connect rate) are answered `200` with a `retry:`
//! hint and a comment, then end: per the WHATWG spec an EventSource that gets a 4xx/5xx never
//! reconnects. Final refusals (a bad request: 400; a refused token: 401; a foreign origin or user:
//! 403) should stop it, and do.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, BytesMut};
use futures_util::Stream;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::SHARE_FROM_BYTES;
use super::session::{self, Link, Session};
use super::{attach, authorize};
use crate::broker::AttachError;
use crate::error::ApiError;
use crate::hub::{Outgoing, Queued};
use crate::metrics::Refusal;
use crate::protocol::{ClientFrame, DisconnectReason, Label, Transport};
use crate::state::SharedState;

/// Chunks written by the link and not yet handed to hyper. The body hands one on after each poll
/// of the session, which writes one chunk per batch of items, so a few are plenty; a link that
/// finds them all taken waits for the body's next poll, which frees one.
const CHUNKS_IN_FLIGHT: usize = 4;

/// `GET {SSE_STREAM_PATH}`: opens an event stream for one user.
pub async fn stream(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    version: Version,
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
    let resume_from = admission.resume_from.as_deref();
    let attached = match attach(&state, admission.user, Transport::Sse, resume_from, true).await {
        Ok(attached) => attached,
        Err(AttachError::UserLimit(limit)) => {
            return come_back_later(&state, Refusal::UserLimit, &limit.to_string(), None);
        }
        Err(AttachError::Unavailable(error)) => {
            let why = error.to_string();
            return come_back_later(&state, Refusal::BrokerUnavailable, &why, None);
        }
    };

    let mut opening = BytesMut::new();
    write_retry(&mut opening, state.settings.sse_retry);
    if admission.resume_from.is_none()
        && let Some(head) = attached.head.as_ref()
    {
        opening.put_slice(format!("id: {head}\n").as_bytes());
    }
    opening.put_u8(b'\n');
    let (chunks, written) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let own_task = version == Version::HTTP_2;
    let link = SseLink {
        chunks,
        opening: opening.freeze(),
        keepalive: state.settings.sse_keepalive,
        last_write: Instant::now(),
        send_timeout: own_task.then_some(state.settings.ws_write_timeout),
    };
    let held = (state.lifecycle.track_session(), admission.slot);
    // Opened here: a body dropped before its first poll still counts its connection's end.
    let session = Session::open(Transport::Sse, attached, state);
    let run = session::run(link, session, admission.expires_at);
    let body = if own_task {
        tokio::spawn(async move {
            run.await;
            drop(held);
        });
        SessionBody::new(None, written, None)
    } else {
        SessionBody::new(Some(Box::pin(run)), written, Some(held))
    };
    event_stream_response(Body::from_stream(body))
}

/// An SSE response body that runs its session (HTTP/1.1): each poll polls the session, then hands
/// on the chunk it wrote, if any; or (HTTP/2) that hands on what a session in its own task wrote.
/// Ends when the session has ended and its last chunk is out.
struct SessionBody {
    /// The session it runs, until it ends.
    session: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// What the session's link wrote.
    written: mpsc::Receiver<Chunk>,
    /// The rest of the chunk being handed on.
    current: std::vec::IntoIter<Bytes>,
    /// The items the chunk being handed on was made of, released after its last piece.
    current_charges: Vec<Queued>,
    /// When it runs the session, held until the body is dropped: the session's place in what
    /// shutdown waits for, and its `MAX_CONNECTIONS` slot.
    _held: Option<(TaskTrackerToken, OwnedSemaphorePermit)>,
}

impl SessionBody {
    fn new(
        session: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
        written: mpsc::Receiver<Chunk>,
        held: Option<(TaskTrackerToken, OwnedSemaphorePermit)>,
    ) -> Self {
        Self {
            session,
            written,
            current: Vec::new().into_iter(),
            current_charges: Vec::new(),
            _held: held,
        }
    }

    /// The next piece of the chunk being handed on; after its last, the chunk's items are
    /// released (their bytes leave the queue budgets).
    fn next_piece(&mut self) -> Option<Bytes> {
        let piece = self.current.next();
        if self.current.len() == 0 {
            self.current_charges.clear();
        }
        piece
    }
}

impl Stream for SessionBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(piece) = this.next_piece() {
            return Poll::Ready(Some(Ok(piece)));
        }
        if let Some(session) = this.session.as_mut()
            && session.as_mut().poll(cx).is_ready()
        {
            this.session = None;
        }
        let received = if this.session.is_some() {
            // The link writes only while the session is polled, here, in this task: no waker is
            // needed (one would wake this task again for every chunk it hands on).
            this.written.try_recv()
        } else {
            // The session ended, or runs in its own task: wake when it writes.
            match this.written.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => Ok(chunk),
                Poll::Ready(None) => Err(TryRecvError::Disconnected),
                Poll::Pending => return Poll::Pending,
            }
        };
        match received {
            Ok(chunk) => {
                this.current = chunk.pieces.into_iter();
                this.current_charges = chunk.charges;
                match this.next_piece() {
                    Some(piece) => Poll::Ready(Some(Ok(piece))),
                    // Never sent empty; wake to look again.
                    None => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                }
            }
            Err(TryRecvError::Empty) if this.session.is_some() => Poll::Pending,
            // The session ended and its last chunk is out.
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => Poll::Ready(None),
        }
    }
}

/// An SSE response body, as a session's [`Link`]: chunks go to the [`SessionBody`] that runs the
/// session.
struct SseLink {
    chunks: mpsc::Sender<Chunk>,
    /// The first chunk (`retry:`, and the head's `id:` on a fresh connection).
    opening: Bytes,
    /// `SSE_KEEPALIVE`; zero: no keepalive comments.
    keepalive: Duration,
    /// When the last chunk was written: the keepalive is due `keepalive` after it.
    last_write: Instant,
    /// How long a chunk may wait for the body to take it (`WS_WRITE_TIMEOUT`) when the session
    /// runs in its own task (HTTP/2); beyond it, the client is a slow consumer. `None` when the
    /// body runs the session: it then waits only while the body is being polled.
    send_timeout: Option<Duration>,
}

impl SseLink {
    /// Hands one chunk to the body; returns its length, or, when the body is gone (or, in a task
    /// of its own, has not taken it in time), the items the chunk carried. In the body's task it
    /// never waits long: the body frees a slot each time it polls the session (a client that
    /// stops reading stops both).
    async fn send(&mut self, chunk: Chunk) -> Result<usize, (DisconnectReason, Vec<Queued>)> {
        let length = chunk.pieces.iter().map(Bytes::len).sum();
        if length == 0 {
            return Ok(0);
        }
        let reserved = match self.send_timeout {
            None => self.chunks.reserve().await,
            Some(limit) => match tokio::time::timeout(limit, self.chunks.reserve()).await {
                Ok(reserved) => reserved,
                Err(_elapsed) => return Err((DisconnectReason::SlowConsumer, chunk.charges)),
            },
        };
        let Ok(permit) = reserved else {
            return Err((DisconnectReason::ClientClosed, chunk.charges));
        };
        permit.send(chunk);
        self.last_write = Instant::now();
        Ok(length)
    }

    /// Hands on bytes that carry no queued items.
    async fn send_pieces(&mut self, pieces: Vec<Bytes>) -> Result<usize, DisconnectReason> {
        let chunk = Chunk {
            pieces,
            charges: Vec::new(),
        };
        self.send(chunk).await.map_err(|(reason, _)| reason)
    }
}

impl Link for SseLink {
    const TRANSPORT: Transport = Transport::Sse;

    async fn open(&mut self) -> Result<usize, DisconnectReason> {
        let opening = std::mem::take(&mut self.opening);
        self.send_pieces(vec![opening]).await
    }

    async fn write(&mut self, items: &mut Vec<Queued>) -> Result<usize, DisconnectReason> {
        let mut pieces = Pieces::default();
        for item in items.iter() {
            write_event(&mut pieces, item);
        }
        let mut chunk = pieces.finish();
        chunk.charges = std::mem::take(items);
        self.send(chunk).await.map_err(|(reason, charges)| {
            *items = charges;
            reason
        })
    }

    fn keepalive_deadline(&self) -> Option<Instant> {
        (!self.keepalive.is_zero()).then(|| self.last_write + self.keepalive)
    }

    async fn keep_alive(&mut self) -> Result<usize, DisconnectReason> {
        let keepalive = Bytes::from_static(b": keepalive\n\n");
        self.send_pieces(vec![keepalive]).await
    }

    async fn receive(&mut self) -> Result<Option<ClientFrame>, DisconnectReason> {
        // An event stream has no way back. A client that goes away drops the body: with it the
        // session it runs (nothing to watch), or, in a task of its own, the receiving end of the
        // chunks.
        if self.send_timeout.is_none() {
            std::future::pending::<()>().await;
        }
        self.chunks.closed().await;
        Err(DisconnectReason::ClientClosed)
    }

    async fn close(mut self, pending: Vec<Queued>, reason: DisconnectReason) -> usize {
        let mut pieces = Pieces::default();
        match reason {
            DisconnectReason::ClientClosed | DisconnectReason::NetworkError => return 0,
            DisconnectReason::Shutdown => {
                for item in &pending {
                    write_event(&mut pieces, item);
                }
                // The stream ends; the browser reconnects, elsewhere.
                write_comment(&mut pieces.buffer, "server shutting down; reconnect");
            }
            reason => write_close_event(&mut pieces.buffer, reason),
        }
        let mut chunk = pieces.finish();
        chunk.charges = pending;
        if self.send_timeout.is_some() && reason != DisconnectReason::Shutdown {
            // In a task of its own, a stream ended for a reason of its own is likely full (a slow
            // consumer): the goodbye goes only if there is room, without another wait.
            let length = chunk.pieces.iter().map(Bytes::len).sum();
            return self.chunks.try_send(chunk).map_or(0, |()| length);
        }
        self.send(chunk).await.unwrap_or(0)
    }
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

/// What the link hands the body at once: pieces of the stream, in order, and the queued items
/// they were made of, whose bytes stay counted against the queue budgets until the body has
/// handed the last piece to hyper.
struct Chunk {
    pieces: Vec<Bytes>,
    charges: Vec<Queued>,
}

/// A chunk in the making: small pieces are copied together, large shared payloads are referenced
/// in place (never copied per connection).
#[derive(Default)]
struct Pieces {
    buffer: BytesMut,
    done: Vec<Bytes>,
}

impl Pieces {
    /// Appends `shared`: copied when small, referenced when large.
    fn put_shared(&mut self, shared: &Bytes) {
        if shared.len() < SHARE_FROM_BYTES {
            self.buffer.put_slice(shared);
        } else {
            if !self.buffer.is_empty() {
                self.done.push(self.buffer.split().freeze());
            }
            self.done.push(shared.clone());
        }
    }

    fn finish(mut self) -> Chunk {
        if !self.buffer.is_empty() {
            self.done.push(self.buffer.freeze());
        }
        Chunk {
            pieces: self.done,
            charges: Vec::new(),
        }
    }
}

/// Appends one event. The JSON goes on `data:` lines: it can only hold line breaks as whitespace
/// between tokens (inside strings they are escaped), which an upstream's raw `data` may contain, so
/// each line becomes its own `data:` line (the payload's [SSE text](crate::protocol::Payload::sse_text))
/// and the client's parser joins them back with `\n`. A frame's head holds no line break.
fn write_event(pieces: &mut Pieces, item: &Outgoing) {
    let buffer = &mut pieces.buffer;
    if let Some(event) = item.event() {
        buffer.put_slice(b"id: ");
        buffer.put_slice(event.event_id.as_bytes());
        buffer.put_slice(b"\nevent: ");
        buffer.put_slice(event.event_type.as_bytes());
        buffer.put_u8(b'\n');
    }
    let frame = item.frame();
    buffer.put_slice(b"data: ");
    buffer.put_slice(frame.head());
    pieces.put_shared(frame.payload().sse_text());
    pieces.buffer.put_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::protocol::{Event, Frame, Payload};

    fn event(frame: &str) -> Outgoing {
        Outgoing::Live(Arc::new(Event {
            event_id: Arc::from("e1"),
            event_type: Arc::from("message"),
            frame: Frame::from(frame.to_owned()),
            accepted_at: std::time::Instant::now(),
        }))
    }

    fn written(items: &[Outgoing]) -> Vec<u8> {
        let mut pieces = Pieces::default();
        for item in items {
            write_event(&mut pieces, item);
        }
        pieces.finish().pieces.concat()
    }

    #[test]
    fn events_are_framed_with_id_type_and_data() {
        assert_eq!(
            written(&[event(r#"{"a":1}"#)]),
            b"id: e1\nevent: message\ndata: {\"a\":1}\n\n"
        );
    }

    #[test]
    fn line_breaks_in_the_json_become_separate_data_lines() {
        assert_eq!(
            written(&[event("{\"a\":\r\n1,\r\"b\":\n2}")]),
            b"id: e1\nevent: message\ndata: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n"
        );
    }

    #[test]
    fn large_shared_payloads_are_referenced_not_copied() {
        let payload = Payload::new(format!("{{\"pad\":\"{}\"}}}}", "x".repeat(8000)));
        let split = |user: &str| {
            Outgoing::Live(Arc::new(Event {
                event_id: Arc::from("e1"),
                event_type: Arc::from("message"),
                frame: Frame::split(
                    format!("{{\"user_id\":\"{user}\",\"data\":"),
                    payload.clone(),
                ),
                accepted_at: std::time::Instant::now(),
            }))
        };
        let mut pieces = Pieces::default();
        write_event(&mut pieces, &split("a"));
        write_event(&mut pieces, &split("b"));
        let chunk = pieces.finish().pieces;
        let shared: Vec<&Bytes> = chunk
            .iter()
            .filter(|piece| piece.as_ptr() == payload.as_bytes().as_ptr())
            .collect();
        assert_eq!(shared.len(), 2, "both events point at the one payload");
        let text = String::from_utf8(chunk.concat()).unwrap();
        assert!(
            text.starts_with("id: e1\nevent: message\ndata: {\"user_id\":\"a\",\"data\":{\"pad\"")
        );
        assert!(text.ends_with("\"}}\n\n"));
    }
}
