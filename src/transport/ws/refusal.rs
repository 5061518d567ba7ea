//! Handshake refusals a browser can see.
//!
//! A browser's WebSocket API reports every failed handshake as close code 1006 with no reason:
//! a page cannot tell an expired token from a forbidden origin, a rate limit or a network error,
//! so it can only retry blindly. A handshake that carries an `Origin` header (every browser sends
//! one; servers and command-line clients usually do not) is therefore refused *after* the
//! upgrade: the server answers 101 and closes at once with a private-use close code that mirrors
//! the HTTP status, and a short reason. The connection is never registered, receives nothing
//! else, and is counted as a refusal like the HTTP answer it replaces. A handshake without
//! `Origin` gets the HTTP status and JSON `detail` as before, and so does a browser's while
//! [`super::REFUSALS_IN_FLIGHT`] refusals are already being closed (a flood of refused handshakes
//! must not hold sockets without bound).
//!
//! | code | HTTP | what the client should do |
//! | --- | --- | --- |
//! | 4001 | 401, token past `exp` | get a fresh token, reconnect resuming (the same code as a live expiry) |
//! | 4400 | 400 | stop: the request is wrong (`user_id`, `last_event_id`) |
//! | 4401 | 401, other | stop: the token is missing or will not verify |
//! | 4403 | 403 | stop: origin not allowed, or `user_id` is not the token's |
//! | 4429 | 429 | back off (the reason says how long), then reconnect |
//! | 4503 | 503 | back off, then reconnect (here or another node) |

use axum::http::{HeaderMap, header};
use tungstenite::protocol::frame::CloseFrame;

use crate::error::ApiError;
use crate::metrics::Refusal;
use crate::protocol::Loc;

/// Longest close reason RFC 6455 allows: a close frame's payload is at most 125 bytes, two of
/// them the code.
const REASON_MAX_BYTES: usize = 123;

/// Whether a refused handshake should be answered with a close code rather than an HTTP status:
/// it comes from a browser (it carries `Origin`).
pub(super) fn visible_to_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN)
}

/// The close frame that refuses a browser's handshake for `refusal`, explained by `error`.
pub(super) fn close_frame(refusal: Refusal, error: &ApiError) -> CloseFrame {
    let reason = match (refusal, error) {
        // The words of a live expiry, so one handler serves both.
        (Refusal::TokenExpired, _) => "token expired".to_owned(),
        (_, ApiError::InvalidQuery(issues)) => issues.first().map_or_else(
            || error.to_string(),
            |issue| match issue.loc.last() {
                Some(Loc::Key(name)) => format!("{name}: {}", issue.msg),
                _ => issue.msg.to_string(),
            },
        ),
        (
            _,
            ApiError::TooManyRequests {
                retry_after_seconds,
                ..
            },
        ) => format!("too many connection attempts; retry after {retry_after_seconds} s"),
        _ => error.to_string(),
    };
    close(refusal, reason)
}

/// A close frame with `refusal`'s code and `reason` (cut to fit).
pub(super) fn close(refusal: Refusal, reason: String) -> CloseFrame {
    let code: u16 = match refusal {
        Refusal::TokenExpired => 4001,
        Refusal::BadRequest => 4400,
        Refusal::Unauthorized => 4401,
        Refusal::Forbidden => 4403,
        Refusal::RateLimited => 4429,
        Refusal::ServerFull | Refusal::ShuttingDown | Refusal::BrokerUnavailable => 4503,
        // Known only after attaching, for every client: the policy code, as for other limits.
        Refusal::UserLimit => 1008,
    };
    CloseFrame {
        code: code.into(),
        reason: clip(reason).into(),
    }
}

/// `text` cut to [`REASON_MAX_BYTES`] at a character boundary.
fn clip(mut text: String) -> String {
    if text.len() > REASON_MAX_BYTES {
        let mut end = REASON_MAX_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Issue;

    fn code_and_reason(refusal: Refusal, error: &ApiError) -> (u16, String) {
        let frame = close_frame(refusal, error);
        (frame.code.into(), frame.reason.to_string())
    }

    #[test]
    fn codes_mirror_the_http_status_and_reasons_are_short() {
        let unauthorized = |message: &str| ApiError::Unauthorized {
            message: message.to_owned(),
            invalid_token: true,
        };
        assert_eq!(
            code_and_reason(
                Refusal::TokenExpired,
                &unauthorized("the token has expired")
            ),
            (4001, "token expired".to_owned())
        );
        assert_eq!(
            code_and_reason(Refusal::Unauthorized, &unauthorized("bad signature")),
            (4401, "bad signature".to_owned())
        );
        let missing = ApiError::InvalidQuery(vec![Issue {
            loc: vec![Loc::Key("query"), Loc::Key("user_id")],
            msg: "Field required".into(),
            kind: "missing",
        }]);
        assert_eq!(
            code_and_reason(Refusal::BadRequest, &missing),
            (4400, "user_id: Field required".to_owned())
        );
        let limited = ApiError::TooManyRequests {
            message: "too many connection attempts from 192.0.2.1".into(),
            retry_after_seconds: 3,
        };
        assert_eq!(
            code_and_reason(Refusal::RateLimited, &limited),
            (
                4429,
                "too many connection attempts; retry after 3 s".to_owned()
            )
        );
        let full = ApiError::Overloaded("server is at its connection limit".into());
        assert_eq!(code_and_reason(Refusal::ServerFull, &full).0, 4503);
        let origin = ApiError::Forbidden(format!("origin {:?} is not allowed", "é".repeat(200)));
        let (code, reason) = code_and_reason(Refusal::Forbidden, &origin);
        assert_eq!(code, 4403);
        assert!(reason.len() <= REASON_MAX_BYTES && reason.starts_with("origin"));
    }

    #[test]
    fn only_requests_with_an_origin_are_refused_by_close_code() {
        let mut headers = HeaderMap::new();
        assert!(!visible_to_browser(&headers));
        headers.insert(header::ORIGIN, "https://app.example".parse().unwrap());
        assert!(visible_to_browser(&headers));
    }
}
