//! Cluster plumbing (layer 3 of 5, docs/architecture.md): the nodes together, over Redis. Given what it uses
//! and callbacks by `startup`; it calls no handler.
//!
//! - [`adapter`]: the socketioxide Redis adapter's transport (one server, Sentinel, or sharded pub/sub in a
//!   Redis Cluster).
//! - [`bus`]: the nodes' own channel (`<prefix>:bus`), for `/ws` deliveries and questions to every node.
//! - [`liveness`]: each node's heartbeat and figures, the reaper of dead nodes, cluster-wide stats.

pub mod adapter;
pub mod bus;
pub mod liveness;
