//! The admin REST API (SPEC §8): stats, broadcast, publish, disconnect a user.
//!
//! Every route takes an admin JWT (`Authorization: Bearer`) or `X-API-Key`; 401 without, 403 for a
//! non-admin token, 400 `{error}` for a bad body, 413 for one over `MAX_PAYLOAD_BYTES`.

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::Api;
use rtg_app::delivery::{self, EmitRequest};
use rtg_app::publications::Pub;
use rtg_model::names;

/// A JSON error response `{error}`.
pub struct HttpError(pub StatusCode, pub String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad_request(msg: impl Into<String>) -> HttpError {
    HttpError(StatusCode::BAD_REQUEST, msg.into())
}

/// Proof that the caller is an admin (admin JWT) or a server holding `API_KEY`.
pub struct Admin;

impl FromRequestParts<Api> for Admin {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, HttpError> {
        let unauthorized = |m: &str| HttpError(StatusCode::UNAUTHORIZED, m.to_string());
        if let Some(key) = parts.headers.get("x-api-key") {
            let Some(expected) = api.state.config.api_key.as_deref().filter(|k| !k.is_empty()) else {
                return Err(unauthorized("API key not configured"));
            };
            return if keys_match(key.as_bytes(), expected.as_bytes()) {
                Ok(Admin)
            } else {
                Err(unauthorized("Invalid API key"))
            };
        }
        let bearer = parts
            .headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("Authentication required"))?;
        let verified = api.state.auth.verify(bearer).map_err(|e| unauthorized(&e.to_string()))?;
        if verified.user.is_admin() {
            Ok(Admin)
        } else {
            Err(HttpError(StatusCode::FORBIDDEN, "Admin role required".into()))
        }
    }
}

/// Compares a presented key with the configured one without telling, by timing, how much of it (or
/// of its length) was right: both are hashed to fixed-length SHA-256 digests, and every byte of the
/// digests is compared whatever the earlier ones were.
fn keys_match(presented: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(presented), Sha256::digest(expected));
    let diff = a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A JSON body whose rejections are `{error}` with 400, or 413 when over the size limit.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => {
                let status = rejection.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    Err(HttpError(status, "Payload too large".into()))
                } else {
                    Err(bad_request(rejection.body_text()))
                }
            }
        }
    }
}

/// `GET /api/stats`: the cluster's `stats` data, flat, plus `nodes`.
pub async fn stats(_: Admin, State(api): State<Api>) -> Json<Value> {
    let cluster = api.state.cluster_stats().await;
    let mut body = serde_json::to_value(&cluster.stats).unwrap_or_else(|_| json!({}));
    body["nodes"] = serde_json::to_value(&cluster.nodes).unwrap_or_else(|_| json!([]));
    Json(body)
}

/// `POST /api/broadcast` `{event, data, room?|channel?|userId?|socketId?}`.
pub async fn broadcast(
    _: Admin,
    State(api): State<Api>,
    JsonBody(req): JsonBody<EmitRequest>,
) -> Result<Response, HttpError> {
    let target = req.target().map_err(bad_request)?;
    let scope = api.emit(&req, &target).await?;
    Ok(answer(scope))
}

pub use rtg_app::delivery::Scope;

/// `200 {success:true}`; `202` with `scope:"node"` and a warning when only this node was reached.
fn answer(scope: Scope) -> Response {
    match scope {
        Scope::Cluster => Json(json!({ "success": true })).into_response(),
        Scope::Node => (
            axum::http::StatusCode::ACCEPTED,
            Json(json!({
                "success": true,
                "scope": "node",
                "warning": "Redis unavailable: delivered to this node's sockets only",
            })),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
pub struct PublishRequest {
    channel: String,
    #[serde(default)]
    data: Value,
}

/// `POST /api/publish` `{channel, data}`: the same as a Redis ingress publish.
pub async fn publish(
    _: Admin,
    State(api): State<Api>,
    JsonBody(req): JsonBody<PublishRequest>,
) -> Result<Response, HttpError> {
    if !names::valid_id(&req.channel) {
        return Err(bad_request("invalid channel"));
    }
    let scope = api.publish(&req.channel, &req.data).await?;
    Ok(answer(scope))
}

/// `POST /api/users/{userId}/disconnect`: closes every socket of the user, on every node.
pub async fn disconnect_user(
    _: Admin,
    State(api): State<Api>,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, HttpError> {
    if user_id.is_empty() || user_id.len() > 128 {
        return Err(bad_request("invalid userId"));
    }
    let room = names::user(&user_id);
    // The store counts the user's clients on every node and transport; the hub's count covers the
    // clients it reached directly (and stands in while Redis is away).
    let counted = api.state.store.sockets_of(&user_id).await.unwrap_or(0) as usize;
    let n = api.state.hub.disconnect(&room).await.map_err(internal)?.max(counted);
    tracing::info!(user_id, disconnected = n, "user disconnected by the API");
    Ok(Json(json!({ "success": true, "disconnected": n })))
}

fn internal(e: impl std::fmt::Display) -> HttpError {
    tracing::warn!("api: {e}");
    HttpError(StatusCode::SERVICE_UNAVAILABLE, format!("Delivery failed: {e}"))
}

impl Api {
    /// Emits through Redis when configured (see `delivery::send`).
    pub async fn emit(&self, req: &EmitRequest, target: &delivery::Target) -> Result<Scope, HttpError> {
        self.state.send(req, target).await.map_err(internal)
    }

    /// The same as a Redis ingress publish; local delivery without Redis or while it is down.
    pub async fn publish(&self, channel: &str, data: &Value) -> Result<Scope, HttpError> {
        self.state.metrics.event_out("event");
        let mut scope = Scope::Cluster;
        let payload = serde_json::to_string(data).map_err(internal)?;
        if let Some(redis) = &self.state.redis {
            match redis.publish(channel, payload.clone()).await {
                Ok(()) => return Ok(Scope::Cluster),
                Err(e) => {
                    tracing::warn!("publish via redis failed, delivering locally only: {e:#}");
                    scope = Scope::Node;
                }
            }
        }
        self.state.metrics.ingress_messages.increment(1);
        // Without Redis this node keeps the history; while Redis is down nobody can (no offset).
        let keep = scope == Scope::Cluster;
        let p = Pub { channel: channel.to_string(), data: data.clone(), keep };
        self.state.publications.publish(p).await;
        Ok(scope)
    }
}

#[cfg(test)]
mod tests {
    use super::keys_match;

    #[test]
    fn api_keys_compare_by_digest() {
        assert!(keys_match(b"s3cret-key", b"s3cret-key"));
        assert!(!keys_match(b"s3cret-kez", b"s3cret-key"));
        // A prefix, a longer key and the empty key are refused like any wrong key (no length shortcut).
        assert!(!keys_match(b"s3cret", b"s3cret-key"));
        assert!(!keys_match(b"s3cret-key-and-more", b"s3cret-key"));
        assert!(!keys_match(b"", b"s3cret-key"));
    }
}
