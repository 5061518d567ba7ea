//! The API's description: `GET /openapi.json` (OpenAPI 3.1) and `GET /docs` (Swagger UI, served
//! from assets embedded in the binary).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;
use crate::state::SharedState;

/// `GET /openapi.json` (being written).
pub async fn spec(State(_state): State<SharedState>) -> Response {
    ApiError::NotFound.into_response()
}

/// `GET /docs` (being written).
pub async fn docs() -> Response {
    ApiError::NotFound.into_response()
}

/// `GET /docs/{file}` (being written).
pub async fn asset(Path(_file): Path<String>) -> Response {
    ApiError::NotFound.into_response()
}
