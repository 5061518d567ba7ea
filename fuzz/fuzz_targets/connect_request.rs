//! Arbitrary bytes as a connect request, split at `\n` (which none of the parts can contain on the
//! wire): the query string, then the `Last-Event-ID` header value, then the `Authorization` header
//! value. A header is set only when its part is present and a valid header value, as a real
//! request could carry nothing else.
//!
//! Beyond "no panic": an accepted request has a user id (when the query names one) of 1–256 bytes
//! without control characters, equal to the query's first decoded `user_id`; a resume point that
//! is absent or non-empty, at most 512 bytes, without control characters, taken from the header
//! when there is one; a token that is absent or non-empty, the bearer credentials when there are
//! some, else the query's `token`; each decoded strictly (a malformed escape or bytes that are not
//! UTF-8 are refused, never replaced). A refusal is located at `query.user_id`, `query.token`,
//! `query.last_event_id` or `header.Last-Event-ID`.

#![no_main]

use std::borrow::Cow;

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use websocket_sse_server::auth::bearer;
use websocket_sse_server::protocol::{Loc, USER_ID_MAX_BYTES, UserId};
use websocket_sse_server::transport::ConnectRequest;

/// Longest resume point accepted, in bytes (`transport::RESUME_FROM_MAX_BYTES`, private).
const RESUME_FROM_MAX_BYTES: usize = 512;

fn no_control(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

/// The first value of `name` in a form-encoded query, strictly decoded: `Err` when it does not
/// decode. Pairs whose name does not decode are not `name`. Written out here rather than calling
/// the server's decoder, so that it is checked.
fn first(query: &str, name: &str) -> Result<Option<String>, ()> {
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(key).as_deref() == Some(name) {
            return decode(value).map(|value| Some(value.into_owned())).ok_or(());
        }
    }
    Ok(None)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; `None` for a `%`
/// without two hex digits after it or bytes that are not UTF-8.
fn decode(text: &str) -> Option<Cow<'_, str>> {
    let bytes = text.as_bytes();
    if !bytes.iter().any(|b| matches!(b, b'+' | b'%')) {
        return Some(Cow::Borrowed(text));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let high = hex(*bytes.get(i + 1)?)?;
                let low = hex(*bytes.get(i + 2)?)?;
                out.push(high * 16 + low);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fuzz_target!(|input: &[u8]| {
    let mut parts = input.splitn(3, |&b| b == b'\n');
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let header = parts
        .next()
        .and_then(|raw| HeaderValue::from_bytes(raw).ok());
    let authorization = parts
        .next()
        .and_then(|raw| HeaderValue::from_bytes(raw).ok());
    let mut headers = HeaderMap::new();
    if let Some(value) = &header {
        headers.insert("last-event-id", value.clone());
    }
    if let Some(value) = authorization {
        headers.insert(AUTHORIZATION, value);
    }

    match ConnectRequest::from_parts(Some(&query), &headers) {
        Ok(request) => {
            let user = request.user.as_ref().map(UserId::as_str);
            if let Some(user) = user {
                assert!(
                    !user.is_empty() && user.len() <= USER_ID_MAX_BYTES,
                    "{user:?}"
                );
                assert!(no_control(user), "{user:?}");
            }
            let decoded = |name| first(&query, name).expect("accepted, so it decodes");
            assert_eq!(user, decoded("user_id").as_deref());
            let token = bearer(&headers)
                .map(str::to_owned)
                .or_else(|| decoded("token"))
                .filter(|token| !token.is_empty());
            assert_eq!(request.token, token);
            if let Some(from) = &request.resume_from {
                assert!(!from.is_empty());
                assert!(from.len() <= RESUME_FROM_MAX_BYTES, "{} bytes", from.len());
                assert!(no_control(from), "{from:?}");
            }
            let expected = match &header {
                Some(value) => Some(value.to_str().expect("accepted header is text").to_owned()),
                None => decoded("last_event_id"),
            };
            assert_eq!(
                request.resume_from,
                expected.filter(|from| !from.is_empty())
            );
            let position = decoded("position");
            assert_eq!(
                request.wants_position,
                matches!(position.as_deref(), Some("true" | "1")),
                "{position:?}"
            );
        }
        Err(issue) => {
            let keys: Vec<&str> = issue
                .loc
                .iter()
                .map(|loc| match loc {
                    Loc::Key(key) => *key,
                    Loc::Index(index) => panic!("no index in a connect refusal: {index}"),
                })
                .collect();
            assert!(
                matches!(
                    keys.as_slice(),
                    ["query", "user_id"]
                        | ["query", "token"]
                        | ["query", "last_event_id"]
                        | ["query", "position"]
                        | ["header", "Last-Event-ID"]
                ),
                "{issue:?}"
            );
            assert!(!issue.kind.is_empty() && !issue.msg.is_empty());
        }
    }
    // Also without the header, and with no query at all: never a panic.
    let _ = ConnectRequest::from_parts(Some(&query), &HeaderMap::new());
    let _ = ConnectRequest::from_parts(None, &headers);
});
