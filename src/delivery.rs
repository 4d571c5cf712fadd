//! Emitting to a target (everyone, a chat room, a channel, a user, one socket): shared by the REST API,
//! Redis ingress and `realtime:emit`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{BroadcastError, SendError, SocketError, SocketIo};

use crate::names;

/// Events a client library reserves; emitting them from the server would confuse clients.
const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
    "error",
    "reconnect",
    "reconnect_attempt",
    "reconnecting",
    "reconnect_error",
    "reconnect_failed",
    "ping",
    "pong",
];

/// `{event, data, room?|channel?|userId?|socketId?}`: the body of `POST /api/broadcast` and of a
/// `realtime:emit` publish.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EmitRequest {
    pub event: String,
    #[serde(default)]
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    All,
    Room(String),
    Channel(String),
    User(String),
    Socket(Sid),
}

impl EmitRequest {
    /// Checks the event name and that at most one target is named.
    pub fn target(&self) -> Result<Target, String> {
        if self.event.is_empty() || self.event.len() > 128 {
            return Err("event must be a string of 1 to 128 characters".into());
        }
        if RESERVED_EVENTS.contains(&self.event.as_str()) {
            return Err(format!("event '{}' is reserved", self.event));
        }
        let named = [&self.room, &self.channel, &self.user_id, &self.socket_id].iter().filter(|t| t.is_some()).count();
        if named > 1 {
            return Err("name at most one of room, channel, userId, socketId".into());
        }
        let id = |s: &String, what: &str| {
            if names::valid_id(s) {
                Ok(s.clone())
            } else {
                Err(format!("invalid {what}"))
            }
        };
        Ok(match (&self.room, &self.channel, &self.user_id, &self.socket_id) {
            (Some(r), ..) => Target::Room(id(r, "room")?),
            (_, Some(c), ..) => Target::Channel(id(c, "channel")?),
            (_, _, Some(u), _) if !u.is_empty() && u.len() <= 128 => Target::User(u.clone()),
            (_, _, Some(_), _) => return Err("invalid userId".into()),
            (.., Some(s)) => Target::Socket(s.parse().map_err(|_| "invalid socketId".to_string())?),
            _ => Target::All,
        })
    }
}

/// The channel delivery envelope of SPEC §3.
#[derive(Serialize)]
pub struct Envelope<'a> {
    pub channel: &'a str,
    pub data: &'a Value,
    pub timestamp: String,
}

/// Emits `event` with `data` to the target's sockets. `local` restricts it to this node (ingress:
/// every node receives the publish itself); otherwise the adapter carries it to every node. A socket
/// target is always looked up locally.
pub async fn emit<A: Adapter>(
    io: &SocketIo<A>,
    target: &Target,
    event: &str,
    data: &Value,
    local: bool,
) -> Result<(), String> {
    let ops = if local { io.local() } else { io.broadcast() };
    let event = event.to_string();
    let res = match target {
        Target::All => ops.emit(&event, data).await,
        Target::Room(r) => ops.to(names::chat(r)).emit(&event, data).await,
        Target::Channel(c) => ops.to(names::channel(c)).emit(&event, data).await,
        Target::User(u) => ops.to(names::user(u)).emit(&event, data).await,
        Target::Socket(sid) => {
            return match io.get_socket(*sid) {
                Some(s) => s.emit(&event, data).map_err(|e| e.to_string()),
                None => Ok(()),
            };
        }
    };
    res.map_err(|e| e.to_string())
}

/// Delivers a channel publish (the `event` envelope) to the channel's subscribers.
pub async fn publish<A: Adapter>(io: &SocketIo<A>, channel: &str, data: &Value, local: bool) -> Result<(), String> {
    let envelope = Envelope { channel, data, timestamp: crate::iso_now() };
    let ops = if local { io.local() } else { io.broadcast() };
    let room = names::channel(channel);
    let res = ops.to(room.clone()).emit("event", &envelope).await;
    shed_slow_consumers(io, vec![room], &res);
    res.map_err(|e| e.to_string())
}

/// An argument that never serialises: see [`buffer_full`].
struct Probe;

impl Serialize for Probe {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("probe"))
    }
}

/// Is the socket's outgoing buffer full? socketioxide takes a place in the buffer before it
/// serialises an emit's argument, so an argument that cannot be serialised asks the question and
/// sends nothing.
pub fn buffer_full<A: Adapter>(socket: &SocketRef<A>) -> bool {
    matches!(socket.emit("", &Probe), Err(SendError::Socket(SocketError::InternalChannelFull)))
}

/// Closes a socket whose client does not read what it is sent: its TCP connection is closed under
/// it (socketioxide's disconnect needs a place in the full buffer), which runs its disconnect handler.
pub fn close_slow_consumer<A: Adapter>(socket: &SocketRef<A>) {
    tracing::warn!(sid = %socket.id, "slow consumer: buffer full, disconnecting");
    match socket.req_parts().extensions.get::<axum::extract::ConnectInfo<crate::http::conn::Peer>>() {
        Some(peer) => peer.0.kill(),
        None => {
            let _ = socket.clone().disconnect();
        }
    }
}

/// After a broadcast to `rooms`: when some buffers were full, closes this node's slow consumers there.
pub fn shed_slow_consumers<A: Adapter>(io: &SocketIo<A>, rooms: Vec<String>, res: &Result<(), BroadcastError>) {
    let Err(BroadcastError::Socket(errors)) = res else { return };
    if !errors.iter().any(|e| matches!(e, SocketError::InternalChannelFull)) {
        return;
    }
    for socket in io.local().within(rooms).sockets() {
        if buffer_full(&socket) {
            close_slow_consumer(&socket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> EmitRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn targets() {
        let all = req(serde_json::json!({"event": "x"}));
        assert_eq!(all.target().unwrap(), Target::All);
        let room = req(serde_json::json!({"event": "x", "room": "general"}));
        assert_eq!(room.target().unwrap(), Target::Room("general".into()));
        let two = req(serde_json::json!({"event": "x", "room": "a", "channel": "b"}));
        assert!(two.target().is_err());
        let reserved = req(serde_json::json!({"event": "disconnect"}));
        assert!(reserved.target().is_err());
        let bad_sid = req(serde_json::json!({"event": "x", "socketId": "nope"}));
        assert!(bad_sid.target().is_err());
    }
}
