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
//! queue that drops rather than waits. Nor may it hand tokens to whoever watches the UI (a read-only
//! operator would then act as any user, admins included): the arguments of `auth`, `authenticate` and
//! `refresh-token` are never relayed, and every JWT in what is relayed or listed is replaced
//! ([`redact_jwts`]). Production mode (the default) relays no client data at all.
//!
//! Logins must not tell valid usernames apart (the password check runs for a wrong username too,
//! against a dummy hash of the same cost) and must not allow guessing: failures back off, growing, per
//! address and per username ([`Strikes`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::SocketIo;
use tokio::sync::mpsc;

use crate::sio::Msg;
use rtg_app::events::Payload;
use rtg_app::state::AppState;
use rtg_cluster::bus::Listener;
use rtg_model::client::Via;
use rtg_model::client::{Client, Close};

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
/// Client events whose arguments carry a token: only their name is relayed.
const TOKEN_EVENTS: &[&str] = &["auth", "authenticate", "refresh-token"];
/// What a JWT is shown as.
const REDACTED_JWT: &str = "[redacted JWT]";
/// Failed logins allowed per address and per username before the back-off starts.
const FREE_FAILURES: u32 = 5;
/// The first back-off; it doubles with each further failure, up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);
/// Addresses and usernames tracked at most (each map); past it the least recently failed are forgotten.
const MAX_TRACKED: usize = 10_000;
/// A key's failures are forgotten this long after its last one.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// `ADMIN_UI_*`, checked at start.
pub struct Settings {
    pub username: String,
    /// A bcrypt hash (a plain-text password is hashed at start).
    pub hash: String,
    pub readonly: bool,
    pub development: bool,
    /// A hash of the same cost as `hash`, of a random password: checked when the username is wrong, so
    /// that a wrong username takes as long as a wrong password.
    dummy_hash: String,
    /// SHA-256 of the username: compared instead of the name, in a time that does not depend on it.
    username_digest: [u8; 32],
}

impl Settings {
    pub fn from_config(cfg: &rtg_model::config::Config) -> anyhow::Result<Option<Self>> {
        let Some(password) = cfg.admin_ui_password.as_deref().filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let (hash, cost) = if ["$2a$", "$2b$", "$2y$"].iter().any(|p| password.starts_with(p)) {
            let parts = password
                .parse::<bcrypt::HashParts>()
                .map_err(|e| anyhow::anyhow!("ADMIN_UI_PASSWORD: not a valid bcrypt hash: {e}"))?;
            (password.to_string(), parts.get_cost())
        } else {
            let hash =
                bcrypt::hash(password, bcrypt::DEFAULT_COST).map_err(|e| anyhow::anyhow!("ADMIN_UI_PASSWORD: {e}"))?;
            (hash, bcrypt::DEFAULT_COST)
        };
        let random = format!("{:032x}", rand::random::<u128>());
        let dummy_hash = bcrypt::hash(random, cost).map_err(|e| anyhow::anyhow!("ADMIN_UI_PASSWORD: {e}"))?;
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
            dummy_hash,
            username_digest: digest(&cfg.admin_ui_username),
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
    /// Failed logins per address and per username's digest (bcrypt is slow on purpose; so is guessing).
    by_address: Mutex<Strikes<IpAddr>>,
    by_username: Mutex<Strikes<[u8; 32]>>,
    /// Sessions on this node (without Redis).
    sessions: Mutex<HashMap<String, Instant>>,
}

impl Admin {
    pub fn new(settings: Settings) -> Arc<Self> {
        let (relay, rx) = mpsc::channel(RELAY_QUEUE);
        Arc::new(Admin {
            settings,
            relay,
            relay_rx: Mutex::new(Some(rx)),
            events: Mutex::new(HashMap::new()),
            by_address: Mutex::new(Strikes::default()),
            by_username: Mutex::new(Strikes::default()),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Until when a login from `ip` for `user` is refused without a check (`None`: it may be tried).
    fn backing_off(&self, ip: Option<IpAddr>, user: &[u8; 32]) -> Option<Instant> {
        let now = Instant::now();
        let by_ip = ip.and_then(|ip| self.by_address.lock().unwrap_or_else(|e| e.into_inner()).until(&ip, now));
        let by_user = self.by_username.lock().unwrap_or_else(|e| e.into_inner()).until(user, now);
        by_ip.into_iter().chain(by_user).max()
    }

    fn login_failed(&self, ip: Option<IpAddr>, user: [u8; 32]) {
        let now = Instant::now();
        if let Some(ip) = ip {
            self.by_address.lock().unwrap_or_else(|e| e.into_inner()).fail(ip, now);
        }
        self.by_username.lock().unwrap_or_else(|e| e.into_inner()).fail(user, now);
    }

    fn login_ok(&self, ip: Option<IpAddr>, user: &[u8; 32]) {
        if let Some(ip) = ip {
            self.by_address.lock().unwrap_or_else(|e| e.into_inner()).map.remove(&ip);
        }
        self.by_username.lock().unwrap_or_else(|e| e.into_inner()).map.remove(user);
    }

    fn send(&self, r: Relay) {
        let _ = self.relay.try_send(r);
    }

    /// Counts one of the aggregated events of this second.
    pub fn count(&self, kind: &'static str, sub: Option<&str>, n: u64) {
        let sec = rtg_model::clock::unix_now_ms() / 1000 * 1000;
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
    fn on_connected(&self, client: &dyn rtg_model::client::Link) {
        self.count("rawConnection", None, 1);
        if self.settings.development {
            self.send(Relay::Two("socket_connected", serialize(client), json!(rtg_model::clock::iso_now())));
        }
    }

    fn on_disconnected(&self, client: &dyn rtg_model::client::Link, reason: &str) {
        self.count("rawDisconnection", Some(reason), 1);
        if self.settings.development {
            let (nsp, id) = (nsp_of(client), client.id().to_string());
            self.send(Relay::Four(
                "socket_disconnected",
                json!(nsp),
                json!(id),
                json!(reason),
                json!(rtg_model::clock::iso_now()),
            ));
        }
    }

    fn on_room(&self, client: &dyn rtg_model::client::Link, room: &str, joined: bool) {
        if self.settings.development {
            let event = if joined { "room_joined" } else { "room_left" };
            let (nsp, id) = (nsp_of(client), client.id().to_string());
            let room = redact_jwts(room);
            self.send(Relay::Four(event, json!(nsp), json!(room), json!(id), json!(rtg_model::clock::iso_now())));
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
                    json!(rtg_model::clock::iso_now()),
                ));
            }
        }
    }

    /// Packets and bytes in (`in_ = true`) or out, for the aggregated events (each front end counts
    /// its own: it knows the sizes).
    fn on_packets(&self, in_: bool, packets: u64, bytes: u64) {
        let (p, b) = if in_ { ("packetsIn", "bytesIn") } else { ("packetsOut", "bytesOut") };
        self.count(p, None, packets);
        self.count(b, None, bytes);
    }

    /// A client event, shown (summarised, tokens redacted) in development mode; the arguments of
    /// [`TOKEN_EVENTS`] are not shown at all.
    fn on_received(&self, client: &dyn rtg_model::client::Link, event: &str, args: &mut dyn FnMut() -> Value) {
        if self.settings.development {
            let mut list = vec![json!(redact_jwts(event))];
            if !TOKEN_EVENTS.contains(&event) {
                match summarise(&args(), 0) {
                    Value::Array(a) => list.extend(a),
                    Value::Null => {}
                    v => list.push(v),
                }
            }
            let (nsp, id) = (nsp_of(client), client.id().to_string());
            self.send(Relay::Four(
                "event_received",
                json!(nsp),
                json!(id),
                Value::Array(list),
                json!(rtg_model::clock::iso_now()),
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
fn nsp_of(client: &dyn rtg_model::client::Link) -> &'static str {
    match client.transport() {
        Via::Ws => "/ws",
        Via::SocketIo => "/",
    }
}

/// A client as the UI lists it (`SerializedSocket`), without a token: the handshake's credentials are
/// replaced where they are taken from ([`crate::render::redacted_headers`]), and any JWT left anywhere
/// (another header, a query parameter, a room) here.
fn serialize(client: &dyn rtg_model::client::Link) -> Value {
    let mut v = serialize_raw(client);
    redact_value(&mut v);
    v
}

fn serialize_raw(client: &dyn rtg_model::client::Link) -> Value {
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
/// JWTs are redacted in strings and keys before they are cut (a cut token would still show its claims).
pub fn summarise(v: &Value, depth: usize) -> Value {
    match v {
        Value::String(s) => {
            let shown = redact_jwts(s);
            if shown.chars().count() > MAX_STRING {
                Value::String(format!("{}… ({} bytes)", shown.chars().take(MAX_STRING).collect::<String>(), s.len()))
            } else {
                Value::String(shown.into_owned())
            }
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
                .map(|(k, x)| (redact_jwts(k).chars().take(MAX_STRING).collect(), summarise(x, depth + 1)))
                .collect();
            if o.len() > MAX_ITEMS {
                out.insert("…".into(), Value::String(format!("{} more keys", o.len() - MAX_ITEMS)));
            }
            Value::Object(out)
        }
        v => v.clone(),
    }
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Replaces every JWT in `s` (compact JWS or JWE: base64url segments joined by dots, the first a JSON
/// object) with `[redacted JWT]`. Whatever stands around it is kept, and so are strings that merely
/// look alike (`a.b.c`, host names): the header must decode to a JSON object. Linear in `s`.
pub fn redact_jwts(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if !is_base64url(b[i]) {
            i += 1;
            continue;
        }
        // A run of base64url characters and dots (ASCII: the slices below fall on char boundaries).
        let start = i;
        while i < b.len() && (is_base64url(b[i]) || b[i] == b'.') {
            i += 1;
        }
        if let Some(from) = jwt_start(&s[start..i]) {
            let out = out.get_or_insert_with(|| String::with_capacity(s.len()));
            out.push_str(&s[copied..start + from]);
            out.push_str(REDACTED_JWT);
            copied = i;
        }
    }
    match out {
        None => Cow::Borrowed(s),
        Some(mut out) => {
            out.push_str(&s[copied..]);
            Cow::Owned(out)
        }
    }
}

/// Where a JWT starts in a run of base64url characters and dots: a segment followed by at least two
/// more (the payload not empty) whose tail from an `ey`/`ew` (`{` then `"` or white space, encoded)
/// decodes to a JSON object. The tail, because a header may follow other characters of the run
/// (`Bearer%20eyJ…` gives `20eyJ…`).
fn jwt_start(run: &str) -> Option<usize> {
    let mut segments = Vec::new();
    let mut off = 0;
    for seg in run.split('.') {
        segments.push((off, seg));
        off += seg.len() + 1;
    }
    for k in 0..segments.len().saturating_sub(2) {
        let (off, seg) = segments[k];
        if segments[k + 1].1.is_empty() {
            continue;
        }
        let starts = seg
            .match_indices('e')
            .map(|(p, _)| p)
            .filter(|&p| matches!(seg.as_bytes().get(p + 1), Some(b'y' | b'w')))
            .take(4);
        for p in starts {
            if is_jose_header(&seg[p..]) {
                return Some(off + p);
            }
        }
    }
    None
}

fn is_jose_header(seg: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg)
        .ok()
        .is_some_and(|b| serde_json::from_slice::<Map<String, Value>>(&b).is_ok())
}

/// [`redact_jwts`] over every string and key of `v`.
fn redact_value(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Cow::Owned(r) = redact_jwts(s) {
                *s = r;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact_value),
        Value::Object(o) => {
            let taken = std::mem::take(o);
            *o = taken
                .into_iter()
                .map(|(k, mut x)| {
                    redact_value(&mut x);
                    (redact_jwts(&k).into_owned(), x)
                })
                .collect();
        }
        _ => {}
    }
}

fn digest(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}

/// Failed logins per key, for a back-off that grows with them: after [`FREE_FAILURES`], each further
/// failure doubles the wait (from [`BACKOFF_FIRST`] up to [`BACKOFF_MAX`]) during which the key's logins
/// are refused unchecked. Bounded: at most [`MAX_TRACKED`] keys, a key forgotten [`FORGET_AFTER`] its
/// last failure, and at the cap the least recently failed goes first (an attacker cannot grow it).
struct Strikes<K> {
    map: HashMap<K, Strike>,
}

struct Strike {
    failures: u32,
    last: Instant,
    until: Instant,
}

impl<K> Default for Strikes<K> {
    fn default() -> Self {
        Strikes { map: HashMap::new() }
    }
}

impl<K: Hash + Eq + Clone> Strikes<K> {
    fn until(&self, key: &K, now: Instant) -> Option<Instant> {
        self.map.get(key).map(|s| s.until).filter(|&u| u > now)
    }

    fn fail(&mut self, key: K, now: Instant) {
        if !self.map.contains_key(&key) && self.map.len() >= MAX_TRACKED {
            self.map.retain(|_, s| now.duration_since(s.last) < FORGET_AFTER);
            if self.map.len() >= MAX_TRACKED {
                let oldest = self.map.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.map.remove(&k);
                }
            }
        }
        let strike = self.map.entry(key).or_insert(Strike { failures: 0, last: now, until: now });
        if now.duration_since(strike.last) >= FORGET_AFTER {
            strike.failures = 0;
        }
        strike.failures = strike.failures.saturating_add(1);
        strike.last = now;
        if let Some(extra) = strike.failures.checked_sub(FREE_FAILURES) {
            let wait = BACKOFF_FIRST.saturating_mul(2u32.saturating_pow(extra.min(20))).min(BACKOFF_MAX);
            strike.until = now + wait;
        }
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
                state.hub.join(&**c, room, Some(state.config.max_rooms_per_socket as usize));
            }
        }
        Action::Leave { nsp, room, filter } => {
            for c in clients.iter().filter(|c| matches(c, nsp, filter)) {
                state.hub.leave(&**c, room);
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
    for mut answer in state.bus.ask("admin", &json!({ "q": "sockets" })).await {
        // Redacted again: a node of an older version (during a rolling upgrade) may not have.
        redact_value(&mut answer);
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
    State(admin): State<Arc<Admin>>,
    TryData(auth): TryData<Value>,
) -> Result<(), AdminRefused> {
    let auth = auth.unwrap_or(Value::Null);
    if let Some(id) = auth.get("sessionId").and_then(Value::as_str) {
        if admin.session_ok(&state, id).await {
            return Ok(());
        }
    }
    let username = auth.get("username").and_then(Value::as_str).unwrap_or_default();
    let password = auth.get("password").and_then(Value::as_str).unwrap_or_default().to_string();
    if password.is_empty() || password.len() > 256 {
        return Err(AdminRefused);
    }
    let ip = crate::http::client_ip(socket.req_parts(), state.config.trust_proxy_headers);
    let user = digest(username);
    if let Some(until) = admin.backing_off(ip, &user) {
        state.metrics.admin_login("throttled");
        tracing::warn!(ip = ?ip, wait_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64,
            "admin ui: login refused, backing off after failures");
        return Err(AdminRefused);
    }
    // The same work whether the username is right or not: the answer's time tells nothing.
    let name_ok = user == admin.settings.username_digest;
    let hash = if name_ok { admin.settings.hash.clone() } else { admin.settings.dummy_hash.clone() };
    let password_ok =
        tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false)).await.unwrap_or(false);
    if !(name_ok && password_ok) {
        admin.login_failed(ip, user);
        state.metrics.admin_login("failed");
        tracing::info!(sid = %socket.id, ip = ?ip, "admin ui: invalid credentials");
        return Err(AdminRefused);
    }
    admin.login_ok(ip, &user);
    state.metrics.admin_login("ok");
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

pub async fn on_connect<A: Adapter>(
    socket: SocketRef<A>,
    State(state): State<AppState>,
    State(admin): State<Arc<Admin>>,
) {
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
pub fn spawn<A: Adapter>(io: SocketIo<A>, state: AppState, admin: Arc<Admin>) -> Option<tokio::task::JoinHandle<()>> {
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
    let ws = clients.iter().filter(|c| c.transport() == Via::Ws).count();
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

/// The Admin UI hears of this node's clients through the hub (installed by `startup`).
impl rtg_model::hub::Watcher for Admin {
    fn connected(&self, client: &dyn rtg_model::client::Link) {
        self.on_connected(client)
    }
    fn disconnected(&self, client: &dyn rtg_model::client::Link, reason: &str) {
        self.on_disconnected(client, reason)
    }
    fn room(&self, client: &dyn rtg_model::client::Link, room: &str, joined: bool) {
        self.on_room(client, room, joined)
    }
    fn received(&self, client: &dyn rtg_model::client::Link, event: &str, args: &mut dyn FnMut() -> Value) {
        self.on_received(client, event, args)
    }
    fn packets(&self, incoming: bool, packets: u64, bytes: u64) {
        self.on_packets(incoming, packets, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MTc5NTM0NTIwMH0.\
                       c2lnbmF0dXJlLWJ5dGVzLWhlcmU";

    #[test]
    fn jwts_are_redacted_wherever_they_stand() {
        assert_eq!(redact_jwts(JWT), REDACTED_JWT);
        assert_eq!(redact_jwts(&format!("my token: {JWT}!")), format!("my token: {REDACTED_JWT}!"));
        assert_eq!(redact_jwts(&format!("Bearer%20{JWT}")), format!("Bearer%20{REDACTED_JWT}"));
        assert_eq!(redact_jwts(&format!("{JWT} and {JWT}")), format!("{REDACTED_JWT} and {REDACTED_JWT}"));
        // Not tokens: left alone.
        for s in ["www.example.com", "a.b.c", "hey.you.there", "eyJ.x.y", "1.2.3.4", "plain text", ""] {
            assert_eq!(redact_jwts(s), s);
        }
        // In a summarised payload: keys, nested values, and a string long enough to be cut.
        let v = json!({ "t": JWT, JWT: 1, "deep": [[{ "x": format!("{}{JWT}", "y".repeat(200)) }]] });
        let shown = summarise(&v, 0).to_string();
        assert!(!shown.contains("c2lnbmF0dXJl") && !shown.contains("eyJzdWIi"), "{shown}");
    }

    #[test]
    fn failures_back_off_growing_and_the_maps_stay_bounded() {
        let mut s = Strikes::<u32>::default();
        let t0 = Instant::now();
        for _ in 1..FREE_FAILURES {
            s.fail(1, t0);
        }
        assert_eq!(s.until(&1, t0), None, "free failures");
        s.fail(1, t0);
        assert_eq!(s.until(&1, t0), Some(t0 + BACKOFF_FIRST));
        s.fail(1, t0);
        assert_eq!(s.until(&1, t0), Some(t0 + BACKOFF_FIRST * 2));
        assert_eq!(s.until(&1, t0 + BACKOFF_FIRST * 2), None, "passed");
        for _ in 0..100 {
            s.fail(1, t0);
        }
        assert_eq!(s.until(&1, t0), Some(t0 + BACKOFF_MAX));
        // Forgotten FORGET_AFTER its last failure: the address starts over with its free failures.
        let later = t0 + FORGET_AFTER + BACKOFF_MAX;
        s.fail(1, later);
        assert_eq!(s.until(&1, later), None, "failures forgotten with time");
        for k in 2..(MAX_TRACKED as u32 + 500) {
            s.fail(k, t0 + Duration::from_millis(k as u64));
        }
        assert!(s.map.len() <= MAX_TRACKED);
        assert!(!s.map.contains_key(&2), "the least recently failed forgotten first");
    }
}
