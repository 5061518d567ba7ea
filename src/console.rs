//! The web console: one page, embedded in the binary, to connect as a user, push, and watch live
//! stats.

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;
use crate::state::SharedState;

/// `GET {CONSOLE_PATH}` (being written).
pub async fn page(State(_state): State<SharedState>) -> Response {
    ApiError::NotFound.into_response()
}
