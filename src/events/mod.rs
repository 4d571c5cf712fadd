//! The socket side: connect middleware (authentication), the `connected` greeting, and one dispatcher
//! per socket that routes every client event to its handler and answers it exactly once.
//!
//! One `on_fallback` dispatcher instead of a `socket.on(..)` per event keeps per-socket memory to one
//! handler, and gives every event the same path: parse, run, answer (ack or `error` event).

pub mod calls;
pub mod channels;
pub mod connection;
pub mod presence;
pub mod private;
pub mod rooms;
pub mod stats;

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Data, Event, SocketRef, State, TryData};
use socketioxide::handler::{FromMessageParts, Value};
use socketioxide::socket::{DisconnectReason, Socket};
use socketioxide::SocketIo;

use crate::auth::{find_token, AuthError};
use crate::error::{AckError, ApiError, Code, ErrorEvent, HandlerResult};
use crate::state::{AppState, ExpiryStep, Session};

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
    if let Some(limiter) = &state.connect_limiter {
        if let Some(ip) = client_ip(parts, state.config.trust_proxy_headers) {
            if limiter.check_key(&ip).is_err() {
                return refuse(&socket, &state, None, AuthError::TooManyConnections);
            }
        }
    }
    let (user, exp) = match token {
        None if state.config.allow_anonymous => (None, 0),
        None => return refuse(&socket, &state, None, AuthError::Required),
        Some(token) => match state.auth.verify(&token) {
            Ok(v) => (Some(v.user), v.exp),
            Err(e) => return refuse(&socket, &state, None, e),
        },
    };
    let Some(user) = user else {
        socket.extensions.insert(Arc::new(Session::new(None, 0, &state.quotas, None)));
        return Ok(());
    };
    // The per-user cap, checked and counted in one step on this node and then in the store
    // (cluster-wide), so that concurrent connects cannot both take the last place.
    let cap = state.config.max_sockets_per_user;
    let Some(slot) = state.counters.reserve(&user.user_id, cap) else {
        return refuse(&socket, &state, Some(&user.user_id), AuthError::TooManySockets);
    };
    // In the user's room before the store counts the socket: whoever sees it counted (a private
    // message deciding between live delivery and the offline queue) reaches it live.
    socket.join(crate::names::user(&user.user_id));
    let became_online = match state.store.socket_up(&user, &socket.id.to_string(), cap).await {
        Ok(Some(became)) => became,
        Ok(None) => return refuse(&socket, &state, Some(&user.user_id), AuthError::TooManySockets),
        Err(e) => {
            // Redis away: this node's count still holds; presence is resynced when it is back.
            tracing::warn!(user_id = %user.user_id, "presence up: {e}");
            false
        }
    };
    let session = Session::new(Some(user), exp, &state.quotas, Some(slot));
    session.became_online.store(became_online, std::sync::atomic::Ordering::Relaxed);
    socket.extensions.insert(Arc::new(session));
    Ok(())
}

fn refuse<A: Adapter>(
    socket: &SocketRef<A>,
    state: &AppState,
    user: Option<&str>,
    err: AuthError,
) -> Result<(), AuthError> {
    state.metrics.refused();
    tracing::info!(sid = %socket.id, user_id = user.unwrap_or("-"), reason = err.reason(), "connection refused");
    Err(err)
}

/// The client's address: when proxy headers are trusted, the last `X-Forwarded-For` entry (the one
/// the trusted proxy wrote; entries before it come from the client and prove nothing), else the
/// TCP peer.
pub fn client_ip(parts: &axum::http::request::Parts, trust_proxy: bool) -> Option<std::net::IpAddr> {
    if trust_proxy {
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.rsplit(',').next())
            .and_then(|ip| ip.trim().parse().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    parts.extensions.get::<axum::extract::ConnectInfo<crate::http::conn::Peer>>().map(|c| c.0.addr.ip())
}

/// The `connected` greeting (SPEC §2).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Connected<'a> {
    session_id: String,
    user_id: Option<&'a str>,
    user: Option<&'a crate::auth::User>,
    authorized_channels: Vec<String>,
    server_time: u64,
}

pub async fn on_connect<A: Adapter>(socket: SocketRef<A>, io: SocketIo<A>, State(state): State<AppState>) {
    let Some(session) = socket.extensions.get::<Arc<Session>>() else {
        // The middleware always sets it; without it the socket has no identity.
        let _ = socket.disconnect();
        return;
    };
    state.counters.add(session.user.is_some());
    if session.user.is_some() {
        state.expiry.schedule(session.exp(), ExpiryStep::Warn, socket.id);
    }
    tracing::info!(sid = %socket.id, user_id = session.user_id().unwrap_or("-"),
        transport = ?socket.transport_type(), "connected");

    socket.on_fallback(dispatch::<A>);
    socket.on_disconnect(on_disconnect::<A>);
    // Presence first, so that once a client holds `connected` everyone sharing a room heard of it.
    if let Some(user) = &session.user {
        if session.became_online.load(std::sync::atomic::Ordering::Relaxed) {
            presence::announce(&io, &state, &user.user_id, "online", &[]).await;
        }
    }

    let greeting = Connected {
        session_id: socket.id.to_string(),
        user_id: session.user_id(),
        user: session.user.as_ref(),
        authorized_channels: state.policy.authorized_patterns(session.user.as_ref()),
        server_time: crate::auth::unix_now_ms(),
    };
    let _ = socket.emit("connected", &greeting);

    if let Some(user) = &session.user {
        private::deliver_pending(&state, socket, &user.user_id).await;
    }
}

async fn on_disconnect<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    State(state): State<AppState>,
    reason: DisconnectReason,
) {
    depart(&io, &state, &socket, &reason.to_string()).await;
}

/// Everything a socket's departure does, once: from its disconnect handler, or from the shutdown
/// (socketioxide's `close` runs no disconnect handler, and the departure must reach the store
/// before this node stops).
pub async fn depart<A: Adapter>(io: &SocketIo<A>, state: &AppState, socket: &SocketRef<A>, reason: &str) {
    let Some(session) = socket.extensions.get::<Arc<Session>>() else {
        return;
    };
    if session.departed.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    tracing::info!(sid = %socket.id, user_id = session.user_id().unwrap_or("-"), reason, "disconnected");
    if let Some(user) = &session.user {
        user_left(io, state, socket, &session, user).await;
    }
    state.counters.remove(session.user.is_some());
}

/// One of the user's sockets is gone: its rooms, presence and calls.
async fn user_left<A: Adapter>(
    io: &SocketIo<A>,
    state: &AppState,
    socket: &SocketRef<A>,
    session: &Session,
    user: &crate::auth::User,
) {
    state.expiry.cancel(session.exp(), ExpiryStep::Warn, socket.id);
    let chat_rooms = session.take_rooms();
    let sid = socket.id.to_string();
    // The store first: it is what another node needs to finish the job if this one is shutting
    // down (then the adapter may already be closed and the room notices below may fail).
    let left = presence::socket_down(state, &user.user_id, &sid, &chat_rooms).await;
    // Every room at once: the cluster requests of a room run concurrently, not one after another.
    futures_util::future::join_all(
        chat_rooms.iter().map(|room| rooms::departed(io, state, &user.user_id, room, Some(socket.id))),
    )
    .await;
    calls::socket_gone(io, state, &user.user_id, &sid, left).await;
}

/// Runs a due timer job (see [`crate::timers`]).
pub async fn run_job<A: Adapter>(io: &SocketIo<A>, state: &AppState, job: crate::timers::Job) {
    use crate::timers::Job;
    match job {
        Job::TypingStop { room, user_id } => rooms::typing_timeout(io, state, &room, &user_id).await,
        Job::CallTimeout { call_id } => calls::ring_timeout(io, state, &call_id).await,
    }
}

/// One incoming event: its socket, raw arguments and ack id.
pub struct Msg<A: Adapter> {
    socket: Arc<Socket<A>>,
    value: Value,
    ack_id: Option<i64>,
}

impl<A: Adapter> FromMessageParts<A> for Msg<A> {
    type Error = Infallible;
    fn from_message_parts(s: &Arc<Socket<A>>, v: &mut Value, ack_id: &Option<i64>) -> Result<Self, Infallible> {
        let value = std::mem::replace(v, Value::Bytes(bytes::Bytes::new()));
        Ok(Msg { socket: s.clone(), value, ack_id: *ack_id })
    }
}

impl<A: Adapter> Msg<A> {
    /// The first argument, deserialised; `INVALID_PAYLOAD` when it does not fit.
    pub fn data<T: DeserializeOwned>(&mut self) -> Result<T, ApiError> {
        Data::<T>::from_message_parts(&self.socket, &mut self.value, &self.ack_id)
            .map(|Data(d)| d)
            .map_err(|e| ApiError::invalid(format!("Invalid payload: {}", truncate(&e.to_string(), 200))))
    }

    pub fn wants_ack(&self) -> bool {
        self.ack_id.is_some()
    }

    fn event(&mut self) -> Option<String> {
        Event::from_message_parts(&self.socket, &mut self.value, &self.ack_id).ok().map(|Event(e)| e)
    }

    /// Answers once: the ack when the client asked for one, else an `error` event on failure.
    fn answer(self, event: &str, result: HandlerResult) {
        let socket = SocketRef::from_message_parts(&self.socket, &mut Value::Bytes(Default::default()), &None);
        let Ok(socket) = socket;
        if self.ack_id.is_some() {
            let Ok(ack) =
                AckSender::from_message_parts(&self.socket, &mut Value::Bytes(Default::default()), &self.ack_id);
            let sent = match &result {
                Ok(v) => ack.send(v),
                Err(e) => ack.send(&AckError { success: false, error: &e.message, code: e.code }),
            };
            if let Err(e) = sent {
                tracing::debug!(sid = %socket.id, event, "ack not sent: {e}");
                // A client that does not read its socket fills the bounded buffer: drop it rather
                // than keep working for it.
                if matches!(e, socketioxide::SendError::Socket(socketioxide::SocketError::InternalChannelFull)) {
                    crate::delivery::close_slow_consumer(&socket);
                }
            }
        } else if let Err(e) = &result {
            let _ = socket.emit("error", &ErrorEvent { event, error: &e.message, code: e.code });
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Everything a handler gets besides its payload.
pub struct Ctx<A: Adapter> {
    pub socket: SocketRef<A>,
    pub io: SocketIo<A>,
    pub state: AppState,
    pub session: Arc<Session>,
}

impl<A: Adapter> Ctx<A> {
    /// The caller's user, or `UNAUTHENTICATED` for an anonymous socket.
    pub fn user(&self) -> Result<&crate::auth::User, ApiError> {
        self.session.user.as_ref().ok_or_else(ApiError::unauthenticated)
    }
}

/// Routes one client event to its handler and answers it exactly once, even if the handler panics.
async fn dispatch<A: Adapter>(socket: SocketRef<A>, io: SocketIo<A>, State(state): State<AppState>, mut msg: Msg<A>) {
    let Some(event) = msg.event() else {
        msg.answer("", Err(ApiError::invalid("Invalid payload: missing event name")));
        return;
    };
    let Some(session) = socket.extensions.get::<Arc<Session>>() else {
        return;
    };
    state.metrics.event_in(&event);
    if session.limiter.check().is_err() {
        if session.strikes.check().is_err() {
            tracing::warn!(sid = %socket.id, user_id = session.user_id().unwrap_or("-"), "event flood: disconnecting");
            state.metrics.error(Code::RateLimited);
            let _ = socket.disconnect();
            return;
        }
        state.metrics.error(Code::RateLimited);
        msg.answer(&event, Err(ApiError::new(Code::RateLimited, "Too many events")));
        return;
    }
    let ctx = Ctx { socket, io, state, session };
    let run = AssertUnwindSafe(route(&ctx, &event, &mut msg)).catch_unwind();
    let result = match run.await {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(sid = %ctx.socket.id, event, "handler panicked");
            Err(ApiError::new(Code::Internal, "Internal error"))
        }
    };
    if let Err(e) = &result {
        ctx.state.metrics.error(e.code);
        tracing::debug!(sid = %ctx.socket.id, event, code = e.code.as_str(), "event failed");
    }
    if msg.wants_ack() {
        ctx.state.metrics.ack(result.is_ok());
    }
    msg.answer(&event, result);
}

async fn route<A: Adapter>(ctx: &Ctx<A>, event: &str, msg: &mut Msg<A>) -> HandlerResult {
    match event {
        "subscribe" => channels::subscribe(ctx, msg.data()?).await,
        "unsubscribe" => channels::unsubscribe(ctx, msg.data()?).await,
        "list_channels" => channels::list_channels(ctx).await,
        "stats" => stats::stats(ctx).await,
        "join-room" => rooms::join_room(ctx, msg.data()?).await,
        "leave-room" => rooms::leave_room(ctx, msg.data()?).await,
        "create-room" => rooms::create_room(ctx, msg.data()?).await,
        "message" => rooms::message(ctx, msg.data()?).await,
        "edit-message" => rooms::edit_message(ctx, msg.data()?).await,
        "delete-message" => rooms::delete_message(ctx, msg.data()?).await,
        "list-rooms" => rooms::list_rooms(ctx).await,
        "load-messages" => rooms::load_messages(ctx, msg.data()?).await,
        "typing" => rooms::typing(ctx, msg.data()?).await,
        "stop-typing" => rooms::stop_typing(ctx, msg.data()?).await,
        "update-status" => presence::update_status(ctx, msg.data()?).await,
        "get-presence" => presence::get_presence(ctx, msg.data()?).await,
        "private-message" => private::private_message(ctx, msg.data()?).await,
        "mark-read" => private::mark_read(ctx, msg.data()?).await,
        "call-user" => calls::call_user(ctx, msg.data()?).await,
        "call-answer" => calls::call_answer(ctx, msg.data()?).await,
        "ice-candidate" => calls::ice_candidate(ctx, msg.data()?).await,
        "call-reject" => calls::call_reject(ctx, msg.data()?).await,
        "hang-up" => calls::hang_up(ctx, msg.data()?).await,
        "refresh-token" => connection::refresh_token(ctx, msg.data()?).await,
        _ => Err(ApiError::not_found("Unknown event")),
    }
}

/// The once-a-second sweep of token expiries: `auth-expired`, then a disconnect after the grace.
pub fn spawn_expiry_sweeper<A: Adapter>(io: SocketIo<A>, state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let grace_secs = state.config.auth_expiry_grace_ms.div_ceil(1000);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        let mut ticks: u64 = 0;
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(240) {
                // Once a minute: forget the connection-rate state of quiet addresses.
                if let Some(l) = &state.connect_limiter {
                    l.retain_recent();
                }
            }
            let now = crate::auth::unix_now();
            for (_, step, sid) in state.expiry.take_due(now) {
                let Some(socket) = io.get_socket(sid) else {
                    continue;
                };
                let Some(session) = socket.extensions.get::<Arc<Session>>() else {
                    continue;
                };
                if session.exp() > now {
                    continue; // refreshed since: a newer entry is queued
                }
                match step {
                    ExpiryStep::Warn => {
                        tracing::info!(sid = %sid, user_id = session.user_id().unwrap_or("-"), "token expired");
                        let _ = socket.emit(
                            "auth-expired",
                            &serde_json::json!({
                                "message": "Token expired",
                                "exp": session.exp(),
                                "graceMs": state.config.auth_expiry_grace_ms,
                            }),
                        );
                        state.expiry.schedule(now + grace_secs, ExpiryStep::Disconnect, sid);
                    }
                    ExpiryStep::Disconnect => {
                        tracing::info!(sid = %sid, user_id = session.user_id().unwrap_or("-"), "disconnecting: token expired");
                        let _ = socket.disconnect();
                    }
                }
            }
        }
    })
}
