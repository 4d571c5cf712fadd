//! The single-node store: plain maps behind one mutex, held only for short, await-free sections.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::*;

#[derive(Default)]
struct PresenceEntry {
    sockets: u64,
    status: Option<String>,
    last_seen: Option<u64>,
}

/// Keys that expire after a fixed TTL, oldest first, so purging is popping the front.
struct Expiring<V> {
    map: HashMap<String, (V, Instant)>,
    order: VecDeque<(Instant, String)>,
    ttl: Duration,
}

impl<V> Expiring<V> {
    fn new(ttl_secs: u64) -> Self {
        Self { map: HashMap::new(), order: VecDeque::new(), ttl: Duration::from_secs(ttl_secs) }
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

struct Inner {
    rooms: HashMap<String, Room>,
    rooms_by_user: HashMap<String, Vec<String>>,
    history: HashMap<String, VecDeque<Message>>,
    dedup: Expiring<String>,
    presence: HashMap<String, PresenceEntry>,
    queues: HashMap<String, VecDeque<(PrivateMessage, Instant)>>,
    receipts: Expiring<(String, String)>,
    calls: HashMap<String, Call>,
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
                history: HashMap::new(),
                dedup: Expiring::new(limits.dedup_ttl_secs),
                presence: HashMap::new(),
                queues: HashMap::new(),
                receipts: Expiring::new(limits.receipt_ttl_secs),
                calls: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_room(&self, room: Room) -> StoreResult<Room> {
        let mut g = self.lock();
        if let Some(existing) = g.rooms.get(&room.id) {
            return Ok(existing.clone());
        }
        for m in &room.members {
            g.rooms_by_user.entry(m.clone()).or_default().push(room.id.clone());
        }
        g.rooms.insert(room.id.clone(), room.clone());
        Ok(room)
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
        let h = g.history.entry(msg.room_id.clone()).or_default();
        h.push_back(msg.clone());
        while h.len() > self.limits.history_per_room {
            h.pop_front();
        }
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
        let end = match before {
            None => h.len(),
            Some(id) => match h.iter().position(|m| m.id == id) {
                Some(i) => i,
                None => return Ok(None),
            },
        };
        let start = end.saturating_sub(limit);
        Ok(Some((h.range(start..end).cloned().collect(), start > 0)))
    }

    async fn message(&self, room: &str, id: &str) -> StoreResult<Option<Message>> {
        let g = self.lock();
        Ok(g.history.get(room).and_then(|h| h.iter().find(|m| m.id == id).cloned()))
    }

    async fn edit(&self, room: &str, id: &str, edit: Edit) -> StoreResult<Option<Message>> {
        let mut g = self.lock();
        let Some(m) = g.history.get_mut(room).and_then(|h| h.iter_mut().find(|m| m.id == id && !m.deleted)) else {
            return Ok(None);
        };
        m.apply(&edit);
        Ok(Some(m.clone()))
    }

    async fn claim(&self, key: &str, value: &str) -> StoreResult<Claim> {
        let mut g = self.lock();
        if let Some(v) = g.dedup.get(key) {
            return Ok(Claim::Seen(v.clone()));
        }
        g.dedup.insert(key.to_string(), value.to_string());
        Ok(Claim::New)
    }

    async fn release(&self, key: &str) -> StoreResult<()> {
        self.lock().dedup.map.remove(key);
        Ok(())
    }

    async fn resync(&self, _local: &[(User, u64)]) -> StoreResult<Vec<String>> {
        // One node, one process: the counts never leave it.
        Ok(Vec::new())
    }

    async fn socket_up(&self, user: &User, _sid: &str) -> StoreResult<bool> {
        let mut g = self.lock();
        let e = g.presence.entry(user.user_id.clone()).or_default();
        e.sockets += 1;
        e.last_seen = Some(crate::auth::unix_now_ms());
        let was_offline = matches!(e.status.as_deref(), None | Some("offline"));
        if was_offline {
            e.status = Some("online".into());
        }
        Ok(was_offline)
    }

    async fn socket_down(&self, user_id: &str, _sid: &str) -> StoreResult<u64> {
        let mut g = self.lock();
        let Some(e) = g.presence.get_mut(user_id) else {
            return Ok(0);
        };
        e.sockets = e.sockets.saturating_sub(1);
        e.last_seen = Some(crate::auth::unix_now_ms());
        Ok(e.sockets)
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

    async fn mark_offline_if_idle(&self, user_id: &str, now: u64, grace_ms: u64) -> StoreResult<bool> {
        let mut g = self.lock();
        let Some(e) = g.presence.get_mut(user_id) else {
            return Ok(false);
        };
        if e.sockets > 0 || e.status.as_deref() == Some("offline") {
            return Ok(false);
        }
        if now + GRACE_TOLERANCE_MS < e.last_seen.unwrap_or(0) + grace_ms {
            return Ok(false); // a later disconnect: its own check will decide
        }
        e.status = Some("offline".into());
        e.last_seen = Some(now);
        Ok(true)
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

    async fn enqueue(&self, msg: &PrivateMessage) -> StoreResult<()> {
        let mut g = self.lock();
        let now = Instant::now();
        let q = g.queues.entry(msg.to_user_id.clone()).or_default();
        while q.front().is_some_and(|(_, exp)| *exp <= now) {
            q.pop_front();
        }
        q.push_back((msg.clone(), now + Duration::from_secs(self.limits.queue_ttl_secs)));
        while q.len() > self.limits.queue_per_user {
            q.pop_front();
        }
        Ok(())
    }

    async fn take_queue(&self, user_id: &str) -> StoreResult<Vec<PrivateMessage>> {
        let now = Instant::now();
        let q = self.lock().queues.remove(user_id).unwrap_or_default();
        Ok(q.into_iter().filter(|(_, exp)| *exp > now).map(|(m, _)| m).collect())
    }

    async fn restore_queue(&self, user_id: &str, msgs: Vec<PrivateMessage>) -> StoreResult<()> {
        let mut g = self.lock();
        let exp = Instant::now() + Duration::from_secs(self.limits.queue_ttl_secs);
        let q = g.queues.entry(user_id.to_string()).or_default();
        // The restored messages are older than anything queued meanwhile: they go first.
        for m in msgs.into_iter().rev() {
            q.push_front((m, exp));
        }
        while q.len() > self.limits.queue_per_user {
            q.pop_front();
        }
        Ok(())
    }

    async fn remember_receipt(&self, id: &str, from: &str, to: &str) -> StoreResult<()> {
        self.lock().receipts.insert(id.to_string(), (from.to_string(), to.to_string()));
        Ok(())
    }

    async fn receipts(&self, ids: &[String]) -> StoreResult<Vec<Option<(String, String)>>> {
        let mut g = self.lock();
        Ok(ids.iter().map(|id| g.receipts.get(id).cloned()).collect())
    }

    async fn put_call(&self, call: &Call) -> StoreResult<()> {
        self.lock().calls.insert(call.id.clone(), call.clone());
        Ok(())
    }

    async fn call(&self, id: &str) -> StoreResult<Option<Call>> {
        Ok(self.lock().calls.get(id).cloned())
    }

    async fn remove_call(&self, id: &str) -> StoreResult<Option<Call>> {
        Ok(self.lock().calls.remove(id))
    }

    async fn answer_call(&self, id: &str, callee_sid: &str, node: &str) -> StoreResult<Option<Call>> {
        let mut g = self.lock();
        match g.calls.get_mut(id) {
            Some(c) if c.state == CallState::Ringing => {
                c.state = CallState::Active;
                c.callee_sid = Some(callee_sid.to_string());
                c.callee_node = Some(node.to_string());
                Ok(Some(c.clone()))
            }
            _ => Ok(None),
        }
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
        assert_eq!(s.claim("k", "v1").await.unwrap(), Claim::New);
        assert_eq!(s.claim("k", "v2").await.unwrap(), Claim::Seen("v1".into()));
        let room = Room {
            id: "dm".into(),
            name: "x".into(),
            kind: "direct".into(),
            members: vec!["a".into(), "b".into()],
            created_by: "a".into(),
            created_at: 1,
        };
        s.create_room(room.clone()).await.unwrap();
        let mut other = room.clone();
        other.name = "y".into();
        assert_eq!(s.create_room(other).await.unwrap().name, "x", "existing room wins");
        assert_eq!(s.rooms_of("b").await.unwrap().len(), 1);
        assert!(s.rooms_of("c").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn presence_and_queue() {
        let s = store();
        assert!(s.socket_up(&user("a"), "s1").await.unwrap());
        assert!(!s.socket_up(&user("a"), "s2").await.unwrap());
        assert_eq!(s.socket_down("a", "s1").await.unwrap(), 1);
        assert!(!s.mark_offline_if_idle("a", u64::MAX / 2, 0).await.unwrap(), "a socket is left");
        assert_eq!(s.socket_down("a", "s2").await.unwrap(), 0);
        let now = crate::auth::unix_now_ms();
        assert!(!s.mark_offline_if_idle("a", now, 10_000).await.unwrap(), "still in the grace");
        assert!(s.mark_offline_if_idle("a", now + 10_000, 10_000).await.unwrap());
        assert_eq!(s.presence(&["a".into(), "z".into()]).await.unwrap()[0].status, "offline");
        assert!(s.socket_up(&user("a"), "s3").await.unwrap(), "back online");

        for i in 0..5 {
            let pm = PrivateMessage {
                id: i.to_string(),
                from_user_id: "b".into(),
                from_user: user("b"),
                to_user_id: "a".into(),
                content: "x".into(),
                timestamp: i,
                read: false,
            };
            s.enqueue(&pm).await.unwrap();
        }
        let q = s.take_queue("a").await.unwrap();
        assert_eq!(q.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["2", "3", "4"], "capped, oldest dropped");
        assert!(s.take_queue("a").await.unwrap().is_empty());
        s.restore_queue("a", q).await.unwrap();
        assert_eq!(s.take_queue("a").await.unwrap().len(), 3);
    }
}
