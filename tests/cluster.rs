//! Cluster mode (`--broker redis`): several nodes sharing one Redis, real HTTP, WebSocket and SSE
//! clients. Each test runs its own nodes under its own Redis key prefix, so tests run in
//! parallel against one Redis: `TEST_REDIS_URL`, else a Redis on 127.0.0.1:6379, else a
//! throwaway `redis-server` (see `cluster/redis.rs`). Without any of them the tests print
//! `SKIPPED` and pass, except under CI (`CI` set to `true` or `1`: `common/ci.rs`), where they
//! fail.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

#[path = "common/ci.rs"]
mod ci;
#[path = "api/helpers.rs"]
mod helpers;
#[path = "common/webhook_receiver.rs"]
mod webhook_receiver;

#[path = "cluster/redis.rs"]
mod redis;
#[path = "cluster/support.rs"]
mod support;

#[path = "cluster/admin.rs"]
mod admin;
#[path = "cluster/delivery.rs"]
mod delivery;
#[path = "cluster/outage.rs"]
mod outage;
#[path = "cluster/presence.rs"]
mod presence;
#[path = "cluster/redis_cluster.rs"]
mod redis_cluster;
#[path = "cluster/resume.rs"]
mod resume;
#[path = "cluster/shards.rs"]
mod shards;
#[path = "cluster/shared.rs"]
mod shared;
#[path = "cluster/tls.rs"]
mod tls;
#[path = "cluster/webhooks.rs"]
mod webhooks;
