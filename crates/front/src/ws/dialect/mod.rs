//! Dialects of `/ws` (SPEC §10): the seeds' own WebSocket clients, unchanged. A dialect is a table,
//! not code: its frame shape, the client's names with the core event each one runs (and how the
//! core payload is built from the client's fields), the answers' names and fields, and how server
//! events are renamed and reshaped. The core handlers (`events::handle`) do all the work, so a
//! dialect client shares rooms, messages, presence and limits with every other client.
//!
//! A connection's dialect follows from its first frame that tells ([`detect`]); every frame sent
//! to it from then on is in that dialect ([`render`]). The SaaS frames and the generic envelope
//! (`frames.rs`) are the default and stay in `mod.rs`.

mod bun;
mod native;
mod qrypt;

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::clients::WsConn;
use super::{answered, Next, WsFront};
use rtg_app::events;
use rtg_model::client::{Client, Link};
use rtg_model::error::{ApiError, Code};

/// Which protocol a connection speaks (stored in its [`WsConn`] as a `u8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Nothing told yet: SaaS frames until a frame does.
    Undecided = 0,
    /// The SaaS frames and the `{type, data|payload, requestId}` envelope (`frames.rs`).
    Saas = 1,
    /// Seed 004, the Bun helper (`@venizia/ignis-helpers`).
    Bun = 2,
    /// Seed 002, QryptChat's `websocket-chat.js`.
    Qrypt = 3,
    /// Seed 003's native `WebSocketClient`.
    Native = 4,
}

impl Kind {
    pub fn from_u8(v: u8) -> Kind {
        match v {
            1 => Kind::Saas,
            2 => Kind::Bun,
            3 => Kind::Qrypt,
            4 => Kind::Native,
            _ => Kind::Undecided,
        }
    }

    fn table(self) -> Option<&'static Dialect> {
        match self {
            Kind::Bun => Some(&bun::DIALECT),
            Kind::Qrypt => Some(&qrypt::DIALECT),
            Kind::Native => Some(&native::DIALECT),
            Kind::Undecided | Kind::Saas => None,
        }
    }
}

/// How a dialect's frames are laid out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{type, ...fields}` (seed 003): the fields sit beside `type`.
    Flat,
    /// `{event, data}` (seed 004).
    EventData,
    /// `{type, payload, requestId, timestamp}` (seed 002): answers echo the `requestId`.
    TypePayload,
}

/// A value of a frame or a core payload, read from what is at hand. Paths are dotted: `req.` the
/// client's fields, `ack.` the core's answer, `data.` a server event's argument, `it.` the element
/// of an [`V::Each`] (or the object of an [`V::Obj`] under [`V::At`]); and the names `now_ms`,
/// `now_iso`, `conn` (the connection id), `user_id`, `user`, `err.message`, `err.code`.
pub enum V {
    P(&'static str),
    /// The first of these paths that is not null.
    Or(&'static [&'static str]),
    /// A path holding milliseconds, as ISO-8601.
    Iso(&'static str),
    /// A constant string.
    Lit(&'static str),
    Bool(bool),
    /// An object of these fields (null ones left out).
    Obj(&'static [(&'static str, V)]),
    /// The object at a path as `it`, reshaped into these fields.
    At(&'static str, &'static [(&'static str, V)]),
    /// Each element of the array at a path as `it`, reshaped into these fields.
    Each(&'static str, &'static [(&'static str, V)]),
}

/// What a client's frame does.
pub enum Does {
    /// Runs a core event with the payload built from the frame.
    Core(&'static str, V),
    /// Runs a core event once per element of the array at the path (seed 004's `{rooms:[...]}`);
    /// nothing answers, as in the seed.
    EachCore(&'static str, &'static str),
    /// In-band authentication (`token` in the frame's fields).
    Authenticate,
    /// Answered by its reply alone (a ping), after the rate limit.
    Reply,
    /// Activity only (seed 004's heartbeat): not answered.
    Nothing,
    /// Seed 003's `broadcast`: `data` as it is to the others in the room named by the path, as the
    /// server event `broadcast` (the sender must be in the room).
    RoomBroadcast(&'static str),
}

/// One client name.
pub struct Op {
    pub name: &'static str,
    pub does: Does,
    /// The answer's name and fields (`ack.` is the core's answer); none: only failures answer.
    pub reply: Option<(&'static str, V)>,
}

/// A server event, renamed and reshaped for the dialect: the first rule whose `when` holds
/// (`(path, value)`: the event's field equals that string) applies.
pub struct Rename {
    pub core: &'static str,
    pub when: Option<(&'static str, &'static str)>,
    pub name: &'static str,
    /// The frame's fields (`data.` is the event's argument); [`V::P`]`("data")` alone in a
    /// [`Shape::Flat`] dialect with no name means the argument is the frame as it is.
    pub fields: V,
}

pub struct Dialect {
    pub name: &'static str,
    pub shape: Shape,
    pub ops: &'static [Op],
    pub out: &'static [Rename],
    /// The error frame's name and fields (`err.message`, `err.code`, `req.*`).
    pub error: (&'static str, V),
    /// The name of an authentication refusal's frame (with the error frame's fields).
    pub auth_error: &'static str,
    /// Names not in `ops` run the core event of that name with the frame's fields (seed 004's
    /// custom events); otherwise they are an unknown event.
    pub passthrough: bool,
    /// Rooms a client joins once authenticated (seed 004: `ws-default`, `ws-notification`, and
    /// its own id, which `conn` stands for).
    pub default_rooms: &'static [&'static str],
}

/// The dialect a frame tells, if any: `Undecided` when it could be several (a bare `ping`).
pub fn detect(frame: &Map<String, Value>) -> Kind {
    let ty = frame.get("type").and_then(Value::as_str);
    let Some(ty) = ty else {
        return if frame.get("event").and_then(Value::as_str).is_some() { Kind::Bun } else { Kind::Undecided };
    };
    if ty == "ping" {
        return Kind::Undecided;
    }
    if native::DIALECT.ops.iter().any(|o| o.name == ty) {
        return Kind::Native;
    }
    // Seed 002 names its requests in snake_case; its `auth` carries the token in `payload` and, as
    // every frame of its `createMessage`, an ISO `timestamp` (the generic envelope's `auth` has a
    // top-level `token`, or a numeric timestamp from a client of CLIENTS.md's summary).
    let qrypt_op = qrypt::DIALECT.ops.iter().any(|o| o.name == ty && o.name != "auth");
    let qrypt_auth = ty == "auth"
        && frame.get("payload").is_some_and(Value::is_object)
        && frame.get("timestamp").is_some_and(Value::is_string);
    if qrypt_op || qrypt_auth {
        return Kind::Qrypt;
    }
    Kind::Saas
}

/// Most rooms one `{rooms:[...]}` frame joins or leaves.
const MAX_ROOMS_AT_ONCE: usize = 64;

/// What is at hand while building a frame or a payload.
struct Env<'a> {
    req: &'a Value,
    ack: &'a Value,
    data: &'a Value,
    it: &'a Value,
    conn: Option<&'a WsConn>,
    err: Option<&'a ApiError>,
}

impl<'a> Env<'a> {
    fn empty() -> Self {
        Env { req: &Value::Null, ack: &Value::Null, data: &Value::Null, it: &Value::Null, conn: None, err: None }
    }

    fn path(&self, p: &str) -> Value {
        let (root, rest) = p.split_once('.').unwrap_or((p, ""));
        let base: Value = match root {
            "req" => self.req.clone(),
            "ack" => self.ack.clone(),
            "data" => self.data.clone(),
            "it" => self.it.clone(),
            "now_ms" => json!(chrono::Utc::now().timestamp_millis()),
            "now_iso" => json!(rtg_model::clock::iso_now()),
            "conn" => self.conn.map(|c| json!(c.id().to_string())).unwrap_or(Value::Null),
            "user_id" => self.conn.and_then(|c| c.session()).map(|s| json!(s.user_id())).unwrap_or(Value::Null),
            "user" => self.conn.and_then(|c| c.session()).map(|s| json!(s.user().as_deref())).unwrap_or(Value::Null),
            "err" => match self.err {
                Some(e) => json!({ "message": e.message, "code": e.code }),
                None => Value::Null,
            },
            _ => Value::Null,
        };
        if rest.is_empty() {
            return base;
        }
        rest.split('.').try_fold(base, |v, k| v.get(k).cloned()).unwrap_or(Value::Null)
    }

    fn with_it<'b>(&'b self, it: &'b Value) -> Env<'b> {
        Env { req: self.req, ack: self.ack, data: self.data, it, conn: self.conn, err: self.err }
    }

    fn eval(&self, v: &V) -> Value {
        match v {
            V::P(p) => self.path(p),
            V::Or(ps) => ps.iter().map(|p| self.path(p)).find(|v| !v.is_null()).unwrap_or(Value::Null),
            V::Iso(p) => match self.path(p).as_i64().and_then(chrono::DateTime::from_timestamp_millis) {
                Some(t) => json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                None => Value::Null,
            },
            V::Lit(s) => json!(s),
            V::Bool(b) => json!(b),
            V::Obj(fields) => self.object(fields),
            V::At(p, fields) => {
                let it = self.path(p);
                if it.is_null() {
                    Value::Null
                } else {
                    self.with_it(&it).object(fields)
                }
            }
            V::Each(p, fields) => match self.path(p) {
                Value::Array(items) => Value::Array(items.iter().map(|it| self.with_it(it).object(fields)).collect()),
                _ => json!([]),
            },
        }
    }

    fn object(&self, fields: &[(&str, V)]) -> Value {
        let mut m = Map::new();
        for (k, v) in fields {
            let x = self.eval(v);
            if !x.is_null() {
                m.insert((*k).to_string(), x);
            }
        }
        Value::Object(m)
    }
}

impl Dialect {
    /// A frame of this dialect: `name` with `body` (an object's fields, or any value as `data`).
    fn frame(&self, name: &str, body: Value, request_id: Option<&Value>) -> String {
        let v = match self.shape {
            Shape::Flat => {
                let mut m = Map::new();
                m.insert("type".into(), json!(name));
                match body {
                    Value::Object(o) => m.extend(o),
                    Value::Null => {}
                    other => {
                        m.insert("data".into(), other);
                    }
                }
                m.entry("timestamp").or_insert_with(|| json!(chrono::Utc::now().timestamp_millis()));
                Value::Object(m)
            }
            Shape::EventData => json!({ "event": name, "data": body }),
            Shape::TypePayload => json!({
                "type": name,
                // The store drops a frame whose payload is not an object.
                "payload": if body.is_object() { body } else { json!({ "data": body }) },
                "requestId": request_id.cloned().unwrap_or(Value::Null),
                "timestamp": rtg_model::clock::iso_now(),
            }),
        };
        v.to_string()
    }

    /// The client's name, its fields and its `requestId`.
    fn read(&self, frame: Map<String, Value>) -> (String, Value, Option<Value>) {
        let mut frame = frame;
        let rid = frame.remove("requestId").filter(|v| !v.is_null());
        let key = if self.shape == Shape::EventData { "event" } else { "type" };
        let name = frame.remove(key).and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let fields = match self.shape {
            Shape::Flat => Value::Object(frame),
            Shape::EventData => frame.remove("data").unwrap_or(Value::Null),
            Shape::TypePayload => frame.remove("payload").or_else(|| frame.remove("data")).unwrap_or(Value::Null),
        };
        (name, fields, rid)
    }

    fn error_frame(&self, e: &ApiError, req: &Value, request_id: Option<&Value>) -> String {
        self.error_named(self.error.0, e, req, request_id)
    }

    fn error_named(&self, name: &str, e: &ApiError, req: &Value, request_id: Option<&Value>) -> String {
        let env = Env { req, err: Some(e), ..Env::empty() };
        self.frame(name, env.eval(&self.error.1), request_id)
    }

    /// A server event in this dialect.
    fn event(&self, event: &str, data: &Value) -> String {
        let rule = self.out.iter().find(|r| {
            r.core == event && r.when.is_none_or(|(p, want)| data.get(p).and_then(Value::as_str) == Some(want))
        });
        match rule {
            Some(r) if r.name.is_empty() => data.to_string(),
            Some(r) => {
                let env = Env { data, ..Env::empty() };
                self.frame(r.name, env.eval(&r.fields), None)
            }
            None => self.frame(event, data.clone(), None),
        }
    }
}

/// A server event as the connection's dialect writes it (`None`: the SaaS frames of `frames.rs`).
pub fn render(kind: Kind, event: &str, data: &Value) -> Option<String> {
    kind.table().map(|d| d.event(event, data))
}

/// A text frame on a connection that speaks (or may speak) a dialect; `None` leaves it to the SaaS
/// path. The frame is parsed here only while the dialect is unknown or is not SaaS.
pub(super) async fn on_text(front: &WsFront, conn: &Arc<WsConn>, text: &str) -> Option<Next> {
    let kind = conn.dialect();
    if kind == Kind::Saas {
        return None;
    }
    let frame = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        _ => {
            let d = kind.table()?;
            let e = ApiError::invalid("Invalid message format");
            let _ = conn.send_text(d.error_frame(&e, &Value::Null, None));
            return Some(Next::Go);
        }
    };
    let d = match kind.table() {
        Some(d) => d,
        None => {
            let told = detect(&frame);
            if told != Kind::Undecided {
                conn.set_dialect(told);
            }
            told.table()?
        }
    };
    Some(run(front, conn, d, frame).await)
}

async fn run(front: &WsFront, conn: &Arc<WsConn>, d: &'static Dialect, frame: Map<String, Value>) -> Next {
    let state = &front.state;
    let (name, req, rid) = d.read(frame);
    let rid = rid.as_ref();
    let fail = |e: ApiError| {
        let _ = conn.send_text(d.error_frame(&e, &req, rid));
    };
    let op = d.ops.iter().find(|o| o.name == name);
    let silent = matches!(op.map(|o| &o.does), Some(Does::Nothing));
    if let Some(Does::Authenticate) = op.map(|o| &o.does) {
        return authenticate(front, conn, d, op, &req, rid).await;
    }
    let Some(session) = conn.session() else {
        if conn.pre_auth_frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= super::PRE_AUTH_FRAMES {
            return Next::Close(1008, "Authentication required");
        }
        // A heartbeat before authentication is ignored, as by the helper (but counted).
        if !silent {
            fail(ApiError::new(Code::Unauthenticated, "Authentication required"));
        }
        return Next::Go;
    };
    if silent {
        return Next::Go;
    }
    let client: Client = conn.clone();
    let env = Env { req: &req, conn: Some(conn), ..Env::empty() };
    let Some(op) = op else {
        if !d.passthrough || name.is_empty() {
            if let Err(flood) = rate(state, conn, &session, &fail) {
                return flood;
            }
            fail(ApiError::new(Code::NotFound, "Unknown event"));
            return Next::Go;
        }
        let mut payload = req.clone();
        return match answered(events::handle(state, client, &name, &mut payload, false).await) {
            Ok((Err(e), _)) => {
                fail(e);
                Next::Go
            }
            Ok((Ok(_), _)) => Next::Go,
            Err(next) => next,
        };
    };
    let reply = |ack: &Value| {
        if let Some((reply_name, fields)) = &op.reply {
            let env = Env { req: &req, ack, conn: Some(conn), ..Env::empty() };
            let _ = conn.send_text(d.frame(reply_name, env.eval(fields), rid));
        }
    };
    match &op.does {
        Does::Core(event, arg) => {
            let mut payload = env.eval(arg);
            match answered(events::handle(state, client, event, &mut payload, true).await) {
                Ok((Ok(ack), _then)) => reply(&ack),
                Ok((Err(e), _)) => fail(e),
                Err(Next::Go) => {}
                Err(next) => return next,
            }
        }
        Does::EachCore(event, list) => {
            let items = match env.path(list) {
                Value::Array(items) => items,
                _ => Vec::new(),
            };
            for mut item in items.into_iter().take(MAX_ROOMS_AT_ONCE) {
                if let Err(next @ Next::Close(..)) =
                    answered(events::handle(state, client.clone(), event, &mut item, false).await)
                {
                    return next;
                }
            }
            reply(&Value::Null);
        }
        Does::Reply => {
            if let Err(flood) = rate(state, conn, &session, &fail) {
                return flood;
            }
            reply(&Value::Null);
        }
        Does::RoomBroadcast(path) => {
            if let Err(flood) = rate(state, conn, &session, &fail) {
                return flood;
            }
            let room = env.path(path).as_str().map(rtg_model::names::chat);
            match room.filter(|r| conn.rooms().iter().any(|x| x == r)) {
                Some(room) => {
                    let data = req.get("data").cloned().unwrap_or(Value::Null);
                    let _ = state.hub.to(room).skip(conn.id()).emit_value("broadcast", data).await;
                    reply(&Value::Null);
                }
                None => fail(ApiError::new(Code::NotInRoom, "Not in room")),
            }
        }
        Does::Nothing | Does::Authenticate => {}
    }
    Next::Go
}

/// The event budget for frames that run no core event.
fn rate(
    state: &rtg_app::state::AppState,
    conn: &WsConn,
    session: &rtg_model::session::Session,
    fail: &dyn Fn(ApiError),
) -> Result<(), Next> {
    match events::check_rate(state, conn, session).map_err(answered) {
        Ok(()) => Ok(()),
        Err(Ok((Err(e), _))) => {
            fail(e);
            Err(Next::Go)
        }
        Err(Ok((Ok(_), _))) => Ok(()),
        Err(Err(next)) => Err(next),
    }
}

/// In-band authentication in a dialect: the same checks as `{type:"auth"}` (`mod.rs`), answered
/// with the dialect's reply; a refusal is its error frame, then 4003.
async fn authenticate(
    front: &WsFront,
    conn: &Arc<WsConn>,
    d: &'static Dialect,
    op: Option<&Op>,
    req: &Value,
    rid: Option<&Value>,
) -> Next {
    let state = &front.state;
    let fail = |e: ApiError| {
        let _ = conn.send_text(d.error_frame(&e, req, rid));
    };
    if let Some(session) = conn.session() {
        if let Err(flood) = rate(state, conn, &session, &fail) {
            return flood;
        }
    }
    let token = match req {
        Value::String(s) => Some(s.as_str()),
        v => v.get("token").and_then(Value::as_str),
    };
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        fail(ApiError::invalid("auth needs a token"));
        return Next::Go;
    };
    let verified = match state.auth.verify(token) {
        Ok(v) => v,
        Err(e) => {
            state.metrics.refused();
            tracing::info!(sid = %conn.id(), reason = e.reason(), transport = "ws", dialect = d.name, "authentication failed");
            let e = ApiError::new(Code::Unauthenticated, e.to_string());
            let _ = conn.send_text(d.error_named(d.auth_error, &e, req, rid));
            return Next::Close(4003, "Authentication failed");
        }
    };
    let greet = |conn: &Arc<WsConn>| {
        if let Some((name, fields)) = op.and_then(|o| o.reply.as_ref()) {
            let env = Env { req, conn: Some(conn), ..Env::empty() };
            let _ = conn.send_text(d.frame(name, env.eval(fields), rid));
        }
    };
    let was_anonymous = match conn.session() {
        Some(session) => match session.user() {
            // The same user again: a token refresh, whose claims replace the old (SPEC §2). The
            // seeds' protocols have no frame for a dropped channel: it just stops arriving.
            Some(user) if user.user_id == verified.user.user_id => {
                let client: rtg_model::client::Client = conn.clone();
                events::connection::refresh(state, &client, &session, verified).await;
                greet(conn);
                return Next::Go;
            }
            Some(_) => {
                fail(ApiError::forbidden("Cannot switch user"));
                return Next::Go;
            }
            None => true,
        },
        None => false,
    };
    match events::admit_user(state, &**conn, verified.user, verified.exp).await {
        Ok(session) => {
            if was_anonymous {
                state.counters.remove(false);
            }
            conn.set_session(session.clone());
            for room in d.default_rooms {
                let room = if *room == "conn" { conn.id().to_string() } else { (*room).to_string() };
                // Chat rooms as `realtime:emit` and its emitter name them; reached there, not the
                // client's own (no arrival or departure is announced in them).
                state.hub.join(&**conn, &rtg_model::names::chat(&room), None);
            }
            tracing::debug!(sid = %conn.id(), dialect = d.name, "dialect");
            events::arrive(state, conn.clone(), session, |_| greet(conn)).await;
            Next::Go
        }
        Err(e) => {
            let (code, close, reason) = match e {
                rtg_app::auth::AuthError::TooManySockets | rtg_app::auth::AuthError::TooManyConnections => {
                    (Code::RateLimited, 1008, "Too many connections")
                }
                _ => (Code::Unauthenticated, 4003, "Authentication failed"),
            };
            fail(ApiError::new(code, e.to_string()));
            Next::Close(close, reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn first_frames_tell_the_dialect() {
        assert_eq!(detect(&obj(json!({"event": "authenticate", "data": {"token": "t"}}))), Kind::Bun);
        assert_eq!(detect(&obj(json!({"event": "heartbeat"}))), Kind::Bun);
        assert_eq!(detect(&obj(json!({"type": "join", "room": "r"}))), Kind::Native);
        assert_eq!(detect(&obj(json!({"type": "chat", "room": "r", "content": "c"}))), Kind::Native);
        assert_eq!(
            detect(&obj(json!({"type": "auth", "payload": {"token": "t"}, "requestId": "x", "timestamp": "t"}))),
            Kind::Qrypt
        );
        assert_eq!(detect(&obj(json!({"type": "load_conversations", "payload": {}}))), Kind::Qrypt);
        assert_eq!(detect(&obj(json!({"type": "auth", "token": "t"}))), Kind::Saas);
        assert_eq!(detect(&obj(json!({"type": "auth", "payload": {"token": "t"}, "timestamp": 1}))), Kind::Saas);
        assert_eq!(detect(&obj(json!({"type": "subscribe", "channel": "c"}))), Kind::Saas);
        assert_eq!(detect(&obj(json!({"type": "join-room", "data": "r"}))), Kind::Saas);
        assert_eq!(detect(&obj(json!({"type": "ping"}))), Kind::Undecided);
        assert_eq!(detect(&obj(json!({"data": 1}))), Kind::Undecided);
    }

    #[test]
    fn server_events_in_each_dialect() {
        let msg = json!({"id": "m1", "roomId": "r", "userId": "alice", "user": {"userId": "alice", "name": "Alice"},
            "content": "hi", "type": "text", "replyTo": null, "timestamp": 1_700_000_000_000i64});
        let v: Value = serde_json::from_str(&render(Kind::Native, "new-message", &msg).unwrap()).unwrap();
        assert_eq!(v["type"], "chat");
        assert_eq!(v["from"], "Alice");
        assert_eq!(v["content"], "hi");
        assert_eq!(v["timestamp"], 1_700_000_000_000i64);
        let v: Value = serde_json::from_str(&render(Kind::Bun, "new-message", &msg).unwrap()).unwrap();
        assert_eq!(v, json!({"event": "new-message", "data": msg}));
        let v: Value = serde_json::from_str(&render(Kind::Qrypt, "new-message", &msg).unwrap()).unwrap();
        assert_eq!(v["type"], "message_received");
        assert_eq!(v["payload"]["message"]["conversation_id"], "r");
        assert_eq!(v["payload"]["message"]["encrypted_content"], "hi");
        assert_eq!(v["payload"]["message"]["created_at"], "2023-11-14T22:13:20.000Z");
        assert!(v["requestId"].is_null() && v["timestamp"].is_string());
        let off = json!({"userId": "bob", "status": "offline", "timestamp": 1});
        let v: Value = serde_json::from_str(&render(Kind::Qrypt, "presence-update", &off).unwrap()).unwrap();
        assert_eq!(v["type"], "user_offline");
        let on = json!({"userId": "bob", "status": "online", "timestamp": 1});
        let v: Value = serde_json::from_str(&render(Kind::Qrypt, "presence-update", &on).unwrap()).unwrap();
        assert_eq!(v["type"], "user_online");
        assert_eq!(v["payload"]["userId"], "bob");
        assert!(render(Kind::Saas, "new-message", &msg).is_none());
        // Seed 003's broadcast: the sender's data is the frame.
        let raw = json!({"type": "cursor", "x": 1});
        assert_eq!(render(Kind::Native, "broadcast", &raw).unwrap(), raw.to_string());
    }
}
