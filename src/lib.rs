//! realtime-gateway: a Socket.IO-compatible real-time gateway (the protocol is in `docs/protocol.md`, the design in `docs/`).
//!
//! Data flows client → front end (`sio.rs` for Socket.IO, `ws/` for plain WebSocket) → core
//! (`events::handle`) → handler → store and hub (`hub.rs`) → clients. All state lives in one
//! [`state::AppState`]; `docs/architecture.md` draws it.

pub mod adapter;
pub mod admin;
pub mod auth;
pub mod bus;
pub mod client;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod emitter;
pub mod error;
pub mod events;
pub mod files;
pub mod history;
pub mod http;
pub mod hub;
pub mod ignis_emitter;
pub mod ingress;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod proxy;
pub mod publications;
pub mod redis_link;
pub mod sequence;
pub mod sio;
pub mod startup;
pub mod state;
pub mod stats;
pub mod store;
pub mod timers;
pub mod tls;
pub mod webhooks;
pub mod ws;

pub use startup::{startup, Gateway};

/// Now as an ISO-8601 UTC string with milliseconds (`2026-11-22T10:00:00.000Z`).
pub fn iso_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
