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
use socketioxide::socket::Sid;

use crate::state::Session;

/// Why the gateway closes a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// An admin or the API asked for it (`/api/users/{id}/disconnect`).
    Kicked,
    /// The token expired and was not refreshed within the grace.
    AuthExpired,
    /// The client floods past its event budget.
    Abuse,
    /// The client does not read what it is sent: its buffer is full.
    SlowConsumer,
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

/// One connected client, as the core sees it.
pub trait Link: Send + Sync {
    /// The id that `socketId` targets name: `socket.id` for Socket.IO, `connectionId` for `/ws`.
    fn id(&self) -> Sid;
    /// Set once the client is admitted (anonymous or a user).
    fn session(&self) -> Option<Arc<Session>>;
    fn join(&self, room: &str);
    fn leave(&self, room: &str);
    /// Every room the client is in (on this node: a client lives on one node).
    fn rooms(&self) -> Vec<String>;
    /// Sends `event` with `data` to this client alone.
    fn emit(&self, event: &str, data: &Value) -> Result<(), SendError>;
    /// Sends and waits until the client confirmed it (Socket.IO: its ack) or `timeout`; true when
    /// confirmed. A transport without client acks confirms once the frame is queued.
    fn emit_confirmed<'a>(&'a self, event: &'a str, data: &'a Value, timeout: Duration) -> BoxFuture<'a, bool>;
    fn connected(&self) -> bool;
    fn close(&self, why: Close);
    /// `"socket.io"` or `"ws"`: for logs and metrics only.
    fn transport(&self) -> &'static str;
}

/// A handle on a connected client.
pub type Client = Arc<dyn Link>;

/// Serialises `data` and sends it to `client` alone; errors are the caller's to log.
pub fn emit<T: serde::Serialize + ?Sized>(client: &dyn Link, event: &str, data: &T) -> Result<(), SendError> {
    let value = serde_json::to_value(data).map_err(|e| SendError::Other(e.to_string()))?;
    client.emit(event, &value)
}
