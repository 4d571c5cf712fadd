//! `GET /health` and `GET /metrics` (public).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::Api;
use rtg_model::stats::local_stats;

/// `"up"`, `"down"` or `"disabled"`.
pub fn redis_status(api_state: &rtg_app::state::AppState) -> &'static str {
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

async fn active_channels(state: &rtg_app::state::AppState) -> usize {
    {
        let last = CHANNELS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((node, at, n)) = &*last {
            if *node == state.node_id && at.elapsed() < CHANNELS_EVERY {
                return *n;
            }
        }
    }
    let n = local_stats(&state.hub, &state.counters).await.connections_by_channel.len();
    *CHANNELS.lock().unwrap_or_else(|e| e.into_inner()) = Some((state.node_id.clone(), std::time::Instant::now(), n));
    n
}

pub async fn health(State(api): State<Api>) -> Json<Value> {
    let state = &api.state;
    let redis = redis_status(state);
    let channels = active_channels(state).await;
    let mut body = json!({
        "status": if redis == "down" { "degraded" } else { "ok" },
        "service": "realtime",
        "connections": state.counters.connections(),
        "authenticated": state.counters.authenticated(),
        "activeChannels": channels,
        "redis": redis,
        "nodeId": state.node_id,
        "uptimeSeconds": state.started.elapsed().as_secs(),
        "timestamp": rtg_model::clock::iso_now(),
    });
    if let Some(link) = &state.redis {
        // Where Redis is reached (SPEC §9): the mode, the server in use, the last failover followed.
        body["redisMode"] = json!(link.mode().name());
        body["redisMaster"] = json!(link.master());
        body["redisLastFailover"] = json!(link.last_failover());
        if let Some(shards) = link.shards() {
            body["redisShards"] = json!(shards);
        }
    }
    Json(body)
}

pub async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    let state = &api.state;
    let stats = local_stats(&state.hub, &state.counters).await;
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
    let mut text = m.render();
    if let Some(link) = &state.redis {
        text.push_str(&redis_mode_metrics(link));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// `realtime_redis_mode{mode,master} 1` and the time of the last failover followed (0: none).
fn redis_mode_metrics(link: &rtg_storage::redis_link::RedisLink) -> String {
    let failover = link
        .last_failover()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
    let master = link.master().replace(['\\', '"', '\n'], "_");
    let shards = link.shards().map_or(String::new(), |n| {
        format!(
            "# HELP realtime_redis_shards Masters of the Redis Cluster\n# TYPE realtime_redis_shards gauge\nrealtime_redis_shards {n}\n"
        )
    });
    format!(
        "# HELP realtime_redis_mode How this node reaches Redis, and the server (master) in use\n\
         # TYPE realtime_redis_mode gauge\n\
         realtime_redis_mode{{mode=\"{}\",master=\"{master}\"}} 1\n\
         # HELP realtime_redis_last_failover_seconds When this node last followed a failover (Unix seconds; 0: never)\n\
         # TYPE realtime_redis_last_failover_seconds gauge\n\
         realtime_redis_last_failover_seconds {failover}\n{shards}",
        link.mode().name()
    )
}
