//! Integration tests: the real server on an ephemeral loopback port, real HTTP and WebSocket
//! clients. One test binary, so it links once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed expectation is a failed test"
)]

mod helpers;
#[path = "../common/webhook_receiver.rs"]
mod webhook_receiver;

mod admin;
mod auth;
mod budgets;
mod cli;
mod config_process;
mod descriptors;
mod doc_examples;
mod hardening;
mod history;
mod http_api;
mod https;
mod isolation;
mod layering;
mod openapi;
mod prometheus;
mod settings_table;
mod sse;
mod webhooks;
mod websocket;
