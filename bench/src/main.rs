//! rtg-bench: the load generator of issue 8. Speaks raw Engine.IO 4 / Socket.IO 5 over WebSocket to
//! the gateway, the Node socket.io peer or the raw broadcast server, on one tokio current-thread
//! runtime, and writes one JSON document per run.
//!
//!   rtg-bench idle   --server 127.0.0.1:9001 --secret s --pid <server pid> --clients 10000
//!   rtg-bench storm  --server ... --clients 10000
//!   rtg-bench fanout --server ... --clients 1000 --rates 100,200,400
//!   rtg-bench ack    --server ... --clients 1000 --fixed-rate 10000 --rates 5000,10000,20000
//!   rtg-bench fanout --server <node 2> --sender-server <node 1> --clients 200   (S5)
//!
//! Every run is bounded: `--max-secs` ends the process whatever happens.

mod procfs;
mod proto;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use futures_util::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::LocalSet;

use proto::{now_us, SharedRef, Sources, Step, Ws};

#[derive(Parser)]
#[command(name = "rtg-bench", about = "Load generator for realtime-gateway benchmarks (raw Engine.IO 4 / Socket.IO 5)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Server the clients connect to (for S5: the node of the receivers).
    #[arg(long, default_value = "127.0.0.1:8888")]
    server: SocketAddr,
    /// HS256 secret the server was started with (JWT_SECRET).
    #[arg(long)]
    secret: String,
    /// Server process ids whose RSS and CPU time are read from /proc (repeat for several).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Name of the server under test, copied into the JSON (gateway, node, raw).
    #[arg(long, default_value = "server")]
    label: String,
    /// Where to write the JSON result.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Number of clients.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Connections (handshakes) in flight at once during setup.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// tungstenite read buffer per client, in bytes.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
    /// Client source addresses 127.0.0.<src-first..=src-last>.
    #[arg(long, default_value_t = 2)]
    src_first: u8,
    #[arg(long, default_value_t = 9)]
    src_last: u8,
    /// `sub` prefix of the clients' tokens.
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// Distinct users among the clients (client i is user i mod N); 0: one user per client. S6 uses
    /// 1 so that 10,000 joins do not each announce `user-joined` to everyone already in the room.
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// Hard limit on the whole run, in seconds.
    #[arg(long, default_value_t = 180)]
    max_secs: u64,
    /// Protocol: `sio` (Engine.IO 4 / Socket.IO 5 on /socket.io/) or `ws` (the gateway's plain /ws).
    #[arg(long, value_enum, default_value = "sio")]
    proto: proto::Proto,
}

#[derive(Args, Clone)]
struct Ladder {
    /// Rates of the steps, comma-separated (messages/s for fanout, acks/s for ack).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<u64>,
    /// Seconds of sending per step.
    #[arg(long, default_value_t = 3.0)]
    step_secs: f64,
    /// Longest wait for stragglers after a step's last send.
    #[arg(long, default_value_t = 2.0)]
    drain_secs: f64,
    /// A step passes with p99 below this and nothing lost.
    #[arg(long)]
    p99_limit_ms: f64,
    /// Stop the ladder after this many failed steps in a row.
    #[arg(long, default_value_t = 2)]
    stop_after: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// S1: connect N sockets, keep them idle answering pings, read the server's RSS per connection.
    Idle {
        #[command(flatten)]
        c: Common,
        /// Seconds to wait after the last connect before reading RSS.
        #[arg(long, default_value_t = 5)]
        settle_secs: u64,
        /// Further idle seconds (CPU while idle), RSS read again at the end.
        #[arg(long, default_value_t = 5)]
        idle_secs: u64,
    },
    /// S4: connect N sockets as fast as the server accepts them: connects/s and failures.
    Storm {
        #[command(flatten)]
        c: Common,
        /// Per-connection limit in seconds; slower counts as a failure.
        #[arg(long, default_value_t = 20)]
        connect_timeout_secs: u64,
    },
    /// S2/S5: every client joins one room; one sender emits `message` at rising rates.
    Fanout {
        #[command(flatten)]
        c: Common,
        #[command(flatten)]
        l: Ladder,
        /// Server of the sender (S5: node 1); default: --server.
        #[arg(long)]
        sender_server: Option<SocketAddr>,
        #[arg(long, default_value = "bench")]
        room: String,
    },
    /// S7: every client subscribes to one channel; Redis `PUBLISH` to it at rising rates (the cost
    /// of channel history: run against gateways with and without it).
    Publish {
        #[command(flatten)]
        c: Common,
        #[command(flatten)]
        l: Ladder,
        /// The Redis the gateways use (the publisher's PUBLISH goes there).
        #[arg(long)]
        redis: SocketAddr,
        #[arg(long, default_value = "apps:bench")]
        channel: String,
    },
    /// S3: clients send `list_channels` with an ack id; round-trip latency.
    Ack {
        #[command(flatten)]
        c: Common,
        #[command(flatten)]
        l: Ladder,
        /// The fixed-rate step reported on its own (acks/s).
        #[arg(long, default_value_t = 10000)]
        fixed_rate: u64,
        #[arg(long, default_value_t = 5.0)]
        fixed_secs: f64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    now_us();
    let (max_secs, p) = match &cli.cmd {
        Cmd::Idle { c, .. }
        | Cmd::Storm { c, .. }
        | Cmd::Fanout { c, .. }
        | Cmd::Publish { c, .. }
        | Cmd::Ack { c, .. } => (c.max_secs, c.proto),
    };
    proto::set_proto(p);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(max_secs));
        eprintln!("rtg-bench: --max-secs {max_secs} reached, giving up");
        std::process::exit(3);
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = LocalSet::new();
    let (c, result) = local.block_on(&rt, async move {
        match cli.cmd {
            Cmd::Idle { c, settle_secs, idle_secs } => {
                let r = idle(&c, settle_secs, idle_secs).await;
                (c, r)
            }
            Cmd::Storm { c, connect_timeout_secs } => {
                let r = storm(&c, connect_timeout_secs).await;
                (c, r)
            }
            Cmd::Fanout { c, l, sender_server, room } => {
                let r = fanout(&c, &l, sender_server, &room).await;
                (c, r)
            }
            Cmd::Ack { c, l, fixed_rate, fixed_secs } => {
                let r = ack(&c, &l, fixed_rate, fixed_secs).await;
                (c, r)
            }
            Cmd::Publish { c, l, redis, channel } => {
                let r = publish(&c, &l, redis, &channel).await;
                (c, r)
            }
        }
    });
    let mut result = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rtg-bench {}: error: {e:#}", c.label);
            std::process::exit(1);
        }
    };
    result["label"] = json!(c.label);
    result["server"] = json!(c.server.to_string());
    result["clients"] = json!(c.clients);
    let text = serde_json::to_string_pretty(&result)?;
    if let Some(out) = &c.out {
        std::fs::write(out, &text)?;
    }
    println!("{text}");
    // Sockets are closed by process exit; the tasks holding them are not awaited.
    std::process::exit(0);
}

fn shared() -> SharedRef {
    Rc::new(RefCell::new(proto::Shared::default()))
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn hist_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// Errors grouped by message (the first 100 characters), most frequent first.
fn error_summary(errors: &[String]) -> Value {
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for e in errors {
        *counts.entry(e.chars().take(100).collect()).or_default() += 1;
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    json!(v.into_iter().take(5).map(|(e, n)| json!({ "error": e, "count": n })).collect::<Vec<_>>())
}

/// Connects `n` clients (`concurrency` handshakes in flight), then `then(i, ws)` for each (a join, a
/// spawn). Returns what `then` produced for the ones that connected, the errors, the connect
/// latencies and the wall time.
async fn connect_many<T, F, Fut>(
    c: &Common,
    servers: &dyn Fn(usize) -> SocketAddr,
    n: usize,
    timeout: Duration,
    then: F,
) -> (Vec<T>, Vec<String>, Histogram<u64>, Duration)
where
    F: Fn(usize, Ws) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let tokens = proto::tokens(&c.secret, &c.user_prefix, n, c.users);
    let cfg = proto::ws_config(c.read_buffer);
    let src = Sources { first: c.src_first, last: c.src_last };
    let hist = RefCell::new(Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).unwrap());
    let start = Instant::now();
    let results: Vec<anyhow::Result<T>> = stream::iter(0..n)
        .map(|i| {
            let token = &tokens[i];
            let hist = &hist;
            let then = &then;
            async move {
                let t0 = now_us();
                let ws = tokio::time::timeout(timeout, proto::open(servers(i), src.pick(i), token, cfg))
                    .await
                    .map_err(|_| anyhow::anyhow!("connect timed out"))??;
                let _ = hist.borrow_mut().record((now_us() - t0).max(1));
                then(i, ws).await
            }
        })
        .buffer_unordered(c.concurrency.max(1))
        .collect()
        .await;
    let elapsed = start.elapsed();
    let mut ok = Vec::with_capacity(n);
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(t) => ok.push(t),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    (ok, errors, hist.into_inner(), elapsed)
}

/// Waits until the servers are quiet (under 5% of a core over 250 ms), at least 1 s and at most
/// `limit`; returns the seconds waited.
async fn settle(pids: &[u32], limit: Duration) -> f64 {
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    while t0.elapsed() < limit {
        let c0 = procfs::cpu_us_all(pids);
        tokio::time::sleep(Duration::from_millis(250)).await;
        if procfs::cpu_us_all(pids) - c0 < 12_500 {
            break;
        }
    }
    t0.elapsed().as_secs_f64()
}

fn spawn_client(ws: Ws, st: &SharedRef) -> mpsc::UnboundedSender<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(proto::run_client(ws, rx, st.clone()));
    tx
}

async fn idle(c: &Common, settle_secs: u64, idle_secs: u64) -> anyhow::Result<Value> {
    let st = shared();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_base = procfs::rss_kib_all(&c.pids);
    let server = c.server;
    let (txs, errors, hist, elapsed) = connect_many(c, &|_| server, c.clients, Duration::from_secs(30), |_, ws| {
        let st = st.clone();
        async move { Ok(spawn_client(ws, &st)) }
    })
    .await;
    let connected = txs.len() as u64;
    tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    let rss_settled = procfs::rss_kib_all(&c.pids);
    let cpu0 = procfs::cpu_us_all(&c.pids);
    let m0 = procfs::machine_busy_us();
    let g0 = procfs::self_cpu_us();
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let cpu1 = procfs::cpu_us_all(&c.pids);
    let other = (procfs::machine_busy_us() - m0).saturating_sub((cpu1 - cpu0) + (procfs::self_cpu_us() - g0));
    let rss_end = procfs::rss_kib_all(&c.pids);
    let closed = st.borrow().closed;
    let per_conn = |rss: u64| if connected > 0 { rss.saturating_sub(rss_base) as f64 / connected as f64 } else { 0.0 };
    let r = json!({
        "scenario": "idle",
        "connected": connected,
        "failures": errors.len(),
        "errors": error_summary(&errors),
        "connect_secs": elapsed.as_secs_f64(),
        "connect_latency": hist_json(&hist),
        "rss_base_kib": rss_base,
        "rss_settled_kib": rss_settled,
        "rss_end_kib": rss_end,
        "rss_per_conn_kib": (per_conn(rss_end) * 100.0).round() / 100.0,
        "rss_per_conn_settled_kib": (per_conn(rss_settled) * 100.0).round() / 100.0,
        "idle_cpu_pct": (cpu1 - cpu0) as f64 / (idle_secs as f64 * 1e6) * 100.0,
        "other_cpu_pct": other as f64 / (idle_secs as f64 * 1e6) * 100.0,
        "closed_by_server": closed,
        "pongs": st.borrow().pongs,
    });
    drop(txs);
    Ok(r)
}

async fn storm(c: &Common, connect_timeout_secs: u64) -> anyhow::Result<Value> {
    let st = shared();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_base = procfs::rss_kib_all(&c.pids);
    let cpu0 = procfs::cpu_us_all(&c.pids);
    let g0 = procfs::self_cpu_us();
    let m0 = procfs::machine_busy_us();
    let server = c.server;
    let (txs, errors, hist, elapsed) =
        connect_many(c, &|_| server, c.clients, Duration::from_secs(connect_timeout_secs), |_, ws| {
            let st = st.clone();
            async move { Ok(spawn_client(ws, &st)) }
        })
        .await;
    let cpu1 = procfs::cpu_us_all(&c.pids);
    let g1 = procfs::self_cpu_us();
    let other = (procfs::machine_busy_us() - m0).saturating_sub((cpu1 - cpu0) + (g1 - g0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_end = procfs::rss_kib_all(&c.pids);
    let connected = txs.len() as u64;
    let secs = elapsed.as_secs_f64();
    Ok(json!({
        "scenario": "storm",
        "connected": connected,
        "failures": errors.len(),
        "errors": error_summary(&errors),
        "secs": secs,
        "connects_per_sec": (connected as f64 / secs).round(),
        "connect_latency": hist_json(&hist),
        "server_cpu_us_per_connect": if connected > 0 { (cpu1 - cpu0) as f64 / connected as f64 } else { 0.0 },
        "server_cpu_pct": (cpu1 - cpu0) as f64 / (secs * 1e6) * 100.0,
        "gen_cpu_pct": (g1 - g0) as f64 / (secs * 1e6) * 100.0,
        "other_cpu_pct": other as f64 / (secs * 1e6) * 100.0,
        "rss_base_kib": rss_base,
        "rss_end_kib": rss_end,
        "closed_by_server": st.borrow().closed,
    }))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// One sender emits `message` to the room; every member should receive `new-message`.
    Fanout { members: u64 },
    /// Round robin over the clients, `list_channels` with an ack id; one answer each.
    Ack,
    /// `txs[0]` writes `PUBLISH <channel> {"content":...}` to Redis; every subscriber should
    /// receive the `event`.
    Publish { members: u64 },
}

/// Runs one open-loop step at `rate`/s for `secs`, then waits (bounded) for stragglers.
#[allow(clippy::too_many_arguments)]
async fn step(
    c: &Common,
    st: &SharedRef,
    kind: Kind,
    txs: &[mpsc::UnboundedSender<String>],
    room: &str,
    rate: u64,
    secs: f64,
    drain_secs: f64,
    p99_limit_ms: f64,
    next_id: &mut u64,
) -> Value {
    let idx = {
        let mut s = st.borrow_mut();
        s.steps.push(Step::new());
        s.steps.len() - 1
    };
    let closed0 = st.borrow().closed;
    let cpu0 = procfs::cpu_us_all(&c.pids);
    let g0 = procfs::self_cpu_us();
    let m0 = procfs::machine_busy_us();
    let wall0 = Instant::now();
    let total = ((rate as f64) * secs).round() as u64;
    let start = now_us();
    let mut sent = 0u64;
    let mut max_lag = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let send_limit = Duration::from_secs_f64(secs + 5.0);
    while sent < total && wall0.elapsed() < send_limit {
        tick.tick().await;
        let now = now_us();
        // Message i is due at start + i/rate: i = 0 at once, then one every 1/rate.
        let due = ((((now - start) as u128 * rate as u128) / 1_000_000) + 1).min(total as u128) as u64;
        while sent < due {
            let sched = start + (sent as u128 * 1_000_000 / rate as u128) as u64;
            max_lag = max_lag.max(now.saturating_sub(sched));
            let id = *next_id;
            *next_id += 1;
            match kind {
                Kind::Fanout { .. } => {
                    st.borrow_mut().pending.insert(id, (sched, idx, false));
                    let body = proto::content(idx, sched, sent);
                    let arg = format!("{{\"roomId\":\"{room}\",\"content\":\"{body}\"}}");
                    let _ = txs[0].send(proto::emit_frame("message", Some(&arg), Some(id)));
                }
                Kind::Publish { .. } => {
                    let body = proto::content(idx, sched, sent);
                    let payload = format!("{{\"content\":\"{body}\"}}");
                    let _ = txs[0].send(resp(&["PUBLISH", room, &payload]));
                }
                Kind::Ack => {
                    st.borrow_mut().pending.insert(id, (sched, idx, true));
                    let _ = txs[(sent as usize) % txs.len()].send(proto::emit_frame("list_channels", None, Some(id)));
                }
            }
            sent += 1;
        }
    }
    let send_secs = wall0.elapsed().as_secs_f64();
    let expected = match kind {
        Kind::Fanout { members } | Kind::Publish { members } => sent * members,
        Kind::Ack => sent,
    };
    let got = |st: &SharedRef| {
        let s = st.borrow();
        let step = &s.steps[idx];
        match kind {
            Kind::Fanout { .. } | Kind::Publish { .. } => step.received,
            Kind::Ack => step.acks_ok + step.acks_err,
        }
    };
    let drain_until = Instant::now() + Duration::from_secs_f64(drain_secs);
    while got(st) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = procfs::cpu_us_all(&c.pids) - cpu0;
    let gcpu = procfs::self_cpu_us() - g0;
    let other = (procfs::machine_busy_us() - m0).saturating_sub(cpu + gcpu);
    let s = st.borrow();
    let stp = &s.steps[idx];
    let received = got(st);
    let lost = expected.saturating_sub(received);
    let hist = hist_json(&stp.hist);
    let p99 = stp.hist.value_at_quantile(0.99) as f64 / 1000.0;
    let closed = s.closed - closed0;
    let pass = lost == 0 && !stp.hist.is_empty() && p99 < p99_limit_ms && closed == 0;
    let unit = match kind {
        Kind::Fanout { .. } | Kind::Publish { .. } => "delivery",
        Kind::Ack => "ack",
    };
    let r = json!({
        "rate": rate,
        "sent": sent,
        "send_secs": send_secs,
        "expected": expected,
        "received": received,
        "lost": lost,
        "loss_pct": if expected > 0 { lost as f64 * 100.0 / expected as f64 } else { 0.0 },
        "latency": hist,
        "p99_ms": p99,
        "acks_ok": stp.acks_ok,
        "acks_err": stp.acks_err,
        "closed_by_server": closed,
        "server_cpu_ms": cpu as f64 / 1000.0,
        "server_cpu_pct": cpu as f64 / (wall * 1e6) * 100.0,
        "server_cpu_us_per_unit": if received > 0 { cpu as f64 / received as f64 } else { 0.0 },
        "unit": unit,
        "gen_cpu_pct": gcpu as f64 / (wall * 1e6) * 100.0,
        "gen_max_lag_ms": max_lag as f64 / 1000.0,
        "other_cpu_pct": other as f64 / (wall * 1e6) * 100.0,
        "pass": pass,
    });
    eprintln!(
        "[{}] {} rate {rate}/s: sent {sent}, got {received}/{expected} (lost {lost}), p50 {:.2} ms, p99 {:.2} ms, server cpu {:.0}%, gen cpu {:.0}%, other {:.0}%, lag {:.1} ms -> {}",
        c.label,
        match kind { Kind::Fanout { .. } => "fanout", Kind::Publish { .. } => "publish", Kind::Ack => "ack" },
        stp.hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99,
        r["server_cpu_pct"].as_f64().unwrap_or(0.0),
        r["gen_cpu_pct"].as_f64().unwrap_or(0.0),
        r["other_cpu_pct"].as_f64().unwrap_or(0.0),
        max_lag as f64 / 1000.0,
        if pass { "pass" } else { "FAIL" }
    );
    r
}

/// The ladder: steps at rising rates until `stop_after` steps in a row failed or sockets were dropped.
#[allow(clippy::too_many_arguments)]
async fn ladder(
    c: &Common,
    l: &Ladder,
    st: &SharedRef,
    kind: Kind,
    txs: &[mpsc::UnboundedSender<String>],
    room: &str,
    next_id: &mut u64,
) -> (Vec<Value>, u64) {
    let mut steps = Vec::new();
    let mut best = 0;
    let mut fails = 0;
    for &rate in &l.rates {
        let r = step(c, st, kind, txs, room, rate, l.step_secs, l.drain_secs, l.p99_limit_ms, next_id).await;
        let pass = r["pass"].as_bool().unwrap_or(false);
        let dropped = r["closed_by_server"].as_u64().unwrap_or(0) > 0;
        steps.push(r);
        if pass {
            best = best.max(rate);
            fails = 0;
        } else {
            fails += 1;
        }
        if fails >= l.stop_after || dropped {
            break;
        }
        // Let the server's queues empty before the next rate (bounded: at most drain_secs again).
        tokio::time::sleep(Duration::from_millis(if pass { 300 } else { 1500 })).await;
    }
    (steps, best)
}

async fn fanout(c: &Common, l: &Ladder, sender_server: Option<SocketAddr>, room: &str) -> anyhow::Result<Value> {
    let st = shared();
    let rss_base = procfs::rss_kib_all(&c.pids);
    let receivers = c.server;
    let sender = sender_server.unwrap_or(receivers);
    // Client 0 is the sender (on the sender's server), the others receive; everyone joins the room.
    let join_arg = format!("\"{room}\"");
    let t_setup = Instant::now();
    let (mut txs, errors, _, _) = connect_many(
        c,
        &|i| if i == 0 { sender } else { receivers },
        c.clients,
        Duration::from_secs(30),
        |i, mut ws| {
            let st = st.clone();
            let join_arg = join_arg.clone();
            async move {
                let ack = proto::call(&mut ws, 1, "join-room", &join_arg, Duration::from_secs(60)).await?;
                if !ack.contains("\"success\":true") {
                    anyhow::bail!("join-room refused: {ack:.200}");
                }
                Ok((i, spawn_client(ws, &st)))
            }
        },
    )
    .await;
    if !errors.is_empty() || txs.is_empty() {
        anyhow::bail!("setup failed: {} of {} clients: {}", errors.len(), c.clients, error_summary(&errors));
    }
    txs.sort_by_key(|(i, _)| *i);
    if txs[0].0 != 0 {
        anyhow::bail!("the sender did not connect");
    }
    let txs: Vec<_> = txs.into_iter().map(|(_, t)| t).collect();
    let setup_secs = t_setup.elapsed().as_secs_f64();
    // The `user-joined` notes of the joins (~n²/2 frames) drain before the first step.
    let settle_secs = settle(&c.pids, Duration::from_secs(20)).await;
    let rss_joined = procfs::rss_kib_all(&c.pids);
    let members = txs.len() as u64;
    let mut next_id = 100;
    let (steps, best) = ladder(c, l, &st, Kind::Fanout { members }, &txs, room, &mut next_id).await;
    let best_deliveries = best * members;
    let stray = st.borrow().stray;
    drop(txs);
    Ok(json!({
        "scenario": "fanout",
        "room": room,
        "members": members,
        "sender_server": sender.to_string(),
        "setup_secs": setup_secs,
        "settle_secs": settle_secs,
        "rss_base_kib": rss_base,
        "rss_joined_kib": rss_joined,
        "p99_limit_ms": l.p99_limit_ms,
        "steps": steps,
        "best_rate": best,
        "best_deliveries_per_sec": best_deliveries,
        "stray_frames": stray,
    }))
}

/// A RESP command.
fn resp(args: &[&str]) -> String {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    out
}

/// A connection to Redis that writes the commands it is given and discards the replies.
async fn redis_writer(addr: SocketAddr) -> anyhow::Result<mpsc::UnboundedSender<String>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::task::spawn_local(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    tokio::task::spawn_local(async move {
        while let Some(cmd) = rx.recv().await {
            let mut batch = cmd.into_bytes();
            while let Ok(more) = rx.try_recv() {
                batch.extend_from_slice(more.as_bytes());
            }
            if wr.write_all(&batch).await.is_err() {
                break;
            }
        }
    });
    Ok(tx)
}

async fn publish(c: &Common, l: &Ladder, redis: SocketAddr, channel: &str) -> anyhow::Result<Value> {
    let st = shared();
    let rss_base = procfs::rss_kib_all(&c.pids);
    let server = c.server;
    let sub_arg = format!("\"{channel}\"");
    let (mut txs, errors, _, _) = connect_many(c, &|_| server, c.clients, Duration::from_secs(30), |i, mut ws| {
        let st = st.clone();
        let sub_arg = sub_arg.clone();
        async move {
            let ack = proto::call(&mut ws, 1, "subscribe", &sub_arg, Duration::from_secs(60)).await?;
            if !ack.contains("\"success\":true") {
                anyhow::bail!("subscribe refused: {ack:.200}");
            }
            Ok((i, spawn_client(ws, &st)))
        }
    })
    .await;
    if !errors.is_empty() || txs.is_empty() {
        anyhow::bail!("setup failed: {} of {} clients: {}", errors.len(), c.clients, error_summary(&errors));
    }
    txs.sort_by_key(|(i, _)| *i);
    let members = txs.len() as u64;
    let mut all = vec![redis_writer(redis).await?];
    all.extend(txs.into_iter().map(|(_, t)| t));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut next_id = 100;
    let kind = Kind::Publish { members };
    // Warm-up, not reported.
    let _ = step(c, &st, kind, &all, channel, 200, 1.0, l.drain_secs, l.p99_limit_ms, &mut next_id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (steps, best) = ladder(c, l, &st, kind, &all, channel, &mut next_id).await;
    let rss_end = procfs::rss_kib_all(&c.pids);
    drop(all);
    Ok(json!({
        "scenario": "publish",
        "channel": channel,
        "members": members,
        "rss_base_kib": rss_base,
        "rss_end_kib": rss_end,
        "p99_limit_ms": l.p99_limit_ms,
        "steps": steps,
        "best_rate": best,
        "best_deliveries_per_sec": best * members,
    }))
}

async fn ack(c: &Common, l: &Ladder, fixed_rate: u64, fixed_secs: f64) -> anyhow::Result<Value> {
    let st = shared();
    let server = c.server;
    let (txs, errors, _, _) = connect_many(c, &|_| server, c.clients, Duration::from_secs(30), |_, ws| {
        let st = st.clone();
        async move { Ok(spawn_client(ws, &st)) }
    })
    .await;
    if !errors.is_empty() || txs.is_empty() {
        anyhow::bail!("setup failed: {} of {} clients: {}", errors.len(), c.clients, error_summary(&errors));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut next_id = 100;
    // Warm-up, not reported.
    let _ = step(c, &st, Kind::Ack, &txs, "", 2000, 1.0, l.drain_secs, l.p99_limit_ms, &mut next_id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fixed =
        step(c, &st, Kind::Ack, &txs, "", fixed_rate, fixed_secs, l.drain_secs, l.p99_limit_ms, &mut next_id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (steps, best) = ladder(c, l, &st, Kind::Ack, &txs, "", &mut next_id).await;
    drop(txs);
    Ok(json!({
        "scenario": "ack",
        "p99_limit_ms": l.p99_limit_ms,
        "fixed": fixed,
        "steps": steps,
        "best_rate": best,
    }))
}
