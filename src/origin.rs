//! Which browser pages may use the server: the `Origin` a browser sends on every cross-site request
//! (and on WebSocket handshakes) must be one of `CORS_ORIGINS`, or be the server's own origin.
//!
//! Requests without `Origin` (servers, curl, the CLI) are not browsers and are not concerned. With
//! `CORS_ORIGINS=*` every origin is allowed. Otherwise a page elsewhere cannot open a connection
//! with the user's credentials (cross-site WebSocket hijacking) nor push (cross-site request
//! forgery, e.g. a `no-cors` `fetch` or `sendBeacon`).
//!
//! The server's own pages (the web console, `/docs`) are recognised by an origin that names the
//! host the request was sent to — but `Host` is chosen by whoever resolved the name, so with DNS
//! rebinding a hostile page can make both say `evil.example`. The exemption therefore holds only
//! for loopback hosts (`localhost`, `127.0.0.0/8`, `[::1]`) and the hosts of `ALLOWED_HOSTS`.

use std::net::IpAddr;

use axum::http::{HeaderMap, header};

use crate::config::{AllowedHosts, CorsOrigins, host_of};

/// Refusal of a browser origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("origin {origin:?} is not allowed (CORS_ORIGINS)")]
pub struct ForeignOrigin {
    /// The `Origin` the request carried.
    pub origin: String,
}

/// Checks the request's `Origin`, if it has one, against `CORS_ORIGINS` and the same-origin
/// exemption (see the module docs).
pub fn check_origin(
    allowed: &CorsOrigins,
    hosts: &AllowedHosts,
    headers: &HeaderMap,
) -> Result<(), ForeignOrigin> {
    let (CorsOrigins::List(list), Some(origin)) = (allowed, headers.get(header::ORIGIN)) else {
        return Ok(());
    };
    let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
    if list.contains(&origin) || own_origin(&origin, hosts, headers) {
        Ok(())
    } else {
        Err(ForeignOrigin { origin })
    }
}

/// Whether `origin` (`scheme://host[:port]`) names the host this request was sent to (`Host`),
/// and that host is one the server answers for: loopback or in `ALLOWED_HOSTS`.
fn own_origin(origin: &str, hosts: &AllowedHosts, headers: &HeaderMap) -> bool {
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok());
    let (Some(authority), Some(host)) = (authority, host) else {
        return false;
    };
    authority.eq_ignore_ascii_case(host) && (is_loopback(host) || hosts.contains(host))
}

/// Whether `authority` (`host[:port]`) names this machine's loopback interface.
fn is_loopback(authority: &str) -> bool {
    let host = host_of(authority);
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn request(origin: &str, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        headers
    }

    fn list(origins: &str) -> CorsOrigins {
        CorsOrigins::parse(origins).unwrap()
    }

    #[test]
    fn listed_origins_pass_and_others_are_refused() {
        let allowed = list("https://app.example.com");
        let none = AllowedHosts::default();
        let ok = request("https://app.example.com", "push.example.com");
        assert!(check_origin(&allowed, &none, &ok).is_ok());
        let evil = request("https://evil.example", "push.example.com");
        assert_eq!(
            check_origin(&allowed, &none, &evil).unwrap_err().origin,
            "https://evil.example"
        );
        assert!(check_origin(&CorsOrigins::Any, &none, &evil).is_ok());
        assert!(check_origin(&allowed, &none, &HeaderMap::new()).is_ok());
    }

    #[test]
    fn the_own_origin_counts_only_for_loopback_or_allowed_hosts() {
        let allowed = list("https://app.example.com");
        let none = AllowedHosts::default();
        for (origin, host) in [
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://localhost:8080", "localhost:8080"),
            ("http://[::1]:8080", "[::1]:8080"),
        ] {
            assert!(check_origin(&allowed, &none, &request(origin, host)).is_ok());
        }
        let rebound = request("http://evil.example:8080", "evil.example:8080");
        assert!(
            check_origin(&allowed, &none, &rebound).is_err(),
            "DNS rebinding"
        );
        let listed = AllowedHosts::parse("push.example.com:8080").unwrap();
        let own = request("https://push.example.com:8080", "push.example.com:8080");
        assert!(check_origin(&allowed, &listed, &own).is_ok());
        assert!(check_origin(&allowed, &listed, &rebound).is_err());
    }

    #[test]
    fn hosts_are_split_from_their_ports() {
        assert_eq!(host_of("example.com:80"), "example.com");
        assert_eq!(host_of("example.com"), "example.com");
        assert_eq!(host_of("[::1]:8080"), "[::1]");
        assert_eq!(host_of("[::1]"), "[::1]");
        let hosts = AllowedHosts::parse("Push.Example.com, other.example:8443").unwrap();
        assert!(hosts.contains("push.example.com:8080"), "any port");
        assert!(hosts.contains("other.example:8443"));
        assert!(!hosts.contains("other.example:80"), "that port only");
        assert!(AllowedHosts::parse("http://x").is_err());
    }
}
