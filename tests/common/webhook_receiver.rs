//! A webhook receiver for tests: a real HTTP server on an ephemeral loopback port that records
//! every delivery (headers and body), answers as told (2xx, failures for the first attempts of
//! each webhook, or never), and checks signatures with an independent implementation (Python's
//! standard library, not this crate's code).

#![allow(dead_code)] // each test binary uses its own subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};

/// The secret the tests sign with (a 32-byte key).
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo=";

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// 204 at once.
    Accept,
    /// 500 to the first `n` attempts of each webhook id, then 204.
    FailFirst(usize),
    /// Never answers.
    Hang,
    /// 400 with a body, every time.
    Refuse,
}

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: String,
    /// `webhook-signature`.
    pub signature: String,
    /// `Content-Type`.
    pub content_type: String,
    /// The raw body.
    pub raw: String,
    /// The body as JSON.
    pub body: Value,
}

impl Delivery {
    /// The webhook's `type`.
    pub fn kind(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }

    /// Its `data`.
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
}

#[derive(Default)]
struct Log {
    deliveries: Vec<Delivery>,
}

/// The running receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl Receiver {
    /// Starts a receiver answering as `answer`.
    pub async fn start(answer: Answer) -> Self {
        let log = Arc::new(Mutex::new(Log::default()));
        let app = Router::new()
            .route("/hooks", post(receive))
            .with_state((Arc::clone(&log), answer));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, log }
    }

    /// `WEBHOOK_URL` for the server.
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// Every delivery so far (retries included), in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.log.lock().deliveries.clone()
    }

    /// The deliveries of `kind` so far.
    pub fn of(&self, kind: &str) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|delivery| delivery.kind() == kind)
            .collect()
    }

    /// Waits (up to 10 s) until `done` holds for the deliveries; returns them.
    pub async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let deliveries = self.deliveries();
            if done(&deliveries) {
                return deliveries;
            }
            assert!(
                Instant::now() < deadline,
                "waited 10 s for {what}; received: {:#?}",
                deliveries.iter().map(|d| &d.body).collect::<Vec<_>>()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    State((log, answer)): State<(Arc<Mutex<Log>>, Answer)>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let raw = String::from_utf8(body.to_vec()).unwrap();
    let delivery = Delivery {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        content_type: header("content-type"),
        body: serde_json::from_str(&raw).unwrap_or(Value::Null),
        raw,
    };
    let attempts = {
        let mut log = log.lock();
        log.deliveries.push(delivery.clone());
        log.deliveries
            .iter()
            .filter(|seen| seen.id == delivery.id)
            .count()
    };
    match answer {
        Answer::Accept => (StatusCode::OK, "thanks"),
        Answer::FailFirst(n) if attempts <= n => (StatusCode::INTERNAL_SERVER_ERROR, "later"),
        Answer::FailFirst(_) => (StatusCode::NO_CONTENT, ""),
        Answer::Hang => {
            sleep(Duration::from_secs(3600)).await;
            (StatusCode::NO_CONTENT, "")
        }
        Answer::Refuse => (StatusCode::BAD_REQUEST, "cannot handle this one"),
    }
}

/// Checks every delivery's signature with Python's `hmac` (the Standard Webhooks algorithm,
/// written from the specification): panics naming the first that does not verify.
pub fn assert_signed(deliveries: &[Delivery]) {
    const VERIFY: &str = r#"
import base64, hashlib, hmac, json, sys
secret, items = sys.argv[1], json.load(sys.stdin)
key = base64.b64decode(secret[len("whsec_"):])
for item in items:
    signed = f"{item['id']}.{item['timestamp']}.{item['raw']}".encode()
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1)[1] for s in item["signature"].split() if s.startswith("v1,")]
    if not any(hmac.compare_digest(expected, g) for g in given):
        print("bad signature for", item["id"]); sys.exit(1)
print(len(items))
"#;
    let items: Vec<Value> = deliveries
        .iter()
        .map(|d| serde_json::json!({"id": d.id, "timestamp": d.timestamp, "signature": d.signature, "raw": d.raw}))
        .collect();
    let mut child = std::process::Command::new("python3")
        .args(["-c", VERIFY, SECRET])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&items).unwrap().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "signatures: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    for delivery in deliveries {
        assert_eq!(delivery.content_type, "application/json");
        assert!(delivery.id.starts_with("msg_"), "{}", delivery.id);
        let age = chrono::Utc::now().timestamp() - delivery.timestamp.parse::<i64>().unwrap();
        assert!(
            (0..120).contains(&age),
            "webhook-timestamp {}",
            delivery.timestamp
        );
        let stamp = delivery.body["timestamp"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
            "{stamp}"
        );
    }
}
