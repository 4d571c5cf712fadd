//! The single-node store: plain maps behind one mutex, held only for short, await-free sections.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::*;

/// How long the presence of a user without a socket is remembered after they were last seen.
const PRESENCE_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Default)]
struct PresenceEntry {
    sockets: u64,
    status: Option<String>,
    last_seen: Option<u64>,
    /// Chat rooms the user's sockets were in when they left, until the grace decides.
    departed: HashSet<String>,
}

/// Keys that expire after a fixed TTL, oldest first, so purging is popping the front; each owned
/// by someone who may hold at most `per_owner` of them (their oldest go first).
struct Expiring<V> {
    map: HashMap<String, (V, Instant)>,
    order: VecDeque<(Instant, String)>,
    ttl: Duration,
    owners: HashMap<String, VecDeque<String>>,
    per_owner: usize,
}

impl<V> Expiring<V> {
    fn new(ttl_secs: u64, per_owner: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            ttl: Duration::from_secs(ttl_secs),
            owners: HashMap::new(),
            per_owner: per_owner.max(1),
        }
    }
    /// Inserts a key of `owner`, forgetting the owner's oldest keys past `per_owner`.
    fn insert_owned(&mut self, owner: &str, key: String, value: V) {
        self.insert(key.clone(), value);
        let map = &mut self.map;
        let keys = self.owners.entry(owner.to_string()).or_default();
        // Keys that expired (or were released) meanwhile leave the owner's list first.
        while keys.front().is_some_and(|k| !map.contains_key(k)) {
            keys.pop_front();
        }
        keys.push_back(key);
        while keys.len() > self.per_owner {
            if let Some(old) = keys.pop_front() {
                map.remove(&old);
            }
        }
    }
    /// Forgets the owners' lists of keys that are gone (the periodic purge).
    fn purge_owners(&mut self) {
        let map = &self.map;
        self.owners.retain(|_, keys| {
            keys.retain(|k| map.contains_key(k));
            !keys.is_empty()
        });
    }
    fn purge(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if *at > now {
                break;
            }
            if let Some((at, key)) = self.order.pop_front() {
                if self.map.get(&key).is_some_and(|(_, exp)| *exp <= at) {
                    self.map.remove(&key);
                }
            }
        }
    }
    fn get(&mut self, key: &str) -> Option<&V> {
        let now = Instant::now();
        self.purge(now);
        self.map.get(key).map(|(v, _)| v)
    }
    fn insert(&mut self, key: String, value: V) {
        let now = Instant::now();
        self.purge(now);
        let exp = now + self.ttl;
        self.order.push_back((exp, key.clone()));
        self.map.insert(key, (value, exp));
    }
}

/// One room's history (each message with its place in the order of all appends), with its size
/// and when it was last written.
#[derive(Default)]
struct History {
    msgs: VecDeque<(u64, Message)>,
    bytes: usize,
    written: Option<Instant>,
}

/// What one user's messages hold in all histories: their bytes, and where each is (by its place in
/// the order of all appends: the first is the oldest).
#[derive(Default)]
struct Author {
    bytes: usize,
    msgs: BTreeMap<u64, String>,
}

#[derive(Default)]
struct Queue {
    msgs: VecDeque<(PrivateMessage, Instant)>,
    bytes: usize,
}

impl Queue {
    /// Drops the oldest message, releasing its bytes from its sender's share.
    fn pop_front(&mut self, senders: &mut HashMap<String, usize>) {
        if let Some((m, _)) = self.msgs.pop_front() {
            self.bytes = self.bytes.saturating_sub(queued_cost(&m));
            release(senders, &m);
        }
    }
    fn drop_expired(&mut self, now: Instant, senders: &mut HashMap<String, usize>) {
        while self.msgs.front().is_some_and(|(_, exp)| *exp <= now) {
            self.pop_front(senders);
        }
    }
}

/// Gives a message's bytes back to its sender's share of the offline queues.
fn release(senders: &mut HashMap<String, usize>, m: &PrivateMessage) {
    if let Some(b) = senders.get_mut(&m.from_user_id) {
        *b = b.saturating_sub(queued_cost(m));
        if *b == 0 {
            senders.remove(&m.from_user_id);
        }
    }
}

struct Inner {
    rooms: HashMap<String, Room>,
    rooms_by_user: HashMap<String, Vec<String>>,
    /// Rooms each user created (that still exist): the per-user cap.
    created_by: HashMap<String, usize>,
    history: HashMap<String, History>,
    history_bytes: usize,
    /// Each author's share of the histories, and the authors ordered by it (the heaviest last).
    authors: HashMap<String, Author>,
    by_weight: BTreeSet<(usize, String)>,
    /// The place of the next appended message in the order of all appends.
    seq: u64,
    dedup: Expiring<String>,
    presence: HashMap<String, PresenceEntry>,
    /// Offline checks: (due, ms since the epoch; user).
    offline_due: BTreeSet<(u64, String)>,
    queues: HashMap<String, Queue>,
    /// Bytes each sender keeps in all queues (`queued_bytes_per_sender`).
    senders: HashMap<String, usize>,
    receipts: Expiring<(String, String)>,
    calls: HashMap<String, Call>,
    leases: HashMap<String, Instant>,
}

pub struct MemoryStore {
    limits: Limits,
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new(limits: Limits) -> Self {
        MemoryStore {
            limits,
            inner: Mutex::new(Inner {
                rooms: HashMap::new(),
                rooms_by_user: HashMap::new(),
                created_by: HashMap::new(),
                history: HashMap::new(),
                history_bytes: 0,
                authors: HashMap::new(),
                by_weight: BTreeSet::new(),
                seq: 0,
                dedup: Expiring::new(limits.dedup_ttl_secs, limits.keys_per_sender),
                presence: HashMap::new(),
                offline_due: BTreeSet::new(),
                queues: HashMap::new(),
                senders: HashMap::new(),
                receipts: Expiring::new(limits.receipt_ttl_secs, limits.keys_per_sender),
                calls: HashMap::new(),
                leases: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets rooms and histories idle for `room_idle_ttl_secs`, and expired queues: what `purge`
    /// runs, with the clock given (tests move it).
    fn purge_at(&self, now: Instant) {
        let ttl = Duration::from_secs(self.limits.room_idle_ttl_secs);
        let mut g = self.lock();
        let idle = |written: Option<Instant>| written.is_some_and(|w| now.saturating_duration_since(w) >= ttl);
        let stale: Vec<String> = g.history.iter().filter(|(_, h)| idle(h.written)).map(|(id, _)| id.clone()).collect();
        for id in stale {
            g.forget_history(&id);
        }
        let created_before = rtg_model::clock::unix_now_ms().saturating_sub(ttl.as_millis() as u64);
        let old_rooms: Vec<String> = g
            .rooms
            .values()
            .filter(|r| r.created_at < created_before && !g.history.contains_key(&r.id))
            .map(|r| r.id.clone())
            .collect();
        for id in old_rooms {
            g.forget_room(&id);
        }
        g.dedup.purge(now);
        g.receipts.purge(now);
        g.dedup.purge_owners();
        g.receipts.purge_owners();
        let Inner { queues, senders, .. } = &mut *g;
        queues.retain(|_, q| {
            q.drop_expired(now, senders);
            !q.msgs.is_empty()
        });
        // Users without a socket, last seen longer ago than PRESENCE_KEEP, are forgotten (they then
        // read as `offline` with `lastSeen: null`): the map holds the users of a week, not of ever.
        let now_ms = rtg_model::clock::unix_now_ms() + now.saturating_duration_since(Instant::now()).as_millis() as u64;
        let keep_ms = PRESENCE_KEEP.as_millis() as u64;
        g.presence.retain(|_, e| {
            e.sockets > 0 || !e.departed.is_empty() || e.last_seen.is_some_and(|t| t + keep_ms > now_ms)
        });
    }
}

impl Inner {
    fn forget_history(&mut self, id: &str) {
        if let Some(h) = self.history.remove(id) {
            self.history_bytes = self.history_bytes.saturating_sub(h.bytes);
            for (seq, m) in &h.msgs {
                self.unaccount(&m.user_id, *seq, message_cost(m));
            }
        }
    }

    /// Changes an author's bytes by `add - sub`, keeping `by_weight` in step.
    fn reweigh(&mut self, author: &str, add: usize, sub: usize) {
        let a = self.authors.entry(author.to_string()).or_default();
        let before = a.bytes;
        a.bytes = (a.bytes + add).saturating_sub(sub);
        let after = a.bytes;
        let gone = a.msgs.is_empty();
        self.by_weight.remove(&(before, author.to_string()));
        if gone {
            self.authors.remove(author);
        } else {
            self.by_weight.insert((after, author.to_string()));
        }
    }

    fn account(&mut self, author: &str, seq: u64, room: &str, cost: usize) {
        self.authors.entry(author.to_string()).or_default().msgs.insert(seq, room.to_string());
        self.reweigh(author, cost, 0);
    }

    /// Forgets a message (already taken out of its room) from its author's share.
    fn unaccount(&mut self, author: &str, seq: u64, cost: usize) {
        if let Some(a) = self.authors.get_mut(author) {
            a.msgs.remove(&seq);
        }
        self.reweigh(author, 0, cost);
    }

    /// Takes an author's oldest message but `keep` out of its room (and the room's history, if that
    /// empties it). False when there is none.
    fn evict_oldest_of(&mut self, author: &str, keep: u64) -> bool {
        let Some((seq, room)) = self.authors.get(author).and_then(|a| a.msgs.iter().find(|(s, _)| **s != keep)) else {
            return false;
        };
        let (seq, room) = (*seq, room.clone());
        let removed = self.history.get_mut(&room).and_then(|h| {
            let i = h.msgs.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
            let (_, m) = h.msgs.remove(i)?;
            h.bytes = h.bytes.saturating_sub(message_cost(&m));
            Some(m)
        });
        let cost = removed.as_ref().map_or(0, message_cost);
        self.history_bytes = self.history_bytes.saturating_sub(cost);
        self.unaccount(author, seq, cost);
        if self.history.get(&room).is_some_and(|h| h.msgs.is_empty()) {
            self.history.remove(&room);
        }
        true
    }

    /// The bounds over rooms, after `author` wrote (or edited) message `keep`: first the author's
    /// own oldest messages go until they are within their budget; then, while all histories
    /// together are over the total, the oldest messages of whoever holds the most. `keep` itself
    /// is never taken.
    fn enforce(&mut self, limits: &Limits, author: &str, keep: u64) {
        while self.authors.get(author).is_some_and(|a| a.bytes > limits.history_bytes_per_user) {
            if !self.evict_oldest_of(author, keep) {
                break;
            }
        }
        while self.history_bytes > limits.history_bytes_total {
            let Some((_, heaviest)) = self.by_weight.last().cloned() else { break };
            if !self.evict_oldest_of(&heaviest, keep) {
                break;
            }
        }
    }

    fn forget_room(&mut self, id: &str) {
        let Some(room) = self.rooms.remove(id) else { return };
        for m in &room.members {
            if let Some(ids) = self.rooms_by_user.get_mut(m) {
                ids.retain(|r| r != id);
                if ids.is_empty() {
                    self.rooms_by_user.remove(m);
                }
            }
        }
        if let Some(n) = self.created_by.get_mut(&room.created_by) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.created_by.remove(&room.created_by);
            }
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_room(&self, room: Room) -> StoreResult<Option<Room>> {
        let mut g = self.lock();
        if let Some(existing) = g.rooms.get(&room.id) {
            return Ok(Some(existing.clone()));
        }
        let created = g.created_by.entry(room.created_by.clone()).or_insert(0);
        if *created >= self.limits.created_rooms_per_user {
            return Ok(None);
        }
        *created += 1;
        for m in &room.members {
            g.rooms_by_user.entry(m.clone()).or_default().push(room.id.clone());
        }
        g.rooms.insert(room.id.clone(), room.clone());
        Ok(Some(room))
    }

    async fn room(&self, id: &str) -> StoreResult<Option<Room>> {
        Ok(self.lock().rooms.get(id).cloned())
    }

    async fn rooms_of(&self, user_id: &str) -> StoreResult<Vec<Room>> {
        let g = self.lock();
        Ok(g.rooms_by_user
            .get(user_id)
            .map(|ids| ids.iter().filter_map(|id| g.rooms.get(id).cloned()).collect())
            .unwrap_or_default())
    }

    async fn append(&self, msg: &Message) -> StoreResult<()> {
        let mut g = self.lock();
        let g = &mut *g;
        g.seq += 1;
        let seq = g.seq;
        let cost = message_cost(msg);
        let h = g.history.entry(msg.room_id.clone()).or_default();
        h.msgs.push_back((seq, msg.clone()));
        h.bytes += cost;
        h.written = Some(Instant::now());
        let mut trimmed = Vec::new();
        while h.msgs.len() > 1
            && (h.msgs.len() > self.limits.history_per_room || h.bytes > self.limits.history_bytes_per_room)
        {
            if let Some((s, old)) = h.msgs.pop_front() {
                h.bytes = h.bytes.saturating_sub(message_cost(&old));
                trimmed.push((s, old));
            }
        }
        g.history_bytes += cost;
        g.account(&msg.user_id, seq, &msg.room_id, cost);
        for (s, old) in trimmed {
            let c = message_cost(&old);
            g.history_bytes = g.history_bytes.saturating_sub(c);
            g.unaccount(&old.user_id, s, c);
        }
        g.enforce(&self.limits, &msg.user_id, seq);
        Ok(())
    }

    async fn history(
        &self,
        room: &str,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Option<(Vec<Message>, bool)>> {
        let g = self.lock();
        let Some(h) = g.history.get(room) else {
            return Ok(before.is_none().then(|| (Vec::new(), false)));
        };
        let h = &h.msgs;
        let end = match before {
            None => h.len(),
            Some(id) => match h.iter().position(|(_, m)| m.id == id) {
                Some(i) => i,
                None => return Ok(None),
            },
        };
        let start = end.saturating_sub(limit);
        Ok(Some((h.range(start..end).map(|(_, m)| m.clone()).collect(), start > 0)))
    }

    async fn message(&self, room: &str, id: &str) -> StoreResult<Option<Message>> {
        let g = self.lock();
        Ok(g.history.get(room).and_then(|h| h.msgs.iter().find(|(_, m)| m.id == id).map(|(_, m)| m.clone())))
    }

    async fn edit(&self, room: &str, id: &str, edit: Edit) -> StoreResult<Option<Message>> {
        let mut g = self.lock();
        let g = &mut *g;
        let Some(h) = g.history.get_mut(room) else { return Ok(None) };
        let Some((seq, m)) = h.msgs.iter_mut().find(|(_, m)| m.id == id && !m.deleted) else {
            return Ok(None);
        };
        let seq = *seq;
        let before = message_cost(m);
        m.apply(&edit);
        let after = message_cost(m);
        h.bytes = (h.bytes + after).saturating_sub(before);
        let edited = m.clone();
        g.history_bytes = (g.history_bytes + after).saturating_sub(before);
        g.reweigh(&edited.user_id, after, before);
        g.enforce(&self.limits, &edited.user_id, seq);
        Ok(Some(edited))
    }

    async fn claim(&self, owner: &str, key: &str, value: &str) -> StoreResult<Claim> {
        let mut g = self.lock();
        if let Some(v) = g.dedup.get(key) {
            return Ok(Claim::Seen(v.clone()));
        }
        g.dedup.insert_owned(owner, key.to_string(), value.to_string());
        Ok(Claim::New)
    }

    async fn release(&self, key: &str) -> StoreResult<()> {
        self.lock().dedup.map.remove(key);
        Ok(())
    }

    async fn lease(&self, key: &str, ms: u64) -> StoreResult<bool> {
        let now = Instant::now();
        let mut g = self.lock();
        g.leases.retain(|_, until| *until > now);
        if g.leases.contains_key(key) {
            return Ok(false);
        }
        g.leases.insert(key.to_string(), now + Duration::from_millis(ms));
        Ok(true)
    }

    async fn unlease(&self, key: &str) -> StoreResult<()> {
        self.lock().leases.remove(key);
        Ok(())
    }

    async fn resync(&self) -> StoreResult<Vec<String>> {
        // One node, one process: the counts never leave it.
        Ok(Vec::new())
    }

    async fn socket_up(&self, user: &User, _sid: &str, cap: usize) -> StoreResult<Option<bool>> {
        let mut g = self.lock();
        let e = g.presence.entry(user.user_id.clone()).or_default();
        if e.sockets >= cap as u64 {
            return Ok(None);
        }
        e.sockets += 1;
        e.last_seen = Some(rtg_model::clock::unix_now_ms());
        e.departed.clear();
        let was_offline = matches!(e.status.as_deref(), None | Some("offline"));
        if was_offline {
            e.status = Some("online".into());
        }
        Ok(Some(was_offline))
    }

    async fn socket_down(&self, user_id: &str, _sid: &str, rooms: &[String], grace_ms: u64) -> StoreResult<u64> {
        let mut g = self.lock();
        let Some(e) = g.presence.get_mut(user_id) else {
            return Ok(0);
        };
        e.sockets = e.sockets.saturating_sub(1);
        let now = rtg_model::clock::unix_now_ms();
        e.last_seen = Some(now);
        for r in rooms {
            if e.departed.len() >= self.limits.departed_rooms_per_user {
                break;
            }
            e.departed.insert(r.clone());
        }
        let left = e.sockets;
        if left == 0 {
            g.offline_due.insert((now + grace_ms, user_id.to_string()));
        }
        Ok(left)
    }

    async fn sockets_of(&self, user_id: &str) -> StoreResult<u64> {
        Ok(self.lock().presence.get(user_id).map_or(0, |e| e.sockets))
    }

    async fn socket_users(&self, sids: &[String]) -> StoreResult<Vec<Option<User>>> {
        // A single node: every socket is local, and callers read its session instead.
        Ok(vec![None; sids.len()])
    }

    async fn set_status(&self, user_id: &str, status: &str, now: u64) -> StoreResult<()> {
        let mut g = self.lock();
        let e = g.presence.entry(user_id.to_string()).or_default();
        e.status = Some(status.to_string());
        e.last_seen = Some(now);
        Ok(())
    }

    async fn schedule_offline_check(&self, user_id: &str, grace_ms: u64) -> StoreResult<()> {
        let due = rtg_model::clock::unix_now_ms() + grace_ms;
        self.lock().offline_due.insert((due, user_id.to_string()));
        Ok(())
    }

    async fn due_offline_checks(&self) -> StoreResult<Vec<String>> {
        let now = rtg_model::clock::unix_now_ms();
        let mut g = self.lock();
        let rest = g.offline_due.split_off(&(now + 1, String::new()));
        let due = std::mem::replace(&mut g.offline_due, rest);
        Ok(due.into_iter().map(|(_, u)| u).collect())
    }

    async fn mark_offline_if_idle(&self, user_id: &str, grace_ms: u64) -> StoreResult<Option<Vec<String>>> {
        let now = rtg_model::clock::unix_now_ms();
        let mut g = self.lock();
        let Some(e) = g.presence.get_mut(user_id) else {
            return Ok(None);
        };
        if e.sockets > 0 || e.status.as_deref() == Some("offline") {
            return Ok(None);
        }
        if now + GRACE_TOLERANCE_MS < e.last_seen.unwrap_or(0) + grace_ms {
            return Ok(None); // a later disconnect: its own check will decide
        }
        e.status = Some("offline".into());
        e.last_seen = Some(now);
        Ok(Some(std::mem::take(&mut e.departed).into_iter().collect()))
    }

    async fn presence(&self, user_ids: &[String]) -> StoreResult<Vec<Presence>> {
        let g = self.lock();
        Ok(user_ids
            .iter()
            .map(|u| match g.presence.get(u) {
                Some(e) => {
                    Presence { status: e.status.clone().unwrap_or_else(|| "offline".into()), last_seen: e.last_seen }
                }
                None => Presence { status: "offline".into(), last_seen: None },
            })
            .collect())
    }

    async fn enqueue_if_offline(&self, msg: &PrivateMessage) -> StoreResult<Enqueued> {
        let mut g = self.lock();
        if g.presence.get(&msg.to_user_id).is_some_and(|e| e.sockets > 0) {
            return Ok(Enqueued::Online);
        }
        let held = g.senders.get(&msg.from_user_id).copied().unwrap_or(0);
        if held + queued_cost(msg) > self.limits.queued_bytes_per_sender {
            return Ok(Enqueued::SenderFull);
        }
        self.push(&mut g, msg);
        Ok(Enqueued::Queued)
    }

    async fn enqueue(&self, msg: &PrivateMessage) -> StoreResult<()> {
        let mut g = self.lock();
        self.push(&mut g, msg);
        Ok(())
    }

    async fn peek_queue(&self, user_id: &str) -> StoreResult<Vec<PrivateMessage>> {
        let now = Instant::now();
        let g = self.lock();
        Ok(g.queues
            .get(user_id)
            .map(|q| q.msgs.iter().filter(|(_, exp)| *exp > now).map(|(m, _)| m.clone()).collect())
            .unwrap_or_default())
    }

    async fn ack_queue(&self, user_id: &str, msgs: &[PrivateMessage]) -> StoreResult<()> {
        let mut g = self.lock();
        let Inner { queues, senders, .. } = &mut *g;
        let Some(q) = queues.get_mut(user_id) else { return Ok(()) };
        let ids: HashSet<&str> = msgs.iter().map(|m| m.id.as_str()).collect();
        q.msgs.retain(|(m, _)| {
            let gone = ids.contains(m.id.as_str());
            if gone {
                release(senders, m);
            }
            !gone
        });
        q.bytes = q.msgs.iter().map(|(m, _)| queued_cost(m)).sum();
        if q.msgs.is_empty() {
            queues.remove(user_id);
        }
        Ok(())
    }

    async fn remember_receipt(&self, id: &str, from: &str, to: &str) -> StoreResult<()> {
        self.lock().receipts.insert_owned(from, id.to_string(), (from.to_string(), to.to_string()));
        Ok(())
    }

    async fn receipts(&self, ids: &[String]) -> StoreResult<Vec<Option<(String, String)>>> {
        let mut g = self.lock();
        Ok(ids.iter().map(|id| g.receipts.get(id).cloned()).collect())
    }

    async fn put_call(&self, call: &Call, cap: usize) -> StoreResult<bool> {
        let mut g = self.lock();
        if g.calls.values().filter(|c| c.counts_against(&call.caller)).count() >= cap {
            return Ok(false);
        }
        g.calls.insert(call.id.clone(), call.clone());
        Ok(true)
    }

    async fn call(&self, id: &str) -> StoreResult<Option<Call>> {
        Ok(self.lock().calls.get(id).cloned())
    }

    async fn remove_call(&self, id: &str) -> StoreResult<Option<Call>> {
        Ok(self.lock().calls.remove(id))
    }

    async fn answer_call(&self, id: &str, callee_sid: &str, node: &str, cap: usize) -> StoreResult<Answered> {
        let mut g = self.lock();
        let Some(callee) = g.calls.get(id).filter(|c| c.state == CallState::Ringing).map(|c| c.callee.clone()) else {
            return Ok(Answered::NotRinging);
        };
        if g.calls.values().filter(|c| c.counts_against(&callee)).count() >= cap {
            return Ok(Answered::AtCap);
        }
        let Some(c) = g.calls.get_mut(id) else { return Ok(Answered::NotRinging) };
        c.state = CallState::Active;
        c.callee_sid = Some(callee_sid.to_string());
        c.callee_node = Some(node.to_string());
        Ok(Answered::Yes(Box::new(c.clone())))
    }

    async fn remove_ringing_call(&self, id: &str) -> StoreResult<Option<Call>> {
        let mut g = self.lock();
        if g.calls.get(id).is_some_and(|c| c.state == CallState::Ringing) {
            return Ok(g.calls.remove(id));
        }
        Ok(None)
    }

    async fn calls_of(&self, user_id: &str) -> StoreResult<Vec<Call>> {
        let g = self.lock();
        Ok(g.calls.values().filter(|c| c.caller == user_id || c.callee == user_id).cloned().collect())
    }

    async fn purge(&self) {
        self.purge_at(Instant::now());
    }
}

impl MemoryStore {
    /// Appends to the target's queue, dropping expired and then the oldest messages past the caps.
    fn push(&self, g: &mut Inner, msg: &PrivateMessage) {
        let now = Instant::now();
        let Inner { queues, senders, .. } = g;
        let q = queues.entry(msg.to_user_id.clone()).or_default();
        q.drop_expired(now, senders);
        q.msgs.push_back((msg.clone(), now + Duration::from_secs(self.limits.queue_ttl_secs)));
        q.bytes += queued_cost(msg);
        *senders.entry(msg.from_user_id.clone()).or_default() += queued_cost(msg);
        while q.msgs.len() > 1
            && (q.msgs.len() > self.limits.queue_per_user || q.bytes > self.limits.queue_bytes_per_user)
        {
            q.pop_front(senders);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> User {
        User { user_id: id.into(), email: None, name: None, role: "user".into() }
    }

    fn msg(room: &str, id: &str) -> Message {
        Message {
            id: id.into(),
            room_id: room.into(),
            user_id: "a".into(),
            user: user("a"),
            content: format!("c{id}"),
            kind: "text".into(),
            reply_to: None,
            timestamp: 1,
            edited: false,
            deleted: false,
            file: None,
        }
    }

    fn pm(id: &str, to: &str, content: &str) -> PrivateMessage {
        PrivateMessage {
            id: id.into(),
            from_user_id: "b".into(),
            from_user: user("b"),
            to_user_id: to.into(),
            content: content.into(),
            timestamp: 1,
            read: false,
            file: None,
        }
    }

    fn room(id: &str, by: &str) -> Room {
        Room {
            id: id.into(),
            name: "x".into(),
            kind: "group".into(),
            members: vec![by.into(), "b".into()],
            created_by: by.into(),
            created_at: 1,
        }
    }

    fn store() -> MemoryStore {
        MemoryStore::new(Limits { history_per_room: 5, queue_per_user: 3, ..Limits::default() })
    }

    #[tokio::test]
    async fn history_is_bounded_and_paginates() {
        let s = store();
        for i in 0..8 {
            s.append(&msg("r", &i.to_string())).await.unwrap();
        }
        let (all, more) = s.history("r", None, 50).await.unwrap().unwrap();
        assert_eq!(all.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["3", "4", "5", "6", "7"]);
        assert!(!more);
        let (page, more) = s.history("r", Some("6"), 2).await.unwrap().unwrap();
        assert_eq!(page.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["4", "5"]);
        assert!(more);
        assert!(s.history("r", Some("0"), 2).await.unwrap().is_none(), "trimmed id is unknown");
        assert!(s.history("empty", Some("x"), 2).await.unwrap().is_none());
        assert_eq!(s.history("empty", None, 2).await.unwrap().unwrap().0.len(), 0);
    }

    /// A message of `len` bytes of content by `author`.
    fn by(author: &str, room: &str, id: &str, len: usize) -> Message {
        let mut m = msg(room, id);
        m.user_id = author.into();
        m.user = user(author);
        m.content = "x".repeat(len);
        m
    }

    fn ids(s: &MemoryStore, room: &str) -> Vec<String> {
        s.lock().history.get(room).map(|h| h.msgs.iter().map(|(_, m)| m.id.clone()).collect()).unwrap_or_default()
    }

    #[tokio::test]
    async fn history_is_bounded_by_bytes_per_room_and_in_total() {
        let s = MemoryStore::new(Limits {
            history_bytes_per_room: 3 * (1000 + 256),
            history_bytes_total: 5 * (1000 + 256),
            ..Limits::default()
        });
        for i in 0..6 {
            s.append(&by("a", "big", &i.to_string(), 1000)).await.unwrap();
        }
        assert_eq!(ids(&s, "big"), ["3", "4", "5"], "newest kept");
        // Over the total, the oldest messages of whoever holds the most go first: here "a", though
        // "b" wrote least recently.
        s.append(&by("b", "quiet", "q", 1000)).await.unwrap();
        for i in 0..2 {
            s.append(&by("a", "r2", &i.to_string(), 1000)).await.unwrap();
        }
        assert_eq!(ids(&s, "quiet"), ["q"], "the lighter author keeps theirs");
        assert_eq!(ids(&s, "big"), ["4", "5"]);
        assert_eq!(ids(&s, "r2"), ["0", "1"]);
        let g = s.lock();
        assert!(g.history_bytes <= 5 * (1000 + 256));
        assert_eq!(g.history_bytes, g.authors.values().map(|a| a.bytes).sum::<usize>(), "shares add up");
    }

    #[tokio::test]
    async fn one_users_writes_displace_only_their_own_history() {
        let budget = 10 * (1000 + 256);
        let s = MemoryStore::new(Limits {
            history_bytes_per_user: budget,
            history_bytes_total: 40 * (1000 + 256),
            ..Limits::default()
        });
        s.create_room(room("grp:v", "v")).await.unwrap();
        for i in 0..3 {
            s.append(&by("v", "grp:v", &format!("v{i}"), 1000)).await.unwrap();
            s.append(&by("v", "open", &format!("o{i}"), 1000)).await.unwrap();
        }
        // The attacker writes in the victim's open room too, then fills 100 rooms of their own.
        s.append(&by("x", "open", "x-open", 1000)).await.unwrap();
        for r in 0..100 {
            for i in 0..2 {
                s.append(&by("x", &format!("flood{r}"), &format!("{r}.{i}"), 1000)).await.unwrap();
            }
        }
        assert_eq!(ids(&s, "grp:v"), ["v0", "v1", "v2"], "the victim's created room is intact");
        assert_eq!(ids(&s, "open"), ["o0", "o1", "o2"], "the victim's messages in a shared room stay");
        assert!(s.room("grp:v").await.unwrap().is_some());
        assert!(ids(&s, "flood0").is_empty(), "the attacker's oldest go first");
        assert!(!s.lock().history.contains_key("flood0"), "an emptied room is forgotten");
        assert_eq!(ids(&s, "flood99"), ["99.0", "99.1"], "the attacker's newest stay");
        let g = s.lock();
        assert!(g.authors["x"].bytes <= budget);
        assert_eq!(g.authors["x"].msgs.len(), 10);
        assert_eq!(g.authors["v"].bytes, 6 * (1000 + 256));
    }

    #[tokio::test]
    async fn edits_count_against_the_authors_budget() {
        let s = MemoryStore::new(Limits { history_bytes_per_user: 3 * (1000 + 256), ..Limits::default() });
        for i in 0..3 {
            s.append(&by("a", "r", &i.to_string(), 10)).await.unwrap();
        }
        s.append(&by("b", "r", "b", 10)).await.unwrap();
        // Growing the newest message past the budget drops the author's oldest, never the edited one.
        s.edit("r", "2", Edit::Content("y".repeat(3000))).await.unwrap().unwrap();
        assert_eq!(ids(&s, "r"), ["1", "2", "b"]);
        s.edit("r", "1", Edit::Content("y".repeat(3000))).await.unwrap().unwrap();
        assert_eq!(ids(&s, "r"), ["1", "b"], "the older message edited: the other one goes");
        let g = s.lock();
        assert_eq!(g.authors["a"].bytes, 3000 + 256);
        assert_eq!(g.authors["a"].msgs.len(), 1);
        assert_eq!(g.history_bytes, 3000 + 256 + 10 + 256);
    }

    fn call(id: &str, caller: &str, callee: &str) -> Call {
        Call {
            id: id.into(),
            caller: caller.into(),
            callee: callee.into(),
            caller_sid: "s".into(),
            caller_node: "n".into(),
            callee_sid: None,
            callee_node: None,
            call_type: "audio".into(),
            state: CallState::Ringing,
            created_at: 1,
        }
    }

    #[tokio::test]
    async fn ringing_calls_count_against_their_caller_only() {
        let s = store();
        for i in 0..2 {
            assert!(s.put_call(&call(&format!("x{i}"), "x", "v"), 2).await.unwrap());
        }
        assert!(!s.put_call(&call("x2", "x", "w"), 2).await.unwrap(), "the caller is at the cap");
        assert!(s.put_call(&call("f", "f", "v"), 2).await.unwrap(), "a fresh call to the victim rings");
        assert!(s.put_call(&call("v1", "v", "w"), 2).await.unwrap(), "the victim may call");
        // Answered calls count for both parties: the victim (one call placed) may answer one more.
        assert!(matches!(s.answer_call("f", "sv", "n", 2).await.unwrap(), Answered::Yes(_)));
        assert_eq!(s.answer_call("x0", "sv", "n", 2).await.unwrap(), Answered::AtCap);
        assert_eq!(s.answer_call("f", "sv", "n", 2).await.unwrap(), Answered::NotRinging);
        assert!(!s.put_call(&call("v2", "v", "w"), 2).await.unwrap(), "the victim is at their own cap");
        s.remove_call("v1").await.unwrap();
        assert!(matches!(s.answer_call("x0", "sv", "n", 2).await.unwrap(), Answered::Yes(_)));
    }

    #[tokio::test]
    async fn idle_rooms_and_expired_queues_are_purged() {
        let s = MemoryStore::new(Limits { room_idle_ttl_secs: 60, queue_ttl_secs: 60, ..Limits::default() });
        s.append(&msg("r", "1")).await.unwrap();
        s.create_room(room("grp:1", "a")).await.unwrap();
        s.enqueue(&pm("p1", "nobody", "hi")).await.unwrap();
        s.purge_at(Instant::now());
        assert_eq!(s.history("r", None, 10).await.unwrap().unwrap().0.len(), 1, "fresh history stays");
        assert_eq!(s.lock().queues.len(), 1);
        s.purge_at(Instant::now() + Duration::from_secs(61));
        assert!(s.history("r", None, 10).await.unwrap().unwrap().0.is_empty(), "idle history forgotten");
        assert!(s.room("grp:1").await.unwrap().is_none(), "idle created room forgotten");
        assert!(s.rooms_of("b").await.unwrap().is_empty());
        assert!(s.lock().queues.is_empty(), "a queue nobody collects is purged");
        assert!(s.lock().created_by.is_empty(), "the creator's count is given back");
    }

    #[tokio::test]
    async fn created_rooms_per_user_are_capped() {
        let s = MemoryStore::new(Limits { created_rooms_per_user: 2, ..Limits::default() });
        assert!(s.create_room(room("grp:1", "a")).await.unwrap().is_some());
        assert!(s.create_room(room("grp:2", "a")).await.unwrap().is_some());
        assert!(s.create_room(room("grp:3", "a")).await.unwrap().is_none(), "third refused");
        assert!(s.create_room(room("grp:1", "a")).await.unwrap().is_some(), "an existing room is still found");
        assert!(s.create_room(room("grp:4", "c")).await.unwrap().is_some(), "others are not affected");
    }

    #[tokio::test]
    async fn edits_and_deletes() {
        let s = store();
        s.append(&msg("r", "1")).await.unwrap();
        let m = s.edit("r", "1", Edit::Content("new".into())).await.unwrap().unwrap();
        assert!(m.edited && m.content == "new");
        let m = s.edit("r", "1", Edit::Delete).await.unwrap().unwrap();
        assert!(m.deleted && m.content.is_empty());
        assert!(s.edit("r", "1", Edit::Content("again".into())).await.unwrap().is_none());
        assert!(s.message("r", "1").await.unwrap().unwrap().deleted, "history keeps it");
    }

    #[tokio::test]
    async fn dedup_and_rooms() {
        let s = store();
        assert_eq!(s.claim("u", "k", "v1").await.unwrap(), Claim::New);
        assert_eq!(s.claim("u", "k", "v2").await.unwrap(), Claim::Seen("v1".into()));
        let r = room("dm", "a");
        s.create_room(r.clone()).await.unwrap();
        let mut other = r.clone();
        other.name = "y".into();
        assert_eq!(s.create_room(other).await.unwrap().unwrap().name, "x", "existing room wins");
        assert_eq!(s.rooms_of("b").await.unwrap().len(), 1);
        assert!(s.rooms_of("c").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn presence_cap_grace_and_departed_rooms() {
        let s = store();
        assert_eq!(s.socket_up(&user("a"), "s1", 2).await.unwrap(), Some(true));
        assert_eq!(s.socket_up(&user("a"), "s2", 2).await.unwrap(), Some(false));
        assert_eq!(s.socket_up(&user("a"), "s3", 2).await.unwrap(), None, "at the cap");
        assert_eq!(s.socket_down("a", "s1", &["r1".into()], 0).await.unwrap(), 1);
        assert!(s.mark_offline_if_idle("a", 0).await.unwrap().is_none(), "a socket is left");
        assert_eq!(s.socket_down("a", "s2", &["r2".into()], 10_000).await.unwrap(), 0);
        assert!(s.due_offline_checks().await.unwrap().is_empty(), "not due yet");
        assert!(s.mark_offline_if_idle("a", 10_000).await.unwrap().is_none(), "still in the grace");
        s.schedule_offline_check("a", 0).await.unwrap();
        assert_eq!(s.due_offline_checks().await.unwrap(), ["a"]);
        assert!(s.due_offline_checks().await.unwrap().is_empty(), "claimed once");
        let mut rooms = s.mark_offline_if_idle("a", 0).await.unwrap().expect("offline now");
        rooms.sort();
        assert_eq!(rooms, ["r1", "r2"], "the rooms of every socket that left");
        assert_eq!(s.presence(&["a".into(), "z".into()]).await.unwrap()[0].status, "offline");
        assert_eq!(s.socket_up(&user("a"), "s3", 2).await.unwrap(), Some(true), "back online");
    }

    #[tokio::test]
    async fn departed_rooms_are_capped_per_user() {
        let s = MemoryStore::new(Limits { departed_rooms_per_user: 2, ..Limits::default() });
        assert!(s.socket_up(&user("a"), "s1", 5).await.unwrap().is_some());
        let rooms: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
        assert_eq!(s.socket_down("a", "s1", &rooms, 0).await.unwrap(), 0);
        assert_eq!(s.mark_offline_if_idle("a", 0).await.unwrap().expect("offline").len(), 2);
    }

    #[tokio::test]
    async fn leases_exclude_and_expire() {
        let s = store();
        assert!(s.lease("k", 60_000).await.unwrap());
        assert!(!s.lease("k", 60_000).await.unwrap(), "held");
        s.unlease("k").await.unwrap();
        assert!(s.lease("k", 0).await.unwrap(), "given back");
        assert!(s.lease("k", 60_000).await.unwrap(), "an expired lease is free");
    }

    #[tokio::test]
    async fn queue_is_capped_and_acked() {
        let s = store();
        assert!(s.socket_up(&user("on"), "s", 5).await.unwrap().is_some());
        assert_eq!(s.enqueue_if_offline(&pm("x", "on", "x")).await.unwrap(), Enqueued::Online, "online: not queued");
        for i in 0..5 {
            assert_eq!(s.enqueue_if_offline(&pm(&i.to_string(), "a", "x")).await.unwrap(), Enqueued::Queued);
        }
        let q = s.peek_queue("a").await.unwrap();
        assert_eq!(q.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["2", "3", "4"], "capped, oldest dropped");
        assert_eq!(s.peek_queue("a").await.unwrap().len(), 3, "peeking leaves it");
        s.enqueue(&pm("5", "a", "x")).await.unwrap();
        s.ack_queue("a", &q).await.unwrap();
        let rest = s.peek_queue("a").await.unwrap();
        assert_eq!(rest.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["5"], "only the handed ones go");

        let s = MemoryStore::new(Limits { queue_bytes_per_user: 2 * (1000 + 256), ..Limits::default() });
        for i in 0..4 {
            s.enqueue(&pm(&i.to_string(), "a", &"z".repeat(1000))).await.unwrap();
        }
        assert_eq!(s.peek_queue("a").await.unwrap().len(), 2, "bytes cap");
    }

    #[tokio::test]
    async fn queued_bytes_are_bounded_per_sender_and_released() {
        let cost = 1000 + 256;
        let s = MemoryStore::new(Limits { queued_bytes_per_sender: 3 * cost, queue_ttl_secs: 60, ..Limits::default() });
        let body = "z".repeat(1000);
        for (i, to) in ["u1", "u2", "u3"].iter().enumerate() {
            assert_eq!(s.enqueue_if_offline(&pm(&i.to_string(), to, &body)).await.unwrap(), Enqueued::Queued);
        }
        assert_eq!(
            s.enqueue_if_offline(&pm("3", "u4", &body)).await.unwrap(),
            Enqueued::SenderFull,
            "over all targets"
        );
        assert!(s.peek_queue("u4").await.unwrap().is_empty());
        let mut other = pm("4", "u4", &body);
        other.from_user_id = "c".into();
        assert_eq!(s.enqueue_if_offline(&other).await.unwrap(), Enqueued::Queued, "another sender is unaffected");
        // Handed over: released.
        let q = s.peek_queue("u1").await.unwrap();
        s.ack_queue("u1", &q).await.unwrap();
        assert_eq!(s.enqueue_if_offline(&pm("5", "u5", &body)).await.unwrap(), Enqueued::Queued);
        assert_eq!(s.enqueue_if_offline(&pm("6", "u6", &body)).await.unwrap(), Enqueued::SenderFull);
        // Expired: released.
        s.purge_at(Instant::now() + Duration::from_secs(61));
        assert!(s.lock().senders.is_empty());
        assert_eq!(s.enqueue_if_offline(&pm("7", "u7", &body)).await.unwrap(), Enqueued::Queued);
    }

    #[tokio::test]
    async fn presence_of_users_gone_for_a_week_is_forgotten() {
        let s = store();
        for u in ["gone", "here"] {
            assert!(s.socket_up(&user(u), "s", 5).await.unwrap().is_some());
        }
        s.socket_down("gone", "s", &[], 0).await.unwrap();
        assert!(s.mark_offline_if_idle("gone", 0).await.unwrap().is_some());
        s.purge_at(Instant::now());
        assert_eq!(s.lock().presence.len(), 2, "seen recently: kept");
        s.purge_at(Instant::now() + PRESENCE_KEEP + Duration::from_secs(60));
        assert!(!s.lock().presence.contains_key("gone"), "offline for a week: forgotten");
        assert!(s.lock().presence.contains_key("here"), "a connected user stays");
        assert_eq!(s.presence(&["gone".into()]).await.unwrap()[0].status, "offline");
    }

    #[tokio::test]
    async fn receipts_and_dedup_keys_are_bounded_per_sender() {
        let s = MemoryStore::new(Limits { keys_per_sender: 3, ..Limits::default() });
        for i in 0..5 {
            s.remember_receipt(&format!("m{i}"), "b", "a").await.unwrap();
            assert_eq!(s.claim("b", &format!("k{i}"), "v").await.unwrap(), Claim::New);
        }
        s.remember_receipt("other", "c", "a").await.unwrap();
        let ids: Vec<String> = ["m0", "m1", "m2", "m4", "other"].iter().map(|x| x.to_string()).collect();
        let known: Vec<bool> = s.receipts(&ids).await.unwrap().iter().map(Option::is_some).collect();
        assert_eq!(known, [false, false, true, true, true], "the sender's oldest forgotten, another sender's kept");
        assert_eq!(s.claim("b", "k0", "v").await.unwrap(), Claim::New, "the oldest key forgotten");
        assert_eq!(s.claim("b", "k4", "v").await.unwrap(), Claim::Seen("v".into()));
        assert_eq!(s.lock().receipts.map.len(), 4);
        assert!(s.lock().dedup.map.len() <= 3);
    }
}
