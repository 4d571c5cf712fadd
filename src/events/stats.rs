//! `stats` (admins only, SPEC §7) and the node's own figures that `/health` and `/api/stats` use.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use socketioxide::adapter::Adapter;
use socketioxide::SocketIo;

use super::Ctx;
use crate::error::{ApiError, HandlerResult};
use crate::names;
use crate::state::AppState;

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
pub async fn local_stats<A: Adapter>(io: &SocketIo<A>, state: &AppState) -> Stats {
    let rooms = io.local().rooms().await.unwrap_or_default();
    let mut by_channel = BTreeMap::new();
    let mut chat_rooms = 0;
    for room in rooms {
        if let Some(channel) = room.strip_prefix(names::CHANNEL_PREFIX) {
            let n = io.local().within(room.clone()).sockets().len() as u64;
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

pub async fn stats<A: Adapter>(ctx: &Ctx<A>) -> HandlerResult {
    ctx.user()?;
    if !ctx.session.is_admin() {
        return Err(ApiError::forbidden("Admin role required"));
    }
    let data = crate::cluster::cluster_stats(&ctx.io, &ctx.state).await;
    Ok(serde_json::json!({ "success": true, "data": data.stats }))
}
