//! TLS and HTTP/2 in the server itself: certificates made by the test (rcgen), real TLS clients
//! (rustls) speaking HTTP/2 (hyper's client, many streams on one connection) or HTTP/1.1 and
//! WebSocket (tungstenite), cleartext HTTP/2 with prior knowledge, a certificate replaced while
//! connections are open, and bad certificate files at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::helpers::{TestApp, server_command, spawn_app};

/// Longest wait for one step.
const STEP: Duration = Duration::from_secs(10);

/// A self-signed certificate for `localhost` and 127.0.0.1, and its key.
struct TestCertificate {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCertificate {
    /// Valid from `from` to `to` seconds from now.
    fn valid(from: i64, to: i64) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::seconds(from);
        params.not_after = now + time::Duration::seconds(to);
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Good for a day.
    fn fresh() -> Self {
        Self::valid(-60, 86_400)
    }

    /// Writes the two PEM files into `dir`; returns their paths.
    fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// A server with TLS on, its certificate files in `dir` (reloaded every second unless `flags`
/// say otherwise).
async fn tls_app(dir: &Path, certificate: &TestCertificate, flags: &[&str]) -> TestApp {
    let (cert, key) = certificate.write(dir);
    let mut all = vec![
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
    ];
    if !flags.contains(&"--tls-reload-interval") {
        all.extend(["--tls-reload-interval", "1"]);
    }
    all.extend_from_slice(flags);
    spawn_app(&all).await
}

/// A TLS connection to `addr` trusting `trusted` only, offering `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    try_tls_connect(addr, trusted, alpn)
        .await
        .expect("TLS handshake")
}

/// [`tls_connect`], or the handshake's error.
async fn try_tls_connect(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// An HTTP/2 connection over `io`: its request sender (the connection runs in a task).
async fn http2<I>(io: I) -> SendRequest<Full<Bytes>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

/// Sends a request on an HTTP/2 connection; returns the response head and body.
async fn send(
    sender: &SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> hyper::Response<Incoming> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map_or_else(Bytes::new, |body| Bytes::from(body.to_string()));
    let mut sender = sender.clone();
    tokio::time::timeout(
        STEP,
        sender.send_request(request.body(Full::new(body)).unwrap()),
    )
    .await
    .expect("an answer in time")
    .expect("a response")
}

/// Pushes `body` over an HTTP/2 connection; returns the server's JSON answer.
async fn push(sender: &SendRequest<Full<Bytes>>, body: Value) -> Value {
    json_of(send(sender, "POST", "/sse/push", Some(body)).await).await
}

/// The whole body of `response` as JSON.
async fn json_of(response: hyper::Response<Incoming>) -> Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// Waits until the server (asked over `h2`) has `n` registered connections.
async fn wait_for_connections(h2: &SendRequest<Full<Bytes>>, n: u64) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let health = json_of(send(h2, "GET", "/health", None).await).await;
        if health["connections"] == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} connections: {health}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads an event stream until its text holds `needle`; returns the text so far.
async fn read_until(body: &mut Incoming, needle: &str) -> String {
    let mut text = String::new();
    let read = async {
        while !text.contains(needle) {
            let frame = body.frame().await.expect("the stream goes on").unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
    };
    tokio::time::timeout(STEP, read)
        .await
        .unwrap_or_else(|_| panic!("{needle:?} did not come; got {text:?}"));
    text
}

#[tokio::test]
async fn over_tls_http2_is_chosen_by_alpn_and_websockets_take_http11() {
    let dir = tempfile::tempdir().unwrap();
    let certificate = TestCertificate::fresh();
    let app = tls_app(dir.path(), &certificate, &[]).await;

    let tls = tls_connect(app.addr, &certificate.der, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let h2 = http2(tls).await;
    let health = send(&h2, "GET", "/health", None).await;
    assert_eq!(health.status(), 200);
    assert_eq!(health.version(), hyper::Version::HTTP_2);

    let tls = tls_connect(app.addr, &certificate.der, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws?user_id=secure", tls)
        .await
        .expect("WebSocket over TLS");
    let pushed = push(&h2, json!({"user_id": "secure", "data": {"over": "wss"}})).await;
    assert_eq!(pushed["delivered"], 1, "{pushed}");
    let frame = tokio::time::timeout(STEP, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(event["data"], json!({"over": "wss"}));
    ws.close(None).await.unwrap();

    // A WebSocket handshake over HTTP/2 cannot upgrade: it is told so.
    let refused = send(&h2, "GET", "/ws?user_id=secure", None).await;
    assert_eq!(refused.status(), 426);
}

#[tokio::test]
async fn twenty_sse_streams_and_many_pushes_share_one_http2_connection() {
    let dir = tempfile::tempdir().unwrap();
    let certificate = TestCertificate::fresh();
    let app = tls_app(dir.path(), &certificate, &[]).await;
    let h2 = http2(tls_connect(app.addr, &certificate.der, &[b"h2"]).await).await;

    let mut streams = Vec::new();
    for n in 0..20 {
        let response = send(&h2, "GET", &format!("/sse/stream?user_id=h2-{n}"), None).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        streams.push(response.into_body());
    }
    wait_for_connections(&h2, 20).await;

    // Every user's event, pushed concurrently on the same connection, three rounds.
    for round in 0..3 {
        let pushes = (0..20).map(|n| {
            let h2 = h2.clone();
            async move {
                let body = json!({"user_id": format!("h2-{n}"), "data": {"n": n, "round": round}});
                push(&h2, body).await
            }
        });
        for pushed in futures_util::future::join_all(pushes).await {
            assert_eq!(pushed["delivered"], 1, "{pushed}");
        }
        for (n, stream) in streams.iter_mut().enumerate() {
            let text = read_until(stream, &format!(r#""round":{round}"#)).await;
            assert!(text.contains(&format!(r#""n":{n}"#)), "stream {n}: {text}");
            assert!(
                !text.contains(r#""user_id":"h2-"#)
                    || text.contains(&format!(r#""user_id":"h2-{n}""#))
            );
        }
    }

    // Shutdown ends every stream (and sends the connection a GOAWAY).
    app.lifecycle.begin_shutdown();
    for stream in &mut streams {
        read_until(stream, "server shutting down").await;
    }
}

#[tokio::test]
async fn cleartext_http2_with_prior_knowledge_serves_the_api_and_sse() {
    let app = spawn_app(&[]).await;
    let h2 = http2(TcpStream::connect(app.addr).await.unwrap()).await;
    let health = send(&h2, "GET", "/health", None).await;
    assert_eq!(health.version(), hyper::Version::HTTP_2);
    assert_eq!(json_of(health).await["status"], "healthy");
    let mut stream = send(&h2, "GET", "/sse/stream?user_id=h2c", None)
        .await
        .into_body();
    app.wait_for_connections(1).await;
    let pushed = app
        .push(json!({"user_id": "h2c", "data": {"via": "h2c"}}))
        .await;
    assert_eq!(pushed["delivered"], 1, "{pushed}");
    read_until(&mut stream, r#""via":"h2c""#).await;
    // HTTP/1.1 on the same port is unchanged.
    assert_eq!(app.health().await["status"], "healthy");
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections_while_old_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (TestCertificate::fresh(), TestCertificate::fresh());
    let app = tls_app(dir.path(), &old, &[]).await;
    let h2 = http2(tls_connect(app.addr, &old.der, &[b"h2"]).await).await;
    let mut stream = send(&h2, "GET", "/sse/stream?user_id=renewed", None)
        .await
        .into_body();
    wait_for_connections(&h2, 1).await;

    new.write(dir.path());
    let deadline = tokio::time::Instant::now() + STEP;
    let served = loop {
        if let Ok(tls) = try_tls_connect(app.addr, &new.der, &[]).await {
            break tls;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        served.get_ref().1.peer_certificates().unwrap()[0],
        new.der,
        "new connections get the new certificate"
    );

    // The connection made with the old certificate still works, its stream too.
    let pushed = push(
        &h2,
        json!({"user_id": "renewed", "data": {"after": "reload"}}),
    )
    .await;
    assert_eq!(pushed["delivered"], 1, "{pushed}");
    read_until(&mut stream, r#""after":"reload""#).await;

    // A bad replacement (a key that does not match) is refused; the new certificate stays.
    std::fs::write(dir.path().join("key.pem"), TestCertificate::fresh().key_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = try_tls_connect(app.addr, &new.der, &[]).await.unwrap();
    assert_eq!(
        again.get_ref().1.peer_certificates().unwrap()[0],
        new.der,
        "the good certificate is still served"
    );
}

#[tokio::test]
async fn bad_certificate_files_stop_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = TestCertificate::fresh();
    let (cert, key) = good.write(dir.path());
    let expired = dir.path().join("expired");
    std::fs::create_dir(&expired).unwrap();
    let (expired_cert, expired_key) = TestCertificate::valid(-7200, -3600).write(&expired);
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (_, other_key) = TestCertificate::fresh().write(&other);
    let missing = dir.path().join("missing.pem");
    let path = |path: &Path| path.to_str().unwrap().to_owned();

    for (flags, why) in [
        (vec!["--tls-cert-file".to_owned(), path(&cert)], "set both"),
        (
            vec![
                "--tls-cert-file".to_owned(),
                path(&cert),
                "--tls-key-file".to_owned(),
                path(&other_key),
            ],
            "does not go with",
        ),
        (
            vec![
                "--tls-cert-file".to_owned(),
                path(&expired_cert),
                "--tls-key-file".to_owned(),
                path(&expired_key),
            ],
            "expired on",
        ),
        (
            vec![
                "--tls-cert-file".to_owned(),
                path(&missing),
                "--tls-key-file".to_owned(),
                path(&key),
            ],
            "cannot read TLS_CERT_FILE",
        ),
    ] {
        let mut command = server_command(dir.path());
        command
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(&flags);
        let output = tokio::time::timeout(STEP, command.output())
            .await
            .expect("it exits at once")
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(why), "{why:?} in {stderr:?}");
    }
}

#[tokio::test]
async fn healthcheck_speaks_tls_and_a_renewal_not_loaded_yet_is_no_illness() {
    let dir = tempfile::tempdir().unwrap();
    let certificate = TestCertificate::fresh();
    let app = tls_app(dir.path(), &certificate, &["--tls-reload-interval", "0"]).await;
    let port = app.addr.port().to_string();
    let healthcheck = |tls: bool| {
        let mut command = server_command(dir.path());
        command
            .arg("healthcheck")
            .env("HOST", "127.0.0.1")
            .env("PORT", &port);
        if tls {
            command
                .env("TLS_CERT_FILE", dir.path().join("cert.pem"))
                .env("TLS_KEY_FILE", dir.path().join("key.pem"));
        }
        async move {
            tokio::time::timeout(STEP, command.output())
                .await
                .unwrap()
                .unwrap()
        }
    };
    let healthy = healthcheck(true).await;
    assert_eq!(healthy.status.code(), Some(0), "{healthy:?}");
    // Plain HTTP to a TLS listener: not an answer.
    let plain = healthcheck(false).await;
    assert_eq!(plain.status.code(), Some(1), "{plain:?}");
    // Renewed files the server has not loaded (reloads on SIGHUP only here): still healthy.
    TestCertificate::fresh().write(dir.path());
    let renewed = healthcheck(true).await;
    assert_eq!(renewed.status.code(), Some(0), "{renewed:?}");
}

#[tokio::test]
async fn an_http2_sse_stream_the_client_resets_ends_its_session_at_once() {
    let app = spawn_app(&["--sse-keepalive", "0"]).await;
    let h2 = http2(TcpStream::connect(app.addr).await.unwrap()).await;
    let stream = send(&h2, "GET", "/sse/stream?user_id=gone", None).await;
    wait_for_connections(&h2, 1).await;
    drop(stream); // the client resets the stream
    let metrics = app
        .wait_for_metrics("the session to end", |metrics| {
            metrics["active_connections"] == 0
        })
        .await;
    assert_eq!(
        metrics["connections_closed_total"]["client_closed"], 1,
        "{metrics}"
    );
}

#[tokio::test]
async fn an_http2_sse_stream_whose_client_stops_reading_is_cut_while_its_connection_goes_on() {
    let app = spawn_app(&["--ws-write-timeout", "1"]).await;
    // A client that grants the stream 1 KiB and then never reads it (nor grants more).
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1024)
        .handshake(TokioIo::new(TcpStream::connect(app.addr).await.unwrap()))
        .await
        .unwrap();
    tokio::spawn(connection);
    let stalled = send(&sender, "GET", "/sse/stream?user_id=stalled", None).await;
    assert_eq!(stalled.status(), 200);
    wait_for_connections(&sender, 1).await;
    let pad = "x".repeat(8 * 1024);
    for n in 0..50 {
        app.push(json!({"user_id": "stalled", "data": {"n": n, "pad": pad}}))
            .await;
    }
    let metrics = app
        .wait_for_metrics("the stalled stream cut as a slow consumer", |metrics| {
            metrics["connections_closed_total"]["slow_consumer"] == 1
        })
        .await;
    assert_eq!(metrics["active_connections"], 0, "{metrics}");
    // The connection it was on serves on.
    let health = send(&sender, "GET", "/health", None).await;
    assert_eq!(health.status(), 200);
    drop(stalled);
}

#[tokio::test]
async fn push_and_listen_speak_tls_to_https_and_wss_urls() {
    let dir = tempfile::tempdir().unwrap();
    let certificate = TestCertificate::fresh();
    let app = tls_app(dir.path(), &certificate, &[]).await;
    let h2 = http2(tls_connect(app.addr, &certificate.der, &[b"h2"]).await).await;
    let ca = dir.path().join("cert.pem");
    let port = app.addr.port();
    let client = |args: &[String]| {
        let mut command = server_command(dir.path());
        command.args(args);
        command
    };
    let strings = |args: &[&str]| args.iter().map(|arg| (*arg).to_owned()).collect::<Vec<_>>();
    let ca_file = ca.to_str().unwrap();

    let wss = format!("wss://localhost:{port}");
    let listen = client(&strings(&[
        "listen",
        "--url",
        &wss,
        "--user",
        "cli-tls",
        "--count",
        "1",
        "--ca-file",
        ca_file,
    ]))
    .spawn()
    .unwrap();
    wait_for_connections(&h2, 1).await;

    let https = format!("https://localhost:{port}");
    let push = |extra: &[&str]| {
        let mut args = strings(&[
            "push",
            "--url",
            &https,
            "--user",
            "cli-tls",
            "--data",
            r#"{"over":"https"}"#,
        ]);
        args.extend(strings(extra));
        client(&args).output()
    };
    let untrusted = tokio::time::timeout(STEP, push(&[]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(untrusted.status.code(), Some(1), "{untrusted:?}");
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("TLS"),
        "{untrusted:?}"
    );
    let pushed = tokio::time::timeout(STEP, push(&["--ca-file", ca_file]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pushed.status.code(), Some(0), "{pushed:?}");

    let listened = tokio::time::timeout(STEP, listen.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(listened.status.code(), Some(0), "{listened:?}");
    let line = String::from_utf8_lossy(&listened.stdout);
    let event: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(event["data"], json!({"over": "https"}));
    assert!(
        String::from_utf8_lossy(&listened.stderr)
            .contains(&format!("connected to wss://localhost:{port}/ws"))
    );
}

#[tokio::test]
async fn an_idle_http2_connection_is_sent_away_and_one_with_an_open_stream_is_not() {
    let app = spawn_app(&["--http-request-timeout", "1"]).await;
    let idle = http2(TcpStream::connect(app.addr).await.unwrap()).await;
    let busy = http2(TcpStream::connect(app.addr).await.unwrap()).await;
    assert_eq!(send(&idle, "GET", "/health", None).await.status(), 200);
    let mut stream = send(&busy, "GET", "/sse/stream?user_id=stays", None)
        .await
        .into_body();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !idle.is_closed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle connection was never sent away"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !busy.is_closed(),
        "a connection with an open stream is not idle"
    );
    let pushed = app
        .push(json!({"user_id": "stays", "data": {"still": "here"}}))
        .await;
    assert_eq!(pushed["delivered"], 1, "{pushed}");
    read_until(&mut stream, r#""still":"here""#).await;
}
