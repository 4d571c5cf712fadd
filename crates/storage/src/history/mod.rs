//! Channel history (SPEC §15): the last `CHANNEL_HISTORY_SIZE` publications of each channel, kept
//! for `CHANNEL_HISTORY_TTL_SECS`, each with an `offset` that increases by one per publication
//! within the channel's `epoch`.
//!
//! Two implementations: [`memory::MemoryHistory`] for a single node and [`redis::RedisHistory`]
//! (one Redis stream per channel) for a cluster, so that a client recovers on any node, also after
//! the node it was on died. Which node appends a publication, and in which order, is the business
//! of `sequence.rs` and `publications.rs`; this module only keeps them.
//!
//! An epoch names one unbroken run of offsets. A channel gets a new one when its stream is created
//! or re-created (first publication, history lost with Redis, or no publication for a day): a
//! position in another epoch cannot be recovered, and says so.

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::StoreResult;

/// How long a channel's epoch (and top offset) outlives its last publication. A position within it
/// stays meaningful: a client that saw the top offset recovers (with nothing missed) even after the
/// publications themselves expired.
pub const EPOCH_TTL_SECS: u64 = 24 * 3600;

/// A place in a channel's sequence: the offset of the last publication, within an epoch. Offset 0
/// with epoch `""` is the place of a channel that never had a publication.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// A publication as kept and as replayed.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub offset: u64,
    /// When it was appended, ms since the epoch (the keeper's clock: Redis's with Redis).
    pub ts: u64,
    pub data: Value,
}

/// A publication to append. `hash` names its payload in the appender's note (see `sequence.rs`);
/// the memory history ignores it.
#[derive(Debug, Clone)]
pub struct NewPublication {
    pub channel: String,
    pub hash: String,
    /// The data as JSON text.
    pub json: String,
}

/// Where an appended publication went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub offset: u64,
    pub epoch: String,
    pub ts: u64,
}

/// A channel's position and the kept publications after a given offset (oldest first).
#[derive(Debug, Clone, Default)]
pub struct Tail {
    pub position: Position,
    pub publications: Vec<Publication>,
}

#[async_trait]
pub trait History: Send + Sync {
    /// Appends a batch in order, one answer per publication in the same order: each is a new
    /// publication with the channel's next offset.
    async fn append(&self, batch: &[NewPublication]) -> StoreResult<Vec<Appended>>;
    /// The channel's position and its kept publications with an offset above `after` (at most the
    /// history size). Reading never creates a channel.
    async fn after(&self, channel: &str, after: u64) -> StoreResult<Tail>;
    /// The channel's position and its last `limit` kept publications.
    async fn last(&self, channel: &str, limit: usize) -> StoreResult<Tail>;
    /// The channel's position alone.
    async fn position(&self, channel: &str) -> StoreResult<Tail> {
        self.after(channel, u64::MAX - 1).await
    }
}

/// How much history is kept.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Publications kept per channel; 0 turns history (offsets, recovery) off.
    pub size: usize,
    pub ttl_ms: u64,
}

/// The JSON text of a kept publication back to a value (a string when it is not JSON).
pub fn parse_data(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or_else(|_| Value::String(json.to_string()))
}

/// The data of a Redis `PUBLISH`: JSON when it parses, else the raw text as a string.
pub fn payload_value(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

/// A fresh epoch: 8 random bytes in hex.
pub fn new_epoch() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

/// Drops the leading publications that are the TTL old or older (they are in time order).
pub(crate) fn unexpired(mut pubs: Vec<Publication>, now_ms: u64, ttl_ms: u64) -> Vec<Publication> {
    let first_kept = pubs.iter().position(|p| now_ms.saturating_sub(p.ts) < ttl_ms).unwrap_or(pubs.len());
    pubs.drain(..first_kept);
    pubs
}
