//! The cluster: each node's heartbeat and figures in Redis, cluster-wide stats, and the reaper that
//! takes a dead node's users out of presence.
//!
//! Every second a node renews its liveness key `<prefix>:node:<node>` (expiring after
//! [`NODE_LIVENESS_MS`]), lists itself in `<prefix>:nodes`, and writes its figures to
//! `<prefix>:node-stats:<node>` (expiring too). Liveness is Redis's key expiry, not a comparison of
//! the nodes' wall clocks: when a node's key has expired, presence ignores its sockets at once, and
//! one live node (the one that wins a short lock) removes its entries, ends its calls and schedules
//! the offline check of its users.

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::AsyncCommands;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use serde::Serialize;

use rtg_model::hub::Hub;
use rtg_model::session::Counters;
use rtg_model::stats::{local_stats, Stats};
use rtg_storage::redis_link::{redis_key, RedisLink};
use rtg_storage::store::redis::NODE_LIVENESS_MS;
use rtg_storage::store::Store;

/// What the reaper does for each (user, node) of a dead node (their calls there end): given by
/// `startup`, so that this module needs nothing from the event handlers.
pub type OnNodeGone = Arc<dyn Fn(String, String) -> BoxFuture<'static, ()> + Send + Sync>;
/// Told the ids of a dead node's clients (the Admin UI drops them from its list).
pub type OnClientsGone = Arc<dyn Fn(&[String]) + Send + Sync>;

/// What the heartbeat and the reaper use, handed over by `startup`.
pub struct Liveness {
    pub redis: Arc<RedisLink>,
    /// `REDIS_PREFIX`.
    pub prefix: String,
    pub node_id: String,
    /// Set from each beat: how many other nodes there are.
    pub peers: Arc<AtomicUsize>,
    pub store: Arc<dyn Store>,
    /// `PRESENCE_GRACE_MS`: the offline check of a dead node's users waits this long.
    pub grace_ms: u64,
    /// This node's clients (its presence after Redis comes back) and figures.
    pub hub: Arc<Hub>,
    pub counters: Arc<Counters>,
    pub on_gone: OnNodeGone,
    pub on_clients_gone: OnClientsGone,
}

impl Liveness {
    fn key(&self, parts: &[&str]) -> String {
        redis_key(&self.prefix, parts)
    }
}

/// The heartbeat and the reaper of dead nodes (both every second).
pub fn spawn_heartbeat(state: Liveness) -> tokio::task::JoinHandle<()> {
    let redis = state.redis.clone();
    // `tick` below: the first beat is immediate.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_up = false;
        // The figures last written: unchanged ones are not written again (they name every
        // subscribed channel), only kept alive.
        let mut written: Option<String> = None;
        loop {
            tick.tick().await;
            let stats = serde_json::to_string(&local_stats(&state.hub, &state.counters).await).unwrap_or_default();
            let stats_key = state.key(&["node-stats", &state.node_id]);
            let mut stats_cmd = redis::pipe();
            if written.as_deref() == Some(stats.as_str()) {
                stats_cmd.expire(&stats_key, (NODE_LIVENESS_MS / 1000) as i64).ignore();
            } else {
                stats_cmd.set_ex(&stats_key, &stats, NODE_LIVENESS_MS / 1000).ignore();
            }
            let generation = redis.generation();
            let mut conn = redis.commands();
            // The liveness key's previous value: missing when this is the first beat, when the
            // node was away longer than its lifetime, or when Redis lost its data (a restart
            // without persistence). Each of those needs this node's presence written again.
            let beat: redis::RedisResult<(Option<String>, usize)> = redis::pipe()
                .cmd("SET")
                .arg(state.key(&["node", &state.node_id]))
                .arg(1)
                .arg("PX")
                .arg(NODE_LIVENESS_MS)
                .arg("GET")
                .hset(state.key(&["nodes"]), &state.node_id, rtg_model::clock::unix_now_ms())
                .ignore()
                .hlen(state.key(&["nodes"]))
                .query_async(&mut conn)
                .await;
            // Written after the beat: a node whose liveness key Redis lost writes its figures anew.
            let stats_ok = match &beat {
                Ok((Some(_), _)) => stats_cmd.query_async::<()>(&mut conn).await.is_ok(),
                Ok((None, _)) => redis::pipe()
                    .set_ex(&stats_key, &stats, NODE_LIVENESS_MS / 1000)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            written = stats_ok.then_some(stats);
            redis.beat(generation, beat.is_ok());
            if let Ok((_, nodes)) = &beat {
                // The other nodes (dead ones not reaped yet included): how many answers a question
                // to every node waits for (the `/ws` bus).
                state.peers.store(nodes.saturating_sub(1), std::sync::atomic::Ordering::Relaxed);
            }
            let lost = matches!(&beat, Ok((None, _)));
            if beat.is_ok() && (!was_up || lost) {
                // First beat, Redis is back, or it forgot this node: make presence match this
                // node's live sockets.
                resync(&state).await;
            }
            was_up = beat.is_ok();
            // The reaper runs every beat: a dead node is noticed at most a second after its
            // liveness key expired, so its users go offline at most NODE_LIVENESS_MS + 1 s + the
            // grace after it died (docs/scaling.md).
            if beat.is_ok() {
                if let Err(e) = reap(&state, &mut conn).await {
                    tracing::debug!("reaper: {e}");
                }
            }
        }
    })
}

/// Rewrites this node's presence counts from the sockets the store admitted. (Not from a snapshot of
/// the hub: a user connecting meanwhile would be in one and not the other, and dropped from presence.)
async fn resync(state: &Liveness) {
    match state.store.resync().await {
        Ok(gone) => {
            tracing::info!(stale = gone.len(), "presence resynced with redis");
            for user_id in gone {
                if let Err(e) = state.store.schedule_offline_check(&user_id, state.grace_ms).await {
                    tracing::warn!(user_id, "offline check: {e}");
                }
            }
        }
        Err(e) => tracing::warn!("presence resync: {e}"),
    }
}

/// Removes dead nodes: their presence entries go, and their users get the presence grace.
async fn reap(state: &Liveness, conn: &mut rtg_storage::redis_link::RetryConn) -> redis::RedisResult<()> {
    let nodes: Vec<String> = conn.hkeys(state.key(&["nodes"])).await?;
    for node in nodes {
        if node == state.node_id {
            continue;
        }
        let alive: bool = conn.exists(state.key(&["node", &node])).await?;
        if alive {
            continue;
        }
        let won: bool = redis::cmd("SET")
            .arg(state.key(&["reap", &node]))
            .arg(&state.node_id)
            .arg("NX")
            .arg("EX")
            .arg(60)
            .query_async(conn)
            .await?;
        if !won {
            continue;
        }
        let users: Vec<String> = conn.smembers(state.key(&["node-users", &node])).await?;
        // Its users' clients (the store lists them per node): gone from the Admin UI too.
        let sockets: Vec<String> = conn.smembers(state.key(&["node-socks", &node])).await?;
        (state.on_clients_gone)(&sockets);
        tracing::warn!(node, users = users.len(), "reaping a dead node");
        for user in &users {
            let _: () = conn.hdel(state.key(&["presence", user]), format!("n:{node}")).await?;
            (state.on_gone)(user.clone(), node.clone()).await;
            if let Err(e) = state.store.schedule_offline_check(user, state.grace_ms).await {
                tracing::warn!(user, "offline check: {e}");
            }
        }
        let _: () = redis::pipe()
            .del(state.key(&["node-users", &node]))
            .del(state.key(&["node-socks", &node]))
            .hdel(state.key(&["nodes"]), &node)
            .query_async(conn)
            .await?;
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub node_id: String,
    pub connections: u64,
}

pub struct ClusterStats {
    pub stats: Stats,
    pub nodes: Vec<NodeInfo>,
}

/// This node's figures (`own`) plus every other live node's last published ones.
pub async fn cluster_stats(redis: Option<&RedisLink>, prefix: &str, node_id: &str, own: Stats) -> ClusterStats {
    let mut nodes = vec![NodeInfo { node_id: node_id.to_string(), connections: own.total_connections }];
    let mut total = own.clone();
    if let Some(redis) = redis {
        match others(redis, prefix, node_id).await {
            Ok((others, online)) => {
                for (id, s) in others {
                    total.add(&s);
                    nodes.push(NodeInfo { node_id: id, connections: s.total_connections });
                }
                // Users online on two nodes count once.
                total.online_users = online.max(own.online_users);
            }
            Err(e) => tracing::warn!("cluster stats: {e}; showing this node only"),
        }
    }
    ClusterStats { stats: total, nodes }
}

async fn others(redis: &RedisLink, prefix: &str, node_id: &str) -> redis::RedisResult<(Vec<(String, Stats)>, u64)> {
    let mut conn = redis.commands();
    // The others' figures expire with their heartbeat: a missing one is a dead node.
    let nodes: Vec<String> = conn.hkeys(redis_key(prefix, &["nodes"])).await?;
    let live: Vec<String> = nodes.into_iter().filter(|id| id != node_id).collect();
    let mut out = Vec::new();
    if !live.is_empty() {
        let keys: Vec<String> = live.iter().map(|id| redis_key(prefix, &["node-stats", id])).collect();
        let raw: Vec<Option<String>> = conn.mget(keys).await?;
        for (id, r) in live.into_iter().zip(raw) {
            if let Some(s) = r.and_then(|r| serde_json::from_str::<Stats>(&r).ok()) {
                out.push((id, s));
            }
        }
    }
    let online: u64 = conn.scard(redis_key(prefix, &["online"])).await?;
    Ok((out, online))
}
