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

pub use crate::id::ClientId;
use crate::session::Session;

/// The front end a client came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Via {
    #[serde(rename = "socket.io")]
    SocketIo,
    #[serde(rename = "ws")]
    Ws,
}

impl Via {
    /// `"socket.io"` or `"ws"`, as logs and webhooks name it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Via::SocketIo => "socket.io",
            Via::Ws => "ws",
        }
    }
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
    /// Which front end carries it: for logs, hooks and the Admin UI's namespaces.
    fn transport(&self) -> Via;
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
