//! The one shared state of a node, and the small per-socket session.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use governor::DefaultKeyedRateLimiter;

use crate::app::auth::Authenticator;
use crate::app::policy::Policy;
use crate::model::config::Config;
use crate::model::metrics::Metrics;
use crate::model::session::{connect_quota, random_node_id, Counters, ExpiryQueue, Quotas};
use crate::model::timers::Timers;
use crate::storage::redis_link::RedisLink;
use crate::storage::store::Store;

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
    pub hub: crate::model::hub::Hub,
    /// How many other nodes the cluster has (from the heartbeat); 0 without Redis.
    pub peers: Arc<std::sync::atomic::AtomicUsize>,
    /// The nodes' own channel (see `bus.rs`).
    pub bus: Arc<crate::cluster::bus::Bus>,
    /// The Socket.IO Admin UI, with `ADMIN_UI_PASSWORD`.
    pub admin: Option<Arc<crate::front::admin::Admin>>,
    /// The event proxy, with `EVENT_PROXY_URL`.
    pub proxy: Option<Arc<crate::app::proxy::EventProxy>>,
    /// Lifecycle webhooks, with `WEBHOOK_URL`.
    pub webhooks: Option<Arc<crate::app::webhooks::Webhooks>>,
    /// Channel publications, their history and the subscriptions that recover from it.
    pub publications: crate::app::publications::Publications,
    /// Shared files: uploads in progress on this node, and the storage every node reads.
    pub files: crate::storage::files::Files,
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

    /// `<REDIS_PREFIX>:<part>:<part>...`: a key of the gateway's own in Redis.
    pub fn redis_key(&self, parts: &[&str]) -> String {
        let mut k = self.config.redis_prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        auth: Arc<Authenticator>,
        policy: Policy,
        redis: Option<Arc<RedisLink>>,
        store: Arc<dyn Store>,
        admin: Option<Arc<crate::front::admin::Admin>>,
        proxy: Option<Arc<crate::app::proxy::EventProxy>>,
        files: crate::storage::files::Files,
    ) -> Self {
        let node_id = config.node_id.clone().unwrap_or_else(random_node_id);
        let quotas = Quotas::from_config(&config);
        let connect_limiter = connect_quota(config.connect_rate_per_ip).map(DefaultKeyedRateLimiter::keyed);
        let peers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (redis_for_bus, prefix, node_id_for_bus) = (redis.clone(), config.redis_prefix.clone(), node_id.clone());
        // Checked before (startup validates WEBHOOK_URL); a bad one here means no webhooks.
        let metrics = Metrics::new();
        let webhooks = crate::app::webhooks::Webhooks::from_config(&config, redis.clone(), &node_id, Some(&metrics))
            .ok()
            .flatten();
        let publications = publications(&config, redis.as_ref(), &node_id);
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
            hub: crate::model::hub::Hub::default(),
            peers: peers.clone(),
            bus: crate::cluster::bus::Bus::new(redis_for_bus, format!("{}:bus", prefix), node_id_for_bus, peers),
            admin,
            proxy,
            webhooks,
            publications,
            files,
        }))
    }
}

/// The channel history: in Redis when there is one (one node appends, see `sequence.rs`), else in
/// memory; none with `CHANNEL_HISTORY_SIZE=0`.
fn publications(
    config: &Config,
    redis: Option<&Arc<RedisLink>>,
    node_id: &str,
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
            let sequencer =
                crate::app::sequence::Sequencer::new(history.clone(), token, crate::app::sequence::LEASE_MS);
            crate::app::publications::Publications::new(Some(history as Arc<dyn History>), Some(sequencer))
        }
        (_, None) => crate::app::publications::Publications::new(Some(Arc::new(MemoryHistory::new(limits))), None),
    }
}
