//! HTTP routes on the gateway's port (SPEC §8).

pub mod api;
pub mod compact;
pub mod conn;
pub mod engine;
pub mod files;
pub mod health;

use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use rtg_app::state::AppState;

/// What every route gets: the node's state (its hub delivers to the clients).
#[derive(Clone)]
pub struct Api {
    pub state: AppState,
}

/// The HTTP routes; the Socket.IO layer is added around them by `startup`.
pub fn router(api: Api) -> Router {
    let limit = api.state.config.max_payload_bytes as usize;
    Router::new()
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .route("/api/stats", get(api::stats))
        .route("/ws/stats", get(api::stats))
        .route("/api/broadcast", post(api::broadcast))
        .route("/ws/broadcast", post(api::broadcast))
        .route("/api/publish", post(api::publish))
        .route("/api/users/{user_id}/disconnect", post(api::disconnect_user))
        .route("/api/files/{id}", get(files::download))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(api)
}

/// CORS from `CORS_ORIGINS`: `*` allows any origin without credentials; a list allows exactly those,
/// with credentials (socket.io-client `withCredentials`).
pub fn cors(origins: &str) -> anyhow::Result<CorsLayer> {
    let origins = origins.trim();
    use axum::http::{header, Method};
    // A page reading a file (SPEC §13) sees its name and range.
    let expose = [header::CONTENT_DISPOSITION, header::CONTENT_RANGE, header::CONTENT_LENGTH, header::ACCEPT_RANGES];
    if origins == "*" {
        return Ok(CorsLayer::new().allow_origin(Any).allow_methods(Any).allow_headers(Any).expose_headers(expose));
    }
    let list = origins
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| o.parse().map_err(|_| anyhow::anyhow!("CORS_ORIGINS: invalid origin '{o}'")))
        .collect::<anyhow::Result<Vec<axum::http::HeaderValue>>>()?;
    if list.is_empty() {
        anyhow::bail!("CORS_ORIGINS: empty list");
    }
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(list))
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::RANGE,
            header::HeaderName::from_static("x-api-key"),
        ])
        .expose_headers(expose))
}

/// The client's address: when proxy headers are trusted, the last `X-Forwarded-For` entry (the one
/// the trusted proxy wrote; entries before it come from the client and prove nothing), else the
/// TCP peer.
pub fn client_ip(parts: &axum::http::request::Parts, trust_proxy: bool) -> Option<std::net::IpAddr> {
    if trust_proxy {
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.rsplit(',').next())
            .and_then(|ip| ip.trim().parse().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    parts.extensions.get::<axum::extract::ConnectInfo<conn::Peer>>().map(|c| c.0.addr.ip())
}
