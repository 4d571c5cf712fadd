//! The Redis store (`crates/storage/src/store/redis.rs`) against a real `redis-server`: its Lua scripts
//! and multi-key updates, each checked against the in-memory store (`store/memory.rs`), which is the
//! reference: one node and one cluster must behave alike (SPEC §4, §5, §6, §7).
//!
//! Most tests run one scenario on both stores, so the expectations hold for both and the two agree:
//! the offline queue (its cap per recipient and `MAX_QUEUED_BYTES_PER_SENDER`, released when a message
//! is handed over, evicted or expires), read receipts and de-duplication keys per sender, room history
//! (count cap, pagination, edits and deletes), each author's history budget, created rooms, calls.
//! Redis-only tests check what the memory store has no counterpart for: the byte counters the
//! scripts keep beside the data (`histbytes`, `ubytes`, `qbytes`, `sbytes`) must match what is
//! stored, and presence counts sockets cluster-wide on live nodes only. A property test runs random
//! sequences on both stores and compares every answer, then checks those counters.
//!
//! Byte caps: the memory store counts a message as its content plus 256 bytes
//! ([`message_cost`], [`queued_cost`]); the Redis scripts count the stored JSON for a room's history,
//! an author's budget and a recipient's queue (and `queued_cost` for a sender's share). Scenarios
//! that hit those caps therefore size them with [`cost`], the measure of the store at hand.
//!
//! Also here: the daily upload budget (`storage/files.rs`, a script beside the store), shared by the
//! nodes. `an_edit_of_the_authors_oldest_message_keeps_them_within_budget` fails today on the Redis
//! store: its `within_budget` script stops at the edited message instead of passing over it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::RedisServer;
use proptest::prelude::*;
use realtime_gateway::model::clock::unix_now_ms;
use realtime_gateway::model::config::Config;
use realtime_gateway::model::error::{ApiError, Code};
use realtime_gateway::model::user::User;
use realtime_gateway::storage::files::{Destination, Files, NewUpload};
use realtime_gateway::storage::redis_link::RedisLink;
use realtime_gateway::storage::store::memory::MemoryStore;
use realtime_gateway::storage::store::redis::RedisStore;
use realtime_gateway::storage::store::{
    message_cost, queued_cost, Answered, Call, CallState, Claim, Edit, Enqueued, Limits, Message, PrivateMessage, Room,
    Store,
};
use redis::AsyncCommands;

const NODE: &str = "n1";

fn user(id: &str) -> User {
    User { user_id: id.into(), email: None, name: None, role: "user".into() }
}

/// A room message of `len` bytes of content by `author`.
fn msg(room: &str, id: &str, author: &str, len: usize) -> Message {
    Message {
        id: id.into(),
        room_id: room.into(),
        user_id: author.into(),
        user: user(author),
        content: "x".repeat(len),
        kind: "text".into(),
        reply_to: None,
        timestamp: unix_now_ms(),
        edited: false,
        deleted: false,
        file: None,
    }
}

/// A private message of `len` bytes of content, sent now.
fn pm(id: &str, from: &str, to: &str, len: usize) -> PrivateMessage {
    PrivateMessage {
        id: id.into(),
        from_user_id: from.into(),
        from_user: user(from),
        to_user_id: to.into(),
        content: "z".repeat(len),
        timestamp: unix_now_ms(),
        read: false,
        file: None,
    }
}

fn ids<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|x| id(x).to_string()).collect()
}

async fn history_ids(s: &dyn Store, room: &str) -> Vec<String> {
    let (msgs, _) = s.history(room, None, 100).await.unwrap().unwrap_or_default();
    ids(&msgs, |m| &m.id)
}

/// What a room message counts against the room's and its author's byte caps in the store `name`.
fn cost(name: &str, m: &Message) -> usize {
    match name {
        "memory" => message_cost(m),
        _ => serde_json::to_string(m).unwrap().len(),
    }
}

/// Which store a scenario runs on, with what it needs to look inside the Redis one.
enum Kind {
    Memory,
    Redis { raw: redis::aio::MultiplexedConnection, prefix: String },
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Redis { .. } => "redis",
        }
    }

    fn cost(&self, m: &Message) -> usize {
        cost(self.name(), m)
    }

    /// A Redis key's integer value (`None` when the key does not exist); `None` for the memory store.
    async fn counter(&self, parts: &[&str]) -> Option<i64> {
        match self {
            Kind::Memory => None,
            Kind::Redis { raw, prefix } => {
                let key = format!("{prefix}:{}", parts.join(":"));
                raw.clone().get::<_, Option<i64>>(key).await.unwrap()
            }
        }
    }
}

/// The two stores with the same limits: the memory one, and a Redis one (under its own key prefix)
/// on a node whose liveness key is set, as the heartbeat keeps it.
async fn both(server: &RedisServer, prefix: &str, limits: Limits) -> Vec<(Box<dyn Store>, Kind)> {
    vec![
        (Box::new(MemoryStore::new(limits)) as Box<dyn Store>, Kind::Memory),
        redis_store(server, prefix, limits).await,
    ]
}

async fn redis_store(server: &RedisServer, prefix: &str, limits: Limits) -> (Box<dyn Store>, Kind) {
    let link = Arc::new(RedisLink::open(&server.url()).expect("link"));
    let raw = raw_conn(server).await;
    live(&raw, prefix, NODE).await;
    let store = RedisStore::new(link, prefix, NODE, limits);
    (Box::new(store), Kind::Redis { raw, prefix: prefix.to_string() })
}

async fn raw_conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(server.url()).expect("url");
    client.get_multiplexed_async_connection().await.expect("connection")
}

/// Sets a node's liveness key (what `cluster/liveness.rs` renews every second).
async fn live(raw: &redis::aio::MultiplexedConnection, prefix: &str, node: &str) {
    let _: () = raw.clone().pset_ex(format!("{prefix}:node:{node}"), 1, 600_000).await.unwrap();
}

/// Hands a user's whole queue over (what `pending-messages` does): peek, then ack what was peeked.
async fn drain(s: &dyn Store, to: &str) -> Vec<String> {
    let q = s.peek_queue(to).await.unwrap();
    s.ack_queue(to, &q).await.unwrap();
    ids(&q, |m| &m.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_caps_recipients_and_senders_and_releases_what_is_handed_over() {
    let server = RedisServer::start();
    let cost = queued_cost(&pm("m", "b", "u", 1000));
    let limits = Limits { queue_per_user: 2, queued_bytes_per_sender: 3 * cost, ..Limits::default() };
    for (s, kind) in both(&server, "q", limits).await {
        let s = &*s;
        let k = kind.name();
        let send = |id: &'static str, from: &'static str, to: &'static str| async move {
            s.enqueue_if_offline(&pm(id, from, to, 1000)).await.unwrap()
        };
        // A connected target: not queued, and nothing counted against the sender.
        assert!(s.socket_up(&user("on"), "s-on", 5).await.unwrap().is_some());
        assert_eq!(send("m0", "b", "on").await, Enqueued::Online, "{k}");
        assert!(s.peek_queue("on").await.unwrap().is_empty(), "{k}");

        // The sender's cap holds over all its targets together.
        for (id, to) in [("m1", "u1"), ("m2", "u1"), ("m3", "u2")] {
            assert_eq!(send(id, "b", to).await, Enqueued::Queued, "{k}: {id}");
        }
        assert_eq!(kind.counter(&["sbytes", "b"]).await.map_or(3 * cost, |v| v as usize), 3 * cost, "{k}");
        assert_eq!(send("m4", "b", "u3").await, Enqueued::SenderFull, "{k}: a fourth message, to anyone");
        assert!(s.peek_queue("u3").await.unwrap().is_empty(), "{k}: a refused message is not queued");
        assert_eq!(send("m5", "c", "u3").await, Enqueued::Queued, "{k}: another sender is unaffected");

        // The recipient's cap evicts its oldest message, which gives its sender's bytes back.
        assert_eq!(send("m6", "c", "u1").await, Enqueued::Queued, "{k}");
        assert_eq!(ids(&s.peek_queue("u1").await.unwrap(), |m| &m.id), ["m2", "m6"], "{k}: m1 evicted");
        assert_eq!(send("m7", "b", "u3").await, Enqueued::Queued, "{k}: m1's bytes were released");
        assert_eq!(send("m8", "b", "u4").await, Enqueued::SenderFull, "{k}");

        // Handed over: released.
        assert_eq!(drain(s, "u2").await, ["m3"], "{k}");
        assert!(s.peek_queue("u2").await.unwrap().is_empty(), "{k}: acked messages leave the queue");
        assert_eq!(send("m9", "b", "u4").await, Enqueued::Queued, "{k}: m3's bytes were released");
        assert_eq!(send("m10", "b", "u4").await, Enqueued::SenderFull, "{k}");

        // Everything handed over: nothing is left counted anywhere.
        assert_eq!(drain(s, "u1").await, ["m2", "m6"], "{k}");
        assert_eq!(drain(s, "u3").await, ["m5", "m7"], "{k}");
        assert_eq!(drain(s, "u4").await, ["m9"], "{k}");
        for parts in [["sbytes", "b"], ["sbytes", "c"], ["qbytes", "u1"], ["qbytes", "u3"], ["qbytes", "u4"]] {
            assert_eq!(kind.counter(&parts).await, None, "{k}: {parts:?} is gone once all was handed over");
        }

        // A message already accepted (its target left meanwhile) is queued even past the sender's cap,
        // and counts like the others.
        for (id, to) in [("n1", "u5"), ("n2", "u5"), ("n3", "u6")] {
            assert_eq!(send(id, "b", to).await, Enqueued::Queued, "{k}: {id}");
        }
        s.enqueue(&pm("n4", "b", "u7", 1000)).await.unwrap();
        assert_eq!(ids(&s.peek_queue("u7").await.unwrap(), |m| &m.id), ["n4"], "{k}: never refused");
        assert_eq!(send("n5", "b", "u8").await, Enqueued::SenderFull, "{k}");
        assert_eq!(drain(s, "u5").await, ["n1", "n2"], "{k}");
        assert_eq!(send("n6", "b", "u8").await, Enqueued::Queued, "{k}: n3, n4 and n6 make three");
        assert_eq!(send("n7", "b", "u8").await, Enqueued::SenderFull, "{k}: n4 counts");
        assert_eq!(drain(s, "u7").await, ["n4"], "{k}");
        assert_eq!(send("n7", "b", "u8").await, Enqueued::Queued, "{k}: n4's bytes were released");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipients_queue_is_bounded_in_bytes_too() {
    let server = RedisServer::start();
    let one = pm("m0", "b", "u", 1000);
    for (name, per_msg) in [("memory", queued_cost(&one)), ("redis", serde_json::to_string(&one).unwrap().len())] {
        // Two messages fit, a third pushes the oldest out.
        let limits = Limits { queue_bytes_per_user: 2 * per_msg + per_msg / 2, ..Limits::default() };
        let stores = both(&server, "qb", limits).await;
        let (s, kind) = stores.iter().find(|(_, k)| k.name() == name).unwrap();
        for i in 0..4 {
            assert_eq!(s.enqueue_if_offline(&pm(&format!("m{i}"), "b", "u", 1000)).await.unwrap(), Enqueued::Queued);
        }
        assert_eq!(ids(&s.peek_queue("u").await.unwrap(), |m| &m.id), ["m2", "m3"], "{name}");
        if let Some(q) = kind.counter(&["qbytes", "u"]).await {
            assert_eq!(q as usize, 2 * per_msg, "{name}: qbytes is what the queue holds");
        }
        // The evicted ones gave their sender's bytes back.
        if let Some(b) = kind.counter(&["sbytes", "b"]).await {
            assert_eq!(b as usize, 2 * queued_cost(&one), "{name}: sbytes counts the two left");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_senders_queued_bytes_are_released_when_the_queue_expires() {
    let server = RedisServer::start();
    let cost = queued_cost(&pm("m", "b", "u", 1000));
    let limits = Limits { queued_bytes_per_sender: 2 * cost, queue_ttl_secs: 1, ..Limits::default() };
    for (s, kind) in both(&server, "qt", limits).await {
        let k = kind.name();
        for (id, to) in [("m1", "u1"), ("m2", "u2")] {
            assert_eq!(s.enqueue_if_offline(&pm(id, "b", to, 1000)).await.unwrap(), Enqueued::Queued, "{k}");
        }
        let full_at = Instant::now();
        assert_eq!(s.enqueue_if_offline(&pm("m3", "b", "u3", 1000)).await.unwrap(), Enqueued::SenderFull, "{k}");
        // After the queue TTL (1 s) the sender may queue again: no event tells when, so poll (each
        // refused attempt changes nothing), with the periodic purge the memory store relies on.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            s.purge().await;
            let res = s.enqueue_if_offline(&pm("m3", "b", "u3", 1000)).await.unwrap();
            if res == Enqueued::Queued {
                break;
            }
            assert!(Instant::now() < deadline, "{k}: the expired messages' bytes were never released");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(full_at.elapsed() >= Duration::from_millis(900), "{k}: released before the TTL");
        assert!(s.peek_queue("u1").await.unwrap().is_empty(), "{k}: an expired message is not handed over");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_and_dedup_keys_are_bounded_per_sender() {
    let server = RedisServer::start();
    let limits = Limits { keys_per_sender: 3, ..Limits::default() };
    for (s, kind) in both(&server, "rc", limits).await {
        let k = kind.name();
        for i in 0..5 {
            s.remember_receipt(&format!("m{i}"), "b", "a").await.unwrap();
            assert_eq!(s.claim("b", &format!("k{i}"), &format!("v{i}")).await.unwrap(), Claim::New, "{k}");
        }
        s.remember_receipt("other", "c", "a").await.unwrap();
        let asked: Vec<String> = ["m0", "m1", "m2", "m3", "m4", "other", "never"].map(String::from).to_vec();
        let known = s.receipts(&asked).await.unwrap();
        let who = |f: &str, t: &str| Some((f.to_string(), t.to_string()));
        assert_eq!(
            known,
            [None, None, who("b", "a"), who("b", "a"), who("b", "a"), who("c", "a"), None],
            "{k}: the sender's two oldest forgotten, another sender's kept"
        );
        assert_eq!(s.claim("b", "k0", "again").await.unwrap(), Claim::New, "{k}: the oldest key forgotten");
        assert_eq!(s.claim("x", "k4", "mine").await.unwrap(), Claim::Seen("v4".into()), "{k}: by anyone");
        if let Kind::Redis { raw, prefix } = &kind {
            let mut raw = raw.clone();
            let gone: bool = raw.exists(format!("{prefix}:receipt:m0")).await.unwrap();
            assert!(!gone, "the forgotten receipt's key is deleted");
            let held: usize = raw.zcard(format!("{prefix}:receipt-keys:b")).await.unwrap();
            assert_eq!(held, 3, "the sender's receipt index stays at the cap");
            let held: usize = raw.zcard(format!("{prefix}:dedup-keys:b")).await.unwrap();
            assert_eq!(held, 3, "the sender's de-duplication index stays at the cap");
        }
        // A released claim may be claimed again (the work it guarded failed).
        s.release("k4").await.unwrap();
        assert_eq!(s.claim("b", "k4", "retry").await.unwrap(), Claim::New, "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_history_is_capped_trimmed_and_paginated() {
    let server = RedisServer::start();
    let limits = Limits { history_per_room: 5, ..Limits::default() };
    for (s, kind) in both(&server, "h", limits).await {
        let k = kind.name();
        for i in 0..8 {
            s.append(&msg("r", &i.to_string(), "a", 10)).await.unwrap();
        }
        s.append(&msg("other", "o", "a", 10)).await.unwrap();
        let (all, more) = s.history("r", None, 50).await.unwrap().unwrap();
        assert_eq!(ids(&all, |m| &m.id), ["3", "4", "5", "6", "7"], "{k}: the newest five, oldest first");
        assert!(!more, "{k}");
        let (page, more) = s.history("r", None, 2).await.unwrap().unwrap();
        assert_eq!((ids(&page, |m| &m.id), more), (vec!["6".to_string(), "7".into()], true), "{k}");
        let (page, more) = s.history("r", Some("6"), 2).await.unwrap().unwrap();
        assert_eq!((ids(&page, |m| &m.id), more), (vec!["4".to_string(), "5".into()], true), "{k}");
        let (page, more) = s.history("r", Some("5"), 10).await.unwrap().unwrap();
        assert_eq!((ids(&page, |m| &m.id), more), (vec!["3".to_string(), "4".into()], false), "{k}");
        assert!(s.history("r", Some("0"), 2).await.unwrap().is_none(), "{k}: a trimmed id is unknown");
        assert!(s.history("empty", Some("x"), 2).await.unwrap().is_none(), "{k}");
        assert_eq!(s.history("empty", None, 2).await.unwrap(), Some((Vec::new(), false)), "{k}");
        assert!(s.message("r", "2").await.unwrap().is_none(), "{k}: a trimmed message is gone");
        assert_eq!(s.message("r", "7").await.unwrap().unwrap(), all[4], "{k}");
        assert_eq!(history_ids(s.as_ref(), "other").await, ["o"], "{k}: rooms are apart");
        if let Kind::Redis { raw, prefix } = &kind {
            let stored = stored_json_bytes(&mut raw.clone(), prefix, "r").await;
            assert_eq!(kind.counter(&["histbytes", "r"]).await, Some(stored as i64), "the room's byte counter");
            let by_a = stored + stored_json_bytes(&mut raw.clone(), prefix, "other").await;
            assert_eq!(kind.counter(&["ubytes", "a"]).await, Some(by_a as i64), "the author's byte counter");
        }
    }
}

/// The bytes of the JSON a room's hash holds (what its counters must say).
async fn stored_json_bytes(raw: &mut redis::aio::MultiplexedConnection, prefix: &str, room: &str) -> usize {
    let vals: Vec<String> = raw.hvals(format!("{prefix}:msgs:{room}")).await.unwrap();
    vals.iter().map(String::len).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_history_is_bounded_in_bytes_oldest_first() {
    let server = RedisServer::start();
    for name in ["memory", "redis"] {
        let probe = msg("r", "0", "a", 1000);
        let each = cost(name, &probe);
        let limits = Limits { history_bytes_per_room: 3 * each + each / 2, ..Limits::default() };
        let stores = both(&server, "hb", limits).await;
        let (s, kind) = stores.iter().find(|(_, k)| k.name() == name).unwrap();
        for i in 0..6 {
            s.append(&msg("r", &i.to_string(), "a", 1000)).await.unwrap();
        }
        assert_eq!(history_ids(s.as_ref(), "r").await, ["3", "4", "5"], "{name}: the newest that fit");
        // One message larger than the cap is still kept (a room keeps at least its newest).
        s.append(&msg("r", "big", "a", 5 * 1000)).await.unwrap();
        assert_eq!(history_ids(s.as_ref(), "r").await, ["big"], "{name}");
        if let Some(bytes) = kind.counter(&["histbytes", "r"]).await {
            assert_eq!(bytes as usize, kind.cost(&msg("r", "big", "a", 5 * 1000)), "{name}: the counter follows");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_change_the_stored_message_once() {
    let server = RedisServer::start();
    for (s, kind) in both(&server, "ed", Limits::default()).await {
        let k = kind.name();
        let mut with_file = msg("r", "f", "a", 5);
        with_file.kind = "file".into();
        with_file.file = Some(serde_json::json!({ "id": "file-1", "name": "a.txt", "size": 3 }));
        s.append(&msg("r", "1", "a", 5)).await.unwrap();
        s.append(&with_file).await.unwrap();

        let m = s.edit("r", "1", Edit::Content("new".into())).await.unwrap().expect("edited");
        assert!(m.edited && !m.deleted && m.content == "new", "{k}: {m:?}");
        assert_eq!(s.message("r", "1").await.unwrap().unwrap(), m, "{k}: stored as returned");
        let m = s.edit("r", "1", Edit::Delete).await.unwrap().expect("deleted");
        assert!(m.deleted && m.content.is_empty(), "{k}: {m:?}");
        assert!(s.edit("r", "1", Edit::Content("again".into())).await.unwrap().is_none(), "{k}: deleted stays");
        assert!(s.edit("r", "1", Edit::Delete).await.unwrap().is_none(), "{k}: deleted once");
        assert!(s.edit("r", "nope", Edit::Delete).await.unwrap().is_none(), "{k}: unknown");
        assert!(s.edit("elsewhere", "1", Edit::Delete).await.unwrap().is_none(), "{k}: another room's id");

        let m = s.edit("r", "f", Edit::Delete).await.unwrap().expect("deleted");
        assert!(m.file.is_none() && m.content.is_empty(), "{k}: a deleted file message loses its file");
        let (hist, _) = s.history("r", None, 10).await.unwrap().unwrap();
        assert_eq!(ids(&hist, |m| &m.id), ["1", "f"], "{k}: history keeps deleted messages");
        assert!(hist.iter().all(|m| m.deleted && m.content.is_empty()), "{k}: {hist:?}");
        if let Kind::Redis { raw, prefix } = &kind {
            let stored = stored_json_bytes(&mut raw.clone(), prefix, "r").await;
            assert_eq!(kind.counter(&["histbytes", "r"]).await, Some(stored as i64), "edits move the room's bytes");
            assert_eq!(kind.counter(&["ubytes", "a"]).await, Some(stored as i64), "and the author's");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_writes_displace_only_their_own_history() {
    let server = RedisServer::start();
    for name in ["memory", "redis"] {
        let probe = msg("flood00", "x00.0", "x", 1000);
        let each = cost(name, &probe);
        let limits = Limits { history_bytes_per_user: 10 * each + each / 2, ..Limits::default() };
        let stores = both(&server, "pu", limits).await;
        let (s, kind) = stores.iter().find(|(_, k)| k.name() == name).unwrap();
        for i in 0..3 {
            s.append(&msg("victim", &format!("v{i}"), "v", 1000)).await.unwrap();
            s.append(&msg("open", &format!("o{i}"), "v", 1000)).await.unwrap();
        }
        s.append(&msg("open", "x-open", "x", 1000)).await.unwrap();
        for r in 0..30 {
            for i in 0..2 {
                s.append(&msg(&format!("flood{r:02}"), &format!("x{r:02}.{i}"), "x", 1000)).await.unwrap();
            }
        }
        assert_eq!(history_ids(s.as_ref(), "victim").await, ["v0", "v1", "v2"], "{name}: intact");
        assert_eq!(history_ids(s.as_ref(), "open").await, ["o0", "o1", "o2"], "{name}: x's oldest went");
        assert!(history_ids(s.as_ref(), "flood00").await.is_empty(), "{name}: the attacker's oldest go first");
        assert_eq!(history_ids(s.as_ref(), "flood29").await, ["x29.0", "x29.1"], "{name}: their newest stay");
        let mut kept = 0;
        for r in 0..30 {
            kept += history_ids(s.as_ref(), &format!("flood{r:02}")).await.len();
        }
        assert_eq!(kept, 10, "{name}: the attacker keeps what fits in their budget");
        if let Some(b) = kind.counter(&["ubytes", "x"]).await {
            assert_eq!(b as usize, 10 * each, "{name}: the author's counter is their ten messages");
        }
    }
}

/// The edited message is never the one dropped for its author's budget, but the author's other
/// messages are, oldest first, also when the edited one is the author's oldest (the memory store's
/// `edits_count_against_the_authors_budget` unit test expects exactly that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_the_authors_oldest_message_keeps_them_within_budget() {
    let server = RedisServer::start();
    for name in ["memory", "redis"] {
        let small = msg("r", "1", "a", 10);
        let mut big = msg("r", "0", "a", 10);
        big.apply(&Edit::Content("y".repeat(3000)));
        // The grown message alone fits; with the other one it does not.
        let budget = cost(name, &big) + cost(name, &small) / 2;
        let limits = Limits { history_bytes_per_user: budget, ..Limits::default() };
        let stores = both(&server, "eb", limits).await;
        let (s, kind) = stores.iter().find(|(_, k)| k.name() == name).unwrap();
        s.append(&msg("r", "0", "a", 10)).await.unwrap();
        s.append(&small).await.unwrap();
        s.append(&msg("r", "b", "b", 10)).await.unwrap();
        s.edit("r", "0", Edit::Content("y".repeat(3000))).await.unwrap().expect("edited");
        if let Some(b) = kind.counter(&["ubytes", "a"]).await {
            assert!(b as usize <= budget, "{name}: the author holds {b} bytes, over their budget of {budget}");
        }
        assert_eq!(history_ids(s.as_ref(), "r").await, ["0", "b"], "{name}: the author's other message goes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_rooms_are_capped_per_creator_and_listed_for_members() {
    let server = RedisServer::start();
    let limits = Limits { created_rooms_per_user: 2, ..Limits::default() };
    let room = |id: &str, by: &str, name: &str| Room {
        id: id.into(),
        name: name.into(),
        kind: "group".into(),
        members: vec![by.into(), "b".into()],
        created_by: by.into(),
        created_at: unix_now_ms(),
    };
    for (s, kind) in both(&server, "cr", limits).await {
        let k = kind.name();
        let first = room("grp:1", "a", "one");
        assert_eq!(s.create_room(first.clone()).await.unwrap(), Some(first.clone()), "{k}");
        assert!(s.create_room(room("grp:2", "a", "two")).await.unwrap().is_some(), "{k}");
        assert!(s.create_room(room("grp:3", "a", "three")).await.unwrap().is_none(), "{k}: third refused");
        assert_eq!(
            s.create_room(room("grp:1", "a", "other")).await.unwrap(),
            Some(first.clone()),
            "{k}: existing wins"
        );
        assert!(s.create_room(room("grp:4", "c", "four")).await.unwrap().is_some(), "{k}: another creator");
        assert_eq!(s.room("grp:1").await.unwrap(), Some(first), "{k}");
        assert!(s.room("grp:3").await.unwrap().is_none(), "{k}");
        let mut of_b: Vec<String> = s.rooms_of("b").await.unwrap().into_iter().map(|r| r.id).collect();
        of_b.sort();
        assert_eq!(of_b, ["grp:1", "grp:2", "grp:4"], "{k}: every room that lists b");
        assert!(s.rooms_of("z").await.unwrap().is_empty(), "{k}");
    }
}

fn call(id: &str, caller: &str, callee: &str) -> Call {
    Call {
        id: id.into(),
        caller: caller.into(),
        callee: callee.into(),
        caller_sid: "s".into(),
        caller_node: NODE.into(),
        callee_sid: None,
        callee_node: None,
        call_type: "audio".into(),
        state: CallState::Ringing,
        created_at: unix_now_ms(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_count_against_their_caller_and_answered_ones_against_both() {
    let server = RedisServer::start();
    for (s, kind) in both(&server, "ca", Limits::default()).await {
        let k = kind.name();
        for i in 0..2 {
            assert!(s.put_call(&call(&format!("x{i}"), "x", "v"), 2).await.unwrap(), "{k}");
        }
        assert!(!s.put_call(&call("x2", "x", "w"), 2).await.unwrap(), "{k}: the caller is at the cap");
        assert!(s.put_call(&call("f", "f", "v"), 2).await.unwrap(), "{k}: a fresh call to v still rings");
        assert!(s.put_call(&call("v1", "v", "w"), 2).await.unwrap(), "{k}: v may call");
        match s.answer_call("f", "sv", "n2", 2).await.unwrap() {
            Answered::Yes(c) => {
                assert_eq!(
                    (c.state, c.callee_sid.as_deref(), c.callee_node.as_deref()),
                    (CallState::Active, Some("sv"), Some("n2"))
                )
            }
            other => panic!("{k}: {other:?}"),
        }
        assert_eq!(s.call("f").await.unwrap().unwrap().state, CallState::Active, "{k}: stored active");
        assert_eq!(s.answer_call("x0", "sv", "n2", 2).await.unwrap(), Answered::AtCap, "{k}: v holds two");
        assert_eq!(s.answer_call("f", "sv", "n2", 2).await.unwrap(), Answered::NotRinging, "{k}");
        assert_eq!(s.answer_call("nope", "sv", "n2", 2).await.unwrap(), Answered::NotRinging, "{k}");
        assert!(s.remove_ringing_call("f").await.unwrap().is_none(), "{k}: an answered call is not ringing");
        assert!(!s.put_call(&call("v2", "v", "w"), 2).await.unwrap(), "{k}: v is at their own cap");
        assert_eq!(s.remove_call("v1").await.unwrap().map(|c| c.id), Some("v1".into()), "{k}");
        assert!(matches!(s.answer_call("x0", "sv", "n2", 2).await.unwrap(), Answered::Yes(_)), "{k}");
        assert_eq!(s.remove_ringing_call("x1").await.unwrap().map(|c| c.id), Some("x1".into()), "{k}: ring timeout");
        let mut of_v: Vec<String> = s.calls_of("v").await.unwrap().into_iter().map(|c| c.id).collect();
        of_v.sort();
        assert_eq!(of_v, ["f", "x0"], "{k}: the live calls v is a party of");
        assert!(s.calls_of("w").await.unwrap().is_empty(), "{k}: removed calls are forgotten");
    }
}

/// Presence in a cluster (Redis only): sockets count on every node together against the cap, and
/// only while their node's liveness key exists; a node that comes back resyncs its count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_sockets_cluster_wide_and_only_on_live_nodes() {
    let server = RedisServer::start();
    let raw = raw_conn(&server).await;
    let link = Arc::new(RedisLink::open(&server.url()).expect("link"));
    let limits = Limits { departed_rooms_per_user: 2, ..Limits::default() };
    let (a, b) = (RedisStore::new(link.clone(), "pr", "a", limits), RedisStore::new(link, "pr", "b", limits));
    live(&raw, "pr", "a").await;
    live(&raw, "pr", "b").await;
    let u = user("u");

    assert_eq!(a.socket_up(&u, "a1", 3).await.unwrap(), Some(true), "came online");
    assert_eq!(a.socket_up(&u, "a2", 3).await.unwrap(), Some(false));
    assert_eq!(b.socket_up(&u, "b1", 3).await.unwrap(), Some(false));
    assert_eq!(b.socket_up(&u, "b2", 3).await.unwrap(), None, "the cap counts both nodes");
    assert_eq!(a.sockets_of("u").await.unwrap(), 3);
    assert_eq!(
        b.socket_users(&["a1".into(), "zz".into()]).await.unwrap(),
        [Some(u.clone()), None],
        "any node sees a1's user"
    );
    assert_eq!(b.enqueue_if_offline(&pm("p1", "x", "u", 10)).await.unwrap(), Enqueued::Online);

    // Node a dies: its liveness key expires (deleted here), and its sockets stop counting at once.
    let _: () = raw.clone().del("pr:node:a").await.unwrap();
    assert_eq!(b.sockets_of("u").await.unwrap(), 1, "only b's socket is live");
    assert_eq!(b.socket_up(&u, "b2", 3).await.unwrap(), Some(false), "room under the cap again");
    assert_eq!(b.socket_down("u", "b2", &[], 60_000).await.unwrap(), 1);
    let rooms: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
    assert_eq!(b.socket_down("u", "b1", &rooms, 0).await.unwrap(), 0, "no live socket left");
    assert_eq!(b.enqueue_if_offline(&pm("p2", "x", "u", 10)).await.unwrap(), Enqueued::Queued, "offline: queued");
    let went = b.mark_offline_if_idle("u", 0).await.unwrap().expect("offline now");
    assert_eq!(went.len(), 2, "the departed rooms are capped per user: {went:?}");
    assert_eq!(b.presence(&["u".into()]).await.unwrap()[0].status, "offline");

    // Node a comes back under the same id (a new process, a new store) with none of its old sockets:
    // resync forgets them and keeps what this process admitted, whatever Redis held meanwhile.
    let a = RedisStore::new(Arc::new(RedisLink::open(&server.url()).expect("link")), "pr", "a", limits);
    live(&raw, "pr", "a").await;
    assert_eq!(a.sockets_of("u").await.unwrap(), 2, "a's stale entries count again until resync");
    assert_eq!(a.socket_up(&user("w"), "a3", 3).await.unwrap(), Some(true));
    let _: () = raw.clone().hdel("pr:presence:w", "n:a").await.unwrap(); // a write Redis lost
    assert_eq!(a.sockets_of("w").await.unwrap(), 0);
    assert_eq!(a.resync().await.unwrap(), ["u".to_string()], "u has no socket on a any more");
    assert_eq!(a.sockets_of("u").await.unwrap(), 0);
    assert_eq!(a.sockets_of("w").await.unwrap(), 1, "w's live socket is counted");
    assert_eq!(a.presence(&["w".into()]).await.unwrap()[0].status, "online");
}

/// A resync (Redis back, or the node's liveness key lost) while users connect and leave: whatever the
/// interleaving, Redis ends with exactly the sockets the node admitted and did not release. (It used to
/// rewrite presence from a snapshot taken before; a user whose socket came up meanwhile was dropped, and
/// a private message to them was queued while they were connected.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_during_connects_keeps_every_admitted_socket() {
    let server = RedisServer::start();
    let raw = raw_conn(&server).await;
    let link = Arc::new(RedisLink::open(&server.url()).expect("link"));
    let a = Arc::new(RedisStore::new(link, "rs", "a", Limits::default()));
    live(&raw, "rs", "a").await;
    for round in 0..40 {
        let (up, down) = (format!("up{round}"), format!("down{round}"));
        assert_eq!(a.socket_up(&user(&down), &format!("d{round}"), 5).await.unwrap(), Some(true));
        let (x, y, z) = (a.clone(), a.clone(), a.clone());
        let (u, d) = (up.clone(), down.clone());
        let joined = tokio::join!(
            tokio::spawn(async move { x.socket_up(&user(&u), &format!("u{round}"), 5).await }),
            tokio::spawn(async move { y.resync().await }),
            tokio::spawn(async move { z.socket_down(&d, &format!("d{round}"), &[], 60_000).await }),
        );
        assert_eq!(joined.0.unwrap().unwrap(), Some(true));
        joined.1.unwrap().unwrap();
        joined.2.unwrap().unwrap();
        assert_eq!(a.sockets_of(&up).await.unwrap(), 1, "round {round}: the socket that came up counts");
        assert_eq!(a.sockets_of(&down).await.unwrap(), 0, "round {round}: the socket that left does not");
    }
    // And a resync after all of it changes nothing.
    a.resync().await.unwrap();
    assert_eq!(a.sockets_of("up39").await.unwrap(), 1);
}

/// Starts an upload of `size` bytes to a room on `files` (a node), counted against the daily budget.
async fn start_upload(
    files: &Files,
    redis: Option<&Arc<RedisLink>>,
    user: &str,
    sid: &str,
    size: u64,
) -> Result<String, ApiError> {
    let req = NewUpload { name: "f.bin".into(), size, declared: None, to: Destination::Room("r".into()) };
    files.start(redis, "fb", user, sid, req).await
}

/// The daily upload budget (`UPLOAD_BYTES_PER_DAY`, SPEC §13) is a Lua script beside the store: with
/// Redis it is one budget for the whole cluster, and an upload dropped half-way gives back what it
/// did not write; without Redis one node counts the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_upload_budget_is_cluster_wide_and_refunded_when_an_upload_is_dropped() {
    let server = RedisServer::start();
    let link = Arc::new(RedisLink::open(&server.url()).expect("link"));
    let dir = std::env::temp_dir().join(format!("rtg-store-redis-files-{}", std::process::id()));
    let mut cfg = Config::default_for_tests();
    cfg.file_store_url = Some(dir.to_string_lossy().into_owned());
    cfg.upload_bytes_per_day = 1000;
    let (a, b, local) = (Files::open(&cfg).unwrap(), Files::open(&cfg).unwrap(), Files::open(&cfg).unwrap());
    for (name, first, second, redis) in [("redis", &a, &b, Some(&link)), ("local", &local, &local, None)] {
        let id = start_upload(first, redis, "u", "s1", 600).await.expect("within the budget");
        let refused = start_upload(second, redis, "u", "s2", 600).await.expect_err("over the day's budget");
        assert_eq!(refused.code, Code::RateLimited, "{name}: {refused:?}");
        assert!(start_upload(second, redis, "v", "s3", 600).await.is_ok(), "{name}: each user has their own");

        // 100 of the 600 bytes written, then the client leaves: 500 come back.
        let upload = first.get(&id, "s1").expect("registered");
        first.chunk(&mut *upload.lock().await, 0, &[7u8; 100]).await.expect("chunk");
        first.sweep(Some("s1")).await;
        assert!(first.get(&id, "s1").is_none(), "{name}: dropped");
        if redis.is_some() {
            let day = realtime_gateway::model::clock::unix_now() / 86_400;
            let used: i64 = raw_conn(&server).await.get(format!("fb:upload-bytes:u:{day}")).await.unwrap();
            assert_eq!(used, 100, "{name}: the unwritten part was refunded");
        }
        assert!(start_upload(second, redis, "u", "s2", 900).await.is_ok(), "{name}: 100 + 900 fit");
        let refused = start_upload(first, redis, "u", "s4", 1).await.expect_err("the budget is spent");
        assert_eq!(refused.code, Code::RateLimited, "{name}");
        for sid in ["s2", "s3"] {
            second.sweep(Some(sid)).await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// --- random sequences on both stores ---

#[derive(Debug, Clone)]
enum Op {
    Append { room: u8, author: u8, len: u16 },
    Edit { room: u8, pick: u16, len: u16 },
    Delete { room: u8, pick: u16 },
    History { room: u8, before: Option<u16>, limit: u8 },
    Send { from: u8, to: u8, len: u16 },
    Drain { to: u8 },
    Up { user: u8 },
    Down { user: u8 },
    Receipt { from: u8 },
    Claim { owner: u8, key: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2u8, 0..3u8, 0..300u16).prop_map(|(room, author, len)| Op::Append { room, author, len }),
        1 => (0..2u8, any::<u16>(), 0..300u16).prop_map(|(room, pick, len)| Op::Edit { room, pick, len }),
        1 => (0..2u8, any::<u16>()).prop_map(|(room, pick)| Op::Delete { room, pick }),
        2 => (0..2u8, proptest::option::of(any::<u16>()), 1..6u8)
            .prop_map(|(room, before, limit)| Op::History { room, before, limit }),
        4 => (0..3u8, 0..3u8, 0..300u16).prop_map(|(from, to, len)| Op::Send { from, to, len }),
        2 => (0..3u8).prop_map(|to| Op::Drain { to }),
        1 => (0..3u8).prop_map(|user| Op::Up { user }),
        1 => (0..3u8).prop_map(|user| Op::Down { user }),
        2 => (0..3u8).prop_map(|from| Op::Receipt { from }),
        2 => (0..3u8, 0..5u8).prop_map(|(owner, key)| Op::Claim { owner, key }),
    ]
}

/// Limits small enough for a short sequence to hit each count cap and the senders' byte cap; the
/// byte caps measured differently by the two stores are out of reach.
fn small_limits() -> Limits {
    Limits {
        history_per_room: 4,
        queue_per_user: 3,
        queued_bytes_per_sender: 1200,
        keys_per_sender: 3,
        ..Limits::default()
    }
}

/// Runs `ops` on both stores, comparing every answer; then checks the Redis store's counters.
/// With `tight` byte caps the two stores count differently (see the top of the file): only the Redis
/// store runs, and only its counters are checked.
async fn run_case(url: &str, case: u64, ops: &[Op], tight: bool) -> Result<(), TestCaseError> {
    let prefix = format!("pt{case}-{tight}");
    let client = redis::Client::open(url).unwrap();
    let raw = client.get_multiplexed_async_connection().await.unwrap();
    live(&raw, &prefix, NODE).await;
    let limits = if tight {
        Limits {
            history_bytes_per_room: 900,
            history_bytes_per_user: 1200,
            queue_bytes_per_user: 900,
            ..small_limits()
        }
    } else {
        small_limits()
    };
    let mem = MemoryStore::new(limits);
    let red = RedisStore::new(Arc::new(RedisLink::open(url).unwrap()), &prefix, NODE, limits);
    let stores: Vec<&dyn Store> = if tight { vec![&red] } else { vec![&mem, &red] };
    // Every message id ever appended per room (trimmed ones too: they must be unknown to both).
    let mut appended: [Vec<String>; 2] = Default::default();
    let mut sockets = [0u32; 3];
    let mut receipts: Vec<String> = Vec::new();
    let pick = |list: &Vec<String>, p: u16| (!list.is_empty()).then(|| list[p as usize % list.len()].clone());
    for (n, op) in ops.iter().enumerate() {
        // What an op writes is made once, so that both stores get the same timestamps.
        let new_msg = match op {
            Op::Append { room, author, len } => {
                Some(msg(&format!("room{room}"), &format!("m{n:03}"), &format!("a{author}"), *len as usize))
            }
            _ => None,
        };
        let new_pm = match op {
            Op::Send { from, to, len } => {
                Some(pm(&format!("p{n:03}"), &format!("u{from}"), &format!("u{to}"), *len as usize))
            }
            _ => None,
        };
        let mut answers = Vec::new();
        for &s in &stores {
            let answer = match op {
                Op::Append { .. } => {
                    s.append(new_msg.as_ref().unwrap()).await.unwrap();
                    String::new()
                }
                Op::Edit { room, pick: p, len } => match pick(&appended[*room as usize], *p) {
                    Some(id) => {
                        let edit = Edit::Content("e".repeat(*len as usize));
                        format!("{:?}", s.edit(&format!("room{room}"), &id, edit).await.unwrap())
                    }
                    None => String::new(),
                },
                Op::Delete { room, pick: p } => match pick(&appended[*room as usize], *p) {
                    Some(id) => format!("{:?}", s.edit(&format!("room{room}"), &id, Edit::Delete).await.unwrap()),
                    None => String::new(),
                },
                Op::History { room, before, limit } => {
                    let before = before.and_then(|p| pick(&appended[*room as usize], p));
                    let h = s.history(&format!("room{room}"), before.as_deref(), *limit as usize).await.unwrap();
                    format!("{h:?}")
                }
                Op::Send { .. } => format!("{:?}", s.enqueue_if_offline(new_pm.as_ref().unwrap()).await.unwrap()),
                Op::Drain { to } => format!("{:?}", drain(s, &format!("u{to}")).await),
                Op::Up { user: u } => {
                    format!("{:?}", s.socket_up(&user(&format!("u{u}")), &format!("s{u}-{n}"), 2).await.unwrap())
                }
                Op::Down { user: u } if sockets[*u as usize] > 0 => {
                    format!("{:?}", s.socket_down(&format!("u{u}"), "s", &[], 60_000).await.unwrap())
                }
                Op::Down { .. } => String::new(),
                Op::Receipt { from } => {
                    s.remember_receipt(&format!("r{n:03}"), &format!("u{from}"), "to").await.unwrap();
                    format!("{:?}", s.receipts(&receipts).await.unwrap())
                }
                Op::Claim { owner, key } => {
                    format!("{:?}", s.claim(&format!("u{owner}"), &format!("k{key}"), &format!("v{n}")).await.unwrap())
                }
            };
            answers.push(answer);
        }
        if !tight {
            prop_assert_eq!(&answers[0], &answers[1], "op {} {:?}: memory vs redis", n, op);
        }
        match op {
            Op::Append { room, .. } => appended[*room as usize].push(format!("m{n:03}")),
            Op::Up { user: u } if answers[0] != "None" => sockets[*u as usize] += 1,
            Op::Down { user: u } if sockets[*u as usize] > 0 => sockets[*u as usize] -= 1,
            Op::Receipt { .. } => receipts.push(format!("r{n:03}")),
            _ => {}
        }
    }
    check_counters(&mut raw.clone(), &prefix).await
}

/// The Redis store's byte counters are what its data holds: per room, per author, per recipient's
/// queue and per sender.
async fn check_counters(raw: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Result<(), TestCaseError> {
    let int = |v: Option<i64>| v.unwrap_or(0);
    let mut by_author: std::collections::HashMap<String, (i64, usize)> = Default::default();
    for room in ["room0", "room1"] {
        let listed: Vec<String> = raw.lrange(format!("{prefix}:hist:{room}"), 0, -1).await.unwrap();
        let stored: std::collections::HashMap<String, String> =
            raw.hgetall(format!("{prefix}:msgs:{room}")).await.unwrap();
        prop_assert_eq!(listed.len(), stored.len(), "{}: the id list and the messages", room);
        let bytes: i64 = stored.values().map(|v| v.len() as i64).sum();
        let counted: Option<i64> = raw.get(format!("{prefix}:histbytes:{room}")).await.unwrap();
        prop_assert_eq!(int(counted), bytes, "{}: histbytes", room);
        for v in stored.values() {
            let m: Message = serde_json::from_str(v).unwrap();
            let e = by_author.entry(m.user_id).or_default();
            e.0 += v.len() as i64;
            e.1 += 1;
        }
    }
    for author in ["a0", "a1", "a2"] {
        let (bytes, n) = by_author.get(author).copied().unwrap_or_default();
        let counted: Option<i64> = raw.get(format!("{prefix}:ubytes:{author}")).await.unwrap();
        prop_assert_eq!(int(counted), bytes, "{}: ubytes", author);
        let listed: usize = raw.zcard(format!("{prefix}:uhist:{author}")).await.unwrap();
        prop_assert_eq!(listed, n, "{}: uhist", author);
    }
    let mut by_sender: std::collections::HashMap<String, (i64, usize)> = Default::default();
    for to in ["u0", "u1", "u2"] {
        let queued: Vec<String> = raw.lrange(format!("{prefix}:queue:{to}"), 0, -1).await.unwrap();
        let counted: Option<i64> = raw.get(format!("{prefix}:qbytes:{to}")).await.unwrap();
        prop_assert_eq!(int(counted), queued.iter().map(|q| q.len() as i64).sum::<i64>(), "{}: qbytes", to);
        for q in &queued {
            let m: PrivateMessage = serde_json::from_str(q).unwrap();
            let e = by_sender.entry(m.from_user_id.clone()).or_default();
            e.0 += queued_cost(&m) as i64;
            e.1 += 1;
        }
    }
    for from in ["u0", "u1", "u2"] {
        let (bytes, n) = by_sender.get(from).copied().unwrap_or_default();
        let counted: Option<i64> = raw.get(format!("{prefix}:sbytes:{from}")).await.unwrap();
        prop_assert_eq!(int(counted), bytes, "{}: sbytes", from);
        let listed: usize = raw.zcard(format!("{prefix}:squeue:{from}")).await.unwrap();
        prop_assert_eq!(listed, n, "{}: squeue", from);
    }
    Ok(())
}

fn random_sequences(tight: bool) {
    let server = RedisServer::start();
    let url = server.url();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let case = AtomicU64::new(0);
    let config = ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(ops in prop::collection::vec(op(), 1..60))| {
        let c = case.fetch_add(1, Ordering::Relaxed);
        rt.block_on(run_case(&url, c, &ops, tight))?;
    });
}

#[test]
fn random_sequences_get_the_same_answers_from_both_stores() {
    random_sequences(false);
}

/// Trims by bytes (per room, per author, per recipient) on every few operations: the counters the
/// scripts keep must still be exactly what is stored.
#[test]
fn random_sequences_with_tight_byte_caps_keep_the_redis_counters_exact() {
    random_sequences(true);
}
