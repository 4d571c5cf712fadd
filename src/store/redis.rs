//! The cluster store on Redis: any node serves any user. Keys live under `<prefix>:`; every
//! collection is bounded by a trim or a TTL. Multi-step updates that must not interleave run as Lua
//! scripts; edits of stored JSON use compare-and-set.
//!
//! Presence counts sockets per node (`n:<node>` fields of `presence:<user>`), and only nodes whose
//! heartbeat is fresh count, so a dead node's sockets stop counting within seconds (see
//! [`crate::cluster`] for the heartbeat and the reaper).

use std::sync::Arc;

use ::redis::aio::ConnectionManager;
use ::redis::{AsyncCommands, Script};
use async_trait::async_trait;

use super::*;
use crate::redis_link::RedisLink;

/// A node whose heartbeat is older than this no longer counts.
pub const NODE_LIVENESS_MS: u64 = 10_000;

pub struct RedisStore {
    conn: ConnectionManager,
    link: Arc<RedisLink>,
    prefix: String,
    node_id: String,
    limits: Limits,
    scripts: Scripts,
}

struct Scripts {
    append: Script,
    socket_up: Script,
    socket_down: Script,
    sockets_of: Script,
    offline_if_idle: Script,
    take_queue: Script,
    cas_hash: Script,
    cas_key: Script,
}

/// Lua: the live socket count of a presence hash (KEYS[1]) given the node heartbeats (KEYS[2]).
const TOTAL_FN: &str = r#"
local function total(pkey, nodes, now, live)
  local t = 0
  local f = redis.call('HGETALL', pkey)
  for i = 1, #f, 2 do
    if string.sub(f[i], 1, 2) == 'n:' then
      local beat = redis.call('HGET', nodes, string.sub(f[i], 3))
      if beat and (tonumber(now) - tonumber(beat)) < tonumber(live) then
        t = t + tonumber(f[i + 1])
      end
    end
  end
  return t
end
"#;

impl Scripts {
    fn new() -> Self {
        let with_total = |body: &str| Script::new(&format!("{TOTAL_FN}\n{body}"));
        Scripts {
            // KEYS: ids list, msgs hash. ARGV: id, json, max.
            append: Script::new(
                r#"
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local extra = redis.call('LLEN', KEYS[1]) - tonumber(ARGV[3])
if extra > 0 then
  local old = redis.call('LRANGE', KEYS[1], 0, extra - 1)
  redis.call('LTRIM', KEYS[1], extra, -1)
  for _, id in ipairs(old) do redis.call('HDEL', KEYS[2], id) end
end
return 1
"#,
            ),
            // KEYS: presence, nodes, node-users, online set. ARGV: node, now, user id.
            socket_up: Script::new(
                r#"
redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[1], 1)
redis.call('HSET', KEYS[1], 'lastSeen', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'offline' then
  redis.call('HSET', KEYS[1], 'status', 'online')
  redis.call('SADD', KEYS[4], ARGV[3])
  return 1
end
return 0
"#,
            ),
            // KEYS: presence, nodes, node-users. ARGV: node, now, user id, liveness.
            socket_down: with_total(
                r#"
local n = redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[1], 'n:' .. ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[3])
end
redis.call('HSET', KEYS[1], 'lastSeen', ARGV[2])
return total(KEYS[1], KEYS[2], ARGV[2], ARGV[4])
"#,
            ),
            // KEYS: presence, nodes. ARGV: now, liveness.
            sockets_of: with_total("return total(KEYS[1], KEYS[2], ARGV[1], ARGV[2])"),
            // KEYS: presence, nodes, online set. ARGV: now, liveness, user id, grace (ms, tolerance included).
            offline_if_idle: with_total(
                r#"
if total(KEYS[1], KEYS[2], ARGV[1], ARGV[2]) > 0 then return 0 end
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'offline' then return 0 end
local seen = tonumber(redis.call('HGET', KEYS[1], 'lastSeen') or '0')
if tonumber(ARGV[1]) < seen + tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'offline', 'lastSeen', ARGV[1])
redis.call('SREM', KEYS[3], ARGV[3])
return 1
"#,
            ),
            take_queue: Script::new(
                r#"
local q = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return q
"#,
            ),
            // KEYS: hash. ARGV: field, old, new.
            cas_hash: Script::new(
                r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"#,
            ),
            // KEYS: key. ARGV: old, new ('' deletes).
            cas_key: Script::new(
                r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') end
  return 1
end
return 0
"#,
            ),
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

const CALL_TTL_SECS: u64 = 24 * 3600;
const SOCKET_TTL_SECS: u64 = 7 * 24 * 3600;

impl RedisStore {
    pub fn new(link: Arc<RedisLink>, prefix: &str, node_id: &str, limits: Limits) -> Self {
        RedisStore {
            conn: link.conn.clone(),
            link,
            prefix: prefix.to_string(),
            node_id: node_id.to_string(),
            limits,
            scripts: Scripts::new(),
        }
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    pub fn nodes_key(&self) -> String {
        self.key(&["nodes"])
    }

    /// The connection, or `Unavailable` at once while Redis is known to be down.
    fn conn(&self) -> StoreResult<ConnectionManager> {
        if self.link.is_down() {
            return Err(StoreError::Unavailable("redis is down".into()));
        }
        Ok(self.conn.clone())
    }

    /// Maps a Redis result, keeping the node's up/down flag current.
    /// Maps a Redis result to the store's error.
    fn ok<T>(&self, r: ::redis::RedisResult<T>) -> StoreResult<T> {
        r.map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    async fn messages(&self, room: &str, ids: &[String]) -> StoreResult<Vec<Message>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<Option<String>> = self.ok(::redis::cmd("HMGET")
            .arg(self.key(&["msgs", room]))
            .arg(ids)
            .query_async(&mut self.conn()?)
            .await)?;
        raw.into_iter().flatten().map(|s| parse(&s)).collect()
    }

    async fn cas(&self, key: &str, old: &str, new: &str) -> StoreResult<bool> {
        let n: i64 = self.ok(self.scripts.cas_key.key(key).arg(old).arg(new).invoke_async(&mut self.conn()?).await)?;
        Ok(n == 1)
    }

    /// Changes a stored call with compare-and-set; `f` returns the new call, or `None` to give up.
    async fn update_call(&self, id: &str, f: impl Fn(&Call) -> Option<Option<Call>>) -> StoreResult<Option<Call>> {
        let key = self.key(&["call", id]);
        for _ in 0..5 {
            let raw: Option<String> = self.ok(self.conn()?.get(&key).await)?;
            let Some(raw) = raw else { return Ok(None) };
            let call: Call = parse(&raw)?;
            let Some(next) = f(&call) else { return Ok(None) };
            let new = match &next {
                Some(c) => json(c)?,
                None => String::new(),
            };
            if self.cas(&key, &raw, &new).await? {
                if next.is_none() {
                    self.forget_call(&call).await?;
                    return Ok(Some(call));
                }
                return Ok(next);
            }
        }
        Err(StoreError::Unavailable("call changed concurrently".into()))
    }

    async fn forget_call(&self, call: &Call) -> StoreResult<()> {
        let mut p = ::redis::pipe();
        p.srem(self.key(&["user-calls", &call.caller]), &call.id)
            .srem(self.key(&["user-calls", &call.callee]), &call.id);
        self.ok(p.query_async::<()>(&mut self.conn()?).await)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn create_room(&self, room: Room) -> StoreResult<Room> {
        let key = self.key(&["room", &room.id]);
        let created: bool =
            self.ok(::redis::cmd("SET").arg(&key).arg(json(&room)?).arg("NX").query_async(&mut self.conn()?).await)?;
        if !created {
            let raw: Option<String> = self.ok(self.conn()?.get(&key).await)?;
            return match raw {
                Some(r) => parse(&r),
                None => Err(StoreError::Unavailable("room vanished".into())),
            };
        }
        let mut p = ::redis::pipe();
        for m in &room.members {
            p.sadd(self.key(&["user-rooms", m]), &room.id);
        }
        self.ok(p.query_async::<()>(&mut self.conn()?).await)?;
        Ok(room)
    }

    async fn room(&self, id: &str) -> StoreResult<Option<Room>> {
        let raw: Option<String> = self.ok(self.conn()?.get(self.key(&["room", id])).await)?;
        raw.map(|r| parse(&r)).transpose()
    }

    async fn rooms_of(&self, user_id: &str) -> StoreResult<Vec<Room>> {
        let ids: Vec<String> = self.ok(self.conn()?.smembers(self.key(&["user-rooms", user_id])).await)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key(&["room", id])).collect();
        let raw: Vec<Option<String>> = self.ok(self.conn()?.mget(keys).await)?;
        raw.into_iter().flatten().map(|r| parse(&r)).collect()
    }

    async fn append(&self, msg: &Message) -> StoreResult<()> {
        let r: ::redis::RedisResult<i64> = self
            .scripts
            .append
            .key(self.key(&["hist", &msg.room_id]))
            .key(self.key(&["msgs", &msg.room_id]))
            .arg(&msg.id)
            .arg(json(msg)?)
            .arg(self.limits.history_per_room)
            .invoke_async(&mut self.conn()?)
            .await;
        self.ok(r).map(|_| ())
    }

    async fn history(
        &self,
        room: &str,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Option<(Vec<Message>, bool)>> {
        let ids_key = self.key(&["hist", room]);
        let (ids, start) = match before {
            None => {
                let (len, ids): (usize, Vec<String>) = self.ok(::redis::pipe()
                    .llen(&ids_key)
                    .lrange(&ids_key, -(limit as isize), -1)
                    .query_async(&mut self.conn()?)
                    .await)?;
                (ids, len.saturating_sub(limit))
            }
            Some(before) => {
                let all: Vec<String> = self.ok(self.conn()?.lrange(&ids_key, 0, -1).await)?;
                let Some(end) = all.iter().position(|id| id == before) else { return Ok(None) };
                let start = end.saturating_sub(limit);
                (all[start..end].to_vec(), start)
            }
        };
        Ok(Some((self.messages(room, &ids).await?, start > 0)))
    }

    async fn message(&self, room: &str, id: &str) -> StoreResult<Option<Message>> {
        let raw: Option<String> = self.ok(self.conn()?.hget(self.key(&["msgs", room]), id).await)?;
        raw.map(|r| parse(&r)).transpose()
    }

    async fn edit(&self, room: &str, id: &str, edit: Edit) -> StoreResult<Option<Message>> {
        let key = self.key(&["msgs", room]);
        for _ in 0..5 {
            let raw: Option<String> = self.ok(self.conn()?.hget(&key, id).await)?;
            let Some(raw) = raw else { return Ok(None) };
            let mut m: Message = parse(&raw)?;
            if m.deleted {
                return Ok(None);
            }
            m.apply(&edit);
            let n: i64 = self.ok(self
                .scripts
                .cas_hash
                .key(&key)
                .arg(id)
                .arg(&raw)
                .arg(json(&m)?)
                .invoke_async(&mut self.conn()?)
                .await)?;
            if n == 1 {
                return Ok(Some(m));
            }
        }
        Err(StoreError::Unavailable("message changed concurrently".into()))
    }

    async fn claim(&self, key: &str, value: &str) -> StoreResult<Claim> {
        let k = self.key(&["dedup", key]);
        let set: Option<String> = self.ok(::redis::cmd("SET")
            .arg(&k)
            .arg(value)
            .arg("NX")
            .arg("EX")
            .arg(self.limits.dedup_ttl_secs)
            .query_async(&mut self.conn()?)
            .await)?;
        if set.is_some() {
            return Ok(Claim::New);
        }
        let first: Option<String> = self.ok(self.conn()?.get(&k).await)?;
        Ok(first.map_or(Claim::New, Claim::Seen))
    }

    async fn release(&self, key: &str) -> StoreResult<()> {
        self.ok(self.conn()?.del(self.key(&["dedup", key])).await)
    }

    async fn resync(&self, local: &[(User, u64)]) -> StoreResult<Vec<String>> {
        let node_users = self.key(&["node-users", &self.node_id]);
        let field = format!("n:{}", self.node_id);
        let before: Vec<String> = self.ok(self.conn()?.smembers(&node_users).await)?;
        let gone: Vec<String> = before.into_iter().filter(|u| !local.iter().any(|(l, _)| l.user_id == *u)).collect();
        let mut p = ::redis::pipe();
        for u in &gone {
            p.hdel(self.key(&["presence", u]), &field).srem(&node_users, u);
        }
        for (user, n) in local {
            let pkey = self.key(&["presence", &user.user_id]);
            p.hset(&pkey, &field, *n).sadd(&node_users, &user.user_id).sadd(self.key(&["online"]), &user.user_id);
            // A user with a live socket here is online unless they chose away/busy.
            p.cmd("HSETNX").arg(&pkey).arg("status").arg("online");
        }
        if !gone.is_empty() || !local.is_empty() {
            self.ok(p.query_async::<()>(&mut self.conn()?).await)?;
        }
        for (user, _) in local {
            let pkey = self.key(&["presence", &user.user_id]);
            let status: Option<String> = self.ok(self.conn()?.hget(&pkey, "status").await)?;
            if status.as_deref() == Some("offline") {
                let _: () = self.ok(self.conn()?.hset(&pkey, "status", "online").await)?;
            }
        }
        Ok(gone)
    }

    async fn socket_up(&self, user: &User, sid: &str) -> StoreResult<bool> {
        let now = crate::auth::unix_now_ms();
        let r: ::redis::RedisResult<i64> = self
            .scripts
            .socket_up
            .key(self.key(&["presence", &user.user_id]))
            .key(self.nodes_key())
            .key(self.key(&["node-users", &self.node_id]))
            .key(self.key(&["online"]))
            .arg(&self.node_id)
            .arg(now)
            .arg(&user.user_id)
            .invoke_async(&mut self.conn()?)
            .await;
        let became = self.ok(r)? == 1;
        let _: () = self.ok(self.conn()?.set_ex(self.key(&["sock", sid]), json(user)?, SOCKET_TTL_SECS).await)?;
        Ok(became)
    }

    async fn socket_down(&self, user_id: &str, sid: &str) -> StoreResult<u64> {
        let now = crate::auth::unix_now_ms();
        let r: ::redis::RedisResult<i64> = self
            .scripts
            .socket_down
            .key(self.key(&["presence", user_id]))
            .key(self.nodes_key())
            .key(self.key(&["node-users", &self.node_id]))
            .arg(&self.node_id)
            .arg(now)
            .arg(user_id)
            .arg(NODE_LIVENESS_MS)
            .invoke_async(&mut self.conn()?)
            .await;
        let left = self.ok(r)?.max(0) as u64;
        let _: () = self.ok(self.conn()?.del(self.key(&["sock", sid])).await)?;
        Ok(left)
    }

    async fn sockets_of(&self, user_id: &str) -> StoreResult<u64> {
        let r: ::redis::RedisResult<i64> = self
            .scripts
            .sockets_of
            .key(self.key(&["presence", user_id]))
            .key(self.nodes_key())
            .arg(crate::auth::unix_now_ms())
            .arg(NODE_LIVENESS_MS)
            .invoke_async(&mut self.conn()?)
            .await;
        Ok(self.ok(r)?.max(0) as u64)
    }

    async fn socket_users(&self, sids: &[String]) -> StoreResult<Vec<Option<User>>> {
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = sids.iter().map(|s| self.key(&["sock", s])).collect();
        let raw: Vec<Option<String>> = self.ok(self.conn()?.mget(keys).await)?;
        Ok(raw.into_iter().map(|r| r.and_then(|s| serde_json::from_str(&s).ok())).collect())
    }

    async fn set_status(&self, user_id: &str, status: &str, now: u64) -> StoreResult<()> {
        let key = self.key(&["presence", user_id]);
        self.ok(self.conn()?.hset_multiple(key, &[("status", status.to_string()), ("lastSeen", now.to_string())]).await)
    }

    async fn mark_offline_if_idle(&self, user_id: &str, now: u64, grace_ms: u64) -> StoreResult<bool> {
        let r: ::redis::RedisResult<i64> = self
            .scripts
            .offline_if_idle
            .key(self.key(&["presence", user_id]))
            .key(self.nodes_key())
            .key(self.key(&["online"]))
            .arg(now)
            .arg(NODE_LIVENESS_MS)
            .arg(user_id)
            .arg(grace_ms.saturating_sub(GRACE_TOLERANCE_MS))
            .invoke_async(&mut self.conn()?)
            .await;
        Ok(self.ok(r)? == 1)
    }

    async fn presence(&self, user_ids: &[String]) -> StoreResult<Vec<Presence>> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = ::redis::pipe();
        for u in user_ids {
            p.cmd("HMGET").arg(self.key(&["presence", u])).arg("status").arg("lastSeen");
        }
        let rows: Vec<(Option<String>, Option<u64>)> = self.ok(p.query_async(&mut self.conn()?).await)?;
        Ok(rows
            .into_iter()
            .map(|(status, last_seen)| Presence { status: status.unwrap_or_else(|| "offline".into()), last_seen })
            .collect())
    }

    async fn enqueue(&self, msg: &PrivateMessage) -> StoreResult<()> {
        let key = self.key(&["queue", &msg.to_user_id]);
        let cap = self.limits.queue_per_user as isize;
        self.ok(::redis::pipe()
            .rpush(&key, json(msg)?)
            .ltrim(&key, -cap, -1)
            .expire(&key, self.limits.queue_ttl_secs as i64)
            .query_async::<()>(&mut self.conn()?)
            .await)
    }

    async fn take_queue(&self, user_id: &str) -> StoreResult<Vec<PrivateMessage>> {
        let raw: Vec<String> =
            self.ok(self.scripts.take_queue.key(self.key(&["queue", user_id])).invoke_async(&mut self.conn()?).await)?;
        let oldest = crate::auth::unix_now_ms().saturating_sub(self.limits.queue_ttl_secs * 1000);
        Ok(raw
            .iter()
            .filter_map(|r| serde_json::from_str::<PrivateMessage>(r).ok())
            .filter(|m| m.timestamp >= oldest)
            .collect())
    }

    async fn restore_queue(&self, user_id: &str, msgs: Vec<PrivateMessage>) -> StoreResult<()> {
        if msgs.is_empty() {
            return Ok(());
        }
        let key = self.key(&["queue", user_id]);
        let mut raw = Vec::with_capacity(msgs.len());
        for m in msgs.iter().rev() {
            raw.push(json(m)?);
        }
        let cap = self.limits.queue_per_user as isize;
        self.ok(::redis::pipe()
            .lpush(&key, raw)
            .ltrim(&key, -cap, -1)
            .expire(&key, self.limits.queue_ttl_secs as i64)
            .query_async::<()>(&mut self.conn()?)
            .await)
    }

    async fn remember_receipt(&self, id: &str, from: &str, to: &str) -> StoreResult<()> {
        let value = json(&(from, to))?;
        self.ok(self.conn()?.set_ex(self.key(&["receipt", id]), value, self.limits.receipt_ttl_secs).await)
    }

    async fn receipts(&self, ids: &[String]) -> StoreResult<Vec<Option<(String, String)>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key(&["receipt", id])).collect();
        let raw: Vec<Option<String>> = self.ok(self.conn()?.mget(keys).await)?;
        Ok(raw.into_iter().map(|r| r.and_then(|s| serde_json::from_str(&s).ok())).collect())
    }

    async fn put_call(&self, call: &Call) -> StoreResult<()> {
        let mut p = ::redis::pipe();
        p.set_ex(self.key(&["call", &call.id]), json(call)?, CALL_TTL_SECS);
        for u in [&call.caller, &call.callee] {
            let k = self.key(&["user-calls", u]);
            p.sadd(&k, &call.id).expire(&k, CALL_TTL_SECS as i64);
        }
        self.ok(p.query_async::<()>(&mut self.conn()?).await)
    }

    async fn call(&self, id: &str) -> StoreResult<Option<Call>> {
        let raw: Option<String> = self.ok(self.conn()?.get(self.key(&["call", id])).await)?;
        raw.map(|r| parse(&r)).transpose()
    }

    async fn remove_call(&self, id: &str) -> StoreResult<Option<Call>> {
        self.update_call(id, |_| Some(None)).await
    }

    async fn answer_call(&self, id: &str, callee_sid: &str, node: &str) -> StoreResult<Option<Call>> {
        self.update_call(id, |c| {
            (c.state == CallState::Ringing).then(|| {
                let mut next = c.clone();
                next.state = CallState::Active;
                next.callee_sid = Some(callee_sid.to_string());
                next.callee_node = Some(node.to_string());
                Some(next)
            })
        })
        .await
    }

    async fn remove_ringing_call(&self, id: &str) -> StoreResult<Option<Call>> {
        self.update_call(id, |c| (c.state == CallState::Ringing).then_some(None)).await
    }

    async fn calls_of(&self, user_id: &str) -> StoreResult<Vec<Call>> {
        let set = self.key(&["user-calls", user_id]);
        let ids: Vec<String> = self.ok(self.conn()?.smembers(&set).await)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key(&["call", id])).collect();
        let raw: Vec<Option<String>> = self.ok(self.conn()?.mget(keys).await)?;
        let mut calls = Vec::new();
        let mut gone = Vec::new();
        for (id, r) in ids.into_iter().zip(raw) {
            match r.and_then(|s| serde_json::from_str::<Call>(&s).ok()) {
                Some(c) => calls.push(c),
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            let _: () = self.ok(self.conn()?.srem(&set, gone).await)?;
        }
        Ok(calls)
    }
}
