//! The listener's connections: accepted, registered with [`admission`](crate::admission), taken
//! through TLS when it is on, given their protocol, and served by hyper until they end.
//!
//! The protocol: over TLS, what ALPN chose (`h2`, else HTTP/1.1); in cleartext, HTTP/2 when the
//! connection opens with the HTTP/2 preface (h2c with prior knowledge, for a load balancer's
//! internal traffic), else HTTP/1.1. HTTP/1.1 connections may upgrade to WebSocket; HTTP/2 ones
//! serve the API and SSE streams, many at once (`HTTP2_MAX_CONCURRENT_STREAMS`), with the limits
//! below. Every connection must complete its TLS handshake and its first request head within
//! `HTTP_REQUEST_TIMEOUT`; shutdown ends HTTP/1.1 connections after their request and sends
//! HTTP/2 ones a GOAWAY.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::admission::{Admission, Connection};
use crate::tls::Tls;

/// Pause after a failed `accept` that closing idle connections cannot help.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Idle HTTP connections closed at once when `accept` runs out of descriptors: a few more than
/// the one needed, so that the next accepts (and the process itself) have some headroom.
const RECLAIM_BATCH: usize = 16;

/// Idle HTTP connections closed for each connection accepted while descriptors are scarce: more
/// than one, so that idle connections shrink while new ones keep coming.
const RECLAIM_AHEAD: usize = 2;

/// Pause after asking idle connections to close, for their tasks to release the descriptors.
const RECLAIM_PAUSE: Duration = Duration::from_millis(5);

/// `EMFILE` and `ENFILE`: the process or the system is out of file descriptors (the same
/// numbers on every Unix).
const OUT_OF_DESCRIPTORS: [i32; 2] = [24, 23];

/// What a cleartext HTTP/2 connection (prior knowledge) sends first (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// First pause between two looks at a connection that sent part of the HTTP/2 preface only;
/// it doubles up to [`PREFACE_PAUSE_MAX`].
const PREFACE_PAUSE: Duration = Duration::from_millis(5);
const PREFACE_PAUSE_MAX: Duration = Duration::from_millis(500);

/// How long an HTTP/2 connection asked to go away (a GOAWAY) has to finish before it is dropped.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// HTTP/2: the largest header list a client may send (as HTTP/1.1's head limit).
const HTTP2_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// HTTP/2: how much request body a client may send on one stream before the server has read it.
const HTTP2_STREAM_WINDOW_BYTES: u32 = 256 * 1024;

/// HTTP/2: how much request body a client may send on all its streams together before the server
/// has read it.
const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;

/// HTTP/2: response bytes buffered per stream beyond what the client's window lets through; a
/// stream whose client stops reading holds no more (its SSE session then stalls and is cut).
const HTTP2_SEND_BUFFER_BYTES: usize = 64 * 1024;

/// HTTP/2: streams a client may reset before the server has answered them, after which the
/// connection gets a GOAWAY (the 2023 "rapid reset" attack, CVE-2023-44487).
const HTTP2_PENDING_RESETS_MAX: usize = 20;

/// HTTP/2: streams the server may reset for a client's protocol errors before it sends a GOAWAY.
const HTTP2_LOCAL_RESETS_MAX: usize = 1024;

/// HTTP/2: the interval of the server's pings on a connection, and how long an answer may take
/// before the connection is given up as dead.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(20);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Time and size limits on every HTTP connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnectionLimits {
    /// To complete the TLS handshake and send a request head, also while idle between HTTP/1.1
    /// keep-alive requests.
    pub head_timeout: Duration,
    /// For one write to the client to make progress (responses, SSE streams; a backstop for
    /// WebSockets, which time their writes themselves).
    pub write_timeout: Duration,
    /// Connections one IP address may hold before sending a complete request head.
    pub pending_per_ip: usize,
    /// A descriptor number from which descriptors are scarce.
    pub scarce_from: u64,
    /// `HTTP2_MAX_CONCURRENT_STREAMS`.
    pub http2_max_streams: u32,
}

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// How each protocol is served (shared by every connection).
#[derive(Clone)]
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(limits: &ConnectionLimits) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.head_timeout);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_streams)
            .max_header_list_size(HTTP2_MAX_HEADER_LIST_BYTES)
            .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
            .max_send_buf_size(HTTP2_SEND_BUFFER_BYTES)
            .max_pending_accept_reset_streams(HTTP2_PENDING_RESETS_MAX)
            .max_local_error_reset_streams(HTTP2_LOCAL_RESETS_MAX)
            .keep_alive_interval(HTTP2_PING_INTERVAL)
            .keep_alive_timeout(HTTP2_PING_TIMEOUT);
        Self { http1, http2 }
    }
}

/// Accepts TCP connections and serves each (see the module docs) until `stop` completes; then
/// stops accepting, lets every connection finish its in-flight requests (idle HTTP/1.1
/// connections close at once; HTTP/2 ones get a GOAWAY) and returns when all have.
///
/// Each write to a connection must progress within `write_timeout`, so trickling or non-reading
/// clients cannot pile up. One IP address may hold at most `pending_per_ip` connections that have
/// not sent a complete request head yet (more are closed at once), and when descriptors are scarce
/// (a connection arrives with a descriptor within the reserve below the limit) or `accept` runs
/// out of them, the connections idle the longest are closed (see [`crate::admission`]), so that
/// idle sockets cannot lock out new pushes and WebSockets.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<Tls>,
    stop: impl Future<Output = ()>,
) {
    let protocols = Protocols::new(&limits);
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    let admission = Admission::new(limits.pending_per_ip);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    recover_from_accept_error(&error, &admission).await;
                    continue;
                }
            },
        };
        // The kernel gives the lowest free number: every descriptor below this one is in use.
        // (Before the new connection is registered, so that it is never among those closed.)
        if u64::try_from(stream.as_raw_fd()).is_ok_and(|fd| fd >= limits.scarce_from) {
            let reclaimed = admission.reclaim_oldest(RECLAIM_AHEAD);
            tracing::debug!(
                reclaimed,
                "descriptors are scarce: closing idle HTTP connections"
            );
        }
        let Some(registered) = admission.admit(peer.ip()) else {
            tracing::debug!(%peer, "too many pending connections from this address; closed");
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let registered = Arc::new(registered);
        let connection = Accepted {
            service: connection_service(router.clone(), peer, Arc::clone(&registered)),
            registered,
            stopping: stopping.clone(),
            limits,
            first_request_by: Instant::now() + limits.head_timeout,
        };
        let (protocols, tls) = (protocols.clone(), tls.clone());
        connections.spawn(async move {
            if let Err(error) = connection.serve(stream, tls.as_ref(), &protocols).await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

/// After a failed `accept`: closes idle connections when descriptors ran out, else backs off.
async fn recover_from_accept_error(error: &io::Error, admission: &Admission) {
    let out_of_descriptors = error
        .raw_os_error()
        .is_some_and(|code| OUT_OF_DESCRIPTORS.contains(&code));
    let reclaimed = if out_of_descriptors {
        admission.reclaim_oldest(RECLAIM_BATCH)
    } else {
        0
    };
    if reclaimed > 0 {
        tracing::debug!(%error, reclaimed, "closing idle HTTP connections to accept");
        tokio::time::sleep(RECLAIM_PAUSE).await;
    } else {
        // Nothing idle to close, or out of memory: back off instead of spinning.
        tracing::warn!(%error, "cannot accept a connection");
        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
    }
}

/// One accepted connection, registered, about to be served by `service`.
struct Accepted<S> {
    service: S,
    registered: Arc<Connection>,
    stopping: CancellationToken,
    limits: ConnectionLimits,
    /// When it must have completed its TLS handshake and sent its first request head:
    /// `HTTP_REQUEST_TIMEOUT` after it was accepted, one deadline for all of it.
    first_request_by: Instant,
}

impl<S> Accepted<S>
where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    /// Takes the connection through TLS (if on), picks its protocol and serves it to its end, or
    /// until it is reclaimed, or until it fails to send its first request head in time.
    async fn serve(
        self,
        stream: TcpStream,
        tls: Option<&Tls>,
        protocols: &Protocols,
    ) -> io::Result<()> {
        let deadline = self.first_request_by;
        let Some(tls) = tls else {
            let sniffed = tokio::select! {
                sniffed = tokio::time::timeout_at(deadline, sniff(&stream)) => sniffed,
                () = self.registered.reclaimed() => return Ok(()),
                () = self.stopping.cancelled() => return Ok(()),
            };
            let Ok(protocol) = sniffed else {
                return Ok(()); // nothing (or a partial preface) within the time: closed
            };
            let protocol = protocol?;
            return self.run(self.timed(stream), protocol, protocols).await;
        };
        let handshake =
            tokio::time::timeout_at(deadline, tls.acceptor().accept(self.timed(stream)));
        let stream = tokio::select! {
            handshake = handshake => match handshake {
                Ok(stream) => stream?,
                Err(_elapsed) => return Ok(()),
            },
            () = self.registered.reclaimed() => return Ok(()),
            () = self.stopping.cancelled() => return Ok(()),
        };
        let protocol = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        };
        self.run(stream, protocol, protocols).await
    }

    /// The socket with the write timeout.
    fn timed(&self, stream: TcpStream) -> Pin<Box<TimeoutStream<TcpStream>>> {
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(self.limits.write_timeout));
        Box::pin(stream)
    }

    /// Serves `io` as `protocol`.
    async fn run<I>(&self, io: I, protocol: Protocol, protocols: &Protocols) -> io::Result<()>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let outcome = match protocol {
            Protocol::Http1 => {
                let connection = protocols
                    .http1
                    .serve_connection(io, self.service.clone())
                    .with_upgrades();
                // Idle keep-alive is hyper's header-read timeout's business.
                self.watch(connection, None, |connection| {
                    connection.graceful_shutdown()
                })
                .await
            }
            Protocol::Http2 => {
                let connection = protocols.http2.serve_connection(io, self.service.clone());
                let idle = Some(self.limits.head_timeout);
                self.watch(connection, idle, |connection| {
                    connection.graceful_shutdown()
                })
                .await
            }
        };
        outcome.map_err(io::Error::other)
    }

    /// Drives `connection` to its end. It is asked to end gracefully (`graceful`: HTTP/1.1 after
    /// its request, HTTP/2 with a GOAWAY) on shutdown, when it is reclaimed (idle when descriptors
    /// ran out), when it has not sent a request head by its first-request deadline, and when it
    /// has been idle (no request in flight, no stream open) for `idle_limit`, if given; in all but
    /// the first case it is dropped (closing the socket) if it has not ended [`GOAWAY_GRACE`]
    /// later.
    async fn watch<C, E>(
        &self,
        connection: C,
        idle_limit: Option<Duration>,
        graceful: impl FnOnce(Pin<&mut C>),
    ) -> Result<(), E>
    where
        C: Future<Output = Result<(), E>>,
    {
        // Idleness is looked at a few times per limit (a connection goes a little past it).
        let idle_every = idle_limit.map_or(Duration::from_secs(365 * 86_400), |limit| {
            (limit / 4).max(Duration::from_millis(100))
        });
        let mut idle_checks = tokio::time::interval_at(Instant::now() + idle_every, idle_every);
        tokio::pin!(connection);
        let first_request = tokio::time::sleep_until(self.first_request_by);
        tokio::pin!(first_request);
        // Armed (reset) only when the connection is asked to end.
        let hard_stop = tokio::time::sleep(Duration::from_secs(365 * 86_400));
        tokio::pin!(hard_stop);
        let mut waiting_for_a_request = true;
        // Taken when the connection is asked to end: from then on only its end or the hard stop
        // matter.
        let mut graceful = Some(graceful);
        loop {
            let ended = tokio::select! {
                result = connection.as_mut() => return result,
                () = self.stopping.cancelled(), if graceful.is_some() => {
                    if let Some(graceful) = graceful.take() {
                        graceful(connection.as_mut());
                    }
                    false
                }
                () = self.registered.reclaimed(), if graceful.is_some() => true,
                () = &mut first_request, if waiting_for_a_request => {
                    waiting_for_a_request = false;
                    self.registered.is_pending()
                }
                _ = idle_checks.tick(), if idle_limit.is_some() && graceful.is_some() => {
                    let idle = self.registered.idle_for();
                    idle.zip(idle_limit).is_some_and(|(idle, limit)| idle >= limit)
                }
                () = &mut hard_stop => return Ok(()),
            };
            if ended {
                if let Some(graceful) = graceful.take() {
                    graceful(connection.as_mut());
                }
                hard_stop.as_mut().reset(Instant::now() + GOAWAY_GRACE);
            }
        }
    }
}

/// Whether a cleartext connection opens with the HTTP/2 preface (prior knowledge), looking at its
/// first bytes without taking them.
async fn sniff(stream: &TcpStream) -> io::Result<Protocol> {
    let mut first = [0; HTTP2_PREFACE.len()];
    let mut pause = PREFACE_PAUSE;
    loop {
        let seen = stream.peek(&mut first).await?;
        if seen == 0 || !HTTP2_PREFACE.starts_with(&first[..seen]) {
            return Ok(Protocol::Http1);
        }
        if seen == HTTP2_PREFACE.len() {
            return Ok(Protocol::Http2);
        }
        // Part of the preface only (rare): look again, less and less often.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(PREFACE_PAUSE_MAX);
    }
}

/// The service of one HTTP connection: `router`, with the peer address on every request (for rate
/// limits and logs), and each request registered as in flight on `connection` until its response
/// body is finished (an SSE stream, until it ends), or for good once it upgrades.
fn connection_service(
    router: Router,
    peer: SocketAddr,
    connection: Arc<Connection>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response, std::convert::Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let in_flight = connection.request_started();
        let response = router.clone().oneshot(request);
        async move {
            let response = response.await?;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                in_flight.upgraded();
                return Ok(response);
            }
            Ok(response.map(|body| {
                axum::body::Body::new(body.map_frame(move |frame| {
                    let _in_flight = &in_flight;
                    frame
                }))
            }))
        }
    })
}
