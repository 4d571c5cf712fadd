//! Presence (SPEC §4): online while any socket of the user is connected on any node; offline after
//! `PRESENCE_GRACE_MS` without one; `update-status` and `get-presence`.
//!
//! A change goes to everyone who shares a room with the user: the sockets in the chat rooms the
//! user's sockets are (or, going offline, were) in, and every member of the rooms made with
//! `create-room` that list the user. One emit to the union of those adapter rooms reaches each
//! socket once.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::Ctx;
use crate::state::AppState;
use rtg_model::error::{ApiError, HandlerResult};
use rtg_model::names;

const STATUSES: &[&str] = &["online", "away", "busy"];

/// Sends `presence-update` to everyone who shares a room with the user (not to the user's own sockets).
pub async fn announce(state: &AppState, user_id: &str, status: &str, chat_rooms: &[String]) {
    let mut targets: std::collections::HashSet<String> = chat_rooms.iter().map(|r| names::chat(r)).collect();
    match state.store.rooms_of(user_id).await {
        Ok(rooms) => {
            let members = rooms.into_iter().flat_map(|r| r.members).filter(|m| m != user_id);
            targets.extend(members.map(|m| names::user(&m)));
        }
        Err(e) => tracing::warn!(user_id, "presence: rooms of user: {e}"),
    }
    if targets.is_empty() {
        return;
    }
    let note = json!({ "userId": user_id, "status": status, "timestamp": rtg_model::clock::unix_now_ms() });
    let targets: Vec<String> = targets.into_iter().collect();
    if let Err(e) = state.hub.to(targets).except(names::user(user_id)).emit("presence-update", &note).await {
        tracing::warn!(user_id, "presence-update: {e}");
    }
}

/// A socket left: the store remembers its rooms and, if it was the user's last socket anywhere,
/// schedules the offline check. Returns the user's remaining sockets.
pub async fn socket_down(state: &AppState, user_id: &str, sid: &str, chat_rooms: &[String]) -> u64 {
    match state.store.socket_down(user_id, sid, chat_rooms, state.config.presence_grace_ms).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(user_id, "presence down: {e}");
            1
        }
    }
}

/// The end of the grace: offline unless a socket came back meanwhile (on any node), announced to
/// the rooms every socket of the user was in when it left.
pub async fn grace_over(state: &AppState, user_id: &str) {
    match state.store.mark_offline_if_idle(user_id, state.config.presence_grace_ms).await {
        Ok(Some(rooms)) => {
            state.hook("user.offline", user_id, || json!({ "userId": user_id }));
            announce(state, user_id, "offline", &rooms).await
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(user_id, "presence grace: {e}"),
    }
}

/// Polls the store for due offline checks (4 times a second) and runs each on this node; also the
/// store's upkeep once a minute. Every node polls: a check scheduled by a node that has since died
/// or shut down is run by another one.
pub fn spawn_sweeper(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            tick.tick().await;
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(240) {
                state.store.purge().await;
            }
            match state.store.due_offline_checks().await {
                Ok(users) => {
                    for user_id in users {
                        grace_over(&state, &user_id).await;
                    }
                }
                Err(e) => tracing::debug!("offline checks: {e}"),
            }
        }
    })
}

/// `"away"` or `{status: "away"}`.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum StatusRequest {
    Bare(String),
    Object { status: String },
}

pub async fn update_status(ctx: &Ctx, req: StatusRequest) -> HandlerResult {
    let user = ctx.user()?;
    let (StatusRequest::Bare(status) | StatusRequest::Object { status }) = req;
    if !STATUSES.contains(&status.as_str()) {
        return Err(ApiError::invalid("status must be online, away or busy"));
    }
    ctx.state.store.set_status(&user.user_id, &status, rtg_model::clock::unix_now_ms()).await?;
    // The chat rooms of every socket of the user, on every node.
    let rooms: Vec<String> = ctx
        .hub()
        .rooms_of_members(&names::user(&user.user_id))
        .await
        .iter()
        .filter_map(|r| r.strip_prefix(names::CHAT_PREFIX).map(str::to_string))
        .collect();
    announce(&ctx.state, &user.user_id, &status, &rooms).await;
    Ok(json!({ "success": true }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceRequest {
    user_ids: Vec<String>,
}

pub async fn get_presence(ctx: &Ctx, req: PresenceRequest) -> HandlerResult {
    ctx.user()?;
    if req.user_ids.len() > 1000 || req.user_ids.iter().any(|u| u.is_empty() || u.len() > 128) {
        return Err(ApiError::invalid("userIds: at most 1000 ids of 1 to 128 characters"));
    }
    let found = ctx.state.store.presence(&req.user_ids).await?;
    let map: serde_json::Map<String, serde_json::Value> =
        req.user_ids.into_iter().zip(found).map(|(u, p)| (u, serde_json::to_value(p).unwrap_or_default())).collect();
    Ok(json!({ "success": true, "presence": map }))
}
