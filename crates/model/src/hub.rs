//! The one delivery path: every event the gateway sends to more than one client goes through
//! [`Hub::to`], whichever front end its recipients came through and whichever node they are on.
//!
//! A room is a name (`r:<roomId>`, `ch:<channel>`, `u:<userId>`, `c:<callId>:a`, ...; see
//! `names.rs`). Each front end registers a [`Transport`] that knows its own clients' rooms and
//! carries a broadcast to its clients on the other nodes: Socket.IO through the socketioxide Redis
//! adapter, `/ws` through the gateway's bus channel (`<prefix>:bus`, see `ingress.rs`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::id::ClientId;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{Client, Link};
use crate::names;
use crate::session::Joined;
use crate::session::Session;

/// One emit to the clients in `rooms` (all clients when empty), minus those in `except` and the
/// client `skip`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Broadcast {
    pub rooms: Vec<String>,
    #[serde(default)]
    pub except: Vec<String>,
    #[serde(default)]
    pub skip: Option<String>,
    pub event: String,
    pub data: Value,
    /// This node's clients only (each node got the request itself: ingress, `realtime:emit`).
    #[serde(skip)]
    pub local: bool,
}

/// A client in a room, on any node. `session` is known for this node's clients only.
pub struct Member {
    pub id: ClientId,
    pub session: Option<Arc<Session>>,
}

/// What a front end offers the core.
pub trait Transport: Send + Sync {
    /// Delivers to this transport's clients: on this node, and on the others unless `b.local`.
    fn broadcast<'a>(&'a self, b: &'a Broadcast) -> BoxFuture<'a, Result<(), String>>;
    fn get(&self, id: ClientId) -> Option<Client>;
    fn local_clients(&self) -> Vec<Client>;
    /// The clients in `room` on every node this transport reaches.
    fn members<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Vec<Member>>;
    /// The rooms of every client in `room`, on every node.
    fn rooms_of_members<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Vec<String>>;
    /// Makes every client in any of `rooms` leave all of them, on every node.
    fn leave_all<'a>(&'a self, rooms: &'a [String]) -> BoxFuture<'a, ()>;
    /// Closes every client in `room` on every node; how many there were.
    fn disconnect<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<usize, String>>;
    /// This node's rooms with their number of clients.
    fn local_rooms(&self) -> BoxFuture<'_, Vec<(String, u64)>>;
    /// The node stops: close this transport's connections (clients were told and departed).
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// Told what happens to this node's clients: the Admin UI's live view. Installed once at start-up, so that
/// the parts below the front ends tell it without knowing it.
pub trait Watcher: Send + Sync {
    fn connected(&self, client: &dyn Link);
    fn disconnected(&self, client: &dyn Link, reason: &str);
    fn room(&self, client: &dyn Link, room: &str, joined: bool);
    /// A client event arrived; `args` renders its arguments, only when wanted.
    fn received(&self, client: &dyn Link, event: &str, args: &mut dyn FnMut() -> Value);
    /// Packets and bytes a front end read (`incoming`) or wrote.
    fn packets(&self, incoming: bool, packets: u64, bytes: u64);
}

/// The registered transports, and the watcher. Set once at start-up, after the front ends are built.
#[derive(Default)]
pub struct Hub {
    transports: OnceLock<Vec<Arc<dyn Transport>>>,
    watcher: OnceLock<Arc<dyn Watcher>>,
}

impl Hub {
    pub fn install(&self, transports: Vec<Arc<dyn Transport>>) {
        if self.transports.set(transports).is_err() {
            tracing::error!("hub: transports installed twice");
        }
    }

    pub fn watch(&self, watcher: Arc<dyn Watcher>) {
        if self.watcher.set(watcher).is_err() {
            tracing::error!("hub: watcher installed twice");
        }
    }

    pub fn watcher(&self) -> Option<&dyn Watcher> {
        self.watcher.get().map(|w| &**w)
    }

    /// Puts a client in a room: the one way every part does it (handlers, the event proxy's answers, the
    /// emitters, the Admin UI, the dialects). With `own: Some(cap)` a chat room (`r:<id>`) becomes the
    /// client's own, as after `join-room`: recorded in its session, so that it may post there and its
    /// departure is announced there, unless the socket already holds `cap` of them (`Full`: nothing
    /// joined). With `None` the client is only reached there (a dialect's default rooms, a user's,
    /// channel or call rooms). The watcher hears of it.
    pub fn join(&self, client: &dyn Link, room: &str, own: Option<usize>) -> Joined {
        let joined = match (room.strip_prefix(names::CHAT_PREFIX), client.session(), own) {
            (Some(id), Some(session), Some(cap)) => session.join_room(id, cap),
            _ => Joined::New,
        };
        if joined != Joined::Full {
            client.join(room);
            if let Some(w) = self.watcher() {
                w.room(client, room, true);
            }
        }
        joined
    }

    /// Takes a client out of a room, the one way (see [`Hub::join`]); false when it was not in that
    /// chat room.
    pub fn leave(&self, client: &dyn Link, room: &str) -> bool {
        let was_in = match (room.strip_prefix(names::CHAT_PREFIX), client.session()) {
            (Some(id), Some(session)) => session.leave_room(id),
            _ => true,
        };
        client.leave(room);
        if let (true, Some(w)) = (was_in, self.watcher()) {
            w.room(client, room, false);
        }
        was_in
    }

    fn all(&self) -> &[Arc<dyn Transport>] {
        self.transports.get().map(Vec::as_slice).unwrap_or(&[])
    }

    /// An emit to the clients in `rooms` (see [`Emit`]).
    pub fn to(&self, rooms: impl IntoRooms) -> Emit<'_> {
        Emit { hub: self, rooms: rooms.into_rooms(), except: Vec::new(), skip: None, local: false }
    }

    /// An emit to every client.
    pub fn everyone(&self) -> Emit<'_> {
        self.to(Vec::new())
    }

    pub async fn send(&self, b: &Broadcast) -> Result<(), String> {
        let mut first_err = Ok(());
        for t in self.all() {
            if let Err(e) = t.broadcast(b).await {
                if first_err.is_ok() {
                    first_err = Err(e);
                }
            }
        }
        first_err
    }

    /// This node's client with that id.
    pub fn get(&self, id: ClientId) -> Option<Client> {
        self.all().iter().find_map(|t| t.get(id))
    }

    pub fn local_clients(&self) -> Vec<Client> {
        self.all().iter().flat_map(|t| t.local_clients()).collect()
    }

    pub async fn members(&self, room: &str) -> Vec<Member> {
        let all = futures_util::future::join_all(self.all().iter().map(|t| t.members(room))).await;
        all.into_iter().flatten().collect()
    }

    pub async fn rooms_of_members(&self, room: &str) -> Vec<String> {
        let all = futures_util::future::join_all(self.all().iter().map(|t| t.rooms_of_members(room))).await;
        let mut out: Vec<String> = all.into_iter().flatten().collect();
        out.sort();
        out.dedup();
        out
    }

    pub async fn leave_all(&self, rooms: &[String]) {
        futures_util::future::join_all(self.all().iter().map(|t| t.leave_all(rooms))).await;
    }

    pub async fn disconnect(&self, room: &str) -> Result<usize, String> {
        let mut n = 0;
        for t in self.all() {
            n += t.disconnect(room).await?;
        }
        Ok(n)
    }

    pub async fn shutdown(&self) {
        futures_util::future::join_all(self.all().iter().map(|t| t.shutdown())).await;
    }

    /// This node's rooms with their number of clients, over every transport.
    pub async fn local_rooms(&self) -> HashMap<String, u64> {
        let mut out: HashMap<String, u64> = HashMap::new();
        for t in self.all() {
            for (room, n) in t.local_rooms().await {
                *out.entry(room).or_default() += n;
            }
        }
        out
    }
}

/// Room names for [`Hub::to`].
pub trait IntoRooms {
    fn into_rooms(self) -> Vec<String>;
}
impl IntoRooms for String {
    fn into_rooms(self) -> Vec<String> {
        vec![self]
    }
}
impl IntoRooms for &str {
    fn into_rooms(self) -> Vec<String> {
        vec![self.to_string()]
    }
}
impl IntoRooms for Vec<String> {
    fn into_rooms(self) -> Vec<String> {
        self
    }
}

/// A broadcast being built: `hub.to(room).except(other).skip(sender).emit(event, &data)`.
#[must_use]
pub struct Emit<'a> {
    hub: &'a Hub,
    rooms: Vec<String>,
    except: Vec<String>,
    skip: Option<ClientId>,
    local: bool,
}

impl Emit<'_> {
    /// Leaves out the clients in these rooms.
    pub fn except(mut self, rooms: impl IntoRooms) -> Self {
        self.except.extend(rooms.into_rooms());
        self
    }
    /// Leaves out one client (the sender).
    pub fn skip(mut self, id: ClientId) -> Self {
        self.skip = Some(id);
        self
    }
    /// This node's clients only.
    pub fn local(mut self) -> Self {
        self.local = true;
        self
    }
    pub async fn emit<T: Serialize + ?Sized>(self, event: &str, data: &T) -> Result<(), String> {
        let data = serde_json::to_value(data).map_err(|e| e.to_string())?;
        self.emit_value(event, data).await
    }

    /// [`Emit::emit`] of a value already built (not copied again).
    pub async fn emit_value(self, event: &str, data: Value) -> Result<(), String> {
        let b = Broadcast {
            rooms: self.rooms,
            except: self.except,
            skip: self.skip.map(|s| s.to_string()),
            event: event.to_string(),
            data,
            local: self.local,
        };
        self.hub.send(&b).await
    }
}
