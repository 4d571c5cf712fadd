//! The front ends (layer 5 of 5, docs/architecture.md): how clients and operators reach the application.
//!
//! - [`sio`]: Socket.IO (socketioxide), [`ws`]: the plain WebSocket endpoint `/ws` and the seeds' dialects.
//! - [`render`]: what every front end renders the same way (greetings, failed acks, error events, the
//!   flood close, the Admin UI's view of a handshake).
//! - [`admin`]: the official Socket.IO Admin UI. [`http`]: `/health`, `/metrics`, the REST API, file
//!   downloads, the Engine.IO guard. [`tls`]: the TLS listener.

pub mod admin;
pub mod http;
pub mod render;
pub mod sio;
pub mod tls;
pub mod ws;
