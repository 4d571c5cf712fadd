//! The Admin UI namespace `/admin` (`crates/front/src/admin.rs`, SPEC §12) through the real gateway,
//! spoken as the official `@socket.io/admin-ui` speaks it: Engine.IO 4 / Socket.IO 5 over a WebSocket,
//! written by hand (`40/admin,{auth}`, `42/admin,[event, ...args]`, pings `2` answered `3`).
//!
//! What an operator (or an attacker) can see: wrong credentials get `connect_error` `invalid
//! credentials`; after five failures the login limiter refuses even the right password until its
//! back-off has passed; a right login gets `session`, `config` and `server_stats` (one row per node,
//! with this node's figures); production mode (the default) sends server figures only, never a socket
//! or an event; development mode lists the sockets (`all_sockets`, `socket_connected`) without any
//! token, and the UI's `leave` really takes a user's socket out of a chat room, so it can no longer
//! post there; and with two nodes on one Redis, the UI on one node sees both nodes' figures and
//! sockets and its `leave` reaches a socket on the other node.

use std::time::Duration;

mod common;
#[path = "common/gateway.rs"]
mod gateway;

use futures_util::{SinkExt, StreamExt};
use gateway::{Gateway, Ws, WsClient};
use realtime_gateway::model::config::Config;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "s3cret-admin";

/// A gateway with the Admin UI on: the password as a cheap bcrypt hash (cost 4), `mode` as given.
async fn gateway(mode: &str) -> Gateway {
    let mut cfg = Config::default_for_tests();
    cfg.admin_ui_password = Some(bcrypt::hash(PASSWORD, 4).unwrap());
    cfg.admin_ui_mode = mode.into();
    Gateway::start(cfg).await
}

/// An Engine.IO 4 WebSocket session on `/socket.io/`, speaking Socket.IO 5 on one namespace (`/admin`
/// for the UI, `/` for a user's socket).
struct Admin {
    ws: Ws,
    /// What the namespace's packets start with after their type: `/admin,`, or nothing for `/`.
    nsp: &'static str,
}

/// What the server said to the namespace's connect packet.
#[derive(Debug)]
enum Connect {
    Ok(Value),
    Refused(Value),
}

impl Admin {
    /// Opens an Engine.IO session (its open packet read) and connects to `/admin` with `auth`.
    async fn login(gw: &Gateway, auth: Value) -> (Admin, Connect) {
        Admin::connect(gw, "", "/admin,", auth).await
    }

    /// Opens an Engine.IO session with `query` in its URL and connects to the namespace `nsp`.
    async fn connect(gw: &Gateway, query: &str, nsp: &'static str, auth: Value) -> (Admin, Connect) {
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket{query}", gw.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("engine.io websocket");
        let mut a = Admin { ws, nsp };
        let open = a.packet(Duration::from_secs(10)).await.expect("open packet");
        let open: Value = serde_json::from_str(open.strip_prefix('0').expect("open packet `0{...}`")).unwrap();
        assert!(open["sid"].is_string() && open["pingInterval"].is_u64(), "{open}");
        a.send(format!("40{nsp}{auth}")).await;
        loop {
            let p = a.packet(Duration::from_secs(20)).await.expect("an answer to the connect");
            if let Some(body) = p.strip_prefix(&format!("40{nsp}")) {
                return (a, Connect::Ok(serde_json::from_str(body).unwrap()));
            }
            if let Some(body) = p.strip_prefix(&format!("44{nsp}")) {
                return (a, Connect::Refused(serde_json::from_str(body).unwrap()));
            }
        }
    }

    async fn send(&mut self, packet: String) {
        self.ws.send(Message::text(packet)).await.expect("send");
    }

    /// The next Engine.IO packet but pings (answered with a pong); `None` when closed or after `within`.
    async fn packet(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2" => self.send("3".into()).await,
                Ok(Some(Ok(Message::Text(t)))) => return Some(t.as_str().to_string()),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// The next `/admin` event as `(name, args)`; `None` after `within`.
    async fn event(&mut self, within: Duration) -> Option<(String, Vec<Value>)> {
        let deadline = Instant::now() + within;
        loop {
            let p = self.packet(deadline.saturating_duration_since(Instant::now())).await?;
            if let Some(body) = p.strip_prefix(&format!("42{}", self.nsp)) {
                let Value::Array(mut items) = serde_json::from_str(body).expect("event JSON") else { panic!("{p}") };
                let name = items.remove(0).as_str().expect("event name").to_string();
                return Some((name, items));
            }
        }
    }

    /// Reads events until `name` comes (its args), failing after `within`; `seen` gets every event read.
    async fn until(&mut self, name: &str, within: Duration, seen: &mut Vec<(String, Vec<Value>)>) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((n, args)) = self.event(left).await else {
                panic!("no `{name}` within {within:?}; got {:?}", seen.iter().map(|(n, _)| n).collect::<Vec<_>>())
            };
            seen.push((n.clone(), args.clone()));
            if n == name {
                return args;
            }
        }
    }

    /// Sends a UI event, as the UI's `socket.emit(name, ...args)`.
    async fn emit(&mut self, name: &str, args: &[Value]) {
        let mut list = vec![json!(name)];
        list.extend_from_slice(args);
        self.send(format!("42{}{}", self.nsp, Value::Array(list))).await;
    }
}

fn credentials(username: &str, password: &str) -> Value {
    json!({ "username": username, "password": password })
}

/// The value of `realtime_admin_logins_total{outcome="..."}` in `/metrics`.
async fn logins(gw: &Gateway, outcome: &str) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", gw.addr)).await.unwrap().text().await.unwrap();
    let prefix = format!("realtime_admin_logins_total{{outcome=\"{outcome}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

fn refused_with_invalid_credentials(answer: &Connect) {
    match answer {
        Connect::Refused(body) => assert_eq!(body["message"], "invalid credentials", "{body}"),
        Connect::Ok(body) => panic!("logged in: {body}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_with_the_message_the_ui_knows() {
    let gw = gateway("production").await;
    for auth in [
        credentials("admin", "wrong"),
        credentials("root", PASSWORD),
        credentials("admin", ""),
        json!({ "username": "admin" }),
        json!({ "sessionId": "0123456789abcdef0123456789abcdef" }),
        json!({}),
    ] {
        let (_, answer) = Admin::login(&gw, auth.clone()).await;
        refused_with_invalid_credentials(&answer);
    }
    assert_eq!(logins(&gw, "ok").await, 0);
    let (_, answer) = Admin::login(&gw, credentials("admin", PASSWORD)).await;
    assert!(matches!(answer, Connect::Ok(ref b) if b["sid"].is_string()), "{answer:?}");
    assert_eq!(logins(&gw, "ok").await, 1);
    gw.stop().await;
}

/// Five failures are free; then logins from that address and for that username are refused
/// unchecked (the right password too) for a back-off of 1 s that doubles with each further failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_limiter_refuses_even_the_right_password_until_its_back_off_has_passed() {
    let gw = gateway("production").await;
    for _ in 0..5 {
        let (_, answer) = Admin::login(&gw, credentials("admin", "guess")).await;
        refused_with_invalid_credentials(&answer);
    }
    let fifth = Instant::now();
    assert_eq!(logins(&gw, "failed").await, 5);

    let (_, answer) = Admin::login(&gw, credentials("admin", PASSWORD)).await;
    refused_with_invalid_credentials(&answer);
    assert_eq!(logins(&gw, "throttled").await, 1, "the right password, refused unchecked");
    assert_eq!(logins(&gw, "failed").await, 5, "a refusal while backing off is not a new failure");

    // No event says when the back-off ends: try the right password until it gets in.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, answer) = Admin::login(&gw, credentials("admin", PASSWORD)).await;
        if let Connect::Ok(_) = answer {
            break;
        }
        refused_with_invalid_credentials(&answer);
        assert!(Instant::now() < deadline, "still refused 10 s after the fifth failure");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fifth.elapsed() >= Duration::from_millis(900), "in after {:?}, within the back-off", fifth.elapsed());
    assert_eq!(logins(&gw, "ok").await, 1);

    // A success forgets the failures: five more are free again before the limiter refuses.
    for _ in 0..5 {
        refused_with_invalid_credentials(&Admin::login(&gw, credentials("admin", "guess")).await.1);
    }
    let throttled = logins(&gw, "throttled").await;
    refused_with_invalid_credentials(&Admin::login(&gw, credentials("admin", PASSWORD)).await.1);
    assert_eq!(logins(&gw, "throttled").await, throttled + 1);
    gw.stop().await;
}

/// Production mode (the default): a session id to log in again, the features without `ALL_EVENTS`,
/// `server_stats` every 2 s with this node's figures, and nothing about sockets or their events, even
/// while a user connects, joins and posts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_mode_sends_server_figures_and_nothing_about_sockets() {
    let gw = gateway("production").await;
    let node = gw.health().await["nodeId"].as_str().unwrap().to_string();
    let (mut admin, answer) = Admin::login(&gw, credentials("admin", PASSWORD)).await;
    assert!(matches!(answer, Connect::Ok(_)), "{answer:?}");
    let mut seen = Vec::new();
    let session = admin.until("session", Duration::from_secs(5), &mut seen).await;
    let session = session[0].as_str().expect("a session id").to_string();
    let config = admin.until("config", Duration::from_secs(5), &mut seen).await;
    let features: Vec<&str> =
        config[0]["supportedFeatures"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for f in ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "AGGREGATED_EVENTS"] {
        assert!(features.contains(&f), "{f} in {features:?}");
    }
    assert!(!features.contains(&"ALL_EVENTS"), "production mode relays no events: {features:?}");

    let stats = admin.until("server_stats", Duration::from_secs(5), &mut seen).await;
    assert_eq!(stats[0]["serverId"], node.as_str(), "{}", stats[0]);
    assert!(stats[0]["uptime"].is_number() && stats[0]["pid"].is_u64(), "{}", stats[0]);

    // A user arrives, joins and posts: the figures show it, nothing else does.
    let mut user = WsClient::connect(&gw, "alice").await;
    user.join("lobby").await;
    let ack = user.request("message", json!({ "roomId": "lobby", "content": "hello" })).await;
    assert_eq!(ack["success"], true);
    let ws_count = |stats: &[Value]| {
        stats[0]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "/ws")
            .map(|n| n["socketsCount"].clone())
    };
    let raw_connections = |stats: &[Value]| -> u64 {
        let events = stats[0]["aggregatedEvents"].as_array().unwrap();
        events.iter().filter(|e| e["type"] == "rawConnection").filter_map(|e| e["count"].as_u64()).sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut connections = 0;
    loop {
        let stats = admin.until("server_stats", Duration::from_secs(5), &mut seen).await;
        connections += raw_connections(&stats);
        if ws_count(&stats) == Some(json!(1)) {
            break;
        }
        assert!(Instant::now() < deadline, "server_stats never counted the /ws client");
    }
    // Two more rounds: whatever the relay would have sent about the user has been sent by then.
    for _ in 0..2 {
        connections += raw_connections(&admin.until("server_stats", Duration::from_secs(5), &mut seen).await);
    }
    assert_eq!(connections, 1, "the user's connection, in aggregatedEvents");
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.iter().all(|n| ["session", "config", "server_stats"].contains(n)),
        "production mode sent more than server figures: {names:?}"
    );

    // The session id logs in again without the password.
    let (_, again) = Admin::login(&gw, json!({ "sessionId": session })).await;
    assert!(matches!(again, Connect::Ok(_)), "{again:?}");
    drop(user);
    gw.stop().await;
}

/// Development mode lists the sockets (never a token), and the UI's actions reach them: a `leave` of
/// a user's `/ws` connection from a chat room takes it out, so the user can no longer post there and
/// the room's broadcasts no longer reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_mode_lists_sockets_without_tokens_and_an_admin_leave_stops_posting() {
    let gw = gateway("development").await;
    let alice_token = gw.token("alice", "user");
    let mut alice = WsClient::connect(&gw, "alice").await;
    alice.join("lobby").await;
    // A Socket.IO user with the token in the handshake's query, which the UI lists.
    let carol_token = gw.token("carol", "user");
    let (mut carol, answer) = Admin::connect(&gw, &format!("&token={carol_token}"), "", json!({})).await;
    let Connect::Ok(carol_sid) = answer else { panic!("carol refused: {answer:?}") };
    carol.until("connected", Duration::from_secs(5), &mut Vec::new()).await;

    let (mut admin, answer) = Admin::login(&gw, credentials("admin", PASSWORD)).await;
    assert!(matches!(answer, Connect::Ok(_)), "{answer:?}");
    let mut seen = Vec::new();
    let config = admin.until("config", Duration::from_secs(5), &mut seen).await;
    assert!(config[0]["supportedFeatures"].as_array().unwrap().contains(&json!("ALL_EVENTS")), "{}", config[0]);
    let sockets = admin.until("all_sockets", Duration::from_secs(5), &mut seen).await;
    let listed = sockets[0].as_array().expect("a list of sockets");
    let a = listed.iter().find(|s| s["id"] == alice.id.as_str()).unwrap_or_else(|| panic!("alice in {listed:?}"));
    assert_eq!(a["nsp"], "/ws");
    assert_eq!(a["data"]["userId"], "alice");
    assert!(a["rooms"].as_array().unwrap().contains(&json!("r:lobby")), "{a}");
    let c = listed.iter().find(|s| s["id"] == carol_sid["sid"]).unwrap_or_else(|| panic!("carol in {listed:?}"));
    assert_eq!((&c["nsp"], &c["data"]["userId"]), (&json!("/"), &json!("carol")), "{c}");
    let shown = c["handshake"]["query"]["token"].as_str().unwrap_or_default();
    assert!(shown.starts_with("[redacted"), "the query's token is listed, redacted: {c}");
    let text = sockets[0].to_string();
    assert!(!text.contains(&alice_token) && !text.contains(&carol_token), "a user's token is listed: {text}");
    assert!(!text.contains("eyJ"), "a JWT is listed: {text}");

    // A new socket is announced, without its token either.
    let mut bob = WsClient::connect(&gw, "bob").await;
    let bob_token = gw.token("bob", "user");
    let connected = loop {
        let args = admin.until("socket_connected", Duration::from_secs(5), &mut seen).await;
        if args[0]["id"] == bob.id.as_str() {
            break args;
        }
    };
    assert_eq!(connected[0]["data"]["userId"], "bob");
    let text = Value::Array(connected.clone()).to_string();
    assert!(!text.contains(&bob_token) && !text.contains("eyJ"), "a JWT is relayed: {text}");
    bob.join("lobby").await;

    // The UI's `leave` of alice's connection from the chat room `lobby` (`r:lobby`).
    admin.emit("leave", &[json!("/ws"), json!("r:lobby"), json!(alice.id)]).await;
    let left = loop {
        let args = admin.until("room_left", Duration::from_secs(5), &mut seen).await;
        if args[1] == "r:lobby" && args[2] == alice.id.as_str() {
            break args;
        }
    };
    assert_eq!(left[0], "/ws");
    let ack = alice.request("message", json!({ "roomId": "lobby", "content": "still here?" })).await;
    assert_eq!(ack["code"], "NOT_IN_ROOM", "alice may no longer post to lobby: {ack}");
    let ack = bob.request("message", json!({ "roomId": "lobby", "content": "bye alice" })).await;
    assert_eq!(ack["success"], true, "{ack}");
    let got = bob.wait_for(Duration::from_secs(5), |f| f["type"] == "new-message").await;
    assert_eq!(got["data"]["content"], "bye alice");
    // The broadcast reached bob; alice, out of the room, gets nothing (the next frame she reads is
    // the answer to a ping sent after it).
    alice.send(json!({ "type": "ping", "requestId": "p" })).await;
    let next = alice.wait_for(Duration::from_secs(5), |f| f["type"] == "pong" || f["type"] == "new-message").await;
    assert_eq!(next["type"], "pong", "alice got {next}");
    // She may join again: the leave was the UI's action, not a ban.
    alice.join("lobby").await;
    let ack = alice.request("message", json!({ "roomId": "lobby", "content": "back" })).await;
    assert_eq!(ack["success"], true, "{ack}");
    gw.stop().await;
}

/// Two nodes on one Redis (SPEC §12, cluster-wide): the UI logged in on one node gets each node's own
/// `server_stats`, lists the sockets of the other node, and its `leave` reaches a socket there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_on_one_node_sees_and_acts_on_the_sockets_of_another() {
    let redis = common::RedisServer::start();
    let node = |id: &str| {
        let mut cfg = Config::default_for_tests();
        cfg.admin_ui_password = Some(bcrypt::hash(PASSWORD, 4).unwrap());
        cfg.admin_ui_mode = "development".into();
        cfg.redis_url = Some(redis.url());
        cfg.node_id = Some(id.into());
        cfg
    };
    let a = Gateway::start(node("node-a")).await;
    let b = Gateway::start(node("node-b")).await;
    let mut alice = WsClient::connect(&b, "alice").await;
    alice.join("lobby").await;

    // The nodes find each other on the bus by themselves: log in until node b's socket is listed.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut admin, mut seen) = loop {
        let (mut admin, answer) = Admin::login(&a, credentials("admin", PASSWORD)).await;
        assert!(matches!(answer, Connect::Ok(_)), "{answer:?}");
        let mut seen = Vec::new();
        let sockets = admin.until("all_sockets", Duration::from_secs(5), &mut seen).await;
        if sockets[0].as_array().unwrap().iter().any(|s| s["id"] == alice.id.as_str()) {
            break (admin, seen);
        }
        assert!(Instant::now() < deadline, "node b's socket never listed on node a: {}", sockets[0]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut servers = std::collections::BTreeSet::new();
    while servers.len() < 2 {
        let stats = admin.until("server_stats", Duration::from_secs(10), &mut seen).await;
        servers.insert(stats[0]["serverId"].as_str().unwrap().to_string());
    }
    assert_eq!(servers.into_iter().collect::<Vec<_>>(), ["node-a", "node-b"], "one row per node");

    admin.emit("leave", &[json!("/ws"), json!("r:lobby"), json!(alice.id)]).await;
    loop {
        let args = admin.until("room_left", Duration::from_secs(10), &mut seen).await;
        if args[1] == "r:lobby" && args[2] == alice.id.as_str() {
            break;
        }
    }
    let ack = alice.request("message", json!({ "roomId": "lobby", "content": "still here?" })).await;
    assert_eq!(ack["code"], "NOT_IN_ROOM", "the leave reached node b: {ack}");
    drop((alice, admin));
    b.stop().await;
    a.stop().await;
}
