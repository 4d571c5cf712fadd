//! Events that are not the gateway's own, handed to the app's backend through the event proxy
//! (SPEC §14, `app/proxy.rs`), and its answer carried out here, through the same operations as the
//! gateway's own handlers: `hub.join` / `hub.leave` for the caller's rooms, `delivery::send` for emits.

use serde_json::{json, Value};

use super::Ctx;
use crate::proxy::{Answer, Caller, EventProxy};
use rtg_model::error::HandlerResult;
use rtg_model::names;

/// Sends the event to the backend, carries out its answer and acks with the answer's `ack`.
pub async fn call(ctx: &Ctx, proxy: &EventProxy, event: &str, args: Vec<Value>) -> HandlerResult {
    let caller = Caller { socket_id: ctx.id().to_string(), user: ctx.user.as_deref(), node_id: &ctx.state.node_id };
    let answer = proxy.call(&ctx.state.metrics, caller, event, args).await?;
    carry_out(ctx, &answer).await;
    Ok(answer.ack.unwrap_or_else(|| json!({ "success": true })))
}

/// The answer's room changes for the caller, then its emits (as `POST /api/broadcast`): a backend
/// that joins the caller to a room and announces it there reaches the caller too.
async fn carry_out(ctx: &Ctx, answer: &Answer) {
    let cap = ctx.state.config.max_rooms_per_socket as usize;
    for id in answer.join.iter().take(100).filter(|id| names::valid_room_id(id)) {
        ctx.hub().join(&*ctx.client, &names::chat(id), Some(cap));
    }
    for id in answer.leave.iter().take(100) {
        ctx.hub().leave(&*ctx.client, &names::chat(id));
    }
    for req in answer.emit.iter().take(100) {
        match req.target() {
            Ok(target) => {
                if let Err(e) = ctx.state.send(req, &target).await {
                    tracing::warn!(event = %req.event, "event proxy emit: {e}");
                }
            }
            Err(e) => tracing::warn!(event = %req.event, "event proxy: emit dropped: {e}"),
        }
    }
}
