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

use redis::AsyncCommands;
use serde::Serialize;
use socketioxide::adapter::Adapter;
use socketioxide::SocketIo;

use crate::events::stats::{local_stats, Stats};
use crate::state::AppState;
use crate::store::redis::NODE_LIVENESS_MS;

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

fn key(state: &AppState, parts: &[&str]) -> String {
    let mut k = state.config.redis_prefix.clone();
    for p in parts {
        k.push(':');
        k.push_str(p);
    }
    k
}

/// This node's figures plus every other live node's last published ones.
pub async fn cluster_stats<A: Adapter>(io: &SocketIo<A>, state: &AppState) -> ClusterStats {
    let own = local_stats(io, state).await;
    let mut nodes = vec![NodeInfo { node_id: state.node_id.clone(), connections: own.total_connections }];
    let mut total = own.clone();
    if let Some(redis) = &state.redis {
        match others(state, redis).await {
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

async fn others(
    state: &AppState,
    redis: &crate::redis_link::RedisLink,
) -> redis::RedisResult<(Vec<(String, Stats)>, u64)> {
    let mut conn = redis.commands();
    // The others' figures expire with their heartbeat: a missing one is a dead node.
    let nodes: Vec<String> = conn.hkeys(key(state, &["nodes"])).await?;
    let live: Vec<String> = nodes.into_iter().filter(|id| *id != state.node_id).collect();
    let mut out = Vec::new();
    if !live.is_empty() {
        let keys: Vec<String> = live.iter().map(|id| key(state, &["node-stats", id])).collect();
        let raw: Vec<Option<String>> = conn.mget(keys).await?;
        for (id, r) in live.into_iter().zip(raw) {
            if let Some(s) = r.and_then(|r| serde_json::from_str::<Stats>(&r).ok()) {
                out.push((id, s));
            }
        }
    }
    let online: u64 = conn.scard(key(state, &["online"])).await?;
    Ok((out, online))
}

/// The heartbeat (every second) and the reaper of dead nodes (every few seconds).
pub fn spawn_heartbeat<A: Adapter>(io: SocketIo<A>, state: AppState) -> Option<tokio::task::JoinHandle<()>> {
    // `tick` below: the first beat is immediate.
    let redis = state.redis.clone()?;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        let mut was_up = false;
        loop {
            tick.tick().await;
            n += 1;
            let stats = local_stats(&io, &state).await;
            let mut conn = redis.commands();
            // The liveness key's previous value: missing when this is the first beat, when the
            // node was away longer than its lifetime, or when Redis lost its data (a restart
            // without persistence). Each of those needs this node's presence written again.
            let beat: redis::RedisResult<(Option<String>,)> = redis::pipe()
                .cmd("SET")
                .arg(key(&state, &["node", &state.node_id]))
                .arg(1)
                .arg("PX")
                .arg(NODE_LIVENESS_MS)
                .arg("GET")
                .hset(key(&state, &["nodes"]), &state.node_id, crate::auth::unix_now_ms())
                .ignore()
                .set_ex(
                    key(&state, &["node-stats", &state.node_id]),
                    serde_json::to_string(&stats).unwrap_or_default(),
                    NODE_LIVENESS_MS / 1000,
                )
                .ignore()
                .query_async(&mut conn)
                .await;
            redis.set_up(beat.is_ok());
            let lost = matches!(&beat, Ok((None,)));
            if beat.is_ok() && (!was_up || lost) {
                // First beat, Redis is back, or it forgot this node: make presence match this
                // node's live sockets.
                resync(&io, &state).await;
            }
            was_up = beat.is_ok();
            if beat.is_ok() && n.is_multiple_of(3) {
                if let Err(e) = reap(&io, &state, &mut conn).await {
                    tracing::debug!("reaper: {e}");
                }
            }
        }
    }))
}

/// Rewrites this node's presence counts from its live sockets.
async fn resync<A: Adapter>(io: &SocketIo<A>, state: &AppState) {
    let mut local: Vec<(crate::auth::User, u64)> = Vec::new();
    for s in io.local().sockets() {
        let Some(user) = s.extensions.get::<std::sync::Arc<crate::state::Session>>().and_then(|s| s.user.clone())
        else {
            continue;
        };
        match local.iter_mut().find(|(u, _)| u.user_id == user.user_id) {
            Some((_, n)) => *n += 1,
            None => local.push((user, 1)),
        }
    }
    match state.store.resync(&local).await {
        Ok(gone) => {
            tracing::info!(users = local.len(), stale = gone.len(), "presence resynced with redis");
            for user_id in gone {
                if let Err(e) = state.store.schedule_offline_check(&user_id, state.config.presence_grace_ms).await {
                    tracing::warn!(user_id, "offline check: {e}");
                }
            }
        }
        Err(e) => tracing::warn!("presence resync: {e}"),
    }
}

/// Removes dead nodes: their presence entries go, and their users get the presence grace.
async fn reap<A: Adapter>(
    io: &SocketIo<A>,
    state: &AppState,
    conn: &mut crate::redis_link::RetryConn,
) -> redis::RedisResult<()> {
    let nodes: Vec<String> = conn.hkeys(key(state, &["nodes"])).await?;
    for node in nodes {
        if node == state.node_id {
            continue;
        }
        let alive: bool = conn.exists(key(state, &["node", &node])).await?;
        if alive {
            continue;
        }
        let won: bool = redis::cmd("SET")
            .arg(key(state, &["reap", &node]))
            .arg(&state.node_id)
            .arg("NX")
            .arg("EX")
            .arg(60)
            .query_async(conn)
            .await?;
        if !won {
            continue;
        }
        let users: Vec<String> = conn.smembers(key(state, &["node-users", &node])).await?;
        tracing::warn!(node, users = users.len(), "reaping a dead node");
        for user in &users {
            let _: () = conn.hdel(key(state, &["presence", user]), format!("n:{node}")).await?;
            crate::events::calls::node_gone(io, state, user, &node).await;
            if let Err(e) = state.store.schedule_offline_check(user, state.config.presence_grace_ms).await {
                tracing::warn!(user, "offline check: {e}");
            }
        }
        let _: () = redis::pipe()
            .del(key(state, &["node-users", &node]))
            .hdel(key(state, &["nodes"]), &node)
            .query_async(conn)
            .await?;
    }
    Ok(())
}
