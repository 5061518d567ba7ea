//! TLS for `https://` targets: a client configuration trusting the certificate authority (or the
//! self-signed certificate) in `--tls-ca`, and connecting through it with the ALPN protocol the
//! connection will speak (`http/1.1` for WebSockets and HTTP/1.1 publishers, `h2` for HTTP/2
//! ones).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How to speak TLS to one server.
#[derive(Clone)]
pub struct Tls {
    http1: TlsConnector,
    http2: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Tls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Trusting the certificates in `ca_file` (PEM) for the server named `host`.
    pub fn new(ca_file: &Path, host: &str) -> Result<Self> {
        let pem = std::fs::read(ca_file)
            .with_context(|| format!("reading --tls-ca {}", ca_file.display()))?;
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            roots
                .add(certificate.context("--tls-ca is not PEM")?)
                .context("--tls-ca certificate")?;
        }
        if roots.is_empty() {
            bail!("--tls-ca {} holds no certificate", ca_file.display());
        }
        let connector = |alpn: &[u8]| -> Result<TlsConnector> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .context("TLS versions")?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(TlsConnector::from(Arc::new(config)))
        };
        Ok(Self {
            http1: connector(b"http/1.1")?,
            http2: connector(b"h2")?,
            name: ServerName::try_from(host.to_owned()).context("TLS server name")?,
        })
    }

    /// The TLS handshake over `stream`, offering HTTP/2 (`http2`) or HTTP/1.1 by ALPN.
    pub async fn connect(&self, stream: TcpStream, http2: bool) -> Result<TlsStream<TcpStream>> {
        let connector = if http2 { &self.http2 } else { &self.http1 };
        connector
            .connect(self.name.clone(), stream)
            .await
            .context("TLS handshake")
    }
}
