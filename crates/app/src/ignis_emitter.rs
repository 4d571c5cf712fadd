//! Seed 004's `WebSocketEmitter` (`@venizia/ignis-helpers`) as a further ingress: pointed at the
//! gateway's Redis, it publishes `{serverId, type, target, event, data, exclude?}` on
//! `ws:client:<clientId>`, `ws:user:<userId>`, `ws:room:<room>` and `ws:broadcast`. Each node
//! delivers what it hears to its own clients (as `realtime:emit` does), so every client gets one
//! copy: a client is a connection id (`socketId`), a room a chat room (seed 004's clients are in
//! `ws-default`, `ws-notification` and their own id), a user every connection of that user.

use serde::Deserialize;
use serde_json::Value;

use crate::delivery::{self, EmitRequest, Target};
use crate::state::AppState;

/// The channel of `emitter.broadcast(...)`.
pub const BROADCAST: &str = "ws:broadcast";
/// The patterns of `toRoom`, `toClient` and `toUser`.
pub const PATTERNS: [&str; 3] = ["ws:room:*", "ws:client:*", "ws:user:*"];

#[derive(Deserialize)]
struct Message {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    target: Option<String>,
    event: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    exclude: Vec<String>,
}

/// One message of the emitter (or of a seed 004 server instance still running beside the gateway).
pub async fn on_message(state: &AppState, payload: &[u8]) {
    let m: Message = match serde_json::from_slice(payload) {
        Ok(m) => m,
        Err(e) => {
            state.metrics.ingress_dropped.increment(1);
            tracing::warn!("ws emitter: unreadable message dropped: {e}");
            return;
        }
    };
    let mut req =
        EmitRequest { event: m.event, data: m.data, room: None, channel: None, user_id: None, socket_id: None };
    match m.kind.as_str() {
        "client" => req.socket_id = m.target,
        "user" => req.user_id = m.target,
        "room" => req.room = m.target,
        "broadcast" => {}
        other => {
            state.metrics.ingress_dropped.increment(1);
            tracing::warn!(kind = other, "ws emitter: unknown message type dropped");
            return;
        }
    }
    let target = match req.target() {
        Ok(t) => t,
        Err(e) => {
            state.metrics.ingress_dropped.increment(1);
            tracing::warn!("ws emitter: message dropped: {e}");
            return;
        }
    };
    state.metrics.ingress_messages.increment(1);
    // `exclude` names clients: each is alone in the chat room of its id.
    let except: Vec<String> =
        m.exclude.iter().filter(|id| rtg_model::names::valid_id(id)).map(|id| rtg_model::names::chat(id)).collect();
    let sent = match (&target, except.is_empty()) {
        (Target::Room(r), false) => {
            state.hub.to(rtg_model::names::chat(r)).except(except).local().emit(&req.event, &req.data).await
        }
        (Target::All, false) => state.hub.everyone().except(except).local().emit(&req.event, &req.data).await,
        _ => delivery::emit(&state.hub, &target, &req.event, &req.data, true).await,
    };
    if let Err(e) = sent {
        tracing::warn!("ws emitter delivery failed: {e}");
    }
}
