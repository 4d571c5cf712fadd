//! Builds the whole gateway (router, Socket.IO server, background tasks) for `main` and the tests.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use socketioxide::SocketIo;
use tokio::net::TcpListener;

use std::sync::Arc;

use socketioxide::adapter::Adapter;
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;

use crate::app::auth::Authenticator;
use crate::app::policy::Policy;
use crate::app::state::AppState;
use crate::cluster::adapter::GatewayDriver;
use crate::front::http::conn::{Closable, Peer};
use crate::front::http::Api;
use crate::front::sio::{authenticate, on_connect, SioTransport};
use crate::front::ws::clients::{WsClients, WsTransport};
use crate::model::config::Config;
use crate::storage::redis_link::RedisLink;
use crate::storage::store::memory::MemoryStore;
use crate::storage::store::redis::RedisStore;
use crate::storage::store::{Limits, Store};
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};

/// A bound, ready gateway. `run` serves it until the shutdown signal.
pub struct Gateway {
    listener: TcpListener,
    /// The TLS listener and its certificates, with `TLS_CERT_FILE` and `TLS_KEY_FILE`.
    tls: Option<(TcpListener, Arc<crate::front::tls::Certs>)>,
    router: axum::Router,
    pub state: AppState,
    shutdown: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>,
}

/// How long the whole shutdown may take (SPEC §1: exit within 10 s).
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(9);

pub async fn startup(config: Config) -> anyhow::Result<Gateway> {
    let auth = Authenticator::from_config(&config)?;
    let policy = match &config.channel_policy_file {
        Some(path) => Policy::from_file(path)?,
        None => Policy::default(),
    };
    let cors = crate::front::http::cors(&config.cors_origins)?;
    let redis = RedisLink::from_config(&config).await?;
    // The adapter's channels keep the plain prefix: in a cluster they are sharded, spread by name.
    let adapter_prefix = format!("{}-sio", config.redis_prefix);
    let mut config = config;
    if redis.as_ref().is_some_and(|r| r.mode().name() == "cluster") {
        // Redis Cluster: every key carries the hash tag `{<prefix>}`, so that all of them (and each
        // multi-key script) live in one slot (scaling.md, Where Redis runs).
        config.redis_prefix = format!("{{{}}}", config.redis_prefix);
    }
    let limits = Limits::from_config(&config);
    let node_id = config.node_id.clone().unwrap_or_else(crate::model::session::random_node_id);
    let store: Arc<dyn Store> = match &redis {
        Some(link) => Arc::new(RedisStore::new(link.clone(), &config.redis_prefix, &node_id, limits)),
        None => Arc::new(MemoryStore::new(limits)),
    };
    config.node_id = Some(node_id.clone());
    let admin = crate::front::admin::Settings::from_config(&config)?.map(crate::front::admin::Admin::new);
    let proxy = crate::app::proxy::EventProxy::from_config(&config)?;
    let metrics = crate::model::metrics::Metrics::new();
    let webhooks = crate::app::webhooks::Webhooks::from_config(&config, redis.clone(), &node_id, Some(&metrics))?;
    let publications = publications(&config, redis.as_ref(), &node_id, &policy);
    let files = crate::storage::files::Files::open(&config)?;
    let state = AppState::new(crate::app::state::Parts {
        config,
        auth,
        policy,
        redis: redis.clone(),
        store,
        metrics,
        proxy,
        webhooks,
        publications,
        files,
    });
    if let Some(admin) = &admin {
        state.hub.watch(admin.clone());
    }
    let cfg = &state.config;
    let listener = bind(&cfg.host, cfg.port, cfg.listen_backlog).await?;
    let tls = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => {
            let certs = crate::front::tls::Certs::load(cert, key)?;
            Some((bind(&cfg.host, cfg.tls_port, cfg.listen_backlog).await.context("TLS_PORT")?, certs))
        }
        (None, None) => None,
        (Some(_), None) => anyhow::bail!("TLS_KEY_FILE is not set: TLS_CERT_FILE needs it"),
        (None, Some(_)) => anyhow::bail!("TLS_CERT_FILE is not set: TLS_KEY_FILE needs it"),
    };

    let builder = SocketIo::builder()
        .with_state(state.clone())
        .max_payload(cfg.max_payload_bytes)
        .max_buffer_size(cfg.socket_buffer_packets as usize)
        .ws_max_message_size(cfg.max_payload_bytes as usize)
        .ws_max_frame_size(cfg.max_payload_bytes as usize)
        .ws_read_buffer_size(cfg.ws_read_buffer_bytes as usize)
        .ping_interval(cfg.ping_interval())
        .ping_timeout(cfg.ping_timeout())
        // SPEC §7: a session without a namespace is dropped after 10 s (see http/engine.rs).
        .connect_timeout(Duration::from_secs(10));
    // The Admin UI's handlers take it as their state.
    let builder = match &admin {
        Some(admin) => builder.with_state(admin.clone()),
        None => builder,
    };
    match &redis {
        Some(link) => {
            let driver = GatewayDriver::new(link.clone())?;
            let adapter_config =
                RedisAdapterConfig::new().with_prefix(adapter_prefix).with_request_timeout(Duration::from_secs(2));
            let (layer, io) = builder
                .with_adapter::<CustomRedisAdapter<_, GatewayDriver>>(RedisAdapterCtr::new_with_driver(
                    driver,
                    adapter_config,
                ))
                .build_layer();
            io.ns("/", on_connect.with(authenticate)).await.map_err(|e| anyhow::anyhow!("redis adapter: {e}"))?;
            if admin.is_some() {
                io.ns(
                    crate::front::admin::NAMESPACE,
                    crate::front::admin::on_connect
                        .with(crate::front::sio::handshake_done)
                        .with(crate::front::admin::authenticate),
                )
                .await
                .map_err(|e| anyhow::anyhow!("redis adapter: {e}"))?;
            }
            Ok(assemble(io, layer, state, admin, cors, listener, tls))
        }
        None => {
            let (layer, io) = builder.build_layer();
            io.ns("/", on_connect.with(authenticate));
            if admin.is_some() {
                io.ns(
                    crate::front::admin::NAMESPACE,
                    crate::front::admin::on_connect
                        .with(crate::front::sio::handshake_done)
                        .with(crate::front::admin::authenticate),
                );
            }
            Ok(assemble(io, layer, state, admin, cors, listener, tls))
        }
    }
}

/// Wires the HTTP routes, the Socket.IO layer and the background tasks for any adapter.
fn assemble<A: Adapter>(
    io: SocketIo<A>,
    layer: SocketIoLayer<A>,
    state: AppState,
    admin: Option<Arc<crate::front::admin::Admin>>,
    cors: tower_http::cors::CorsLayer,
    listener: TcpListener,
    tls: Option<(TcpListener, Arc<crate::front::tls::Certs>)>,
) -> Gateway {
    // The hub's transports: Socket.IO (crossing nodes through the adapter) and `/ws` (through the bus).
    let ws = WsClients::new(state.bus.clone());
    state.hub.install(vec![
        Arc::new(SioTransport { io: io.clone(), heartbeat: crate::front::sio::heartbeat(&state) }),
        Arc::new(WsTransport(ws.clone())),
    ]);
    let mut tasks = vec![crate::app::events::spawn_expiry_sweeper(state.clone()), ws.spawn_presence()];
    let timer_state = state.clone();
    tasks.push(state.timers.spawn(move |job| {
        let state = timer_state.clone();
        async move { crate::app::events::run_job(&state, job).await }
    }));
    tasks.push(crate::app::events::presence::spawn_sweeper(state.clone()));
    if let Some(redis) = &state.redis {
        let (calls_state, admin) = (state.clone(), admin.clone());
        tasks.push(crate::cluster::liveness::spawn_heartbeat(crate::cluster::liveness::Liveness {
            redis: redis.clone(),
            prefix: state.config.redis_prefix.clone(),
            node_id: state.node_id.clone(),
            peers: state.peers.clone(),
            store: state.store.clone(),
            grace_ms: state.config.presence_grace_ms,
            hub: state.hub.clone(),
            counters: state.counters.clone(),
            on_gone: Arc::new(move |user, node| {
                let state = calls_state.clone();
                Box::pin(async move { crate::app::events::calls::node_gone(&state, &user, &node).await })
            }),
            on_clients_gone: Arc::new(move |ids| {
                if let Some(admin) = &admin {
                    admin.node_gone(ids);
                }
            }),
        }));
    }
    tasks.extend(state.publications.spawn(state.hub.clone(), state.metrics.history_errors.clone()));
    let files_state = state.clone();
    tasks.push(tokio::spawn(async move {
        // Uploads without a chunk for UPLOAD_IDLE_TIMEOUT_SECS are dropped.
        let every = files_state.files.limits.idle.min(Duration::from_secs(15));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            files_state.files.sweep(None).await;
        }
    }));
    tasks.extend(crate::app::ingress::spawn(state.clone()));
    if let Some(admin) = admin {
        tasks.extend(crate::front::admin::spawn(io.clone(), state.clone(), admin));
    }
    if let Some(hooks) = &state.webhooks {
        tasks.extend(crate::app::webhooks::spawn(hooks.clone()));
    }
    let api = Api { state: state.clone() };
    let front = crate::front::ws::WsFront { state: state.clone(), clients: ws };
    // The head compaction runs before the Socket.IO layer sees the request (see http/compact.rs),
    // then the Engine.IO guard (private session ids, the handshake budget: see http/engine.rs).
    let engine_guard = crate::front::http::engine::EngineGuard::new(state.clone());
    let router = crate::front::http::router(api)
        .merge(crate::front::ws::router(front))
        .layer(layer)
        .layer(axum::middleware::from_fn_with_state(engine_guard, crate::front::http::engine::guard))
        .layer(tower::util::MapRequestLayer::new(crate::front::http::compact::compact_head))
        .layer(cors);
    let drain_state = state.clone();
    let shutdown = Box::new(move || -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // The listener is already closed (see `Gateway::run`). Tell every client first, then
            // close transports (not a Socket.IO disconnect), so socket.io clients see `transport
            // close` and reconnect by themselves, to another node when there is one.
            let notice = serde_json::json!({ "reason": "shutdown", "timestamp": crate::model::clock::iso_now() });
            drain_state.metrics.event_out("server-shutdown");
            if let Err(e) = drain_state.hub.everyone().local().emit("server-shutdown", &notice).await {
                tracing::warn!("server-shutdown not sent to every client: {e}");
            }
            // Each client's departure (presence, rooms, calls) while the adapter still carries it to
            // the other nodes; offline checks go to the store, where another node runs them after
            // the grace. socketioxide's `close` runs no disconnect handler, so this is the only time.
            let clients = drain_state.hub.local_clients();
            futures_util::stream::iter(clients)
                .for_each_concurrent(64, |c| {
                    let state = drain_state.clone();
                    async move { crate::app::events::depart(&state, &*c, "server shutting down").await }
                })
                .await;
            drain_state.hub.shutdown().await;
            if let Some(hooks) = &drain_state.webhooks {
                hooks.flush(Duration::from_secs(2)).await;
            }
            // The channels' appender hands over now rather than after its lease (SPEC §15).
            drain_state.publications.retire().await;
            // Only then stop the background tasks.
            for t in &tasks {
                t.abort();
            }
        })
    });
    Gateway { listener, tls, router, state, shutdown }
}

/// Listens on `host:port` with `backlog` pending connections (`LISTEN_BACKLOG`; tokio's own `bind`
/// uses 128, which a reconnect storm after a deploy overflows).
async fn bind(host: &str, port: u16, backlog: u32) -> anyhow::Result<TcpListener> {
    let addr = tokio::net::lookup_host((host, port))
        .await
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("HOST: cannot resolve '{host}'"))?;
    let backlog = match somaxconn() {
        Some(max) if max < backlog => {
            tracing::warn!(
                "LISTEN_BACKLOG {backlog} is above net.core.somaxconn ({max}): the kernel holds {max}; raise the sysctl"
            );
            max
        }
        _ => backlog,
    };
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        // As tokio's `TcpListener::bind` does: a restart may listen while old connections linger.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(backlog)
    };
    listen().with_context(|| format!("cannot listen on {addr}"))
}

/// The kernel's cap on a listen backlog (Linux); `None` where it cannot be read.
fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok()?.trim().parse().ok()
}

/// The TCP listener, closed on demand: `accept` drops it when told to and says so, so that
/// shutdown can refuse new connections before it tells the connected clients.
struct ClosingListener {
    inner: Option<TcpListener>,
    close: tokio::sync::watch::Receiver<bool>,
    closed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl axum::serve::Listener for ClosingListener {
    type Io = Closable<tokio::net::TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some(listener) = &self.inner else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = self.close.changed() => {
                    self.inner = None;
                    if let Some(tx) = self.closed.take() {
                        let _ = tx.send(());
                    }
                }
                res = listener.accept() => match res {
                    Ok((stream, addr)) => {
                        // Frames are small and latency is the product: without this, Nagle holds
                        // a write while an earlier one is unacknowledged, and the client delays its
                        // ACK (~40 ms on Linux), which was the p99 of every fan-out under load.
                        let _ = stream.set_nodelay(true);
                        return Peer::wrap(stream, addr);
                    }
                    // Out of file descriptors and the like: wait a little rather than spin.
                    Err(e) => {
                        tracing::debug!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        match &self.inner {
            Some(l) => Ok(Peer::wrap((), l.local_addr()?).1),
            None => Err(std::io::Error::other("listener closed")),
        }
    }
}

impl Gateway {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// The TLS listener's address, when there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until `signal` completes, then shuts down gracefully within 10 s.
    pub async fn run(self, signal: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Gateway { listener, tls, router, shutdown, .. } = self;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (tls_stop_tx, tls_stop_rx) = tokio::sync::watch::channel(false);
        let tls_server = match tls {
            Some((tcp, certs)) => {
                spawn_reload_on_sighup(certs.clone());
                let listener = crate::front::tls::TlsListener::new(tcp, certs).context("TLS listener")?;
                let mut stop = tls_stop_rx;
                let server =
                    axum::serve(listener.tap_io(|_| {}), router.clone().into_make_service_with_connect_info::<Peer>())
                        .with_graceful_shutdown(async move {
                            let _ = stop.wait_for(|s| *s).await;
                        });
                Some(tokio::spawn(async move { server.await }))
            }
            None => None,
        };
        let (close_tx, close_rx) = tokio::sync::watch::channel(false);
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        let listener = ClosingListener { inner: Some(listener), close: close_rx, closed: Some(closed_tx) };
        let server = axum::serve(listener.tap_io(|_| {}), router.into_make_service_with_connect_info::<Peer>())
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            });
        let mut server = tokio::spawn(async move { server.await });
        tokio::select! {
            res = &mut server => return res.context("server task")?.context("server"),
            _ = signal => {}
        }
        // Stop accepting first (SPEC §1): the listener closes before any client hears of the
        // shutdown, so a client reconnecting at once is refused here and goes to another node.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_BUDGET;
        let _ = close_tx.send(true);
        let _ = tls_stop_tx.send(true);
        let _ = tokio::time::timeout_at(deadline, closed_rx).await;
        tracing::info!("shutting down: listener closed, notifying clients");
        let _ = stop_tx.send(());
        if tokio::time::timeout_at(deadline, shutdown()).await.is_err() {
            tracing::warn!("closing transports took too long; exiting anyway");
        }
        match tokio::time::timeout_at(deadline, server).await {
            Ok(res) => res.context("server task")?.context("server")?,
            Err(_) => tracing::warn!("connections still open at the deadline; exiting anyway"),
        }
        if let Some(tls) = tls_server {
            if tokio::time::timeout_at(deadline, tls).await.is_err() {
                tracing::warn!("TLS connections still open at the deadline; exiting anyway");
            }
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// SIGHUP reloads the TLS certificate pair.
fn spawn_reload_on_sighup(certs: Arc<crate::front::tls::Certs>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("SIGHUP cannot be caught: TLS certificates will not reload");
            return;
        };
        while hup.recv().await.is_some() {
            certs.reload();
        }
    });
    #[cfg(not(unix))]
    let _ = certs;
}

/// The channel history: in Redis when there is one (one node appends, see `sequence.rs`), else in
/// memory; none with `CHANNEL_HISTORY_SIZE=0`.
pub fn publications(
    config: &Config,
    redis: Option<&Arc<RedisLink>>,
    node_id: &str,
    policy: &Policy,
) -> crate::app::publications::Publications {
    use crate::storage::history::{memory::MemoryHistory, redis::RedisHistory, History, HistoryLimits};
    let limits = HistoryLimits {
        size: config.channel_history_size as usize,
        ttl_ms: config.channel_history_ttl_secs.saturating_mul(1000),
    };
    match (limits.size, redis) {
        (0, _) => crate::app::publications::Publications::new(None, None),
        (_, Some(link)) => {
            let history = Arc::new(RedisHistory::new(link.clone(), &config.redis_prefix, limits));
            let token = format!("{}:{}", node_id, crate::storage::history::new_epoch());
            let known = policy.clone();
            let sequencer =
                crate::app::sequence::Sequencer::new(history.clone(), token, crate::app::sequence::LEASE_MS)
                    .knowing(move |channel| known.publishable(channel));
            crate::app::publications::Publications::new(Some(history as Arc<dyn History>), Some(sequencer))
        }
        (_, None) => crate::app::publications::Publications::new(Some(Arc::new(MemoryHistory::new(limits))), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;

    /// Every accepted connection has Nagle off: with it on, a small write waits behind an earlier
    /// unacknowledged one until the client's delayed ACK (~40 ms), the p99 of every fan-out.
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let tcp = bind("127.0.0.1", 0, 16).await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let (_close_tx, close) = tokio::sync::watch::channel(false);
        let mut listener = ClosingListener { inner: Some(tcp), close, closed: None };
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (io, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await.expect("accepted");
        assert!(io.get_ref().nodelay().expect("nodelay readable"), "TCP_NODELAY is off on an accepted connection");
        drop(client);
    }
}
