//! TLS for the listener (`TLS_CERT_FILE`, `TLS_KEY_FILE`): the certificate and key read from PEM
//! files, checked (a certificate, a key that matches it, valid now), and served by rustls with
//! modern defaults only (TLS 1.2 and 1.3, the `ring` provider's safe cipher suites) and ALPN
//! `h2` then `http/1.1`.
//!
//! The certificate in use can be replaced while the server runs ([`Tls::reload`]): new
//! handshakes get the new one, connections already open keep theirs. A reload that fails (a file
//! half-written by a renewal tool, a key that does not match yet, an expired certificate) keeps
//! the current certificate; the caller logs why. Nothing here knows the settings or the server:
//! only the two paths.
//!
//! For the client commands, which reach this machine's server on a loopback address its
//! certificate does not name, [`local_client_config`] trusts exactly the certificate in
//! `TLS_CERT_FILE` (or, for `healthcheck`, any).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme, version};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

/// The ALPN protocols offered, in order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate and key cannot be served, naming the setting at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// A certificate and key read and checked.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// When the certificate expires.
    not_after: SystemTime,
    /// The digest of both files as read: a reload of the same bytes changes nothing.
    digest: [u8; 32],
}

/// The two files as read, and the digest of both.
struct Pair {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    digest: [u8; 32],
}

/// Reads the certificate chain at `cert` and the private key at `key`.
fn read(cert: &Path, key: &Path) -> Result<Pair, TlsError> {
    let read = |setting: &str, path: &Path| {
        std::fs::read(path)
            .map_err(|error| TlsError(format!("cannot read {setting} {}: {error}", path.display())))
    };
    let (cert_pem, key_pem) = (read("TLS_CERT_FILE", cert)?, read("TLS_KEY_FILE", key)?);
    let digest: [u8; 32] = Sha256::new()
        .chain_update(&cert_pem)
        .chain_update(&key_pem)
        .finalize()
        .into();
    Ok(Pair {
        cert_pem,
        key_pem,
        digest,
    })
}

/// Checks a pair read from `cert` and `key` (the paths, for messages).
fn check(pair: &Pair, cert: &Path, key: &Path, now: SystemTime) -> Result<Loaded, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&pair.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            TlsError(format!(
                "TLS_CERT_FILE {} is not valid PEM: {error}",
                cert.display()
            ))
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError(format!(
            "TLS_CERT_FILE {} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks, \
             the server's own first)",
            cert.display()
        )));
    };
    let not_after = check_validity(leaf, cert, now)?;
    let private_key = PrivateKeyDer::from_pem_slice(&pair.key_pem).map_err(|error| {
        TlsError(format!(
            "TLS_KEY_FILE {} holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {error}",
            key.display()
        ))
    })?;
    let certified =
        CertifiedKey::from_der(chain, private_key, &ring::default_provider()).map_err(|error| {
            TlsError(format!(
                "TLS_KEY_FILE {} does not go with TLS_CERT_FILE {}: {error}",
                key.display(),
                cert.display()
            ))
        })?;
    Ok(Loaded {
        key: Arc::new(certified),
        not_after,
        digest: pair.digest,
    })
}

/// Reads and checks the certificate chain at `cert` and the private key at `key`.
fn load(cert: &Path, key: &Path, now: SystemTime) -> Result<Loaded, TlsError> {
    check(&read(cert, key)?, cert, key, now)
}

/// Checks that `leaf` is valid at `now`; returns when it expires.
fn check_validity(
    leaf: &CertificateDer<'_>,
    path: &Path,
    now: SystemTime,
) -> Result<SystemTime, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|error| {
        TlsError(format!(
            "TLS_CERT_FILE {}: the first certificate cannot be read: {error}",
            path.display()
        ))
    })?;
    let validity = parsed.validity();
    let at = |time: &x509_parser::time::ASN1Time| {
        let seconds = u64::try_from(time.timestamp()).unwrap_or(0);
        UNIX_EPOCH + Duration::from_secs(seconds)
    };
    let (not_before, not_after) = (at(&validity.not_before), at(&validity.not_after));
    if now > not_after {
        return Err(TlsError(format!(
            "TLS_CERT_FILE {}: the certificate expired on {}",
            path.display(),
            validity.not_after
        )));
    }
    if now < not_before {
        return Err(TlsError(format!(
            "TLS_CERT_FILE {}: the certificate is not valid before {}",
            path.display(),
            validity.not_before
        )));
    }
    Ok(not_after)
}

/// The certificate handshakes get: swapped whole by a reload.
#[derive(Debug)]
struct Current {
    loaded: RwLock<Loaded>,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = self
            .loaded
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(Arc::clone(&loaded.key))
    }
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The files changed: new handshakes get the new certificate, which expires then.
    Replaced {
        /// When the new certificate expires.
        not_after: SystemTime,
    },
    /// The files hold what is served already.
    Unchanged,
}

/// The listener's TLS: an acceptor whose certificate can be replaced while it runs.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
    cert: PathBuf,
    key: PathBuf,
    /// The digest of the last pair a reload refused: the same files are not refused (and
    /// reported) again.
    refused: Arc<std::sync::Mutex<Option<[u8; 32]>>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads and checks the certificate chain at `cert` and the key at `key` (PEM): the error
    /// says what is wrong (unreadable, not PEM, no certificate, no key, a key that does not match,
    /// expired or not yet valid).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let loaded = load(cert, key, SystemTime::now())?;
        let current = Arc::new(Current {
            loaded: RwLock::new(loaded),
        });
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .map_err(|error| TlsError(format!("TLS configuration: {error}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = ALPN.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            cert: cert.to_owned(),
            key: key.to_owned(),
            refused: Arc::default(),
        })
    }

    /// The acceptor new connections go through.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// When the certificate in use expires.
    pub fn not_after(&self) -> SystemTime {
        self.current
            .loaded
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .not_after
    }

    /// Reads the files again; if they changed and are good, new handshakes get the new
    /// certificate. On an error the current one stays; the same refused files are then
    /// [`Reloaded::Unchanged`] until they change again.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        let pair = read(&self.cert, &self.key)?;
        let mut refused = self
            .refused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let served = self
            .current
            .loaded
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .digest;
        if pair.digest == served || *refused == Some(pair.digest) {
            return Ok(Reloaded::Unchanged);
        }
        let loaded = match check(&pair, &self.cert, &self.key, SystemTime::now()) {
            Ok(loaded) => loaded,
            Err(error) => {
                *refused = Some(pair.digest);
                return Err(error);
            }
        };
        *refused = None;
        let not_after = loaded.not_after;
        *self
            .current
            .loaded
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = loaded;
        Ok(Reloaded::Replaced { not_after })
    }
}

/// A client configuration for reaching this machine's own server on a loopback address, a name
/// its certificate does not carry: with `pin`, it trusts exactly the first certificate in that
/// PEM file (the server's own, `TLS_CERT_FILE`); without, any certificate (the handshake's
/// signatures are still checked), for the health probe, which must not fail while a renewed
/// certificate waits to be loaded.
pub fn local_client_config(pin: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let pinned = match pin {
        None => None,
        Some(cert) => {
            let pem = std::fs::read(cert).map_err(|error| {
                TlsError(format!(
                    "cannot read TLS_CERT_FILE {}: {error}",
                    cert.display()
                ))
            })?;
            let first = CertificateDer::pem_slice_iter(&pem)
                .next()
                .and_then(Result::ok);
            Some(first.ok_or_else(|| {
                TlsError(format!(
                    "TLS_CERT_FILE {} holds no certificate",
                    cert.display()
                ))
            })?)
        }
    };
    let provider = Arc::new(ring::default_provider());
    let verifier = Arc::new(Local {
        pinned,
        provider: Arc::clone(&provider),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|error| TlsError(format!("TLS configuration: {error}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

/// Accepts the one certificate it holds, or any (signatures are still checked).
#[derive(Debug)]
struct Local {
    pinned: Option<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Local {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(pinned) if end_entity.as_ref() != pinned.as_ref() => Err(rustls::Error::General(
                "the server's certificate is not the one in TLS_CERT_FILE".into(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, signed, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, signed, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost` and its key, as PEM, valid from `from` to `to`
    /// (seconds from now).
    fn certificate(from: i64, to: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::seconds(from);
        params.not_after = now + time::Duration::seconds(to);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn files(cert: &str, key: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        (dir, cert_path, key_path)
    }

    fn error(cert: &str, key: &str) -> String {
        let (_dir, cert, key) = files(cert, key);
        Tls::load(&cert, &key).unwrap_err().to_string()
    }

    #[test]
    fn a_good_pair_loads_and_a_reload_of_the_same_files_changes_nothing() {
        let (cert, key) = certificate(-60, 3600);
        let (_dir, cert_path, key_path) = files(&cert, &key);
        let tls = Tls::load(&cert_path, &key_path).unwrap();
        assert_eq!(tls.reload(), Ok(Reloaded::Unchanged));
        let (cert, key) = certificate(-60, 7200);
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        assert!(matches!(tls.reload(), Ok(Reloaded::Replaced { .. })));
    }

    #[test]
    fn a_failed_reload_keeps_the_current_certificate() {
        let (cert, key) = certificate(-60, 3600);
        let (_dir, cert_path, key_path) = files(&cert, &key);
        let tls = Tls::load(&cert_path, &key_path).unwrap();
        let before = tls.not_after();
        let (_, other_key) = certificate(-60, 3600);
        std::fs::write(&key_path, other_key).unwrap();
        let refused = tls.reload().unwrap_err().to_string();
        assert!(refused.contains("does not go with"), "{refused}");
        assert_eq!(tls.not_after(), before);
    }

    #[test]
    fn bad_files_are_refused_saying_why() {
        let (cert, key) = certificate(-60, 3600);
        let (_, other_key) = certificate(-60, 3600);
        let (expired, expired_key) = certificate(-7200, -3600);
        let (future, future_key) = certificate(3600, 7200);
        for (cert, key, why) in [
            (cert.as_str(), other_key.as_str(), "does not go with"),
            (expired.as_str(), expired_key.as_str(), "expired on"),
            (future.as_str(), future_key.as_str(), "not valid before"),
            ("", key.as_str(), "holds no certificate"),
            (key.as_str(), key.as_str(), "holds no certificate"),
            (cert.as_str(), "", "holds no usable private key"),
        ] {
            let message = error(cert, key);
            assert!(message.contains(why), "{why}: {message}");
        }
        let missing = Tls::load(
            Path::new("/nonexistent/cert.pem"),
            Path::new("/nonexistent/key"),
        );
        let message = missing.unwrap_err().to_string();
        assert!(
            message.starts_with("cannot read TLS_CERT_FILE /nonexistent/cert.pem"),
            "{message}"
        );
    }
}
