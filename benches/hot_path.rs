//! Micro-benchmarks of the push hot path, with allocation counts (divan's `AllocProfiler`).
//!
//! Run with `cargo bench --bench hot_path`. What to look for: `fan_out` must not allocate more as
//! recipients are added (each recipient costs one queue slot holding a reference-counted event),
//! keeping history (`HISTORY = 100`) should cost little over not keeping it (`0`), and
//! `parse_and_encode` should stay at a handful of allocations per push.

#![allow(
    clippy::expect_used,
    reason = "a benchmark: failing loudly is the point"
)]

use std::sync::Arc;
use std::time::Duration;

use divan::{AllocProfiler, Bencher, black_box};
use websocket_sse_server::history::HistoryLimits;
use websocket_sse_server::hub::{Attached, Hub, HubMode, QueueLimits, UserLimit, UserLimitPolicy};
use websocket_sse_server::metrics::Metrics;
use websocket_sse_server::protocol::{Transport, UserId, parse_batch, parse_push};

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

fn main() {
    divan::main();
}

/// A push body like the load generator's: a 256-byte `data` object.
fn push_body(user: &str) -> String {
    format!(
        r#"{{"user_id":"{user}","data":{{"seq":1,"sent_ns":123456789,"pad":"{}"}}}}"#,
        "x".repeat(200)
    )
}

/// Validate one push and serialize it into its shared frame.
#[divan::bench]
fn parse_and_encode(bencher: Bencher) {
    let body = push_body("bench-u1");
    bencher.bench(|| {
        parse_push(black_box(body.as_bytes()))
            .expect("valid push")
            .encode(0.0)
            .expect("encodable")
    });
}

/// Validate and serialize a batch of 100 pushes to 100 users.
#[divan::bench]
fn parse_and_encode_batch_of_100(bencher: Bencher) {
    let items: Vec<String> = (0..100)
        .map(|i| push_body(&format!("bench-u{i}")))
        .collect();
    let body = format!("[{}]", items.join(","));
    bencher.bench(|| {
        let messages = parse_batch(black_box(body.as_bytes()), 1000).expect("valid batch");
        messages
            .iter()
            .map(|message| message.encode(1_700_000_000.0))
            .collect::<Result<Vec<_>, _>>()
            .expect("encodable")
    });
}

/// A hub holding `connections` connections of one user, keeping `history` events per user.
fn hub_with(connections: usize, history: usize) -> (Arc<Hub>, Vec<Attached>) {
    let mode = HubMode::Standalone {
        user_limit: UserLimit {
            per_user: connections,
            policy: UserLimitPolicy::Reject,
        },
        history: HistoryLimits {
            size: history,
            ttl: Duration::from_secs(300),
            max_users: 10_000,
            max_bytes: 256 << 20,
        },
    };
    let limits = QueueLimits {
        items: 1024,
        bytes: 4 << 20,
        node_bytes: 256 << 20,
    };
    let hub = Arc::new(Hub::new(mode, limits, Arc::new(Metrics::default())));
    let user = UserId::parse("fan").expect("valid user");
    let attached = (0..connections)
        .map(|_| {
            hub.attach(user.clone(), Transport::WebSocket, None, false)
                .expect("under the limit")
        })
        .collect();
    (hub, attached)
}

/// Publish one event to every connection of a user, then let each connection take it off its
/// queue (as its writer would). `history` is the number of events kept per user (0: off).
#[divan::bench(args = [1, 10, 100, 1000], consts = [0, 100])]
fn fan_out<const HISTORY: usize>(bencher: Bencher, connections: usize) {
    let (hub, mut attached) = hub_with(connections, HISTORY);
    let event = parse_push(push_body("fan").as_bytes())
        .expect("valid push")
        .encode(0.0)
        .expect("encodable");
    bencher.bench_local(|| {
        let outcome = hub.publish(black_box(&event));
        for connection in &mut attached {
            black_box(connection.outbox.try_recv().expect("delivered"));
        }
        outcome
    });
}
