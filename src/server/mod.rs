//! Builds the application from settings, binds it, serves it, and shuts it down gracefully.
//!
//! [`Application`] owns its listener, so tests can bind port 0, read the port, and run the real
//! server in-process; `main` does the same with the configured port. How each connection is
//! served (TLS, HTTP/1.1 or HTTP/2, the connection limits) is [`connections`]'s business.

mod connections;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::net::{TcpListener, TcpSocket, lookup_host};
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use crate::acks::Acks;
use crate::api::health::{method_not_allowed, not_found, panic_response};
use crate::api::{require_admin, require_key, require_publisher};
use crate::auth::{PublisherKeys, TokenVerifier};
use crate::broker::{Broker, MemoryBroker, RedisBroker};
use crate::clock::Clock;
use crate::config::{BrokerKind, CorsOrigins, Settings};
use crate::hub::{Hub, HubMode, UserLimit};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::metrics::requests::RequestDurations;
use crate::rate_limit::KeyedLimit;
use crate::routes::{self, Access};
use crate::state::{AppState, SharedState};
use crate::tls::{Reloaded, Tls};
use crate::webhook::Webhooks;

use self::connections::ConnectionLimits;

/// Part of `SHUTDOWN_TIMEOUT` kept for sessions to write what is queued and close with 1001
/// (at most half of it).
const SESSION_CLOSE_BUDGET: Duration = Duration::from_secs(3);

/// How much longer than `WS_WRITE_TIMEOUT` a connection's write may stall before the connection
/// itself fails. A WebSocket session times its own writes and closes as a slow consumer first; the
/// connection-level limit is the backstop for what has no timer of its own (HTTP responses, SSE).
const WRITE_BACKSTOP_MARGIN: Duration = Duration::from_secs(1);

/// Descriptors kept free for the process and new clients: a 16th of the limit, at least this many.
const DESCRIPTOR_RESERVE_MIN: u64 = 32;

/// Pending-connection queue length asked of the kernel (capped by `net.core.somaxconn`): bursts
/// of reconnecting clients should queue, not be refused.
const LISTEN_BACKLOG: u32 = 4096;

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    /// The listener's TLS, when `TLS_CERT_FILE` and `TLS_KEY_FILE` are set.
    tls: Option<Tls>,
    state: SharedState,
    clock: Clock,
}

impl Application {
    /// Checks the settings' cross-field rules, binds the listener and builds the state. Fails if
    /// the settings clash (paths) or the address cannot be bound.
    pub async fn build(settings: Settings) -> io::Result<Self> {
        Self::build_with_clock(settings, Clock::default()).await
    }

    /// [`Application::build`], with the rate limits on `clock` (tests move it forward).
    pub async fn build_with_clock(settings: Settings, clock: Clock) -> io::Result<Self> {
        let invalid = |problem| io::Error::new(io::ErrorKind::InvalidInput, problem);
        routes::check_paths(&settings).map_err(invalid)?;
        settings.check_consistency().map_err(invalid)?;
        let tokens = TokenVerifier::from_settings(&settings);
        let tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
            (Some(cert), Some(key)) => {
                Some(Tls::load(cert, key).map_err(|error| invalid(error.to_string()))?)
            }
            _ => None,
        };
        let listener = bind(&settings.host, settings.port).await?;
        let metrics = Arc::new(Metrics::default());
        let lifecycle = Lifecycle::default();
        let webhooks = match settings.webhook_settings() {
            Some(webhook_settings) => Webhooks::start(webhook_settings, &lifecycle)
                .map_err(|problem| io::Error::new(io::ErrorKind::InvalidInput, problem))?,
            None => Webhooks::disabled(),
        };
        let acks = Arc::new(Acks::new(settings.ack_limits(), webhooks.clone()));
        lifecycle.spawn_background(Arc::clone(&acks).expire());
        // Last: a cluster broker starts background tasks, which nothing may fail after.
        let (hub, broker) = build_broker(&settings, &metrics, &lifecycle, &acks, &webhooks).await?;
        let max_connections = effective_max_connections(settings.max_connections);
        let request_durations =
            RequestDurations::new(routes::table(&settings).into_iter().map(|route| route.path));
        let state = Arc::new(AppState {
            publishers: settings.push_api_keys.as_ref().map(PublisherKeys::new),
            admins: settings.admin_api_keys.as_ref().map(PublisherKeys::new),
            tokens,
            ack_limit: KeyedLimit::new(
                settings.client_message_rate,
                &clock,
                settings.rate_limit_ipv6_prefix,
            ),
            connect_limit: KeyedLimit::new(
                settings.connect_rate_per_ip,
                &clock,
                settings.rate_limit_ipv6_prefix,
            ),
            push_limit: KeyedLimit::new(
                settings.push_rate,
                &clock,
                settings.rate_limit_ipv6_prefix,
            ),
            settings,
            hub,
            broker,
            metrics,
            lifecycle,
            webhooks,
            acks,
            connection_slots: Arc::new(Semaphore::new(max_connections)),
            refusal_slots: Arc::new(Semaphore::new(crate::transport::ws::REFUSALS_IN_FLIGHT)),
            max_connections,
            started_at: Instant::now(),
            clock: clock.clone(),
            request_durations,
        });
        Ok(Self {
            listener,
            tls,
            state,
            clock,
        })
    }

    /// The clock the rate limits run on: tests move it forward instead of waiting.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle to start the graceful shutdown from outside (signals, tests).
    pub fn lifecycle(&self) -> Lifecycle {
        self.state.lifecycle.clone()
    }

    /// Serves until [`Lifecycle::begin_shutdown`] is called, then shuts down gracefully: drain,
    /// close the listener, let in-flight requests finish, close every session with 1001. Returns
    /// once all of that is done or `SHUTDOWN_TIMEOUT` has passed.
    pub async fn run_until_stopped(self) -> io::Result<()> {
        let Self {
            listener,
            tls,
            state,
            ..
        } = self;
        let lifecycle = state.lifecycle.clone();
        let drain = state.settings.shutdown_drain;
        let shutdown_timeout = state.settings.shutdown_timeout;
        let address = listener.local_addr()?;
        tracing::info!(
            %address,
            max_connections = state.max_connections,
            console = %crate::console::start_up_url(&state.settings, address),
            docs = %crate::console::url_of(address, "/docs"),
            tls = tls.is_some(),
            http2 = if tls.is_some() { "h2 (ALPN)" } else { "h2c (prior knowledge)" },
            "websocket-sse-server listening"
        );
        warn_about_open_access(&state);
        lifecycle.spawn_background(housekeeping(Arc::clone(&state)));
        if let Some(tls) = &tls {
            lifecycle.spawn_background(reload_certificates(
                tls.clone(),
                state.settings.tls_reload_interval,
                lifecycle.clone(),
            ));
        }

        let stop_accepting = {
            let lifecycle = lifecycle.clone();
            async move {
                lifecycle.draining().await;
                tokio::time::sleep(drain).await;
            }
        };
        let limits = ConnectionLimits {
            head_timeout: state.settings.http_request_timeout,
            write_timeout: state.settings.ws_write_timeout + WRITE_BACKSTOP_MARGIN,
            pending_per_ip: state.settings.max_pending_connections_per_ip,
            scarce_from: descriptors_scarce_from(),
            http2_max_streams: state.settings.http2_max_concurrent_streams,
        };
        let mut server = tokio::spawn(connections::serve(
            listener,
            router(Arc::clone(&state)),
            limits,
            tls,
            stop_accepting,
        ));

        tokio::select! {
            // Draining first: the server ends as a consequence of draining, and must not be
            // mistaken for an end of its own (which would skip closing the sessions).
            biased;
            () = lifecycle.draining() => {}
            _ = &mut server => {
                lifecycle.stop_background().await;
                return Ok(());
            }
        }
        let deadline = tokio::time::Instant::now() + shutdown_timeout;
        tracing::info!(
            drain_seconds = drain.as_secs_f64(),
            connections = state.hub.connection_count(),
            "shutting down: no longer ready"
        );
        // In-flight requests may not take the sessions' share of the budget: a stalled HTTP
        // client must not cost every WebSocket client its close frame.
        let requests_deadline = deadline - SESSION_CLOSE_BUDGET.min(shutdown_timeout / 2);
        let requests_done = async {
            tokio::time::sleep(drain).await;
            lifecycle.finish_requests().await;
        };
        if tokio::time::timeout_at(requests_deadline, requests_done)
            .await
            .is_err()
        {
            tracing::warn!("in-flight requests did not finish in time; closing sessions anyway");
        }
        if tokio::time::timeout_at(deadline, lifecycle.close_sessions())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = state.hub.connection_count(),
                "sessions did not all close before SHUTDOWN_TIMEOUT"
            );
        }
        state.broker.shutdown().await;
        // The webhooks the shutdown itself caused (departures) and those still queued get what
        // is left of the budget, up to WEBHOOK_DRAIN_LIMIT.
        state
            .webhooks
            .drain(deadline.min(tokio::time::Instant::now() + WEBHOOK_DRAIN_LIMIT))
            .await;
        if tokio::time::timeout_at(deadline, lifecycle.stop_background())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not all end before SHUTDOWN_TIMEOUT");
        }
        // What is left: SSE responses writing their last bytes, idle keep-alive connections.
        if tokio::time::timeout_at(deadline, &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// This node's hub and the broker that routes to it: a standalone hub behind the memory broker,
/// or a cluster node's hub behind the Redis broker (which then keeps the history and enforces
/// the per-user limit).
async fn build_broker(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    lifecycle: &Lifecycle,
    acks: &Arc<Acks>,
    webhooks: &Webhooks,
) -> io::Result<(Arc<Hub>, Arc<dyn Broker>)> {
    let mode = match settings.broker {
        BrokerKind::Memory => HubMode::Standalone {
            user_limit: UserLimit {
                per_user: settings.max_connections_per_user,
                policy: settings.user_limit_policy,
            },
            history: settings.history_limits(),
        },
        BrokerKind::Redis => HubMode::Cluster,
    };
    let hub = Arc::new(Hub::new(mode, settings.queue_limits(), Arc::clone(metrics)));
    let broker: Arc<dyn Broker> = match settings.broker {
        BrokerKind::Memory => Arc::new(MemoryBroker::new(
            Arc::clone(&hub),
            Arc::clone(acks),
            webhooks,
            settings.webhook_presence_grace,
            lifecycle,
        )),
        BrokerKind::Redis => Arc::new(
            RedisBroker::start(settings, Arc::clone(&hub), lifecycle, acks, webhooks)
                .await
                .map_err(|problem| io::Error::new(io::ErrorKind::InvalidInput, problem))?,
        ),
    };
    Ok((hub, broker))
}

/// Says at start-up what anyone who can reach the port may do, when that is a lot.
fn warn_about_open_access(state: &AppState) {
    if state.tokens.is_none() {
        tracing::warn!(
            "subscriber authentication is off (neither JWT_SECRET nor JWT_PUBLIC_KEY_FILE is set): \
             any client can read any user's messages by connecting with ?user_id=<id>"
        );
    }
    if state.publishers.is_none() {
        tracing::warn!(
            "PUSH_API_KEYS is not set: anyone who can reach this port can push to any user"
        );
    }
    if state.admins.is_none() {
        tracing::warn!(
            "ADMIN_API_KEYS is not set: whoever may push may also broadcast and disconnect users"
        );
    }
}

/// Background upkeep until the lifecycle stops it: reclaims expired history and forgets
/// rate-limit entries of clients gone quiet.
async fn housekeeping(state: SharedState) {
    let period = state.hub.history().map_or(HOUSEKEEPING_PERIOD, |history| {
        history.sweep_interval().min(HOUSEKEEPING_PERIOD)
    });
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.lifecycle.closing() => return,
            _ = ticks.tick() => {
                state.hub.sweep_history();
                if let Some(limit) = &state.connect_limit {
                    limit.forget_idle();
                }
                if let Some(limit) = &state.ack_limit {
                    limit.forget_idle();
                }
                if let Some(limit) = &state.push_limit {
                    limit.forget_idle();
                }
            }
        }
    }
}

/// Reloads the TLS certificate when its files change (checked every `interval`; never when it is
/// zero) and on SIGHUP, until the lifecycle stops it. A reload that fails keeps the certificate
/// in use and says why.
async fn reload_certificates(tls: Tls, interval: Duration, lifecycle: Lifecycle) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; TLS certificates reload on change only");
            None
        }
    };
    let mut ticks = tokio::time::interval(if interval.is_zero() {
        Duration::from_secs(86_400) // unused: the tick branch is off
    } else {
        interval
    });
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(hangups) => {
                    hangups.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = lifecycle.closing() => return,
            () = hangup => {}
            _ = ticks.tick(), if !interval.is_zero() => {}
        }
        match tls.reload() {
            Ok(Reloaded::Replaced { not_after }) => {
                let expires = chrono::DateTime::<chrono::Utc>::from(not_after)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                tracing::info!(%expires, "TLS certificate reloaded: new connections get the new one");
            }
            Ok(Reloaded::Unchanged) => {}
            Err(error) => {
                tracing::warn!(%error, "TLS certificate reload failed; keeping the current certificate");
            }
        }
    }
}

/// Longest a shutdown waits for the webhook queue to empty.
const WEBHOOK_DRAIN_LIMIT: Duration = Duration::from_secs(3);

/// Longest pause between two rounds of housekeeping.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(1);

/// The HTTP router: every endpoint of the [route table](routes::table) behind the checks its
/// access needs, then the body limit, panic containment and CORS.
pub fn router(state: SharedState) -> Router {
    let settings = &state.settings;
    let (mut public, mut publishing, mut administering, mut metrics) =
        (Router::new(), Router::new(), Router::new(), Router::new());
    for route in routes::table(settings) {
        let group = match route.access {
            Access::Public => &mut public,
            Access::Publisher => &mut publishing,
            Access::Admin => &mut administering,
            Access::Metrics => &mut metrics,
        };
        *group = std::mem::take(group).route(&route.path, route.handler);
    }
    let publishing = publishing.route_layer(middleware::from_fn_with_state(
        Arc::clone(&state),
        require_publisher,
    ));
    let administering = administering.route_layer(middleware::from_fn_with_state(
        Arc::clone(&state),
        require_admin,
    ));
    if !settings.metrics_public {
        metrics = metrics.route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_key,
        ));
    }
    public
        .merge(publishing)
        .merge(administering)
        .merge(metrics)
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            time_request,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            track_request,
        ))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(cors(&settings.cors_origins))
        .layer(middleware::from_fn(require_host))
        .with_state(state)
}

/// Times a request from its arrival at its route (the checks of its access included) to its
/// response head, for `http_request_duration_seconds`.
async fn time_request(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    if let Some(route) = route {
        let status = response.status().as_u16();
        (state.request_durations).observe(route.as_str(), status, started.elapsed());
    }
    response
}

/// Answers 400 to an HTTP/1.1 request without a `Host` header, and to any request with more than
/// one (RFC 9112 §3.2), on every route: the outermost layer, so no handler, CORS answer or
/// WebSocket upgrade sees such a request. HTTP/1.0 requests may omit it. An HTTP/2 request names
/// its host in `:authority` (RFC 9113 §8.3.1): it is given as `Host`, so that every check that
/// reads the host (origins, `ALLOWED_HOSTS`) reads it whatever the protocol.
async fn require_host(mut request: Request, next: Next) -> Response {
    if request.version() == Version::HTTP_2 && !request.headers().contains_key(header::HOST) {
        let authority = request
            .uri()
            .authority()
            .map(|authority| authority.as_str());
        if let Some(host) = authority.and_then(|host| HeaderValue::from_str(host).ok()) {
            request.headers_mut().insert(header::HOST, host);
        }
    }
    let hosts = request.headers().get_all(header::HOST).iter().count();
    let problem = match hosts {
        0 if request.version() == Version::HTTP_11 => "an HTTP/1.1 request must have a Host header",
        0 | 1 => return next.run(request).await,
        _ => "a request must not have more than one Host header",
    };
    (StatusCode::BAD_REQUEST, Json(json!({ "detail": problem }))).into_response()
}

/// Counts a request as in flight until its handler has answered (not while a streamed body is
/// still being written), so that shutdown can let pushes finish before closing sessions.
async fn track_request(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let _in_flight = state.lifecycle.track_request();
    next.run(request).await
}

/// CORS for the HTTP API. Preflights are answered; an origin not on the list gets no
/// `Access-Control-Allow-Origin`, so the browser blocks the response.
fn cors(origins: &CorsOrigins) -> CorsLayer {
    let allowed = match origins {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(
            list.iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        ),
    };
    CorsLayer::new()
        .allow_origin(allowed)
        .allow_methods(AllowMethods::mirror_request())
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(Duration::from_secs(600))
}

/// Binds `host:port` with a deep accept backlog, trying each address the host resolves to.
async fn bind(host: &str, port: u16) -> io::Result<TcpListener> {
    let mut last_error = None;
    for address in lookup_host((host, port)).await? {
        let socket = if address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(address)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )
    }))
}

/// The descriptor number from which the process is near its descriptor limit (the soft
/// `RLIMIT_NOFILE`, already raised to the hard one): the limit less a reserve of a 16th of it, at
/// least [`DESCRIPTOR_RESERVE_MIN`]. A connection accepted with a descriptor at or above it means
/// the idle HTTP connections should make room before `accept` fails.
fn descriptors_scarce_from() -> u64 {
    let (limit, _hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    limit.saturating_sub((limit / 16).max(DESCRIPTOR_RESERVE_MIN))
}

/// `MAX_CONNECTIONS`, or when it is 0, 90% of the file-descriptor limit (raised to the hard limit
/// first), keeping the rest for HTTP clients and the process itself.
fn effective_max_connections(configured: usize) -> usize {
    let descriptors = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let descriptors = usize::try_from(descriptors).unwrap_or(usize::MAX);
    if configured == 0 {
        return (descriptors / 10 * 9).clamp(1, crate::config::MAX_COUNT);
    }
    if configured > descriptors {
        tracing::warn!(
            max_connections = configured,
            descriptors,
            "MAX_CONNECTIONS is above the file-descriptor limit; accepting may fail before the limit"
        );
    }
    configured
}
