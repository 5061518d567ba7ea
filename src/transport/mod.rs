//! Client-facing transports: how connected clients receive their users' events.
//!
//! A transport owns one client session from handshake to close: it checks the request, attaches
//! the connection through the broker (replaying what a resuming client missed), writes the
//! connection's outbox to the client and ends the session for the right reason. It never decides
//! routing; the hub and broker do. What both transports do the same way lives here: who the
//! client is, where it resumes from, and whether the server can take it ([`authorize`]);
//! attaching ([`attach`]); and the [`session`] core that runs every connection, each transport
//! providing only its [`Link`](session::Link).

pub mod ack;
mod session;
pub mod sse;
pub mod ws;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::SystemTime;

use axum::http::HeaderMap;
use tokio::sync::OwnedSemaphorePermit;

use crate::auth::{TokenError, bearer};
use crate::broker::AttachError;
use crate::error::ApiError;
use crate::hub::Attached;
use crate::metrics::Refusal;
use crate::origin::check_origin;
use crate::protocol::{Issue, Loc, Transport, UserId, percent};
use crate::rate_limit::client_ip;
use crate::state::AppState;

/// Payloads at least this large are written from their shared bytes, referenced in place; smaller
/// ones are copied into the connection's write (one buffer per batch, freed after the write).
const SHARE_FROM_BYTES: usize = 4096;

/// Longest resume point a client may send, in bytes: event ids are at most 128 characters, and
/// position tokens are shorter.
const RESUME_FROM_MAX_BYTES: usize = 512;

/// What a client asks for when it connects.
#[derive(Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The user whose events it wants (`?user_id=`; optional when it presents a token).
    pub user: Option<UserId>,
    /// Its subscriber token (`Authorization: Bearer`, else `?token=`), when it presents one.
    pub token: Option<String>,
    /// The `event_id` (or position token) of the last event it received, if it resumes.
    pub resume_from: Option<String>,
    /// Whether a fresh WebSocket connection is told its stream's position first (`?position=true`):
    /// what an SSE stream's opening `id:` tells, so that a client that drops before its first
    /// event still resumes without a gap.
    pub wants_position: bool,
}

impl ConnectRequest {
    /// Reads `user_id`, the token and the resume point from a request: the `Last-Event-ID` header
    /// (what an EventSource sends when it reconnects) wins over the `last_event_id` query parameter
    /// (which stays in a reconnecting EventSource's URL). An empty resume point means a fresh
    /// start. Only the form of each is checked here; whether the user may connect is
    /// [`authorize`]'s business.
    pub fn from_parts(query: Option<&str>, headers: &HeaderMap) -> Result<Self, Issue> {
        let query = query.unwrap_or_default();
        // Strictly decoded: a value that is not percent-encoded UTF-8 is refused, naming it.
        let find = |loc: [&'static str; 2]| {
            percent::query_value(query, loc[1])
                .map_err(|error| issue(loc, error.to_string().into(), "value_error"))
        };
        let user = find(USER_ID_LOC)?
            .map(|raw| {
                UserId::parse(&raw).map_err(|error| issue(USER_ID_LOC, error.msg, error.kind))
            })
            .transpose()?;
        let token = match bearer(headers) {
            Some(token) => Some(token.to_owned()),
            None => find(TOKEN_LOC)?.map(Cow::into_owned),
        }
        .filter(|token| !token.is_empty());
        let wants_position = match find(POSITION_LOC)?.as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(_) => {
                let msg = "Input should be a valid boolean (true or false)".into();
                return Err(issue(POSITION_LOC, msg, "bool_parsing"));
            }
        };
        let (from, loc) = match headers.get("last-event-id") {
            Some(value) => {
                let text = value.to_str().map_err(|_| {
                    let msg = "Header must be visible ASCII text".into();
                    issue(LAST_EVENT_ID_HEADER_LOC, msg, "value_error")
                })?;
                (text.to_owned(), LAST_EVENT_ID_HEADER_LOC)
            }
            None => match find(LAST_EVENT_ID_QUERY_LOC)? {
                Some(value) => (value.into_owned(), LAST_EVENT_ID_QUERY_LOC),
                None => {
                    return Ok(Self {
                        user,
                        token,
                        resume_from: None,
                        wants_position,
                    });
                }
            },
        };
        if from.len() > RESUME_FROM_MAX_BYTES {
            let msg = format!("String should have at most {RESUME_FROM_MAX_BYTES} bytes");
            return Err(issue(loc, msg.into(), "string_too_long"));
        }
        if from.chars().any(char::is_control) {
            let msg = "String must not contain control characters".into();
            return Err(issue(loc, msg, "value_error"));
        }
        let resume_from = Some(from).filter(|from| !from.is_empty());
        Ok(Self {
            user,
            token,
            resume_from,
            wants_position,
        })
    }
}

/// A client let in: who it is, where it resumes, until when, and the connection slot it holds.
#[derive(Debug)]
pub struct Admission {
    /// Its user (the token's `sub`, or `?user_id=` in open mode).
    pub user: UserId,
    /// Where it resumes, if it does.
    pub resume_from: Option<String>,
    /// Whether it asked to be told its stream's position ([`ConnectRequest::wants_position`]).
    pub wants_position: bool,
    /// When its token expires (the connection is closed then); `None` in open mode.
    pub expires_at: Option<SystemTime>,
    /// Its `MAX_CONNECTIONS` slot, held until the session ends.
    pub slot: OwnedSemaphorePermit,
}

/// Decides whether a WebSocket or SSE client may connect, in this order: a well-formed request
/// (400), an allowed browser origin (403), the per-IP connection rate (429), its identity — a
/// valid token whose `sub` matches any `user_id` (401, 403), or `user_id` in open mode (400) —
/// and room on the server (503).
pub fn authorize(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Admission, (Refusal, ApiError)> {
    let request = ConnectRequest::from_parts(query, headers)
        .map_err(|issue| (Refusal::BadRequest, ApiError::InvalidQuery(vec![issue])))?;
    let settings = &state.settings;
    check_origin(&settings.cors_origins, &settings.allowed_hosts, headers)
        .map_err(|refused| (Refusal::Forbidden, refused.into()))?;
    if let Some(limit) = &state.connect_limit {
        let ip = client_ip(peer, headers, &state.settings.trusted_proxies);
        limit.check(&ip).map_err(|retry| {
            let error = ApiError::TooManyRequests {
                message: format!(
                    "too many connection attempts from {ip} (CONNECT_RATE_PER_IP={}); retry \
                     after {} s",
                    state.settings.connect_rate_per_ip,
                    retry.seconds()
                ),
                retry_after_seconds: retry.seconds(),
            };
            (Refusal::RateLimited, error)
        })?;
    }
    let (user, expires_at) = identify(state, request.user, request.token.as_deref())?;
    let slot = admit(state)?;
    Ok(Admission {
        user,
        resume_from: request.resume_from,
        wants_position: request.wants_position,
        expires_at,
        slot,
    })
}

/// Who a request from a client is, by the same rules as a connection (`user_id` in open mode;
/// the token, from `Authorization: Bearer` or `?token=`, when tokens are on) and from an allowed
/// origin; without the connection's rate limit or slot. For requests a connected client makes
/// besides its stream (an SSE client's acknowledgements).
pub fn identify_client(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<UserId, ApiError> {
    let request = ConnectRequest::from_parts(query, headers)
        .map_err(|issue| ApiError::InvalidQuery(vec![issue]))?;
    let settings = &state.settings;
    check_origin(&settings.cors_origins, &settings.allowed_hosts, headers)?;
    let (user, _) =
        identify(state, request.user, request.token.as_deref()).map_err(|(_, error)| error)?;
    Ok(user)
}

/// The client's user: from its token when tokens are on, else from `user_id`.
fn identify(
    state: &AppState,
    claimed: Option<UserId>,
    token: Option<&str>,
) -> Result<(UserId, Option<SystemTime>), (Refusal, ApiError)> {
    let Some(verifier) = &state.tokens else {
        let user = claimed.ok_or_else(|| {
            let missing = issue(USER_ID_LOC, "Field required".into(), "missing");
            (Refusal::BadRequest, ApiError::InvalidQuery(vec![missing]))
        })?;
        return Ok((user, None));
    };
    let unauthorized = |error: TokenError| {
        let refusal = if error == TokenError::Expired {
            Refusal::TokenExpired
        } else {
            Refusal::Unauthorized
        };
        let error = ApiError::Unauthorized {
            message: error.to_string(),
            invalid_token: error != TokenError::Missing,
        };
        (refusal, error)
    };
    let token = token.ok_or_else(|| unauthorized(TokenError::Missing))?;
    if token.len() > TOKEN_MAX_BYTES {
        return Err(unauthorized(TokenError::Invalid));
    }
    let subscriber = verifier.verify(token).map_err(unauthorized)?;
    if let Some(claimed) = claimed
        && claimed != subscriber.user
    {
        let error = ApiError::Forbidden(
            "user_id does not match the token's subject (sub); omit user_id or pass the token's"
                .into(),
        );
        return Err((Refusal::Forbidden, error));
    }
    Ok((subscriber.user, Some(subscriber.expires_at)))
}

/// Longest token accepted, in bytes: real ones are well under 2 KiB.
const TOKEN_MAX_BYTES: usize = 8 * 1024;

const USER_ID_LOC: [&str; 2] = ["query", "user_id"];
const TOKEN_LOC: [&str; 2] = ["query", "token"];
const LAST_EVENT_ID_QUERY_LOC: [&str; 2] = ["query", "last_event_id"];
const LAST_EVENT_ID_HEADER_LOC: [&str; 2] = ["header", "Last-Event-ID"];
const POSITION_LOC: [&str; 2] = ["query", "position"];

fn issue(loc: [&'static str; 2], msg: Cow<'static, str>, kind: &'static str) -> Issue {
    Issue {
        loc: loc.into_iter().map(Loc::Key).collect(),
        msg,
        kind,
    }
}

/// Whether the server can take one more connection now: not shutting down, and a
/// `MAX_CONNECTIONS` slot free (held by the session until it ends).
fn admit(state: &AppState) -> Result<OwnedSemaphorePermit, (Refusal, ApiError)> {
    if state.lifecycle.is_draining() {
        let error = ApiError::Overloaded("server is shutting down; connect to another node".into());
        return Err((Refusal::ShuttingDown, error));
    }
    state
        .connection_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            let message = format!(
                "server is at its connection limit (MAX_CONNECTIONS={}); retry later or elsewhere",
                state.max_connections
            );
            (Refusal::ServerFull, ApiError::Overloaded(message))
        })
}

/// Attaches a new connection of `user` through the broker (see
/// [`Broker::attach`](crate::broker::Broker::attach)), and counts how its resume went: the one
/// place where resumes are counted, whatever the transport and the broker.
async fn attach(
    state: &AppState,
    user: UserId,
    transport: Transport,
    resume_from: Option<&str>,
    want_head: bool,
) -> Result<Attached, AttachError> {
    let attached = state
        .broker
        .attach(user, transport, resume_from, want_head)
        .await?;
    if let Some(resumed) = attached.resumed {
        state.metrics.resumed(resumed);
    }
    Ok(attached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn parse(query: &str, last_event_id: Option<&'static str>) -> Result<ConnectRequest, Issue> {
        let mut headers = HeaderMap::new();
        if let Some(value) = last_event_id {
            headers.insert("last-event-id", HeaderValue::from_static(value));
        }
        ConnectRequest::from_parts(Some(query), &headers)
    }

    #[test]
    fn user_id_is_read_decoded_and_validated() {
        assert_eq!(
            parse("user_id=test123", None)
                .unwrap()
                .user
                .unwrap()
                .as_str(),
            "test123"
        );
        assert_eq!(
            parse("a=1&user_id=a%20b", None)
                .unwrap()
                .user
                .unwrap()
                .as_str(),
            "a b"
        );
        let nothing = ConnectRequest::from_parts(None, &HeaderMap::new()).unwrap();
        assert_eq!(
            (nothing.user, nothing.token),
            (None, None),
            "authorize decides"
        );
        assert_eq!(
            parse("user_id=", None).unwrap_err().kind,
            "string_too_short"
        );
        assert_eq!(
            parse("user_id=a%0Ab", None).unwrap_err().kind,
            "value_error"
        );
    }

    #[test]
    fn parameters_that_are_not_percent_encoded_utf8_are_refused_by_name() {
        for (query, name) in [
            ("user_id=%FF%FE", "user_id"),
            ("user_id=a%ZZ", "user_id"),
            ("user_id=u&token=%FF", "token"),
            ("user_id=u&last_event_id=%FE", "last_event_id"),
        ] {
            let issue = parse(query, None).unwrap_err();
            assert_eq!(issue.loc, [Loc::Key("query"), Loc::Key(name)], "{query}");
            assert_eq!(issue.kind, "value_error", "{query}");
        }
        // Ignored parameters are not checked.
        assert!(parse("user_id=u&other=%FF", None).is_ok());
    }

    #[test]
    fn the_header_beats_the_query_and_empty_means_fresh() {
        let request = parse("user_id=u&last_event_id=from-query", Some("from-header")).unwrap();
        assert_eq!(request.resume_from.as_deref(), Some("from-header"));
        let request = parse("user_id=u&last_event_id=from%20query", None).unwrap();
        assert_eq!(request.resume_from.as_deref(), Some("from query"));
        assert_eq!(
            parse("user_id=u&last_event_id=", None).unwrap().resume_from,
            None
        );
        assert_eq!(parse("user_id=u", Some("")).unwrap().resume_from, None);
        let long = format!("user_id=u&last_event_id={}", "x".repeat(513));
        let issue = parse(&long, None).unwrap_err();
        assert_eq!(issue.kind, "string_too_long");
        assert_eq!(issue.loc, [Loc::Key("query"), Loc::Key("last_event_id")]);
    }

    #[test]
    fn position_is_a_boolean_named_when_it_is_not_one() {
        assert!(!parse("user_id=u", None).unwrap().wants_position);
        assert!(
            parse("user_id=u&position=true", None)
                .unwrap()
                .wants_position
        );
        assert!(parse("user_id=u&position=1", None).unwrap().wants_position);
        assert!(
            !parse("user_id=u&position=false", None)
                .unwrap()
                .wants_position
        );
        let issue = parse("user_id=u&position=yes", None).unwrap_err();
        assert_eq!(issue.loc, [Loc::Key("query"), Loc::Key("position")]);
        assert_eq!(issue.kind, "bool_parsing");
    }
}
