//! websocket-sse-server: a real-time push gateway.
//!
//! Upstream services `POST` JSON messages addressed to a `user_id`; the server delivers each one,
//! at once and in order, to every WebSocket and SSE client connected as that user, and keeps the
//! user's recent events so that a client that reconnects misses nothing.
//!
//! How a push flows: [`api`] validates the body into [`protocol`] types and serializes it once;
//! the [`broker`] routes it (in memory on a single node); the [`hub`] stores it in the user's
//! [`history`] and hands the shared bytes to the bounded queue of each of the user's connections;
//! each connection's session in [`transport::ws`] or [`transport::sse`] writes its queue to the
//! socket. [`server`] wires it together and shuts it down
//! through [`lifecycle`]; [`dotenv`], [`config`] and [`logging`] come first, in `main`. What the
//! gateway tells the backend (presence, undelivered events, client messages) goes out as signed
//! [`webhook`]s; [`acks`] tracks the events that wait for a client's acknowledgement.

pub mod acks;
pub mod admission;
pub mod api;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod console;
pub mod dotenv;
pub mod error;
pub mod healthcheck;
pub mod history;
pub mod hub;
pub mod js_client;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod openapi;
pub mod origin;
pub mod protocol;
pub mod rate_limit;
pub mod routes;
pub mod server;
pub mod state;
pub mod tls;
pub mod transport;
pub mod webhook;

/// The service name reported by `/metrics`.
pub const SERVICE_NAME: &str = "websocket-sse-server";
