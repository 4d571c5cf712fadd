//! The node's link to Redis: a self-reconnecting connection for commands and publishes, and the
//! up/down flag that `/health` and `/metrics` report.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncCommands, ConnectionAddr, IntoConnectionInfo, ProtocolVersion, TlsCertificates, TlsMode};

use crate::config::Config;

/// Where Redis runs (SPEC §9): one endpoint, or a master found through Sentinel.
#[derive(Clone, Debug)]
pub enum Mode {
    Single,
    Sentinel { sentinels: Vec<String>, master: String },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Sentinel { .. } => "sentinel",
        }
    }
}

/// The Redis server this node talks to now: replaced as a whole when Sentinel names another master.
struct Endpoint {
    client: redis::Client,
    conn: ConnectionManager,
    /// `host:port` (for `/health`).
    addr: String,
}

pub struct RedisLink {
    mode: Mode,
    /// `REDIS_CA_FILE`'s PEM, trusted for every TLS connection to Redis.
    ca: Option<Vec<u8>>,
    now: RwLock<Endpoint>,
    /// Bumped when the master changes: pub/sub connections (ingress, adapter) and blocking readers
    /// (webhooks) reconnect to the new one at once instead of waiting out their backoff.
    changed: tokio::sync::watch::Sender<u64>,
    /// When a failover was last followed (ISO 8601).
    last_failover: Mutex<Option<String>>,
    /// Confirmed reachable (for `/health`): false until the first success.
    up: AtomicBool,
    /// Seen failing and not yet back: requests fail fast instead of each waiting out a reconnect;
    /// the heartbeat keeps probing and clears it.
    down: AtomicBool,
    /// The ingress subscriber is subscribed (`/health` says `up` only then).
    ingress: AtomicBool,
}

/// How long a connection attempt may take before the node treats Redis as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn manager(client: redis::Client) -> anyhow::Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client, config).context("redis: cannot set up the connection")
}

/// `host:port` of a connection address.
fn addr_of(info: &redis::ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(h, p) => format!("{h}:{p}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
        other => other.to_string(),
    }
}

/// A start-up error that names TLS when the handshake is what failed (an untrusted certificate,
/// a wrong host name, a server that does not speak TLS).
fn is_tls_error(e: &redis::RedisError) -> bool {
    let text = format!("{e:?} {e}").to_ascii_lowercase();
    ["certificate", "tls", "handshake", "unknownissuer", "notvalidforname"].iter().any(|w| text.contains(w))
}

/// Each entry of `REDIS_SENTINELS` as a URL: `host:port` becomes `redis://host:port`.
fn sentinel_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| if s.contains("://") { s.to_string() } else { format!("redis://{s}") })
        .collect()
}

impl RedisLink {
    /// Opens lazily: an unreachable Redis at start-up is not an error, the node serves anyway.
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("REDIS_URL: not a valid Redis URL")?;
        Self::with_client(Mode::Single, None, client)
    }

    fn with_client(mode: Mode, ca: Option<Vec<u8>>, client: redis::Client) -> anyhow::Result<Self> {
        let addr = addr_of(client.get_connection_info());
        let conn = manager(client.clone())?;
        Ok(Self {
            mode,
            ca,
            now: RwLock::new(Endpoint { client, conn, addr }),
            changed: tokio::sync::watch::channel(0).0,
            last_failover: Mutex::new(None),
            up: AtomicBool::new(false),
            down: AtomicBool::new(false),
            ingress: AtomicBool::new(false),
        })
    }

    /// The link the settings ask for, or none without Redis. Contradicting settings, a CA file that
    /// does not load and a TLS handshake that fails stop the start; an unreachable Redis does not.
    pub async fn from_config(config: &Config) -> anyhow::Result<Option<Arc<Self>>> {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        let modes: Vec<&str> = [
            ("REDIS_URL", set(&config.redis_url)),
            ("REDIS_SENTINELS", set(&config.redis_sentinels)),
            ("REDIS_CLUSTER_NODES", set(&config.redis_cluster_nodes)),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| name)
        .collect();
        if modes.len() > 1 {
            anyhow::bail!("{} are both set: choose one way to reach Redis", modes.join(" and "));
        }
        let ca = match &config.redis_ca_file {
            Some(path) => {
                let pem =
                    std::fs::read(path).with_context(|| format!("REDIS_CA_FILE: cannot read {}", path.display()))?;
                let certs =
                    <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(&pem)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| anyhow::anyhow!("REDIS_CA_FILE: not PEM certificates: {e}"))?;
                if certs.is_empty() {
                    anyhow::bail!("REDIS_CA_FILE: no certificate in {}", path.display());
                }
                Some(pem)
            }
            None => None,
        };
        let link = match modes.first() {
            None => return Ok(None),
            Some(&"REDIS_CLUSTER_NODES") => {
                anyhow::bail!("REDIS_CLUSTER_NODES: Redis Cluster is not supported by this build; use REDIS_URL or REDIS_SENTINELS")
            }
            Some(&"REDIS_URL") => {
                let url = config.redis_url.as_deref().unwrap_or_default().trim();
                let client = match &ca {
                    Some(pem) => redis::Client::build_with_tls(url, certificates(pem)),
                    None => redis::Client::open(url),
                }
                .context("REDIS_URL: not a valid Redis URL")?;
                let link = Self::with_client(Mode::Single, ca, client)?;
                if link.is_tls() {
                    link.check_tls("REDIS_URL").await?;
                }
                link
            }
            Some(_) => {
                let sentinels = sentinel_urls(config.redis_sentinels.as_deref().unwrap_or_default());
                let master = config.redis_sentinel_master.clone();
                let mode = Mode::Sentinel { sentinels: sentinels.clone(), master: master.clone() };
                let mut lookup = Lookup::new(&sentinels, &master, ca.as_deref())?;
                let client = match tokio::time::timeout(Duration::from_secs(5), lookup.master()).await {
                    Ok(Ok(client)) => client,
                    Ok(Err(e)) if is_tls_error(&e) => {
                        anyhow::bail!("REDIS_SENTINELS: TLS: the connection to a sentinel or the master failed: {e}")
                    }
                    failed => {
                        // Serve anyway: the watcher keeps asking the sentinels; until a master is
                        // found, commands go to the first sentinel and fail, and the node is degraded.
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".into(),
                        };
                        tracing::warn!("REDIS_SENTINELS: no master '{master}' found yet: {why}");
                        redis::Client::open(lookup.fallback()?)?
                    }
                };
                let link = Self::with_client(mode, ca, client)?;
                link
            }
        };
        let link = Arc::new(link);
        if let Mode::Sentinel { sentinels, master } = &link.mode {
            let lookup = Lookup::new(sentinels, master, link.ca.as_deref())?;
            tokio::spawn(watch_sentinels(Arc::downgrade(&link), lookup));
        }
        Ok(Some(link))
    }

    fn is_tls(&self) -> bool {
        matches!(self.client().get_connection_info().addr(), ConnectionAddr::TcpTls { .. })
    }

    /// Connects once: a certificate that does not verify is an error now, not a node that stays
    /// degraded for ever. A Redis that is merely unreachable is left to the reconnects.
    async fn check_tls(&self, setting: &str) -> anyhow::Result<()> {
        let client = self.client();
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_multiplexed_async_connection()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if is_tls_error(&e) => {
                anyhow::bail!("{setting}: TLS: cannot connect to Redis at {}: {e}", self.master())
            }
            Ok(Err(e)) => {
                tracing::warn!("redis not reachable at start ({e}); serving anyway");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("redis: no TLS session within {:?} at start; serving anyway", CONNECT_TIMEOUT * 2);
                Ok(())
            }
        }
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// `host:port` of the Redis server (the master) in use.
    pub fn master(&self) -> String {
        self.now.read().unwrap_or_else(|e| e.into_inner()).addr.clone()
    }

    /// When this node last followed a failover (ISO 8601), if ever.
    pub fn last_failover(&self) -> Option<String> {
        self.last_failover.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A client for the current server (for connections of one's own: pub/sub, blocking reads).
    pub fn client(&self) -> redis::Client {
        self.now.read().unwrap_or_else(|e| e.into_inner()).client.clone()
    }

    /// The same server with RESP3: pub/sub pushes on a multiplexed connection need it.
    pub fn resp3_client(&self) -> redis::RedisResult<redis::Client> {
        let info = self.client().get_connection_info().clone();
        let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        redis::Client::open(info.set_redis_settings(settings))
    }

    /// The shared command connection (reconnecting by itself).
    pub fn conn(&self) -> ConnectionManager {
        self.now.read().unwrap_or_else(|e| e.into_inner()).conn.clone()
    }

    /// Wakes up when the master changes.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Points every new command at `client` and tells the pub/sub connections to move.
    fn switch(&self, client: redis::Client) -> anyhow::Result<()> {
        let addr = addr_of(client.get_connection_info());
        let conn = manager(client.clone())?;
        let old = std::mem::replace(
            &mut *self.now.write().unwrap_or_else(|e| e.into_inner()),
            Endpoint { client, conn, addr: addr.clone() },
        );
        *self.last_failover.lock().unwrap_or_else(|e| e.into_inner()) = Some(crate::iso_now());
        tracing::warn!(from = old.addr, to = addr, "redis: the sentinels name a new master; following it");
        self.changed.send_modify(|n| *n += 1);
        // The sentinels' answer was checked against the server's own ROLE: it is up.
        self.set_up(true);
        Ok(())
    }
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Reachable and the ingress subscribed: what `/health` calls `up`.
    pub fn is_serving(&self) -> bool {
        self.is_up() && self.ingress.load(Ordering::Relaxed)
    }

    pub fn set_ingress(&self, subscribed: bool) {
        self.ingress.store(subscribed, Ordering::Relaxed);
    }

    /// True while Redis is known to be unreachable: skip it rather than wait.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Which server the link is on: changes with each failover followed.
    pub fn generation(&self) -> u64 {
        *self.changed.borrow()
    }

    /// A heartbeat's result, ignored when it was started against a master since left behind (a
    /// beat to the dead master that ends after the switch must not mark the new one down).
    pub fn beat(&self, generation: u64, up: bool) {
        if up || generation == self.generation() {
            self.set_up(up);
        }
    }

    /// Set by the heartbeat alone (and the ingress when it subscribes): one failed request elsewhere
    /// must not switch the whole node to "down".
    pub fn set_up(&self, up: bool) {
        self.down.store(!up, Ordering::Relaxed);
        let was = self.up.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!("redis is up");
            } else {
                tracing::warn!("redis is down: serving local sockets only until it is back");
            }
        }
    }

    pub async fn publish(&self, channel: &str, payload: String) -> anyhow::Result<()> {
        if self.is_down() {
            anyhow::bail!("redis is down");
        }
        let mut conn = self.conn();
        let res: redis::RedisResult<i64> = conn.publish(channel, payload).await;
        res.map(|_| ()).context("redis publish")
    }
}

/// A command connection that retries a command once when the connection was found dropped: after a
/// Redis restart the first command on a [`ConnectionManager`] fails with a broken pipe (it was never
/// executed) while the manager reconnects; the retry waits for the new connection. Other errors
/// (timeouts, script errors) are not retried, so nothing that may have run is run twice.
#[derive(Clone)]
pub struct RetryConn(pub ConnectionManager);

fn dropped(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() || e.is_connection_refusal()
}

impl redis::aio::ConnectionLike for RetryConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            match self.0.req_packed_command(cmd).await {
                Err(e) if dropped(&e) => self.0.req_packed_command(cmd).await,
                r => r,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            match self.0.req_packed_commands(pipeline, offset, count).await {
                Err(e) if dropped(&e) => self.0.req_packed_commands(pipeline, offset, count).await,
                r => r,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

impl RedisLink {
    /// A command connection that survives a Redis restart (see [`RetryConn`]).
    pub fn commands(&self) -> RetryConn {
        RetryConn(self.conn())
    }
}

fn certificates(ca: &[u8]) -> TlsCertificates {
    TlsCertificates { client_tls: None, root_cert: Some(ca.to_vec()) }
}

/// Asks the sentinels for the master (redis-rs's `SentinelClient`), with `REDIS_CA_FILE` trusted.
struct Lookup {
    client: SentinelClient,
    first: redis::ConnectionInfo,
}

impl Lookup {
    /// The master is reached like the sentinels: over TLS when they are (`rediss://`), with the
    /// password of the first entry that has one.
    fn new(sentinels: &[String], master: &str, ca: Option<&[u8]>) -> anyhow::Result<Self> {
        let infos = sentinels
            .iter()
            .map(|u| u.as_str().into_connection_info())
            .collect::<redis::RedisResult<Vec<_>>>()
            .context("REDIS_SENTINELS: not a list of host:port or redis[s]:// URLs")?;
        let first = infos.first().cloned().context("REDIS_SENTINELS: no sentinel given")?;
        let tls = infos.iter().any(|i| matches!(i.addr(), ConnectionAddr::TcpTls { .. }));
        let mut b =
            SentinelClientBuilder::new(infos.iter().map(|i| i.addr().clone()), master, SentinelServerType::Master)
                .context("REDIS_SENTINELS")?;
        if let Some(p) = infos.iter().find_map(|i| i.redis_settings().password()) {
            b = b.set_client_to_sentinel_password(p).set_client_to_redis_password(p);
        }
        if tls {
            b = b.set_client_to_redis_tls_mode(TlsMode::Secure);
            if let Some(pem) = ca {
                b = b
                    .set_client_to_sentinel_certificates(certificates(pem))
                    .set_client_to_redis_certificates(certificates(pem));
            }
        }
        Ok(Self { client: b.build().context("REDIS_SENTINELS")?, first })
    }

    async fn master(&mut self) -> redis::RedisResult<redis::Client> {
        self.client.async_get_client().await
    }

    /// Where commands go until a master is known: they fail there, and the node reports `degraded`.
    fn fallback(&self) -> anyhow::Result<redis::ConnectionInfo> {
        Ok(self.first.clone())
    }
}

/// Asks the sentinels every half second which server is the master and follows it when it moves.
/// (A failover's `+switch-master` would say so too, but a poll also finds a change made while this
/// node could not hear the sentinels.)
async fn watch_sentinels(link: std::sync::Weak<RedisLink>, mut lookup: Lookup) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let found = tokio::time::timeout(Duration::from_secs(3), lookup.master()).await;
        let Some(link) = link.upgrade() else { return };
        match found {
            Ok(Ok(client)) => {
                if addr_of(client.get_connection_info()) != link.master() {
                    if let Err(e) = link.switch(client) {
                        tracing::warn!("redis: cannot follow the new master: {e:#}");
                    }
                }
            }
            Ok(Err(e)) => tracing::debug!("sentinels: no master yet: {e}"),
            Err(_) => tracing::debug!("sentinels: no answer within 3 s"),
        }
    }
}
