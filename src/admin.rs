//! The administrative API: who is connected as a user, and disconnecting them.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;
use crate::state::SharedState;

/// `GET /admin/users/{user_id}` (being written).
pub async fn user(State(_state): State<SharedState>, Path(_user): Path<String>) -> Response {
    ApiError::NotFound.into_response()
}

/// `DELETE /admin/users/{user_id}/connections` (being written).
pub async fn disconnect(State(_state): State<SharedState>, Path(_user): Path<String>) -> Response {
    ApiError::NotFound.into_response()
}
