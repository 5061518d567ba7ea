//! The HTTP/1.1 WebSocket upgrade (RFC 6455 §4.2), done here rather than by axum's extractor so
//! that the session owns the upgraded socket itself: events are written to it directly (see
//! [`super::frames`]), without a copy in a per-connection buffer.
//!
//! The checks: 405 for a method other than GET; 426 for a request that does not ask for a
//! WebSocket (no `Upgrade: websocket`: a plain GET) or asks for a version other than 13 (none
//! included: drafts before RFC 6455 sent none), answered with `Upgrade: websocket` and
//! `Sec-WebSocket-Version: 13` (RFC 9110 §15.5.22, RFC 6455 §4.4); 400 for a WebSocket request
//! that is malformed (no `Connection: upgrade`, no `Sec-WebSocket-Key`); 426 too when the
//! connection cannot be upgraded (not HTTP/1.1).

use std::future::Future;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig};

/// An upgraded connection, read through tungstenite and written to directly.
pub(super) type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// A valid upgrade request, not yet answered.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request cannot be upgraded: its status and a message for the client.
#[derive(Debug)]
pub struct Refused {
    /// 405, 400 or 426.
    pub status: StatusCode,
    /// What was wrong.
    pub message: &'static str,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.message).into_response();
        advertise_upgrade(&mut response);
        response
    }
}

/// Adds to a 426 answer what the client must send instead: `Upgrade: websocket` (with the
/// `Connection: upgrade` that must accompany it) and the version this server speaks.
pub fn advertise_upgrade(response: &mut Response) {
    if response.status() != StatusCode::UPGRADE_REQUIRED {
        return;
    }
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Refused> {
        let refused = |status, message| Refused { status, message };
        if parts.method != Method::GET {
            return Err(refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request method must be `GET`",
            ));
        }
        let headers = &parts.headers;
        if !header_has_token(headers, header::UPGRADE, "websocket") {
            return Err(refused(
                StatusCode::UPGRADE_REQUIRED,
                "this endpoint is a WebSocket: send a handshake with `Upgrade: websocket`",
            ));
        }
        if !header_has_token(headers, header::CONNECTION, "upgrade") {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            ));
        }
        if !header_is(headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(refused(
                StatusCode::UPGRADE_REQUIRED,
                "`Sec-WebSocket-Version` must be 13",
            ));
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(refused(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header missing",
            ))?;
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or(refused(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        ))?;
        Ok(Self { key, on_upgrade })
    }
}

impl Upgrade {
    /// Answers 101 and, once hyper hands the connection over, runs `session` on it in a task of
    /// its own. A connection that fails to upgrade is logged and dropped.
    pub fn answer<F, Fut>(self, config: WebSocketConfig, session: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    let socket = Socket::from_raw_socket(io, Role::Server, Some(config)).await;
                    session(socket).await;
                }
                Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let accept = derive_accept_key(self.key.as_bytes());
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// Whether `name` equals `value`, ignoring ASCII case.
fn header_is(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|header| header.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// Whether the comma-separated `name` holds the token `value`, ignoring ASCII case.
fn header_has_token(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers.get_all(name).iter().any(|header| {
        header
            .as_bytes()
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(value.as_bytes()))
    })
}
