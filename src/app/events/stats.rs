//! `stats` (admins only, SPEC §7).

use super::Ctx;
use crate::model::error::{ApiError, HandlerResult};

pub async fn stats(ctx: &Ctx) -> HandlerResult {
    ctx.user()?;
    if !ctx.session.is_admin() {
        return Err(ApiError::forbidden("Admin role required"));
    }
    let data = crate::model::stats::cluster_stats(&ctx.state).await;
    Ok(serde_json::json!({ "success": true, "data": data.stats }))
}
