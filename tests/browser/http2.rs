//! Server-Sent Events past the browser's six-connections-per-origin limit: headless Chromium
//! opens ten `EventSource`s to one HTTPS origin (the server with TLS on, a certificate made by
//! the test and trusted by its public key on Chromium's command line), which HTTP/2 carries on
//! one connection; over HTTP/1.1 the seventh would hang. Every stream must open and receive its
//! own user's event, and the pushes must have gone over `h2`.

use base64::Engine as _;
use rcgen::PublicKeyData as _;
use sha2::{Digest, Sha256};

use super::*;

/// The streams the page opens: more than HTTP/1.1's six per origin.
const STREAMS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_eventsources_to_one_https_origin_all_receive_over_http2() {
    let Some(chromium) = browser_tools() else {
        return;
    };
    let key = rcgen::KeyPair::generate().expect("a key");
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate parameters");
    let certificate = params.self_signed(&key).expect("a certificate");
    let spki = base64::engine::general_purpose::STANDARD
        .encode(Sha256::digest(key.subject_public_key_info()));
    let dir = tempfile::tempdir().expect("a directory");
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, certificate.pem()).expect("write the certificate");
    std::fs::write(&key_file, key.serialize_pem()).expect("write the key");

    let page = {
        use axum::response::Html;
        use axum::routing::get;
        serve_pages(axum::Router::new().route(
            "/",
            get(|| async { Html(include_str!("http2-streams.html")) }),
        ))
        .await
    };
    let app = helpers::spawn_app(&[
        "--tls-cert-file",
        cert_file.to_str().expect("a UTF-8 path"),
        "--tls-key-file",
        key_file.to_str().expect("a UTF-8 path"),
        "--cors-origins",
        page.trim_end_matches('/'),
    ])
    .await;
    let server = format!("https://localhost:{}", app.addr.port());
    let mut url = reqwest::Url::parse(&page).expect("page URL");
    url.query_pairs_mut().append_pair("server", &server);
    let mut browser = Browser::spawn(
        &chromium,
        "http2-streams.mjs",
        &[url.as_str(), &spki],
        "30000",
    );

    browser
        .wait_for_within(STARTUP, "every stream open and pushed to", |line| {
            line["kind"] == "pushed" && line["n"] == STREAMS - 1
        })
        .await;
    for n in 0..STREAMS {
        browser
            .wait_for("the stream's own event", |line| {
                line["kind"] == "event" && line["n"] == n && line["data"]["n"] == n
            })
            .await;
    }
    let result = browser.finish().await;
    assert_eq!(result["ok"], true, "{result}");
    let log = result["log"].as_array().expect("the page's record");
    let opened = log.iter().filter(|entry| entry["kind"] == "open").count();
    assert_eq!(opened as u64, STREAMS, "{log:?}");
    assert!(
        log.iter().all(|entry| entry["kind"] != "error"),
        "no stream failed: {log:?}"
    );
    let events = log.iter().filter(|entry| entry["kind"] == "event").count();
    assert_eq!(events as u64, STREAMS, "one event each: {log:?}");
    let responses: Vec<&Value> = result["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .filter(|response| {
            response["url"]
                .as_str()
                .is_some_and(|url| url.starts_with(&server))
        })
        .collect();
    assert!(
        responses.len() as u64 >= STREAMS * 2,
        "streams and pushes: {responses:?}"
    );
    assert!(
        responses
            .iter()
            .all(|response| response["protocol"] == "h2"),
        "{responses:?}"
    );
}
