//! The web console: one page, embedded in the binary, to connect as a user, push, and watch live
//! stats; and the URLs the start-up log names.
//!
//! The page is three static files under `assets/console/` — `index.html` with placeholders, the
//! stylesheet and the script — put together once, at first use: the stylesheet and the script are
//! inlined into the HTML, so the page is one document with no other request than the API calls it
//! makes. Each response then fills the page's configuration (the paths of this server's endpoints,
//! and whether credentials are required) into a `<script type="application/json">` block, which
//! the browser never executes.
//!
//! The `Content-Security-Policy` allows the inline stylesheet and script by their SHA-256 digests,
//! and scripts of this origin, for the official client (`/client.js`) the script imports to
//! connect (Chromium does not let `'strict-dynamic'` cover a dynamic `import()`; the origin
//! serves no script a visitor can shape); nothing else: no other script, style, frame or form target; network
//! access only to this origin (HTTP, and WebSocket: CSP level 3 `'self'` covers `ws:`/`wss:` on
//! the same host).

use std::net::SocketAddr;
use std::sync::LazyLock;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::state::SharedState;

/// The page, with the placeholders below.
const TEMPLATE: &str = include_str!("../assets/console/index.html");
/// The stylesheet, inlined at [`STYLE_SLOT`].
const STYLE: &str = include_str!("../assets/console/console.css");
/// The script, inlined at [`SCRIPT_SLOT`].
const SCRIPT: &str = include_str!("../assets/console/console.js");
/// Where the stylesheet goes (the whole content of the page's `<style>` element).
const STYLE_SLOT: &str = "/*{{CONSOLE_CSS}}*/";
/// Where the script goes (the whole content of the page's executable `<script>` element).
const SCRIPT_SLOT: &str = "/*{{CONSOLE_JS}}*/";
/// Where each response's configuration goes (the content of its JSON `<script>` block).
const CONFIG_SLOT: &str = "{{CONSOLE_CONFIG}}";

/// The page put together, split around the configuration slot, and its security policy.
struct Page {
    /// Everything before the configuration.
    head: String,
    /// Everything after it.
    tail: String,
    /// The `Content-Security-Policy` header value.
    policy: String,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    let html = TEMPLATE
        .replacen(STYLE_SLOT, STYLE, 1)
        .replacen(SCRIPT_SLOT, SCRIPT, 1);
    let (head, tail) = html.split_once(CONFIG_SLOT).unwrap_or((&html, ""));
    Page {
        head: head.to_owned(),
        tail: tail.to_owned(),
        policy: policy(STYLE, SCRIPT),
    }
});

/// The `Content-Security-Policy` allowing exactly this inline stylesheet and script.
fn policy(style: &str, script: &str) -> String {
    let digest = |text: &str| BASE64.encode(Sha256::digest(text.as_bytes()));
    format!(
        "default-src 'none'; script-src 'sha256-{}' 'self'; style-src 'sha256-{}'; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        digest(script),
        digest(style)
    )
}

/// What the page needs to know about this server, as the JSON it reads at start-up. `<`, `>` and
/// `&` are escaped (`\u003c`…), so no value can end the `<script>` block it sits in.
fn config(state: &SharedState) -> String {
    let settings = &state.settings;
    let value = json!({
        "ws_path": settings.ws_path,
        "sse_stream_path": settings.sse_stream_path,
        "sse_ack_path": settings.sse_ack_path,
        "sse_path": settings.sse_path,
        "console_path": settings.console_path,
        "version": env!("CARGO_PKG_VERSION"),
        "tokens_required": state.tokens.is_some(),
        "api_keys_required": state.publishers.is_some(),
        "metrics_public": settings.metrics_public || state.publishers.is_none(),
    });
    escape_for_script(&value.to_string())
}

/// Escapes the characters that could close or confuse an HTML `<script>` element in JSON text
/// (they can only occur inside JSON strings, where `\uXXXX` means the same).
fn escape_for_script(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The URL to open for `path` on a server listening at `address`; an unspecified address
/// (`0.0.0.0`, `::`) reads as `localhost`.
pub fn url_of(address: SocketAddr, path: &str) -> String {
    if address.ip().is_unspecified() {
        format!("http://localhost:{}{path}", address.port())
    } else {
        format!("http://{address}{path}")
    }
}

/// Where the start-up log says the console is: its URL, or `off` with `CONSOLE_ENABLED=false`.
pub fn start_up_url(settings: &Settings, address: SocketAddr) -> String {
    if settings.console_enabled {
        url_of(address, &settings.console_path)
    } else {
        "off".to_owned()
    }
}

/// `GET {CONSOLE_PATH}`: the console page, never cached (it carries this server's configuration),
/// with a strict `Content-Security-Policy`.
pub async fn page(State(state): State<SharedState>) -> Response {
    let page = &*PAGE;
    let body = [page.head.as_str(), &config(&state), page.tail.as_str()].concat();
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, page.policy.as_str()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        Html(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_slot_appears_once_in_the_template_and_nowhere_in_the_assets() {
        for slot in [STYLE_SLOT, SCRIPT_SLOT, CONFIG_SLOT] {
            assert_eq!(TEMPLATE.matches(slot).count(), 1, "{slot}");
            assert!(!STYLE.contains(slot) && !SCRIPT.contains(slot), "{slot}");
        }
    }

    #[test]
    fn the_inlined_assets_cannot_end_their_elements() {
        assert!(!STYLE.to_ascii_lowercase().contains("</style"));
        assert!(!SCRIPT.to_ascii_lowercase().contains("</script"));
        assert!(!SCRIPT.contains("<!--"));
    }

    #[test]
    fn the_policy_hashes_exactly_what_the_page_inlines() {
        let page = format!("{}{{}}{}", PAGE.head, PAGE.tail);
        let inline = |open: &str, close: &str| -> String {
            let start = page.find(open).expect("element") + open.len();
            let end = start + page[start..].find(close).expect("end");
            page[start..end].to_owned()
        };
        let style = inline("<style>", "</style>");
        let script = inline("<script>", "</script>");
        assert_eq!(style, STYLE);
        assert_eq!(script, SCRIPT);
        assert_eq!(PAGE.policy, policy(&style, &script));
        assert!(PAGE.policy.contains("script-src 'sha256-"));
        assert!(!PAGE.policy.contains("unsafe"));
    }

    #[test]
    fn configuration_cannot_break_out_of_its_script_block() {
        let escaped = escape_for_script(&json!({"p": "</script><b>&"}).to_string());
        assert!(!escaped.contains('<') && !escaped.contains('>') && !escaped.contains('&'));
        let back: serde_json::Value = serde_json::from_str(&escaped).expect("still JSON");
        assert_eq!(back["p"], "</script><b>&");
    }
}
