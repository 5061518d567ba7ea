//! Who may publish and who may subscribe.
//!
//! **Publishers** present an API key (`PUSH_API_KEYS`, several for rotation) as
//! `Authorization: Bearer <key>` or `X-API-Key: <key>`. Keys are kept only as SHA-256 digests and
//! a presented key is hashed and compared with every digest in constant time, so neither timing
//! nor an early exit tells how much of a guess was right.
//!
//! **Subscribers** (WebSocket and SSE clients) present a JWT when `JWT_SECRET` (HS256) or
//! `JWT_PUBLIC_KEY_FILE` (RS256 or ES256) is set: `?token=` (browsers cannot set headers on a
//! WebSocket or EventSource) or `Authorization: Bearer`. Only the configured algorithm is
//! accepted (never `none`), `exp` is required, `nbf`, `aud` and `iss` are checked, and the token's
//! `sub` is the user. Without either setting the server runs in the seed's open mode: the user is
//! whatever `?user_id=` says.
//!
//! This module only decides; the transports and the API turn its answers into responses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ApiKeys, Settings};
use crate::protocol::UserId;

/// Clock skew tolerated on `nbf`, in seconds: a token fresh from an issuer whose clock runs
/// ahead of this server's is accepted. `exp` gets none: a token is valid until its `exp` exactly,
/// at the handshake as during the connection (whose expiry timer fires at `exp`), so a token the
/// handshake accepts is never closed at once for having expired.
const LEEWAY_SECONDS: u64 = 5;

/// The publisher API keys, as digests.
#[derive(Debug, Clone)]
pub struct PublisherKeys {
    digests: Vec<[u8; 32]>,
}

/// Which configured key a publisher presented (its position in `PUSH_API_KEYS`), for per-key
/// rate limits. Never the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub usize);

impl PublisherKeys {
    /// The keys to accept.
    pub fn new(keys: &ApiKeys) -> Self {
        let digests = keys.0.iter().map(|key| digest(key.expose())).collect();
        Self { digests }
    }

    /// Checks the key presented in `headers`. Every configured key is compared, whatever matches.
    pub fn verify(&self, headers: &HeaderMap) -> Result<KeyId, KeyError> {
        let presented = presented_key(headers).ok_or(KeyError::Missing)?;
        let presented = digest(presented);
        let mut found = None;
        for (index, candidate) in self.digests.iter().enumerate() {
            if bool::from(candidate.ct_eq(&presented)) {
                found = Some(KeyId(index));
            }
        }
        found.ok_or(KeyError::Wrong)
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The key a publisher presented: `Authorization: Bearer <key>`, else `X-API-Key: <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    bearer(headers).or_else(|| headers.get("x-api-key")?.to_str().ok())
}

/// The credentials of an `Authorization: Bearer …` header, if there is one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
        .filter(|credentials| !credentials.is_empty())
}

/// Why a publisher was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key in the request.
    #[error("an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>")]
    Missing,
    /// A key that is not one of `PUSH_API_KEYS`.
    #[error("the API key is not valid")]
    Wrong,
}

/// Verifies subscriber tokens.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

/// A verified subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    /// The token's `sub`.
    pub user: UserId,
    /// When the token expires (its `exp`): the connection is closed then.
    pub expires_at: SystemTime,
}

/// The claims this server reads.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

impl TokenVerifier {
    /// The verifier the settings ask for, or `None` in open mode. The public key was read and
    /// checked with the settings ([`crate::config::JwtPublicKey`]); its type is the algorithm.
    pub fn from_settings(settings: &Settings) -> Option<Self> {
        let (key, algorithm) = if let Some(secret) = &settings.jwt_secret {
            (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
            )
        } else if let Some(public) = &settings.jwt_public_key_file {
            (public.key.clone(), public.algorithm)
        } else {
            return None;
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        // A configured audience or issuer must be present in the token, not only right if present.
        let mut required = vec!["exp", "sub"];
        match &settings.jwt_audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &settings.jwt_issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Some(Self { key, validation })
    }

    /// Verifies a token and returns its subscriber.
    pub fn verify(&self, token: &str) -> Result<Subscriber, TokenError> {
        // The header first, so that a claims error below is about the claims. An unknown `alg`
        // (`none` included) does not parse.
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(TokenError::WrongAlgorithm);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|error| TokenError::from_kind(error.kind()))?;
        let user = UserId::parse(&data.claims.sub).map_err(|_| TokenError::InvalidSubject)?;
        let expires_at = UNIX_EPOCH
            .checked_add(Duration::from_secs(data.claims.exp))
            .ok_or(TokenError::MissingClaim)?;
        // jsonwebtoken's leeway covers `exp` too; here `exp` is exact (see `LEEWAY_SECONDS`).
        if remaining(expires_at).is_zero() {
            return Err(TokenError::Expired);
        }
        Ok(Subscriber { user, expires_at })
    }
}

/// Why a subscriber token was refused. The messages never include the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token in the request.
    #[error("a token is required: pass ?token=<jwt> or Authorization: Bearer <jwt>")]
    Missing,
    /// Not a JWT, or its signature does not verify.
    #[error("the token is malformed or its signature is not valid")]
    Invalid,
    /// Signed with another algorithm than the configured one (or `none`).
    #[error("the token's algorithm is not accepted")]
    WrongAlgorithm,
    /// Past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// Before its `nbf`.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// Wrong `aud`.
    #[error("the token's audience (aud) is not accepted")]
    WrongAudience,
    /// Wrong `iss`.
    #[error("the token's issuer (iss) is not accepted")]
    WrongIssuer,
    /// Claims that are not an object with a numeric `exp` and a string `sub`.
    #[error(
        "the token's claims are invalid: it needs a numeric exp, a string sub, and the configured aud and iss"
    )]
    MissingClaim,
    /// `sub` is not a valid user id.
    #[error("the token's sub is not a valid user id")]
    InvalidSubject,
}

impl TokenError {
    fn from_kind(kind: &ErrorKind) -> Self {
        match kind {
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Self::WrongAlgorithm,
            ErrorKind::MissingRequiredClaim(_)
            | ErrorKind::InvalidClaimFormat(_)
            | ErrorKind::Json(_) => Self::MissingClaim,
            _ => Self::Invalid,
        }
    }
}

/// How long until `expires_at`, or zero when it has passed.
pub fn remaining(expires_at: SystemTime) -> Duration {
    expires_at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    fn settings(extra: &[&str]) -> Settings {
        let mut args = vec!["websocket-sse-server"];
        args.extend_from_slice(extra);
        Settings::from_flags(args).unwrap()
    }

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_static(value));
        headers
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs256(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn api_keys_are_checked_from_either_header_and_all_rotated_keys_work() {
        let keys = ApiKeys::parse("first-key-0123456789, second-key-0123456789").unwrap();
        let keys = PublisherKeys::new(&keys);
        let bearer = headers("authorization", "Bearer second-key-0123456789");
        assert_eq!(keys.verify(&bearer), Ok(KeyId(1)));
        let header = headers("x-api-key", "first-key-0123456789");
        assert_eq!(keys.verify(&header), Ok(KeyId(0)));
        let wrong = headers("authorization", "Bearer first-key-012345678");
        assert_eq!(keys.verify(&wrong), Err(KeyError::Wrong));
        let basic = headers("authorization", "Basic first-key-0123456789");
        assert_eq!(keys.verify(&basic), Err(KeyError::Missing));
        assert_eq!(keys.verify(&HeaderMap::new()), Err(KeyError::Missing));
    }

    #[test]
    fn keys_are_held_as_digests_and_never_printed() {
        let key = "secret-key-0123456789";
        let jwt_secret = "jwt-secret-value-0123456789abcdef";
        let settings = settings(&["--push-api-keys", key, "--jwt-secret", jwt_secret]);
        let keys = PublisherKeys::new(settings.push_api_keys.as_ref().unwrap());
        for printed in [format!("{settings:?}"), format!("{keys:?}")] {
            assert!(!printed.contains(key), "{printed}");
            assert!(!printed.contains(jwt_secret), "{printed}");
        }
        assert_eq!(
            keys.digests,
            [digest(key)],
            "only the SHA-256 digest is kept"
        );
    }

    #[test]
    fn tokens_are_verified_and_every_bad_case_is_named() {
        let secret = "test-secret-test-secret-0123456789";
        let verifier = TokenVerifier::from_settings(&settings(&[
            "--jwt-secret",
            secret,
            "--jwt-audience",
            "push",
        ]))
        .unwrap();
        let exp = now() + 60;
        let good = hs256(json!({"sub": "alice", "exp": exp, "aud": "push"}), secret);
        let subscriber = verifier.verify(&good).unwrap();
        assert_eq!(subscriber.user.as_str(), "alice");
        assert_eq!(subscriber.expires_at, UNIX_EPOCH + Duration::from_secs(exp));

        let cases = [
            (
                hs256(
                    json!({"sub": "a", "exp": exp, "aud": "push"}),
                    "other-secret",
                ),
                TokenError::Invalid,
            ),
            (
                hs256(
                    json!({"sub": "a", "exp": now() - 60, "aud": "push"}),
                    secret,
                ),
                TokenError::Expired,
            ),
            (
                // Within the clock-skew leeway, but past `exp`: the session would close it at
                // once, so the handshake refuses it.
                hs256(json!({"sub": "a", "exp": now() - 2, "aud": "push"}), secret),
                TokenError::Expired,
            ),
            (
                hs256(
                    json!({"sub": "a", "exp": exp, "nbf": now() + 60, "aud": "push"}),
                    secret,
                ),
                TokenError::NotYetValid,
            ),
            (
                hs256(json!({"sub": "a", "exp": exp, "aud": "other"}), secret),
                TokenError::WrongAudience,
            ),
            (
                hs256(json!({"sub": "a", "aud": "push"}), secret),
                TokenError::MissingClaim,
            ),
            (
                hs256(json!({"sub": "", "exp": exp, "aud": "push"}), secret),
                TokenError::InvalidSubject,
            ),
            ("not-a-jwt".to_owned(), TokenError::Invalid),
        ];
        for (token, expected) in cases {
            assert_eq!(verifier.verify(&token), Err(expected), "{token}");
        }
        // `nbf` keeps the leeway: an issuer's clock a little ahead of ours is fine.
        let early = hs256(
            json!({"sub": "a", "exp": exp, "nbf": now() + 2, "aud": "push"}),
            secret,
        );
        assert!(verifier.verify(&early).is_ok());
        // `alg: none`: the good token's claims under an unsigned `{"alg":"none","typ":"JWT"}`.
        let claims = good.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
        assert!(matches!(
            verifier.verify(&none),
            Err(TokenError::WrongAlgorithm | TokenError::Invalid)
        ));
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &json!({"sub": "a", "exp": exp, "aud": "push"}),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert_eq!(verifier.verify(&hs384), Err(TokenError::WrongAlgorithm));
    }

    #[test]
    fn bearer_credentials_are_read_case_insensitively() {
        assert_eq!(
            bearer(&headers("authorization", "bearer  abc ")),
            Some("abc")
        );
        assert_eq!(bearer(&headers("authorization", "Bearer")), None);
        assert_eq!(bearer(&headers("authorization", "Token abc")), None);
    }
}
