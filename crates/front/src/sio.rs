//! The Socket.IO front end: socketioxide's middleware, connect and disconnect handlers, the one
//! dispatcher per socket, and the [`Transport`] that carries the core's broadcasts to Socket.IO
//! sockets on every node (the socketioxide Redis adapter does the crossing).
//!
//! One `on_fallback` dispatcher instead of a `socket.on(..)` per event keeps per-socket memory to one
//! handler, and gives every event the same path: parse, run, answer (ack or `error` event).

use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Data, Event, SocketRef, State, TryData};
use socketioxide::handler::{FromMessageParts, Value as SioValue};
use socketioxide::socket::{DisconnectReason, Sid, Socket};
use socketioxide::{BroadcastError, SocketError, SocketIo};

use crate::render;
use rtg_app::auth::{find_token, AuthError};
use rtg_app::events::{self, Outcome, Payload};
use rtg_app::state::AppState;
use rtg_model::client::{Client, ClientId, ClientInfo, Close, Link, SendError};
use rtg_model::error::{ApiError, HandlerResult};
use rtg_model::hub::{Broadcast, Member, Transport};
use rtg_model::session::Session;

/// A Socket.IO socket as the core sees it, with the Engine.IO heartbeat (ping interval plus ping
/// timeout): a socket still connected that long after a frame answered a ping sent after it.
pub struct SioLink<A: Adapter>(pub SocketRef<A>, pub Duration);

/// The gateway's id of a socket: its Socket.IO id, the same 16 characters.
pub fn client_id(sid: Sid) -> ClientId {
    sid.as_str().parse().unwrap_or(ClientId::ZERO)
}

/// The socketioxide id of a client id (every Socket.IO client's is one).
pub fn sid(id: ClientId) -> Option<Sid> {
    Sid::from_str(id.as_str()).ok()
}

fn send_error(e: socketioxide::SendError) -> SendError {
    match e {
        socketioxide::SendError::Socket(SocketError::InternalChannelFull) => SendError::Full,
        socketioxide::SendError::Socket(SocketError::Closed) => SendError::Closed,
        e => SendError::Other(e.to_string()),
    }
}

impl<A: Adapter> Link for SioLink<A> {
    fn id(&self) -> ClientId {
        client_id(self.0.id)
    }
    fn session(&self) -> Option<Arc<Session>> {
        self.0.extensions.get::<Arc<Session>>()
    }
    fn join(&self, room: &str) {
        self.0.join(room.to_string());
    }
    fn leave(&self, room: &str) {
        self.0.leave(room.to_string());
    }
    fn rooms(&self) -> Vec<String> {
        self.0.rooms().into_iter().map(|r| r.to_string()).collect()
    }
    fn emit(&self, event: &str, data: &serde_json::Value) -> Result<(), SendError> {
        self.0.emit(event, data).map_err(send_error)
    }
    fn emit_confirmed<'a>(
        &'a self,
        event: &'a str,
        data: &'a serde_json::Value,
        timeout: Duration,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let sent = tokio::time::Instant::now();
            let acked = match self.0.timeout(timeout).emit_with_ack::<_, serde_json::Value>(event, &(data,)) {
                Ok(stream) => stream.await.is_ok(),
                Err(_) => return false,
            };
            if acked {
                return true;
            }
            // No ack (an app that does not acknowledge the event): the frame counts as handed over
            // once the socket has lived through a whole heartbeat after it. Engine.IO pings go out
            // behind the frame on the same ordered transport, and a socket that stops answering
            // them is closed within that time, so a socket still connected then received it; a
            // half-open one is gone by then and confirms nothing.
            let deadline = sent + self.1;
            while tokio::time::Instant::now() < deadline {
                if !self.0.connected() {
                    return false;
                }
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_millis(250))).await;
            }
            self.0.connected()
        })
    }
    fn connected(&self) -> bool {
        self.0.connected()
    }
    /// A Socket.IO disconnect, whatever the reason (its client sees `io server disconnect`).
    fn close(&self, why: Close) {
        match why {
            // Not a Socket.IO disconnect: socket.io-client reconnects after a closed transport only.
            Close::Overloaded => close_transport(&self.0),
            Close::Kicked | Close::AuthExpired => {
                let _ = self.0.clone().disconnect();
            }
        }
    }
    fn transport(&self) -> rtg_model::client::Via {
        rtg_model::client::Via::SocketIo
    }
    fn info(&self) -> ClientInfo {
        let parts = self.0.req_parts();
        let transport = match self.0.transport_type() {
            socketioxide::TransportType::Polling => "polling",
            socketioxide::TransportType::Websocket => "websocket",
        };
        let issued = self.session().map(|s| s.since).unwrap_or_default();
        ClientInfo {
            transport: transport.into(),
            address: parts
                .extensions
                .get::<axum::extract::ConnectInfo<crate::http::conn::Peer>>()
                .map(|c| c.0.addr.ip().to_string()),
            headers: crate::render::redacted_headers(&parts.headers),
            query: crate::render::redacted_query(parts.uri.query()),
            issued,
            time: crate::render::date(issued),
            secure: false,
            url: parts.uri.path().to_string(),
        }
    }
}

fn link<A: Adapter>(state: &AppState, socket: SocketRef<A>) -> Client {
    link_with(heartbeat(state), socket)
}

fn link_with<A: Adapter>(heartbeat: Duration, socket: SocketRef<A>) -> Client {
    Arc::new(SioLink(socket, heartbeat))
}

/// The Engine.IO heartbeat: a socket silent that long is closed.
pub fn heartbeat(state: &AppState) -> Duration {
    state.config.ping_interval() + state.config.ping_timeout()
}

/// Connect middleware: finds and verifies the token (SPEC §2). Its error becomes `connect_error`
/// with `message` set to the error's `Display`.
pub async fn authenticate<A: Adapter>(
    socket: SocketRef<A>,
    State(state): State<AppState>,
    TryData(auth): TryData<serde_json::Value>,
) -> Result<(), AuthError> {
    let parts = socket.req_parts();
    let header = parts.headers.get("authorization").and_then(|h| h.to_str().ok());
    let auth = auth.ok();
    let token = find_token(auth.as_ref(), parts.uri.query(), header);
    let ip = crate::http::client_ip(parts, state.config.trust_proxy_headers);
    // The handshake already took this connection's place in the address's budget.
    let counted = parts.extensions.get::<Arc<crate::http::engine::Handshake>>().is_some_and(|h| h.connecting());
    let ip = if counted { None } else { ip };
    let client = link(&state, socket.clone());
    let session = events::admit(&state, &*client, token.as_deref(), ip).await?;
    // Session, counters and handlers are set before socketioxide sends the CONNECT packet. The
    // connect handler runs on a task of its own after that packet, so handlers registered there
    // would miss the events a client sends as soon as it is connected.
    socket.extensions.insert(Arc::new(Departure {
        state: state.clone(),
        id: client_id(socket.id),
        session: session.clone(),
    }));
    socket.extensions.insert(session);
    socket.on_fallback(dispatch::<A>);
    socket.on_disconnect(on_disconnect::<A>);
    Ok(())
}

/// Connect middleware for a namespace whose own middleware does not look at the handshake (the Admin
/// UI): its session no longer waits for a namespace (see `http/engine.rs`).
pub async fn handshake_done<A: Adapter>(socket: SocketRef<A>) -> Result<(), Infallible> {
    if let Some(h) = socket.req_parts().extensions.get::<Arc<crate::http::engine::Handshake>>() {
        h.connecting();
    }
    Ok(())
}

/// Departs a socket that socketioxide drops without running its disconnect handler: one whose
/// transport closed while its connect middleware ran, so it never entered the namespace. It was
/// admitted (counted, presence, user room); without this it would stay counted for good, its user
/// "online" and private messages to it acknowledged as delivered to nobody. Dropped with the
/// socket; a socket that departed normally makes it a no-op.
struct Departure {
    state: AppState,
    id: ClientId,
    session: Arc<Session>,
}

impl Drop for Departure {
    fn drop(&mut self) {
        if self.session.departed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let state = self.state.clone();
        let gone: Client = Arc::new(Gone { id: self.id, session: self.session.clone() });
        rt.spawn(async move { events::depart(&state, &*gone, "transport close").await });
    }
}

/// A Socket.IO client that is gone: its identity, nothing to send to.
struct Gone {
    id: ClientId,
    session: Arc<Session>,
}

impl Link for Gone {
    fn id(&self) -> ClientId {
        self.id
    }
    fn session(&self) -> Option<Arc<Session>> {
        Some(self.session.clone())
    }
    fn join(&self, _: &str) {}
    fn leave(&self, _: &str) {}
    fn rooms(&self) -> Vec<String> {
        Vec::new()
    }
    fn emit(&self, _: &str, _: &serde_json::Value) -> Result<(), SendError> {
        Err(SendError::Closed)
    }
    fn emit_confirmed<'a>(&'a self, _: &'a str, _: &'a serde_json::Value, _: Duration) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }
    fn connected(&self) -> bool {
        false
    }
    fn close(&self, _: Close) {}
    fn transport(&self) -> rtg_model::client::Via {
        rtg_model::client::Via::SocketIo
    }
    fn info(&self) -> ClientInfo {
        ClientInfo { transport: "websocket".into(), ..Default::default() }
    }
}

pub async fn on_connect<A: Adapter>(socket: SocketRef<A>, State(state): State<AppState>) {
    let Some(session) = socket.extensions.get::<Arc<Session>>() else {
        // The middleware always sets it; without it the socket has no identity.
        let _ = socket.disconnect();
        return;
    };
    tracing::debug!(sid = %socket.id, transport = ?socket.transport_type(), "socket.io transport");
    let client = link(&state, socket.clone());
    events::arrive(&state, client, session, |g| {
        let _ = socket.emit("connected", &render::socket_io_greeting(g));
    })
    .await;
}

async fn on_disconnect<A: Adapter>(socket: SocketRef<A>, State(state): State<AppState>, reason: DisconnectReason) {
    events::depart(&state, &*link(&state, socket), &reason.to_string()).await;
}

/// One incoming event: its socket, raw arguments and ack id.
pub struct Msg<A: Adapter> {
    pub(crate) socket: Arc<Socket<A>>,
    value: SioValue,
    ack_id: Option<i64>,
}

impl<A: Adapter> FromMessageParts<A> for Msg<A> {
    type Error = Infallible;
    fn from_message_parts(s: &Arc<Socket<A>>, v: &mut SioValue, ack_id: &Option<i64>) -> Result<Self, Infallible> {
        let value = std::mem::replace(v, SioValue::Bytes(bytes::Bytes::new()));
        Ok(Msg { socket: s.clone(), value, ack_id: *ack_id })
    }
}

impl<A: Adapter> Payload for Msg<A> {
    fn decode<T: DeserializeOwned>(&mut self) -> Result<T, ApiError> {
        Data::<T>::from_message_parts(&self.socket, &mut self.value, &self.ack_id)
            .map(|Data(d)| d)
            .map_err(|e| events::invalid_payload(&e.to_string()))
    }
    fn peek(&self) -> serde_json::Value {
        // The packet's JSON: `["event", ...args]` (the event name already taken or not).
        match &self.value {
            SioValue::Str(s, _) => match serde_json::from_str::<serde_json::Value>(s.as_str()) {
                Ok(serde_json::Value::Array(mut a)) => {
                    if a.first().is_some_and(|v| v.is_string()) {
                        a.remove(0);
                    }
                    serde_json::Value::Array(a)
                }
                Ok(v) => v,
                Err(_) => serde_json::Value::String("(unreadable)".into()),
            },
            SioValue::Bytes(b) => serde_json::Value::String(format!("({} bytes)", b.len())),
        }
    }
    fn args(&self) -> Vec<serde_json::Value> {
        use base64::Engine;
        let serde_json::Value::Array(mut args) = self.peek() else { return Vec::new() };
        // Binary attachments: their placeholders `{"_placeholder":true,"num":n}` become base64 strings.
        if let SioValue::Str(_, Some(bins)) = &self.value {
            fn fill(v: &mut serde_json::Value, bins: &std::collections::VecDeque<bytes::Bytes>, depth: usize) {
                if depth > 32 {
                    return;
                }
                match v {
                    serde_json::Value::Object(o) if o.get("_placeholder") == Some(&serde_json::Value::Bool(true)) => {
                        let n = o.get("num").and_then(serde_json::Value::as_u64).unwrap_or(u64::MAX) as usize;
                        if let Some(b) = bins.get(n) {
                            *v = serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(b));
                        }
                    }
                    serde_json::Value::Object(o) => o.values_mut().for_each(|x| fill(x, bins, depth + 1)),
                    serde_json::Value::Array(a) => a.iter_mut().for_each(|x| fill(x, bins, depth + 1)),
                    _ => {}
                }
            }
            args.iter_mut().for_each(|a| fill(a, bins, 0));
        }
        args
    }
}

impl<A: Adapter> Msg<A> {
    /// The packet's size in bytes (its JSON and binary attachments).
    fn size(&self) -> usize {
        match &self.value {
            SioValue::Str(s, bins) => s.as_str().len() + bins.as_ref().map_or(0, |b| b.iter().map(|x| x.len()).sum()),
            SioValue::Bytes(b) => b.len(),
        }
    }
}

impl<A: Adapter> Msg<A> {
    fn event(&mut self) -> Option<String> {
        Event::from_message_parts(&self.socket, &mut self.value, &self.ack_id).ok().map(|Event(e)| e)
    }

    /// Answers once: the ack when the client asked for one, else an `error` event on failure.
    fn answer(self, event: &str, result: HandlerResult, watcher: Option<&dyn rtg_model::hub::Watcher>) {
        let Ok(socket) = SocketRef::from_message_parts(&self.socket, &mut SioValue::Bytes(Default::default()), &None);
        if self.ack_id.is_some() {
            let Ok(ack) =
                AckSender::from_message_parts(&self.socket, &mut SioValue::Bytes(Default::default()), &self.ack_id);
            let sent = match &result {
                Ok(v) => ack.send(v),
                Err(e) => ack.send(&render::ack_error(e)),
            };
            if let Some(w) = watcher {
                let bytes = result.as_ref().map(|v| v.to_string().len()).unwrap_or(64);
                w.packets(false, 1, bytes as u64);
            }
            if let Err(e) = sent {
                tracing::debug!(sid = %socket.id, event, "ack not sent: {e}");
                // A client that does not read its socket fills the bounded buffer: drop it rather
                // than keep working for it.
                if matches!(e, socketioxide::SendError::Socket(SocketError::InternalChannelFull)) {
                    close_slow_consumer(&socket);
                }
            }
        } else if let Err(e) = &result {
            let _ = socket.emit("error", &render::error_event(event, e));
        }
    }
}

/// Runs one client event through the core and answers it exactly once.
async fn dispatch<A: Adapter>(socket: SocketRef<A>, State(state): State<AppState>, mut msg: Msg<A>) {
    let Some(event) = msg.event() else {
        msg.answer("", Err(ApiError::invalid("Invalid payload: missing event name")), state.hub.watcher());
        return;
    };
    let wants_ack = msg.ack_id.is_some();
    if let Some(w) = state.hub.watcher() {
        w.packets(true, 1, msg.size() as u64);
    }
    match events::handle(&state, link(&state, socket.clone()), &event, &mut msg, wants_ack).await {
        Outcome::Answer(result, then) => {
            msg.answer(&event, result, state.hub.watcher());
            drop(then);
        }
        Outcome::Flood => {
            let _ = socket.disconnect();
        }
        Outcome::Ignore => {}
    }
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
    matches!(socket.emit("", &Probe), Err(socketioxide::SendError::Socket(SocketError::InternalChannelFull)))
}

/// Closes a socket whose client does not read what it is sent: its TCP connection is closed under
/// it (socketioxide's disconnect needs a place in the full buffer), which runs its disconnect handler.
pub fn close_slow_consumer<A: Adapter>(socket: &SocketRef<A>) {
    tracing::warn!(sid = %socket.id, "slow consumer: buffer full, disconnecting");
    close_transport(socket);
}

/// Closes the socket's TCP connection (the client sees a transport close and reconnects).
fn close_transport<A: Adapter>(socket: &SocketRef<A>) {
    match socket.req_parts().extensions.get::<axum::extract::ConnectInfo<crate::http::conn::Peer>>() {
        Some(peer) => peer.0.kill(),
        None => {
            let _ = socket.clone().disconnect();
        }
    }
}

/// After a broadcast to `rooms`: when some buffers were full, closes this node's slow consumers there.
fn shed_slow_consumers<A: Adapter>(io: &SocketIo<A>, rooms: &[String], res: &Result<(), BroadcastError>) {
    let Err(BroadcastError::Socket(errors)) = res else { return };
    if !errors.iter().any(|e| matches!(e, SocketError::InternalChannelFull)) {
        return;
    }
    let sockets = if rooms.is_empty() { io.local().sockets() } else { io.local().within(rooms.to_vec()).sockets() };
    for socket in sockets {
        if buffer_full(&socket) {
            close_slow_consumer(&socket);
        }
    }
}

/// The Socket.IO side of the hub.
pub struct SioTransport<A: Adapter> {
    pub io: SocketIo<A>,
    /// See [`heartbeat`].
    pub heartbeat: Duration,
}

impl<A: Adapter> Transport for SioTransport<A> {
    fn broadcast<'a>(&'a self, b: &'a Broadcast) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let sender = b.skip.as_deref().and_then(|s| Sid::from_str(s).ok()).and_then(|sid| self.io.get_socket(sid));
            let mut ops = match &sender {
                Some(s) => s.broadcast(),
                None => self.io.broadcast(),
            };
            if b.local {
                ops = ops.local();
            }
            if !b.rooms.is_empty() {
                ops = ops.to(b.rooms.clone());
            }
            if !b.except.is_empty() {
                ops = ops.except(b.except.clone());
            }
            let res = ops.emit(&b.event, &b.data).await;
            shed_slow_consumers(&self.io, &b.rooms, &res);
            match res {
                Ok(()) => Ok(()),
                // Full buffers were dealt with above; a closed socket is leaving anyway.
                Err(BroadcastError::Socket(_)) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn get(&self, id: ClientId) -> Option<Client> {
        self.io.get_socket(sid(id)?).map(|s| link_with(self.heartbeat, s))
    }

    fn local_clients(&self) -> Vec<Client> {
        self.io.local().sockets().into_iter().map(|s| link_with(self.heartbeat, s)).collect()
    }

    fn members<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Vec<Member>> {
        Box::pin(async move {
            match self.io.within(room.to_string()).fetch_sockets().await {
                Ok(sockets) => sockets
                    .iter()
                    .map(|rs| {
                        let id = rs.data().id;
                        let session = self.io.get_socket(id).and_then(|s| s.extensions.get::<Arc<Session>>());
                        Member { id: client_id(id), session }
                    })
                    .collect(),
                Err(e) => {
                    tracing::warn!(room, "room members: {e:?}");
                    Vec::new()
                }
            }
        })
    }

    fn rooms_of_members<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut out = Vec::new();
            if let Ok(sockets) = self.io.within(room.to_string()).fetch_sockets().await {
                for s in sockets {
                    out.extend(s.rooms().await.unwrap_or_default().into_iter().map(|r| r.to_string()));
                }
            }
            out
        })
    }

    fn leave_all<'a>(&'a self, rooms: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let _ = self.io.within(rooms.to_vec()).leave(rooms.to_vec()).await;
        })
    }

    fn disconnect<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<usize, String>> {
        Box::pin(async move {
            let n = self.io.within(room.to_string()).fetch_sockets().await.map_err(|e| format!("{e:?}"))?.len();
            self.io.to(room.to_string()).disconnect().await.map_err(|e| e.to_string())?;
            Ok(n)
        })
    }

    fn local_rooms(&self) -> BoxFuture<'_, Vec<(String, u64)>> {
        Box::pin(async move {
            let rooms = self.io.local().rooms().await.unwrap_or_default();
            rooms
                .into_iter()
                .map(|room| {
                    let n = self.io.local().within(room.clone()).sockets().len() as u64;
                    (room.to_string(), n)
                })
                .collect()
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.io.close().await })
    }
}
