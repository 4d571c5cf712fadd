//! `refresh-token` (SPEC §2): extends a live socket's authentication before its token expires.

use serde::Deserialize;

use super::Ctx;
use crate::error::{ApiError, Code, HandlerResult};
use socketioxide::socket::Sid;

use crate::state::{AppState, ExpiryStep, Session};

/// `{token}` or the bare token string.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum RefreshRequest {
    Object { token: String },
    Bare(String),
}

pub async fn refresh_token(ctx: &Ctx, req: RefreshRequest) -> HandlerResult {
    let user = ctx.user()?;
    let token = match &req {
        RefreshRequest::Object { token } | RefreshRequest::Bare(token) => token,
    };
    let verified = ctx.state.auth.verify(token).map_err(|e| ApiError::new(Code::Unauthenticated, e.to_string()))?;
    if verified.user.user_id != user.user_id {
        return Err(ApiError::forbidden("Token belongs to another user"));
    }
    extend(&ctx.state, ctx.id(), &ctx.session, verified.exp);
    tracing::info!(sid = %ctx.id(), user_id = %user.user_id, exp = verified.exp, "token refreshed");
    Ok(serde_json::json!({ "success": true, "exp": verified.exp }))
}

/// Moves a session's expiry to `exp` (a verified token of the same user): the old expiry's warning
/// is cancelled and a new one scheduled.
pub fn extend(state: &AppState, id: Sid, session: &Session, exp: u64) {
    let old = session.exp();
    session.set_exp(exp);
    state.expiry.cancel(old, ExpiryStep::Warn, id);
    state.expiry.schedule(exp, ExpiryStep::Warn, id);
}
