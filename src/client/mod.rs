//! The client commands: `push` sends one event through a running server's push endpoint, and
//! `listen` connects as a user and prints what the server delivers (a small wscat for this
//! protocol), reconnecting and resuming when the connection drops.
//!
//! Both speak HTTP/1.1 and WebSocket with the crates the server already uses (hyper's client,
//! tokio-tungstenite), in cleartext or over TLS (rustls, the crypto provider the server's own
//! TLS uses): `https://` and `wss://` URLs are verified against the public roots, plus the
//! certificate authority in `--ca-file` when given. Without `--url` they reach this machine's
//! server on its configured port, over TLS when it has `TLS_CERT_FILE`, trusting exactly that
//! certificate (as `healthcheck` does). They are meant for operators and scripts, not as an SDK.

pub mod args;
pub mod listen;
pub mod push;
mod sse;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Uri;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::Settings;
use crate::healthcheck::probe_host;
use crate::tls::local_client_config;

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

/// A connection to the server, cleartext or TLS.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

/// A server to talk to: host, port, a path prefix and how to speak TLS to it, from `--url` (or
/// the settings).
#[derive(Clone)]
struct Target {
    /// Host name or IP address (IPv6 without brackets).
    host: String,
    /// TCP port.
    port: u16,
    /// Path prefix from the URL, without a trailing slash (often empty).
    prefix: String,
    /// TLS, for `https://` and `wss://` (and this machine's server when it has TLS on).
    tls: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for Target {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Target {
    /// `--url` (trusting `ca_file` besides the public roots) when given, else this machine's
    /// server on the configured port (over TLS when it has `TLS_CERT_FILE`, trusting exactly it).
    fn from_args(
        url: Option<&str>,
        ca_file: Option<&Path>,
        settings: &Settings,
    ) -> Result<Self, Failure> {
        match url {
            Some(url) => Self::parse(url, ca_file)
                .map_err(|why| Failure::usage(format!("--url {url:?}: {why}"))),
            None => {
                let tls = match &settings.tls_cert_file {
                    Some(cert) => Some(Arc::new(
                        local_client_config(Some(cert))
                            .map_err(|error| Failure::usage(error.to_string()))?,
                    )),
                    None => None,
                };
                Ok(Self {
                    host: probe_host(&settings.host).to_owned(),
                    port: settings.port,
                    prefix: String::new(),
                    tls,
                })
            }
        }
    }

    /// Parses `http://host[:port][/prefix]` (`https://`, `ws://` and `wss://` too).
    fn parse(raw: &str, ca_file: Option<&Path>) -> Result<Self, String> {
        let uri: Uri = raw
            .parse()
            .map_err(|error| format!("not a URL ({error}); expected e.g. http://127.0.0.1:8080"))?;
        let secure = match uri.scheme_str() {
            Some("http" | "ws") => false,
            Some("https" | "wss") => true,
            _ => {
                return Err(
                    "expected an http://, https://, ws:// or wss:// URL such as \
                     http://127.0.0.1:8080"
                        .into(),
                );
            }
        };
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
        let tls = secure.then(|| client_config(ca_file)).transpose()?;
        Ok(Self {
            host: host.to_owned(),
            port: authority
                .port_u16()
                .unwrap_or(if secure { 443 } else { 80 }),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            tls: tls.map(Arc::new),
        })
    }

    /// The scheme of `plain` (`http` or `ws`) as this target speaks it (`https`, `wss` over TLS).
    fn scheme(&self, plain: &str) -> String {
        if self.tls.is_some() {
            format!("{plain}s")
        } else {
            plain.to_owned()
        }
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

    /// A URL for messages: `scheme://host:port/prefix/path[?query]`, with `plain` (`http` or
    /// `ws`) made secure over TLS.
    fn url(&self, plain: &str, path: &str, query: &str) -> String {
        format!(
            "{}://{}{}",
            self.scheme(plain),
            self.authority(),
            self.path_and_query(path, query)
        )
    }

    /// Opens a connection to the server: TCP, then TLS when this target speaks it.
    async fn connect(&self) -> Result<Box<dyn Connection>, String> {
        let open = async {
            let stream = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|error| error.to_string())?;
            // Small requests and frames: send them at once.
            let _ = stream.set_nodelay(true);
            let Some(config) = &self.tls else {
                return Ok(Box::new(stream) as Box<dyn Connection>);
            };
            let name = ServerName::try_from(self.host.clone())
                .map_err(|error| format!("{}: {error}", self.host))?;
            let stream = TlsConnector::from(Arc::clone(config))
                .connect(name, stream)
                .await
                .map_err(|error| format!("TLS: {error}"))?;
            Ok(Box::new(stream) as Box<dyn Connection>)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, open)
            .await
            .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
    }
}

/// The TLS client configuration for `https://` and `wss://` URLs: the public roots (Mozilla's),
/// plus the certificates in `ca_file` when given.
fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|error| format!("cannot read --ca-file {}: {error}", path.display()))?;
        let mut added = 0;
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            let certificate =
                certificate.map_err(|error| format!("--ca-file {}: {error}", path.display()))?;
            roots
                .add(certificate)
                .map_err(|error| format!("--ca-file {}: {error}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("--ca-file {} holds no certificate", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
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
        let target = Target::parse("http://127.0.0.1:9000", None).unwrap();
        assert_eq!(target.authority(), "127.0.0.1:9000");
        assert_eq!(
            target.url("ws", "/ws", "user_id=1"),
            "ws://127.0.0.1:9000/ws?user_id=1"
        );
        let target = Target::parse("ws://[::1]:81/gateway/", None).unwrap();
        assert_eq!(target.host, "::1");
        assert_eq!(target.path_and_query("/ws", ""), "/gateway/ws");
        assert_eq!(Target::parse("http://example.com", None).unwrap().port, 80);
        let secure = Target::parse("https://example.com", None).unwrap();
        assert_eq!((secure.port, secure.tls.is_some()), (443, true));
        assert_eq!(
            secure.url("ws", "/ws", ""),
            "wss://example.com:443/ws",
            "a WebSocket over TLS is wss://"
        );
        assert!(Target::parse("wss://x:8443", None).unwrap().tls.is_some());
        for bad in ["ftp://x", "example.com:80", "http://u:p@x"] {
            assert!(Target::parse(bad, None).is_err(), "{bad}");
        }
        let missing = Target::parse("https://x", Some(Path::new("/nonexistent/ca.pem")));
        assert!(missing.unwrap_err().starts_with("cannot read --ca-file"));
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
