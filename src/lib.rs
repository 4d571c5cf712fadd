//! realtime-gateway: a Socket.IO-compatible real-time gateway (the protocol is in `docs/protocol.md`, the design in
//! `docs/architecture.md`).
//!
//! The crate is built in layers, each a directory, bottom up; a layer uses only the layers below it, and the
//! build refuses anything else (`build.rs`):
//!
//! 1. [`model`]: the gateway's words, no I/O: settings, names, errors, the clock, client ids, sessions,
//!    the `Link` and `Transport` traits, the hub (the one delivery path), the event list, the figures.
//! 2. [`storage`]: what outlives a client, behind traits (memory or Redis): the Redis link, the store,
//!    channel history, files.
//! 3. [`cluster`]: the nodes together: the socketioxide adapter's transport, the bus, liveness.
//! 4. [`app`]: the application: admission, the event router and its handlers, publications, the
//!    backend hooks (proxy, webhooks, emitters, ingress).
//! 5. [`front`]: the front ends: Socket.IO, `/ws` and its dialects, the Admin UI, HTTP, TLS.
//! 6. [`startup`]: builds every part from a `Config` and hands each what it uses (for `main` and tests).

pub mod app;
pub mod cluster;
pub mod front;
pub mod model;
pub mod startup;
pub mod storage;

pub use startup::{startup, Gateway};
