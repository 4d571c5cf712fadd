//! Storage (layer 2 of 5, docs/architecture.md): what outlives a client, each behind a trait with a memory
//! and a Redis implementation. Knows the model, not clients' sockets, tokens or HTTP.
//!
//! - [`redis_link`]: the one command connection to Redis, wherever it runs (one server over TCP or TLS,
//!   the master Sentinel names, or a Redis Cluster), and where it goes.
//! - [`store`]: rooms and their history, presence, queues, receipts, calls, de-duplication, leases.
//! - [`history`]: channel history (offsets and epochs, SPEC §15).
//! - [`files`]: shared files (a directory or an S3 bucket) and the uploads in progress.

pub mod files;
pub mod history;
pub mod redis_link;
pub mod store;
