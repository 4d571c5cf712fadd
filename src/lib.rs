//! realtime-gateway: a Socket.IO-compatible real-time gateway (the protocol is in `docs/protocol.md`, the design in
//! `docs/architecture.md`).
//!
//! The gateway is built in layers, each a crate of the workspace (`crates/`), bottom up; a layer depends
//! only on the layers below it (cargo refuses anything else), and `build.rs` refuses a cycle between the
//! modules of one layer:
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

pub mod startup;

pub use rtg_app as app;
pub use rtg_cluster as cluster;
pub use rtg_front as front;
pub use rtg_model as model;
pub use rtg_storage as storage;

pub use startup::{startup, Gateway};
