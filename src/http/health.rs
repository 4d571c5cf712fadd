//! `GET /health` and `GET /metrics` (public).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::Api;
use crate::stats::local_stats;

/// `"up"`, `"down"` or `"disabled"`.
pub fn redis_status(api_state: &crate::state::AppState) -> &'static str {
    match &api_state.redis {
        None => "disabled",
        Some(r) if r.is_serving() => "up",
        Some(_) => "down",
    }
}

/// How long `/health` reuses its count of active channels. Counting walks every room of the node;
/// `/health` is public and polled, so a request costs O(1) and the walk happens at most this often.
const CHANNELS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The last count of active channels: (node id, when, count).
static CHANNELS: std::sync::Mutex<Option<(String, std::time::Instant, usize)>> = std::sync::Mutex::new(None);

async fn active_channels(state: &crate::state::AppState) -> usize {
    {
        let last = CHANNELS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((node, at, n)) = &*last {
            if *node == state.node_id && at.elapsed() < CHANNELS_EVERY {
                return *n;
            }
        }
    }
    let n = local_stats(state).await.connections_by_channel.len();
    *CHANNELS.lock().unwrap_or_else(|e| e.into_inner()) = Some((state.node_id.clone(), std::time::Instant::now(), n));
    n
}

pub async fn health(State(api): State<Api>) -> Json<Value> {
    let state = &api.state;
    let redis = redis_status(state);
    let channels = active_channels(state).await;
    Json(json!({
        "status": if redis == "down" { "degraded" } else { "ok" },
        "service": "realtime",
        "connections": state.counters.connections(),
        "authenticated": state.counters.authenticated(),
        "activeChannels": channels,
        "redis": redis,
        "nodeId": state.node_id,
        "uptimeSeconds": state.started.elapsed().as_secs(),
        "timestamp": crate::iso_now(),
    }))
}

pub async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    let state = &api.state;
    let stats = local_stats(state).await;
    let m = &state.metrics;
    m.connections_authenticated.set(stats.authenticated_connections as f64);
    m.connections_anonymous.set(stats.anonymous_connections as f64);
    m.subscriptions.set(stats.total_subscriptions as f64);
    m.channels.set(stats.connections_by_channel.len() as f64);
    m.redis_up.set(match redis_status(state) {
        "up" => 1.0,
        "down" => 0.0,
        _ => -1.0,
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
}
