//! The pub/sub transport of the socketioxide-redis adapter, on a self-healing Redis connection.
//!
//! socketioxide-redis's own driver holds one connection that never comes back after Redis restarts,
//! and its broadcast fails entirely (local sockets included) when a publish fails. This driver keeps
//! a redis-rs `ConnectionManager` that reconnects with backoff and resubscribes by itself, retries
//! subscriptions made while Redis is down, and degrades to this node alone while Redis is away: a
//! failed publish is logged and swallowed (the local part of a broadcast still happens) and the
//! server count falls back to this node (requests then answer from local sockets only).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterConfig;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncCommands, FromRedisValue, PushInfo, PushKind};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;

use rtg_storage::redis_link::RedisLink;

type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

#[derive(Clone)]
pub struct GatewayDriver {
    /// Replaced when the sentinels name a new master (see [`GatewayDriver::follow`]).
    conn: Arc<RwLock<PubSub>>,
    handlers: Handlers,
    link: Arc<RedisLink>,
}

#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct DriverError(#[from] redis::RedisError);

/// The adapter's connection: to one server, or to a Redis Cluster, where its channels are sharded
/// (`SPUBLISH`/`SSUBSCRIBE`): each lives on the shard its name hashes to, so the adapter's traffic
/// spreads over the masters instead of reaching every node of the cluster.
#[derive(Clone)]
enum PubSub {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A sharded channel's master.
fn shard_of(chan: &str) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(chan, SlotAddr::Master)))
}

impl PubSub {
    async fn subscribe(&mut self, chan: &str) -> redis::RedisResult<()> {
        match self {
            PubSub::Single(c) => c.subscribe(chan).await,
            PubSub::Cluster(c) => c.ssubscribe(chan).await,
        }
    }

    async fn unsubscribe(&mut self, chan: &str) -> redis::RedisResult<()> {
        match self {
            PubSub::Single(c) => c.unsubscribe(chan).await,
            PubSub::Cluster(c) => c.sunsubscribe(chan).await,
        }
    }

    async fn publish(&mut self, chan: &str, val: Vec<u8>) -> redis::RedisResult<redis::Value> {
        match self {
            PubSub::Single(c) => c.publish(chan, val).await,
            PubSub::Cluster(c) => {
                c.route_command(redis::cmd("SPUBLISH").arg(chan).arg(val).clone(), shard_of(chan)).await
            }
        }
    }

    /// How many nodes listen on `chan`.
    async fn listeners(&mut self, chan: &str) -> redis::RedisResult<u16> {
        let (_, n): (String, u16) = match self {
            PubSub::Single(c) => redis::cmd("PUBSUB").arg("NUMSUB").arg(chan).query_async(c).await?,
            PubSub::Cluster(c) => {
                let v =
                    c.route_command(redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(chan).clone(), shard_of(chan)).await?;
                redis::from_redis_value(v)?
            }
        };
        Ok(n)
    }
}

/// A RESP3 connection (pub/sub pushes on a multiplexed connection need it) to the link's current
/// server or cluster, whose pushes go to `handlers`.
fn push_manager(link: &RedisLink, handlers: &Handlers) -> redis::RedisResult<PubSub> {
    let sink = handlers.clone();
    if let Some(client) = link.cluster_push_client(move |msg: PushInfo| {
        route(msg, &sink);
        Ok::<(), std::convert::Infallible>(())
    }) {
        // Connects in the background: an unreachable cluster at start is not an error.
        let config = ClusterConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(5));
        return Ok(PubSub::Cluster(client?.get_pending_async_connection_with_config(config)));
    }
    let sink = handlers.clone();
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2))
        .set_push_sender(move |msg: PushInfo| {
            route(msg, &sink);
            Ok::<(), std::convert::Infallible>(())
        })
        .set_automatic_resubscription();
    Ok(PubSub::Single(ConnectionManager::new_lazy_with_config(link.resp3_client()?, config)?))
}

impl GatewayDriver {
    pub fn new(link: Arc<RedisLink>) -> anyhow::Result<Self> {
        let handlers: Handlers = Arc::default();
        let conn = Arc::new(RwLock::new(push_manager(&link, &handlers)?));
        let driver = Self { conn, handlers, link };
        tokio::spawn(driver.clone().follow());
        Ok(driver)
    }

    fn conn(&self) -> PubSub {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// After a failover, a fresh connection to the new master, subscribed to every channel the
    /// adapter listens to. (The old one is dropped: were the old master to come back as a replica,
    /// which receives every publish too, it would deliver each message twice.)
    ///
    /// And each time Redis is back after being down, every channel is subscribed again on the current
    /// connection: a reconnection restores the subscriptions it can, but a Redis Cluster still forming
    /// refuses `SSUBSCRIBE` (`CLUSTERDOWN`), and that subscription would be lost for good. Subscribing
    /// again to a channel one is subscribed to changes nothing. In a Redis Cluster this is also done every
    /// few seconds: a cluster restarted faster than the heartbeat can see it down is not seen coming back.
    async fn follow(self) {
        let mut moved = self.link.changes();
        let mut back = self.link.comebacks();
        let cluster = matches!(self.conn(), PubSub::Cluster(_));
        let mut again = tokio::time::interval(Duration::from_secs(5));
        again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = moved.changed() => if r.is_err() { return },
                _ = again.tick(), if cluster => {
                    let chans: Vec<String> =
                        self.handlers.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
                    for chan in chans {
                        if let Err(e) = self.conn().subscribe(chan.as_str()).await {
                            tracing::debug!(chan, "adapter: subscribing again: {e}");
                        }
                    }
                    continue;
                }
                r = back.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let chans: Vec<String> =
                        self.handlers.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
                    tracing::info!(channels = chans.len(), "adapter: redis is back, subscribing again");
                    for chan in chans {
                        self.subscribe_until_done(chan);
                    }
                    continue;
                }
            }
            match push_manager(&self.link, &self.handlers) {
                Ok(fresh) => {
                    *self.conn.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                    let chans: Vec<String> =
                        self.handlers.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
                    tracing::info!(channels = chans.len(), "adapter: resubscribing on the new master");
                    for chan in chans {
                        self.subscribe_until_done(chan);
                    }
                }
                Err(e) => tracing::warn!("adapter: cannot reach the new master: {e}"),
            }
        }
    }

    /// Subscribes, retrying in the background while Redis is unreachable; once subscribed, the
    /// connection manager resubscribes after every reconnect.
    fn subscribe_until_done(&self, chan: String) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                if !this.handlers.read().unwrap_or_else(|e| e.into_inner()).contains_key(&chan) {
                    return; // unsubscribed meanwhile
                }
                match this.conn().subscribe(chan.as_str()).await {
                    Ok(()) => return,
                    Err(e) => tracing::debug!(chan, "adapter subscribe: {e}; retrying"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    }
}

fn route(msg: PushInfo, handlers: &Handlers) {
    if !matches!(msg.kind, PushKind::Message | PushKind::SMessage) || msg.data.len() < 2 {
        return;
    }
    let mut it = msg.data.into_iter();
    let (Some(chan), Some(body)) = (it.next(), it.next()) else { return };
    let (Ok(chan), Ok(body)) = (String::from_redis_value(chan), Vec::<u8>::from_redis_value(body)) else {
        return;
    };
    if let Some(tx) = handlers.read().unwrap_or_else(|e| e.into_inner()).get(&chan) {
        if let Err(e) = tx.try_send((chan, body)) {
            tracing::warn!("adapter: pub/sub queue full, message dropped: {e}");
        }
    }
}

impl Driver for GatewayDriver {
    type Error = DriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), DriverError> {
        if self.link.is_down() {
            return Ok(()); // this node alone until the heartbeat sees Redis again
        }
        let res = self.conn().publish(&chan, val).await;
        match res {
            Ok(_) => Ok(()),
            Err(e) => {
                // Keep serving this node's sockets: the local part of the broadcast still runs.
                tracing::debug!("adapter publish failed (Redis down?): {e}");
                Ok(())
            }
        }
    }

    async fn subscribe(&self, chan: String, size: usize) -> Result<MessageStream<ChanItem>, DriverError> {
        let (tx, rx) = mpsc::channel(size);
        self.handlers.write().unwrap_or_else(|e| e.into_inner()).insert(chan.clone(), tx);
        self.subscribe_until_done(chan);
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), DriverError> {
        self.handlers.write().unwrap_or_else(|e| e.into_inner()).remove(&chan);
        let _ = self.conn().unsubscribe(&chan).await;
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, DriverError> {
        if self.link.is_down() {
            return Ok(1);
        }
        // While Redis is away, this node is the whole cluster.
        Ok(self.conn().listeners(chan).await.map(|n| n.max(1)).unwrap_or(1))
    }
}
