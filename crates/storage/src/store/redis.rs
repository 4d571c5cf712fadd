//! The cluster store on Redis: any node serves any user. Keys live under `<prefix>:`; every
//! collection is bounded by a trim or a TTL. Multi-step updates that must not interleave run as Lua
//! scripts; edits of stored JSON use compare-and-set.
//!
//! Presence counts sockets per node (`n:<node>` fields of `presence:<user>`), and only nodes whose
//! liveness key `node:<id>` exists count: each node renews it every second with a 10 s expiry, so a
//! dead node's sockets stop counting when Redis expires the key. No wall clock of any node is
//! compared with another's: times that decide (grace, `lastSeen`) come from Redis's own clock (see
//! `cluster/liveness.rs` for the heartbeat and the reaper).
//!
//! Each author's share of the room histories is kept beside them: `ubytes:<user>` (bytes of their
//! stored messages' JSON), `uhist:<user>` (`<room> <messageId>` in the order of all appends, scored
//! by the counter `hist-seq`) and `ucost:<user>` (each one's bytes, so that a message whose room
//! expired can still be given back). The append and edit scripts keep them in step and drop the
//! author's own oldest messages past `history_bytes_per_user`.

use std::sync::Arc;

use ::redis::{AsyncCommands, Script};
use async_trait::async_trait;

use super::*;
use crate::redis_link::{RedisLink, RetryConn};

/// The lifetime of a node's liveness key, renewed every second.
pub const NODE_LIVENESS_MS: u64 = 10_000;

pub struct RedisStore {
    link: Arc<RedisLink>,
    prefix: String,
    node_id: String,
    limits: Limits,
    scripts: Scripts,
    /// This node's sockets per user, as admitted by `socket_up` and released by `socket_down`
    /// (whether Redis took the update or was away): what `resync` writes back.
    mine: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Held shared by every `socket_up` and `socket_down` across its Redis update, and exclusively by
    /// `resync`: a resync never interleaves with a socket's own update, so a user who connects while
    /// presence is rewritten is neither dropped nor counted twice.
    gate: tokio::sync::RwLock<()>,
}

struct Scripts {
    append: Script,
    edit: Script,
    put_call: Script,
    answer_call: Script,
    create_room: Script,
    socket_up: Script,
    socket_down: Script,
    sockets_of: Script,
    offline_if_idle: Script,
    schedule_offline: Script,
    due_offline: Script,
    enqueue: Script,
    ack_queue: Script,
    own_key: Script,
    cas_key: Script,
}

/// Lua helpers: Redis's clock in ms, and the live socket count of a presence hash (nodes whose
/// liveness key `<nodeprefix><id>` exists).
const LIB: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ms(n) return string.format('%.0f', n) end
local function total(pkey, nodeprefix)
  local t = 0
  local f = redis.call('HGETALL', pkey)
  for i = 1, #f, 2 do
    if string.sub(f[i], 1, 2) == 'n:' then
      if redis.call('EXISTS', nodeprefix .. string.sub(f[i], 3)) == 1 then
        t = t + tonumber(f[i + 1])
      end
    end
  end
  return t
end
-- A queued message leaves its sender's share of the offline queues (`sbytes:`, `squeue:`): the
-- member is '<cost> <id> <to>', cost as queued_cost counts it (content bytes + 256).
local function sender_release(up, raw)
  local ok, m = pcall(cjson.decode, raw)
  if not (ok and type(m) == 'table' and type(m.fromUserId) == 'string' and type(m.content) == 'string') then return end
  local cost = #m.content + 256
  local member = cost .. ' ' .. tostring(m.id) .. ' ' .. tostring(m.toUserId)
  if redis.call('ZREM', up .. 'squeue:' .. m.fromUserId, member) == 1 then
    if redis.call('DECRBY', up .. 'sbytes:' .. m.fromUserId, cost) <= 0 then
      redis.call('DEL', up .. 'sbytes:' .. m.fromUserId)
    end
  end
end
-- Releases the sender's queued messages whose time is over (scored by when they expire).
local function sender_expire(zkey, skey, now)
  local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', ms(now), 'LIMIT', 0, 1000)
  for _, member in ipairs(old) do
    redis.call('ZREM', zkey, member)
    local cost = tonumber(string.match(member, '^(%d+) '))
    if cost then redis.call('DECRBY', skey, cost) end
  end
end
local function push(qkey, bkey, raw, cap, maxbytes, ttl, up)
  redis.call('RPUSH', qkey, raw)
  local bytes = redis.call('INCRBY', bkey, #raw)
  while redis.call('LLEN', qkey) > 1 and (redis.call('LLEN', qkey) > tonumber(cap) or bytes > tonumber(maxbytes)) do
    local old = redis.call('LPOP', qkey)
    bytes = redis.call('DECRBY', bkey, #old)
    sender_release(up, old)
  end
  redis.call('EXPIRE', qkey, ttl)
  redis.call('EXPIRE', bkey, ttl)
end
-- Forgets message `member` ('<room> <id>', already out of its room) from its author's share.
local function unaccount(up, author, member)
  local costs = up .. 'ucost:' .. author
  local cost = redis.call('HGET', costs, member)
  redis.call('HDEL', costs, member)
  redis.call('ZREM', up .. 'uhist:' .. author, member)
  if cost and redis.call('DECRBY', up .. 'ubytes:' .. author, cost) <= 0 then
    redis.call('DEL', up .. 'ubytes:' .. author)
  end
end
-- The author of a stored message's JSON, if it parses.
local function author_of(raw)
  local ok, m = pcall(cjson.decode, raw)
  if ok and type(m) == 'table' and type(m.userId) == 'string' then return m.userId end
  return nil
end
-- Drops the author's oldest messages (never `keep`) while they hold more than `budget` bytes.
local function within_budget(up, author, budget, keep)
  local bkey = up .. 'ubytes:' .. author
  while tonumber(redis.call('GET', bkey) or '0') > budget do
    -- The oldest that is not `keep` (an edit of the author's oldest message drops the next one).
    local two = redis.call('ZRANGE', up .. 'uhist:' .. author, 0, 1)
    local first = two[1]
    if first == keep then first = two[2] end
    if not first then break end
    local sp = string.find(first, ' ', 1, true)
    if sp then
      local room, id = string.sub(first, 1, sp - 1), string.sub(first, sp + 1)
      local raw = redis.call('HGET', up .. 'msgs:' .. room, id)
      if raw then
        redis.call('LREM', up .. 'hist:' .. room, 1, id)
        redis.call('HDEL', up .. 'msgs:' .. room, id)
        redis.call('DECRBY', up .. 'histbytes:' .. room, #raw)
      end
    end
    unaccount(up, author, first)
  end
end
-- The calls that count against `user` (those they placed, and those they answered), but `except`;
-- forgets the ids in their set whose call is gone.
local function calls_against(set, callprefix, user, except)
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', set)) do
    local raw = redis.call('GET', callprefix .. id)
    if not raw then
      redis.call('SREM', set, id)
    elseif id ~= except then
      local ok, c = pcall(cjson.decode, raw)
      if (not ok) or type(c) ~= 'table' or c.caller == user or c.state == 'active' then n = n + 1 end
    end
  end
  return n
end
"#;

impl Scripts {
    fn new() -> Self {
        let lua = |body: &str| Script::new(&format!("{LIB}\n{body}"));
        Scripts {
            // KEYS: ids list, msgs hash, bytes, room. ARGV: id, json, max, max bytes, idle ttl,
            // key prefix with its ':', author, room id, the author's budget.
            append: lua(r#"
local up, author, member = ARGV[6], ARGV[7], ARGV[8] .. ' ' .. ARGV[1]
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local bytes = redis.call('INCRBY', KEYS[3], #ARGV[2])
redis.call('ZADD', up .. 'uhist:' .. author, redis.call('INCR', up .. 'hist-seq'), member)
redis.call('HSET', up .. 'ucost:' .. author, member, #ARGV[2])
redis.call('INCRBY', up .. 'ubytes:' .. author, #ARGV[2])
while redis.call('LLEN', KEYS[1]) > 1 and (redis.call('LLEN', KEYS[1]) > tonumber(ARGV[3]) or bytes > tonumber(ARGV[4])) do
  local old = redis.call('LPOP', KEYS[1])
  local raw = redis.call('HGET', KEYS[2], old)
  if raw then
    bytes = redis.call('DECRBY', KEYS[3], #raw)
    redis.call('HDEL', KEYS[2], old)
    local by = author_of(raw)
    if by then unaccount(up, by, ARGV[8] .. ' ' .. old) end
  end
end
within_budget(up, author, tonumber(ARGV[9]), member)
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
for _, k in ipairs({'uhist:', 'ucost:', 'ubytes:'}) do redis.call('EXPIRE', up .. k .. author, ARGV[5]) end
return 1
"#),
            // KEYS: msgs hash, room bytes. ARGV: id, old json, new json, key prefix with its ':',
            // author, room id, the author's budget. 0 when the message changed meanwhile.
            edit: lua(r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
local d = #ARGV[3] - #ARGV[2]
redis.call('INCRBY', KEYS[2], d)
local up, author, member = ARGV[4], ARGV[5], ARGV[6] .. ' ' .. ARGV[1]
if redis.call('HEXISTS', up .. 'ucost:' .. author, member) == 1 then
  redis.call('HINCRBY', up .. 'ucost:' .. author, member, d)
  redis.call('INCRBY', up .. 'ubytes:' .. author, d)
  within_budget(up, author, tonumber(ARGV[7]), member)
end
return 1
"#),
            // KEYS: call, the caller's calls, the callee's calls. ARGV: json, cap, ttl, call id,
            // call key prefix, caller. 0 when the caller is at the cap.
            put_call: lua(r#"
if calls_against(KEYS[2], ARGV[5], ARGV[6], '') >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
for i = 2, 3 do
  redis.call('SADD', KEYS[i], ARGV[4])
  redis.call('EXPIRE', KEYS[i], ARGV[3])
end
return 1
"#),
            // KEYS: call, the callee's calls. ARGV: old json, new json, cap, call key prefix, callee,
            // call id. 1: answered; 0: the call changed meanwhile; -1: the callee is at the cap.
            answer_call: lua(r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if calls_against(KEYS[2], ARGV[4], ARGV[5], ARGV[6]) >= tonumber(ARGV[3]) then return -1 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"#),
            // KEYS: room, the creator's created set. ARGV: json, cap, room id, idle ttl, room key prefix.
            // Returns the stored room's JSON, or false when the creator is at the cap.
            create_room: lua(r#"
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[5] .. id) == 0 then redis.call('SREM', KEYS[2], id) end
end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[2]) then return false end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return ARGV[1]
"#),
            // KEYS: presence, node-users, online set, departed. ARGV: node, user id, cap, node prefix.
            // Returns -1 at the cap, 1 when the user came online, else 0.
            socket_up: lua(r#"
if total(KEYS[1], ARGV[4]) >= tonumber(ARGV[3]) then return -1 end
redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[1], 1)
redis.call('HSET', KEYS[1], 'lastSeen', ms(now_ms()))
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[4])
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'offline' then
  redis.call('HSET', KEYS[1], 'status', 'online')
  redis.call('SADD', KEYS[3], ARGV[2])
  return 1
end
return 0
"#),
            // KEYS: presence, node-users, departed, offline-due. ARGV: node, user id, node prefix,
            // grace ms, departed cap, then the rooms.
            socket_down: lua(r#"
local n = redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[1], 'n:' .. ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[2])
end
local now = now_ms()
redis.call('HSET', KEYS[1], 'lastSeen', ms(now), 'grace', ARGV[4])
for i = 6, #ARGV do
  if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[5]) then break end
  redis.call('SADD', KEYS[3], ARGV[i])
end
redis.call('EXPIRE', KEYS[3], 86400)
local left = total(KEYS[1], ARGV[3])
if left == 0 then redis.call('ZADD', KEYS[4], ms(now + tonumber(ARGV[4])), ARGV[2]) end
return left
"#),
            // KEYS: presence. ARGV: node prefix.
            sockets_of: lua("return total(KEYS[1], ARGV[1])"),
            // KEYS: presence, online set, departed, offline-due. ARGV: node prefix, user id, the
            // checker's grace (ms), tolerance (ms). The grace is the one the last socket_down stored
            // (the departing node's), else the checker's: nodes with different settings (a rolling
            // change) each run the others' checks. Too early: checked again when that grace is over.
            // Returns {1, rooms...} when the user went offline now, else {0}.
            offline_if_idle: lua(r#"
if total(KEYS[1], ARGV[1]) > 0 then return {0} end
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'offline' then return {0} end
local seen = tonumber(redis.call('HGET', KEYS[1], 'lastSeen') or '0')
local grace = tonumber(redis.call('HGET', KEYS[1], 'grace') or ARGV[3]) or tonumber(ARGV[3])
local now = now_ms()
if now < seen + grace - tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[4], ms(seen + grace), ARGV[2])
  return {0}
end
redis.call('HSET', KEYS[1], 'status', 'offline', 'lastSeen', ms(now))
redis.call('SREM', KEYS[2], ARGV[2])
local rooms = redis.call('SMEMBERS', KEYS[3])
redis.call('DEL', KEYS[3])
table.insert(rooms, 1, 1)
return rooms
"#),
            // KEYS: offline-due. ARGV: user id, grace ms.
            schedule_offline: lua("return redis.call('ZADD', KEYS[1], ms(now_ms() + tonumber(ARGV[2])), ARGV[1])"),
            // KEYS: offline-due. Claims up to 500 due checks.
            due_offline: lua(r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms(now_ms()), 'LIMIT', 0, 500)
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"#),
            // KEYS: presence, queue, queue bytes, sender's members, sender's bytes. ARGV: node prefix
            // ('' queues whatever the presence), json, cap, max bytes, ttl, key prefix, sender cap
            // ('' never refuses), cost, member. 0 online, 1 queued, 2 over the sender's cap.
            enqueue: lua(r#"
if ARGV[1] ~= '' and total(KEYS[1], ARGV[1]) > 0 then return 0 end
local now = now_ms()
sender_expire(KEYS[4], KEYS[5], now)
local cost = tonumber(ARGV[8])
if ARGV[7] ~= '' and tonumber(redis.call('GET', KEYS[5]) or '0') + cost > tonumber(ARGV[7]) then return 2 end
redis.call('ZADD', KEYS[4], ms(now + tonumber(ARGV[5]) * 1000), ARGV[9])
redis.call('INCRBY', KEYS[5], cost)
redis.call('EXPIRE', KEYS[4], ARGV[5])
redis.call('EXPIRE', KEYS[5], ARGV[5])
push(KEYS[2], KEYS[3], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return 1
"#),
            // KEYS: queue, queue bytes. ARGV: key prefix, then the handed-over messages' JSON.
            ack_queue: lua(r#"
for i = 2, #ARGV do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    redis.call('DECRBY', KEYS[2], #ARGV[i])
    sender_release(ARGV[1], ARGV[i])
  end
end
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return 1
"#),
            // KEYS: the owner's keys (a sorted set by when each was made). ARGV: a key just made, its
            // TTL in seconds, the most the owner may hold. Past it the owner's oldest keys are deleted.
            own_key: lua(r#"
local now = now_ms()
redis.call('ZADD', KEYS[1], ms(now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms(now - tonumber(ARGV[2]) * 1000))
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[1], 0, over - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
  for _, k in ipairs(old) do redis.call('DEL', k) end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"#),
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
            link,
            prefix: prefix.to_string(),
            node_id: node_id.to_string(),
            limits,
            scripts: Scripts::new(),
            mine: Default::default(),
            gate: Default::default(),
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

    /// `socket_up`'s update in Redis: the presence count (against the cap) and the socket's entries.
    async fn socket_up_in_redis(&self, user: &User, sid: &str, cap: usize) -> StoreResult<Option<bool>> {
        let r: ::redis::RedisResult<i64> = self
            .scripts
            .socket_up
            .key(self.key(&["presence", &user.user_id]))
            .key(self.key(&["node-users", &self.node_id]))
            .key(self.key(&["online"]))
            .key(self.key(&["departed", &user.user_id]))
            .arg(&self.node_id)
            .arg(&user.user_id)
            .arg(cap)
            .arg(self.node_prefix())
            .invoke_async(&mut self.conn()?)
            .await;
        let became = match self.ok(r)? {
            -1 => return Ok(None),
            n => n == 1,
        };
        // The socket's user (for other nodes' member lists), and the node's list of sockets (for the
        // reaper, should this node die).
        let mut p = ::redis::pipe();
        p.set_ex(self.key(&["sock", sid]), json(user)?, SOCKET_TTL_SECS)
            .ignore()
            .sadd(self.key(&["node-socks", &self.node_id]), sid)
            .ignore();
        let _: () = self.ok(p.query_async(&mut self.conn()?).await)?;
        Ok(Some(became))
    }

    /// `socket_down`'s update in Redis. Returns the user's sockets left on live nodes.
    async fn socket_down_in_redis(
        &self,
        user_id: &str,
        sid: &str,
        rooms: &[String],
        grace_ms: u64,
    ) -> StoreResult<u64> {
        let r: ::redis::RedisResult<i64> = self
            .scripts
            .socket_down
            .key(self.key(&["presence", user_id]))
            .key(self.key(&["node-users", &self.node_id]))
            .key(self.key(&["departed", user_id]))
            .key(self.key(&["offline-due"]))
            .arg(&self.node_id)
            .arg(user_id)
            .arg(self.node_prefix())
            .arg(grace_ms)
            .arg(self.limits.departed_rooms_per_user)
            .arg(rooms)
            .invoke_async(&mut self.conn()?)
            .await;
        let left = self.ok(r)?.max(0) as u64;
        let mut p = ::redis::pipe();
        p.del(self.key(&["sock", sid])).ignore().srem(self.key(&["node-socks", &self.node_id]), sid).ignore();
        let _: () = self.ok(p.query_async(&mut self.conn()?).await)?;
        Ok(left)
    }

    /// The prefix of the nodes' liveness keys (`<prefix>:node:<id>`).
    fn node_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }

    /// Queues `msg` in one script with its sender's share (`checked`: unless its target is online
    /// or its sender is at `queued_bytes_per_sender`). 0 online, 1 queued, 2 over the sender's cap.
    async fn push_queue(&self, msg: &PrivateMessage, checked: bool) -> StoreResult<i64> {
        let cost = queued_cost(msg);
        let r: ::redis::RedisResult<i64> = self
            .scripts
            .enqueue
            .key(self.key(&["presence", &msg.to_user_id]))
            .key(self.key(&["queue", &msg.to_user_id]))
            .key(self.key(&["qbytes", &msg.to_user_id]))
            .key(self.key(&["squeue", &msg.from_user_id]))
            .key(self.key(&["sbytes", &msg.from_user_id]))
            .arg(if checked { self.node_prefix() } else { String::new() })
            .arg(json(msg)?)
            .arg(self.limits.queue_per_user)
            .arg(self.limits.queue_bytes_per_user)
            .arg(self.limits.queue_ttl_secs)
            .arg(self.key(&[""]))
            .arg(if checked { self.limits.queued_bytes_per_sender.to_string() } else { String::new() })
            .arg(cost)
            .arg(format!("{cost} {} {}", msg.id, msg.to_user_id))
            .invoke_async(&mut self.conn()?)
            .await;
        self.ok(r)
    }

    /// Counts `key` (just made, for `ttl` seconds) against its owner's `keys_per_sender`, in the
    /// owner's sorted set `parts`; past the cap the owner's oldest keys are deleted.
    async fn own(&self, parts: &[&str], key: &str, ttl: u64) -> StoreResult<()> {
        let r: ::redis::RedisResult<i64> = self
            .scripts
            .own_key
            .key(self.key(parts))
            .arg(key)
            .arg(ttl)
            .arg(self.limits.keys_per_sender)
            .invoke_async(&mut self.conn()?)
            .await;
        self.ok(r).map(|_| ())
    }

    /// The connection, or `Unavailable` at once while Redis is known to be down.
    fn conn(&self) -> StoreResult<RetryConn> {
        if self.link.is_down() {
            return Err(StoreError::Unavailable("redis is down".into()));
        }
        Ok(self.link.commands())
    }

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
    async fn create_room(&self, room: Room) -> StoreResult<Option<Room>> {
        let ttl = self.limits.room_idle_ttl_secs;
        let stored: Option<String> = self.ok(self
            .scripts
            .create_room
            .key(self.key(&["room", &room.id]))
            .key(self.key(&["created", &room.created_by]))
            .arg(json(&room)?)
            .arg(self.limits.created_rooms_per_user)
            .arg(&room.id)
            .arg(ttl)
            .arg(self.key(&["room", ""]))
            .invoke_async(&mut self.conn()?)
            .await)?;
        let Some(stored) = stored else { return Ok(None) };
        let stored: Room = parse(&stored)?;
        if stored == room {
            let mut p = ::redis::pipe();
            for m in &room.members {
                let k = self.key(&["user-rooms", m]);
                p.sadd(&k, &room.id).expire(&k, ttl as i64);
            }
            self.ok(p.query_async::<()>(&mut self.conn()?).await)?;
        }
        Ok(Some(stored))
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
        let gone: Vec<&String> = ids.iter().zip(&raw).filter(|(_, r)| r.is_none()).map(|(id, _)| id).collect();
        if !gone.is_empty() {
            // Rooms that expired: forget them here too.
            let _: () = self.ok(self.conn()?.srem(self.key(&["user-rooms", user_id]), gone).await)?;
        }
        raw.into_iter().flatten().map(|r| parse(&r)).collect()
    }

    async fn append(&self, msg: &Message) -> StoreResult<()> {
        let r: ::redis::RedisResult<i64> = self
            .scripts
            .append
            .key(self.key(&["hist", &msg.room_id]))
            .key(self.key(&["msgs", &msg.room_id]))
            .key(self.key(&["histbytes", &msg.room_id]))
            .key(self.key(&["room", &msg.room_id]))
            .arg(&msg.id)
            .arg(json(msg)?)
            .arg(self.limits.history_per_room)
            .arg(self.limits.history_bytes_per_room)
            .arg(self.limits.room_idle_ttl_secs)
            .arg(self.key(&[""]))
            .arg(&msg.user_id)
            .arg(&msg.room_id)
            .arg(self.limits.history_bytes_per_user)
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
                .edit
                .key(&key)
                .key(self.key(&["histbytes", room]))
                .arg(id)
                .arg(&raw)
                .arg(json(&m)?)
                .arg(self.key(&[""]))
                .arg(&m.user_id)
                .arg(room)
                .arg(self.limits.history_bytes_per_user)
                .invoke_async(&mut self.conn()?)
                .await)?;
            if n == 1 {
                return Ok(Some(m));
            }
        }
        Err(StoreError::Unavailable("message changed concurrently".into()))
    }

    async fn claim(&self, owner: &str, key: &str, value: &str) -> StoreResult<Claim> {
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
            self.own(&["dedup-keys", owner], &k, self.limits.dedup_ttl_secs).await?;
            return Ok(Claim::New);
        }
        let first: Option<String> = self.ok(self.conn()?.get(&k).await)?;
        Ok(first.map_or(Claim::New, Claim::Seen))
    }

    async fn release(&self, key: &str) -> StoreResult<()> {
        self.ok(self.conn()?.del(self.key(&["dedup", key])).await)
    }

    async fn lease(&self, key: &str, ms: u64) -> StoreResult<bool> {
        let set: Option<String> = self.ok(::redis::cmd("SET")
            .arg(self.key(&["lease", key]))
            .arg(&self.node_id)
            .arg("NX")
            .arg("PX")
            .arg(ms.max(1))
            .query_async(&mut self.conn()?)
            .await)?;
        Ok(set.is_some())
    }

    async fn unlease(&self, key: &str) -> StoreResult<()> {
        self.ok(self.conn()?.del(self.key(&["lease", key])).await)
    }

    async fn resync(&self) -> StoreResult<Vec<String>> {
        let _alone = self.gate.write().await;
        let local = self.mine.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let node_users = self.key(&["node-users", &self.node_id]);
        let field = format!("n:{}", self.node_id);
        let before: Vec<String> = self.ok(self.conn()?.smembers(&node_users).await)?;
        let gone: Vec<String> = before.into_iter().filter(|u| !local.contains_key(u)).collect();
        let mut p = ::redis::pipe();
        for u in &gone {
            p.hdel(self.key(&["presence", u]), &field).srem(&node_users, u);
        }
        for (user_id, n) in &local {
            let pkey = self.key(&["presence", user_id]);
            p.hset(&pkey, &field, *n).sadd(&node_users, user_id).sadd(self.key(&["online"]), user_id);
            // A user with a live socket here is online unless they chose away/busy.
            p.cmd("HSETNX").arg(&pkey).arg("status").arg("online");
        }
        if !gone.is_empty() || !local.is_empty() {
            self.ok(p.query_async::<()>(&mut self.conn()?).await)?;
        }
        // The counts are written: sockets may come and go again while a stale `offline` status is
        // mended, two round trips whatever the number of users (not two per user).
        drop(_alone);
        let users: Vec<String> = local.into_keys().collect();
        let mut read = ::redis::pipe();
        for user_id in &users {
            read.hget(self.key(&["presence", user_id]), "status");
        }
        let statuses: Vec<Option<String>> =
            if users.is_empty() { Vec::new() } else { self.ok(read.query_async(&mut self.conn()?).await)? };
        let mut mend = ::redis::pipe();
        let mut mended = false;
        for (user_id, status) in users.iter().zip(statuses) {
            if status.as_deref() == Some("offline") {
                mend.hset(self.key(&["presence", user_id]), "status", "online").ignore();
                mended = true;
            }
        }
        if mended {
            self.ok(mend.query_async::<()>(&mut self.conn()?).await)?;
        }
        Ok(gone)
    }

    async fn socket_up(&self, user: &User, sid: &str, cap: usize) -> StoreResult<Option<bool>> {
        let _shared = self.gate.read().await;
        let r = self.socket_up_in_redis(user, sid, cap).await;
        // Admitted unless over the cap, Redis away or not: this node's count holds it.
        if !matches!(r, Ok(None)) {
            *self.mine.lock().unwrap_or_else(|e| e.into_inner()).entry(user.user_id.clone()).or_default() += 1;
        }
        r
    }

    async fn socket_down(&self, user_id: &str, sid: &str, rooms: &[String], grace_ms: u64) -> StoreResult<u64> {
        let _shared = self.gate.read().await;
        {
            let mut mine = self.mine.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = mine.get_mut(user_id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    mine.remove(user_id);
                }
            }
        }
        self.socket_down_in_redis(user_id, sid, rooms, grace_ms).await
    }

    async fn sockets_of(&self, user_id: &str) -> StoreResult<u64> {
        let r: ::redis::RedisResult<i64> = self
            .scripts
            .sockets_of
            .key(self.key(&["presence", user_id]))
            .arg(self.node_prefix())
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

    async fn schedule_offline_check(&self, user_id: &str, grace_ms: u64) -> StoreResult<()> {
        let r: ::redis::RedisResult<i64> = self
            .scripts
            .schedule_offline
            .key(self.key(&["offline-due"]))
            .arg(user_id)
            .arg(grace_ms)
            .invoke_async(&mut self.conn()?)
            .await;
        self.ok(r).map(|_| ())
    }

    async fn due_offline_checks(&self) -> StoreResult<Vec<String>> {
        let r: ::redis::RedisResult<Vec<String>> =
            self.scripts.due_offline.key(self.key(&["offline-due"])).invoke_async(&mut self.conn()?).await;
        self.ok(r)
    }

    async fn mark_offline_if_idle(&self, user_id: &str, grace_ms: u64) -> StoreResult<Option<Vec<String>>> {
        let r: ::redis::RedisResult<Vec<::redis::Value>> = self
            .scripts
            .offline_if_idle
            .key(self.key(&["presence", user_id]))
            .key(self.key(&["online"]))
            .key(self.key(&["departed", user_id]))
            .key(self.key(&["offline-due"]))
            .arg(self.node_prefix())
            .arg(user_id)
            .arg(grace_ms)
            .arg(GRACE_TOLERANCE_MS)
            .invoke_async(&mut self.conn()?)
            .await;
        let mut reply = self.ok(r)?.into_iter();
        let went = matches!(reply.next(), Some(::redis::Value::Int(1)));
        if !went {
            return Ok(None);
        }
        Ok(Some(reply.filter_map(|v| ::redis::from_redis_value::<String>(v).ok()).collect()))
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

    async fn enqueue_if_offline(&self, msg: &PrivateMessage) -> StoreResult<Enqueued> {
        Ok(match self.push_queue(msg, true).await? {
            0 => Enqueued::Online,
            2 => Enqueued::SenderFull,
            _ => Enqueued::Queued,
        })
    }

    async fn enqueue(&self, msg: &PrivateMessage) -> StoreResult<()> {
        self.push_queue(msg, false).await.map(|_| ())
    }

    async fn peek_queue(&self, user_id: &str) -> StoreResult<Vec<PrivateMessage>> {
        let raw: Vec<String> = self.ok(self.conn()?.lrange(self.key(&["queue", user_id]), 0, -1).await)?;
        let oldest = rtg_model::clock::unix_now_ms().saturating_sub(self.limits.queue_ttl_secs * 1000);
        Ok(raw
            .iter()
            .filter_map(|r| serde_json::from_str::<PrivateMessage>(r).ok())
            .filter(|m| m.timestamp >= oldest)
            .collect())
    }

    async fn ack_queue(&self, user_id: &str, msgs: &[PrivateMessage]) -> StoreResult<()> {
        if msgs.is_empty() {
            return Ok(());
        }
        // Stored as `json(msg)`: serialising the same message again gives the same bytes.
        let raw = msgs.iter().map(json).collect::<StoreResult<Vec<String>>>()?;
        let r: ::redis::RedisResult<i64> = self
            .scripts
            .ack_queue
            .key(self.key(&["queue", user_id]))
            .key(self.key(&["qbytes", user_id]))
            .arg(self.key(&[""]))
            .arg(raw)
            .invoke_async(&mut self.conn()?)
            .await;
        self.ok(r).map(|_| ())
    }

    async fn remember_receipt(&self, id: &str, from: &str, to: &str) -> StoreResult<()> {
        let value = json(&(from, to))?;
        let k = self.key(&["receipt", id]);
        self.ok(self.conn()?.set_ex::<_, _, ()>(&k, value, self.limits.receipt_ttl_secs).await)?;
        self.own(&["receipt-keys", from], &k, self.limits.receipt_ttl_secs).await
    }

    async fn receipts(&self, ids: &[String]) -> StoreResult<Vec<Option<(String, String)>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key(&["receipt", id])).collect();
        let raw: Vec<Option<String>> = self.ok(self.conn()?.mget(keys).await)?;
        Ok(raw.into_iter().map(|r| r.and_then(|s| serde_json::from_str(&s).ok())).collect())
    }

    async fn put_call(&self, call: &Call, cap: usize) -> StoreResult<bool> {
        let n: i64 = self.ok(self
            .scripts
            .put_call
            .key(self.key(&["call", &call.id]))
            .key(self.key(&["user-calls", &call.caller]))
            .key(self.key(&["user-calls", &call.callee]))
            .arg(json(call)?)
            .arg(cap)
            .arg(CALL_TTL_SECS)
            .arg(&call.id)
            .arg(self.key(&["call", ""]))
            .arg(&call.caller)
            .invoke_async(&mut self.conn()?)
            .await)?;
        Ok(n == 1)
    }

    async fn call(&self, id: &str) -> StoreResult<Option<Call>> {
        let raw: Option<String> = self.ok(self.conn()?.get(self.key(&["call", id])).await)?;
        raw.map(|r| parse(&r)).transpose()
    }

    async fn remove_call(&self, id: &str) -> StoreResult<Option<Call>> {
        self.update_call(id, |_| Some(None)).await
    }

    async fn answer_call(&self, id: &str, callee_sid: &str, node: &str, cap: usize) -> StoreResult<Answered> {
        let key = self.key(&["call", id]);
        for _ in 0..5 {
            let raw: Option<String> = self.ok(self.conn()?.get(&key).await)?;
            let Some(raw) = raw else { return Ok(Answered::NotRinging) };
            let mut call: Call = parse(&raw)?;
            if call.state != CallState::Ringing {
                return Ok(Answered::NotRinging);
            }
            call.state = CallState::Active;
            call.callee_sid = Some(callee_sid.to_string());
            call.callee_node = Some(node.to_string());
            let n: i64 = self.ok(self
                .scripts
                .answer_call
                .key(&key)
                .key(self.key(&["user-calls", &call.callee]))
                .arg(&raw)
                .arg(json(&call)?)
                .arg(cap)
                .arg(self.key(&["call", ""]))
                .arg(&call.callee)
                .arg(id)
                .invoke_async(&mut self.conn()?)
                .await)?;
            match n {
                1 => return Ok(Answered::Yes(Box::new(call))),
                -1 => return Ok(Answered::AtCap),
                _ => {}
            }
        }
        Err(StoreError::Unavailable("call changed concurrently".into()))
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
