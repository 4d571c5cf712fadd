//! `stats` (admins only, SPEC §7).

use super::Ctx;
use rtg_model::error::{ApiError, HandlerResult};

pub async fn stats(ctx: &Ctx) -> HandlerResult {
    ctx.user()?;
    if !ctx.session.is_admin() {
        return Err(ApiError::forbidden("Admin role required"));
    }
    let data = ctx.state.cluster_stats().await;
    Ok(serde_json::json!({ "success": true, "data": data.stats }))
}
