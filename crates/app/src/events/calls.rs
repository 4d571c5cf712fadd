//! WebRTC call signalling (SPEC §6): the gateway relays offers, answers and ICE candidates between
//! the two parties of a call; media never touches it.
//!
//! A call is stored (ringing → active) so that any node can serve it. The caller's socket joins the
//! adapter room `c:<callId>:a` and the answering callee socket `c:<callId>:b`, so that answers,
//! candidates and the end reach exactly the socket in the call, on whichever node it is. While a
//! call rings, the callee side is every socket of the callee (`u:<callee>`).
//!
//! `MAX_CALLS_PER_USER` counts, for each user, the calls they placed (ringing or answered) and the
//! calls they answered: never a call still ringing *to* them, so that nobody can make another user
//! unreachable by calling them and letting it ring (a fresh call from someone else still rings).
//! An answered call counts for both parties, since each chose to be in it; answering past one's own
//! cap is refused like calling past it. The store checks and counts in one step.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::Ctx;
use crate::state::AppState;
use rtg_model::error::{ApiError, Code, HandlerResult};
use rtg_model::names;
use rtg_model::timers::Job;
use rtg_storage::store::{new_id, Answered, Call, CallState};

/// Largest offer or answer (serialised JSON); SDPs are a few KB.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Largest ICE candidate (serialised JSON).
pub const MAX_CANDIDATE_BYTES: usize = 8 * 1024;

fn caller_room(id: &str) -> String {
    format!("c:{id}:a")
}
fn callee_room(id: &str) -> String {
    format!("c:{id}:b")
}

/// Where the callee side of a call is: the answering socket, or every socket of the callee while ringing.
fn callee_side(call: &Call) -> String {
    match call.state {
        CallState::Active => callee_room(&call.id),
        CallState::Ringing => names::user(&call.callee),
    }
}

fn too_many_calls() -> ApiError {
    ApiError::new(Code::RateLimited, "Too many concurrent calls")
}

fn sized(v: &Value, max: usize, what: &str) -> Result<(), ApiError> {
    let n = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
    if n > max {
        Err(ApiError::new(Code::PayloadTooLarge, format!("{what} is over {max} bytes")))
    } else {
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallUser {
    target_user_id: String,
    offer: Value,
    #[serde(default)]
    call_type: Option<String>,
}

pub async fn call_user(ctx: &Ctx, req: CallUser) -> HandlerResult {
    let user = ctx.user()?;
    if req.target_user_id.is_empty() || req.target_user_id.len() > 128 {
        return Err(ApiError::invalid("targetUserId must be a user id of 1 to 128 characters"));
    }
    if req.target_user_id == user.user_id {
        return Err(ApiError::invalid("Cannot call yourself"));
    }
    if req.offer.is_null() {
        return Err(ApiError::invalid("offer is required"));
    }
    sized(&req.offer, MAX_SDP_BYTES, "offer")?;
    let call_type = req.call_type.unwrap_or_else(|| "video".into());
    if call_type != "audio" && call_type != "video" {
        return Err(ApiError::invalid("callType must be \"audio\" or \"video\""));
    }
    let store = &ctx.state.store;
    if store.sockets_of(&req.target_user_id).await? == 0 {
        return Err(ApiError::new(Code::UserOffline, "User offline"));
    }
    let call = Call {
        id: new_id("call"),
        caller: user.user_id.clone(),
        callee: req.target_user_id,
        caller_sid: ctx.id().to_string(),
        caller_node: ctx.state.node_id.clone(),
        callee_sid: None,
        callee_node: None,
        call_type,
        state: CallState::Ringing,
        created_at: rtg_model::clock::unix_now_ms(),
    };
    if !store.put_call(&call, ctx.state.config.max_calls_per_user as usize).await? {
        return Err(too_many_calls());
    }
    // Without its ring timeout (the wheel full) the call would ring, and count, for good.
    let timeout = Duration::from_millis(ctx.state.config.call_ring_timeout_ms);
    if !ctx.state.timers.schedule(timeout, Job::CallTimeout { call_id: call.id.clone() }) {
        let _ = store.remove_call(&call.id).await;
        return Err(ApiError::new(Code::RateLimited, "Too busy: try again"));
    }
    ctx.hub().join(&*ctx.client, &caller_room(&call.id), None);
    let incoming = json!({
        "callId": call.id, "fromUserId": user.user_id, "fromUser": user, "offer": req.offer, "callType": call.call_type,
    });
    ctx.state.metrics.event_out("incoming-call");
    let _ = ctx.hub().to(names::user(&call.callee)).emit("incoming-call", &incoming).await;
    tracing::info!(call_id = %call.id, caller = %call.caller, callee = %call.callee, "call ringing");
    Ok(json!({ "success": true, "callId": call.id }))
}

/// The call, if the caller is one of its two parties; `NOT_FOUND` for an unknown or ended call.
async fn party_call(ctx: &Ctx, call_id: &str) -> Result<Call, ApiError> {
    let user = ctx.user()?;
    if call_id.is_empty() || call_id.len() > 128 {
        return Err(ApiError::invalid("Invalid callId"));
    }
    let call = ctx.state.store.call(call_id).await?.ok_or_else(|| ApiError::not_found("Call not found"))?;
    if call.caller != user.user_id && call.callee != user.user_id {
        return Err(ApiError::forbidden("Not a party to this call"));
    }
    Ok(call)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallAnswer {
    call_id: String,
    answer: Value,
}

pub async fn call_answer(ctx: &Ctx, req: CallAnswer) -> HandlerResult {
    let call = party_call(ctx, &req.call_id).await?;
    let user = ctx.user()?;
    if call.callee != user.user_id {
        return Err(ApiError::forbidden("Only the callee may answer"));
    }
    if req.answer.is_null() {
        return Err(ApiError::invalid("answer is required"));
    }
    sized(&req.answer, MAX_SDP_BYTES, "answer")?;
    let sid = ctx.id().to_string();
    let cap = ctx.state.config.max_calls_per_user as usize;
    let call = match ctx.state.store.answer_call(&call.id, &sid, &ctx.state.node_id, cap).await? {
        Answered::Yes(call) => *call,
        Answered::NotRinging => return Err(ApiError::forbidden("Call already answered")),
        Answered::AtCap => return Err(too_many_calls()),
    };
    ctx.hub().join(&*ctx.client, &callee_room(&call.id), None);
    let answered = json!({ "callId": call.id, "fromUserId": user.user_id, "answer": req.answer });
    let _ = ctx.hub().to(caller_room(&call.id)).emit("call-answered", &answered).await;
    let elsewhere = json!({ "callId": call.id });
    let _ = ctx
        .hub()
        .to(names::user(&call.callee))
        .except(callee_room(&call.id))
        .emit("call-handled-elsewhere", &elsewhere)
        .await;
    tracing::info!(call_id = %call.id, "call answered");
    Ok(json!({ "success": true }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    call_id: String,
    candidate: Value,
}

pub async fn ice_candidate(ctx: &Ctx, req: IceCandidate) -> HandlerResult {
    let call = party_call(ctx, &req.call_id).await?;
    let user = ctx.user()?;
    sized(&req.candidate, MAX_CANDIDATE_BYTES, "candidate")?;
    let sid = ctx.id().to_string();
    // Only the sockets in the call signal on it: the caller's socket, and the answering callee socket
    // (any callee socket while ringing).
    let to = if call.caller == user.user_id && call.caller_sid == sid {
        callee_side(&call)
    } else if call.callee == user.user_id
        && (call.state == CallState::Ringing || call.callee_sid.as_deref() == Some(sid.as_str()))
    {
        caller_room(&call.id)
    } else {
        return Err(ApiError::forbidden("This socket is not in the call"));
    };
    let note = json!({ "callId": call.id, "fromUserId": user.user_id, "candidate": req.candidate });
    let _ = ctx.hub().to(to).emit("ice-candidate", &note).await;
    Ok(json!({ "success": true }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallReject {
    call_id: String,
    #[serde(default)]
    reason: Option<String>,
}

pub async fn call_reject(ctx: &Ctx, req: CallReject) -> HandlerResult {
    let call = party_call(ctx, &req.call_id).await?;
    let user = ctx.user()?;
    if call.callee != user.user_id {
        return Err(ApiError::forbidden("Only the callee may reject"));
    }
    let reason = req.reason.unwrap_or_else(|| "rejected".into());
    if reason.len() > 256 {
        return Err(ApiError::invalid("reason is over 256 characters"));
    }
    let Some(call) = ctx.state.store.remove_ringing_call(&call.id).await? else {
        return Err(ApiError::forbidden("Call already answered"));
    };
    let note = json!({ "callId": call.id, "reason": reason });
    let _ = ctx.hub().to(caller_room(&call.id)).emit("call-rejected", &note).await;
    let _ = ctx
        .hub()
        .to(names::user(&call.callee))
        .skip(ctx.id())
        .emit("call-handled-elsewhere", &json!({ "callId": call.id }))
        .await;
    leave_call_rooms(&ctx.state, &call).await;
    Ok(json!({ "success": true }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HangUp {
    call_id: String,
}

pub async fn hang_up(ctx: &Ctx, req: HangUp) -> HandlerResult {
    let call = party_call(ctx, &req.call_id).await?;
    let user = ctx.user()?;
    let Some(call) = ctx.state.store.remove_call(&call.id).await? else {
        return Err(ApiError::not_found("Call not found"));
    };
    // Both sides but the hanging-up socket: the other party, and the hanger's own other devices
    // (a ringing callee's other devices stop ringing; an in-call socket hears it if another hung up).
    let note = json!({ "callId": call.id, "reason": "hang-up" });
    let _ =
        ctx.hub().to(vec![caller_room(&call.id), callee_side(&call)]).skip(ctx.id()).emit("call-ended", &note).await;
    leave_call_rooms(&ctx.state, &call).await;
    tracing::info!(call_id = %call.id, by = %user.user_id, "call hung up");
    Ok(json!({ "success": true }))
}

/// The ring timeout: a call still ringing ends for both sides.
pub async fn ring_timeout(state: &AppState, call_id: &str) {
    match state.store.remove_ringing_call(call_id).await {
        Ok(Some(call)) => {
            let note = json!({ "callId": call.id, "reason": "timeout" });
            let _ =
                state.hub.to(vec![caller_room(&call.id), names::user(&call.callee)]).emit("call-ended", &note).await;
            leave_call_rooms(state, &call).await;
            tracing::info!(call_id, "call timed out");
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(call_id, "ring timeout: {e}"),
    }
}

/// A socket left: every call it was in ends, and the other side hears `disconnected`. A ringing
/// call also ends when the callee's last socket is gone.
pub async fn socket_gone(state: &AppState, user_id: &str, sid: &str, sockets_left: u64) {
    let calls = match state.store.calls_of(user_id).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(user_id, "calls of a leaving socket: {e}");
            return;
        }
    };
    for call in calls {
        let as_caller = call.caller == user_id && call.caller_sid == sid;
        let as_callee = call.callee == user_id
            && (call.callee_sid.as_deref() == Some(sid) || (call.state == CallState::Ringing && sockets_left == 0));
        if !(as_caller || as_callee) {
            continue;
        }
        if let Ok(Some(call)) = state.store.remove_call(&call.id).await {
            let other = if as_caller { callee_side(&call) } else { caller_room(&call.id) };
            let note = json!({ "callId": call.id, "reason": "disconnected" });
            let _ = state.hub.to(other).emit("call-ended", &note).await;
            leave_call_rooms(state, &call).await;
            tracing::info!(call_id = %call.id, user_id, "call ended: party disconnected");
        }
    }
}

/// A node died: its users' calls whose socket was there end, and the other side hears `disconnected`.
pub async fn node_gone(state: &AppState, user_id: &str, node: &str) {
    let Ok(calls) = state.store.calls_of(user_id).await else { return };
    for call in calls {
        let as_caller = call.caller == user_id && call.caller_node == node;
        let as_callee = call.callee == user_id && call.callee_node.as_deref() == Some(node);
        if !(as_caller || as_callee) {
            continue;
        }
        if let Ok(Some(call)) = state.store.remove_call(&call.id).await {
            let other = if as_caller { callee_side(&call) } else { caller_room(&call.id) };
            let note = json!({ "callId": call.id, "reason": "disconnected" });
            let _ = state.hub.to(other).emit("call-ended", &note).await;
            leave_call_rooms(state, &call).await;
        }
    }
}

async fn leave_call_rooms(state: &AppState, call: &Call) {
    state.hub.leave_all(&[caller_room(&call.id), callee_room(&call.id)]).await;
}
