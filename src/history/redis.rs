//! Channel history in Redis, shared by every node.
//!
//! Per channel `<prefix>:chist:<channel>` (not `hist:`, where room history lives: room ids may end
//! like these keys do):
//! - `…:s` a stream, entry id `<offset>-0`, fields `t` (Redis's clock, ms) and `d` (the data as JSON),
//!   trimmed to the history size and expiring a TTL after the last publication;
//! - `…:m` a hash `{epoch, top}`, expiring a day after the last publication (see [`EPOCH_TTL_SECS`]);
//! - `…:p:<fingerprint>` the place given to one publication, for the de-duplication window: every
//!   node appends each publication it receives, and the copies after the first get the first's place.
//!
//! A batch is one script call: one round trip per batch of publications, whatever its size.

use std::sync::Arc;

use async_trait::async_trait;
use redis::Script;

use super::{unexpired, Appended, History, HistoryLimits, NewPublication, Position, Publication, Tail, EPOCH_TTL_SECS};
use crate::redis_link::RedisLink;
use crate::store::{StoreError, StoreResult};

/// How long a publication's place is remembered against copies from other nodes. A node that
/// receives its copy later than this appends it again (see `docs/scaling.md`).
pub const DEDUP_WINDOW_MS: u64 = 10_000;

pub struct RedisHistory {
    link: Arc<RedisLink>,
    prefix: String,
    limits: HistoryLimits,
    append: Script,
    read: Script,
}

const APPEND: &str = r#"
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local out = {}
for i = 7, #ARGV, 3 do
  local base = ARGV[1] .. ARGV[i]
  local seen = base .. ':p:' .. ARGV[i + 1]
  local got = redis.call('GET', seen)
  if got then
    out[#out + 1] = got
  else
    local meta, stream = base .. ':m', base .. ':s'
    local epoch = redis.call('HGET', meta, 'epoch')
    if not epoch then
      epoch = ARGV[6]
      redis.call('DEL', stream)
      redis.call('HSET', meta, 'epoch', epoch, 'top', 0)
    end
    local off = redis.call('HINCRBY', meta, 'top', 1)
    redis.call('XADD', stream, 'MAXLEN', ARGV[2], off .. '-0', 't', now, 'd', ARGV[i + 2])
    redis.call('PEXPIRE', stream, ARGV[3])
    redis.call('EXPIRE', meta, ARGV[4])
    local place = off .. ' ' .. epoch .. ' ' .. now
    redis.call('SET', seen, place, 'PX', ARGV[5])
    out[#out + 1] = place
  end
end
return out
"#;

/// ARGV: channel base, `after` or `last`, the offset (after) or the count (last), the size.
/// Returns epoch, top, Redis's clock (ms), then (offset, t, d) per publication.
const READ: &str = r#"
local base = ARGV[1]
local meta = redis.call('HMGET', base .. ':m', 'epoch', 'top')
if not meta[1] then return {'', '0', '0'} end
local t = redis.call('TIME')
local out = {meta[1], meta[2], string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))}
local entries
if ARGV[2] == 'after' then
  entries = redis.call('XRANGE', base .. ':s', ARGV[3] .. '-0', '+', 'COUNT', ARGV[4])
else
  entries = redis.call('XREVRANGE', base .. ':s', '+', '-', 'COUNT', ARGV[3])
end
for _, e in ipairs(entries) do
  local f, ts, d = e[2], '0', ''
  for j = 1, #f, 2 do
    if f[j] == 't' then ts = f[j + 1] elseif f[j] == 'd' then d = f[j + 1] end
  end
  out[#out + 1] = string.match(e[1], '^(%d+)')
  out[#out + 1] = ts
  out[#out + 1] = d
end
return out
"#;

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("channel history: {what}"))
}

impl RedisHistory {
    pub fn new(link: Arc<RedisLink>, redis_prefix: &str, limits: HistoryLimits) -> Self {
        RedisHistory {
            link,
            prefix: format!("{redis_prefix}:chist:"),
            limits,
            append: Script::new(APPEND),
            read: Script::new(READ),
        }
    }

    async fn read(&self, channel: &str, mode: &str, n: u64) -> StoreResult<Tail> {
        if self.link.is_down() {
            return Err(StoreError::Unavailable("redis is down".into()));
        }
        let mut conn = self.link.commands();
        let raw: Vec<String> = self
            .read
            .arg(format!("{}{}", self.prefix, channel))
            .arg(mode)
            .arg(n)
            .arg(self.limits.size)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let [epoch, top, now, rest @ ..] = raw.as_slice() else {
            return Err(corrupt("short answer"));
        };
        let num = |s: &str| s.parse::<u64>().map_err(|_| corrupt("not a number"));
        let mut pubs = Vec::with_capacity(rest.len() / 3);
        for e in rest.chunks_exact(3) {
            pubs.push(Publication { offset: num(&e[0])?, ts: num(&e[1])?, data: super::parse_data(&e[2]) });
        }
        if mode == "last" {
            pubs.reverse();
        }
        Ok(Tail {
            position: Position { offset: num(top)?, epoch: epoch.clone() },
            publications: unexpired(pubs, num(now)?, self.limits.ttl_ms),
        })
    }
}

#[async_trait]
impl History for RedisHistory {
    async fn append(&self, batch: &[NewPublication]) -> StoreResult<Vec<Appended>> {
        if self.link.is_down() {
            return Err(StoreError::Unavailable("redis is down".into()));
        }
        let mut inv = self.append.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(self.limits.size.max(1))
            .arg(self.limits.ttl_ms.max(1))
            .arg(EPOCH_TTL_SECS)
            .arg(DEDUP_WINDOW_MS)
            .arg(super::new_epoch());
        for p in batch {
            inv.arg(&p.channel).arg(&p.fingerprint).arg(&p.json);
        }
        let mut conn = self.link.commands();
        let raw: Vec<String> = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        if raw.len() != batch.len() {
            return Err(corrupt("answers do not match the batch"));
        }
        raw.iter()
            .map(|place| {
                let mut it = place.split(' ');
                let (Some(o), Some(e), Some(t)) = (it.next(), it.next(), it.next()) else {
                    return Err(corrupt("bad place"));
                };
                Ok(Appended {
                    offset: o.parse().map_err(|_| corrupt("bad offset"))?,
                    epoch: e.to_string(),
                    ts: t.parse().map_err(|_| corrupt("bad time"))?,
                })
            })
            .collect()
    }

    async fn after(&self, channel: &str, after: u64) -> StoreResult<Tail> {
        self.read(channel, "after", after.saturating_add(1)).await
    }

    async fn last(&self, channel: &str, limit: usize) -> StoreResult<Tail> {
        self.read(channel, "last", limit as u64).await
    }
}
