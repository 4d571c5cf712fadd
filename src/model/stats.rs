//! A node's figures (connections, subscriptions per channel, rooms, online users) for `stats`,
//! `/health`, `/api/stats` and `/metrics`, and their sum over the cluster: each node publishes its
//! own in Redis with its heartbeat (see `cluster.rs`).

use std::collections::BTreeMap;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::app::state::AppState;
use crate::model::names;

/// The `stats` data: one node's, or the sum over the cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub total_connections: u64,
    pub authenticated_connections: u64,
    pub anonymous_connections: u64,
    pub total_subscriptions: u64,
    pub connections_by_channel: BTreeMap<String, u64>,
    pub rooms: u64,
    pub online_users: u64,
}

impl Stats {
    /// Adds another node's figures (online users may be counted on two nodes: see `cluster`).
    pub fn add(&mut self, other: &Stats) {
        self.total_connections += other.total_connections;
        self.authenticated_connections += other.authenticated_connections;
        self.anonymous_connections += other.anonymous_connections;
        self.total_subscriptions += other.total_subscriptions;
        for (c, n) in &other.connections_by_channel {
            *self.connections_by_channel.entry(c.clone()).or_default() += n;
        }
        self.rooms += other.rooms;
        self.online_users += other.online_users;
    }
}

/// This node's figures, read from the adapter's local rooms and the connection counters.
pub async fn local_stats(state: &AppState) -> Stats {
    let rooms = state.hub.local_rooms().await;
    let mut by_channel = BTreeMap::new();
    let mut chat_rooms = 0;
    for (room, n) in rooms {
        if let Some(channel) = room.strip_prefix(names::CHANNEL_PREFIX) {
            if n > 0 {
                by_channel.insert(channel.to_string(), n);
            }
        } else if room.starts_with(names::CHAT_PREFIX) {
            chat_rooms += 1;
        }
    }
    let total = state.counters.connections().max(0) as u64;
    let authenticated = state.counters.authenticated().max(0) as u64;
    Stats {
        total_connections: total,
        authenticated_connections: authenticated,
        anonymous_connections: total.saturating_sub(authenticated),
        total_subscriptions: by_channel.values().sum(),
        connections_by_channel: by_channel,
        rooms: chat_rooms,
        online_users: state.counters.online_users() as u64,
    }
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

/// This node's figures plus every other live node's last published ones.
pub async fn cluster_stats(state: &AppState) -> ClusterStats {
    let own = local_stats(state).await;
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
    redis: &crate::storage::redis_link::RedisLink,
) -> redis::RedisResult<(Vec<(String, Stats)>, u64)> {
    let mut conn = redis.commands();
    // The others' figures expire with their heartbeat: a missing one is a dead node.
    let nodes: Vec<String> = conn.hkeys(state.redis_key(&["nodes"])).await?;
    let live: Vec<String> = nodes.into_iter().filter(|id| *id != state.node_id).collect();
    let mut out = Vec::new();
    if !live.is_empty() {
        let keys: Vec<String> = live.iter().map(|id| state.redis_key(&["node-stats", id])).collect();
        let raw: Vec<Option<String>> = conn.mget(keys).await?;
        for (id, r) in live.into_iter().zip(raw) {
            if let Some(s) = r.and_then(|r| serde_json::from_str::<Stats>(&r).ok()) {
                out.push((id, s));
            }
        }
    }
    let online: u64 = conn.scard(state.redis_key(&["online"])).await?;
    Ok((out, online))
}
