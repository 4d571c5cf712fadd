//! The official Socket.IO Admin UI (`@socket.io/admin-ui` 0.5, SPEC §12) on the namespace `/admin`,
//! speaking the protocol of the package's server half: basic authentication against a bcrypt hash,
//! `session` ids that log in again, `config`, `server_stats` every 2 s from every node, `all_sockets`,
//! the live events of development mode, and the actions `emit`, `join`, `leave`, `_disconnect`.
//!
//! Cluster-wide: every node emits its events and figures to `/admin` through the adapter (each UI
//! sees every node as a server row); `all_sockets` asks every node on the bus; an action is applied
//! here and published on the bus (topic `admin`) for the other nodes to apply to their clients.
//! `/ws` connections appear as the namespace `/ws`.
//!
//! Relaying clients' events must not become an attack path: what a client sent is summarised
//! ([`summarise`]: depth, width and length bounded) before it goes to the UI, and the relay is a bounded
//! queue that drops rather than waits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::DefaultKeyedRateLimiter;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::SocketIo;
use tokio::sync::mpsc;

use crate::bus::Listener;
use crate::client::{Client, Close};
use crate::events::Payload;
use crate::sio::Msg;
use crate::state::AppState;

/// The namespace of the UI.
pub const NAMESPACE: &str = "/admin";
/// How long a `session` id logs in again.
const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
/// Events waiting for the relay to the UI; past it they are dropped (a node never waits for the UI).
const RELAY_QUEUE: usize = 4096;
/// Bounds of what a client sent, as the UI sees it.
const MAX_DEPTH: usize = 4;
const MAX_ITEMS: usize = 20;
const MAX_STRING: usize = 256;

/// `ADMIN_UI_*`, checked at start.
pub struct Settings {
    pub username: String,
    /// A bcrypt hash (a plain-text password is hashed at start).
    pub hash: String,
    pub readonly: bool,
    pub development: bool,
}

impl Settings {
    pub fn from_config(cfg: &crate::config::Config) -> anyhow::Result<Option<Self>> {
        let Some(password) = cfg.admin_ui_password.as_deref().filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let hash = if ["$2a$", "$2b$", "$2y$"].iter().any(|p| password.starts_with(p)) {
            password
                .parse::<bcrypt::HashParts>()
                .map_err(|e| anyhow::anyhow!("ADMIN_UI_PASSWORD: not a valid bcrypt hash: {e}"))?;
            password.to_string()
        } else {
            bcrypt::hash(password, bcrypt::DEFAULT_COST).map_err(|e| anyhow::anyhow!("ADMIN_UI_PASSWORD: {e}"))?
        };
        let development = match cfg.admin_ui_mode.as_str() {
            "development" => true,
            "production" => false,
            other => anyhow::bail!("ADMIN_UI_MODE: '{other}' is neither development nor production"),
        };
        Ok(Some(Settings {
            username: cfg.admin_ui_username.clone(),
            hash,
            readonly: cfg.admin_ui_readonly,
            development,
        }))
    }
}

/// An aggregated event's second (ms), type and sub-type.
type EventKey = (u64, &'static str, Option<String>);

/// One event for the UI, with its arguments (`server_stats` goes out on its own).
enum Relay {
    Two(&'static str, Value, Value),
    Four(&'static str, Value, Value, Value, Value),
}

/// The Admin UI of this node: its settings, the relay to `/admin`, the per-second figures.
pub struct Admin {
    pub settings: Settings,
    relay: mpsc::Sender<Relay>,
    relay_rx: Mutex<Option<mpsc::Receiver<Relay>>>,
    /// `(second, type, subType)` → count: the `aggregatedEvents` of the next `server_stats`.
    events: Mutex<HashMap<EventKey, u64>>,
    /// Logins that may be tried per address (bcrypt is slow on purpose; so is guessing).
    logins: DefaultKeyedRateLimiter<IpAddr>,
    /// Sessions on this node (without Redis).
    sessions: Mutex<HashMap<String, Instant>>,
}

impl Admin {
    pub fn new(settings: Settings) -> Arc<Self> {
        let (relay, rx) = mpsc::channel(RELAY_QUEUE);
        let quota = governor::Quota::per_minute(std::num::NonZeroU32::new(30).unwrap_or(std::num::NonZeroU32::MIN));
        Arc::new(Admin {
            settings,
            relay,
            relay_rx: Mutex::new(Some(rx)),
            events: Mutex::new(HashMap::new()),
            logins: DefaultKeyedRateLimiter::keyed(quota),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    fn send(&self, r: Relay) {
        let _ = self.relay.try_send(r);
    }

    /// Counts one of the aggregated events of this second.
    pub fn count(&self, kind: &'static str, sub: Option<&str>, n: u64) {
        let sec = crate::auth::unix_now_ms() / 1000 * 1000;
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() < 10_000 {
            *events.entry((sec, kind, sub.map(str::to_string))).or_default() += n;
        }
    }

    fn drain_events(&self) -> Vec<Value> {
        let events = std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()));
        events
            .into_iter()
            .map(|((ts, kind, sub), count)| {
                let mut v = json!({ "timestamp": ts, "type": kind, "count": count });
                if let Some(s) = sub {
                    v["subType"] = json!(s);
                }
                v
            })
            .collect()
    }

    /// A client arrived (after its greeting).
    pub fn connected(&self, client: &dyn crate::client::Link) {
        self.count("rawConnection", None, 1);
        if self.settings.development {
            self.send(Relay::Two("socket_connected", serialize(client), json!(crate::iso_now())));
        }
    }

    pub fn disconnected(&self, client: &dyn crate::client::Link, reason: &str) {
        self.count("rawDisconnection", Some(reason), 1);
        if self.settings.development {
            let (nsp, id) = (nsp_of(client), client.id().to_string());
            self.send(Relay::Four(
                "socket_disconnected",
                json!(nsp),
                json!(id),
                json!(reason),
                json!(crate::iso_now()),
            ));
        }
    }

    pub fn room(&self, client: &dyn crate::client::Link, room: &str, joined: bool) {
        if self.settings.development {
            let event = if joined { "room_joined" } else { "room_left" };
            let (nsp, id) = (nsp_of(client), client.id().to_string());
            self.send(Relay::Four(event, json!(nsp), json!(room), json!(id), json!(crate::iso_now())));
        }
    }

    /// A dead node's clients (from the reaper): the UI drops them.
    pub fn node_gone(&self, sockets: &[String]) {
        if !self.settings.development {
            return;
        }
        for id in sockets {
            for nsp in ["/", "/ws"] {
                self.send(Relay::Four(
                    "socket_disconnected",
                    json!(nsp),
                    json!(id),
                    json!("node gone"),
                    json!(crate::iso_now()),
                ));
            }
        }
    }

    /// Packets and bytes in (`in_ = true`) or out, for the aggregated events (each front end counts
    /// its own: it knows the sizes).
    pub fn packets(&self, in_: bool, packets: u64, bytes: u64) {
        let (p, b) = if in_ { ("packetsIn", "bytesIn") } else { ("packetsOut", "bytesOut") };
        self.count(p, None, packets);
        self.count(b, None, bytes);
    }

    /// A client event, shown (summarised) in development mode.
    pub fn received(&self, client: &dyn crate::client::Link, event: &str, args: impl FnOnce() -> Value) {
        if self.settings.development {
            let mut list = vec![json!(event)];
            match summarise(&args(), 0) {
                Value::Array(a) => list.extend(a),
                Value::Null => {}
                v => list.push(v),
            }
            let (nsp, id) = (nsp_of(client), client.id().to_string());
            self.send(Relay::Four(
                "event_received",
                json!(nsp),
                json!(id),
                Value::Array(list),
                json!(crate::iso_now()),
            ));
        }
    }

    async fn session_ok(&self, state: &AppState, id: &str) -> bool {
        if id.is_empty() || id.len() > 64 {
            return false;
        }
        if let Some(redis) = &state.redis {
            let mut conn = redis.commands();
            let key = state.redis_key(&["admin-session", id]);
            return redis::AsyncCommands::exists::<_, bool>(&mut conn, key).await.unwrap_or(false);
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, at| at.elapsed() < SESSION_TTL);
        sessions.contains_key(id)
    }

    async fn save_session(&self, state: &AppState, id: &str) {
        if let Some(redis) = &state.redis {
            let mut conn = redis.commands();
            let key = state.redis_key(&["admin-session", id]);
            let res: redis::RedisResult<()> =
                redis::AsyncCommands::set_ex(&mut conn, key, 1, SESSION_TTL.as_secs()).await;
            if let Err(e) = res {
                tracing::warn!("admin session not saved: {e}");
            }
            return;
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.len() < 10_000 {
            sessions.insert(id.to_string(), Instant::now());
        }
    }

    /// The UI's supported features, as the package computes them.
    fn features(&self) -> Vec<&'static str> {
        let mut f = if self.settings.readonly {
            Vec::new()
        } else {
            vec!["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT"]
        };
        f.push("AGGREGATED_EVENTS");
        if self.settings.development {
            f.push("ALL_EVENTS");
        }
        f
    }
}

/// The namespace a client shows under: `/` for Socket.IO, `/ws` for the plain WebSocket endpoint.
fn nsp_of(client: &dyn crate::client::Link) -> &'static str {
    match client.transport() {
        "ws" => "/ws",
        _ => "/",
    }
}

/// A client as the UI lists it (`SerializedSocket`).
fn serialize(client: &dyn crate::client::Link) -> Value {
    let info = client.info();
    let session = client.session();
    let mut data = Map::new();
    if let Some(s) = &session {
        data.insert("userId".into(), json!(s.user_id()));
        data.insert("user".into(), json!(s.user().as_deref()));
    }
    let id = client.id().to_string();
    json!({
        "id": id,
        "clientId": id.chars().take(12).collect::<String>(),
        "transport": info.transport,
        "nsp": nsp_of(client),
        "data": data,
        "handshake": {
            "address": info.address,
            "headers": info.headers,
            "query": info.query,
            "issued": info.issued,
            "secure": info.secure,
            "time": info.time,
            "url": info.url,
            "xdomain": false,
        },
        "rooms": client.rooms(),
    })
}

/// Bounds what a client sent before the UI sees it: at most [`MAX_DEPTH`] levels, [`MAX_ITEMS`] items
/// per array or object, [`MAX_STRING`] characters per string; what is cut is marked.
pub fn summarise(v: &Value, depth: usize) -> Value {
    match v {
        Value::String(s) if s.chars().count() > MAX_STRING => {
            Value::String(format!("{}… ({} bytes)", s.chars().take(MAX_STRING).collect::<String>(), s.len()))
        }
        Value::Array(a) if depth >= MAX_DEPTH => Value::String(format!("[array of {}]", a.len())),
        Value::Object(o) if depth >= MAX_DEPTH => Value::String(format!("{{object of {} keys}}", o.len())),
        Value::Array(a) => {
            let mut out: Vec<Value> = a.iter().take(MAX_ITEMS).map(|x| summarise(x, depth + 1)).collect();
            if a.len() > MAX_ITEMS {
                out.push(Value::String(format!("… {} more", a.len() - MAX_ITEMS)));
            }
            Value::Array(out)
        }
        Value::Object(o) => {
            let mut out: Map<String, Value> = o
                .iter()
                .take(MAX_ITEMS)
                .map(|(k, x)| (k.chars().take(MAX_STRING).collect(), summarise(x, depth + 1)))
                .collect();
            if o.len() > MAX_ITEMS {
                out.insert("…".into(), Value::String(format!("{} more keys", o.len() - MAX_ITEMS)));
            }
            Value::Object(out)
        }
        v => v.clone(),
    }
}

/// An action of the UI: what every node applies to its own clients.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
enum Action {
    Emit { nsp: String, filter: Option<String>, event: String, args: Vec<Value> },
    Join { nsp: String, room: String, filter: Option<String> },
    Leave { nsp: String, room: String, filter: Option<String> },
    Disconnect { nsp: String, filter: Option<String> },
}

fn matches(client: &Client, nsp: &str, filter: &Option<String>) -> bool {
    nsp_of(&**client) == nsp
        && match filter {
            None => true,
            Some(f) => client.id().as_str() == f || client.rooms().iter().any(|r| r == f),
        }
}

/// Applies an action to this node's clients.
fn apply(state: &AppState, action: &Action) {
    let clients = state.hub.local_clients();
    match action {
        Action::Emit { nsp, filter, event, args } => {
            let data = match args.as_slice() {
                [one] => one.clone(),
                [] => Value::Null,
                many => Value::Array(many.to_vec()),
            };
            for c in clients.iter().filter(|c| matches(c, nsp, filter)) {
                let _ = c.emit(event, &data);
            }
        }
        Action::Join { nsp, room, filter } => {
            for c in clients.iter().filter(|c| matches(c, nsp, filter)) {
                crate::events::join(state, &**c, room);
            }
        }
        Action::Leave { nsp, room, filter } => {
            for c in clients.iter().filter(|c| matches(c, nsp, filter)) {
                crate::events::leave(state, &**c, room);
            }
        }
        Action::Disconnect { nsp, filter } => {
            for c in clients.iter().filter(|c| matches(c, nsp, filter)) {
                c.close(Close::Kicked);
            }
        }
    }
}

/// The admin side of the bus: the other nodes' actions, and their questions for our sockets.
struct BusSide(AppState);

impl Listener for BusSide {
    fn on_message(&self, body: Value) {
        match serde_json::from_value::<Action>(body) {
            Ok(a) => apply(&self.0, &a),
            Err(e) => tracing::debug!("admin bus: unreadable action: {e}"),
        }
    }

    fn on_ask(&self, _body: Value) -> Value {
        Value::Array(self.0.hub.local_clients().iter().map(|c| serialize(&**c)).collect())
    }
}

/// Every client of every node, serialised for `all_sockets`.
async fn all_sockets(state: &AppState) -> Vec<Value> {
    let mut out: Vec<Value> = state.hub.local_clients().iter().map(|c| serialize(&**c)).collect();
    for answer in state.bus.ask("admin", &json!({ "q": "sockets" })).await {
        if let Value::Array(list) = answer {
            out.extend(list);
        }
    }
    out
}

async fn act(state: &AppState, action: Action) {
    apply(state, &action);
    state.bus.publish("admin", &action).await;
}

/// What an admin socket logged in with.
struct NewSession(String);

/// The `/admin` namespace's middleware: a session id, or the username and password.
pub async fn authenticate<A: Adapter>(
    socket: SocketRef<A>,
    State(state): State<AppState>,
    TryData(auth): TryData<Value>,
) -> Result<(), AdminRefused> {
    let Some(admin) = state.admin.clone() else { return Err(AdminRefused) };
    let auth = auth.unwrap_or(Value::Null);
    if let Some(id) = auth.get("sessionId").and_then(Value::as_str) {
        if admin.session_ok(&state, id).await {
            return Ok(());
        }
    }
    let username = auth.get("username").and_then(Value::as_str).unwrap_or_default();
    let password = auth.get("password").and_then(Value::as_str).unwrap_or_default().to_string();
    if username != admin.settings.username || password.is_empty() || password.len() > 256 {
        return Err(AdminRefused);
    }
    if let Some(ip) = crate::http::client_ip(socket.req_parts(), state.config.trust_proxy_headers) {
        if admin.logins.check_key(&ip).is_err() {
            tracing::warn!(%ip, "admin ui: too many logins from this address");
            return Err(AdminRefused);
        }
    }
    let hash = admin.settings.hash.clone();
    let ok =
        tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false)).await.unwrap_or(false);
    if !ok {
        tracing::info!(sid = %socket.id, "admin ui: invalid credentials");
        return Err(AdminRefused);
    }
    let id = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
    admin.save_session(&state, &id).await;
    socket.extensions.insert(Arc::new(NewSession(id)));
    Ok(())
}

/// The refusal: `connect_error` with the message the UI knows.
#[derive(Debug)]
pub struct AdminRefused;

impl std::fmt::Display for AdminRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid credentials")
    }
}

impl std::error::Error for AdminRefused {}

pub async fn on_connect<A: Adapter>(socket: SocketRef<A>, State(state): State<AppState>) {
    let Some(admin) = state.admin.clone() else {
        let _ = socket.disconnect();
        return;
    };
    tracing::info!(sid = %socket.id, "admin ui connected");
    if !admin.settings.readonly {
        // The UI's events carry several arguments: read them all from the packet.
        socket.on("emit", |State(state): State<AppState>, msg: Msg<A>| async move {
            let mut it = args(&msg).into_iter();
            let (Some(Value::String(nsp)), filter, Some(Value::String(event))) = (it.next(), it.next(), it.next())
            else {
                return;
            };
            let filter = filter.and_then(|f| f.as_str().map(str::to_string));
            act(&state, Action::Emit { nsp, filter, event, args: it.collect() }).await;
        });
        socket.on("join", |State(state): State<AppState>, msg: Msg<A>| async move {
            if let Some((nsp, room, filter)) = room_action(args(&msg)) {
                act(&state, Action::Join { nsp, room, filter }).await;
            }
        });
        socket.on("leave", |State(state): State<AppState>, msg: Msg<A>| async move {
            if let Some((nsp, room, filter)) = room_action(args(&msg)) {
                act(&state, Action::Leave { nsp, room, filter }).await;
            }
        });
        socket.on("_disconnect", |State(state): State<AppState>, msg: Msg<A>| async move {
            let mut it = args(&msg).into_iter();
            let Some(Value::String(nsp)) = it.next() else { return };
            let _close = it.next();
            let filter = it.next().and_then(|f| f.as_str().map(str::to_string));
            act(&state, Action::Disconnect { nsp, filter }).await;
        });
    }
    if let Some(session) = socket.extensions.get::<Arc<NewSession>>() {
        let _ = socket.emit("session", &session.0);
    }
    let _ = socket.emit("config", &json!({ "supportedFeatures": admin.features() }));
    if admin.settings.development {
        let sockets = all_sockets(&state).await;
        let _ = socket.emit("all_sockets", &sockets);
    }
}

/// The arguments of a UI event (after its name).
fn args<A: Adapter>(msg: &Msg<A>) -> Vec<Value> {
    match msg.peek() {
        Value::Array(a) => a,
        _ => Vec::new(),
    }
}

/// `(nsp, room, filter?)` of `join` and `leave`.
fn room_action(args: Vec<Value>) -> Option<(String, String, Option<String>)> {
    let mut it = args.into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(Value::String(nsp)), Some(Value::String(room)), filter) => {
            Some((nsp, room, filter.and_then(|f| f.as_str().map(str::to_string))))
        }
        _ => None,
    }
}

/// The relay to the UI and the `server_stats` every 2 s: on this node, through the adapter to every
/// node's admin sockets.
pub fn spawn<A: Adapter>(io: SocketIo<A>, state: AppState) -> Option<tokio::task::JoinHandle<()>> {
    let admin = state.admin.clone()?;
    state.bus.listen("admin", Arc::new(BusSide(state.clone())));
    let mut rx = admin.relay_rx.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| state.node_id.clone());
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let Some(ns) = io.of(NAMESPACE) else { continue };
                    let stats = server_stats(&io, &state, &admin, &hostname);
                    let _ = ns.emit("server_stats", &stats).await;
                }
                relay = rx.recv() => {
                    let Some(relay) = relay else { return };
                    let Some(ns) = io.of(NAMESPACE) else { continue };
                    let _ = match relay {
                        Relay::Two(e, a, b) => ns.emit(e, &(a, b)).await,
                        Relay::Four(e, a, b, c, d) => ns.emit(e, &(a, b, c, d)).await,
                    };
                }
            }
        }
    }))
}

fn server_stats<A: Adapter>(io: &SocketIo<A>, state: &AppState, admin: &Admin, hostname: &str) -> Value {
    let clients = state.hub.local_clients();
    let ws = clients.iter().filter(|c| c.transport() == "ws").count();
    let sio = clients.len() - ws;
    let polling = clients.iter().filter(|c| c.info().transport == "polling").count();
    let admins = io.of(NAMESPACE).map(|ns| ns.sockets().len()).unwrap_or(0);
    json!({
        "serverId": state.node_id,
        "hostname": hostname,
        "pid": std::process::id(),
        "uptime": state.started.elapsed().as_secs_f64(),
        "clientsCount": clients.len() + admins,
        "pollingClientsCount": polling,
        "aggregatedEvents": admin.drain_events(),
        "namespaces": [
            { "name": "/", "socketsCount": sio },
            { "name": "/ws", "socketsCount": ws },
            { "name": NAMESPACE, "socketsCount": admins },
        ],
    })
}
