//! Raw Engine.IO 4 / Socket.IO 5 over WebSocket: connecting, tokens, and the per-client task that
//! answers pings and records what arrives.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Which protocol the clients speak: Socket.IO over `/socket.io/`, or the gateway's plain `/ws`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Proto {
    Sio,
    Ws,
}

static PROTO: OnceLock<Proto> = OnceLock::new();

pub fn set_proto(p: Proto) {
    let _ = PROTO.set(p);
}

pub fn proto() -> Proto {
    *PROTO.get().unwrap_or(&Proto::Sio)
}

/// The frame that emits `name` with the JSON `arg` (and an ack / request id when given).
pub fn emit_frame(name: &str, arg: Option<&str>, id: Option<u64>) -> String {
    match (proto(), arg, id) {
        (Proto::Sio, Some(a), Some(id)) => format!("42{id}[\"{name}\",{a}]"),
        (Proto::Sio, Some(a), None) => format!("42[\"{name}\",{a}]"),
        (Proto::Sio, None, Some(id)) => format!("42{id}[\"{name}\"]"),
        (Proto::Sio, None, None) => format!("42[\"{name}\"]"),
        (Proto::Ws, a, id) => {
            let mut f = format!("{{\"type\":\"{name}\"");
            if let Some(a) = a {
                f.push_str(&format!(",\"data\":{a}"));
            }
            if let Some(id) = id {
                f.push_str(&format!(",\"requestId\":{id}"));
            }
            f.push('}');
            f
        }
    }
}

static T0: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the start of this process: the clock of every timestamp we send and check.
pub fn now_us() -> u64 {
    T0.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// HS256 tokens, one per client (`sub` unique), expiring in an hour.
pub fn tokens(secret: &str, prefix: &str, n: usize, users: usize) -> Vec<String> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: String,
        role: &'a str,
        exp: u64,
        iat: u64,
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    (0..n)
        .map(|i| {
            let user = if users == 0 { i } else { i % users };
            let claims = Claims { sub: format!("{prefix}{user}"), role: "user", exp: now + 3600, iat: now };
            jsonwebtoken::encode(&header, &claims, &key).expect("jwt encode")
        })
        .collect()
}

/// Where clients connect from: 127.0.0.<first..=last>, round robin, so that 10k sockets do not run
/// out of ephemeral ports on one address pair.
#[derive(Clone, Copy)]
pub struct Sources {
    pub first: u8,
    pub last: u8,
}

impl Sources {
    pub fn pick(&self, i: usize) -> Ipv4Addr {
        let n = (self.last - self.first + 1) as usize;
        Ipv4Addr::new(127, 0, 0, self.first + (i % n) as u8)
    }
}

pub fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// Reads the next text frame (answering nothing: setup only).
async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(c))) => bail!("closed by server: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection closed"),
        }
    }
}

/// TCP connect from `src`, WebSocket upgrade, Engine.IO open, Socket.IO connect with `auth.token`;
/// returns once the server's `40{"sid":...}` and then its `connected` event arrived. (Waiting for
/// `connected` matters: socketioxide sends `40` before it runs the connect handler, so an event sent
/// on `40` alone can arrive before the gateway's handlers are registered, and is dropped.)
pub async fn open(server: SocketAddr, src: Ipv4Addr, token: &str, cfg: WebSocketConfig) -> anyhow::Result<Ws> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src.into(), 0)).context("bind")?;
    let tcp = sock.connect(server).await.context("connect")?;
    tcp.set_nodelay(true)?;
    if proto() == Proto::Ws {
        let url = format!("ws://{server}/ws?token={token}");
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(cfg)).await.context("upgrade")?;
        let hello = next_text(&mut ws).await?;
        if !hello.contains("\"type\":\"connected\"") {
            bail!("expected the connected frame, got {hello:.200}");
        }
        return Ok(ws);
    }
    let url = format!("ws://{server}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(cfg)).await.context("upgrade")?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        bail!("expected the Engine.IO open packet, got {open:.80}");
    }
    ws.send(Message::text(format!("40{{\"token\":\"{token}\"}}"))).await?;
    loop {
        let t = next_text(&mut ws).await?;
        if t == "2" {
            ws.send(Message::text("3")).await?;
        } else if t.starts_with("42[\"connected\"") {
            return Ok(ws);
        } else if t.starts_with("44") {
            bail!("connect_error {t:.200}");
        }
    }
}

/// Sends `42<id>[name, arg]` and waits (bounded) for `43<id>[...]`; other frames are skipped. Setup
/// only (joins): the scenario's own traffic goes through [`run_client`].
pub async fn call(ws: &mut Ws, id: u64, name: &str, arg: &str, limit: Duration) -> anyhow::Result<String> {
    ws.send(Message::text(emit_frame(name, Some(arg), Some(id)))).await?;
    let want = match proto() {
        Proto::Sio => format!("43{id}["),
        Proto::Ws => format!("{{\"type\":\"ack\",\"requestId\":{id},"),
    };
    tokio::time::timeout(limit, async {
        loop {
            let t = next_text(ws).await?;
            if t == "2" {
                ws.send(Message::text("3")).await?;
            } else if t.starts_with(&want) {
                return Ok(t);
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no ack to {name} within {limit:?}"))?
}

/// What one rate step collected.
pub struct Step {
    pub hist: Histogram<u64>,
    pub received: u64,
    pub acks_ok: u64,
    pub acks_err: u64,
}

impl Step {
    pub fn new() -> Self {
        Step { hist: Histogram::new_with_bounds(1, 120_000_000, 3).unwrap(), received: 0, acks_ok: 0, acks_err: 0 }
    }
}

/// State shared by every client task (one thread: Rc/RefCell, never held across an await).
#[derive(Default)]
pub struct Shared {
    pub steps: Vec<Step>,
    /// ack id -> (scheduled send time in µs, step, record its latency?)
    pub pending: HashMap<u64, (u64, usize, bool)>,
    pub closed: u64,
    pub pongs: u64,
    /// Deliveries that could not be attributed to a step (should stay 0).
    pub stray: u64,
}

pub type SharedRef = Rc<RefCell<Shared>>;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn digits(b: &[u8]) -> (u64, usize) {
    let mut v = 0u64;
    let mut n = 0;
    while n < b.len() && b[n].is_ascii_digit() {
        v = v * 10 + u64::from(b[n] - b'0');
        n += 1;
    }
    (v, n)
}

/// The 64-byte content of a fan-out message: step, scheduled send time, sequence, padding.
pub fn content(step: usize, t_us: u64, seq: u64) -> String {
    let mut s = format!("s={step:04};t={t_us:013};i={seq:09};");
    while s.len() < 64 {
        s.push('x');
    }
    s
}

/// `42["new-message",{... "content":"s=SSSS;t=TTTT...` -> latency into that step.
fn record_delivery(st: &SharedRef, b: &[u8], now: u64) {
    const KEY: &[u8] = b"\"content\":\"s=";
    let Some(p) = find(b, KEY) else {
        st.borrow_mut().stray += 1;
        return;
    };
    let rest = &b[p + KEY.len()..];
    let (step, n) = digits(rest);
    let rest = &rest[n..];
    if !rest.starts_with(b";t=") {
        st.borrow_mut().stray += 1;
        return;
    }
    let (t, _) = digits(&rest[3..]);
    let mut s = st.borrow_mut();
    match s.steps.get_mut(step as usize) {
        Some(step) => {
            step.received += 1;
            let _ = step.hist.record(now.saturating_sub(t).max(1));
        }
        None => s.stray += 1,
    }
}

/// `43<id>[...]` (or a `/ws` answer with `"requestId":<id>`) -> an answered ack; its latency is
/// recorded when it was a timed one.
fn record_ack(st: &SharedRef, b: &[u8], now: u64) {
    let (id, ok) = if b.starts_with(b"43") {
        let (id, n) = digits(&b[2..]);
        (id, find(&b[2 + n..], b"\"success\":false").is_none())
    } else {
        const KEY: &[u8] = b"\"requestId\":";
        let Some(p) = find(b, KEY) else { return };
        (
            digits(&b[p + KEY.len()..]).0,
            find(b, b"\"success\":false").is_none() && !b.starts_with(b"{\"type\":\"error\""),
        )
    };
    let mut s = st.borrow_mut();
    if let Some((t, step, timed)) = s.pending.remove(&id) {
        if let Some(step) = s.steps.get_mut(step) {
            if ok {
                step.acks_ok += 1;
            } else {
                step.acks_err += 1;
            }
            if timed {
                let _ = step.hist.record(now.saturating_sub(t).max(1));
            }
        }
    }
}

/// The life of one connected client: answer `2` with `3`, record deliveries and acks, send what the
/// scheduler hands it. Ends when the server closes, on an error, or when `out` is dropped.
pub async fn run_client(mut ws: Ws, mut out: mpsc::UnboundedReceiver<String>, st: SharedRef) {
    loop {
        tokio::select! {
            biased;
            cmd = out.recv() => match cmd {
                Some(text) => {
                    if ws.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                None => {
                    let _ = ws.close(None).await;
                    return;
                }
            },
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    let b = t.as_bytes();
                    if b == b"2" {
                        st.borrow_mut().pongs += 1;
                        if ws.send(Message::text("3")).await.is_err() {
                            break;
                        }
                    } else if b.starts_with(b"42[\"new-message\"")
                        || b.starts_with(b"{\"type\":\"new-message\"")
                        || b.starts_with(b"42[\"event\"")
                    {
                        record_delivery(&st, b, now_us());
                    } else if b.starts_with(b"43") || (b.starts_with(b"{") && find(b, b"\"requestId\":").is_some()) {
                        record_ack(&st, b, now_us());
                    } else if b.starts_with(b"41") || b == b"1" {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    st.borrow_mut().closed += 1;
}
