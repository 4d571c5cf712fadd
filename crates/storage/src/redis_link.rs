//! The node's link to Redis: a self-reconnecting connection for commands and publishes, and the
//! up/down flag that `/health` and `/metrics` report.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncCommands, ConnectionAddr, FromRedisValue, IntoConnectionInfo, ProtocolVersion, TlsCertificates, TlsMode,
};

use rtg_model::config::Config;

/// Where Redis runs (SPEC §9): one endpoint, a master found through Sentinel, or Redis Cluster.
#[derive(Clone, Debug)]
pub enum Mode {
    Single,
    Sentinel { sentinels: Vec<String>, master: String },
    Cluster { nodes: Vec<String> },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Sentinel { .. } => "sentinel",
            Mode::Cluster { .. } => "cluster",
        }
    }
}

/// The Redis server this node talks to now: replaced as a whole when Sentinel names another master.
struct Endpoint {
    client: redis::Client,
    conn: Conn,
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
    /// Bumped each time Redis is back after being seen down: subscriptions that a reconnection could
    /// not restore (a cluster still forming refuses `SSUBSCRIBE`) are made again.
    back: tokio::sync::watch::Sender<u64>,
    /// When a failover was last followed (ISO 8601).
    last_failover: Mutex<Option<String>>,
    /// Confirmed reachable (for `/health`): false until the first success.
    up: AtomicBool,
    /// Seen failing and not yet back: requests fail fast instead of each waiting out a reconnect;
    /// the heartbeat keeps probing and clears it.
    down: AtomicBool,
    /// The ingress subscriber is subscribed (`/health` says `up` only then).
    ingress: AtomicBool,
    /// Redis Cluster: the client for connections of one's own, one client per listed node (the
    /// ingress moves to the next when its node fails) and the shard count seen last.
    cluster: Option<ClusterSide>,
}

struct ClusterSide {
    client: ClusterClient,
    infos: Vec<redis::ConnectionInfo>,
    nodes: Vec<redis::Client>,
    route: SingleNodeRoutingInfo,
    tag: String,
    shards: std::sync::atomic::AtomicUsize,
}

/// How long a connection attempt may take before the node treats Redis as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The reconnecting command connection, over RESP3: the server's end of a connection then reaches the
/// manager as a push, and it connects again at once, so that a command issued after a Redis restart waits
/// for the new connection instead of failing on the dead one (see [`RetryConn`]).
fn manager(client: redis::Client) -> anyhow::Result<ConnectionManager> {
    let info = client.get_connection_info().clone();
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings)).context("redis: RESP3 connection")?;
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
        let conn = Conn::Single(manager(client.clone())?);
        Self::with_conn(mode, ca, client, conn, addr, None)
    }

    fn with_conn(
        mode: Mode,
        ca: Option<Vec<u8>>,
        client: redis::Client,
        conn: Conn,
        addr: String,
        cluster: Option<ClusterSide>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            mode,
            ca,
            now: RwLock::new(Endpoint { client, conn, addr }),
            changed: tokio::sync::watch::channel(0).0,
            back: tokio::sync::watch::channel(0).0,
            last_failover: Mutex::new(None),
            up: AtomicBool::new(false),
            down: AtomicBool::new(false),
            ingress: AtomicBool::new(false),
            cluster,
        })
    }

    /// Redis Cluster: every key of the gateway carries the hash tag `{<REDIS_PREFIX>}` (see
    /// `startup`), so all of them, and every multi-key script, live in one slot; every command goes to
    /// that slot's master. Pub/sub is what spreads: the adapter's channels are sharded (`SPUBLISH`).
    fn cluster(nodes: Vec<String>, prefix: &str, ca: Option<Vec<u8>>) -> anyhow::Result<Self> {
        let infos = nodes
            .iter()
            .map(|u| u.as_str().into_connection_info())
            .collect::<redis::RedisResult<Vec<_>>>()
            .context("REDIS_CLUSTER_NODES: not a list of host:port or redis[s]:// URLs")?;
        let client = cluster_builder(&infos, ca.as_deref()).build().context("REDIS_CLUSTER_NODES")?;
        let clients = infos
            .iter()
            .map(|i| match &ca {
                Some(pem) => redis::Client::build_with_tls(i.clone(), certificates(pem)),
                None => redis::Client::open(i.clone()),
            })
            .collect::<redis::RedisResult<Vec<_>>>()
            .context("REDIS_CLUSTER_NODES")?;
        let first = clients.first().cloned().context("REDIS_CLUSTER_NODES: no node given")?;
        let tag = format!("{{{prefix}}}");
        let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(&tag, SlotAddr::Master));
        let pending = client.get_pending_async_connection_with_config(
            ClusterConfig::new().set_connection_timeout(CONNECT_TIMEOUT).set_response_timeout(Duration::from_secs(5)),
        );
        let conn = Conn::Cluster(ClusterConn { conn: pending, route: route.clone() });
        let side =
            ClusterSide { client, infos, nodes: clients, route, tag, shards: std::sync::atomic::AtomicUsize::new(0) };
        Self::with_conn(Mode::Cluster { nodes }, ca, first, conn, String::new(), Some(side))
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
                let nodes = sentinel_urls(config.redis_cluster_nodes.as_deref().unwrap_or_default());
                let link = Self::cluster(nodes, &config.redis_prefix, ca)?;
                if link.is_tls() {
                    link.check_tls("REDIS_CLUSTER_NODES").await?;
                }
                link
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
                Self::with_client(mode, ca, client)?
            }
        };
        let link = Arc::new(link);
        if let Mode::Sentinel { sentinels, master } = &link.mode {
            let lookup = Lookup::new(sentinels, master, link.ca.as_deref())?;
            tokio::spawn(watch_sentinels(Arc::downgrade(&link), lookup));
        }
        if link.cluster.is_some() {
            tokio::spawn(watch_cluster(Arc::downgrade(&link)));
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

    /// `host:port` of the Redis server (the master) in use; in a cluster, the master of the gateway's
    /// keys.
    pub fn master(&self) -> String {
        self.now.read().unwrap_or_else(|e| e.into_inner()).addr.clone()
    }

    /// When this node last followed a failover (ISO 8601), if ever.
    pub fn last_failover(&self) -> Option<String> {
        self.last_failover.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Redis Cluster: how many shards (masters) the cluster has, when known.
    pub fn shards(&self) -> Option<usize> {
        self.cluster.as_ref().map(|c| c.shards.load(Ordering::Relaxed))
    }

    /// The client for a pub/sub connection of one's own: the current server, or in a cluster (whose
    /// classic pub/sub reaches every node) the `attempt`-th listed node, so that a failed node is
    /// left for the next.
    pub fn pubsub_client(&self, attempt: usize) -> redis::Client {
        match &self.cluster {
            Some(c) if !c.nodes.is_empty() => c.nodes[attempt % c.nodes.len()].clone(),
            _ => self.client(),
        }
    }

    /// A connection of its own for blocking reads (`XREADGROUP ... BLOCK`), to the server (or the
    /// cluster master) that holds the gateway's keys.
    pub async fn blocking_conn(&self) -> redis::RedisResult<Conn> {
        match &self.cluster {
            Some(c) => {
                Ok(Conn::Cluster(ClusterConn { conn: c.client.get_async_connection().await?, route: c.route.clone() }))
            }
            None => Ok(Conn::Plain(self.client().get_multiplexed_async_connection().await?)),
        }
    }

    /// Redis Cluster: a client whose connections push (RESP3) to `push`, for the adapter's sharded
    /// pub/sub.
    pub fn cluster_push_client(
        &self,
        push: impl redis::aio::AsyncPushSender,
    ) -> Option<redis::RedisResult<ClusterClient>> {
        let c = self.cluster.as_ref()?;
        Some(
            cluster_builder(&c.infos, self.ca.as_deref())
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(push)
                .build(),
        )
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
    pub fn conn(&self) -> Conn {
        self.now.read().unwrap_or_else(|e| e.into_inner()).conn.clone()
    }

    /// Wakes up when the master changes.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes up each time Redis is back after being seen down.
    pub fn comebacks(&self) -> tokio::sync::watch::Receiver<u64> {
        self.back.subscribe()
    }

    /// Points every new command at `client` and tells the pub/sub connections to move.
    fn switch(&self, client: redis::Client) -> anyhow::Result<()> {
        let addr = addr_of(client.get_connection_info());
        let conn = Conn::Single(manager(client.clone())?);
        let old = std::mem::replace(
            &mut *self.now.write().unwrap_or_else(|e| e.into_inner()),
            Endpoint { client, conn, addr: addr.clone() },
        );
        *self.last_failover.lock().unwrap_or_else(|e| e.into_inner()) = Some(rtg_model::clock::iso_now());
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
                self.back.send_modify(|n| *n += 1);
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

/// A command connection that retries a command once when it provably never reached Redis (see
/// `never_sent`): after a Redis restart the manager's first reconnection may have been refused while
/// Redis was down, and the command that waited for it is sent again on the next one. A dead connection
/// itself does not fail the next command: over RESP3 the manager replaces it as soon as it ends (see
/// `manager`). A failure that may have come after Redis ran the command (a connection ending while
/// the reply was awaited, a timeout, a script error) is returned as it is: nothing that may have run is
/// run twice.
#[derive(Clone)]
pub struct RetryConn(pub Conn);

/// A command connection: to one server (reconnecting, or plain for blocking reads of one's own), or
/// to a Redis Cluster.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Plain(MultiplexedConnection),
    Cluster(ClusterConn),
}

/// A cluster connection that sends every command and pipeline to the master of the gateway's slot
/// (the keys' hash tag): scripts that compute key names from their arguments, `SCRIPT LOAD` and
/// `PUBLISH` (which a cluster carries to every node) included.
#[derive(Clone)]
pub struct ClusterConn {
    conn: ClusterConnection,
    route: SingleNodeRoutingInfo,
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => Box::pin(c.conn.route_command(cmd.clone(), RoutingInfo::SingleNode(c.route.clone()))),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => Box::pin(c.conn.route_pipeline(pipeline.clone(), offset, count, c.route.clone())),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

/// Did the command fail before Redis could run it? Only a refused connection says so: redis-rs reports a
/// connection that ended the same way ("broken pipe") whether Redis ran the command before the end or
/// not, and a timeout may come after Redis ran it too. Those are not retried, so that a non-idempotent
/// command (an append, a counter) never runs twice; they fail to the caller ("Storage unavailable").
fn never_sent(e: &redis::RedisError) -> bool {
    e.is_connection_refusal()
}

impl redis::aio::ConnectionLike for RetryConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            match self.0.req_packed_command(cmd).await {
                Err(e) if never_sent(&e) => self.0.req_packed_command(cmd).await,
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
                Err(e) if never_sent(&e) => self.0.req_packed_commands(pipeline, offset, count).await,
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

fn cluster_builder(infos: &[redis::ConnectionInfo], ca: Option<&[u8]>) -> ClusterClientBuilder {
    let builder = ClusterClientBuilder::new(infos.to_vec())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(Duration::from_secs(5));
    match ca {
        Some(pem) => builder.certs(certificates(pem)),
        None => builder,
    }
}

fn certificates(ca: &[u8]) -> TlsCertificates {
    TlsCertificates { client_tls: None, root_cert: Some(ca.to_vec()) }
}

/// Asks the sentinels for the master (redis-rs's `SentinelClient`), with `REDIS_CA_FILE` trusted.
struct Lookup {
    client: SentinelClient,
    first: redis::ConnectionInfo,
    /// For the cheap poll: one client per sentinel, the connection to the one that answered last.
    sentinels: Vec<redis::Client>,
    name: String,
    asking: Option<(usize, MultiplexedConnection)>,
    last: usize,
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
        let sentinels = infos
            .iter()
            .map(|i| match ca {
                Some(pem) => redis::Client::build_with_tls(i.clone(), certificates(pem)),
                None => redis::Client::open(i.clone()),
            })
            .collect::<redis::RedisResult<Vec<_>>>()
            .context("REDIS_SENTINELS")?;
        Ok(Self {
            client: b.build().context("REDIS_SENTINELS")?,
            first,
            sentinels,
            name: master.to_string(),
            asking: None,
            last: 0,
        })
    }

    /// `host:port` of the master as a sentinel names it (`SENTINEL GET-MASTER-ADDR-BY-NAME`), on a
    /// connection kept to one sentinel (the next one after a failure). Cheap enough to ask twice a
    /// second; the full lookup, which also checks the server's `ROLE`, runs only when it changes.
    async fn named(&mut self) -> Option<String> {
        for _ in 0..self.sentinels.len() {
            let (i, conn) = match self.asking.take() {
                Some(a) => a,
                None => {
                    let i = self.next_sentinel();
                    let conn =
                        tokio::time::timeout(CONNECT_TIMEOUT, self.sentinels[i].get_multiplexed_async_connection());
                    match conn.await {
                        Ok(Ok(c)) => (i, c),
                        _ => continue,
                    }
                }
            };
            let mut c = conn.clone();
            let mut cmd = redis::cmd("SENTINEL");
            cmd.arg("GET-MASTER-ADDR-BY-NAME").arg(&self.name);
            let asked = tokio::time::timeout(CONNECT_TIMEOUT, cmd.query_async::<Option<(String, u16)>>(&mut c)).await;
            if let Ok(Ok(Some((host, port)))) = asked {
                self.asking = Some((i, conn));
                return Some(format!("{host}:{port}"));
            }
            self.last = i;
        }
        None
    }

    fn next_sentinel(&mut self) -> usize {
        self.last = (self.last + 1) % self.sentinels.len();
        self.last
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
async fn watch_sentinels(weak: std::sync::Weak<RedisLink>, mut lookup: Lookup) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let named = lookup.named().await;
        let Some(link) = weak.upgrade() else { return };
        if named.is_some_and(|m| m == link.master()) {
            continue;
        }
        drop(link);
        // Another master named (or no sentinel answered): the full lookup, checked against ROLE.
        let found = tokio::time::timeout(Duration::from_secs(3), lookup.master()).await;
        let Some(link) = weak.upgrade() else { return };
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

/// Redis Cluster: every 2 s, which master holds the gateway's slot and how many shards there are;
/// a change of that master is a failover followed (the cluster client itself follows it, on the
/// first `MOVED` or failed connection).
async fn watch_cluster(link: std::sync::Weak<RedisLink>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(link) = link.upgrade() else { return };
        let Some(side) = &link.cluster else { return };
        let mut conn = link.conn();
        let slot: redis::RedisResult<i64> =
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(&side.tag).query_async(&mut conn).await;
        let slots: redis::RedisResult<Vec<Vec<redis::Value>>> =
            redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn).await;
        let (Ok(slot), Ok(slots)) = (slot, slots) else { continue };
        let mut masters = std::collections::HashSet::new();
        let mut ours = None;
        for range in &slots {
            let (Some(start), Some(end), Some(master)) = (range.first(), range.get(1), range.get(2)) else { continue };
            let (Ok(start), Ok(end)) = (i64::from_redis_value_ref(start), i64::from_redis_value_ref(end)) else {
                continue;
            };
            // `[host, port, id, {metadata}?]`
            let Ok(fields) = Vec::<redis::Value>::from_redis_value_ref(master) else { continue };
            let (Some(Ok(host)), Some(Ok(port))) =
                (fields.first().map(String::from_redis_value_ref), fields.get(1).map(i64::from_redis_value_ref))
            else {
                continue;
            };
            let node = format!("{host}:{port}");
            if (start..=end).contains(&slot) {
                ours = Some(node.clone());
            }
            masters.insert(node);
        }
        side.shards.store(masters.len(), Ordering::Relaxed);
        if let Some(ours) = ours {
            let mut now = link.now.write().unwrap_or_else(|e| e.into_inner());
            if now.addr != ours {
                if !now.addr.is_empty() {
                    *link.last_failover.lock().unwrap_or_else(|e| e.into_inner()) = Some(rtg_model::clock::iso_now());
                    tracing::warn!(from = now.addr, to = ours, "redis cluster: the gateway's slot has a new master");
                }
                now.addr = ours;
            }
        }
    }
}

/// `<prefix>:<part>:<part>...`: a key of the gateway's own in Redis (`prefix` is `REDIS_PREFIX`, which
/// carries the hash tag in a Redis Cluster).
pub fn redis_key(prefix: &str, parts: &[&str]) -> String {
    let mut k = prefix.to_string();
    for p in parts {
        k.push(':');
        k.push_str(p);
    }
    k
}

#[cfg(test)]
mod tests {
    #[test]
    fn sentinel_entries_become_urls() {
        assert_eq!(
            super::sentinel_urls(" a:1, rediss://:pw@b:2 ,,"),
            vec!["redis://a:1".to_string(), "rediss://:pw@b:2".to_string()]
        );
    }
}
