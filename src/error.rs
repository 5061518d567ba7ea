//! [`ApiError`]: everything that can go wrong in an HTTP handler or a handshake, and the one
//! place where failures become status codes and JSON `detail` bodies (FastAPI's shape, so the
//! seed's clients can read them).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::KeyError;
use crate::broker::BrokerError;
use crate::metrics::Rejection;
use crate::origin::ForeignOrigin;
use crate::protocol::Issue;

/// Everything that can go wrong in a handler, each with its status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body was not valid JSON of the right shape (422, FastAPI's `detail` list).
    #[error("validation failed")]
    Validation(Vec<Issue>),
    /// The body was over `MAX_BODY_BYTES` (413).
    #[error("request body is larger than MAX_BODY_BYTES={limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The body did not arrive within `HTTP_REQUEST_TIMEOUT` (408).
    #[error("the request body did not arrive within HTTP_REQUEST_TIMEOUT")]
    BodyTimeout,
    /// The body could not be read (400).
    #[error("cannot read the request body: {0}")]
    BadBody(String),
    /// The body was not declared as JSON (415).
    #[error("Content-Type must be application/json, not {0}")]
    UnsupportedMediaType(String),
    /// The body was compressed or otherwise encoded (415).
    #[error("Content-Encoding {0} is not supported: send the body as it is (identity)")]
    UnsupportedEncoding(String),
    /// The broker could not route the events: 503 when nothing was done, 504 when the outcome is
    /// unknown.
    #[error(transparent)]
    Unavailable(#[from] BrokerError),
    /// A query parameter is missing or invalid (400, FastAPI's `detail` list).
    #[error("invalid query")]
    InvalidQuery(Vec<Issue>),
    /// The request is not a valid WebSocket handshake.
    #[error("{message}")]
    Handshake {
        /// The status the WebSocket extractor chose (400, 405 or 426).
        status: StatusCode,
        /// Its explanation.
        message: String,
    },
    /// The server cannot take the request now: full or shutting down (503).
    #[error("{0}")]
    Overloaded(String),
    /// Missing or wrong credentials (401, with `WWW-Authenticate: Bearer`).
    #[error("{message}")]
    Unauthorized {
        /// What is wrong, never including the credentials.
        message: String,
        /// Whether credentials were presented but refused (`error="invalid_token"`).
        invalid_token: bool,
    },
    /// Authenticated, but not allowed this (403).
    #[error("{0}")]
    Forbidden(String),
    /// Over a rate limit (429, with `Retry-After`).
    #[error("{message}")]
    TooManyRequests {
        /// Which limit, and what to do.
        message: String,
        /// Seconds to wait before trying again.
        retry_after_seconds: u64,
    },
    /// No route for the path (404).
    #[error("Not Found")]
    NotFound,
    /// The path exists, but not for this method (405).
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    /// A bug: a handler panicked (500). The panic is logged; the server keeps serving.
    #[error("Internal Server Error")]
    Internal,
    /// An accepted push could not be serialized (500; a bug, logged).
    #[error("cannot encode the event: {0}")]
    Encode(#[from] serde_json::Error),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadBody(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) | Self::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::Unavailable(BrokerError::OutcomeUnknown(_)) => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable(_) | Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            Self::Handshake { status, .. } => *status,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal | Self::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The metrics reason of a refused push request, when this error is one.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Self::Validation(_) | Self::BadBody(_) | Self::BodyTimeout => Some(Rejection::Invalid),
            Self::PayloadTooLarge { .. } => Some(Rejection::TooLarge),
            Self::UnsupportedMediaType(_) | Self::UnsupportedEncoding(_) => {
                Some(Rejection::UnsupportedMediaType)
            }
            Self::Forbidden(_) => Some(Rejection::Forbidden),
            Self::Unavailable(_) => Some(Rejection::Unavailable),
            Self::Unauthorized { .. } => Some(Rejection::Unauthorized),
            Self::TooManyRequests { .. } => Some(Rejection::RateLimited),
            Self::InvalidQuery(_)
            | Self::Handshake { .. }
            | Self::Overloaded(_)
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::Internal
            | Self::Encode(_) => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let detail = match &self {
            Self::Validation(issues) | Self::InvalidQuery(issues) => json!(issues),
            other => json!(other.to_string()),
        };
        let mut response = (self.status(), Json(json!({ "detail": detail }))).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized { invalid_token, .. } => {
                let challenge = if *invalid_token {
                    r#"Bearer realm="websocket-sse-server", error="invalid_token""#
                } else {
                    r#"Bearer realm="websocket-sse-server""#
                };
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            Self::TooManyRequests {
                retry_after_seconds,
                ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
            }
            Self::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            _ => {}
        }
        response
    }
}

impl From<ForeignOrigin> for ApiError {
    fn from(refused: ForeignOrigin) -> Self {
        Self::Forbidden(refused.to_string())
    }
}

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        Self::Unauthorized {
            message: error.to_string(),
            invalid_token: error == KeyError::Wrong,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(
            ApiError::Validation(vec![]).status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            ApiError::PayloadTooLarge { limit: 1 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(ApiError::NotFound.status(), StatusCode::NOT_FOUND);
    }
}
