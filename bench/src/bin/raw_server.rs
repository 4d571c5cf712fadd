//! rtg-raw-server: the physical limit of scenario S2. A bare tokio-tungstenite WebSocket server on one
//! current-thread runtime that speaks just enough Engine.IO 4 / Socket.IO 5 for the benchmark (open,
//! `40`, pings, `join-room`, `message`, `list_channels`) and sends the same frames as the gateway:
//! each `message` becomes one `42["new-message",{Message}]` frame, serialised once and handed to every
//! member of the room (the frame's bytes are shared, not copied); each connection's task writes all
//! that is queued for it with one flush per wake-up. No auth, no history, no limits.
//!
//!   rtg-raw-server --port 9200

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 9200)]
    port: u16,
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
    #[arg(long, default_value_t = 25000)]
    ping_interval_ms: u64,
}

#[derive(Default)]
struct Hub {
    rooms: HashMap<String, HashMap<u64, mpsc::UnboundedSender<Message>>>,
    next_msg: u64,
}

type HubRef = Rc<RefCell<Hub>>;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let addr: SocketAddr = format!("{}:{}", cli.host, cli.port).parse()?;
        let listener = TcpListener::bind(addr).await?;
        eprintln!("raw server listening on {}", listener.local_addr()?);
        let hub: HubRef = Rc::default();
        let cfg = WebSocketConfig::default().read_buffer_size(cli.read_buffer);
        let ping = Duration::from_millis(cli.ping_interval_ms);
        let mut next_id = 0u64;
        loop {
            tokio::select! {
                acc = listener.accept() => {
                    let Ok((tcp, _)) = acc else { continue };
                    next_id += 1;
                    tokio::task::spawn_local(connection(tcp, next_id, hub.clone(), cfg, ping));
                }
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        Ok::<_, anyhow::Error>(())
    })
}

async fn connection(tcp: TcpStream, id: u64, hub: HubRef, cfg: WebSocketConfig, ping: Duration) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(cfg)).await else { return };
    let sid = format!("raw{id:013}");
    let open = format!(
        "0{{\"sid\":\"{sid}\",\"upgrades\":[],\"pingInterval\":{},\"pingTimeout\":20000,\"maxPayload\":1000000}}",
        ping.as_millis()
    );
    if ws.send(Message::text(open)).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let user = json!({ "userId": format!("raw{id}"), "email": null, "name": null, "role": "user" });
    let mut joined: Vec<String> = Vec::new();
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + ping, ping);
    'conn: loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { break };
                if ws.feed(m).await.is_err() { break }
                // Everything queued since the last wake-up leaves with one flush, however much it is
                // (the write buffer is tungstenite's default 128 KiB): one write per wake-up, so the
                // cost per delivery falls as the rate rises.
                while let Ok(m) = rx.try_recv() {
                    if ws.feed(m).await.is_err() { break 'conn }
                }
                if ws.flush().await.is_err() { break }
            }
            f = ws.next() => {
                let t = match f {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let out = handle(t.as_str(), &sid, &user, &hub, &tx, &mut joined);
                for m in out {
                    if ws.feed(Message::text(m)).await.is_err() { break 'conn }
                }
                if ws.flush().await.is_err() { break }
                if t.as_str().starts_with("41") { break }
            }
            _ = pings.tick() => {
                if ws.send(Message::text("2")).await.is_err() { break }
            }
        }
    }
    let mut h = hub.borrow_mut();
    for r in joined {
        if let Some(m) = h.rooms.get_mut(&r) {
            m.remove(&id_of(&sid));
        }
    }
}

fn id_of(sid: &str) -> u64 {
    sid[3..].parse().unwrap_or(0)
}

/// One client packet in, the frames for this client out (broadcasts go through the members' channels).
fn handle(
    t: &str,
    sid: &str,
    user: &Value,
    hub: &HubRef,
    tx: &mpsc::UnboundedSender<Message>,
    joined: &mut Vec<String>,
) -> Vec<String> {
    if t.starts_with("40") {
        let hello = json!({ "sessionId": sid, "userId": user["userId"], "user": user,
            "authorizedChannels": [], "serverTime": now_ms() });
        return vec![format!("40{{\"sid\":\"{sid}\"}}"), format!("42[\"connected\",{hello}]")];
    }
    if t == "2" {
        return vec!["3".into()];
    }
    let Some(rest) = t.strip_prefix("42") else { return vec![] };
    let n = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack: Option<u64> = rest[..n].parse().ok();
    let Ok(args) = serde_json::from_str::<Vec<Value>>(&rest[n..]) else { return vec![] };
    let name = args.first().and_then(Value::as_str).unwrap_or("");
    let answer = match name {
        "join-room" => {
            let room = match args.get(1) {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v["roomId"].as_str().unwrap_or("").to_string(),
                None => String::new(),
            };
            hub.borrow_mut().rooms.entry(room.clone()).or_default().insert(id_of(sid), tx.clone());
            if !joined.contains(&room) {
                joined.push(room.clone());
            }
            json!({ "success": true, "room": { "id": room, "name": room, "type": "public" },
                "members": [], "recentMessages": [] })
        }
        "message" => {
            let req = args.get(1).cloned().unwrap_or(Value::Null);
            let room = req["roomId"].as_str().unwrap_or("").to_string();
            let mut h = hub.borrow_mut();
            h.next_msg += 1;
            let ts = now_ms();
            let msg_id = format!("m{ts:011x}{:012x}", h.next_msg);
            let msg = json!({ "id": msg_id, "roomId": room, "userId": user["userId"], "user": user,
                "content": req["content"], "type": "text", "replyTo": null, "timestamp": ts,
                "edited": false, "deleted": false });
            let frame = Message::text(format!("42[\"new-message\",{msg}]"));
            if let Some(members) = h.rooms.get(&room) {
                for m in members.values() {
                    let _ = m.send(frame.clone());
                }
            }
            json!({ "success": true, "messageId": msg_id, "timestamp": ts })
        }
        "list_channels" => json!({ "success": true, "channels": ["announcements", "apps:*", "users:*",
            "database:*", "deployments:*", "storage:*", format!("user:{}", user["userId"].as_str().unwrap_or(""))],
            "subscribed": [] }),
        _ => json!({ "success": false, "error": "Unknown event", "code": "NOT_FOUND" }),
    };
    match ack {
        Some(a) => vec![format!("43{a}[{answer}]")],
        None => vec![],
    }
}
