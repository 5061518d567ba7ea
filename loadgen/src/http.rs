//! A minimal keep-alive HTTP client (hyper: HTTP/1.1, or HTTP/2 with `--http2`; cleartext or TLS)
//! and polling of the server's connection count.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::client::conn::{http1, http2};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::endpoint::Endpoint;
use crate::target::Target;

/// Longest wait for a TCP connect or one request/response exchange.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

type Body = BoxBody<Bytes, std::convert::Infallible>;

/// The request side of a connection.
enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

/// One keep-alive HTTP connection to the server.
pub struct HttpConn {
    sender: Sender,
    authority: String,
    /// The server answered `Connection: close`: the next request needs a new connection.
    closing: bool,
}

impl HttpConn {
    /// Opens a TCP connection (TCP_NODELAY), TLS when the endpoint has it, and performs the
    /// HTTP/1.1 (or, for `--http2`, the HTTP/2) handshake.
    pub async fn connect(endpoint: &Endpoint) -> Result<Self> {
        let open = async {
            let stream = TcpStream::connect(endpoint.addr)
                .await
                .context("HTTP connect")?;
            stream.set_nodelay(true).context("TCP_NODELAY")?;
            match &endpoint.tls {
                None => handshake(stream, endpoint.http2).await,
                Some(tls) => {
                    handshake(tls.connect(stream, endpoint.http2).await?, endpoint.http2).await
                }
            }
        };
        let sender = tokio::time::timeout(REQUEST_TIMEOUT, open)
            .await
            .context("HTTP connect timed out")??;
        Ok(Self {
            sender,
            authority: endpoint.authority.clone(),
            closing: false,
        })
    }

    /// POSTs a JSON body to `path` (with its query, if any); returns the status and the full
    /// response body.
    pub async fn post_json(&mut self, path: &str, body: Bytes) -> Result<(StatusCode, Bytes)> {
        self.post_json_within(path, body, REQUEST_TIMEOUT).await
    }

    /// [`Self::post_json`] with its own time limit for the whole exchange (for requests the
    /// server may legitimately take long over, like one event to thousands of users).
    pub async fn post_json_within(
        &mut self,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes)> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body).boxed())
            .context("building request")?;
        self.exchange(request, timeout).await
    }

    /// GETs `path`; returns the status and the full response body.
    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, Bytes)> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, &self.authority)
            .body(Empty::new().boxed())
            .context("building request")?;
        self.exchange(request, REQUEST_TIMEOUT).await
    }

    /// True while the connection can still carry requests (the server did not close it or ask
    /// for it to be closed).
    pub fn is_open(&self) -> bool {
        let closed = match &self.sender {
            Sender::Http1(sender) => sender.is_closed(),
            Sender::Http2(sender) => sender.is_closed(),
        };
        !self.closing && !closed
    }

    /// Sends `request` and reads the whole response, all within `timeout`.
    async fn exchange(
        &mut self,
        request: Request<Body>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes)> {
        let exchange = async {
            let response = match &mut self.sender {
                Sender::Http1(sender) => {
                    sender.ready().await.context("connection not ready")?;
                    sender.send_request(request).await
                }
                Sender::Http2(sender) => {
                    sender.ready().await.context("connection not ready")?;
                    sender.send_request(request).await
                }
            }
            .context("sending request")?;
            let status = response.status();
            let closing = response
                .headers()
                .get(header::CONNECTION)
                .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
            let body = response
                .into_body()
                .collect()
                .await
                .context("reading response body")?
                .to_bytes();
            Ok::<_, anyhow::Error>((status, body, closing))
        };
        let (status, body, closing) = tokio::time::timeout(timeout, exchange)
            .await
            .context("request timed out")??;
        self.closing = closing;
        Ok((status, body))
    }
}

/// The HTTP/1.1 or HTTP/2 handshake over `io`; the connection runs in a task of its own, which
/// ends when the socket closes (errors surface on the next request).
async fn handshake<I>(io: I, http2: bool) -> Result<Sender>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    if http2 {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .context("HTTP/2 handshake")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        return Ok(Sender::Http2(sender));
    }
    let (sender, connection) = http1::handshake(io).await.context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Sender::Http1(sender))
}

/// Reads the server's open-connection count (`/health`'s `connections` for ours) over a fresh
/// connection; fails for targets that do not report one.
pub async fn server_connections(target: &Target) -> Result<u64> {
    let Some(source) = target.protocol.connection_count() else {
        bail!("{} does not report its connection count", target.kind);
    };
    let mut conn = HttpConn::connect(&target.api).await?;
    let (status, body) = conn.get(source.path).await?;
    if !status.is_success() {
        bail!("{} answered {status}", source.path);
    }
    let document: serde_json::Value =
        serde_json::from_slice(&body).with_context(|| format!("parsing {}", source.path))?;
    document
        .pointer(source.pointer)
        .and_then(serde_json::Value::as_u64)
        .with_context(|| format!("{} has no number at {}", source.path, source.pointer))
}

/// Polls the connection count every 100 ms until it is at least `want`, or fails after
/// `timeout`; returns the last count seen.
pub async fn wait_for_connections(target: &Target, want: u64, timeout: Duration) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    let mut last = 0;
    loop {
        match server_connections(target).await {
            Ok(count) if count >= want => return Ok(count),
            Ok(count) => last = count,
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            bail!(
                "the server shows {last} connections after {timeout:?}, expected at least {want} \
                 (per-user or global connection limit? see loadgen/README.md)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the connection count until it is at most `want` or `timeout` passes; returns the last
/// count seen (or `None` if the server never answered).
pub async fn wait_for_at_most(target: &Target, want: u64, timeout: Duration) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(count) = server_connections(target).await {
            last = Some(count);
            if count <= want {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}
