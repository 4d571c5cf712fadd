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
