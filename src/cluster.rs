//! Cluster-wide figures: this node alone, or (with Redis) every live node's published figures.

use serde::Serialize;
use socketioxide::adapter::Adapter;
use socketioxide::SocketIo;

use crate::events::stats::{local_stats, Stats};
use crate::state::AppState;

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

pub async fn cluster_stats<A: Adapter>(io: &SocketIo<A>, state: &AppState) -> ClusterStats {
    let own = local_stats(io, state).await;
    let nodes = vec![NodeInfo { node_id: state.node_id.clone(), connections: own.total_connections }];
    ClusterStats { stats: own, nodes }
}
