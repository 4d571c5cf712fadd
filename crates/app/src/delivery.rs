//! Emitting to a target (everyone, a chat room, a channel, a user, one client): shared by the REST
//! API, Redis ingress and `realtime:emit`.

use rtg_model::id::ClientId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use rtg_model::hub::Hub;
use rtg_model::names;

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

/// Is this an event name that client libraries reserve?
pub fn is_reserved(event: &str) -> bool {
    RESERVED_EVENTS.contains(&event)
}

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
    Socket(ClientId),
}

impl EmitRequest {
    /// Checks the event name and that at most one target is named.
    pub fn target(&self) -> Result<Target, String> {
        if self.event.is_empty() || self.event.len() > 128 {
            return Err("event must be a string of 1 to 128 characters".into());
        }
        if is_reserved(&self.event) {
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

/// Emits `event` with `data` to the target's clients. `local` restricts it to this node (ingress:
/// every node receives the publish itself); otherwise the hub carries it to every node. A client
/// target is always looked up locally.
pub async fn emit(hub: &Hub, target: &Target, event: &str, data: &Value, local: bool) -> Result<(), String> {
    let to = match target {
        Target::All => hub.everyone(),
        Target::Room(r) => hub.to(names::chat(r)),
        Target::Channel(c) => hub.to(names::channel(c)),
        Target::User(u) => hub.to(names::user(u)),
        Target::Socket(sid) => {
            return match hub.get(*sid) {
                Some(c) => c.emit(event, data).map_err(|e| e.to_string()),
                None => Ok(()),
            };
        }
    };
    let to = if local { to.local() } else { to };
    to.emit(event, data).await
}

/// Where an emit reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every node (through Redis), or the only node there is.
    Cluster,
    /// Redis is configured but unavailable: this node's clients only.
    Node,
}

/// Emits through Redis when configured (`realtime:emit`: every node delivers to its own clients,
/// exactly once); without Redis, or while it is down, this node delivers to its own clients. The
/// REST API and the event proxy's `emit` answers.
pub async fn send(
    metrics: &rtg_model::metrics::Metrics,
    redis: Option<&rtg_storage::redis_link::RedisLink>,
    hub: &Hub,
    req: &EmitRequest,
    target: &Target,
) -> Result<Scope, String> {
    metrics.event_out(&req.event);
    let mut scope = Scope::Cluster;
    if let Some(redis) = redis {
        let payload = serde_json::to_string(req).map_err(|e| e.to_string())?;
        match redis.publish(rtg_model::names::EMIT_CHANNEL, payload).await {
            Ok(()) => return Ok(Scope::Cluster),
            Err(e) => {
                tracing::warn!("broadcast via redis failed, delivering locally only: {e:#}");
                scope = Scope::Node;
            }
        }
    }
    emit(hub, target, &req.event, &req.data, true).await?;
    Ok(scope)
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
