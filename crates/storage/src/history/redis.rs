//! Channel history in Redis, shared by every node.
//!
//! Per channel `<prefix>:chist:<channel>` (not `hist:`, where room history lives: room ids may end
//! like these keys do):
//! - `…:s` a stream, entry id `<offset>-0`, fields `t` (Redis's clock, ms) and `d` (the data as JSON),
//!   trimmed to the history size and expiring a TTL after the last publication;
//! - `…:m` a hash `{epoch, top}`, expiring a day after the last publication (see [`EPOCH_TTL_SECS`]);
//!
//! and `<prefix>:chist:lease` (the appender's lease) and the pub/sub channel `<prefix>:chist:notes`
//! (the appender's notes and markers), see `sequence.rs`.
//!
//! The durable ingress: backends `XADD <prefix>:ingress * channel <name> data <json>`; the appender
//! reads what follows the id in `<prefix>:chist:ingress` (the last entry it appended) and appends it
//! with the same script that moves that id, so each entry is appended once, even when the script's
//! answer is lost and the batch is sent again, or the appender dies and another takes over.
//!
//! A batch is one script call: one round trip per batch of publications, whatever its size.

use std::sync::Arc;

use async_trait::async_trait;
use redis::Script;

use super::{unexpired, Appended, History, HistoryLimits, NewPublication, Position, Publication, Tail, EPOCH_TTL_SECS};
use crate::redis_link::RedisLink;
use crate::store::{StoreError, StoreResult};

pub struct RedisHistory {
    link: Arc<RedisLink>,
    prefix: String,
    /// The durable ingress stream backends add to, and the key of the last entry appended from it.
    ingress: String,
    ingress_done: String,
    limits: HistoryLimits,
    append: Script,
    read: Script,
    lease: Script,
    release: Script,
    read_ingress: Script,
}

/// An entry of the durable ingress stream, as read.
#[derive(Debug, Clone, PartialEq)]
pub struct IngressEntry {
    /// Its stream id (`<ms>-<seq>`).
    pub id: String,
    pub channel: String,
    /// Its `data` field (JSON text; anything else is taken as a string), `None` when it has none.
    pub data: Option<String>,
}

/// The appender's lease, for [`RedisHistory::append_as`]: only the holder of `key` with `token`
/// appends, and each appended publication is announced on `notes`.
pub struct Lease<'a> {
    pub key: &'a str,
    pub token: &'a str,
    pub notes: &'a str,
}

/// ARGV: key prefix, size, TTL (ms), epoch TTL (s), a fresh epoch, the lease key and token (both
/// empty: no lease), the note channel (empty: no notes), the durable ingress stream and the key of its
/// last appended id (both empty: none), then (channel, hash, data, stream id) per publication. An
/// entry with a stream id not past the last appended one was appended before (`dup`); an empty
/// channel only moves the last id past an entry that is not appended (`skip`). Returns 0 when the
/// lease is not the caller's (nothing appended), else per publication its place
/// `<offset> <epoch> <ms>`, `dup` or `skip`.
const APPEND: &str = r#"
if ARGV[6] ~= '' and redis.call('GET', ARGV[6]) ~= ARGV[7] then return 0 end
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local function after(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if not am then return false end
  if not bm then return true end
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local done = ARGV[10] ~= '' and (redis.call('GET', ARGV[10]) or '0-0') or nil
local moved = false
local out = {}
for i = 11, #ARGV, 4 do
  local sid = ARGV[i + 3]
  if sid ~= '' and done and not after(sid, done) then
    out[#out + 1] = 'dup'
  elseif ARGV[i] == '' then
    if sid ~= '' and done then done = sid; moved = true end
    out[#out + 1] = 'skip'
  else
    if sid ~= '' and done then done = sid; moved = true end
    local base = ARGV[1] .. ARGV[i]
    local meta, stream = base .. ':m', base .. ':s'
    local epoch = redis.call('HGET', meta, 'epoch')
    if not epoch then
      epoch = ARGV[5]
      redis.call('DEL', stream)
      redis.call('HSET', meta, 'epoch', epoch, 'top', 0)
    end
    local off = redis.call('HINCRBY', meta, 'top', 1)
    redis.call('XADD', stream, 'MAXLEN', ARGV[2], off .. '-0', 't', now, 'd', ARGV[i + 2])
    redis.call('PEXPIRE', stream, ARGV[3])
    redis.call('EXPIRE', meta, ARGV[4])
    if ARGV[8] ~= '' then
      redis.call('PUBLISH', ARGV[8], cjson.encode({c = ARGV[i], o = tostring(off), e = epoch, t = now, h = ARGV[i + 1], d = ARGV[i + 2]}))
    end
    out[#out + 1] = off .. ' ' .. epoch .. ' ' .. now
  end
end
if moved then
  redis.call('SET', ARGV[10], done)
  -- What was appended leaves the stream (the cursor's own entry stays: reads start after it).
  redis.call('XTRIM', ARGV[9], 'MINID', done)
end
return out
"#;

/// ARGV: the durable ingress stream, the key of its last appended id, how many at most. The entries
/// after the last appended one, as `XRANGE` gives them.
const READ_INGRESS: &str = r#"
local done = redis.call('GET', ARGV[2]) or '0-0'
return redis.call('XRANGE', ARGV[1], '(' .. done, '+', 'COUNT', ARGV[3])
"#;

/// ARGV: the lease key, the caller's token, the TTL (ms), the note channel, the marker nonce (empty:
/// none). Renews the caller's lease (1) or takes a free one (2); 0 when another node holds it. With
/// a nonce, also publishes the marker `{"m": token, "n": nonce}` on the note channel, in the same
/// step: every note of a previous holder comes before it.
const LEASE: &str = r#"
local cur = redis.call('GET', ARGV[1])
local got
if cur == ARGV[2] then
  redis.call('PEXPIRE', ARGV[1], ARGV[3])
  got = 1
elseif not cur then
  redis.call('SET', ARGV[1], ARGV[2], 'PX', ARGV[3])
  got = 2
else
  return 0
end
if ARGV[5] ~= '' then
  redis.call('PUBLISH', ARGV[4], cjson.encode({m = ARGV[2], n = ARGV[5]}))
end
return got
"#;

/// ARGV: the lease key, the caller's token. Lets the lease go if it is the caller's.
const RELEASE: &str = r#"
if redis.call('GET', ARGV[1]) == ARGV[2] then redis.call('DEL', ARGV[1]) end
return 1
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

/// A place `<offset> <epoch> <ms>` as the append script answers it.
fn place(p: &str) -> StoreResult<Appended> {
    let mut it = p.split(' ');
    let (Some(o), Some(e), Some(t)) = (it.next(), it.next(), it.next()) else {
        return Err(corrupt("bad place"));
    };
    Ok(Appended {
        offset: o.parse().map_err(|_| corrupt("bad offset"))?,
        epoch: e.to_string(),
        ts: t.parse().map_err(|_| corrupt("bad time"))?,
    })
}

impl RedisHistory {
    pub fn new(link: Arc<RedisLink>, redis_prefix: &str, limits: HistoryLimits) -> Self {
        RedisHistory {
            link,
            prefix: format!("{redis_prefix}:chist:"),
            ingress: format!("{redis_prefix}:ingress"),
            ingress_done: format!("{redis_prefix}:chist:ingress"),
            limits,
            append: Script::new(APPEND),
            read: Script::new(READ),
            lease: Script::new(LEASE),
            release: Script::new(RELEASE),
            read_ingress: Script::new(READ_INGRESS),
        }
    }

    /// The durable ingress stream backends `XADD` to.
    pub fn ingress_stream(&self) -> &str {
        &self.ingress
    }

    /// Up to `count` entries of the durable ingress not yet appended, oldest first.
    pub async fn read_ingress(&self, count: usize) -> StoreResult<Vec<IngressEntry>> {
        if self.link.is_down() {
            return Err(StoreError::Unavailable("redis is down".into()));
        }
        let mut conn = self.link.commands();
        let raw: Vec<(String, Vec<Vec<u8>>)> = self
            .read_ingress
            .arg(&self.ingress)
            .arg(&self.ingress_done)
            .arg(count.max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(raw
            .into_iter()
            .map(|(id, fields)| {
                let (mut channel, mut data) = (String::new(), None);
                for pair in fields.chunks_exact(2) {
                    match pair[0].as_slice() {
                        b"channel" => channel = String::from_utf8_lossy(&pair[1]).into_owned(),
                        b"data" => data = Some(String::from_utf8_lossy(&pair[1]).into_owned()),
                        _ => {}
                    }
                }
                IngressEntry { id, channel, data }
            })
            .collect())
    }

    /// The key of the appender's lease (see `sequence.rs`).
    pub fn lease_key(&self) -> String {
        format!("{}lease", self.prefix)
    }

    /// The pub/sub channel of the appender's notes and markers (see `sequence.rs`).
    pub fn notes_channel(&self) -> String {
        format!("{}notes", self.prefix)
    }

    /// Renews or takes the lease (see [`LEASE`]): 0 held by another node, 1 renewed, 2 taken.
    pub async fn lease(&self, key: &str, token: &str, ttl_ms: u64, marker: Option<u64>) -> StoreResult<u8> {
        let mut conn = self.link.commands();
        let nonce = marker.map(|n| n.to_string()).unwrap_or_default();
        self.lease
            .arg(key)
            .arg(token)
            .arg(ttl_ms)
            .arg(self.notes_channel())
            .arg(nonce)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    /// Lets the lease go if `token` holds it.
    pub async fn release(&self, key: &str, token: &str) -> StoreResult<()> {
        let mut conn = self.link.commands();
        let _: i64 = self.release.arg(key).arg(token).invoke_async(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }

    /// Appends a batch as the holder of `lease` (announcing each on its note channel); `Ok(None)`
    /// when the lease is not `lease.token`'s: nothing was appended.
    pub async fn append_as(
        &self,
        batch: &[NewPublication],
        lease: Option<&Lease<'_>>,
    ) -> StoreResult<Option<Vec<Appended>>> {
        let Some(raw) = self.run_append(batch, None, lease).await? else { return Ok(None) };
        raw.iter().map(|p| place(p)).collect::<StoreResult<Vec<_>>>().map(Some)
    }

    /// Appends entries of the durable ingress as the holder of `lease`, in stream order: `batch[i]`
    /// is the entry `ids[i]`, and a publication with an empty channel is not appended (an entry that
    /// names no known channel), only passed. Each entry is appended once, whatever was sent before.
    /// `Ok(None)` when the lease is not `lease.token`'s; else how many were appended now.
    pub async fn append_ingress(
        &self,
        batch: &[NewPublication],
        ids: &[String],
        lease: &Lease<'_>,
    ) -> StoreResult<Option<usize>> {
        let Some(raw) = self.run_append(batch, Some(ids), Some(lease)).await? else { return Ok(None) };
        Ok(Some(raw.iter().filter(|p| !matches!(p.as_str(), "dup" | "skip")).count()))
    }

    /// One call of [`APPEND`]; `None` when the lease is not the caller's.
    async fn run_append(
        &self,
        batch: &[NewPublication],
        ids: Option<&[String]>,
        lease: Option<&Lease<'_>>,
    ) -> StoreResult<Option<Vec<String>>> {
        if self.link.is_down() {
            return Err(StoreError::Unavailable("redis is down".into()));
        }
        let mut inv = self.append.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(self.limits.size.max(1))
            .arg(self.limits.ttl_ms.max(1))
            .arg(EPOCH_TTL_SECS)
            .arg(super::new_epoch())
            .arg(lease.map_or("", |l| l.key))
            .arg(lease.map_or("", |l| l.token))
            .arg(lease.map_or("", |l| l.notes))
            .arg(if ids.is_some() { self.ingress.as_str() } else { "" })
            .arg(if ids.is_some() { self.ingress_done.as_str() } else { "" });
        for (i, p) in batch.iter().enumerate() {
            let id = ids.and_then(|ids| ids.get(i)).map_or("", String::as_str);
            inv.arg(&p.channel).arg(&p.hash).arg(&p.json).arg(id);
        }
        let mut conn = self.link.commands();
        let raw: redis::Value = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        let raw: Vec<String> = match raw {
            redis::Value::Int(0) => return Ok(None),
            v => redis::from_redis_value(v).map_err(|_| corrupt("bad answer"))?,
        };
        if raw.len() != batch.len() {
            return Err(corrupt("answers do not match the batch"));
        }
        Ok(Some(raw))
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
        Ok(self.append_as(batch, None).await?.unwrap_or_default())
    }

    async fn after(&self, channel: &str, after: u64) -> StoreResult<Tail> {
        self.read(channel, "after", after.saturating_add(1)).await
    }

    async fn last(&self, channel: &str, limit: usize) -> StoreResult<Tail> {
        self.read(channel, "last", limit as u64).await
    }
}
