//! The whole gateway in-process on a free loopback port (as `tests/http.rs` starts it), and a plain
//! `/ws` client over a real WebSocket (tokio-tungstenite), for the tests that talk to it as clients do.
//! Included with `#[path = "common/gateway.rs"] mod gateway;` by the test files that use it.
#![allow(dead_code)] // each test binary uses its own part of this

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use realtime_gateway::app::auth::{Authenticator, User};
use realtime_gateway::model::config::Config;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "integration-secret";

/// A running gateway; `stop` shuts it down (a test that panics leaves it to its runtime's end).
pub struct Gateway {
    pub addr: SocketAddr,
    auth: Arc<Authenticator>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    http: reqwest::Client,
}

impl Gateway {
    pub async fn start(mut cfg: Config) -> Gateway {
        cfg.jwt_secret = Some(SECRET.into());
        let gw = realtime_gateway::startup(cfg).await.expect("startup");
        let addr = gw.local_addr();
        let auth = gw.state.auth.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(async move {
            let _ = rx.await;
        }));
        Gateway { addr, auth, stop: Some(tx), task: Some(task), http: reqwest::Client::new() }
    }

    pub fn token(&self, user_id: &str, role: &str) -> String {
        let user = User { user_id: user_id.into(), email: None, name: None, role: role.into() };
        self.auth.mint(&user, Duration::from_secs(600)).expect("mint")
    }

    pub fn ws_url(&self, user_id: &str) -> String {
        format!("ws://{}/ws?token={}", self.addr, self.token(user_id, "user"))
    }

    /// `GET /health`.
    pub async fn health(&self) -> Value {
        self.http.get(format!("http://{}/health", self.addr)).send().await.unwrap().json().await.unwrap()
    }

    /// `GET /api/stats` as an admin.
    pub async fn stats(&self) -> Value {
        let req = self.http.get(format!("http://{}/api/stats", self.addr)).bearer_auth(self.token("ops", "admin"));
        req.send().await.unwrap().json().await.unwrap()
    }

    /// Polls `/health` (no event tells when a departure is done) until `connections` is `n`.
    pub async fn wait_connections(&self, n: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = self.health().await["connections"].as_u64();
            if now == Some(n) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "/health connections stayed {now:?}, expected {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(task) = self.task.take() {
            let res = tokio::time::timeout(Duration::from_secs(10), task).await;
            assert!(matches!(res, Ok(Ok(Ok(())))), "clean shutdown within 10 s");
        }
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One `/ws` connection: frames in arrival order, requests answered by their `requestId`.
pub struct WsClient {
    pub ws: Ws,
    /// `connectionId` of the `connected` frame.
    pub id: String,
    /// Frames read while waiting for something else, oldest first.
    pub backlog: VecDeque<Value>,
    next_request: u64,
}

impl WsClient {
    /// Connects with `user_id`'s token in the query and reads the `connected` frame.
    pub async fn connect(gw: &Gateway, user_id: &str) -> WsClient {
        let (ws, _) = tokio_tungstenite::connect_async(gw.ws_url(user_id)).await.expect("ws connect");
        WsClient::greeted(ws).await
    }

    /// Reads the `connected` frame of a fresh connection.
    pub async fn greeted(ws: Ws) -> WsClient {
        let mut c = WsClient { ws, id: String::new(), backlog: VecDeque::new(), next_request: 0 };
        let hello = c.next_frame(Duration::from_secs(10)).await.expect("a connected frame");
        assert_eq!(hello["type"], "connected", "{hello}");
        c.id = hello["connectionId"].as_str().expect("connectionId").to_string();
        c
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).await.expect("ws send");
    }

    /// The next JSON frame from the socket (not the backlog); `None` when closed or after `within`.
    pub async fn read(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(t.as_str()).expect("JSON frame")),
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => return None,
                Ok(Some(Ok(_))) => continue, // pings (answered by the library), pongs
            }
        }
    }

    /// The next frame, from the backlog first.
    pub async fn next_frame(&mut self, within: Duration) -> Option<Value> {
        match self.backlog.pop_front() {
            Some(v) => Some(v),
            None => self.read(within).await,
        }
    }

    /// The first frame (backlog first) that `pred` accepts; the others stay in the backlog, in order.
    pub async fn wait_for(&mut self, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).unwrap();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(v) = self.read(left).await else {
                panic!("no awaited frame within {within:?} on {}; backlog: {:?}", self.id, self.backlog)
            };
            if pred(&v) {
                return v;
            }
            self.backlog.push_back(v);
        }
    }

    /// Sends `{type, data, requestId}` and returns the `data` of its `ack`.
    pub async fn request(&mut self, kind: &str, data: Value) -> Value {
        self.next_request += 1;
        let rid = format!("q{}", self.next_request);
        self.send(json!({ "type": kind, "data": data, "requestId": rid })).await;
        let ack =
            self.wait_for(Duration::from_secs(10), |v| v["type"] == "ack" && v["requestId"] == rid.as_str()).await;
        ack["data"].clone()
    }

    /// Joins a room; panics unless the ack says success.
    pub async fn join(&mut self, room: &str) -> Value {
        let ack = self.request("join-room", json!(room)).await;
        assert_eq!(ack["success"], true, "join-room {room}: {ack}");
        ack
    }
}
