//! Builds the whole gateway (router, Socket.IO server, background tasks) for `main` and the tests.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;
use socketioxide::SocketIo;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::policy::Policy;
use crate::state::AppState;

/// A bound, ready gateway. `run` serves it until the shutdown signal.
pub struct Gateway {
    listener: TcpListener,
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
    let cors = crate::http::cors(&config.cors_origins)?;
    let state = AppState::new(config, auth, policy);
    let cfg = &state.config;

    let (layer, io) = SocketIo::builder()
        .with_state(state.clone())
        .max_payload(cfg.max_payload_bytes)
        .ping_interval(cfg.ping_interval())
        .ping_timeout(cfg.ping_timeout())
        .build_layer();
    crate::events::register_local(&io, &state);
    let sweeper = crate::events::spawn_expiry_sweeper(io.clone(), state.clone());

    let router = crate::http::router(state.clone()).layer(layer).layer(cors);

    let addr: SocketAddr = format!("{}:{}", cfg.host, cfg.port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (cfg.host.as_str(), cfg.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .context("HOST: not an address")
        })
        .with_context(|| format!("HOST/PORT: cannot use {}:{}", cfg.host, cfg.port))?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;

    let shutdown = Box::new(move || -> BoxFuture<'static, ()> {
        Box::pin(async move {
            sweeper.abort();
            // Tell every client first, then close transports (not a Socket.IO disconnect), so
            // socket.io clients see `transport close` and reconnect by themselves.
            let notice = serde_json::json!({ "reason": "shutdown", "timestamp": crate::iso_now() });
            if let Err(e) = io.emit("server-shutdown", &notice).await {
                tracing::warn!("server-shutdown not sent to every socket: {e}");
            }
            io.close().await;
        })
    });
    Ok(Gateway {
        listener,
        router,
        state,
        shutdown,
    })
}

impl Gateway {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `signal` completes, then shuts down gracefully within 10 s.
    pub async fn run(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Gateway {
            listener,
            router,
            shutdown,
            ..
        } = self;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop_rx.await;
        });
        let mut server = tokio::spawn(async move { server.await });
        tokio::select! {
            res = &mut server => return res.context("server task")?.context("server"),
            _ = signal => {}
        }
        tracing::info!("shutting down: notifying clients");
        let deadline = tokio::time::Instant::now() + SHUTDOWN_BUDGET;
        if tokio::time::timeout_at(deadline, shutdown()).await.is_err() {
            tracing::warn!("closing transports took too long; exiting anyway");
        }
        let _ = stop_tx.send(());
        match tokio::time::timeout_at(deadline, server).await {
            Ok(res) => res.context("server task")?.context("server")?,
            Err(_) => tracing::warn!("connections still open at the deadline; exiting anyway"),
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}
