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

pub async fn health(State(api): State<Api>) -> Json<Value> {
    let state = &api.state;
    let redis = redis_status(state);
    let channels = local_stats(state).await.connections_by_channel.len();
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
