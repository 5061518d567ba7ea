//! Delivery: one task per lane takes its lane's webhooks in order and POSTs each, signed anew per
//! attempt, until a 2xx answer or `WEBHOOK_MAX_ATTEMPTS`. A 4xx other than 408 and 429 is the
//! receiver refusing that webhook (a "poison" message must not hold its lane for minutes): it is
//! given up at once. A timeout, a connection error or any other status is retried after `WEBHOOK_RETRY_INITIAL` × 2ⁿ (at most [`MAX_BACKOFF`]), each
//! wait drawn at random between half and all of that ("equal jitter"), so that many nodes
//! retrying after an outage of the receiver spread out. Redirects are not followed.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::{Request, StatusCode};
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
type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

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

/// Tries to deliver `pending` until it succeeds, the attempts run out, or the receiver refuses
/// it for good; returns why the last attempt failed when it was not delivered.
async fn deliver(
    client: &HttpClient,
    settings: &WebhookSettings,
    queue: &Queue,
    pending: &Pending,
) -> Result<(), String> {
    let body = pending.body.join();
    let kind: &'static str = pending.kind.into();
    let mut attempt = 1;
    loop {
        let failure = match post(client, settings, &pending.id, &body).await {
            Ok(()) => return Ok(()),
            Err(failure) => failure,
        };
        queue.attempt_failed(failure.why.clone());
        if !failure.retry || attempt >= settings.max_attempts {
            let cause = if failure.retry {
                "WEBHOOK_MAX_ATTEMPTS reached"
            } else {
                "refused by the receiver (4xx): not retried"
            };
            tracing::warn!(
                webhook_id = %pending.id,
                kind,
                attempts = attempt,
                error = %failure.why,
                "webhook given up: {cause}"
            );
            return Err(failure.why);
        }
        tracing::debug!(webhook_id = %pending.id, kind, attempt, error = %failure.why, "webhook attempt failed");
        tokio::time::sleep(backoff(settings.retry_initial, attempt)).await;
        attempt += 1;
    }
}

/// Why an attempt failed, and whether another may succeed.
struct Failure {
    why: String,
    retry: bool,
}

impl Failure {
    fn retry(why: impl Into<String>) -> Self {
        Self {
            why: why.into(),
            retry: true,
        }
    }
}

/// Most bytes of an answer's body read (and discarded), so that its connection can be reused.
const ANSWER_BODY_MAX_BYTES: usize = 64 * 1024;

/// One attempt, within `WEBHOOK_TIMEOUT` (connecting, sending, the answer's head; then up to
/// 64 KiB of its body, read and discarded within what is left, so that the connection is kept
/// for the next webhook): a 2xx answer is a delivery. A 4xx other than 408 (timeout) and 429 (too many requests) is the
/// receiver refusing this webhook: it is not retried. Anything else is.
async fn post(
    client: &HttpClient,
    settings: &WebhookSettings,
    id: &str,
    body: &Bytes,
) -> Result<(), Failure> {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signature = settings.secret.sign(id, timestamp, body);
    let request = Request::post(settings.url.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(USER_AGENT, HeaderValue::from_static(AGENT))
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp)
        .header("webhook-signature", signature)
        .body(Full::new(body.clone()))
        .map_err(|e| Failure::retry(format!("request: {e}")))?;
    let deadline = tokio::time::Instant::now() + settings.timeout;
    let response = tokio::time::timeout_at(deadline, client.request(request))
        .await
        .map_err(|_| Failure::retry("no answer within WEBHOOK_TIMEOUT"))?
        .map_err(|error| {
            if error.is_connect() {
                Failure::retry("could not connect to the receiver")
            } else {
                Failure::retry(format!("request failed: {error}"))
            }
        })?;
    let status = response.status();
    // The status decides. The body is read (and dropped) with what is left of the time, so that
    // hyper keeps the connection; a body that does not come only costs the connection.
    let body = Limited::new(response.into_body(), ANSWER_BODY_MAX_BYTES).collect();
    let _ = tokio::time::timeout_at(deadline, body).await;
    if status.is_success() {
        return Ok(());
    }
    let refused = status.is_client_error()
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS;
    Err(Failure {
        why: format!("the receiver answered {status}"),
        retry: !refused,
    })
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
