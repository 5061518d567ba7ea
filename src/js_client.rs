//! `GET /client.js` and `GET /client.js.map`: the official JavaScript client
//! ([`clients/js/`](../clients/js/README.md)), embedded in the binary and served by the server, so
//! that a page imports the client that matches its server:
//! `import { PushClient } from 'https://push.example.com/client.js'`.
//!
//! The module is served as written (no build step), with a `sourceMappingURL` comment appended
//! and an identity source map that carries the source, so that browsers' tools name the file.
//! Both are cacheable: an `ETag` (a digest of the content) answers a revalidation with 304, and
//! `Cache-Control` lets caches keep them an hour. Cross-origin pages may import the module when
//! `CORS_ORIGINS` lets them use the server at all (the CORS layer answers for every route).

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The client's source.
const SOURCE: &str = include_str!("../clients/js/push-client.js");

/// What `/client.js` serves: the source and the comment naming its map.
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        format!("{SOURCE}//# sourceMappingURL=client.js.map\n"),
        "text/javascript; charset=utf-8",
    )
});

/// What `/client.js.map` serves: a source map (version 3) mapping each line to itself.
static MAP: LazyLock<Asset> = LazyLock::new(|| {
    let lines = SOURCE.lines().count().max(1);
    let mappings = format!("AAAA{}", ";AACA".repeat(lines - 1));
    let map = json!({
        "version": 3,
        "file": "client.js",
        "sources": ["push-client.js"],
        "sourcesContent": [SOURCE],
        "names": [],
        "mappings": mappings,
    });
    Asset::new(map.to_string(), "application/json")
});

/// How long caches may keep the files without asking again.
const CACHE_CONTROL: &str = "public, max-age=3600";

/// One served file: its bytes, type and entity tag.
struct Asset {
    body: String,
    content_type: &'static str,
    etag: String,
}

impl Asset {
    fn new(body: String, content_type: &'static str) -> Self {
        let digest = Sha256::digest(body.as_bytes());
        let etag = format!(
            "\"{}\"",
            digest[..12]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        Self {
            body,
            content_type,
            etag,
        }
    }

    /// 304 when the request names the current version (`If-None-Match`), the file otherwise.
    fn respond(&'static self, headers: &HeaderMap) -> Response {
        let fresh = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == self.etag));
        let etag = HeaderValue::from_str(&self.etag).unwrap_or(HeaderValue::from_static("\"\""));
        let cache = [
            (header::ETAG, etag),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(CACHE_CONTROL),
            ),
        ];
        if fresh {
            return (StatusCode::NOT_MODIFIED, cache).into_response();
        }
        (
            cache,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            )],
            self.body.as_str(),
        )
            .into_response()
    }
}

/// `GET /client.js`.
pub async fn script(headers: HeaderMap) -> Response {
    SCRIPT.respond(&headers)
}

/// `GET /client.js.map`.
pub async fn source_map(headers: HeaderMap) -> Response {
    MAP.respond(&headers)
}
