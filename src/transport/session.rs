//! The session core: one client connection, from registration to close, whatever the transport.
//!
//! A session waits on seven things at once: shutdown, a close request from the hub (slow consumer,
//! replaced, disconnected), the connection's outbox, room released in it while a replay waits,
//! the keepalive deadline, the token's expiry and the client. Items from the outbox are written in batches (`recv_many`, then one write);
//! a small batch first yields to the scheduler once, so that under load more items join it and
//! share one write. Live events are timed from their acceptance to their write; replays are not.
//! While the connection replays missed events, the session asks the hub for the next page each
//! time its outbox has drained, and again whenever room is released in it (an SSE stream's items
//! are released only when the response body takes them, after the write). A slow-consumer close request interrupts a write in progress, so
//! that what the connection holds is freed at once (other requests let the write finish).
//! When the session ends it unregisters first (nothing more can be queued), counts the close,
//! and lets the transport say goodbye: on shutdown it still writes what was queued, otherwise
//! what was queued counts as dropped.
//!
//! What differs between WebSocket and SSE — how items are framed and written, what keeps an idle
//! connection alive, what the client can send, how a connection is closed — is a [`Link`]. The
//! session, and only the session, writes to and closes its link.

use std::time::{Instant as StdInstant, SystemTime};

use tokio::time::{Instant, sleep_until};

use crate::auth::remaining;
use crate::hub::{Attached, Outbox, Outgoing, Queued, Registration};
use crate::protocol::{
    ClientFrame, DisconnectReason, Label, Transport, ack_error_frame, ack_frame,
};
use crate::rate_limit::Limit;
use crate::state::SharedState;
use crate::webhook::WebhookType;

/// Most items a session writes at once.
pub(super) const WRITE_BATCH: usize = 64;

/// What a transport does for the session core. Every method that writes reports the bytes the
/// metrics count for it (WebSocket pings and close frames are not counted).
pub(super) trait Link: Send {
    /// Which transport this is.
    const TRANSPORT: Transport;

    /// Writes what opens the connection, before anything queued.
    async fn open(&mut self) -> Result<usize, DisconnectReason>;

    /// Writes `items` (events and replies, in order) within the write timeout; a write that
    /// cannot finish in time means the client is not reading. A link that hands the bytes on
    /// rather than writing them to the socket itself takes the items with them, so that what
    /// they hold stays counted in the queue budgets until it is out of the server's hands; it
    /// takes them only once the write succeeded.
    async fn write(&mut self, items: &mut Vec<Queued>) -> Result<usize, DisconnectReason>;

    /// When [`Self::keep_alive`] must next run; `None` when keepalive is off.
    fn keepalive_deadline(&self) -> Option<Instant>;

    /// The keepalive deadline passed: write what keeps the connection alive, or give up on a
    /// client that did not answer in time.
    async fn keep_alive(&mut self) -> Result<usize, DisconnectReason>;

    /// Waits for what the client does next: a frame (an acknowledgement, or a message to
    /// answer), a sign of life (`None`), or a reason to end (it left, or broke a rule).
    async fn receive(&mut self) -> Result<Option<ClientFrame>, DisconnectReason>;

    /// Ends the connection for `reason`, after writing `pending` (the items still queued when the
    /// server shuts down; empty otherwise). Returns the bytes written, as the metrics count them.
    async fn close(self, pending: Vec<Queued>, reason: DisconnectReason) -> usize;
}

/// Runs one opened connection until it ends. `expires_at` is its token's expiry, when it has one.
///
/// The future may be dropped before it completes, even before it is first polled (an SSE body
/// is dropped when its client goes away): the connection is then still unregistered and its end
/// counted, by [`Session`]'s drop.
pub(super) async fn run<L: Link>(
    mut link: L,
    mut session: Session,
    expires_at: Option<SystemTime>,
) {
    let expires_at = expires_at.map(|at| Instant::now() + remaining(at));
    let reason = serve(&mut link, &mut session, expires_at).await;
    session.end(link, reason).await;
}

/// One connection's side of the hub while its session runs: its registration and its queue.
/// Made by [`Session::open`] as soon as the connection is attached, so that from then on its end
/// is counted whatever happens.
pub(super) struct Session {
    transport: Transport,
    /// `None` once unregistered: the session has ended (or is saying goodbye).
    registration: Option<Registration>,
    outbox: Outbox,
    /// Items taken from the outbox and not yet written (after a failed write: never written).
    batch: Vec<Queued>,
    /// When each live event of the batch being written was accepted.
    accepted: Vec<StdInstant>,
    state: SharedState,
}

impl Session {
    /// Counts the attached connection as opened.
    pub(super) fn open(transport: Transport, attached: Attached, state: SharedState) -> Self {
        let Attached {
            registration,
            outbox,
            ..
        } = attached;
        state.metrics.connection_opened();
        let (user, connection) = (registration.user(), registration.id());
        let transport_label: &'static str = transport.into();
        tracing::debug!(%user, connection, transport = %transport_label, "connected");
        Self {
            transport,
            registration: Some(registration),
            outbox,
            batch: Vec::new(),
            accepted: Vec::new(),
            state,
        }
    }

    /// Unregisters the connection (after that nothing more can be queued, so draining misses
    /// nothing), counts its end, and returns what was still queued.
    fn unregister(&mut self, reason: DisconnectReason) -> Vec<Queued> {
        if let Some(registration) = self.registration.take() {
            let (user, connection) = (registration.user(), registration.id());
            let transport_label: &'static str = self.transport.into();
            tracing::debug!(
                %user,
                connection,
                transport = %transport_label,
                reason = reason.label(),
                "disconnected"
            );
            registration.end(reason);
        }
        self.state.metrics.connection_closed(reason);
        let mut pending = std::mem::take(&mut self.batch);
        while let Ok(item) = self.outbox.try_recv() {
            pending.push(item);
        }
        pending
    }

    /// Ends the session for `reason`: unregisters, then lets the link say goodbye. On shutdown
    /// what was queued is still written, ahead of the goodbye; otherwise it counts as dropped.
    async fn end<L: Link>(mut self, link: L, reason: DisconnectReason) {
        let mut pending = self.unregister(reason);
        let metrics = &self.state.metrics;
        if reason == DisconnectReason::Shutdown {
            // Timed as written now: the goodbye may wait for the client's close reply.
            metrics.record_written(L::TRANSPORT, 0, live_accepted(&pending));
        } else {
            metrics.events_unwritten(reason, events_in(&pending));
            pending.clear();
        }
        let bytes = link.close(pending, reason).await;
        metrics.bytes_sent(L::TRANSPORT, bytes);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.registration.is_none() {
            // Ended by `end`, which counted everything.
            return;
        }
        // Ended before it chose to: the client went away, or a write stalled past the server's
        // write timeout (after the hub had perhaps asked the connection to close).
        let reason = self
            .registration
            .as_ref()
            .and_then(Registration::close_reason)
            .unwrap_or(DisconnectReason::ClientClosed);
        let pending = self.unregister(reason);
        self.state
            .metrics
            .events_unwritten(reason, events_in(&pending));
    }
}

/// The session loop: returns why the connection must end.
async fn serve<L: Link>(
    link: &mut L,
    session: &mut Session,
    expires_at: Option<Instant>,
) -> DisconnectReason {
    let Session {
        registration: Some(registration),
        outbox,
        batch,
        accepted,
        state,
        ..
    } = session
    else {
        // The registration is taken only when the session ends, after this loop.
        return DisconnectReason::NetworkError;
    };
    let metrics = &state.metrics;
    let inbound = Limit::new(state.settings.client_message_rate, &state.clock);
    match link.open().await {
        Ok(bytes) => metrics.bytes_sent(L::TRANSPORT, bytes),
        Err(reason) => {
            // An opening that could not be written in time is a slow consumer, counted as such.
            if reason == DisconnectReason::SlowConsumer {
                registration.write_timed_out();
            }
            return reason;
        }
    }
    let keepalive = sleep_until(link.keepalive_deadline().unwrap_or_else(Instant::now));
    tokio::pin!(keepalive);
    // Polled only when there is an expiry; the deadline is then the token's.
    let expiry = sleep_until(expires_at.unwrap_or_else(Instant::now));
    tokio::pin!(expiry);

    loop {
        if outbox.is_empty() && registration.is_replaying() {
            registration.continue_replay();
        }
        let keepalive_on = link.keepalive_deadline().is_some();
        let replaying = registration.is_replaying();
        tokio::select! {
            () = state.lifecycle.closing() => return DisconnectReason::Shutdown,
            // The replay's next page waits for room: an SSE stream releases its items only once
            // the response body has taken them, after the write.
            () = registration.room_released(), if replaying => {}
            reason = registration.close_requested() => return reason,
            received = outbox.recv_many(batch, WRITE_BATCH) => {
                if received == 0 {
                    // Cannot happen while `registration` holds the sender; end cleanly if it does.
                    return DisconnectReason::NetworkError;
                }
                top_up(outbox, batch).await;
                // A failed batch stays in `batch`: the end of the session counts it as dropped.
                accepted.extend(live_accepted(batch));
                let bytes = match write(link, batch, registration).await {
                    Ok(bytes) => bytes,
                    Err(reason) => return reason,
                };
                metrics.record_written(L::TRANSPORT, bytes, accepted.drain(..));
                batch.clear();
            }
            () = &mut expiry, if expires_at.is_some() => return DisconnectReason::TokenExpired,
            () = &mut keepalive, if keepalive_on => {
                match link.keep_alive().await {
                    Ok(bytes) => metrics.bytes_sent(L::TRANSPORT, bytes),
                    Err(reason) => {
                        if reason == DisconnectReason::SlowConsumer {
                            registration.write_timed_out();
                        }
                        return reason;
                    }
                }
            }
            received = link.receive() => {
                // Whatever arrived counts against the client's rate, a frame that ends the
                // connection included.
                if inbound.as_ref().is_some_and(|limit| !limit.check()) {
                    return DisconnectReason::MessageRate;
                }
                match received {
                    Ok(Some(frame)) => {
                        if let Err(reason) = answer(frame, registration, state) {
                            return reason;
                        }
                    }
                    Ok(None) => {}
                    Err(reason) => return reason,
                }
            }
        }
        if let Some(deadline) = link.keepalive_deadline()
            && deadline != keepalive.deadline()
        {
            keepalive.as_mut().reset(deadline);
        }
    }
}

/// Acts on a client's frame: an acknowledgement goes to the broker (no reply); any other frame
/// is answered with the seed's echo ack and goes to the `client.message` webhook; a malformed
/// acknowledgement is answered with an error naming the field. A queue too full for the reply
/// ends the connection.
fn answer(
    frame: ClientFrame,
    registration: &Registration,
    state: &SharedState,
) -> Result<(), DisconnectReason> {
    let user = registration.user();
    let reply = match frame {
        ClientFrame::Ack(ids) => {
            state.metrics.client_acks(ids.len());
            state.broker.acknowledge(user, ids);
            return Ok(());
        }
        ClientFrame::BadAck(problem) => ack_error_frame(&problem),
        ClientFrame::Message(text) => {
            state.metrics.client_message();
            if state.webhooks.wants(WebhookType::ClientMessage) {
                let connection_id = state.broker.connection_id(registration.id());
                state.webhooks.client_message(user, &connection_id, &text);
            }
            ack_frame(&text)
        }
    };
    registration.queue_reply(reply)
}

/// Writes `batch`, unless the hub asks the connection to close as a slow consumer meanwhile: then
/// the write is dropped (the link knows it may have been cut mid-frame) and what it held is freed
/// with the session. A write that times out makes a slow consumer too, counted as such.
async fn write<L: Link>(
    link: &mut L,
    batch: &mut Vec<Queued>,
    registration: &Registration,
) -> Result<usize, DisconnectReason> {
    let slow_consumer = async {
        if registration.close_requested().await != DisconnectReason::SlowConsumer {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        biased;
        written = link.write(batch) => {
            if written == Err(DisconnectReason::SlowConsumer) {
                registration.write_timed_out();
            }
            written
        }
        () = slow_consumer => Err(DisconnectReason::SlowConsumer),
    }
}

/// After `recv_many` returned fewer than a full batch: lets the other ready tasks (pushes being
/// handled) run once, then takes what they queued, so that under load several events share one
/// write. When idle this costs one trip through the scheduler.
async fn top_up(outbox: &mut Outbox, batch: &mut Vec<Queued>) {
    if batch.len() >= WRITE_BATCH {
        return;
    }
    tokio::task::yield_now().await;
    while batch.len() < WRITE_BATCH {
        let Ok(item) = outbox.try_recv() else { break };
        batch.push(item);
    }
}

/// When each live event among `items` was accepted (replays and replies are not timed).
fn live_accepted(items: &[Queued]) -> impl Iterator<Item = StdInstant> + '_ {
    items.iter().filter_map(|item| match &**item {
        Outgoing::Live(event) => Some(event.accepted_at),
        Outgoing::Replay(_) | Outgoing::Reply(_) => None,
    })
}

/// How many of these items are events (not replies).
fn events_in(items: &[Queued]) -> usize {
    items.iter().filter(|item| item.event().is_some()).count()
}
