//! Private messages (SPEC §5): to every socket of the target on every node and the sender's other
//! sockets; queued when the target has no socket; `pending-messages` on the next connect; `mark-read`.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::SocketIo;

use super::rooms::valid_content;
use super::Ctx;
use crate::error::{ApiError, HandlerResult};
use crate::names;
use crate::state::AppState;
use crate::store::{new_id, Claim, PrivateMessage};

/// How long a client has to ack `pending-messages` before a still-connected socket counts as served.
const PENDING_ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrivateRequest {
    target_user_id: String,
    content: String,
    #[serde(default)]
    client_message_id: Option<String>,
}

pub async fn private_message<A: Adapter>(ctx: &Ctx<A>, req: PrivateRequest) -> HandlerResult {
    let user = ctx.user()?;
    if req.target_user_id.is_empty() || req.target_user_id.len() > 128 {
        return Err(ApiError::invalid("targetUserId must be a user id of 1 to 128 characters"));
    }
    valid_content(&req.content)?;
    if req.client_message_id.as_ref().is_some_and(|c| c.is_empty() || c.len() > 128) {
        return Err(ApiError::invalid("clientMessageId is 1 to 128 characters"));
    }
    let store = &ctx.state.store;
    let id = new_id("pm");
    let delivered = store.sockets_of(&req.target_user_id).await? > 0;
    let req_cmid = req.client_message_id.clone();
    if let Some(cmid) = &req.client_message_id {
        let key = format!("pm:{}:{cmid}", user.user_id);
        if let Claim::Seen(first) = store.claim(&key, &format!("{id}|{delivered}")).await? {
            let (first_id, was) = first.split_once('|').unwrap_or((first.as_str(), "false"));
            return Ok(json!({ "success": true, "messageId": first_id, "delivered": was == "true" }));
        }
    }
    let pm = PrivateMessage {
        id,
        from_user_id: user.user_id.clone(),
        from_user: user.clone(),
        to_user_id: req.target_user_id,
        content: req.content,
        timestamp: crate::auth::unix_now_ms(),
        read: false,
    };
    let stored = async {
        store.remember_receipt(&pm.id, &pm.from_user_id, &pm.to_user_id).await?;
        if !delivered {
            store.enqueue(&pm).await?;
        }
        Ok::<(), crate::store::StoreError>(())
    };
    if let Err(e) = stored.await {
        if let Some(cmid) = &req_cmid {
            let _ = store.release(&format!("pm:{}:{cmid}", user.user_id)).await;
        }
        return Err(e.into());
    }
    let mut targets = vec![names::user(&user.user_id)];
    if delivered {
        targets.push(names::user(&pm.to_user_id));
    }
    ctx.state.metrics.event_out();
    if let Err(e) = ctx.socket.to(targets).emit("private-message", &pm).await {
        tracing::warn!("private-message: {e}");
    }
    Ok(json!({ "success": true, "messageId": pm.id, "delivered": delivered }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MarkRead {
    message_ids: Vec<String>,
}

pub async fn mark_read<A: Adapter>(ctx: &Ctx<A>, req: MarkRead) -> HandlerResult {
    let user = ctx.user()?;
    if req.message_ids.len() > 1000 || req.message_ids.iter().any(|m| m.is_empty() || m.len() > 128) {
        return Err(ApiError::invalid("messageIds: at most 1000 ids of 1 to 128 characters"));
    }
    let receipts = ctx.state.store.receipts(&req.message_ids).await?;
    // Only messages addressed to the caller count; each sender hears of their own messages only.
    let mut by_sender: HashMap<String, Vec<String>> = HashMap::new();
    for (id, r) in req.message_ids.into_iter().zip(receipts) {
        if let Some((from, to)) = r {
            if to == user.user_id {
                let ids = by_sender.entry(from).or_default();
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    let timestamp = crate::auth::unix_now_ms();
    for (sender, ids) in by_sender {
        let note = json!({ "readerId": user.user_id, "messageIds": ids, "timestamp": timestamp });
        if let Err(e) = ctx.io.to(names::user(&sender)).emit("messages-read", &note).await {
            tracing::warn!("messages-read: {e}");
        }
    }
    Ok(json!({ "success": true }))
}

/// On connect: hands the user's queue to this socket as one `pending-messages`. It is removed once
/// the client acks, or once the ack wait is over with the socket still connected; a socket that is
/// gone by then puts it back for the next connect.
pub async fn deliver_pending<A: Adapter>(io: &SocketIo<A>, state: &AppState, socket: SocketRef<A>, user_id: &str) {
    let _ = io;
    let msgs = match state.store.take_queue(user_id).await {
        Ok(m) if m.is_empty() => return,
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(user_id, "pending queue: {e}");
            return;
        }
    };
    let n = msgs.len();
    let acked = match socket
        .timeout(PENDING_ACK_TIMEOUT)
        .emit_with_ack::<_, serde_json::Value>("pending-messages", &(&msgs,))
    {
        Ok(stream) => stream.await.is_ok(),
        Err(_) => false,
    };
    if acked || socket.connected() {
        tracing::debug!(user_id, n, acked, "pending messages handed over");
    } else if let Err(e) = state.store.restore_queue(user_id, msgs).await {
        tracing::warn!(user_id, "pending queue restore: {e}");
    }
}
