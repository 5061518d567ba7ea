//! Authentication and abuse limits against the real server: subscriber JWTs (HS256, RS256, ES256;
//! every bad case refused before the upgrade; expiry closing live connections), cross-user
//! isolation, publisher API keys, the Origin check, per-IP connect and per-key push rate limits,
//! the per-connection inbound frame rate, and what the real binary logs (never a credential).
//!
//! The RS256/ES256 keys in `tests/fixtures/jwt/` were made for these tests with `openssl genpkey`
//! (RSA 2048 and EC P-256, PKCS#8) and protect nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::SinkExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::HeaderMap;

use crate::helpers::{
    PROMPTLY, SseReader, TestApp, assert_silent, close_of, next_json, server_command, sigterm,
    spawn_app, start_process,
};

/// The HS256 secret of the servers that verify tokens with a secret.
const SECRET: &str = "auth-tests-hs256-secret-0123456789";
/// The `aud` and `iss` of the server that checks them.
const AUDIENCE: &str = "push-gateway";
const ISSUER: &str = "https://issuer.example";
/// Publisher keys (at least 16 characters each).
const KEY_1: &str = "first-publisher-key-0123456789";
const KEY_2: &str = "second-publisher-key-0123456789";
/// A key of the right form that is not configured.
const WRONG_KEY: &str = "not-a-configured-key-0123456789";
/// The challenge of a 401 without credentials, and the one for refused credentials.
const CHALLENGE: &str = r#"Bearer realm="websocket-sse-server""#;
const INVALID_TOKEN_CHALLENGE: &str =
    r#"Bearer realm="websocket-sse-server", error="invalid_token""#;

/// How long a client must stay quiet to count as having received nothing.
const QUIET: Duration = Duration::from_millis(300);

const RS256_PRIVATE: &[u8] = include_bytes!("../fixtures/jwt/rs256_private.pem");
const RS256_OTHER_PRIVATE: &[u8] = include_bytes!("../fixtures/jwt/rs256_other_private.pem");
const RS256_PUBLIC: &[u8] = include_bytes!("../fixtures/jwt/rs256_public.pem");
const ES256_PRIVATE: &[u8] = include_bytes!("../fixtures/jwt/es256_private.pem");
const ES256_OTHER_PRIVATE: &[u8] = include_bytes!("../fixtures/jwt/es256_other_private.pem");
const ES256_PUBLIC: &[u8] = include_bytes!("../fixtures/jwt/es256_public.pem");

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

// --- tokens -----------------------------------------------------------------------------------

/// Seconds since the Unix epoch, with the fraction.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// A whole-second timestamp `seconds` from now (negative: in the past).
fn in_seconds(seconds: i64) -> u64 {
    (unix_now() as i64 + seconds) as u64
}

fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(algorithm), claims, key).expect("token encodes")
}

fn hs256_with(secret: &[u8], claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(secret), claims)
}

/// An HS256 token signed with [`SECRET`].
fn hs256(claims: &Value) -> String {
    hs256_with(SECRET.as_bytes(), claims)
}

/// A valid HS256 token for `user`, good for five minutes.
fn token_for(user: &str) -> String {
    hs256(&json!({"sub": user, "exp": in_seconds(300)}))
}

fn rs256(private_pem: &[u8], claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(private_pem).expect("RSA test key");
    sign(Algorithm::RS256, &key, claims)
}

fn es256(private_pem: &[u8], claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(private_pem).expect("EC test key");
    sign(Algorithm::ES256, &key, claims)
}

/// base64url without padding, for hand-made tokens.
fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The unsigned (`alg: none`) token for these claims.
fn unsigned(claims: &Value) -> String {
    let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = base64url(claims.to_string().as_bytes());
    format!("{header}.{payload}.")
}

// --- SSE --------------------------------------------------------------------------------------

/// Opens a stream that must be accepted (200, `text/event-stream`) and reads its opening block.
async fn open_sse(app: &TestApp, query: &str, headers: &[(&str, &str)]) -> SseReader {
    let mut sse = SseReader::open(app, query, headers).await;
    let opening = sse.until("\n\n").await;
    assert!(opening.starts_with("retry: "), "{opening:?}");
    sse
}

// --- HTTP -------------------------------------------------------------------------------------

/// Asserts a 401 for a credential that was presented but refused, or for none at all.
fn assert_unauthorized(status: u16, headers: &HeaderMap, invalid_token: bool, what: &str) {
    assert_eq!(status, 401, "{what}");
    let challenge = headers
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: 401 without WWW-Authenticate"))
        .to_str()
        .expect("ASCII challenge");
    let expected = if invalid_token {
        INVALID_TOKEN_CHALLENGE
    } else {
        CHALLENGE
    };
    assert_eq!(challenge, expected, "{what}");
}

// --- 1. cross-user isolation ------------------------------------------------------------------

#[tokio::test]
async fn a_token_for_alice_never_receives_bobs_events_over_websocket() {
    let app = spawn_app(&["--jwt-secret", SECRET]).await;
    let alice_token = token_for("alice");

    let forbidden = app
        .refused(&format!("token={alice_token}&user_id=bob"), &[])
        .await;
    assert_eq!(forbidden.status, 403, "{forbidden:?}");
    assert!(forbidden.body.contains("sub"), "{forbidden:?}");
    let forbidden = app
        .refused(
            "user_id=bob",
            &[("authorization", &format!("Bearer {alice_token}"))],
        )
        .await;
    assert_eq!(forbidden.status, 403, "{forbidden:?}");

    let mut alice = app.upgraded(&format!("token={alice_token}"), &[]).await;
    // Naming the token's own user is fine.
    let mut alice_too = app
        .upgraded(&format!("token={alice_token}&user_id=alice"), &[])
        .await;
    // Bob is connected too, so the push to him is really delivered somewhere.
    let mut bob = app
        .upgraded(&format!("token={}", token_for("bob")), &[])
        .await;

    let to_bob = app.push_id("bob", "for-bob").await;
    assert_eq!(to_bob["delivered"], 1, "only bob's connection: {to_bob}");
    app.push_id("alice", "for-alice").await;
    // Per-connection order is kept, so had bob's event reached alice it would come first.
    for ws in [&mut alice, &mut alice_too] {
        let frame = next_json(ws).await;
        assert_eq!(frame["event_id"], "for-alice", "{frame}");
        assert_eq!(frame["user_id"], "alice", "{frame}");
        assert_silent(ws, QUIET).await;
    }
    assert_eq!(next_json(&mut bob).await["event_id"], "for-bob");
    let metrics = app.metrics().await;
    assert_eq!(
        metrics["connections_refused_total"]["forbidden"], 2,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_token_for_alice_never_receives_bobs_events_over_sse() {
    let app = spawn_app(&["--jwt-secret", SECRET]).await;
    let alice_token = token_for("alice");

    let response = app
        .sse_stream(&format!("token={alice_token}&user_id=bob"), &[])
        .await;
    assert_eq!(response.status(), 403, "a final refusal, not a stream");
    let mut alice = open_sse(&app, &format!("token={alice_token}"), &[]).await;

    app.push_id("bob", "for-bob").await;
    app.push_id("alice", "for-alice").await;
    let (id, frame) = alice.next_event().await;
    assert_eq!(id.as_deref(), Some("for-alice"), "{frame}");
    assert_eq!(frame["user_id"], "alice", "{frame}");
    alice.assert_quiet(QUIET).await;
}

// --- 2. bad tokens ----------------------------------------------------------------------------

/// A server that requires `aud` and `iss`.
const CHECKS_AUD_AND_ISS: [&str; 6] = [
    "--jwt-secret",
    SECRET,
    "--jwt-audience",
    AUDIENCE,
    "--jwt-issuer",
    ISSUER,
];

/// Valid claims for that server.
fn good_claims() -> Value {
    json!({"sub": "alice", "exp": in_seconds(300), "aud": AUDIENCE, "iss": ISSUER})
}

/// [`good_claims`] with some claims replaced, and those given as `null` removed.
fn claims_with(changes: Value) -> Value {
    let mut claims = good_claims();
    for (name, value) in changes.as_object().expect("an object") {
        if value.is_null() {
            claims.as_object_mut().expect("an object").remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401_before_the_upgrade() {
    let app = spawn_app(&CHECKS_AUD_AND_ISS).await;
    let good_claims = good_claims();
    let good = hs256(&good_claims);
    // The good token's signature on claims for bob.
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = base64url(claims_with(json!({"sub": "bob"})).to_string().as_bytes());
        parts.join(".")
    };
    let bad_tokens = [
        ("malformed", "not-a-jwt".to_owned()),
        ("three garbage segments", "abc.def.ghi".to_owned()),
        (
            "wrong signature",
            hs256_with(b"some-other-secret-0123456789", &good_claims),
        ),
        ("tampered claims", tampered),
        (
            "expired",
            hs256(&claims_with(json!({"exp": in_seconds(-60)}))),
        ),
        (
            "not yet valid",
            hs256(&claims_with(json!({"nbf": in_seconds(60)}))),
        ),
        (
            "wrong audience",
            hs256(&claims_with(json!({"aud": "another-service"}))),
        ),
        (
            "wrong issuer",
            hs256(&claims_with(json!({"iss": "https://evil.example"}))),
        ),
        ("no exp", hs256(&claims_with(json!({"exp": null})))),
        ("no sub", hs256(&claims_with(json!({"sub": null})))),
        ("alg none", unsigned(&good_claims)),
        (
            "HS384 with the same secret",
            sign(
                Algorithm::HS384,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                &good_claims,
            ),
        ),
        (
            "RS256 against an HS256 secret",
            rs256(RS256_PRIVATE, &good_claims),
        ),
    ];
    let mut refusals = 0;
    for (case, token) in &bad_tokens {
        let by_query = app.refused(&format!("token={token}"), &[]).await;
        let bearer = format!("Bearer {token}");
        let by_header = app.refused("", &[("authorization", &bearer)]).await;
        for (way, refusal) in [("?token=", by_query), ("Authorization", by_header)] {
            let what = format!("{case} via {way}: {refusal:?}");
            assert_unauthorized(refusal.status, &refusal.headers, true, &what);
            assert!(!refusal.body.contains(token.as_str()), "{what}");
            refusals += 1;
        }
        let response = app.sse_stream(&format!("token={token}"), &[]).await;
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        assert_unauthorized(status, &headers, true, &format!("{case} over SSE"));
        refusals += 1;
    }

    // No token at all: 401 with the bare challenge (no error="invalid_token").
    for (query, headers) in [
        ("", vec![]),
        ("token=", vec![]),
        ("user_id=alice", vec![]),
        ("", vec![("authorization", "Basic YWxpY2U6c2VjcmV0")]),
    ] {
        let refusal = app.refused(query, &headers).await;
        let what = format!("no token ({query:?}, {headers:?}): {refusal:?}");
        assert_unauthorized(refusal.status, &refusal.headers, false, &what);
        refusals += 1;
    }
    let response = app.sse_stream("user_id=alice", &[]).await;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    assert_unauthorized(status, &headers, false, "no token over SSE");
    refusals += 1;

    let metrics = app.metrics().await;
    // The expired token's three refusals have a label of their own.
    let refused = &metrics["connections_refused_total"];
    assert_eq!(refused["token_expired"], 3, "{metrics}");
    assert_eq!(refused["unauthorized"], refusals - 3, "{metrics}");
    assert_eq!(
        metrics["connections_opened_total"], 0,
        "nothing was registered: {metrics}"
    );

    // The good token is accepted either way.
    let mut by_query = app.upgraded(&format!("token={good}"), &[]).await;
    let mut by_header = app
        .upgraded("", &[("authorization", &format!("Bearer {good}"))])
        .await;
    let mut by_sse = open_sse(&app, "", &[("authorization", &format!("Bearer {good}"))]).await;
    app.push_id("alice", "hello").await;
    assert_eq!(next_json(&mut by_query).await["event_id"], "hello");
    assert_eq!(next_json(&mut by_header).await["event_id"], "hello");
    assert_eq!(by_sse.next_event().await.0.as_deref(), Some("hello"));
}

/// `JWT_AUDIENCE` and `JWT_ISSUER` name the `aud` and `iss` tokens "must carry" (`--help`): a token
/// that lacks them is no more acceptable than one with the wrong value.
#[tokio::test]
async fn tokens_without_the_configured_audience_or_issuer_are_refused() {
    let app = spawn_app(&CHECKS_AUD_AND_ISS).await;
    let mut accepted = Vec::new();
    for (case, claims) in [
        ("no aud", claims_with(json!({"aud": null}))),
        ("no iss", claims_with(json!({"iss": null}))),
        ("neither", claims_with(json!({"aud": null, "iss": null}))),
    ] {
        let token = hs256(&claims);
        let websocket = match app.handshake(&format!("token={token}"), &[]).await {
            Ok(_) => 101,
            Err(refusal) => refusal.status,
        };
        let sse = app
            .sse_stream(&format!("token={token}"), &[])
            .await
            .status()
            .as_u16();
        if (websocket, sse) != (401, 401) {
            accepted.push(format!(
                "{case} ({claims}): WebSocket {websocket}, SSE {sse}"
            ));
        }
    }
    assert!(accepted.is_empty(), "not refused with 401: {accepted:#?}");
}

/// A validly signed token whose `exp` is absurdly far away is answered like any other token (accepted,
/// or refused with 401), never with a server error.
#[tokio::test]
async fn a_token_with_an_absurd_expiry_is_not_a_server_error() {
    let app = spawn_app(&["--jwt-secret", SECRET]).await;
    let token = hs256(&json!({"sub": "far", "exp": u64::MAX}));
    let websocket = match app.handshake(&format!("token={token}"), &[]).await {
        Ok(_) => 101,
        Err(refusal) => refusal.status,
    };
    let sse = app
        .sse_stream(&format!("token={token}"), &[])
        .await
        .status()
        .as_u16();
    assert!(
        matches!((websocket, sse), (101, 200) | (401, 401)),
        "exp = u64::MAX: WebSocket {websocket}, SSE {sse}"
    );
}

// --- 3. RS256 and ES256 -----------------------------------------------------------------------

/// With a public key file: the matching private key's tokens are accepted; another key's, another
/// algorithm's, and an HS256 token "signed" with the public key itself (algorithm confusion) are
/// refused.
async fn check_public_key_server(
    public_file: &str,
    sign_good: impl Fn(&Value) -> String,
    sign_other_key: impl Fn(&Value) -> String,
    sign_other_algorithm: impl Fn(&Value) -> String,
    public_pem: &[u8],
) {
    let app = spawn_app(&["--jwt-public-key-file", &fixture(public_file)]).await;
    let claims = json!({"sub": "carol", "exp": in_seconds(300)});

    let mut ws = app
        .upgraded(&format!("token={}", sign_good(&claims)), &[])
        .await;
    app.push_id("carol", "signed").await;
    assert_eq!(next_json(&mut ws).await["event_id"], "signed");

    for (case, token) in [
        ("another key", sign_other_key(&claims)),
        ("another algorithm", sign_other_algorithm(&claims)),
        (
            "HS256 keyed with the public key",
            hs256_with(public_pem, &claims),
        ),
        ("HS256 with some secret", hs256(&claims)),
        ("alg none", unsigned(&claims)),
    ] {
        let refusal = app.refused(&format!("token={token}"), &[]).await;
        let what = format!("{public_file}, {case}: {refusal:?}");
        assert_unauthorized(refusal.status, &refusal.headers, true, &what);
    }
}

#[tokio::test]
async fn rs256_tokens_are_verified_with_the_public_key_file() {
    check_public_key_server(
        "rs256_public.pem",
        |claims| rs256(RS256_PRIVATE, claims),
        |claims| rs256(RS256_OTHER_PRIVATE, claims),
        |claims| es256(ES256_PRIVATE, claims),
        RS256_PUBLIC,
    )
    .await;
}

#[tokio::test]
async fn es256_tokens_are_verified_with_the_public_key_file() {
    check_public_key_server(
        "es256_public.pem",
        |claims| es256(ES256_PRIVATE, claims),
        |claims| es256(ES256_OTHER_PRIVATE, claims),
        |claims| rs256(RS256_PRIVATE, claims),
        ES256_PUBLIC,
    )
    .await;
}

// --- 4. expiry --------------------------------------------------------------------------------

/// A token for `user` that expires about two seconds from now (1.5 to 2.5 s: `exp` is whole
/// seconds); returns it and its expiry time.
fn short_lived_token(user: &str) -> (String, SystemTime) {
    let exp = (unix_now() + 2.0).round() as u64;
    let token = hs256(&json!({"sub": user, "exp": exp}));
    (token, UNIX_EPOCH + Duration::from_secs(exp))
}

/// Asserts that the server ended a connection at its token's expiry: not before it (beyond clock
/// granularity), not long after, and between 1 and 5 s after `connected`.
fn assert_ended_at_expiry(connected: Instant, expires: SystemTime) {
    let elapsed = connected.elapsed();
    let now = SystemTime::now();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed <= Duration::from_secs(5),
        "ended {elapsed:?} after connecting"
    );
    assert!(
        now + Duration::from_millis(100) >= expires,
        "ended {:?} before exp",
        expires.duration_since(now).unwrap_or_default()
    );
    assert!(
        now <= expires + Duration::from_millis(1500),
        "ended {:?} after exp",
        now.duration_since(expires).unwrap_or_default()
    );
}

#[tokio::test]
async fn a_token_past_exp_is_refused_even_within_the_clock_skew_leeway() {
    let app = spawn_app(&["--jwt-secret", SECRET]).await;
    // Two seconds past `exp`: inside the 5 s leeway on `nbf`, which `exp` does not get. Accepted,
    // the session's expiry timer would close it at once (an EventSource would cycle).
    let token = hs256(&json!({"sub": "skewed", "exp": in_seconds(-2)}));
    let refusal = app.refused(&format!("token={token}"), &[]).await;
    assert_unauthorized(refusal.status, &refusal.headers, true, "WebSocket");
    assert!(refusal.body.contains("expired"), "{}", refusal.body);
    let response = app.sse_stream(&format!("token={token}"), &[]).await;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    assert_unauthorized(status, &headers, true, "SSE");
    let metrics = app.metrics().await;
    assert_eq!(metrics["connections_opened_total"], 0, "{metrics}");
}

#[tokio::test]
async fn an_expiring_token_closes_the_websocket_with_4001_and_resuming_loses_nothing() {
    let app = spawn_app(&["--jwt-secret", SECRET]).await;
    let (token, expires) = short_lived_token("dave");
    let mut ws = app.upgraded(&format!("token={token}"), &[]).await;
    let connected = Instant::now();
    app.push_id("dave", "before").await;
    assert_eq!(next_json(&mut ws).await["event_id"], "before");

    let close = close_of(&mut ws).await;
    assert_ended_at_expiry(connected, expires);
    assert_eq!(close, Some((4001, "token expired".to_owned())));
    app.wait_for_metrics("token_expired counted", |m| {
        m["connections_closed_total"]["token_expired"] == 1
    })
    .await;

    let between = app.push_id("dave", "between").await;
    assert_eq!(between["delivered"], 0, "{between}");
    assert_eq!(between["stored"], true, "{between}");
    let fresh = token_for("dave");
    let mut ws = app
        .upgraded(&format!("token={fresh}&last_event_id=before"), &[])
        .await;
    let replayed = next_json(&mut ws).await;
    assert_eq!(replayed["event_id"], "between", "{replayed}");
    app.push_id("dave", "after").await;
    assert_eq!(next_json(&mut ws).await["event_id"], "after");
    assert_silent(&mut ws, QUIET).await;
}

#[tokio::test]
async fn an_expiring_token_ends_the_sse_stream_with_a_close_event_and_resuming_loses_nothing() {
    let app = spawn_app(&["--jwt-secret", SECRET]).await;
    let (token, expires) = short_lived_token("erin");
    let mut sse = open_sse(&app, &format!("token={token}"), &[]).await;
    let connected = Instant::now();
    app.push_id("erin", "before").await;
    assert_eq!(sse.next_event().await.0.as_deref(), Some("before"));

    let rest = sse.read_to_end().await;
    assert_ended_at_expiry(connected, expires);
    let close = rest
        .split("\n\n")
        .find(|block| block.contains("event: close"))
        .unwrap_or_else(|| panic!("no close event in {rest:?}"));
    assert!(
        !close.contains("id:"),
        "the close event keeps the resume point: {close:?}"
    );
    let data = close
        .lines()
        .find_map(|line| line.strip_prefix("data: "))
        .expect("the close event has data");
    let data: Value = serde_json::from_str(data).expect("JSON data");
    assert_eq!(
        data,
        json!({"event_type": "close", "reason": "token_expired"})
    );
    app.wait_for_metrics("token_expired counted", |m| {
        m["connections_closed_total"]["token_expired"] == 1
    })
    .await;

    app.push_id("erin", "between").await;
    let fresh = token_for("erin");
    let mut sse = open_sse(
        &app,
        &format!("token={fresh}"),
        &[("last-event-id", "before")],
    )
    .await;
    assert_eq!(sse.next_event().await.0.as_deref(), Some("between"));
    app.push_id("erin", "after").await;
    assert_eq!(sse.next_event().await.0.as_deref(), Some("after"));
}

// --- 5. API keys ------------------------------------------------------------------------------

#[tokio::test]
async fn pushes_need_one_of_the_api_keys_and_either_header_works() {
    let app = spawn_app(&["--push-api-keys", &format!("{KEY_1},{KEY_2}")]).await;
    let mut ws = app.connect("frank").await;
    let one = json!({"user_id": "frank", "data": {"n": 1}});
    let batch = json!([{"user_id": "frank", "data": {"n": 2}}]);
    let bearer_1 = format!("Bearer {KEY_1}");
    let bearer_wrong = format!("Bearer {WRONG_KEY}");

    let mut rejected = 0;
    for path in ["/sse/push", "/sse/push/batch"] {
        let body = if path == "/sse/push" { &one } else { &batch };
        for (headers, invalid_token) in [
            (vec![], false),
            (vec![("authorization", "Basic Zm9vOmJhcg==")], false),
            (vec![("authorization", bearer_wrong.as_str())], true),
            (vec![("x-api-key", WRONG_KEY)], true),
            // A prefix of a real key is not the key.
            (vec![("x-api-key", &KEY_1[..KEY_1.len() - 1])], true),
        ] {
            let reply = app.post_with(path, body, &headers).await;
            let what = format!("{path} with {headers:?}");
            assert_unauthorized(reply.status, &reply.headers, invalid_token, &what);
            rejected += 1;
        }
    }
    assert_silent(&mut ws, QUIET).await;

    // Rotation: either key, in either header.
    for headers in [
        [("authorization", bearer_1.as_str())],
        [("x-api-key", KEY_2)],
        [("x-api-key", KEY_1)],
        [("authorization", &format!("Bearer {KEY_2}"))],
    ] {
        let answer = app.push_with(one.clone(), &headers).await;
        assert_eq!(answer["delivered"], 1, "{answer}");
        assert_eq!(next_json(&mut ws).await["data"], json!({"n": 1}));
    }
    let reply = app
        .post_with("/sse/push/batch", &batch, &[("x-api-key", KEY_2)])
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(next_json(&mut ws).await["data"], json!({"n": 2}));

    for path in ["/health", "/ready", "/metrics"] {
        let reply = app.get(path, &[]).await;
        assert_eq!(reply.status, 200, "{path} stays open: {}", reply.text);
    }
    let metrics = app.metrics().await;
    assert_eq!(
        metrics["push_requests_rejected_total"]["unauthorized"], rejected,
        "{metrics}"
    );
    assert_eq!(metrics["events_accepted_total"], 5, "{metrics}");
}

#[tokio::test]
async fn private_metrics_need_an_api_key() {
    let app = spawn_app(&["--push-api-keys", KEY_1, "--metrics-public", "false"]).await;
    let reply = app.get("/metrics", &[]).await;
    assert_unauthorized(
        reply.status,
        &reply.headers,
        false,
        "/metrics without a key",
    );
    let reply = app.get("/metrics", &[("x-api-key", WRONG_KEY)]).await;
    assert_unauthorized(
        reply.status,
        &reply.headers,
        true,
        "/metrics with a wrong key",
    );
    for headers in [
        [("x-api-key", KEY_1)],
        [("authorization", &format!("Bearer {KEY_1}"))],
    ] {
        let reply = app.get("/metrics", &headers).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let metrics: Value = serde_json::from_str(&reply.text).expect("JSON metrics");
        assert!(metrics["active_connections"].is_number(), "{metrics}");
    }
    for path in ["/health", "/ready"] {
        let reply = app.get(path, &[]).await;
        assert_eq!(reply.status, 200, "{path} stays open: {}", reply.text);
    }
}

// --- 6. Origin --------------------------------------------------------------------------------

#[tokio::test]
async fn only_allowed_browser_origins_may_connect() {
    let app = spawn_app(&["--cors-origins", "https://app.example.com"]).await;

    for origin in [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "null",
    ] {
        // A browser (it sends Origin) is told by close code: it cannot see HTTP statuses.
        let (code, reason) = app
            .refused_by_close("user_id=u", &[("origin", origin)])
            .await;
        assert_eq!(code, 4403, "{origin}: {reason}");
        let response = app.sse_stream("user_id=u", &[("origin", origin)]).await;
        assert_eq!(response.status(), 403, "SSE from {origin}");
    }
    let mut allowed = app
        .upgraded("user_id=u", &[("origin", "https://app.example.com")])
        .await;
    let mut no_origin = app.upgraded("user_id=u", &[]).await;
    let mut sse_allowed =
        open_sse(&app, "user_id=u", &[("origin", "https://app.example.com")]).await;
    let mut sse_no_origin = open_sse(&app, "user_id=u", &[]).await;
    // The server's own pages (the web console) are same-origin: always allowed.
    let own_origin = format!("http://{}", app.addr);
    let mut same_origin = app
        .upgraded("user_id=u", &[("origin", own_origin.as_str())])
        .await;

    app.push_id("u", "welcome").await;
    assert_eq!(next_json(&mut same_origin).await["event_id"], "welcome");
    assert_eq!(next_json(&mut allowed).await["event_id"], "welcome");
    assert_eq!(next_json(&mut no_origin).await["event_id"], "welcome");
    assert_eq!(sse_allowed.next_event().await.0.as_deref(), Some("welcome"));
    assert_eq!(
        sse_no_origin.next_event().await.0.as_deref(),
        Some("welcome")
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metrics["connections_refused_total"]["forbidden"], 6,
        "{metrics}"
    );
}

// --- 7. rate limits ---------------------------------------------------------------------------

/// Makes `attempt`s as fast as it can until one is refused (`Some`), which it returns. The first
/// `burst` must be accepted, and no more than the burst plus what `per_second` refilled meanwhile
/// (so a slow machine does not make this flaky, and a limit that is not applied still fails).
async fn exhaust<T, F, Fut>(burst: u32, per_second: u32, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    let mut accepted = 0;
    loop {
        if let Some(refusal) = attempt().await {
            let refilled = (started.elapsed().as_secs_f64() * f64::from(per_second)).ceil() as u32;
            assert!(
                (burst..=burst + refilled).contains(&accepted),
                "{accepted} accepted before the first refusal; burst {burst}, refilled {refilled}"
            );
            return refusal;
        }
        accepted += 1;
        assert!(accepted <= burst + 20, "never refused");
    }
}

/// A WebSocket handshake with these headers: `None` when upgraded, its `Retry-After` when refused
/// with 429 (anything else fails the test).
async fn ws_attempt(app: &TestApp, headers: &[(&str, &str)]) -> Option<u64> {
    let refusal = app.handshake("user_id=u", headers).await.err()?;
    assert_eq!(refusal.status, 429, "{refusal:?}");
    let retry_after = refusal.retry_after();
    assert!((1..=2).contains(&retry_after), "{refusal:?}");
    Some(retry_after)
}

#[tokio::test]
async fn connection_attempts_are_limited_per_ip_and_recover() {
    let app = spawn_app(&["--connect-rate-per-ip", "2"]).await;
    let retry_after = exhaust(4, 2, || ws_attempt(&app, &[])).await;
    app.clock.advance(Duration::from_secs(retry_after));
    app.upgraded("user_id=u", &[]).await;
    let metrics = app.metrics().await;
    assert_eq!(
        metrics["connections_refused_total"]["rate_limited"], 1,
        "{metrics}"
    );
}

#[tokio::test]
async fn forwarded_for_gives_separate_budgets_only_behind_a_trusted_proxy() {
    // One attempt per second (a burst of 2): a refill during the test is unlikely.
    let flags = ["--connect-rate-per-ip", "1"];
    let first = [("x-forwarded-for", "203.0.113.1")];
    let second = [("x-forwarded-for", "203.0.113.2")];

    let trusting = spawn_app(&[&flags[..], &["--trusted-proxies", "127.0.0.1"]].concat()).await;
    exhaust(2, 1, || ws_attempt(&trusting, &first)).await;
    exhaust(2, 1, || ws_attempt(&trusting, &second)).await;

    let untrusting = spawn_app(&flags).await;
    exhaust(2, 1, || ws_attempt(&untrusting, &first)).await;
    let started = Instant::now();
    let other_client = ws_attempt(&untrusting, &second).await;
    if started.elapsed() < Duration::from_millis(500) {
        assert!(
            other_client.is_some(),
            "X-Forwarded-For from an untrusted peer was believed"
        );
    }
}

/// Exhausts one client's connect budget (a burst of 2 at one a second) while its address is
/// written differently on every attempt, in turn.
async fn exhaust_as(app: &TestApp, spellings: &[&'static str]) {
    let mut spellings = spellings.iter().copied().cycle();
    exhaust(2, 1, || {
        let spelling = spellings.next().expect("a spelling");
        async move { ws_attempt(app, &[("x-forwarded-for", spelling)]).await }
    })
    .await;
}

#[tokio::test]
async fn an_ipv6_client_is_its_network_and_every_spelling_of_an_address_is_one_client() {
    let flags = [
        "--connect-rate-per-ip",
        "1",
        "--trusted-proxies",
        "127.0.0.1",
    ];
    let app = spawn_app(&flags).await;
    // Three addresses of one /64 (one with a port): one budget.
    exhaust_as(
        &app,
        &[
            "2001:db8:1:2::1",
            "[2001:db8:1:2::2]:443",
            "2001:db8:1:2:ffff::3",
        ],
    )
    .await;
    // The next /64 is another client.
    let next_network = [("x-forwarded-for", "2001:db8:1:3::1")];
    assert_eq!(ws_attempt(&app, &next_network).await, None);
    // An IPv4 address, IPv4-mapped, with a port, and bracketed-mapped with a port: one client.
    exhaust_as(
        &app,
        &[
            "203.0.113.9",
            "::ffff:203.0.113.9",
            "203.0.113.9:5678",
            "[::ffff:203.0.113.9]:80",
        ],
    )
    .await;

    // RATE_LIMIT_IPV6_PREFIX=128 counts every address on its own.
    let app = spawn_app(&[&flags[..], &["--rate-limit-ipv6-prefix", "128"]].concat()).await;
    exhaust_as(&app, &["2001:db8:1:2::1"]).await;
    let neighbour = [("x-forwarded-for", "2001:db8:1:2::2")];
    assert_eq!(ws_attempt(&app, &neighbour).await, None);
}

#[tokio::test]
async fn pushes_without_keys_are_limited_per_client_network() {
    let app = spawn_app(&["--push-rate", "1", "--trusted-proxies", "127.0.0.1"]).await;
    let body = json!({"user_id": "g", "data": {}});
    let mut spellings = ["2001:db8:5::1", "[2001:db8:5::2]:8443", "2001:db8:5::3"]
        .into_iter()
        .cycle();
    let attempt = |spelling: &'static str| {
        let (app, body) = (&app, &body);
        async move {
            let reply = app
                .post_with("/sse/push", body, &[("x-forwarded-for", spelling)])
                .await;
            if reply.status == 200 {
                return None;
            }
            assert_eq!(reply.status, 429, "{spelling}");
            Some(())
        }
    };
    exhaust(2, 1, || attempt(spellings.next().expect("a spelling"))).await;
    assert_eq!(attempt("2001:db8:6::1").await, None, "another /64");
    assert_eq!(attempt("198.51.100.4").await, None, "an IPv4 client");
}

#[tokio::test]
async fn pushes_are_limited_per_key_and_recover() {
    let app = spawn_app(&[
        "--push-api-keys",
        &format!("{KEY_1},{KEY_2}"),
        "--push-rate",
        "2",
    ])
    .await;
    let one = json!({"user_id": "g", "data": {}});
    let batch = json!([{"user_id": "g", "data": {}}]);
    let key_1 = [("x-api-key", KEY_1)];
    // Single and batch pushes alternate: both take from the key's budget.
    let mut n = 0;
    let retry_after = exhaust(4, 2, || {
        n += 1;
        let (path, body) = if n % 2 == 1 {
            ("/sse/push", &one)
        } else {
            ("/sse/push/batch", &batch)
        };
        let app = &app;
        async move {
            let reply = app.post_with(path, body, &key_1).await;
            if reply.status == 200 {
                return None;
            }
            assert_eq!(reply.status, 429, "{path}");
            let retry_after: u64 = reply
                .header("retry-after")
                .expect("a Retry-After header")
                .parse()
                .expect("Retry-After in seconds");
            assert!((1..=2).contains(&retry_after), "{retry_after}");
            Some(retry_after)
        }
    })
    .await;

    // The other key has its own budget.
    app.push_with(
        one.clone(),
        &[("authorization", &format!("Bearer {KEY_2}"))],
    )
    .await;

    app.clock.advance(Duration::from_secs(retry_after));
    app.push_with(one.clone(), &key_1).await;
    let metrics = app.metrics().await;
    assert_eq!(
        metrics["push_requests_rejected_total"]["rate_limited"], 1,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_rate_limited_sse_client_is_told_to_come_back_after_the_wait() {
    // SSE_RETRY below the wait: the `retry:` hint must come from the rate limit.
    let app = spawn_app(&["--connect-rate-per-ip", "2", "--sse-retry", "0.1"]).await;
    let body = exhaust(4, 2, || {
        let app = &app;
        async move {
            let response = app.sse_stream("user_id=u", &[]).await;
            assert_eq!(
                response.status(),
                200,
                "an EventSource must come back: not 429"
            );
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            let mut sse = SseReader::new(response);
            let opening = sse.until("\n\n").await;
            if !opening.contains("too many") {
                // Accepted (the limit is on attempts, not on open streams).
                return None;
            }
            Some(opening + &sse.read_to_end().await)
        }
    })
    .await;
    let retry_after = ws_attempt(&app, &[]).await.expect("still limited");
    let retry: u64 = body
        .lines()
        .find_map(|line| line.strip_prefix("retry: "))
        .unwrap_or_else(|| panic!("no retry: line in {body:?}"))
        .parse()
        .expect("retry in milliseconds");
    assert!(
        retry >= retry_after * 1000,
        "retry: {retry} ms < Retry-After {retry_after} s"
    );
    assert!(
        body.contains("\n: too many connection attempts"),
        "{body:?}"
    );
    assert!(!body.contains("data:"), "no event: {body:?}");

    app.clock.advance(Duration::from_millis(retry));
    open_sse(&app, "user_id=u", &[]).await;
    let metrics = app.metrics().await;
    assert_eq!(
        metrics["connections_refused_total"]["rate_limited"], 2,
        "{metrics}"
    );
}

// --- 8. flooding client -----------------------------------------------------------------------

#[tokio::test]
async fn a_flooding_client_is_closed_with_1008_and_others_are_unaffected() {
    let app = spawn_app(&["--client-message-rate", "5"]).await;
    let mut calm = app.connect("calm").await;
    let mut flooder = app.connect("flooder").await;

    let flood = tokio::spawn(async move {
        for i in 0..100 {
            // After the server gave up on it, sending may fail; the close is what matters.
            if flooder
                .feed(Message::text(format!("frame {i}")))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = flooder.flush().await;
        close_of(&mut flooder).await
    });
    for n in 0..5 {
        let sent = Instant::now();
        app.push(json!({"user_id": "calm", "data": {"n": n}})).await;
        let frame = timeout(Duration::from_secs(1), next_json(&mut calm))
            .await
            .expect("the calm client receives promptly");
        assert_eq!(frame["data"]["n"], n, "{frame}");
        assert!(sent.elapsed() < Duration::from_secs(1));
    }
    let (code, reason) = timeout(PROMPTLY, flood)
        .await
        .expect("flood ends")
        .expect("flood task")
        .expect("a close frame");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("message rate"), "{reason}");

    app.push(json!({"user_id": "calm", "data": {"n": "after"}}))
        .await;
    assert_eq!(next_json(&mut calm).await["data"]["n"], "after");
    let metrics = app
        .wait_for_metrics("message_rate counted", |m| {
            m["connections_closed_total"]["message_rate"] == 1
        })
        .await;
    let handled = metrics["client_messages_total"].as_u64().expect("a count");
    assert!(
        (10..=15).contains(&handled),
        "about the burst of 10 was handled: {metrics}"
    );
    assert_eq!(metrics["active_connections"], 1, "{metrics}");
}

// --- 9. logs ----------------------------------------------------------------------------------

#[tokio::test]
async fn credentials_never_reach_the_log_even_at_debug_level() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut command = server_command(dir.path());
    command
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("LOG_LEVEL", "DEBUG")
        .env("JWT_SECRET", SECRET)
        .env("PUSH_API_KEYS", format!("{KEY_1},{KEY_2}"));
    let mut server = start_process(command).await;
    let app = TestApp::at(server.addr);

    let valid = token_for("logged-user");
    let header_token = token_for("logged-user-2");
    let invalid = hs256_with(
        b"not-the-secret-0123456789",
        &json!({"sub": "x", "exp": in_seconds(300)}),
    );
    let mut ws = app.upgraded(&format!("token={valid}"), &[]).await;
    let mut ws2 = app
        .upgraded("", &[("authorization", &format!("Bearer {header_token}"))])
        .await;
    let refusal = app.refused(&format!("token={invalid}"), &[]).await;
    assert_eq!(refusal.status, 401);
    let refusal = app
        .refused("", &[("authorization", &format!("Bearer {invalid}"))])
        .await;
    assert_eq!(refusal.status, 401);
    let response = app.sse_stream(&format!("token={invalid}"), &[]).await;
    assert_eq!(response.status(), 401);
    let mut sse = open_sse(&app, &format!("token={valid}"), &[]).await;

    let answer = app
        .push_with(
            json!({"user_id": "logged-user", "data": {}}),
            &[("authorization", &format!("Bearer {KEY_1}"))],
        )
        .await;
    assert_eq!(answer["delivered"], 2, "{answer}");
    let reply = app
        .post_with(
            "/sse/push",
            &json!({"user_id": "u", "data": {}}),
            &[("x-api-key", WRONG_KEY)],
        )
        .await;
    assert_eq!(reply.status, 401);
    next_json(&mut ws).await;
    sse.next_event().await;

    // DEBUG is really on: connections are logged, with their user.
    server
        .wait_for_log("with user=logged-user-2", |line| {
            line.contains("user=logged-user-2")
        })
        .await;
    ws.send(Message::Close(None)).await.expect("close");
    ws2.send(Message::Close(None)).await.expect("close");
    drop(sse);
    server
        .wait_for_log("about a disconnection", |line| {
            line.contains("disconnected")
        })
        .await;
    sigterm(&server.child);
    drop((ws, ws2));
    let status = timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("the process exits")
        .expect("wait");
    assert!(status.success(), "{status}");
    let mut stdout = String::new();
    if let Some(mut out) = server.child.stdout.take() {
        out.read_to_string(&mut stdout).await.expect("stdout");
    }

    let mut all = server.seen.clone();
    all.extend(server.rest_of_log().await);
    all.extend(stdout.lines().map(str::to_owned));
    let text = all.join("\n");
    assert!(text.contains("connected"), "{text}");
    let mut secrets = vec![
        SECRET.to_owned(),
        KEY_1.to_owned(),
        KEY_2.to_owned(),
        WRONG_KEY.to_owned(),
    ];
    for token in [&valid, &header_token, &invalid] {
        secrets.push(token.clone());
        // The claims and the signature, each on its own (the header part is the same for all).
        secrets.extend(token.split('.').skip(1).map(str::to_owned));
    }
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{secret:?} is in the log:\n{text}"
        );
    }
    // Both protections are on: no open-mode warning.
    assert!(!text.contains("any client can read"), "{text}");
    assert!(!text.contains("anyone who can reach this port"), "{text}");
}

#[tokio::test]
async fn open_mode_is_warned_about_at_start_up() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut command = server_command(dir.path());
    command.env("HOST", "127.0.0.1").env("PORT", "0");
    let mut server = start_process(command).await;
    let subscribers = server
        .wait_for_log("about open subscriptions", |line| {
            line.contains("any client can read any user's messages")
        })
        .await;
    let publishers = server
        .wait_for_log("about open pushes", |line| {
            line.contains("anyone who can reach this port can push")
        })
        .await;
    for line in [&subscribers, &publishers] {
        assert!(line.contains("| WARNING |"), "a warning: {line:?}");
    }
    assert!(subscribers.contains("JWT_SECRET"), "{subscribers:?}");
    assert!(publishers.contains("PUSH_API_KEYS"), "{publishers:?}");
}
