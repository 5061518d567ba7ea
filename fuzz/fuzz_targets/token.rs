//! Subscriber tokens and bearer credentials (`websocket_sse_server::auth`).
//!
//! The first byte picks what the rest is:
//! - even: an `Authorization` header value and a raw token. `bearer` must return trimmed,
//!   non-empty credentials taken from a `Bearer` header, and `TokenVerifier::verify` must refuse
//!   the raw token without panicking (nothing here knows the secret's signature).
//! - odd: a JWT header and claims, split at the first `\n`, which the target signs with the
//!   verifier's HS256 secret so that the verifier's header, claims and user id checks are reached
//!   past the signature. An accepted token must have used HS256, have a `sub` that is a valid
//!   user id and the claims' `sub`, an `exp` that is the claims' `exp`, and name the configured
//!   audience and issuer in `aud` and `iss`.

#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, UNIX_EPOCH};

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use websocket_sse_server::auth::{TokenVerifier, bearer};
use websocket_sse_server::config::Settings;
use websocket_sse_server::protocol::UserId;

const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret";
const AUDIENCE: &str = "push";
const ISSUER: &str = "fuzz";

static VERIFIER: LazyLock<TokenVerifier> = LazyLock::new(|| {
    let settings = Settings::from_flags([
        "websocket-sse-server",
        "--jwt-secret",
        SECRET,
        "--jwt-audience",
        AUDIENCE,
        "--jwt-issuer",
        ISSUER,
    ])
    .expect("settings parse");
    let verifier = TokenVerifier::from_settings(&settings).expect("a secret turns tokens on");
    // The accepting path must be reachable, or the checks below on accepted tokens check nothing.
    let good = sign(
        br#"{"alg":"HS256","typ":"JWT"}"#,
        br#"{"sub":"alice","exp":4102444800,"aud":"push","iss":"fuzz"}"#,
    );
    let subscriber = verifier
        .verify(&good)
        .expect("a well-signed token is accepted");
    assert_eq!(subscriber.user.as_str(), "alice");
    verifier
});

fn sign(header: &[u8], claims: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

fn check_bearer(raw: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(raw) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value);
    let Some(credentials) = bearer(&headers) else {
        return;
    };
    let text = headers[AUTHORIZATION]
        .to_str()
        .expect("bearer read it as text");
    let (scheme, rest) = text.split_once(' ').expect("a scheme and credentials");
    assert!(scheme.eq_ignore_ascii_case("bearer"), "{text:?}");
    assert!(!credentials.is_empty());
    assert_eq!(credentials, credentials.trim());
    assert_eq!(credentials, rest.trim());
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        check_bearer(rest);
        let token = String::from_utf8_lossy(rest);
        assert!(
            VERIFIER.verify(&token).is_err(),
            "unsigned input accepted: {token:?}"
        );
        return;
    }
    let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &b"{}"[..]),
    };
    let token = sign(header, claims);
    let Ok(subscriber) = VERIFIER.verify(&token) else {
        return;
    };
    // The verifier skips unknown fields without checking their strings' UTF-8, so accepted parts
    // may hold invalid UTF-8 inside strings: read them lossily (which never turns a string into
    // an expected value, as U+FFFD is in none).
    let (Some(header), Some(claims)) = (lossy_json(header), lossy_json(claims)) else {
        return;
    };
    assert_eq!(header["alg"], "HS256", "only the configured algorithm");
    let user = subscriber.user.as_str();
    assert!(UserId::parse(user).is_ok(), "{user:?}");
    assert_eq!(claims["sub"].as_str(), Some(user));
    let exp = claims["exp"].as_u64().expect("a numeric exp");
    assert_eq!(subscriber.expires_at, UNIX_EPOCH + Duration::from_secs(exp));
    // JWT_AUDIENCE and JWT_ISSUER are set: a token must name them (RFC 7519 4.1.1, 4.1.3).
    assert!(
        names(&claims["aud"], AUDIENCE),
        "accepted with aud {} (JWT_AUDIENCE={AUDIENCE})",
        claims["aud"]
    );
    assert!(
        names(&claims["iss"], ISSUER),
        "accepted with iss {} (JWT_ISSUER={ISSUER})",
        claims["iss"]
    );
});

fn lossy_json(bytes: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_str(&String::from_utf8_lossy(bytes)).ok()
}

/// Whether a claim is `expected` or a list holding it.
fn names(claim: &serde_json::Value, expected: &str) -> bool {
    match claim {
        serde_json::Value::String(value) => value == expected,
        serde_json::Value::Array(values) => values.iter().any(|value| value == expected),
        _ => false,
    }
}
