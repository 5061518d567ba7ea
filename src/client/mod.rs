//! The client commands: `push` sends one event through a running server's push endpoint, and
//! `listen` connects as a user and prints what the server delivers (a small wscat for this
//! protocol), reconnecting and resuming when the connection drops.
//!
//! Both speak plain HTTP/1.1 and WebSocket over TCP with the crates the server already uses
//! (hyper's client, tokio-tungstenite); they are meant for operators and scripts next to the
//! server (a shell in its container, a port-forward), not as an SDK. `https://` and `wss://` URLs
//! are refused with a clear message: supporting them would add a TLS crypto provider to the
//! server's binary.

pub mod args;
pub mod listen;
pub mod push;
mod sse;

use std::fmt;
use std::time::Duration;

use axum::http::Uri;
use tokio::net::TcpStream;

use crate::config::Settings;
use crate::healthcheck::probe_host;

/// Exit status when the command did what it was asked.
pub const EXIT_OK: u8 = 0;
/// Exit status when the server refused, failed or could not be reached.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for bad arguments (nothing was sent).
pub const EXIT_USAGE: u8 = 2;
/// Exit status of `listen` when the subscriber token expired (close code 4001).
pub const EXIT_TOKEN_EXPIRED: u8 = 3;
/// Exit status of `push --user-ids` when the server accepted the push but answered `partial`:
/// some of the users had no connection (the answer, printed, says which).
pub const EXIT_PARTIAL: u8 = 3;

/// How long establishing a TCP connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a client command stopped: the line to print on stderr and the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The process exit status ([`EXIT_FAILURE`], [`EXIT_USAGE`], [`EXIT_TOKEN_EXPIRED`] or
    /// [`EXIT_PARTIAL`]).
    pub status: u8,
    /// What went wrong, one line.
    pub message: String,
}

impl Failure {
    /// A bad argument: exit status 2.
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            status: EXIT_USAGE,
            message: message.into(),
        }
    }

    /// A refusal or an unreachable server: exit status 1.
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            status: EXIT_FAILURE,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A server to talk to: host, port and a path prefix, from `--url` (or the settings).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// Host name or IP address (IPv6 without brackets).
    host: String,
    /// TCP port.
    port: u16,
    /// Path prefix from the URL, without a trailing slash (often empty).
    prefix: String,
}

impl Target {
    /// `--url` when given, else this machine's server on the configured port.
    fn from_args(url: Option<&str>, settings: &Settings) -> Result<Self, Failure> {
        match url {
            Some(url) => {
                Self::parse(url).map_err(|why| Failure::usage(format!("--url {url:?}: {why}")))
            }
            None => Ok(Self {
                host: probe_host(&settings.host).to_owned(),
                port: settings.port,
                prefix: String::new(),
            }),
        }
    }

    /// Parses `http://host[:port][/prefix]` (`ws://` too).
    fn parse(raw: &str) -> Result<Self, String> {
        let uri: Uri = raw
            .parse()
            .map_err(|error| format!("not a URL ({error}); expected e.g. http://127.0.0.1:8080"))?;
        match uri.scheme_str() {
            Some("http" | "ws") => {}
            Some("https" | "wss") => {
                return Err(
                    "https:// and wss:// are not supported by this client; reach the \
                            server over plain HTTP (from its host, its container or a \
                            port-forward)"
                        .into(),
                );
            }
            _ => {
                return Err(
                    "expected an http:// or ws:// URL such as http://127.0.0.1:8080".into(),
                );
            }
        }
        let authority = uri.authority().ok_or("the URL has no host")?;
        if authority.as_str().contains('@') {
            return Err(
                "credentials in the URL are not supported; use --api-key or --token".into(),
            );
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err("the URL has no host".into());
        }
        Ok(Self {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(80),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// `host:port` as it appears in a URL and the `Host` header (IPv6 in brackets).
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The prefix followed by `path` and, when not empty, `?query`.
    fn path_and_query(&self, path: &str, query: &str) -> String {
        let mut target = format!("{}{}", self.prefix, path);
        if !query.is_empty() {
            target.push('?');
            target.push_str(query);
        }
        target
    }

    /// A URL for messages: `scheme://host:port/prefix/path[?query]`.
    fn url(&self, scheme: &str, path: &str, query: &str) -> String {
        format!(
            "{scheme}://{}{}",
            self.authority(),
            self.path_and_query(path, query)
        )
    }

    /// Opens a TCP connection to the server.
    async fn connect(&self) -> Result<TcpStream, String> {
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
        .map_err(|error| error.to_string())?;
        // Small requests and frames: send them at once.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Checks an endpoint path given with `--path`.
fn check_path(path: &str) -> Result<(), Failure> {
    if path.starts_with('/') && !path.contains(['?', '#']) && !path.chars().any(char::is_whitespace)
    {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "--path {path:?}: expected a URL path such as /sse/push"
        )))
    }
}

/// The `detail` of a FastAPI-shaped error body, or the body itself, for a one-line message.
fn describe_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let detail = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|value| value.get("detail").cloned())
        .map(|detail| match detail {
            serde_json::Value::String(text) => text,
            other => other.to_string(),
        });
    let mut line = detail.unwrap_or_else(|| text.trim().replace(['\n', '\r'], " "));
    if line.len() > 300 {
        let mut cut = 300;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_into_targets() {
        let target = Target::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(target.authority(), "127.0.0.1:9000");
        assert_eq!(
            target.url("ws", "/ws", "user_id=1"),
            "ws://127.0.0.1:9000/ws?user_id=1"
        );
        let target = Target::parse("ws://[::1]:81/gateway/").unwrap();
        assert_eq!(target.host, "::1");
        assert_eq!(target.path_and_query("/ws", ""), "/gateway/ws");
        assert_eq!(Target::parse("http://example.com").unwrap().port, 80);
        for bad in [
            "https://example.com",
            "wss://x",
            "ftp://x",
            "example.com:80",
            "http://u:p@x",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_bodies_become_one_line() {
        assert_eq!(
            describe_body(br#"{"detail":"Invalid API key"}"#),
            "Invalid API key"
        );
        assert_eq!(describe_body(b"oops\nmore"), "oops more");
        assert!(describe_body(br#"{"detail":[{"msg":"x"}]}"#).contains("\"msg\""));
    }
}
