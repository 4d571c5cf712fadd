//! `refresh-token` (SPEC §2): extends a live socket's authentication before its token expires, and
//! replaces its claims with the new token's.

use serde::Deserialize;
use serde_json::json;

use super::Ctx;
use crate::auth::Verified;
use rtg_model::client::Client;
use rtg_model::error::{ApiError, Code, HandlerResult};
use rtg_model::id::ClientId;

use crate::state::AppState;
use rtg_model::session::{ExpiryStep, Session};

/// `{token}` or the bare token string.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum RefreshRequest {
    Object { token: String },
    Bare(String),
}

/// `{success, exp}`, plus `unsubscribed: [...]` when the new claims no longer allow some of the
/// socket's channels (see [`refresh`]).
pub async fn refresh_token(ctx: &Ctx, req: RefreshRequest) -> HandlerResult {
    let user = ctx.user()?;
    let token = match &req {
        RefreshRequest::Object { token } | RefreshRequest::Bare(token) => token,
    };
    let verified = ctx.state.auth.verify(token).map_err(|e| ApiError::new(Code::Unauthenticated, e.to_string()))?;
    if verified.user.user_id != user.user_id {
        return Err(ApiError::forbidden("Token belongs to another user"));
    }
    let exp = verified.exp;
    let dropped = refresh(&ctx.state, &ctx.client, &ctx.session, verified).await;
    tracing::info!(sid = %ctx.id(), user_id = %user.user_id, exp, dropped = dropped.len(), "token refreshed");
    let mut ack = json!({ "success": true, "exp": exp });
    if !dropped.is_empty() {
        ack["unsubscribed"] = json!(dropped);
    }
    Ok(ack)
}

/// A refresh with a verified token of the session's own user, on either transport: the new claims
/// (role, email, name) replace the old at once, the expiry moves, and the channel subscriptions that
/// the new claims no longer allow (an admin's `system:*` after a `role:user` token) are dropped.
/// Returns those channels. Chat rooms stay joined: a created room's access is checked when it is
/// joined, as SPEC §4 has it.
pub async fn refresh(state: &AppState, client: &Client, session: &Session, verified: Verified) -> Vec<String> {
    if !session.set_claims(verified.user) {
        return Vec::new();
    }
    extend(state, client.id(), session, verified.exp);
    let user = session.user();
    let mut dropped = Vec::new();
    for room in client.rooms() {
        let Some(channel) = room.strip_prefix(rtg_model::names::CHANNEL_PREFIX) else { continue };
        if !state.policy.may_subscribe(user.as_deref(), channel) {
            dropped.push(channel.to_string());
        }
    }
    for channel in &dropped {
        state.publications.unsubscribe(client.clone(), channel.clone()).await;
    }
    dropped
}

/// Moves a session's expiry to `exp` (a verified token of the same user): the old expiry's warning
/// is cancelled and a new one scheduled.
pub fn extend(state: &AppState, id: ClientId, session: &Session, exp: u64) {
    let old = session.exp();
    session.set_exp(exp);
    state.expiry.cancel(old, ExpiryStep::Warn, id);
    state.expiry.schedule(exp, ExpiryStep::Warn, id);
}
