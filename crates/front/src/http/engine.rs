//! The guard in front of socketioxide on `/socket.io/`: private Engine.IO session ids and the
//! handshake budget (SPEC §2 and §7).
//!
//! **Private session ids.** socketioxide uses the Engine.IO session id as the socket's id, the public
//! `sessionId` (`connected`, `socketId` in webhooks and the event proxy, the Admin UI). Whoever knows
//! a polling session's engine id can post packets as its owner or steal its long poll. So the open
//! packet of every polling handshake leaves with a fresh random *private* id (same length and
//! alphabet as the engine's, so EIO3's length prefix stays valid) in place of the engine id, and
//! every later request (polling GET/POST, the WebSocket upgrade) must name a private id: it is
//! rewritten to the engine id, and any other `sid` is refused as engine.io refuses an unknown
//! session. A WebSocket opened directly carries no `sid` in any URL: engineioxide answers a polling
//! request for a WebSocket session with "Bad request" and ignores a second WebSocket for it, so its
//! open packet (inside the WebSocket) is left alone, and the public id never names a usable session.
//!
//! **Handshake budget.** Every handshake (a `GET` without `sid`, polling or WebSocket) takes a place
//! in the per-address budget (`CONNECT_RATE_PER_IP`), and one in the sessions not yet connected to
//! a namespace ([`MAX_PENDING`]); socketioxide drops a session without a namespace after 10 s
//! (`connect_timeout`, set in `startup`). The namespace CONNECT of a counted handshake is not
//! counted again. A handshake over the address's budget still opens a session while few such
//! sessions wait ([`MAX_OVER_BUDGET`]): its CONNECT then gets the readable `connect_error`
//! "Too many connections from this address"; beyond that the handshake itself is refused with HTTP
//! 429, so a flood of handshakes costs the node no session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use rtg_app::state::AppState;

/// Sessions that have not connected to a namespace yet, on this node; more handshakes get 503.
pub const MAX_PENDING: usize = 10_000;
/// Of those, sessions opened over their address's budget (they only wait for their refusal).
pub const MAX_OVER_BUDGET: usize = 64;
/// Polling sessions with a private id on this node; more polling handshakes get 503.
pub const MAX_PRIVATE_IDS: usize = 1_000_000;

/// The guard's shared part: private id → engine id, and the pending counts.
pub struct EngineGuard {
    state: AppState,
    ids: Mutex<HashMap<String, String>>,
    pending: AtomicUsize,
    over_budget: AtomicUsize,
}

impl EngineGuard {
    pub fn new(state: AppState) -> Arc<Self> {
        Arc::new(EngineGuard {
            state,
            ids: Mutex::new(HashMap::new()),
            pending: AtomicUsize::new(0),
            over_budget: AtomicUsize::new(0),
        })
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_pending(&self) {
        self.state.metrics.handshakes_pending.set(self.pending.load(Ordering::Relaxed) as f64);
    }
}

/// Travels with an Engine.IO session (engineioxide keeps the handshake's request head for the
/// session's life): dropped with the session, it frees the session's pending place and private id,
/// whatever ended the session.
pub struct Handshake {
    guard: Arc<EngineGuard>,
    private: OnceLock<String>,
    /// Connected to a namespace: the pending place is free.
    connected: AtomicBool,
    /// The handshake took a place in the address's budget, which the first CONNECT uses.
    counted: AtomicBool,
    over_budget: bool,
}

impl Handshake {
    /// At the first namespace CONNECT: frees the pending place. True when the handshake already
    /// counted for the address's budget (the CONNECT must not count again).
    pub fn connecting(&self) -> bool {
        if !self.connected.swap(true, Ordering::AcqRel) {
            self.release();
        }
        self.counted.swap(false, Ordering::AcqRel)
    }

    fn release(&self) {
        self.guard.pending.fetch_sub(1, Ordering::AcqRel);
        if self.over_budget {
            self.guard.over_budget.fetch_sub(1, Ordering::AcqRel);
        }
        self.guard.set_pending();
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        if !self.connected.load(Ordering::Acquire) {
            self.release();
        }
        if let Some(p) = self.private.take() {
            self.guard.ids().remove(&p);
        }
    }
}

/// The engine.io refusal of an unknown session.
fn unknown_session() -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"code":1,"message":"Session ID unknown"}"#,
    )
        .into_response()
}

fn refused(status: StatusCode, message: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], serde_json::json!({ "message": message }).to_string())
        .into_response()
}

/// A fresh private id: 96 random bits as 16 url-safe base64 characters, like engineioxide's.
fn private_id() -> String {
    use base64::Engine as _;
    use rand::Rng;
    let bytes: [u8; 12] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|p| p.strip_prefix(key)?.strip_prefix('='))
}

/// The middleware (see the module documentation); other paths pass through.
pub async fn guard(State(guard): State<Arc<EngineGuard>>, mut req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with(crate::http::compact::ENGINE_IO_PATH) {
        return next.run(req).await;
    }
    let query = req.uri().query().unwrap_or("").to_string();
    if let Some(private) = query_value(&query, "sid") {
        let Some(engine) = guard.ids().get(private).cloned() else {
            return unknown_session();
        };
        let rewritten: Vec<String> = query
            .split('&')
            .map(|p| if p.starts_with("sid=") { format!("sid={engine}") } else { p.to_string() })
            .collect();
        let uri = format!("{}?{}", req.uri().path(), rewritten.join("&"));
        match Uri::try_from(uri) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return unknown_session(),
        }
        return next.run(req).await;
    }
    if req.method() != Method::GET {
        return next.run(req).await;
    }
    // A handshake.
    let state = &guard.state;
    state.metrics.handshake();
    let polling = query_value(&query, "transport") == Some("polling");
    if guard.pending.load(Ordering::Acquire) >= MAX_PENDING || (polling && guard.ids().len() >= MAX_PRIVATE_IDS) {
        state.metrics.handshake_refused();
        return refused(StatusCode::SERVICE_UNAVAILABLE, "Too many connections");
    }
    let (parts, body) = req.into_parts();
    let ip = crate::http::client_ip(&parts, state.config.trust_proxy_headers);
    let within = match (&state.connect_limiter, ip) {
        (Some(limiter), Some(ip)) => limiter.check_key(&ip).is_ok(),
        _ => true,
    };
    if !within && guard.over_budget.fetch_add(1, Ordering::AcqRel) >= MAX_OVER_BUDGET {
        guard.over_budget.fetch_sub(1, Ordering::AcqRel);
        state.metrics.handshake_refused();
        return refused(StatusCode::TOO_MANY_REQUESTS, "Too many connections from this address");
    }
    guard.pending.fetch_add(1, Ordering::AcqRel);
    guard.set_pending();
    let handshake = Arc::new(Handshake {
        guard: guard.clone(),
        private: OnceLock::new(),
        connected: AtomicBool::new(false),
        counted: AtomicBool::new(within),
        over_budget: !within,
    });
    let mut req = Request::from_parts(parts, body);
    req.extensions_mut().insert(handshake.clone());
    let res = next.run(req).await;
    if !polling || res.status() != StatusCode::OK {
        return res;
    }
    // The polling open packet: `0{"sid":"<engine id>",...}` (EIO3: `<length>:0{...}`).
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    const KEY: &str = "\"sid\":\"";
    let Some(at) = text.find(KEY).map(|i| i + KEY.len()) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let Some(engine) = text.get(at..).and_then(|rest| rest.split('"').next()).map(str::to_string) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let private = private_id();
    if engine.len() != private.len() {
        // Not engineioxide's id format: never hand out the engine id.
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    text.replace_range(at..at + engine.len(), &private);
    guard.ids().insert(private.clone(), engine);
    let _ = handshake.private.set(private);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ids_look_like_engine_ids() {
        let id = private_id();
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(id, private_id());
    }

    #[test]
    fn query_values_are_found_by_exact_key() {
        assert_eq!(query_value("EIO=4&transport=polling&sid=abc", "sid"), Some("abc"));
        assert_eq!(query_value("EIO=4&xsid=abc", "sid"), None);
    }
}
