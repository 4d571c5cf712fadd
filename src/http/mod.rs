//! HTTP routes on the gateway's port (SPEC §8).

pub mod api;
pub mod compact;
pub mod conn;
pub mod health;

use axum::routing::{get, post};
use axum::Router;
use socketioxide::adapter::Adapter;
use socketioxide::SocketIo;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::state::AppState;

/// What every route gets: the node's state and the Socket.IO server to emit through.
pub struct Api<A: Adapter> {
    pub state: AppState,
    pub io: SocketIo<A>,
}

impl<A: Adapter> Clone for Api<A> {
    fn clone(&self) -> Self {
        Api { state: self.state.clone(), io: self.io.clone() }
    }
}

/// The HTTP routes; the Socket.IO layer is added around them by `startup`.
pub fn router<A: Adapter>(api: Api<A>) -> Router {
    let limit = api.state.config.max_payload_bytes as usize;
    Router::new()
        .route("/health", get(health::health::<A>))
        .route("/metrics", get(health::metrics::<A>))
        .route("/api/stats", get(api::stats::<A>))
        .route("/ws/stats", get(api::stats::<A>))
        .route("/api/broadcast", post(api::broadcast::<A>))
        .route("/ws/broadcast", post(api::broadcast::<A>))
        .route("/api/publish", post(api::publish::<A>))
        .route("/api/users/{user_id}/disconnect", post(api::disconnect_user::<A>))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(api)
}

/// CORS from `CORS_ORIGINS`: `*` allows any origin without credentials; a list allows exactly those,
/// with credentials (socket.io-client `withCredentials`).
pub fn cors(origins: &str) -> anyhow::Result<CorsLayer> {
    let origins = origins.trim();
    if origins == "*" {
        return Ok(CorsLayer::new().allow_origin(Any).allow_methods(Any).allow_headers(Any));
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
    use axum::http::{header, Method};
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(list))
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::HeaderName::from_static("x-api-key")]))
}
