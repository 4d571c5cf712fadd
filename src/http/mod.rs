//! HTTP routes on the gateway's port (SPEC §8).

pub mod health;

use axum::routing::get;
use axum::Router;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::state::AppState;

/// The HTTP routes; the Socket.IO layer is added around them by `startup`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .with_state(state)
}

/// CORS from `CORS_ORIGINS`: `*` allows any origin without credentials; a list allows exactly those,
/// with credentials (socket.io-client `withCredentials`).
pub fn cors(origins: &str) -> anyhow::Result<CorsLayer> {
    let origins = origins.trim();
    if origins == "*" {
        return Ok(CorsLayer::new()
            .allow_origin(Any)
            .allow_methods(Any)
            .allow_headers(Any));
    }
    let list = origins
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| {
            o.parse()
                .map_err(|_| anyhow::anyhow!("CORS_ORIGINS: invalid origin '{o}'"))
        })
        .collect::<anyhow::Result<Vec<axum::http::HeaderValue>>>()?;
    if list.is_empty() {
        anyhow::bail!("CORS_ORIGINS: empty list");
    }
    use axum::http::{header, Method};
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(list))
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            "x-api-key".parse().expect("static header name"),
        ]))
}
