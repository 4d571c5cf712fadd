//! Rooms, messages and typing (SPEC §4): `join-room`, `leave-room`, `create-room`, `message`,
//! `edit-message`, `delete-message`, `list-rooms`, `load-messages`, `typing`, `stop-typing`.
//!
//! A joined socket is a member of the adapter room `r:<roomId>`; rooms made with `create-room` are
//! stored with their member list and only those members (and admins) may join or read them. The
//! prefixes `dm:` and `grp:` belong to such rooms, so nobody can squat an id before it is created.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use super::Ctx;
use crate::state::AppState;
use rtg_model::error::{ApiError, Code, HandlerResult};
use rtg_model::names;
use rtg_model::session::Joined;
use rtg_model::timers::Job;
use rtg_model::user::User;
use rtg_storage::store::{new_id, Claim, Edit, Message, Room};

/// Most members a created room may list.
pub const MAX_ROOM_MEMBERS: usize = 1000;
/// Messages `join-room` returns.
const RECENT: usize = 50;

/// `"roomId"` or `{roomId}`.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum RoomRef {
    Bare(String),
    Object {
        #[serde(rename = "roomId")]
        room_id: String,
    },
}

impl RoomRef {
    fn into_valid(self) -> Result<String, ApiError> {
        let (RoomRef::Bare(id) | RoomRef::Object { room_id: id }) = self;
        valid_room(id)
    }
}

pub(crate) fn valid_room(id: String) -> Result<String, ApiError> {
    if names::valid_room_id(&id) {
        Ok(id)
    } else {
        Err(ApiError::invalid("Invalid room id"))
    }
}

/// Message content: not empty, at most `MAX_MESSAGE_BYTES` bytes.
pub fn valid_content(state: &AppState, content: &str) -> Result<(), ApiError> {
    let max = state.config.max_message_bytes;
    if content.is_empty() {
        Err(ApiError::invalid("content must not be empty"))
    } else if content.len() as u64 > max {
        Err(ApiError::new(Code::PayloadTooLarge, format!("content is over {max} bytes")))
    } else {
        Ok(())
    }
}

/// The `room` object of acks: `{id, name, type}` (created rooms add `members`, `createdBy`, `createdAt`).
fn open_room(id: &str) -> Value {
    json!({ "id": id, "name": id, "type": "public" })
}

/// May this user use this room? Created rooms: members and admins; `dm:`/`grp:` ids that were never
/// created: nobody; any other id: every authenticated user.
async fn access(ctx: &Ctx, user: &User, id: &str) -> Result<Value, ApiError> {
    match ctx.state.store.room(id).await? {
        Some(room) if user.is_admin() || room.members.contains(&user.user_id) => {
            Ok(serde_json::to_value(&room).map_err(|_| ApiError::internal())?)
        }
        Some(_) => Err(ApiError::forbidden("Access denied")),
        None if id.starts_with("dm:") || id.starts_with("grp:") => Err(ApiError::forbidden("Access denied")),
        None => Ok(open_room(id)),
    }
}

/// Is this socket joined to the chat room `room_id`?
fn joined(ctx: &Ctx, room_id: &str) -> bool {
    ctx.session.in_room(room_id)
}

/// Every user with a socket in the adapter room, on any node, with their socket count there;
/// `except` leaves one socket out (one that is leaving).
pub async fn room_users(state: &AppState, room: &str, except: Option<rtg_model::id::ClientId>) -> Vec<(User, usize)> {
    let members = state.hub.members(room).await;
    // Counted per user as we go (a map from user id to position): a room of N sockets costs O(N),
    // and a user's second socket costs no copy of the user.
    let mut out: Vec<(User, usize)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut count = |u: &User| match index.get(&u.user_id) {
        Some(&i) => out[i].1 += 1,
        None => {
            index.insert(u.user_id.clone(), out.len());
            out.push((u.clone(), 1));
        }
    };
    let mut remote = Vec::new();
    for m in &members {
        if Some(m.id) == except {
            continue;
        }
        match &m.session {
            Some(session) => {
                if let Some(u) = session.user() {
                    count(&u);
                }
            }
            None => remote.push(m.id.to_string()),
        }
    }
    if !remote.is_empty() {
        if let Ok(found) = state.store.socket_users(&remote).await {
            found.iter().flatten().for_each(&mut count);
        }
    }
    out
}

pub async fn join_room(ctx: &Ctx, req: RoomRef) -> HandlerResult {
    let user = ctx.user()?;
    let id = req.into_valid()?;
    let room_info = access(ctx, user, &id).await?;
    let room = names::chat(&id);
    let cap = ctx.state.config.max_rooms_per_socket as usize;
    let already = match ctx.hub().join(&*ctx.client, &room, Some(cap)) {
        Joined::New => false,
        Joined::Already => true,
        Joined::Full => return Err(ApiError::new(Code::RateLimited, "Too many rooms joined")),
    };
    let (recent, _) = ctx.state.store.history(&id, None, RECENT).await?.unwrap_or_default();
    let users = room_users(&ctx.state, &room, None).await;
    // The others hear of a user arriving, not of a second device of someone already there.
    let arrived = !already && users.iter().all(|(u, n)| u.user_id != user.user_id || *n <= 1);
    let members: Vec<Value> = users.into_iter().map(|(u, _)| json!({ "userId": u.user_id, "user": u })).collect();
    if arrived {
        let note = json!({ "userId": user.user_id, "user": user, "roomId": id });
        let _ = ctx.hub().to(room).except(names::user(&user.user_id)).emit("user-joined", &note).await;
    }
    Ok(json!({ "success": true, "room": room_info, "members": members, "recentMessages": recent }))
}

pub async fn leave_room(ctx: &Ctx, req: RoomRef) -> HandlerResult {
    let user = ctx.user()?;
    let id = req.into_valid()?;
    let room = names::chat(&id);
    if ctx.hub().leave(&*ctx.client, &room) {
        departed(&ctx.state, &user.user_id, &id, None).await;
    }
    Ok(json!({ "success": true }))
}

/// What the others in a room see when one of a user's sockets leaves it (leave, or disconnect of
/// `leaving`): typing stops, and `user-left` unless the user is still there on another device.
pub async fn departed(state: &AppState, user_id: &str, room_id: &str, leaving: Option<rtg_model::id::ClientId>) {
    stop_typing_in(state, user_id, room_id).await;
    let room = names::chat(room_id);
    if room_users(state, &room, leaving).await.iter().any(|(u, _)| u.user_id == user_id) {
        return;
    }
    let note = json!({ "userId": user_id, "roomId": room_id });
    let _ = state.hub.to(room).except(names::user(user_id)).emit("user-left", &note).await;
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateRoom {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    members: Vec<String>,
}

/// A direct room's id: the same for the same two users, whoever creates it.
fn direct_id(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    let fnv = |seed: u64| {
        let mut h = seed;
        for byte in x.bytes().chain(std::iter::once(0)).chain(y.bytes()) {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    };
    format!("dm:{:016x}{:016x}", fnv(0xcbf2_9ce4_8422_2325), fnv(0x8422_2325_cbf2_9ce4))
}

pub async fn create_room(ctx: &Ctx, req: CreateRoom) -> HandlerResult {
    let user = ctx.user()?;
    if req.kind != "group" && req.kind != "direct" {
        return Err(ApiError::invalid("type must be \"group\" or \"direct\""));
    }
    if req.members.len() > MAX_ROOM_MEMBERS {
        return Err(ApiError::invalid(format!("at most {MAX_ROOM_MEMBERS} members")));
    }
    let mut members = vec![user.user_id.clone()];
    for m in req.members {
        if m.is_empty() || m.len() > 128 {
            return Err(ApiError::invalid("members must be user ids of 1 to 128 characters"));
        }
        if !members.contains(&m) {
            members.push(m);
        }
    }
    let name = match req.name {
        Some(n) if n.chars().count() > 128 => return Err(ApiError::invalid("name is over 128 characters")),
        Some(n) if !n.trim().is_empty() => n,
        _ => members.join(", ").chars().take(128).collect(),
    };
    let id = if req.kind == "direct" {
        if members.len() != 2 {
            return Err(ApiError::invalid("a direct room has exactly one other member"));
        }
        direct_id(&members[0], &members[1])
    } else {
        new_id("grp:")
    };
    let wanted = Room {
        id,
        name,
        kind: req.kind,
        members,
        created_by: user.user_id.clone(),
        created_at: rtg_model::clock::unix_now_ms(),
    };
    let Some(room) = ctx.state.store.create_room(wanted.clone()).await? else {
        return Err(ApiError::new(Code::RateLimited, "Too many rooms"));
    };
    let same_members = {
        let (mut a, mut b) = (room.members.clone(), wanted.members.clone());
        a.sort();
        b.sort();
        a == b
    };
    if !same_members {
        return Err(ApiError::forbidden("Access denied"));
    }
    if room.created_at == wanted.created_at {
        // Made now (a direct room that existed answers as it was).
        ctx.state.hook("room.created", &user.user_id, || json!(room));
    }
    Ok(json!({ "success": true, "room": room }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessage {
    room_id: String,
    content: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    client_message_id: Option<String>,
}

pub async fn message(ctx: &Ctx, req: SendMessage) -> HandlerResult {
    let user = ctx.user()?;
    let id = valid_room(req.room_id)?;
    valid_content(&ctx.state, &req.content)?;
    let kind = req.kind.unwrap_or_else(|| "text".into());
    if kind.is_empty() || kind.len() > 32 {
        return Err(ApiError::invalid("type must be 1 to 32 characters"));
    }
    if req.reply_to.as_ref().is_some_and(|r| r.len() > 128)
        || req.client_message_id.as_ref().is_some_and(|c| c.is_empty() || c.len() > 128)
    {
        return Err(ApiError::invalid("replyTo and clientMessageId are at most 128 characters"));
    }
    if !joined(ctx, &id) {
        return Err(ApiError::new(Code::NotInRoom, "Not in room"));
    }
    let msg_id = new_id("m");
    let timestamp = rtg_model::clock::unix_now_ms();
    let req_cmid = req.client_message_id.clone();
    if let Some(cmid) = &req.client_message_id {
        let key = format!("msg:{}:{cmid}", user.user_id);
        if let Claim::Seen(first) = ctx.state.store.claim(&user.user_id, &key, &format!("{msg_id}|{timestamp}")).await?
        {
            let (first_id, first_ts) = first.split_once('|').unwrap_or((first.as_str(), "0"));
            return Ok(
                json!({ "success": true, "messageId": first_id, "timestamp": first_ts.parse::<u64>().unwrap_or(0) }),
            );
        }
    }
    let msg = Message {
        id: msg_id,
        room_id: id,
        user_id: user.user_id.clone(),
        user: user.clone(),
        content: req.content,
        kind,
        reply_to: req.reply_to,
        timestamp,
        edited: false,
        deleted: false,
        file: None,
    };
    if let Err(e) = post(ctx, &msg).await {
        if let Some(cmid) = &req_cmid {
            let _ = ctx.state.store.release(&format!("msg:{}:{cmid}", user.user_id)).await;
        }
        return Err(e);
    }
    Ok(json!({ "success": true, "messageId": msg.id, "timestamp": timestamp }))
}

/// Keeps a message in its room's history and sends it to the room as `new-message` (also a file's
/// message, `files.rs`).
pub async fn post(ctx: &Ctx, msg: &Message) -> Result<(), ApiError> {
    ctx.state.store.append(msg).await?;
    ctx.state.metrics.event_out("new-message");
    ctx.state.hook("message.created", &msg.user_id, || json!(msg));
    if let Err(e) = ctx.hub().to(names::chat(&msg.room_id)).emit("new-message", msg).await {
        tracing::debug!("new-message broadcast: {e}");
    }
    Ok(())
}

/// Is the caller in this chat room (SPEC §4's rule for posting)?
pub fn is_joined(ctx: &Ctx, room_id: &str) -> bool {
    joined(ctx, room_id)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditMessage {
    room_id: String,
    message_id: String,
    #[serde(default)]
    content: Option<String>,
}

/// Finds a live message the caller may change: its author or an admin.
async fn own_message(ctx: &Ctx, room: &str, id: &str) -> Result<Message, ApiError> {
    let user = ctx.user()?;
    let msg = ctx
        .state
        .store
        .message(room, id)
        .await?
        .filter(|m| !m.deleted)
        .ok_or_else(|| ApiError::not_found("Message not found"))?;
    if msg.user_id != user.user_id && !user.is_admin() {
        return Err(ApiError::forbidden("Only the author or an admin may change this message"));
    }
    Ok(msg)
}

/// Sends a room update to the room, and to the calling socket when it is not joined.
async fn tell_room(ctx: &Ctx, room_id: &str, event: &str, data: &impl serde::Serialize) {
    let room = names::chat(room_id);
    let in_room = joined(ctx, room_id);
    if let Err(e) = ctx.hub().to(room).emit(event, data).await {
        tracing::debug!("{event} broadcast: {e}");
    }
    if !in_room {
        let _ = rtg_model::client::emit(&*ctx.client, event, data);
    }
}

pub async fn edit_message(ctx: &Ctx, req: EditMessage) -> HandlerResult {
    let id = valid_room(req.room_id)?;
    let content = req.content.ok_or_else(|| ApiError::invalid("content is required"))?;
    valid_content(&ctx.state, &content)?;
    own_message(ctx, &id, &req.message_id).await?;
    let updated = ctx
        .state
        .store
        .edit(&id, &req.message_id, Edit::Content(content))
        .await?
        .ok_or_else(|| ApiError::not_found("Message not found"))?;
    tell_room(ctx, &id, "message-updated", &updated).await;
    Ok(json!({ "success": true }))
}

pub async fn delete_message(ctx: &Ctx, req: EditMessage) -> HandlerResult {
    let id = valid_room(req.room_id)?;
    let msg = own_message(ctx, &id, &req.message_id).await?;
    ctx.state
        .store
        .edit(&id, &req.message_id, Edit::Delete)
        .await?
        .ok_or_else(|| ApiError::not_found("Message not found"))?;
    // A deleted file message takes its file with it: nobody downloads what was deleted.
    if let Some(file_id) = msg.file.as_ref().and_then(|f| f.get("id")).and_then(|v| v.as_str()) {
        ctx.state.files.delete(file_id).await;
    }
    tell_room(ctx, &id, "message-deleted", &json!({ "roomId": id, "messageId": req.message_id })).await;
    Ok(json!({ "success": true }))
}

pub async fn list_rooms(ctx: &Ctx) -> HandlerResult {
    let user = ctx.user()?;
    let rooms = ctx.state.store.rooms_of(&user.user_id).await?;
    let mut out = Vec::with_capacity(rooms.len());
    for room in rooms {
        let last = ctx.state.store.history(&room.id, None, 1).await?.and_then(|(mut v, _)| v.pop());
        out.push((room, last));
    }
    // Rooms with messages first, newest message first; then the others, newest room first.
    out.sort_by(|(ra, la), (rb, lb)| match (la, lb) {
        (Some(a), Some(b)) => b.timestamp.cmp(&a.timestamp),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => rb.created_at.cmp(&ra.created_at),
    });
    let rooms: Vec<Value> = out
        .into_iter()
        .map(|(r, last)| json!({ "id": r.id, "name": r.name, "type": r.kind, "members": r.members, "lastMessage": last }))
        .collect();
    Ok(json!({ "success": true, "rooms": rooms }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadMessages {
    room_id: String,
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    limit: Option<Value>,
}

pub async fn load_messages(ctx: &Ctx, req: LoadMessages) -> HandlerResult {
    let user = ctx.user()?;
    let id = valid_room(req.room_id)?;
    let limit = match req.limit {
        None | Some(Value::Null) => 50,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=100) => n as usize,
            _ => return Err(ApiError::invalid("limit must be an integer from 1 to 100")),
        },
    };
    access(ctx, user, &id).await?;
    let (messages, has_more) = ctx
        .state
        .store
        .history(&id, req.before.as_deref(), limit)
        .await?
        .ok_or_else(|| ApiError::not_found("Message not found"))?;
    Ok(json!({ "success": true, "messages": messages, "hasMore": has_more }))
}

pub async fn typing(ctx: &Ctx, req: RoomRef) -> HandlerResult {
    let user = ctx.user()?;
    let id = req.into_valid()?;
    if !joined(ctx, &id) {
        return Err(ApiError::new(Code::NotInRoom, "Not in room"));
    }
    let room = names::chat(&id);
    let timeout = Duration::from_millis(ctx.state.config.typing_timeout_ms);
    let was_typing = ctx
        .state
        .typing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((id.clone(), user.user_id.clone()), Instant::now() + timeout)
        .is_some();
    // One pending timer per typist and room: a renewal only moves the deadline the timer re-reads.
    // A timer the wheel dropped (its queue full) would leave the entry for good: it goes at once.
    if !was_typing
        && !ctx.state.timers.schedule(timeout, Job::TypingStop { room: id.clone(), user_id: user.user_id.clone() })
    {
        ctx.state.typing.lock().unwrap_or_else(|e| e.into_inner()).remove(&(id.clone(), user.user_id.clone()));
        return Err(ApiError::new(Code::RateLimited, "Too busy: try again"));
    }
    let note = json!({ "userId": user.user_id, "user": user, "roomId": id });
    let _ = ctx.hub().to(room).except(names::user(&user.user_id)).emit("user-typing", &note).await;
    Ok(json!({ "success": true }))
}

pub async fn stop_typing(ctx: &Ctx, req: RoomRef) -> HandlerResult {
    let user = ctx.user()?;
    let id = req.into_valid()?;
    stop_typing_in(&ctx.state, &user.user_id, &id).await;
    Ok(json!({ "success": true }))
}

/// Ends a user's typing in a room, if they were typing: `user-stopped-typing` to the others.
pub async fn stop_typing_in(state: &AppState, user_id: &str, room_id: &str) {
    let was = state
        .typing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(room_id.to_string(), user_id.to_string()))
        .is_some();
    if was {
        let note = json!({ "userId": user_id, "roomId": room_id });
        let _ =
            state.hub.to(names::chat(room_id)).except(names::user(user_id)).emit("user-stopped-typing", &note).await;
    }
}

/// The typing timer: stops at the deadline, or waits again when a newer `typing` moved it.
pub async fn typing_timeout(state: &AppState, room: &str, user_id: &str) {
    let key = (room.to_string(), user_id.to_string());
    let now = Instant::now();
    let wait = {
        let mut map = state.typing.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&key).copied() {
            None => return,
            Some(deadline) if deadline > now => Some(deadline - now),
            Some(_) => {
                map.remove(&key);
                None
            }
        }
    };
    let stop = match wait {
        None => true,
        Some(rest) => {
            let next = Job::TypingStop { room: key.0.clone(), user_id: key.1.clone() };
            // The wheel dropped the next timer: stop now rather than never.
            !state.timers.schedule(rest, next)
                && state.typing.lock().unwrap_or_else(|e| e.into_inner()).remove(&key).is_some()
        }
    };
    if stop {
        let note = json!({ "userId": user_id, "roomId": room });
        let _ = state.hub.to(names::chat(room)).except(names::user(user_id)).emit("user-stopped-typing", &note).await;
    }
}

#[cfg(test)]
mod tests {
    use super::direct_id;

    #[test]
    fn direct_ids_are_symmetric_and_valid() {
        assert_eq!(direct_id("alice", "bob"), direct_id("bob", "alice"));
        assert_ne!(direct_id("alice", "bob"), direct_id("alice", "carol"));
        assert_ne!(direct_id("a:b", "c"), direct_id("a", "b:c"));
        assert!(rtg_model::names::valid_room_id(&direct_id("ü", "x y")));
    }
}
