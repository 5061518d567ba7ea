//! Client-facing transports: how connected clients receive their users' events.
//!
//! A transport owns one client session from handshake to close: it checks the request, registers
//! the connection with the [`Hub`](crate::hub::Hub), writes the connection's outbox to the socket
//! and closes it with the right code. It never decides routing; the hub and broker do.

pub mod ws;
