//! The one shared state of a node, and the small per-socket session.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use governor::DefaultKeyedRateLimiter;

use crate::auth::Authenticator;
use crate::policy::Policy;
use rtg_model::config::Config;
use rtg_model::metrics::Metrics;
use rtg_model::session::{connect_quota, random_node_id, Counters, ExpiryQueue, Quotas};
use rtg_model::timers::Timers;
use rtg_storage::redis_link::RedisLink;
use rtg_storage::store::Store;

/// Everything a handler or route may need, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub auth: Arc<Authenticator>,
    pub policy: Policy,
    pub node_id: String,
    pub started: Instant,
    pub expiry: ExpiryQueue,
    pub counters: Arc<Counters>,
    pub metrics: Metrics,
    /// Set when `REDIS_URL` is.
    pub redis: Option<Arc<RedisLink>>,
    pub store: Arc<dyn Store>,
    pub timers: Timers,
    pub quotas: Quotas,
    /// Connections per IP address; `None` when `CONNECT_RATE_PER_IP=0`.
    pub connect_limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Who is typing where on this node: (room, user) → when the indicator stops unless renewed.
    pub typing: Mutex<HashMap<(String, String), Instant>>,
    /// The delivery path to every connected client, on every transport and node.
    pub hub: Arc<rtg_model::hub::Hub>,
    /// How many other nodes the cluster has (from the heartbeat); 0 without Redis.
    pub peers: Arc<std::sync::atomic::AtomicUsize>,
    /// The nodes' own channel (see `bus.rs`).
    pub bus: Arc<rtg_cluster::bus::Bus>,
    /// The event proxy, with `EVENT_PROXY_URL`.
    pub proxy: Option<Arc<crate::proxy::EventProxy>>,
    /// Lifecycle webhooks, with `WEBHOOK_URL`.
    pub webhooks: Option<Arc<crate::webhooks::Webhooks>>,
    /// Channel publications, their history and the subscriptions that recover from it.
    pub publications: crate::publications::Publications,
    /// Shared files: uploads in progress on this node, and the storage every node reads.
    pub files: rtg_storage::files::Files,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Queues a lifecycle webhook (`data` is built only when webhooks are on); `key` orders it (the user).
    pub fn hook(&self, kind: &str, key: &str, data: impl FnOnce() -> serde_json::Value) {
        if let Some(w) = &self.webhooks {
            w.send(kind, key, data());
        }
    }

    /// An emit of the REST API or of the event proxy's answer, to every node (see `delivery::send`).
    pub async fn send(
        &self,
        req: &crate::delivery::EmitRequest,
        target: &crate::delivery::Target,
    ) -> Result<crate::delivery::Scope, String> {
        crate::delivery::send(&self.metrics, self.redis.as_deref(), &self.hub, req, target).await
    }

    /// This node's figures plus every other live node's (`stats`, `/api/stats`).
    pub async fn cluster_stats(&self) -> rtg_cluster::liveness::ClusterStats {
        let own = rtg_model::stats::local_stats(&self.hub, &self.counters).await;
        rtg_cluster::liveness::cluster_stats(self.redis.as_deref(), &self.config.redis_prefix, &self.node_id, own).await
    }

    /// `<REDIS_PREFIX>:<part>:<part>...`: a key of the gateway's own in Redis.
    pub fn redis_key(&self, parts: &[&str]) -> String {
        rtg_storage::redis_link::redis_key(&self.config.redis_prefix, parts)
    }

    /// The state of a node from its parts, each built by `startup`.
    pub fn new(parts: Parts) -> Self {
        let Parts { config, auth, policy, redis, store, metrics, proxy, webhooks, publications, files } = parts;
        let node_id = config.node_id.clone().unwrap_or_else(random_node_id);
        let quotas = Quotas::from_config(&config);
        let connect_limiter = connect_quota(config.connect_rate_per_ip).map(DefaultKeyedRateLimiter::keyed);
        let peers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (redis_for_bus, prefix, node_id_for_bus) = (redis.clone(), config.redis_prefix.clone(), node_id.clone());
        AppState(Arc::new(Inner {
            config,
            auth,
            policy,
            node_id,
            started: Instant::now(),
            expiry: ExpiryQueue::default(),
            counters: Arc::new(Counters::default()),
            metrics,
            redis,
            store,
            timers: Timers::default(),
            quotas,
            connect_limiter,
            typing: Mutex::new(HashMap::new()),
            hub: Arc::new(rtg_model::hub::Hub::default()),
            peers: peers.clone(),
            bus: rtg_cluster::bus::Bus::new(redis_for_bus, format!("{}:bus", prefix), node_id_for_bus, peers),
            proxy,
            webhooks,
            publications,
            files,
        }))
    }
}

/// What [`AppState::new`] is given: the parts `startup` built.
pub struct Parts {
    pub config: Config,
    pub auth: Arc<Authenticator>,
    pub policy: Policy,
    pub redis: Option<Arc<RedisLink>>,
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    pub proxy: Option<Arc<crate::proxy::EventProxy>>,
    pub webhooks: Option<Arc<crate::webhooks::Webhooks>>,
    pub publications: crate::publications::Publications,
    pub files: rtg_storage::files::Files,
}
