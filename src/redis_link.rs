//! The node's link to Redis: a self-reconnecting connection for commands and publishes, and the
//! up/down flag that `/health` and `/metrics` report.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

pub struct RedisLink {
    pub client: redis::Client,
    pub conn: ConnectionManager,
    /// Confirmed reachable (for `/health`): false until the first success.
    up: AtomicBool,
    /// Seen failing and not yet back: requests fail fast instead of each waiting out a reconnect;
    /// the heartbeat keeps probing and clears it.
    down: AtomicBool,
    /// The ingress subscriber is subscribed (`/health` says `up` only then).
    ingress: AtomicBool,
}

impl RedisLink {
    /// Opens lazily: an unreachable Redis at start-up is not an error, the node serves anyway.
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("REDIS_URL: not a valid Redis URL")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .context("REDIS_URL: cannot set up the connection")?;
        Ok(Self {
            client,
            conn,
            up: AtomicBool::new(false),
            down: AtomicBool::new(false),
            ingress: AtomicBool::new(false),
        })
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
        let mut conn = self.conn.clone();
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
        RetryConn(self.conn.clone())
    }
}
