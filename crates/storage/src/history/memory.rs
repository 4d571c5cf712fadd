//! Channel history in this process, for a gateway without Redis (one node: no copies to tell apart).
//!
//! Bounded: `size` publications per channel, dropped after the TTL; a channel's epoch is forgotten a
//! day after its last publication, and at most [`MAX_CHANNELS`] channels are remembered (the least
//! recently published first to go). Only publishers (the REST API) create channels; reads never do.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{unexpired, Appended, History, HistoryLimits, NewPublication, Position, Publication, Tail, EPOCH_TTL_SECS};
use crate::store::StoreResult;

/// Channels remembered at most.
pub const MAX_CHANNELS: usize = 100_000;

struct Channel {
    epoch: String,
    top: u64,
    pubs: VecDeque<Publication>,
    last_ms: u64,
}

pub struct MemoryHistory {
    limits: HistoryLimits,
    channels: Mutex<HashMap<String, Channel>>,
    /// When idle channels were last forgotten (ms): at most once a minute, or at the cap.
    swept: std::sync::atomic::AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl MemoryHistory {
    pub fn new(limits: HistoryLimits) -> Self {
        MemoryHistory { limits, channels: Mutex::new(HashMap::new()), swept: std::sync::atomic::AtomicU64::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets channels idle past the epoch TTL; then, at the cap, the least recently published
    /// hundredth of them (so that the sort runs once per that many new channels, not for each).
    fn sweep(map: &mut HashMap<String, Channel>, now: u64) {
        let epoch_ttl = EPOCH_TTL_SECS * 1000;
        map.retain(|_, c| now.saturating_sub(c.last_ms) < epoch_ttl);
        if map.len() >= MAX_CHANNELS {
            let mut ages: Vec<(u64, String)> = map.iter().map(|(k, c)| (c.last_ms, k.clone())).collect();
            ages.sort_unstable();
            let keep = MAX_CHANNELS - MAX_CHANNELS / 100;
            for (_, k) in ages.into_iter().take(map.len() - keep) {
                map.remove(&k);
            }
        }
    }

    fn tail(&self, channel: &str, pick: impl FnOnce(&VecDeque<Publication>) -> Vec<Publication>) -> Tail {
        let map = self.lock();
        let Some(c) = map.get(channel) else { return Tail::default() };
        let now = now_ms();
        if now.saturating_sub(c.last_ms) >= EPOCH_TTL_SECS * 1000 {
            return Tail::default();
        }
        Tail {
            position: Position { offset: c.top, epoch: c.epoch.clone() },
            publications: unexpired(pick(&c.pubs), now, self.limits.ttl_ms),
        }
    }
}

#[async_trait]
impl History for MemoryHistory {
    async fn append(&self, batch: &[NewPublication]) -> StoreResult<Vec<Appended>> {
        let now = now_ms();
        let mut map = self.lock();
        let mut out = Vec::with_capacity(batch.len());
        for p in batch {
            let due = now.saturating_sub(self.swept.load(std::sync::atomic::Ordering::Relaxed)) >= 60_000;
            if !map.contains_key(&p.channel) && (map.len() >= MAX_CHANNELS || due) {
                Self::sweep(&mut map, now);
                self.swept.store(now, std::sync::atomic::Ordering::Relaxed);
            }
            let c = map.entry(p.channel.clone()).or_insert_with(|| Channel {
                epoch: super::new_epoch(),
                top: 0,
                pubs: VecDeque::new(),
                last_ms: now,
            });
            if now.saturating_sub(c.last_ms) >= EPOCH_TTL_SECS * 1000 {
                *c = Channel { epoch: super::new_epoch(), top: 0, pubs: VecDeque::new(), last_ms: now };
            }
            c.top += 1;
            c.last_ms = now;
            c.pubs.push_back(Publication { offset: c.top, ts: now, data: super::parse_data(&p.json) });
            while c.pubs.len() > self.limits.size.max(1) {
                c.pubs.pop_front();
            }
            out.push(Appended { offset: c.top, epoch: c.epoch.clone(), ts: now });
        }
        Ok(out)
    }

    async fn after(&self, channel: &str, after: u64) -> StoreResult<Tail> {
        Ok(self.tail(channel, |pubs| pubs.iter().filter(|p| p.offset > after).cloned().collect()))
    }

    async fn last(&self, channel: &str, limit: usize) -> StoreResult<Tail> {
        Ok(self.tail(channel, |pubs| pubs.iter().skip(pubs.len().saturating_sub(limit)).cloned().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(channel: &str, json: &str) -> NewPublication {
        NewPublication { channel: channel.into(), hash: String::new(), json: json.into() }
    }

    #[tokio::test]
    async fn offsets_epochs_and_bounds() {
        let h = MemoryHistory::new(HistoryLimits { size: 3, ttl_ms: 60_000 });
        assert_eq!(h.after("a", 0).await.unwrap().position, Position::default());
        let got = h.append(&[new("a", "1"), new("b", "\"x\""), new("a", "2")]).await.unwrap();
        assert_eq!(got.iter().map(|a| a.offset).collect::<Vec<_>>(), vec![1, 1, 2]);
        assert_ne!(got[0].epoch, "");
        assert_eq!(got[0].epoch, got[2].epoch);
        for i in 3..=5 {
            h.append(&[new("a", &i.to_string())]).await.unwrap();
        }
        let tail = h.after("a", 0).await.unwrap();
        assert_eq!(tail.position.offset, 5);
        // Only the last 3 are kept.
        assert_eq!(tail.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(tail.publications[0].data, serde_json::json!(3));
        let last = h.last("a", 2).await.unwrap();
        assert_eq!(last.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(h.after("b", 0).await.unwrap().publications[0].data, serde_json::json!("x"));
    }

    #[tokio::test]
    async fn channels_are_capped() {
        let h = MemoryHistory::new(HistoryLimits { size: 1, ttl_ms: 60_000 });
        let batch: Vec<NewPublication> = (0..MAX_CHANNELS).map(|i| new(&format!("c{i}"), "1")).collect();
        h.append(&batch).await.unwrap();
        assert_eq!(h.lock().len(), MAX_CHANNELS);
        // One more channel: the least recently published hundredth is forgotten to make room.
        h.append(&[new("one-more", "1")]).await.unwrap();
        assert_eq!(h.lock().len(), MAX_CHANNELS - MAX_CHANNELS / 100 + 1);
        assert_eq!(h.after("one-more", 0).await.unwrap().position.offset, 1);
    }

    #[tokio::test]
    async fn expired_publications_are_not_replayed() {
        let h = MemoryHistory::new(HistoryLimits { size: 10, ttl_ms: 0 });
        h.append(&[new("a", "1")]).await.unwrap();
        let tail = h.after("a", 0).await.unwrap();
        assert_eq!(tail.position.offset, 1);
        assert!(tail.publications.is_empty());
    }
}
