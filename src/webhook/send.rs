//! Delivery: one task per lane takes its lane's webhooks in order and POSTs each, signed anew per
//! attempt, until a 2xx answer or `WEBHOOK_MAX_ATTEMPTS`. A timeout, a connection error or any
//! other status is retried after `WEBHOOK_RETRY_INITIAL` × 2ⁿ (at most [`MAX_BACKOFF`]), each
//! wait drawn at random between half and all of that ("equal jitter"), so that many nodes
//! retrying after an outage of the receiver spread out. Redirects are not followed.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::WebhookSettings;
use super::queue::{Pending, Queue};
use crate::lifecycle::Lifecycle;

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Builds the HTTP client and starts one delivery task per lane.
pub(super) fn start(
    settings: WebhookSettings,
    queue: Arc<Queue>,
    lifecycle: &Lifecycle,
) -> Result<(), String> {
    let client = client(&settings)?;
    let settings = Arc::new(settings);
    for lane in 0..queue.lanes() {
        let (client, settings, queue) = (client.clone(), Arc::clone(&settings), Arc::clone(&queue));
        lifecycle.spawn_background(async move {
            loop {
                let pending = queue.next(lane).await;
                let outcome = deliver(&client, &settings, &queue, &pending).await;
                queue.done(&pending, outcome);
            }
        });
    }
    Ok(())
}

/// The HTTP client of the webhook endpoint.
type HttpClient = Client<HttpsConnector<HttpConnector>, Full<bytes::Bytes>>;

/// An HTTP/1.1 client for the webhook endpoint (`http` or `https`: rustls with the Mozilla
/// roots), keeping one idle connection per lane; it never follows redirects.
fn client(settings: &WebhookSettings) -> Result<HttpClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS for webhooks: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.timeout));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(settings.concurrency)
        .build(connector))
}

/// Tries to deliver `pending` until it succeeds or the attempts run out; returns why the last
/// attempt failed when they do.
async fn deliver(
    client: &HttpClient,
    settings: &WebhookSettings,
    queue: &Queue,
    pending: &Pending,
) -> Result<(), String> {
    let mut attempt = 1;
    loop {
        let why = match post(client, settings, pending).await {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        queue.attempt_failed(why.clone());
        let kind: &'static str = pending.kind.into();
        if attempt >= settings.max_attempts {
            tracing::warn!(
                webhook_id = %pending.id,
                kind,
                attempts = attempt,
                error = %why,
                "webhook given up (WEBHOOK_MAX_ATTEMPTS)"
            );
            return Err(why);
        }
        tracing::debug!(webhook_id = %pending.id, kind, attempt, error = %why, "webhook attempt failed");
        tokio::time::sleep(backoff(settings.retry_initial, attempt)).await;
        attempt += 1;
    }
}

/// One attempt, within `WEBHOOK_TIMEOUT` (connecting, sending and the answer's head): a 2xx
/// answer is a delivery. The answer's body is not read.
async fn post(
    client: &HttpClient,
    settings: &WebhookSettings,
    pending: &Pending,
) -> Result<(), String> {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signature = settings.secret.sign(&pending.id, timestamp, &pending.body);
    let request = Request::post(settings.url.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(USER_AGENT, HeaderValue::from_static(AGENT))
        .header("webhook-id", &pending.id)
        .header("webhook-timestamp", timestamp)
        .header("webhook-signature", signature)
        .body(Full::new(pending.body.clone()))
        .map_err(|e| format!("request: {e}"))?;
    let response = tokio::time::timeout(settings.timeout, client.request(request))
        .await
        .map_err(|_| "no answer within WEBHOOK_TIMEOUT".to_owned())?
        .map_err(|error| {
            if error.is_connect() {
                "could not connect to the receiver".to_owned()
            } else {
                format!("request failed: {error}")
            }
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {status}"))
    }
}

/// The `User-Agent` of webhook requests.
const AGENT: &str = concat!("websocket-sse-server/", env!("CARGO_PKG_VERSION"));

/// The wait after failed attempt `attempt` (from 1): `initial` × 2^(attempt-1), at most
/// [`MAX_BACKOFF`], drawn between half and all of it.
pub fn backoff(initial: Duration, attempt: u32) -> Duration {
    let full = initial
        .saturating_mul(1 << attempt.saturating_sub(1).min(20))
        .min(MAX_BACKOFF);
    full.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let initial = Duration::from_secs(1);
        for attempt in 1..=10 {
            let full = Duration::from_secs(1 << (attempt - 1)).min(MAX_BACKOFF);
            let wait = backoff(initial, attempt);
            assert!(wait >= full / 2 && wait <= full, "{attempt}: {wait:?}");
        }
        assert!(backoff(initial, 1000) <= MAX_BACKOFF);
    }
}
