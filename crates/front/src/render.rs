//! What the front ends render the same way, in one place: the greeting, the body of a failed ack,
//! the `error` event, the close of a flooding client, and the handshake as the Admin UI lists it
//! (credentials redacted). Each front end puts these in its own envelope (a Socket.IO ack or event,
//! a `/ws` frame, a dialect's frame).

use serde_json::{json, Map, Value};

use rtg_app::events::Greeting;
use rtg_model::error::{AckError, ApiError, ErrorEvent};

/// The close of a client past its budget of refused events (`/ws` and its dialects: 1008).
pub const FLOOD_CLOSE: (u16, &str) = (1008, "Rate limit exceeded");

/// Socket.IO's `connected` (SPEC §2): `{sessionId, userId, user, authorizedChannels, serverTime}`.
pub fn socket_io_greeting(g: &Greeting) -> Value {
    json!({
        "sessionId": g.id.to_string(),
        "userId": g.user_id(),
        "user": g.user.as_deref(),
        "authorizedChannels": g.authorized_channels,
        "serverTime": g.at_ms,
    })
}

/// The fields of `/ws`'s `connected` frame (SPEC §10), `type` and `timestamp` added by the frame:
/// `{connectionId, userId, user, authorizedChannels}`.
pub fn ws_greeting(g: &Greeting) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("connectionId".into(), json!(g.id.to_string()));
    f.insert("userId".into(), json!(g.user_id()));
    f.insert("user".into(), json!(g.user.as_deref()));
    f.insert("authorizedChannels".into(), json!(g.authorized_channels));
    f
}

/// The body of a failed ack, on every front end: `{success:false, error, code}`.
pub fn ack_error(e: &ApiError) -> Value {
    serde_json::to_value(AckError { success: false, error: &e.message, code: e.code }).unwrap_or(Value::Null)
}

/// Socket.IO's `error` event for a failing event sent without an ack: `{event, error, code}`.
pub fn error_event(event: &str, e: &ApiError) -> Value {
    serde_json::to_value(ErrorEvent { event, error: &e.message, code: e.code }).unwrap_or(Value::Null)
}

/// Request headers for display: credentials replaced.
pub fn redacted_headers(headers: &axum::http::HeaderMap) -> serde_json::Map<String, Value> {
    headers
        .iter()
        .map(|(k, v)| {
            let shown = match k.as_str() {
                "authorization" | "cookie" | "sec-websocket-protocol" | "x-api-key" => "[redacted]".to_string(),
                _ => v.to_str().unwrap_or("(binary)").chars().take(256).collect(),
            };
            (k.as_str().to_string(), Value::String(shown))
        })
        .collect()
}

/// A query string for display: `token` replaced.
pub fn redacted_query(query: Option<&str>) -> serde_json::Map<String, Value> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .take(32)
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = if k == "token" { "[redacted]".to_string() } else { v.chars().take(256).collect() };
            (k.chars().take(64).collect(), Value::String(v))
        })
        .collect()
}

/// A time as the Admin UI shows a handshake's `time`.
pub fn date(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64).map(|d| d.to_rfc2822()).unwrap_or_default()
}
