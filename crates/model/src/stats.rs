//! A node's figures (connections, subscriptions per channel, rooms, online users) for `stats`,
//! `/health`, `/api/stats` and `/metrics`, and their sum over the cluster: each node publishes its
//! own in Redis with its heartbeat (see `cluster/liveness.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hub::Hub;
use crate::names;
use crate::session::Counters;

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
pub async fn local_stats(hub: &Hub, counters: &Counters) -> Stats {
    let rooms = hub.local_rooms().await;
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
    let total = counters.connections().max(0) as u64;
    let authenticated = counters.authenticated().max(0) as u64;
    Stats {
        total_connections: total,
        authenticated_connections: authenticated,
        anonymous_connections: total.saturating_sub(authenticated),
        total_subscriptions: by_channel.values().sum(),
        connections_by_channel: by_channel,
        rooms: chat_rooms,
        online_users: counters.online_users() as u64,
    }
}
