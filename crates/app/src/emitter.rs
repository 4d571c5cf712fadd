//! The official Node emitter, `@socket.io/redis-emitter` 5.x (SPEC §14), pointed at the gateway's Redis
//! with its default key `socket.io`: its broadcasts (msgpack `[uid, packet, opts]` on
//! `socket.io#/#` and `socket.io#/#<room>#`) and its requests (JSON on `socket.io-request#/#`:
//! `socketsJoin`, `socketsLeave`, `disconnectSockets`) reach the gateway's clients, Socket.IO and `/ws`.
//! Every node is subscribed and acts on its own clients, so each client gets a broadcast once.
//!
//! The emitter's room names: `room:<roomId>` (a chat room), `user:<userId>` (every client of a user),
//! `channel:<channel>` (a channel's subscribers), a client id (one client); any other name is taken as
//! a room of the gateway's own (`names.rs`).

use std::str::FromStr;

use rtg_model::id::ClientId;
use serde::Deserialize;
use serde_json::Value;

use crate::state::AppState;
use rtg_model::client::{Client, Close};
use rtg_model::names;

/// The emitter's key (`new Emitter(redis, { key })`), its default.
pub const KEY: &str = "socket.io";

/// The pattern of the broadcast channels, for `PSUBSCRIBE`.
pub fn broadcast_pattern() -> String {
    format!("{KEY}#/#*")
}

/// The request channel.
pub fn request_channel() -> String {
    format!("{KEY}-request#/#")
}

/// A target of the emitter, in the gateway's terms.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Room(String),
    Client(ClientId),
}

fn target(name: &str) -> Target {
    if let Some(id) = name.strip_prefix("room:") {
        return Target::Room(names::chat(id));
    }
    if let Some(id) = name.strip_prefix("user:") {
        return Target::Room(names::user(id));
    }
    if let Some(c) = name.strip_prefix("channel:") {
        return Target::Room(names::channel(c));
    }
    match ClientId::from_str(name) {
        Ok(sid) if name.len() == 16 => Target::Client(sid),
        _ => Target::Room(name.to_string()),
    }
}

/// Rooms and client ids of a list of emitter names.
fn split(list: &[String]) -> (Vec<String>, Vec<ClientId>) {
    let (mut rooms, mut ids) = (Vec::new(), Vec::new());
    for name in list.iter().take(1000) {
        match target(name) {
            Target::Room(r) => rooms.push(r),
            Target::Client(s) => ids.push(s),
        }
    }
    (rooms, ids)
}

/// msgpack (the emitter's notepack.io encoding) to JSON; binary becomes a base64 string.
fn to_json(v: rmpv::Value, depth: usize) -> Value {
    use base64::Engine;
    if depth > 64 {
        return Value::Null;
    }
    match v {
        rmpv::Value::Nil => Value::Null,
        rmpv::Value::Boolean(b) => Value::Bool(b),
        rmpv::Value::Integer(i) => i
            .as_i64()
            .map(Value::from)
            .or_else(|| i.as_u64().map(Value::from))
            .or_else(|| i.as_f64().map(Value::from))
            .unwrap_or(Value::Null),
        rmpv::Value::F32(f) => Value::from(f as f64),
        rmpv::Value::F64(f) => Value::from(f),
        rmpv::Value::String(s) => Value::String(s.into_str().unwrap_or_default()),
        rmpv::Value::Binary(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        rmpv::Value::Array(a) => Value::Array(a.into_iter().map(|x| to_json(x, depth + 1)).collect()),
        rmpv::Value::Map(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        rmpv::Value::String(s) => s.into_str().unwrap_or_default(),
                        other => other.to_string(),
                    };
                    (key, to_json(v, depth + 1))
                })
                .collect(),
        ),
        rmpv::Value::Ext(_, b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

#[derive(Deserialize, Default)]
struct Opts {
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    except: Vec<String>,
}

#[derive(Deserialize)]
struct Packet {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    data: Vec<Value>,
    #[serde(default)]
    nsp: Option<String>,
}

/// Decodes a broadcast: `(event, data, opts)`; `None` for what is not an event on `/`.
fn decode(payload: &[u8]) -> Option<(String, Value, Opts)> {
    let value = rmpv::decode::read_value(&mut &payload[..]).ok()?;
    let Value::Array(mut parts) = to_json(value, 0) else { return None };
    if parts.len() < 2 {
        return None;
    }
    let opts = parts.get(2).cloned().and_then(|o| serde_json::from_value::<Opts>(o).ok()).unwrap_or_default();
    let packet: Packet = serde_json::from_value(parts.swap_remove(1)).ok()?;
    // 2: EVENT (5: BINARY_EVENT, whose attachments notepack already inlined).
    if !(packet.kind == 2 || packet.kind == 5) || packet.nsp.as_deref().is_some_and(|n| n != "/") {
        return None;
    }
    let mut data = packet.data.into_iter();
    let Some(Value::String(event)) = data.next() else { return None };
    let args: Vec<Value> = data.collect();
    let data = match args.len() {
        0 => Value::Null,
        1 => args.into_iter().next().unwrap_or(Value::Null),
        _ => Value::Array(args),
    };
    Some((event, data, opts))
}

/// Is `client` one of the emitter's targets (`rooms`, `ids`; everyone when both are empty) and not
/// excluded?
fn selected(
    client: &Client,
    rooms: &[String],
    ids: &[ClientId],
    except_rooms: &[String],
    except_ids: &[ClientId],
) -> bool {
    let id = client.id();
    let mine = client.rooms();
    let hit = (rooms.is_empty() && ids.is_empty()) || ids.contains(&id) || mine.iter().any(|r| rooms.contains(r));
    hit && !except_ids.contains(&id) && !mine.iter().any(|r| except_rooms.contains(r))
}

/// A broadcast of the emitter: delivered to this node's clients.
pub async fn on_broadcast(state: &AppState, payload: &[u8]) {
    let Some((event, data, opts)) = decode(payload) else {
        state.metrics.ingress_dropped.increment(1);
        tracing::debug!("redis emitter: not an event packet on /; dropped");
        return;
    };
    if crate::delivery::is_reserved(&event) {
        state.metrics.ingress_dropped.increment(1);
        return;
    }
    state.metrics.ingress_messages.increment(1);
    state.metrics.event_out(&event);
    let (rooms, ids) = split(&opts.rooms);
    let (except_rooms, except_ids) = split(&opts.except);
    if ids.is_empty() && except_ids.is_empty() {
        // Rooms only (or everyone): the hub's broadcast, on this node.
        let to = state.hub.to(rooms).except(except_rooms).local();
        if let Err(e) = to.emit(&event, &data).await {
            tracing::warn!("redis emitter delivery: {e}");
        }
        return;
    }
    for c in state.hub.local_clients() {
        if selected(&c, &rooms, &ids, &except_rooms, &except_ids) {
            let _ = c.emit(&event, &data);
        }
    }
}

#[derive(Deserialize)]
struct Request {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    opts: Opts,
    #[serde(default)]
    rooms: Vec<String>,
}

/// A request of the emitter (`socketsJoin`, `socketsLeave`, `disconnectSockets`) on this node's clients.
pub fn on_request(state: &AppState, payload: &[u8]) {
    let Ok(req) = serde_json::from_slice::<Request>(payload) else {
        tracing::debug!("redis emitter: unreadable request; dropped");
        return;
    };
    // 2 REMOTE_JOIN, 3 REMOTE_LEAVE, 4 REMOTE_DISCONNECT; the others ask for answers the emitter
    // never reads (it has no request channel of its own).
    if !(2..=4).contains(&req.kind) {
        return;
    }
    let (rooms, ids) = split(&req.opts.rooms);
    let (except_rooms, except_ids) = split(&req.opts.except);
    let targets: Vec<Client> = state
        .hub
        .local_clients()
        .into_iter()
        .filter(|c| selected(c, &rooms, &ids, &except_rooms, &except_ids))
        .collect();
    for c in targets {
        match req.kind {
            2 | 3 => {
                for name in req.rooms.iter().take(100) {
                    let Target::Room(room) = target(name) else { continue };
                    // A chat room joined this way is the client's as if it had sent `join-room`.
                    if req.kind == 2 {
                        state.hub.join(&*c, &room, Some(state.config.max_rooms_per_socket as usize));
                    } else {
                        state.hub.leave(&*c, &room);
                    }
                }
            }
            _ => c.close(Close::Kicked),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert_eq!(target("room:general"), Target::Room(names::chat("general")));
        assert_eq!(target("user:alice"), Target::Room(names::user("alice")));
        assert_eq!(target("channel:apps:created"), Target::Room(names::channel("apps:created")));
        assert_eq!(target("custom"), Target::Room("custom".into()));
        let sid = ClientId::new();
        assert_eq!(target(sid.as_str()), Target::Client(sid));
    }

    #[test]
    fn decodes_the_emitters_packets() {
        // ["emitter", {type: 2, data: ["hello", {a: 1}, <bin>], nsp: "/"}, {rooms: ["room:r"], except: [], flags: {}}]
        let mut buf = Vec::new();
        let v = rmpv::Value::Array(vec![
            "emitter".into(),
            rmpv::Value::Map(vec![
                ("type".into(), 2.into()),
                (
                    "data".into(),
                    rmpv::Value::Array(vec![
                        "hello".into(),
                        rmpv::Value::Map(vec![("a".into(), 1.into())]),
                        rmpv::Value::Binary(vec![1, 2, 3]),
                    ]),
                ),
                ("nsp".into(), "/".into()),
            ]),
            rmpv::Value::Map(vec![
                ("rooms".into(), rmpv::Value::Array(vec!["room:r".into()])),
                ("except".into(), rmpv::Value::Array(vec![])),
                ("flags".into(), rmpv::Value::Map(vec![])),
            ]),
        ]);
        rmpv::encode::write_value(&mut buf, &v).unwrap();
        let (event, data, opts) = decode(&buf).unwrap();
        assert_eq!(event, "hello");
        assert_eq!(data, serde_json::json!([{"a": 1}, "AQID"]));
        assert_eq!(opts.rooms, vec!["room:r".to_string()]);
        // Garbage and other namespaces are dropped, never a panic.
        assert!(decode(b"\xc1\xff").is_none());
        assert!(decode(&[]).is_none());
    }
}
