//! realtime-gateway: a Socket.IO-compatible real-time gateway (the protocol is in `docs/protocol.md`, the design in `docs/`).
//!
//! Data flows client → middleware (`events::authenticate`) → dispatcher (`events`) → handler →
//! store/adapter → clients. All state lives in one [`state::AppState`].

pub mod adapter;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod error;
pub mod events;
pub mod http;
pub mod ingress;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod redis_link;
pub mod startup;
pub mod state;
pub mod store;
pub mod timers;

pub use startup::{startup, Gateway};

/// Now as an ISO-8601 UTC string with milliseconds (`2026-11-22T10:00:00.000Z`).
pub fn iso_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
