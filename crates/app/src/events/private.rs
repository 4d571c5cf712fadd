//! Private messages (SPEC §5): to every socket of the target on every node and the sender's other
//! sockets; queued when the target has no socket; `pending-messages` on the next connect; `mark-read`.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::rooms::valid_content;
use super::Ctx;
use crate::state::AppState;
use rtg_model::client::{Client, Link};
use rtg_model::error::{ApiError, HandlerResult};
use rtg_model::names;
use rtg_storage::store::{new_id, Claim, Enqueued, PrivateMessage};

/// How long a client has to confirm `pending-messages` (Socket.IO: its ack; `/ws`: the frame written
/// to its socket); unconfirmed, the queue stays for the next connect.
const PENDING_ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrivateRequest {
    target_user_id: String,
    content: String,
    #[serde(default)]
    client_message_id: Option<String>,
}

pub async fn private_message(ctx: &Ctx, req: PrivateRequest) -> HandlerResult {
    let user = ctx.user()?;
    if req.target_user_id.is_empty() || req.target_user_id.len() > 128 {
        return Err(ApiError::invalid("targetUserId must be a user id of 1 to 128 characters"));
    }
    valid_content(&ctx.state, &req.content)?;
    if req.client_message_id.as_ref().is_some_and(|c| c.is_empty() || c.len() > 128) {
        return Err(ApiError::invalid("clientMessageId is 1 to 128 characters"));
    }
    let store = &ctx.state.store;
    let id = new_id("pm");
    let dedup_key = req.client_message_id.as_ref().map(|cmid| format!("pm:{}:{cmid}", user.user_id));
    if let Some(key) = &dedup_key {
        if let Claim::Seen(first) = store.claim(&user.user_id, key, &id).await? {
            // The first send's answer: its id, and whether it is still waiting in the queue.
            let first_id = first.split_once('|').map_or(first.as_str(), |(i, _)| i);
            let queued = store.peek_queue(&req.target_user_id).await?.iter().any(|m| m.id == first_id);
            return Ok(json!({ "success": true, "messageId": first_id, "delivered": !queued }));
        }
    }
    let pm = PrivateMessage {
        id,
        from_user_id: user.user_id.clone(),
        from_user: user.clone(),
        to_user_id: req.target_user_id,
        content: req.content,
        timestamp: rtg_model::clock::unix_now_ms(),
        read: false,
        file: None,
    };
    match send(ctx, &pm).await {
        Ok(delivered) => Ok(json!({ "success": true, "messageId": pm.id, "delivered": delivered })),
        Err(e) => {
            if let Some(key) = &dedup_key {
                let _ = store.release(key).await;
            }
            Err(e)
        }
    }
}

/// Sends a private message: queued when the target is offline, else to the target's sockets, and to
/// the sender's other sockets either way (also a file's message, `files.rs`). True when delivered
/// live.
pub async fn send(ctx: &Ctx, pm: &PrivateMessage) -> Result<bool, ApiError> {
    let store = &ctx.state.store;
    // Queued or not is decided in one step with the target's presence count, so a target that
    // connects meanwhile either finds it in its queue or is in its user room for the live emit.
    store.remember_receipt(&pm.id, &pm.from_user_id, &pm.to_user_id).await?;
    let queued = match store.enqueue_if_offline(pm).await? {
        Enqueued::Online => false,
        Enqueued::Queued => true,
        Enqueued::SenderFull => {
            return Err(ApiError::new(
                rtg_model::error::Code::RateLimited,
                "Too much waiting in offline queues: try again when some was delivered",
            ))
        }
    };
    if queued {
        // The target is offline: the moment for the backend's push notification.
        ctx.state.hook("private.queued", &pm.to_user_id, || json!(pm));
    }
    let mut targets = vec![names::user(&pm.from_user_id)];
    if !queued {
        targets.push(names::user(&pm.to_user_id));
    }
    ctx.state.metrics.event_out("private-message");
    if let Err(e) = ctx.hub().to(targets).skip(ctx.id()).emit("private-message", pm).await {
        tracing::warn!("private-message: {e}");
    }
    let mut delivered = !queued;
    if delivered && store.sockets_of(&pm.to_user_id).await.unwrap_or(1) == 0 {
        // The target's last socket left while this was on its way: keep it for the next connect
        // (the client may see it twice, with the same id).
        store.enqueue(pm).await?;
        ctx.state.hook("private.queued", &pm.to_user_id, || json!(pm));
        delivered = false;
    }
    Ok(delivered)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MarkRead {
    message_ids: Vec<String>,
}

pub async fn mark_read(ctx: &Ctx, req: MarkRead) -> HandlerResult {
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
    let timestamp = rtg_model::clock::unix_now_ms();
    for (sender, ids) in by_sender {
        let note = json!({ "readerId": user.user_id, "messageIds": ids, "timestamp": timestamp });
        if let Err(e) = ctx.hub().to(names::user(&sender)).emit("messages-read", &note).await {
            tracing::warn!("messages-read: {e}");
        }
    }
    Ok(json!({ "success": true }))
}

/// On connect: hands the user's queue to this socket as one `pending-messages`, under a lease so
/// that two sockets connecting together do not both get it. The messages stay queued until the
/// hand-over is confirmed ([`Link::emit_confirmed`]: the Socket.IO client's ack, or on `/ws` the
/// frame's bytes written to the socket), never on a queue push: a socket that does not confirm in
/// time (a half-open one, a client that does not read), or a node that dies meanwhile, leaves them
/// for the next hand-over; a socket that found the lease taken tries once more when it has run out.
/// Messages queued meanwhile are not touched.
pub async fn deliver_pending(state: &AppState, client: Client, user_id: &str) {
    let lease_key = format!("pending:{user_id}");
    let lease_ms = PENDING_ACK_TIMEOUT.as_millis() as u64 + 1000;
    let mut leased = false;
    for attempt in 0..2 {
        match state.store.lease(&lease_key, lease_ms).await {
            Ok(true) => {
                leased = true;
                break;
            }
            Ok(false) if attempt == 0 => {
                // Another socket of the user is being handed the queue: see what is left after it.
                tokio::time::sleep(Duration::from_millis(lease_ms + 100)).await;
                if !client.connected() {
                    return;
                }
            }
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(user_id, "pending queue lease: {e}");
                return;
            }
        }
    }
    if !leased {
        return;
    }
    hand_over(state, &*client, user_id).await;
    if let Err(e) = state.store.unlease(&lease_key).await {
        tracing::debug!(user_id, "pending queue unlease: {e}");
    }
}

async fn hand_over(state: &AppState, client: &dyn Link, user_id: &str) {
    let msgs = match state.store.peek_queue(user_id).await {
        Ok(m) if m.is_empty() => return,
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(user_id, "pending queue: {e}");
            return;
        }
    };
    let n = msgs.len();
    state.metrics.event_out("pending-messages");
    let Ok(data) = serde_json::to_value(&msgs) else { return };
    if client.emit_confirmed("pending-messages", &data, PENDING_ACK_TIMEOUT).await {
        tracing::debug!(user_id, n, "pending messages handed over");
        if let Err(e) = state.store.ack_queue(user_id, &msgs).await {
            tracing::warn!(user_id, "pending queue ack: {e}");
        }
    } else {
        tracing::debug!(user_id, n, "pending messages not confirmed: kept for the next connect");
    }
}
