//! The API's description: `GET /openapi.json` (OpenAPI 3.1) and `GET /docs` (Swagger UI, served
//! from assets embedded in the binary).
//!
//! The document lives in `src/openapi/openapi.json`, written for the default configuration. At
//! the first request it is [rendered](render) for the running server's settings: the configurable
//! paths (`WS_PATH`, `SSE_STREAM_PATH`, `SSE_ACK_PATH`, `SSE_PATH`, `SSE_BATCH_PATH`, `CONSOLE_PATH`) replace the
//! defaults, the console disappears when it is off, each security requirement that the settings
//! do not enforce gets an empty alternative (`{}`: no credential needed), and the batch limits
//! carry `MAX_BATCH_SIZE`. The rendered bytes are cached: settings do not change while running.
//!
//! [`operations`] lists the (method, path) pairs the document describes; the integration tests
//! compare it with the routes the router really serves.
//!
//! Swagger UI (the `swagger-ui-dist` npm package, Apache-2.0, vendored in `assets/swagger-ui/`)
//! is embedded with `include_bytes!` and served at `/docs/{file}` with year-long caching; the page
//! links each file with a version query, so an upgrade changes the URLs. The page sets a
//! `Content-Security-Policy` that lets it load nothing from elsewhere.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

use crate::config::Settings;
use crate::error::ApiError;
use crate::state::SharedState;

/// The document as written, for the default configuration.
const SOURCE: &str = include_str!("openapi/openapi.json");

/// The vendored Swagger UI's version (see `assets/swagger-ui/README.md`).
pub const SWAGGER_UI_VERSION: &str = "5.35.0";

/// The paths the source document uses for the configurable endpoints.
mod default_path {
    pub const WS: &str = "/ws";
    pub const SSE_STREAM: &str = "/sse/stream";
    pub const SSE_ACK: &str = "/sse/ack";
    pub const PUSH: &str = "/sse/push";
    pub const BATCH: &str = "/sse/push/batch";
    pub const CONSOLE: &str = "/";
    pub const METRICS: [&str; 2] = ["/metrics", "/metrics/prometheus"];
}

/// Security scheme names of the source document that mark who an operation is for.
const PUBLISHER_SCHEME: &str = "publisherBearer";
const SUBSCRIBER_SCHEME: &str = "subscriberBearer";

/// The methods an OpenAPI path item may describe, as its keys.
const METHODS: [(&str, Method); 8] = [
    ("get", Method::GET),
    ("put", Method::PUT),
    ("post", Method::POST),
    ("delete", Method::DELETE),
    ("options", Method::OPTIONS),
    ("head", Method::HEAD),
    ("patch", Method::PATCH),
    ("trace", Method::TRACE),
];

/// `GET /openapi.json`: the document for this server's configuration.
pub async fn spec(State(state): State<SharedState>) -> Response {
    match document(&state.settings) {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot render the OpenAPI document");
            ApiError::Internal.into_response()
        }
    }
}

/// What of the settings the document depends on: the cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Profile {
    ws_path: String,
    sse_stream_path: String,
    sse_ack_path: String,
    sse_path: String,
    sse_batch_path: String,
    console_path: Option<String>,
    publisher_keys: bool,
    subscriber_tokens: bool,
    metrics_public: bool,
    max_batch_size: usize,
}

impl Profile {
    fn of(settings: &Settings) -> Self {
        Self {
            ws_path: settings.ws_path.clone(),
            sse_stream_path: settings.sse_stream_path.clone(),
            sse_ack_path: settings.sse_ack_path.clone(),
            sse_path: settings.sse_path.clone(),
            sse_batch_path: settings.sse_batch_path.clone(),
            console_path: settings
                .console_enabled
                .then(|| settings.console_path.clone()),
            publisher_keys: settings.push_api_keys.is_some(),
            subscriber_tokens: settings.jwt_secret.is_some()
                || settings.jwt_public_key_file.is_some(),
            metrics_public: settings.metrics_public,
            max_batch_size: settings.max_batch_size,
        }
    }

    /// Where the endpoint the source document describes at `path` is served, if it is.
    fn path_of(&self, path: &str) -> Option<String> {
        Some(match path {
            default_path::WS => self.ws_path.clone(),
            default_path::SSE_STREAM => self.sse_stream_path.clone(),
            default_path::SSE_ACK => self.sse_ack_path.clone(),
            default_path::PUSH => self.sse_path.clone(),
            default_path::BATCH => self.sse_batch_path.clone(),
            default_path::CONSOLE => self.console_path.clone()?,
            other => other.to_owned(),
        })
    }
}

/// Rendered documents, one per configuration seen (one in production; tests run several servers
/// in one process).
static RENDERED: Mutex<Vec<(Profile, Bytes)>> = Mutex::new(Vec::new());

/// The serialized document for `settings`, rendered once and then served from the cache.
pub fn document(settings: &Settings) -> Result<Bytes, serde_json::Error> {
    let profile = Profile::of(settings);
    if let Some((_, bytes)) = RENDERED.lock().iter().find(|(seen, _)| *seen == profile) {
        return Ok(bytes.clone());
    }
    let bytes = Bytes::from(serde_json::to_vec(&render_profile(&profile)?)?);
    RENDERED.lock().push((profile, bytes.clone()));
    Ok(bytes)
}

/// The document for `settings`: the source document with the configured paths, the console only
/// when it is on, optional credentials where the settings enforce none, and the batch limit.
pub fn render(settings: &Settings) -> Result<Value, serde_json::Error> {
    render_profile(&Profile::of(settings))
}

fn render_profile(profile: &Profile) -> Result<Value, serde_json::Error> {
    let mut document: Value = serde_json::from_str(SOURCE)?;
    document["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));

    if let Some(Value::Object(paths)) = document.get_mut("paths") {
        let source = std::mem::take(paths);
        for (path, mut item) in source {
            let Some(served_at) = profile.path_of(&path) else {
                continue;
            };
            let metrics = default_path::METRICS.contains(&path.as_str());
            for operation in item.as_object_mut().into_iter().flat_map(Map::values_mut) {
                adjust_security(operation, profile, metrics);
            }
            paths.insert(served_at, item);
        }
    }

    let components = &mut document["components"];
    components["parameters"]["UserIdQuery"]["required"] = json!(!profile.subscriber_tokens);
    let schemas = &mut components["schemas"];
    schemas["BatchRequest"]["maxItems"] = json!(profile.max_batch_size);
    schemas["PushMany"]["properties"]["user_ids"]["maxItems"] = json!(profile.max_batch_size);
    schemas["PushMany"]["properties"]["user_ids"]["description"] = json!(format!(
        "1 to {} user ids (`MAX_BATCH_SIZE`); duplicates are ignored.",
        profile.max_batch_size
    ));
    Ok(document)
}

/// Makes an operation's credential optional (an empty alternative) when the settings do not
/// require it: no `PUSH_API_KEYS` (or public metrics), no subscriber tokens.
fn adjust_security(operation: &mut Value, profile: &Profile, metrics: bool) {
    let Some(Value::Array(alternatives)) = operation.get_mut("security") else {
        return;
    };
    let uses = |scheme: &str| alternatives.iter().any(|alt| alt.get(scheme).is_some());
    let enforced = if uses(PUBLISHER_SCHEME) {
        profile.publisher_keys && !(metrics && profile.metrics_public)
    } else if uses(SUBSCRIBER_SCHEME) {
        profile.subscriber_tokens
    } else {
        true
    };
    if !enforced {
        alternatives.push(json!({}));
    }
}

/// Every (method, path) the document for `settings` describes.
pub fn operations(settings: &Settings) -> Result<Vec<(Method, String)>, serde_json::Error> {
    let document = render(settings)?;
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for (key, method) in &METHODS {
            if item.get(*key).is_some() {
                operations.push((method.clone(), path.clone()));
            }
        }
    }
    Ok(operations)
}

/// The `/docs` page: loads Swagger UI from `/docs/{file}`, pointed at `/openapi.json` (both by
/// relative URLs, so it also works behind a proxy that adds a path prefix).
static DOCS_PAGE: LazyLock<String> = LazyLock::new(|| {
    include_str!("openapi/docs.html")
        .replace("__SWAGGER_UI_VERSION__", SWAGGER_UI_VERSION)
        .replace("__APP_VERSION__", env!("CARGO_PKG_VERSION"))
});

/// What the `/docs` page may load: only this server's own scripts, styles, images and API.
/// Swagger UI sets inline styles and uses `data:` images, hence those two allowances.
pub const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'";

/// `GET /docs`: Swagger UI on this server's document.
pub async fn docs() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                DOCS_CONTENT_SECURITY_POLICY,
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        DOCS_PAGE.as_str(),
    )
        .into_response()
}

/// A file served under `/docs/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// Every file served under `/docs/`, embedded in the binary.
static ASSETS: [Asset; 7] = [
    Asset {
        name: "swagger-ui-bundle.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js"),
    },
    Asset {
        name: "swagger-ui.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/swagger-ui/swagger-ui.css"),
    },
    Asset {
        name: "docs.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("openapi/docs.js"),
    },
    Asset {
        name: "favicon-32x32.png",
        content_type: "image/png",
        bytes: include_bytes!("../assets/swagger-ui/favicon-32x32.png"),
    },
    Asset {
        name: "favicon-16x16.png",
        content_type: "image/png",
        bytes: include_bytes!("../assets/swagger-ui/favicon-16x16.png"),
    },
    Asset {
        name: "LICENSE",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("../assets/swagger-ui/LICENSE"),
    },
    Asset {
        name: "NOTICE",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("../assets/swagger-ui/NOTICE"),
    },
];

/// Each asset's entity tag (a digest of its content), in the order of [`ASSETS`].
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.bytes);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
        .collect()
});

/// Assets may be cached for a year: the page links them with a version query.
const ASSET_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// `GET /docs/{file}`: one of Swagger UI's files (404 for any other name).
pub async fn asset(Path(file): Path<String>, request_headers: HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|asset| asset.name == file) else {
        return ApiError::NotFound.into_response();
    };
    let (asset, etag) = (&ASSETS[index], &ETAGS[index]);
    let headers: [(HeaderName, HeaderValue); 4] = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(ASSET_CACHE_CONTROL),
        ),
        (
            header::ETAG,
            HeaderValue::from_str(etag).unwrap_or(HeaderValue::from_static("\"\"")),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    let matches = request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    if matches {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, Bytes::from_static(asset.bytes)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(flags: &[&str]) -> Settings {
        let mut args = vec!["websocket-sse-server"];
        args.extend_from_slice(flags);
        Settings::from_flags(args).expect("flags parse")
    }

    #[test]
    fn the_source_document_parses_and_is_openapi_3_1() {
        let document: Value = serde_json::from_str(SOURCE).expect("valid JSON");
        assert_eq!(document["openapi"], "3.1.0");
    }

    #[test]
    fn configured_paths_replace_the_defaults() {
        let settings = settings(&[
            "--ws-path",
            "/live",
            "--sse-path",
            "/v1/push",
            "--console-enabled",
            "false",
        ]);
        let paths: Vec<String> = operations(&settings)
            .expect("renders")
            .into_iter()
            .map(|(_, path)| path)
            .collect();
        assert!(paths.contains(&"/live".to_owned()));
        assert!(paths.contains(&"/v1/push".to_owned()));
        assert!(!paths.contains(&"/ws".to_owned()));
        assert!(!paths.contains(&"/".to_owned()), "the console is off");
    }

    #[test]
    fn unenforced_credentials_are_optional() {
        let open = render(&settings(&[])).expect("renders");
        let push = &open["paths"]["/sse/push"]["post"]["security"];
        assert_eq!(push.as_array().map(Vec::len), Some(3));
        assert_eq!(push[2], json!({}));
        assert_eq!(
            open["components"]["parameters"]["UserIdQuery"]["required"],
            true
        );
    }

    #[test]
    fn every_asset_has_a_distinct_etag() {
        assert_eq!(ETAGS.len(), ASSETS.len());
        let mut tags = ETAGS.clone();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), ASSETS.len());
    }
}
