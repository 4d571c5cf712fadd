//! A connected client, whatever carries it.
//!
//! The event handlers see a [`Client`]: an identity (its id and [`Session`]), its memberships (the
//! rooms it joined: channels, chat rooms, its user room, call rooms) and a way to send it an event.
//! Each front end (Socket.IO in `sio.rs`, plain WebSocket in `ws/`) implements [`Link`] for its
//! connections, and nothing in `events/` knows which one it talks to.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::model::session::Session;

/// The gateway's own id of a connected client: `socket.id` (`sessionId`) for Socket.IO,
/// `connectionId` for `/ws`. 16 characters of the URL-safe base64 alphabet (96 random bits), the
/// shape of an Engine.IO session id, so that one `socketId` target names either kind.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId([u8; 16]);

const ID_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

impl ClientId {
    /// Below every real id (a bound for ordered sets).
    pub const ZERO: Self = Self([0u8; 16]);

    /// A new random id.
    pub fn new() -> Self {
        use rand::Rng;
        let mut rng = rand::rng();
        let mut id = [0u8; 16];
        for b in &mut id {
            *b = ID_ALPHABET[rng.random_range(0..64)];
        }
        Self(id)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl Default for ClientId {
    fn default() -> Self {
        Self::new()
    }
}

/// Not a client id: the wrong length, or a character outside the URL-safe base64 alphabet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a client id")]
pub struct BadClientId;

impl std::str::FromStr for ClientId {
    type Err = BadClientId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes: [u8; 16] = s.as_bytes().try_into().map_err(|_| BadClientId)?;
        if bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_') {
            Ok(Self(bytes))
        } else {
            Err(BadClientId)
        }
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Why the gateway closes a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// An admin or the API asked for it (`/api/users/{id}/disconnect`).
    Kicked,
    /// The token expired and was not refreshed within the grace.
    AuthExpired,
    /// The node cannot keep its promise to this client (a recovery overflowed): its transport is
    /// closed so that it reconnects by itself and recovers from where it was.
    Overloaded,
}

/// Why an event could not be handed to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("buffer full")]
    Full,
    #[error("closed")]
    Closed,
    #[error("{0}")]
    Other(String),
}

/// How a client connected, for the Admin UI's socket list (its `handshake`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClientInfo {
    /// `websocket` or `polling` (Socket.IO), `ws` (the plain WebSocket endpoint).
    pub transport: String,
    pub address: Option<String>,
    pub headers: serde_json::Map<String, Value>,
    pub query: serde_json::Map<String, Value>,
    /// When it connected, ms since the epoch, and as a date string.
    pub issued: u64,
    pub time: String,
    pub secure: bool,
    pub url: String,
}

/// One connected client, as the core sees it.
pub trait Link: Send + Sync {
    /// The id that `socketId` targets name: `socket.id` for Socket.IO, `connectionId` for `/ws`.
    fn id(&self) -> ClientId;
    /// Set once the client is admitted (anonymous or a user).
    fn session(&self) -> Option<Arc<Session>>;
    fn join(&self, room: &str);
    fn leave(&self, room: &str);
    /// Every room the client is in (on this node: a client lives on one node).
    fn rooms(&self) -> Vec<String>;
    /// Sends `event` with `data` to this client alone.
    fn emit(&self, event: &str, data: &Value) -> Result<(), SendError>;
    /// Sends and waits until the client confirmed it; true when confirmed. Socket.IO: its ack within
    /// `timeout`, or else the socket still connected a whole heartbeat after the frame (it answered
    /// a ping sent behind it). A transport without client acks (`/ws`) confirms once the frame's
    /// bytes were written to the socket, never on a queue push.
    fn emit_confirmed<'a>(&'a self, event: &'a str, data: &'a Value, timeout: Duration) -> BoxFuture<'a, bool>;
    fn connected(&self) -> bool;
    fn close(&self, why: Close);
    /// `"socket.io"` or `"ws"`: for logs, metrics and the Admin UI's namespaces.
    fn transport(&self) -> &'static str;
    /// How it connected (for the Admin UI; not on a hot path).
    fn info(&self) -> ClientInfo;
}

/// A handle on a connected client.
pub type Client = Arc<dyn Link>;

/// Serialises `data` and sends it to `client` alone; errors are the caller's to log.
pub fn emit<T: serde::Serialize + ?Sized>(client: &dyn Link, event: &str, data: &T) -> Result<(), SendError> {
    let value = serde_json::to_value(data).map_err(|e| SendError::Other(e.to_string()))?;
    client.emit(event, &value)
}

/// Request headers for display: credentials replaced.
pub fn redacted_headers(headers: &axum::http::HeaderMap) -> serde_json::Map<String, Value> {
    headers
        .iter()
        .map(|(k, v)| {
            let shown = match k.as_str() {
                "authorization" | "cookie" | "sec-websocket-protocol" | "x-api-key" => "[redacted]".to_string(),
                _ => v.to_str().unwrap_or("(binary)").chars().take(256).collect(),
            };
            (k.as_str().to_string(), Value::String(shown))
        })
        .collect()
}

/// A query string for display: `token` replaced.
pub fn redacted_query(query: Option<&str>) -> serde_json::Map<String, Value> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .take(32)
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = if k == "token" { "[redacted]".to_string() } else { v.chars().take(256).collect() };
            (k.chars().take(64).collect(), Value::String(v))
        })
        .collect()
}

/// A time as the Admin UI shows a handshake's `time`.
pub fn date(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64).map(|d| d.to_rfc2822()).unwrap_or_default()
}
