//! A server address: base-URL parsing, the loopback-only guard and one-time resolution.

use std::net::{IpAddr, SocketAddr};

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::tls::Tls;

/// A resolved, loopback-only server address.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The socket address every TCP connection goes to (resolved once).
    pub addr: SocketAddr,
    /// `host[:port]` as written in the base URL, sent as the `Host` header.
    pub authority: String,
    /// TLS, for an `https://` base URL.
    pub tls: Option<Tls>,
    /// Whether publishers speak HTTP/2 to it (`--http2`: by ALPN over TLS, with prior knowledge
    /// in cleartext).
    pub http2: bool,
}

impl Endpoint {
    /// Parses `http://host[:port][/]` (or `https://`, trusting `tls_ca`), refuses anything that
    /// is not loopback (127.0.0.0/8, `localhost`, `::1`) and resolves it once.
    pub async fn resolve(url: &str, tls_ca: Option<&Path>) -> Result<Self> {
        let secure = url.starts_with("https://");
        let plain = if secure {
            url.replacen("https://", "http://", 1)
        } else {
            url.to_owned()
        };
        let (host, port, authority) = parse_base_url(&plain)?;
        let port = if secure && !authority.contains(':') {
            443
        } else {
            port
        };
        let tls = match (secure, tls_ca) {
            (false, _) => None,
            (true, Some(ca)) => Some(Tls::new(ca, &host)?),
            (true, None) => {
                bail!("{url}: an https:// URL needs --tls-ca (the server's CA or certificate)")
            }
        };
        if !host.eq_ignore_ascii_case("localhost") {
            let ip: IpAddr = host
                .parse()
                .with_context(|| format!("host {host:?} is neither an IP address nor localhost"))?;
            if !ip.is_loopback() {
                bail!(
                    "refusing non-loopback host {ip}: loadgen only targets 127.0.0.0/8, ::1 or localhost"
                );
            }
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .collect();
        if let Some(bad) = addrs.iter().find(|addr| !addr.ip().is_loopback()) {
            bail!("{host} resolves to non-loopback address {bad}; refusing");
        }
        let addr = addrs
            .iter()
            .find(|addr| addr.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .with_context(|| format!("{host} did not resolve"))?;
        Ok(Self {
            addr,
            authority,
            tls,
            http2: false,
        })
    }

    /// `ws` or `wss`, as this endpoint speaks.
    pub fn ws_scheme(&self) -> &'static str {
        if self.tls.is_some() { "wss" } else { "ws" }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// This endpoint's base URL with another port (same host), in cleartext.
    pub fn with_port(&self, port: u16) -> String {
        match self.addr.ip() {
            IpAddr::V6(ip) => format!("http://[{ip}]:{port}"),
            IpAddr::V4(ip) => format!("http://{ip}:{port}"),
        }
    }
}

/// Splits a base URL into host, port and authority; only `http://` with an empty path.
fn parse_base_url(url: &str) -> Result<(String, u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("base URL {url:?} must start with http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    if !(path.is_empty() || path == "/") {
        bail!("base URL {url:?} must not have a path (endpoints are fixed)");
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .with_context(|| format!("unclosed '[' in {url:?}"))?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => bail!("unexpected {after:?} after ']' in {url:?}"),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        bail!("base URL {url:?} has no host");
    }
    let port = match port {
        Some(port) => port
            .parse()
            .with_context(|| format!("bad port {port:?} in {url:?}"))?,
        None => 80,
    };
    Ok((host.to_owned(), port, authority.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_and_ports() {
        let (host, port, _) = parse_base_url("http://127.0.0.1:8080").expect("valid");
        assert_eq!((host.as_str(), port), ("127.0.0.1", 8080));
        let (host, port, _) = parse_base_url("http://[::1]:9000/").expect("valid");
        assert_eq!((host.as_str(), port), ("::1", 9000));
        let (host, port, _) = parse_base_url("http://localhost").expect("valid");
        assert_eq!((host.as_str(), port), ("localhost", 80));
        assert!(parse_base_url("https://127.0.0.1").is_err());
        assert!(parse_base_url("http://127.0.0.1:8080/x").is_err());
    }

    #[tokio::test]
    async fn refuses_non_loopback() {
        assert!(
            Endpoint::resolve("http://10.0.0.1:8080", None)
                .await
                .is_err()
        );
        assert!(
            Endpoint::resolve("http://example.com:8080", None)
                .await
                .is_err()
        );
        assert!(
            Endpoint::resolve("https://127.0.0.1:8443", None)
                .await
                .is_err(),
            "no --tls-ca"
        );
        let endpoint = Endpoint::resolve("http://127.0.0.2:8080", None)
            .await
            .expect("loopback");
        assert_eq!(endpoint.authority, "127.0.0.2:8080");
        assert_eq!(endpoint.port(), 8080);
    }
}
