//! The core's side of a connected client, for both front ends (`sio.rs`, `ws/`): admission (token,
//! per-address rate, per-user cap), arrival and departure, and [`handle`], which runs one client
//! event through the rate limit and its handler and returns the one answer.
//!
//! Handlers take a [`Ctx`]: the [`Client`] (identity, rooms, a way to send it an event), the node's
//! [`AppState`] and the client's [`Session`]; they reach other clients through `state.hub`.

pub mod calls;
pub mod channels;
pub mod connection;
pub mod files;
pub mod presence;
pub mod private;
pub mod proxied;
pub mod rooms;
pub mod stats;

use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use serde::de::DeserializeOwned;

use crate::auth::AuthError;
use crate::state::AppState;
use rtg_model::client::{Client, Close, Link};
use rtg_model::error::{ApiError, Code, HandlerResult};
use rtg_model::event::ClientEvent;
use rtg_model::hub::Hub;
use rtg_model::session::{ExpiryStep, Session};

/// An event's arguments, as each front end carries them.
pub trait Payload {
    /// The first argument, deserialised; `INVALID_PAYLOAD` when it does not fit.
    fn decode<T: DeserializeOwned>(&mut self) -> Result<T, ApiError>;
    /// The arguments as JSON, for the Admin UI (only asked for when it watches).
    fn peek(&self) -> serde_json::Value;
    /// Every argument as JSON (binary ones as base64 strings): what the event proxy forwards.
    fn args(&self) -> Vec<serde_json::Value>;
}

/// A JSON value as the event's argument (`/ws` frames, tests).
impl Payload for serde_json::Value {
    fn decode<T: DeserializeOwned>(&mut self) -> Result<T, ApiError> {
        T::deserialize(std::mem::take(self)).map_err(|e| invalid_payload(&e.to_string()))
    }
    fn peek(&self) -> serde_json::Value {
        self.clone()
    }
    fn args(&self) -> Vec<serde_json::Value> {
        match self {
            serde_json::Value::Null => Vec::new(),
            v => vec![v.clone()],
        }
    }
}

/// The `INVALID_PAYLOAD` error for a deserialisation failure, its detail cut short.
pub fn invalid_payload(detail: &str) -> ApiError {
    ApiError::invalid(format!("Invalid payload: {}", truncate(detail, 200)))
}

/// Admits a new client: the per-address connection rate, the token (or anonymous access), and the
/// per-user cap, checked and counted in one step on this node and then in the store (cluster-wide),
/// so that concurrent connects cannot both take the last place. The client joins its user room
/// before the store counts it: whoever sees it counted (a private message deciding between live
/// delivery and the offline queue) reaches it live.
pub async fn admit(
    state: &AppState,
    client: &dyn Link,
    token: Option<&str>,
    ip: Option<IpAddr>,
) -> Result<Arc<Session>, AuthError> {
    check_ip(state, client, ip)?;
    let (user, exp) = match token {
        None if state.config.allow_anonymous => (None, 0),
        None => return refuse(client, state, None, AuthError::Required),
        Some(token) => match state.auth.verify(token) {
            Ok(v) => (Some(v.user), v.exp),
            Err(e) => return refuse(client, state, None, e),
        },
    };
    let Some(user) = user else {
        let session = Arc::new(Session::new(None, 0, &state.quotas, None));
        state.counters.add(false);
        return Ok(session);
    };
    admit_user(state, client, user, exp).await
}

/// The per-address connection rate (`CONNECT_RATE_PER_IP`).
pub fn check_ip(state: &AppState, client: &dyn Link, ip: Option<IpAddr>) -> Result<(), AuthError> {
    if let (Some(limiter), Some(ip)) = (&state.connect_limiter, ip) {
        if limiter.check_key(&ip).is_err() {
            return refuse(client, state, None, AuthError::TooManyConnections);
        }
    }
    Ok(())
}

/// The per-user part of [`admit`], also used by `/ws` in-band authentication.
pub async fn admit_user(
    state: &AppState,
    client: &dyn Link,
    user: rtg_model::user::User,
    exp: u64,
) -> Result<Arc<Session>, AuthError> {
    let cap = state.config.max_sockets_per_user;
    let Some(slot) = state.counters.reserve(&user.user_id, cap) else {
        return refuse(client, state, Some(&user.user_id), AuthError::TooManySockets);
    };
    state.hub.join(client, &rtg_model::names::user(&user.user_id), None);
    let became_online = match state.store.socket_up(&user, &client.id().to_string(), cap).await {
        Ok(Some(became)) => became,
        Ok(None) => {
            client.leave(&rtg_model::names::user(&user.user_id));
            return refuse(client, state, Some(&user.user_id), AuthError::TooManySockets);
        }
        Err(e) => {
            // Redis away: this node's count still holds; presence is resynced when it is back.
            tracing::warn!(user_id = %user.user_id, "presence up: {e}");
            false
        }
    };
    let session = Session::new(Some(user), exp, &state.quotas, Some(slot));
    session.became_online.store(became_online, std::sync::atomic::Ordering::Relaxed);
    state.counters.add(true);
    state.expiry.schedule(exp, ExpiryStep::Warn, client.id());
    Ok(Arc::new(session))
}

fn refuse<T>(client: &dyn Link, state: &AppState, user: Option<&str>, err: AuthError) -> Result<T, AuthError> {
    state.metrics.refused();
    tracing::info!(sid = %client.id(), user_id = user.unwrap_or("-"), reason = err.reason(),
        transport = %client.transport(), "connection refused");
    Err(err)
}

/// Before the greeting: a user who just came online is announced to everyone sharing a room, so
/// that once a client holds `connected` they heard of it; the Admin UI lists the client.
async fn announce_arrival(state: &AppState, client: &dyn Link, session: &Session) {
    if let Some(w) = state.hub.watcher() {
        w.connected(client);
    }
    let (sid, user_id) = (client.id().to_string(), session.user_id());
    state.hook(
        "socket.connected",
        user_id.unwrap_or(&sid),
        || serde_json::json!({ "socketId": sid, "userId": user_id, "transport": client.transport() }),
    );
    if let (Some(user), true) = (session.user(), session.became_online.load(std::sync::atomic::Ordering::Relaxed)) {
        state.hook("user.online", &user.user_id, || serde_json::json!({ "userId": user.user_id, "user": &*user }));
    }
    if let Some(user) = session.user() {
        if session.became_online.load(std::sync::atomic::Ordering::Relaxed) {
            presence::announce(state, &user.user_id, "online", &[]).await;
        }
    }
}

/// What an admitted client is told (`connected`), before each front end gives it its own shape
/// (`front/render.rs`).
pub struct Greeting {
    pub id: rtg_model::id::ClientId,
    pub user: Option<Arc<rtg_model::user::User>>,
    /// The channel patterns this user may subscribe to.
    pub authorized_channels: Vec<String>,
    /// When it was sent, ms since the epoch.
    pub at_ms: u64,
}

impl Greeting {
    pub fn of(state: &AppState, client: &dyn Link, session: &Session) -> Self {
        let user = session.user();
        Greeting {
            id: client.id(),
            authorized_channels: state.policy.authorized_patterns(user.as_deref()),
            user,
            at_ms: rtg_model::clock::unix_now_ms(),
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        self.user.as_deref().map(|u| u.user_id.as_str())
    }
}

/// A client's arrival once admitted, the same on every front end: presence and the hooks hear of it
/// first (so that once a client holds `connected`, everyone sharing a room heard of the user), then
/// `greet` sends the greeting in the front end's shape, then the user's queued private messages
/// follow on a task of their own (they wait for confirmations; the connection goes on meanwhile).
pub async fn arrive(state: &AppState, client: Client, session: Arc<Session>, greet: impl FnOnce(&Greeting)) {
    tracing::info!(sid = %client.id(), user_id = session.user_id().unwrap_or("-"), transport = %client.transport(),
        "connected");
    announce_arrival(state, &*client, &session).await;
    greet(&Greeting::of(state, &*client, &session));
    if let Some(user_id) = session.user_id().map(str::to_string) {
        let state = state.clone();
        tokio::spawn(async move { private::deliver_pending(&state, client, &user_id).await });
    }
}

/// Everything a client's departure does, once: from its transport's close, or from the shutdown
/// (the departure must reach the store before this node stops).
pub async fn depart(state: &AppState, client: &dyn Link, reason: &str) {
    let Some(session) = client.session() else {
        return;
    };
    if session.departed.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    if let Some(w) = state.hub.watcher() {
        w.disconnected(client, reason);
    }
    let sid = client.id().to_string();
    state.hook("socket.disconnected", session.user_id().unwrap_or(&sid), || {
        serde_json::json!({ "socketId": sid, "userId": session.user_id(), "reason": reason, "transport": client.transport() })
    });
    tracing::info!(sid = %client.id(), user_id = session.user_id().unwrap_or("-"), reason,
        transport = %client.transport(), "disconnected");
    if let Some(user) = session.user() {
        // Its uploads cannot go on: their chunks came over this connection.
        state.files.sweep(Some(&sid)).await;
        user_left(state, client, &session, &user).await;
    }
    state.counters.remove(session.user_id().is_some());
}

/// One of the user's clients is gone: its rooms, presence and calls.
async fn user_left(state: &AppState, client: &dyn Link, session: &Session, user: &rtg_model::user::User) {
    state.expiry.cancel(session.exp(), ExpiryStep::Warn, client.id());
    let chat_rooms = session.take_rooms();
    let sid = client.id().to_string();
    // The store first: it is what another node needs to finish the job if this one is shutting
    // down (then the adapter may already be closed and the room notices below may fail).
    let left = presence::socket_down(state, &user.user_id, &sid, &chat_rooms).await;
    // Every room at once: the cluster requests of a room run concurrently, not one after another.
    futures_util::future::join_all(
        chat_rooms.iter().map(|room| rooms::departed(state, &user.user_id, room, Some(client.id()))),
    )
    .await;
    calls::socket_gone(state, &user.user_id, &sid, left).await;
}

/// Runs a due timer job (see [`rtg_model::timers`]).
pub async fn run_job(state: &AppState, job: rtg_model::timers::Job) {
    use rtg_model::timers::Job;
    match job {
        Job::TypingStop { room, user_id } => rooms::typing_timeout(state, &room, &user_id).await,
        Job::CallTimeout { call_id } => calls::ring_timeout(state, &call_id).await,
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Everything a handler gets besides its payload.
pub struct Ctx {
    pub client: Client,
    pub state: AppState,
    pub session: Arc<Session>,
    /// The session's claims when the event arrived: one event runs with one role throughout (a
    /// refresh that lowers it applies from the next event).
    pub user: Option<Arc<rtg_model::user::User>>,
    /// Set by a handler that has something to do once its answer is written (see [`Then`]).
    pub then: std::sync::Mutex<Then>,
}

impl Ctx {
    /// The caller's user, or `UNAUTHENTICATED` for an anonymous client.
    pub fn user(&self) -> Result<&rtg_model::user::User, ApiError> {
        self.user.as_deref().ok_or_else(ApiError::unauthenticated)
    }
    pub fn hub(&self) -> &Hub {
        &self.state.hub
    }
    pub fn id(&self) -> rtg_model::id::ClientId {
        self.client.id()
    }
}

/// What a handler defers until its client has the answer: the front end drops it right after
/// writing the answer (a recovering subscription's missed publications follow its ack).
#[derive(Default)]
pub struct Then {
    /// Held for its `Drop`, which does the deferred work.
    _deferred: Option<Box<dyn Send>>,
}

impl Then {
    pub fn new(deferred: impl Send + 'static) -> Self {
        Then { _deferred: Some(Box::new(deferred)) }
    }
}

/// What the front end does after [`handle`].
pub enum Outcome {
    /// The one answer: an ack when the client asked for one, else an error notice on failure.
    /// Drop the [`Then`] once the answer is written.
    Answer(HandlerResult, Then),
    /// Past the event budget and its strikes: close the client.
    Flood,
    /// The client has no session (not admitted): nothing to answer.
    Ignore,
}

/// Runs one client event: the rate limit, then its handler, which answers exactly once even if
/// it panics.
pub async fn handle<P: Payload>(
    state: &AppState,
    client: Client,
    event: &str,
    payload: &mut P,
    wants_ack: bool,
) -> Outcome {
    let Some(session) = client.session() else {
        return Outcome::Ignore;
    };
    let kind = ClientEvent::parse(event);
    state.metrics.event_in(kind);
    if let Some(w) = state.hub.watcher() {
        w.received(&*client, event, &mut || payload.peek());
    }
    if let Err(flood) = check_rate(state, &*client, &session) {
        return flood;
    }
    let ctx = Ctx { client, state: state.clone(), user: session.user(), session, then: Default::default() };
    let run = AssertUnwindSafe(route(&ctx, kind, event, payload)).catch_unwind();
    let result = match run.await {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(sid = %ctx.id(), event, "handler panicked");
            Err(ApiError::new(Code::Internal, "Internal error"))
        }
    };
    if let Err(e) = &result {
        state.metrics.error(e.code);
        tracing::debug!(sid = %ctx.id(), event, code = e.code.as_str(), "event failed");
    }
    if wants_ack {
        state.metrics.ack(result.is_ok());
    }
    let then = std::mem::take(&mut *ctx.then.lock().unwrap_or_else(|e| e.into_inner()));
    Outcome::Answer(result, then)
}

/// The per-client event budget: `Err(Answer(RATE_LIMITED))` past it, `Err(Flood)` when the
/// refused events exhaust their own budget too.
pub fn check_rate(state: &AppState, client: &dyn Link, session: &Session) -> Result<(), Outcome> {
    if session.limiter.check().is_ok() {
        return Ok(());
    }
    state.metrics.error(Code::RateLimited);
    if session.strikes.check().is_err() {
        tracing::warn!(sid = %client.id(), user_id = session.user_id().unwrap_or("-"), "event flood: disconnecting");
        return Err(Outcome::Flood);
    }
    Err(Outcome::Answer(Err(ApiError::new(Code::RateLimited, "Too many events")), Then::default()))
}

/// Runs the handler of `kind`; an event that is not the gateway's own (`None`) goes to the event proxy.
async fn route<P: Payload>(ctx: &Ctx, kind: Option<ClientEvent>, event: &str, p: &mut P) -> HandlerResult {
    use ClientEvent as E;
    let Some(kind) = kind else {
        // Not ours: the app's backend's, when there is one (SPEC §14).
        return match &ctx.state.proxy {
            Some(proxy) => proxied::call(ctx, proxy, event, p.args()).await,
            None => Err(ApiError::not_found("Unknown event")),
        };
    };
    match kind {
        E::Subscribe => channels::subscribe(ctx, p.decode()?).await,
        E::Unsubscribe => channels::unsubscribe(ctx, p.decode()?).await,
        E::ChannelHistory => channels::channel_history(ctx, p.decode()?).await,
        E::ListChannels => channels::list_channels(ctx).await,
        E::Stats => stats::stats(ctx).await,
        E::JoinRoom => rooms::join_room(ctx, p.decode()?).await,
        E::LeaveRoom => rooms::leave_room(ctx, p.decode()?).await,
        E::CreateRoom => rooms::create_room(ctx, p.decode()?).await,
        E::Message => rooms::message(ctx, p.decode()?).await,
        E::EditMessage => rooms::edit_message(ctx, p.decode()?).await,
        E::DeleteMessage => rooms::delete_message(ctx, p.decode()?).await,
        E::ListRooms => rooms::list_rooms(ctx).await,
        E::LoadMessages => rooms::load_messages(ctx, p.decode()?).await,
        E::Typing => rooms::typing(ctx, p.decode()?).await,
        E::StopTyping => rooms::stop_typing(ctx, p.decode()?).await,
        E::UpdateStatus => presence::update_status(ctx, p.decode()?).await,
        E::GetPresence => presence::get_presence(ctx, p.decode()?).await,
        E::PrivateMessage => private::private_message(ctx, p.decode()?).await,
        E::MarkRead => private::mark_read(ctx, p.decode()?).await,
        E::CallUser => calls::call_user(ctx, p.decode()?).await,
        E::CallAnswer => calls::call_answer(ctx, p.decode()?).await,
        E::IceCandidate => calls::ice_candidate(ctx, p.decode()?).await,
        E::CallReject => calls::call_reject(ctx, p.decode()?).await,
        E::HangUp => calls::hang_up(ctx, p.decode()?).await,
        E::RefreshToken => connection::refresh_token(ctx, p.decode()?).await,
        E::UploadStart => files::upload_start(ctx, p.decode()?).await,
        E::UploadChunk => files::upload_chunk(ctx, p.decode()?).await,
    }
}

/// The sweep of token expiries, four times a second (due times are whole seconds; the quarter-second
/// tick keeps `auth-expired` within 250 ms of `exp`): `auth-expired`, then a disconnect after the grace.
pub fn spawn_expiry_sweeper(state: AppState) -> tokio::task::JoinHandle<()> {
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
            let now = rtg_model::clock::unix_now();
            for (_, step, sid) in state.expiry.take_due(now) {
                let Some(client) = state.hub.get(sid) else {
                    continue;
                };
                let Some(session) = client.session() else {
                    continue;
                };
                if session.exp() > now {
                    continue; // refreshed since: a newer entry is queued
                }
                match step {
                    ExpiryStep::Warn => {
                        tracing::info!(sid = %sid, user_id = session.user_id().unwrap_or("-"), "token expired");
                        let _ = client.emit(
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
                        client.close(Close::AuthExpired);
                    }
                }
            }
        }
    })
}
