//! The `healthcheck` subcommand: asks a running server for `/health`, for container health checks
//! in images that have no curl. With TLS on (`TLS_CERT_FILE`) it speaks TLS to the loopback
//! address without checking whose certificate it gets: it asks whether this machine's server is
//! healthy, and a renewed certificate that is not loaded yet (or was refused) must not make it
//! look ill and get it restarted.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::Settings;
use crate::tls::local_client_config;

/// How long the whole probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The host to reach this machine's server on: loopback when the server binds every interface.
/// Also the default host of the `push` and `listen` commands.
pub fn probe_host(bind_host: &str) -> &str {
    match bind_host {
        "0.0.0.0" => "127.0.0.1",
        "::" => "::1",
        other => other,
    }
}

/// Probes `GET /health` on the configured port (over TLS when it is on); `Ok` when it answers
/// 200.
pub async fn probe(settings: &Settings) -> Result<(), String> {
    let host = probe_host(&settings.host);
    let attempt = async {
        let stream = TcpStream::connect((host, settings.port))
            .await
            .map_err(|e| e.to_string())?;
        match &settings.tls_cert_file {
            None => ask_for_health(stream, host).await,
            Some(_) => {
                // Any certificate: a renewed one may not be loaded yet, and that is no illness.
                let config = local_client_config(None).map_err(|e| e.to_string())?;
                let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
                let stream = TlsConnector::from(Arc::new(config))
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                ask_for_health(stream, host).await
            }
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("no answer within {PROBE_TIMEOUT:?}"))?
        .map_err(|error| format!("{host}:{}: {error}", settings.port))
}

/// `GET /health` over HTTP/1.1 on `stream`.
async fn ask_for_health<S>(stream: S, host: &str) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::get("/health")
        .header(header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    match response.status() {
        StatusCode::OK => Ok(()),
        status => Err(format!("/health answered {status}")),
    }
}
