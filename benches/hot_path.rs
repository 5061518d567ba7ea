//! Micro-benchmarks of the push hot path, with allocation counts (divan's `AllocProfiler`).
//!
//! Run with `cargo bench --bench hot_path`. What to look for: `fan_out` must not allocate more as
//! recipients are added (each recipient costs one queue slot holding a reference-counted frame),
//! and `parse_and_encode` should stay at a handful of allocations per push.

use std::sync::Arc;

use divan::{AllocProfiler, Bencher, black_box};
use websocket_sse_server::config::UserLimitPolicy;
use websocket_sse_server::hub::{Hub, HubLimits, Outbox, Registration};
use websocket_sse_server::metrics::Metrics;
use websocket_sse_server::protocol::{Frame, UserId, parse_batch, parse_push};

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
            .collect::<Vec<_>>()
    });
}

/// A hub holding `connections` connections of one user.
fn hub_with(connections: usize) -> (Arc<Hub>, Vec<(Registration, Outbox)>) {
    let limits = HubLimits {
        per_user: connections,
        policy: UserLimitPolicy::Reject,
        queue_capacity: 1024,
    };
    let hub = Arc::new(Hub::new(limits, Arc::new(Metrics::default())));
    let user = UserId::parse("fan").expect("valid user");
    let registered = (0..connections)
        .map(|_| hub.register(user.clone()).expect("under the limit"))
        .collect();
    (hub, registered)
}

/// Deliver one frame to every connection of a user, then let each connection take it off its
/// queue (as its writer would).
#[divan::bench(args = [1, 10, 100, 1000])]
fn fan_out(bencher: Bencher, connections: usize) {
    let (hub, mut registered) = hub_with(connections);
    let user = UserId::parse("fan").expect("valid user");
    let frame = Frame::from(push_body("fan"));
    bencher.bench_local(|| {
        let delivery = hub.deliver(black_box(&user), black_box(&frame));
        for (_, outbox) in &mut registered {
            black_box(outbox.try_recv().expect("delivered"));
        }
        delivery
    });
}
