//! `refresh-token` (SPEC §2): extends a live socket's authentication before its token expires.

use serde::Deserialize;
use socketioxide::adapter::Adapter;

use super::Ctx;
use crate::error::{ApiError, Code, HandlerResult};
use crate::state::ExpiryStep;

/// `{token}` or the bare token string.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum RefreshRequest {
    Object { token: String },
    Bare(String),
}

pub async fn refresh_token<A: Adapter>(ctx: &Ctx<A>, req: RefreshRequest) -> HandlerResult {
    let user = ctx.user()?;
    let token = match &req {
        RefreshRequest::Object { token } | RefreshRequest::Bare(token) => token,
    };
    let verified = ctx.state.auth.verify(token).map_err(|e| ApiError::new(Code::Unauthenticated, e.to_string()))?;
    if verified.user.user_id != user.user_id {
        return Err(ApiError::forbidden("Token belongs to another user"));
    }
    let old = ctx.session.exp();
    ctx.session.set_exp(verified.exp);
    ctx.state.expiry.cancel(old, ExpiryStep::Warn, ctx.socket.id);
    ctx.state.expiry.schedule(verified.exp, ExpiryStep::Warn, ctx.socket.id);
    tracing::info!(sid = %ctx.socket.id, user_id = %user.user_id, exp = verified.exp, "token refreshed");
    Ok(serde_json::json!({ "success": true, "exp": verified.exp }))
}
