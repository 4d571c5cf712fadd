//! The plain WebSocket front end, `GET /ws` (SPEC §10): JSON frames, the SaaS realtime service's
//! channel protocol frame for frame, and a generic `{type, data|payload, requestId}` envelope for
//! every other event, run by the same handlers as Socket.IO (`events::handle`).
//!
//! One task per connection reads frames, writes what the core queued for it ([`clients::Out`]),
//! pings, and closes, each half without waiting on the others (see [`run`]); frames are handled on
//! a task of their own while there are any: 4001 no authentication in time, 4002 idle, 4003 bad or
//! expired token in-band (one at the upgrade is refused there with HTTP 401), 1008 abuse or a full
//! buffer, 1009 a frame over `MAX_PAYLOAD_BYTES`, 1001 shutdown. A client's close frame is answered
//! (a clean close). The seeds' own protocols are in `dialect/`.

pub mod clients;
pub mod dialect;
pub mod frames;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::request::Parts;
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::render;
use clients::{Job, Out, WsClients, WsConn};
use frames::Inbound;
use rtg_app::auth::AuthError;
use rtg_app::events::{self, Outcome};
use rtg_app::state::AppState;
use rtg_model::client::{Client, Link};
use rtg_model::error::{ApiError, Code};

/// Frames a connection may send before it authenticates (each answered `UNAUTHENTICATED`); past
/// them it is closed with 1008.
const PRE_AUTH_FRAMES: u32 = 20;

/// The `/ws` route's state.
#[derive(Clone)]
pub struct WsFront {
    pub state: AppState,
    pub clients: Arc<WsClients>,
}

/// The `/ws` route.
pub fn router(front: WsFront) -> axum::Router {
    axum::Router::new().route("/ws", axum::routing::get(upgrade)).with_state(front)
}

/// The token of an upgrade: query `token`, `Authorization: Bearer`, or the subprotocol `token-<jwt>`
/// (returned so that the answer selects it, as browsers require).
fn upgrade_token(parts: &Parts) -> (Option<String>, Option<String>) {
    let protocol = parts
        .headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .find(|p| p.starts_with("token-") && p.len() > 6)
        .map(str::to_string);
    let header = parts.headers.get("authorization").and_then(|h| h.to_str().ok());
    // The offered subprotocol is answered even when a query or header token comes first: a browser
    // fails a handshake whose answer selects none of the protocols it offered.
    if let Some(t) = rtg_app::auth::find_token(None, parts.uri.query(), header) {
        return (Some(t.into_owned()), protocol);
    }
    match protocol {
        Some(p) => (Some(p["token-".len()..].to_string()), Some(p)),
        None => (None, None),
    }
}

async fn upgrade(State(front): State<WsFront>, ws: WebSocketUpgrade, parts: Parts) -> Response {
    let (token, protocol) = upgrade_token(&parts);
    if let Some(refusal) = token.as_deref().and_then(|t| refuse_token(&front.state, t)) {
        return refusal;
    }
    let ip = crate::http::client_ip(&parts, front.state.config.trust_proxy_headers);
    let max = front.state.config.max_payload_bytes as usize;
    let mut ws = ws
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(front.state.config.ws_read_buffer_bytes as usize)
        // Frames collect up to this before a write; the task flushes after each burst anyway.
        .write_buffer_size(16 * 1024);
    if let Some(p) = protocol {
        ws = ws.protocols([p]);
    }
    ws.on_failed_upgrade(|e| tracing::debug!("ws upgrade failed: {e}")).on_upgrade(move |socket| {
        // Split before the task's future is built: an argument of an async fn keeps its place in
        // the future for the whole of its life, and a whole socket is large.
        let (sink, stream) = socket.split();
        run(front, sink, stream, token, ip)
    })
}

/// A bad or expired token presented with the upgrade is refused there, with HTTP 401 (SPEC §10):
/// accepted and then closed with 4003, a browser client's `onopen` would reset its reconnect counter
/// and it would retry for ever.
fn refuse_token(state: &AppState, token: &str) -> Option<Response> {
    use axum::response::IntoResponse;
    let e = state.auth.verify(token).err()?;
    state.metrics.refused();
    tracing::info!(reason = e.reason(), transport = "ws", "upgrade refused");
    let body = json!({ "error": e.to_string(), "code": Code::Unauthenticated });
    Some((axum::http::StatusCode::UNAUTHORIZED, axum::Json(body)).into_response())
}

/// What the connection's loop does after a frame.
enum Next {
    Go,
    Close(u16, &'static str),
}

impl Next {
    /// The close of a flooding client (`render::FLOOD_CLOSE`), whichever budget it ran past.
    fn flood() -> Self {
        Next::Close(render::FLOOD_CLOSE.0, render::FLOOD_CLOSE.1)
    }
}

/// What every `/ws` path (and every dialect) does with an event's outcome, in one place: the answer to
/// render, or what the connection does instead: a flood closes it, a client without a session gets
/// nothing.
fn answered(out: Outcome) -> Result<(rtg_model::error::HandlerResult, events::Then), Next> {
    match out {
        Outcome::Answer(result, then) => Ok((result, then)),
        Outcome::Flood => Err(Next::flood()),
        Outcome::Ignore => Err(Next::Go),
    }
}

fn close_msg(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))
}

/// Why the connection's loop ended.
enum End {
    /// The socket failed or ended: nothing more to send.
    Gone,
    /// The client sent a close frame: the library queued its echo, which goes out (a clean close,
    /// SPEC §10) before the TCP connection closes.
    Echo,
    /// Close with this code after flushing what is queued, within [`CLOSE_WITHIN`].
    Close(u16, &'static str),
    /// `kill`: close at once, queued frames or not (a slow consumer's queue is what we drop).
    Kill,
}

/// The longest the final flush and close frame may take; a socket that accepts no bytes is then
/// dropped without them.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// One task per connection runs three halves side by side: the reader (frames in, counted, handed
/// to the handler as [`Job`]s), the writer (everything queued leaves in one flush per wake-up) and
/// the watch (pings; the idle, authentication and write deadlines). None
/// waits on another: a socket that accepts no bytes stops only the writer, and the watch still
/// closes it on time. The handler runs on a task of its own while there are frames to handle
/// (none for an idle connection), one frame at a time, so answers keep the frames' order.
async fn run(
    front: WsFront,
    mut sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
    token: Option<String>,
    ip: Option<IpAddr>,
) {
    let cfg = &front.state.config;
    let conn = WsConn::new(front.clients.clone(), cfg.socket_buffer_packets as usize, ip, &front.state.quotas);
    front.clients.register(conn.clone());
    // What is awaited once (admission, departure) is boxed: the connection's future stays small
    // for as long as it is idle.
    if let Next::Close(code, reason) = Box::pin(admit(&front, &conn, token, ip)).await {
        conn.stop_jobs();
        conn.close_after_queue(code, reason);
    }
    let times = Times {
        opened: Instant::now(),
        ping_every: cfg.ping_interval(),
        idle: Duration::from_millis(cfg.ws_idle_timeout_ms.max(1)),
        auth_within: Duration::from_millis(cfg.ws_auth_timeout_ms),
    };
    // Milliseconds from `opened` to the last frame received (pongs count).
    let seen = AtomicU64::new(0);
    // While a write is under way: 1 + milliseconds from `opened` to its start; else 0.
    let writing = AtomicU64::new(0);
    let ping = AtomicBool::new(false);

    let end = tokio::select! {
        biased;
        end = write_half(&front, &conn, &mut sink, &ping, &writing, &times) => end,
        end = watch(&conn, &seen, &ping, &writing, &times) => end,
        end = read_half(&front, &conn, &mut stream, &seen, &times) => end,
    };
    // The ending runs boxed: its timers and flushes would otherwise widen the future every idle
    // connection holds (the `/ws` idle memory of docs/benchmarks.md).
    Box::pin(finish(&front, &conn, end, sink, stream)).await;
}

/// The end of a connection: its close frame after what is queued (when the end allows it), the
/// frame being handled, then the departure.
async fn finish(
    front: &WsFront,
    conn: &Arc<WsConn>,
    end: End,
    mut sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
) {
    conn.stop_jobs();
    let closing = match end {
        End::Gone => None,
        End::Echo => {
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.flush()).await;
            None
        }
        End::Kill => Some((conn.killed().unwrap_or((1011, "Closed")), Duration::from_millis(200), false)),
        // Whatever is queued (SPEC §10): a peer that stopped reading gets no more time.
        End::Close(4002, reason) => Some(((4002, reason), Duration::from_secs(1), false)),
        End::Close(code, reason) => Some(((code, reason), CLOSE_WITHIN, true)),
    };
    if let Some(((code, reason), within, flush)) = closing {
        let sent = tokio::time::timeout(within, async {
            // The frames queued before the close (the error frame that explains it) go first.
            let mut marks = Vec::new();
            while let Some(out) = conn.pop().filter(|_| flush) {
                match out {
                    Out::Frame(f) => sink.feed(Message::Text(f)).await?,
                    Out::Written(tx) => marks.push(tx),
                    Out::Close(..) => break,
                }
            }
            // `send` flushes: what came before it was written.
            sink.send(close_msg(code, reason)).await?;
            for tx in marks {
                let _ = tx.send(());
            }
            Ok::<(), axum::Error>(())
        })
        .await;
        // A socket that took no close frame gets no time to answer one.
        if matches!(sent, Ok(Ok(()))) {
            drain(&mut stream).await;
        }
    }
    drop((sink, stream));
    conn.set_closed();
    // A frame still being handled (a proxy call) finishes before the departure, so that it cannot
    // join a room after it.
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while conn.jobs_running() {
            conn.jobs_changed.notified().await;
        }
    })
    .await;
    let client: Client = conn.clone();
    events::depart(&front.state, &*client, "transport close").await;
    front.clients.unregister(conn);
}

/// A connection's clock.
struct Times {
    opened: Instant,
    ping_every: Duration,
    idle: Duration,
    auth_within: Duration,
}

/// Reads frames, counts them (SPEC §10) and hands them to the handler in order. It stops reading
/// while the handler is [`clients::MAX_JOBS`] frames behind, and after a frame that closes. Before
/// authentication it reads one frame at a time, each handled before the next is read: the frames
/// that follow an `auth` frame are counted as the authenticated connection's, as they always were.
async fn read_half(
    front: &WsFront,
    conn: &Arc<WsConn>,
    stream: &mut SplitStream<WebSocket>,
    seen: &AtomicU64,
    times: &Times,
) -> End {
    loop {
        while conn.jobs_full() || (conn.session().is_none() && conn.jobs_running()) {
            conn.jobs_changed.notified().await;
        }
        let msg = stream.next().await;
        seen.store(times.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        let counted = |front, conn| match count_frame(front, conn) {
            Counted::Read => None,
            Counted::Refused => Some(None),
            Counted::Close(Next::Close(code, reason)) => Some(Some(Job::Close(code, reason))),
            Counted::Close(Next::Go) => Some(Some(Job::Close(render::FLOOD_CLOSE.0, render::FLOOD_CLOSE.1))),
        };
        let job = match msg {
            Some(Ok(Message::Text(text))) => {
                if let Some(w) = front.state.hub.watcher() {
                    w.packets(true, 1, text.len() as u64);
                }
                match counted(front, conn) {
                    None => Job::Text(text),
                    Some(None) => Job::Refused(Some(text)),
                    Some(Some(close)) => close,
                }
            }
            Some(Ok(Message::Binary(_))) => match counted(front, conn) {
                None => Job::Binary,
                Some(None) => Job::Refused(None),
                Some(Some(close)) => close,
            },
            Some(Ok(Message::Close(_))) => return End::Echo,
            None => return End::Gone,
            // The library answers pings, but a stream of them is abuse like any other frame.
            Some(Ok(Message::Ping(_))) => match counted(front, conn) {
                Some(Some(close)) => close,
                _ => continue,
            },
            Some(Ok(_)) => continue, // pongs answer our pings: activity
            Some(Err(e)) => match read_error(&e) {
                Next::Close(code, reason) => Job::Close(code, reason),
                Next::Go => return End::Gone,
            },
        };
        let closes = matches!(job, Job::Close(..));
        if conn.push_job(job) {
            let (front, conn) = (front.clone(), conn.clone());
            tokio::spawn(handle_jobs(front, conn));
        }
        if closes {
            // The handler queues the close after the answers before it; the writer closes.
            return std::future::pending().await;
        }
    }
}

/// Handles the connection's frames one at a time, in order, until none is left.
async fn handle_jobs(front: WsFront, conn: Arc<WsConn>) {
    while let Some(job) = conn.next_job() {
        let next = match job {
            Job::Text(text) => Box::pin(on_text(&front, &conn, text.as_str())).await,
            Job::Binary => {
                let e = ApiError::invalid("Binary frames are not supported: send JSON text");
                let _ = conn.send_text(frames::error(&e, None, None, None));
                Next::Go
            }
            Job::Refused(text) => refuse_frame(&conn, text.as_ref().map(|t| t.as_str())),
            Job::Close(code, reason) => Next::Close(code, reason),
        };
        if let Next::Close(code, reason) = next {
            conn.stop_jobs();
            conn.close_after_queue(code, reason);
        }
    }
}

/// Writes what is queued whenever something is. How long a write may take is the watch's business
/// (`writing` says since when one is under way): the writer itself holds no timer, so an idle
/// connection's future stays small.
async fn write_half(
    front: &WsFront,
    conn: &WsConn,
    sink: &mut SplitSink<WebSocket, Message>,
    ping: &AtomicBool,
    writing: &AtomicU64,
    times: &Times,
) -> End {
    loop {
        conn.wake.notified().await;
        if conn.killed().is_some() {
            return End::Kill;
        }
        let mut out = (0u64, 0u64);
        let mut close = None;
        let ping = ping.swap(false, Ordering::Relaxed);
        writing.store(1 + times.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        // Boxed, for the same reason as `finish`: a burst's state, and the wait for a kill that
        // interrupts it, exist only while it is written.
        let written = Box::pin(async {
            tokio::select! {
                biased;
                _ = conn.kill_signal.notified() => None,
                written = write_queued(sink, conn, ping, &mut close, &mut out) => Some(written),
            }
        })
        .await;
        let Some(written) = written else { return End::Kill };
        writing.store(0, Ordering::Relaxed);
        if let (Some(w), true) = (front.state.hub.watcher(), out.0 > 0) {
            w.packets(false, out.0, out.1);
        }
        if !written {
            return End::Gone;
        }
        if let Some((code, reason)) = close {
            return End::Close(code, reason);
        }
    }
}

/// Writes a ping (when due) and the queued frames, then flushes once: one write for a burst, not
/// one per frame. False when the connection is gone. A queued close stops there.
async fn write_queued(
    sink: &mut SplitSink<WebSocket, Message>,
    conn: &WsConn,
    ping: bool,
    close: &mut Option<(u16, &'static str)>,
    sent: &mut (u64, u64),
) -> bool {
    let mut fed = false;
    let mut marks = Vec::new();
    if ping {
        if sink.feed(Message::Ping(Default::default())).await.is_err() {
            return false;
        }
        fed = true;
    }
    while let Some(out) = conn.pop() {
        match out {
            Out::Frame(f) => {
                sent.0 += 1;
                sent.1 += f.len() as u64;
                if sink.feed(Message::Text(f)).await.is_err() {
                    return false;
                }
                fed = true;
            }
            Out::Close(code, reason) => {
                *close = Some((code, reason));
                break;
            }
            Out::Written(tx) => marks.push(tx),
        }
    }
    if fed && sink.flush().await.is_err() {
        return false;
    }
    for tx in marks {
        let _ = tx.send(());
    }
    true
}

/// Sleeps until the next deadline: the next ping, the idle deadline (moved by every frame
/// received) and, until the connection authenticates, the authentication deadline. An idle
/// authenticated connection wakes once per `PING_INTERVAL_MS`. A write under way for longer than
/// `WS_IDLE_TIMEOUT_MS` (a peer that sends but does not read) is found at the next wake-up.
async fn watch(conn: &WsConn, seen: &AtomicU64, ping: &AtomicBool, writing: &AtomicU64, times: &Times) -> End {
    let mut next_ping = times.opened + times.ping_every;
    let auth_by = times.opened + times.auth_within;
    loop {
        let idle_at = times.opened + Duration::from_millis(seen.load(Ordering::Relaxed)) + times.idle;
        let mut at = next_ping.min(idle_at);
        let anonymous = conn.session().is_none();
        if anonymous {
            at = at.min(auth_by);
        }
        tokio::time::sleep_until(at).await;
        let now = Instant::now();
        if anonymous && conn.session().is_none() && now >= auth_by {
            return End::Close(4001, "Authentication timeout");
        }
        let idle_at = times.opened + Duration::from_millis(seen.load(Ordering::Relaxed)) + times.idle;
        if now >= idle_at {
            // Whatever is queued: a peer that stopped reading is dropped here too (SPEC §10).
            return End::Close(4002, "Idle timeout");
        }
        let since = writing.load(Ordering::Relaxed);
        if since > 0 && now >= times.opened + Duration::from_millis(since - 1) + times.idle {
            tracing::warn!(sid = %conn.id(), "slow consumer: a write took over {:?}, disconnecting", times.idle);
            conn.kill(1008, "Slow consumer");
            return End::Kill;
        }
        if now >= next_ping {
            next_ping = now + times.ping_every;
            ping.store(true, Ordering::Relaxed);
            conn.wake.notify_one();
        }
    }
}

/// Admission at the upgrade: a token (or anonymous access) gets its `connected` frame; without
/// either, the client has `WS_AUTH_TIMEOUT_MS` to authenticate in-band.
async fn admit(front: &WsFront, conn: &Arc<WsConn>, token: Option<String>, ip: Option<IpAddr>) -> Next {
    match (&token, front.state.config.allow_anonymous) {
        (None, false) => match events::check_ip(&front.state, &**conn, ip) {
            Ok(()) => Next::Go,
            Err(e) => refused(conn, &e),
        },
        (token, _) => match events::admit(&front.state, &**conn, token.as_deref(), ip).await {
            Ok(session) => {
                conn.set_session(session);
                welcome(front, conn, None).await;
                Next::Go
            }
            Err(e) => refused(conn, &e),
        },
    }
}

/// After our close frame: reads (and drops) what the client still sends until its close frame, for
/// a second at most. Closing a TCP connection with unread input resets it, and the client would see
/// 1006 instead of our close code.
async fn drain(stream: &mut SplitStream<WebSocket>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// A read error: an oversized frame is closed with 1009; anything else ends the connection.
fn read_error(e: &axum::Error) -> Next {
    let text = e.to_string();
    if text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big") {
        Next::Close(1009, "Frame too large")
    } else {
        tracing::debug!("ws read: {text}");
        Next::Go
    }
}

/// A refused admission: the error frame, then the close code of SPEC §10.
fn refused(conn: &WsConn, e: &AuthError) -> Next {
    let (code, close, reason) = match e {
        AuthError::TooManySockets | AuthError::TooManyConnections => (Code::RateLimited, 1008, "Too many connections"),
        AuthError::Required => (Code::Unauthenticated, 4001, "Authentication required"),
        AuthError::Failed(_) => (Code::Unauthenticated, 4003, "Authentication failed"),
    };
    let _ = conn.send_text(frames::error(&ApiError::new(code, e.to_string()), None, None, None));
    Next::Close(close, reason)
}

/// The `connected` frame, after presence heard of the user; then the user's queued messages.
async fn welcome(front: &WsFront, conn: &Arc<WsConn>, request_id: Option<&Value>) {
    let Some(session) = conn.session() else { return };
    events::arrive(&front.state, conn.clone(), session, |g| {
        let _ = conn.send_text(frames::reply("connected", render::ws_greeting(g), request_id));
    })
    .await;
}

/// What [`count_frame`] decided about a frame.
enum Counted {
    /// Within the budget: read and answer it.
    Read,
    /// Past the budget: answered `RATE_LIMITED` (see [`refuse_frame`]), not run.
    Refused,
    Close(Next),
}

/// Counts a frame before anything reads it (SPEC §10): whether it parses or not, and binary frames
/// too. Before authentication at most [`PRE_AUTH_FRAMES`] are accepted; after, every frame takes from
/// the connection's frame budget (the event quota; past it the frame is refused, and a connection
/// that goes on past the budget of refusals is closed with 1008). An event also takes from the
/// session's own budget in `events::handle`: both have the same quota and the frame budget is spent
/// first, so the frame budget is the one a `/ws` client meets.
fn count_frame(front: &WsFront, conn: &WsConn) -> Counted {
    if conn.session().is_none() {
        if conn.pre_auth_frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= PRE_AUTH_FRAMES {
            return Counted::Close(Next::Close(1008, "Authentication required"));
        }
        return Counted::Read;
    }
    if conn.frames.check().is_ok() {
        return Counted::Read;
    }
    front.state.metrics.error(Code::RateLimited);
    if conn.frame_strikes.check().is_err() {
        tracing::warn!(sid = %conn.id(), "/ws frame flood: disconnecting");
        return Counted::Close(Next::flood());
    }
    Counted::Refused
}

/// What a refused frame's answer needs: its kind and `requestId`. The rest is skipped, not built.
#[derive(serde::Deserialize, Default)]
struct Head {
    #[serde(rename = "type")]
    kind: Option<String>,
    event: Option<String>,
    #[serde(rename = "requestId")]
    request_id: Option<Value>,
}

/// The `RATE_LIMITED` answer to a frame past the budget, shaped as its own answer would have been
/// (the `requestId` echoed; an `ack` frame for a generic request that has one). Reading its head is
/// bounded work: the refusals have a budget of their own, past which the connection is closed.
fn refuse_frame(conn: &WsConn, text: Option<&str>) -> Next {
    let e = ApiError::new(Code::RateLimited, "Too many events");
    let head = text.and_then(|t| serde_json::from_str::<Head>(t).ok()).unwrap_or_default();
    let kind = head.kind.or(head.event);
    let channel_frame = |k: &str| matches!(k, "ping" | "subscribe" | "unsubscribe" | "list_channels" | "stats");
    let generic = kind.as_deref().filter(|k| !channel_frame(k));
    let frame = match (&head.request_id, generic) {
        (Some(id), Some(k)) if k != "auth" && k != "authenticate" => {
            frames::ack(id, &render::ack_error(&e), conn.payload_style())
        }
        (rid, event) => frames::error(&e, event, None, rid.as_ref()),
    };
    let _ = conn.send_text(frame);
    Next::Go
}

async fn on_text(front: &WsFront, conn: &Arc<WsConn>, text: &str) -> Next {
    // The seeds' own protocols (dialect/): a connection that speaks one is answered there.
    if let Some(next) = dialect::on_text(front, conn, text).await {
        return next;
    }
    let f = match frames::parse(text) {
        Ok(f) => {
            if f.payload_style {
                conn.set_payload_style();
            }
            f
        }
        Err((message, request_id)) => {
            let _ = conn.send_text(frames::error(&ApiError::invalid(message), None, None, request_id.as_ref()));
            return Next::Go;
        }
    };
    if f.kind == "auth" || f.kind == "authenticate" {
        // Counted like any frame, already (`count_frame`).
        return authenticate(front, conn, f).await;
    }
    if conn.session().is_none() {
        // Before authentication a client may do nothing else: a few frames are answered, a stream of
        // them is abuse (counted in `count_frame`).
        let e = ApiError::new(Code::Unauthenticated, "Authentication required");
        let _ = conn.send_text(frames::error(&e, Some(&f.kind), None, f.request_id.as_ref()));
        return Next::Go;
    }
    let rid = f.request_id.as_ref();
    match f.kind.as_str() {
        "ping" => {
            let _ = conn.send_text(frames::reply("pong", serde_json::Map::new(), rid));
            Next::Go
        }
        "subscribe" | "unsubscribe" => {
            let channel = f.channel.clone().map(Value::String).unwrap_or_else(|| f.data.clone());
            // `{type:"subscribe", channel, since}` (SPEC §15): the core takes `{channel, since}`.
            let mut payload = match (&f.since, &channel) {
                (Some(since), Value::String(c)) => json!({ "channel": c, "since": since }),
                _ => channel.clone(),
            };
            match answered(events::handle(&front.state, conn.clone(), &f.kind, &mut payload, true).await) {
                Ok((Ok(v), then)) => {
                    let mut m = serde_json::Map::new();
                    for k in ["channel", "recovered", "offset", "epoch"] {
                        if let Some(x) = v.get(k) {
                            m.insert(k.into(), x.clone());
                        }
                    }
                    m.entry("channel").or_insert(Value::Null);
                    let kind = if f.kind == "subscribe" { "subscribed" } else { "unsubscribed" };
                    let _ = conn.send_text(frames::reply(kind, m, rid));
                    // The missed publications follow the `subscribed` frame.
                    drop(then);
                    Next::Go
                }
                Ok((Err(e), _)) => {
                    let name = channel.as_str().or_else(|| channel.get("channel").and_then(Value::as_str));
                    let _ = conn.send_text(frames::error(&e, None, name, rid));
                    Next::Go
                }
                Err(next) => next,
            }
        }
        "list_channels" | "stats" => {
            let mut payload = Value::Null;
            match answered(events::handle(&front.state, conn.clone(), &f.kind, &mut payload, true).await) {
                Ok((Ok(v), _)) => {
                    let mut m = serde_json::Map::new();
                    let kind = if f.kind == "stats" {
                        m.insert("data".into(), v.get("data").cloned().unwrap_or(Value::Null));
                        "stats"
                    } else {
                        m.insert("channels".into(), v.get("channels").cloned().unwrap_or(json!([])));
                        m.insert("subscribed".into(), v.get("subscribed").cloned().unwrap_or(json!([])));
                        "channels"
                    };
                    let _ = conn.send_text(frames::reply(kind, m, rid));
                    Next::Go
                }
                Ok((Err(e), _)) => {
                    let _ = conn.send_text(frames::error(&e, Some(&f.kind), None, rid));
                    Next::Go
                }
                Err(next) => next,
            }
        }
        _ => {
            let mut payload = match (&f.data, &f.channel) {
                // `{type:"channel-history", channel, requestId}` as well as `data:{channel, limit}`.
                (Value::Null, Some(c)) if f.kind == "channel-history" => json!({ "channel": c }),
                (d, _) => d.clone(),
            };
            let out = events::handle(&front.state, conn.clone(), &f.kind, &mut payload, rid.is_some()).await;
            answer_plain(conn, &f, out)
        }
    }
}

/// The answer to a generic request: `{type:"ack", requestId, data}` when it has a `requestId`, else
/// only a failure, as an error frame.
fn answer_plain(conn: &WsConn, f: &Inbound, out: Outcome) -> Next {
    let (result, _then) = match answered(out) {
        Ok(answer) => answer,
        Err(next) => return next,
    };
    match (&f.request_id, result) {
        (Some(id), Ok(v)) => {
            let _ = conn.send_text(frames::ack(id, &v, conn.payload_style()));
        }
        (Some(id), Err(e)) => {
            let _ = conn.send_text(frames::ack(id, &render::ack_error(&e), conn.payload_style()));
        }
        (None, Ok(_)) => {}
        (None, Err(e)) => {
            let _ = conn.send_text(frames::error(&e, Some(&f.kind), None, None));
        }
    }
    Next::Go
}

/// In-band authentication: `{type:"auth", token}` or `{event:"authenticate", data:{token}}`.
async fn authenticate(front: &WsFront, conn: &Arc<WsConn>, f: Inbound) -> Next {
    let state = &front.state;
    let token = f.token.clone().or_else(|| match &f.data {
        Value::String(s) => Some(s.clone()),
        v => v.get("token").and_then(Value::as_str).map(str::to_string),
    });
    let rid = f.request_id.as_ref();
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        let e = ApiError::invalid("auth needs a token");
        let _ = conn.send_text(frames::error(&e, Some(&f.kind), None, rid));
        return Next::Go;
    };
    let verified = match state.auth.verify(&token) {
        Ok(v) => v,
        Err(e) => {
            state.metrics.refused();
            tracing::info!(sid = %conn.id(), reason = e.reason(), transport = "ws", "authentication failed");
            let _ =
                conn.send_text(frames::error(&ApiError::new(Code::Unauthenticated, e.to_string()), None, None, rid));
            return Next::Close(4003, "Authentication failed");
        }
    };
    match conn.session() {
        Some(session) => match session.user() {
            // The same user again: a token refresh, whose claims replace the old. The channels they
            // no longer allow are dropped, each told with an `unsubscribed` frame before `connected`.
            Some(user) if user.user_id == verified.user.user_id => {
                let client: Client = conn.clone();
                for channel in events::connection::refresh(state, &client, &session, verified).await {
                    let mut m = serde_json::Map::new();
                    m.insert("channel".into(), Value::String(channel));
                    let _ = conn.send_text(frames::reply("unsubscribed", m, None));
                }
                welcome_again(front, conn, rid);
                Next::Go
            }
            Some(_) => {
                let e = ApiError::forbidden("Cannot switch user");
                let _ = conn.send_text(frames::error(&e, Some(&f.kind), None, rid));
                Next::Go
            }
            // Anonymous until now: becomes the user.
            None => match events::admit_user(state, &**conn, verified.user, verified.exp).await {
                Ok(s) => {
                    state.counters.remove(false);
                    conn.set_session(s);
                    welcome(front, conn, rid).await;
                    Next::Go
                }
                Err(e) => refused(conn, &e),
            },
        },
        None => match events::admit_user(state, &**conn, verified.user, verified.exp).await {
            Ok(s) => {
                conn.set_session(s);
                welcome(front, conn, rid).await;
                Next::Go
            }
            Err(e) => refused(conn, &e),
        },
    }
}

/// The `connected` frame (alone, after a refresh: no presence or queue work).
fn welcome_again(front: &WsFront, conn: &WsConn, request_id: Option<&Value>) {
    let Some(session) = conn.session() else { return };
    let greeting = events::Greeting::of(&front.state, conn, &session);
    let _ = conn.send_text(frames::reply("connected", render::ws_greeting(&greeting), request_id));
}
