//! `GET /health` (public).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

pub async fn health(State(state): State<AppState>) -> Json<Value> {
    let redis = if state.config.redis_url.is_some() {
        "up"
    } else {
        "disabled"
    };
    Json(json!({
        "status": if redis == "down" { "degraded" } else { "ok" },
        "service": "realtime",
        "connections": state.counters.connections(),
        "authenticated": state.counters.authenticated(),
        "activeChannels": 0,
        "redis": redis,
        "nodeId": state.node_id,
        "uptimeSeconds": state.started.elapsed().as_secs(),
        "timestamp": crate::iso_now(),
    }))
}
