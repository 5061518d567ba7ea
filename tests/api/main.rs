//! Integration tests: the real server on an ephemeral loopback port, real HTTP and WebSocket
//! clients. One test binary, so it links once.

mod helpers;

mod config_process;
mod http_api;
mod websocket;
