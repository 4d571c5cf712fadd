//! What every front end shows the same way. The handshake as the Admin UI lists it (credentials
//! redacted).

use serde_json::Value;

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
