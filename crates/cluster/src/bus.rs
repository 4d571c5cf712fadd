//! The nodes' own pub/sub channel, `<REDIS_PREFIX>:bus`: what the socketioxide adapter does not
//! carry. A message names its topic (`ws`: broadcasts to `/ws` clients; `admin`: the Admin UI's
//! actions and questions); a listener per topic takes the messages of the other nodes. A question
//! (`ask`) is answered by every other node, and the asker waits for as many answers as the heartbeat
//! counts other nodes, at most [`ASK_TIMEOUT`].
//!
//! Subscribed by the ingress connection (`ingress.rs`); published on the command connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use rtg_storage::redis_link::RedisLink;

/// How long a question to the other nodes waits for their answers.
pub const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// What a topic's owner does with the other nodes' messages.
pub trait Listener: Send + Sync {
    /// A message another node published on this topic.
    fn on_message(&self, body: Value);
    /// A question from another node; the return value is this node's answer.
    fn on_ask(&self, body: Value) -> Value;
}

#[derive(Serialize)]
struct Out<'a, T: Serialize> {
    node: &'a str,
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ask: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<u64>,
    body: &'a T,
}

#[derive(Deserialize)]
struct In {
    node: String,
    topic: String,
    #[serde(default)]
    ask: Option<u64>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    answer: Option<u64>,
    #[serde(default)]
    body: Value,
}

pub struct Bus {
    redis: Option<Arc<RedisLink>>,
    channel: String,
    node_id: String,
    /// The other nodes (from the heartbeat): how many answers a question waits for.
    peers: Arc<AtomicUsize>,
    listeners: RwLock<HashMap<&'static str, Arc<dyn Listener>>>,
    asked: Mutex<HashMap<u64, tokio::sync::mpsc::UnboundedSender<Value>>>,
    next_req: AtomicU64,
}

impl Bus {
    pub fn new(redis: Option<Arc<RedisLink>>, channel: String, node_id: String, peers: Arc<AtomicUsize>) -> Arc<Self> {
        Arc::new(Bus {
            redis,
            channel,
            node_id,
            peers,
            listeners: RwLock::default(),
            asked: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
        })
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Takes the other nodes' messages on `topic`.
    pub fn listen(&self, topic: &'static str, listener: Arc<dyn Listener>) {
        self.listeners.write().unwrap_or_else(|e| e.into_inner()).insert(topic, listener);
    }

    /// Is there anyone to talk to (Redis configured and up, other nodes)?
    pub fn clustered(&self) -> bool {
        self.redis.as_ref().is_some_and(|r| !r.is_down())
    }

    async fn send<T: Serialize>(&self, out: &Out<'_, T>) {
        let Some(redis) = &self.redis else { return };
        match serde_json::to_string(out) {
            Ok(payload) => {
                if let Err(e) = redis.publish(&self.channel, payload).await {
                    tracing::debug!(topic = out.topic, "bus publish: {e:#}");
                }
            }
            Err(e) => tracing::warn!(topic = out.topic, "bus: {e}"),
        }
    }

    /// Publishes `body` on `topic` to the other nodes (a no-op without Redis).
    pub async fn publish<T: Serialize>(&self, topic: &str, body: &T) {
        self.send(&Out { node: &self.node_id, topic, ask: None, to: None, answer: None, body }).await;
    }

    /// Asks every other node; their answers (fewer when one does not answer in time).
    pub async fn ask<T: Serialize>(&self, topic: &str, body: &T) -> Vec<Value> {
        let peers = self.peers.load(Ordering::Relaxed);
        if peers == 0 || !self.clustered() {
            return Vec::new();
        }
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.asked.lock().unwrap_or_else(|e| e.into_inner()).insert(req, tx);
        self.send(&Out { node: &self.node_id, topic, ask: Some(req), to: None, answer: None, body }).await;
        let mut out = Vec::with_capacity(peers);
        let _ = tokio::time::timeout(ASK_TIMEOUT, async {
            while out.len() < peers {
                match rx.recv().await {
                    Some(v) => out.push(v),
                    None => break,
                }
            }
        })
        .await;
        self.asked.lock().unwrap_or_else(|e| e.into_inner()).remove(&req);
        out
    }

    /// A publish on the bus channel (from the ingress connection).
    pub fn on_payload(self: &Arc<Self>, payload: &[u8]) {
        let msg: In = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("bus: unreadable message: {e}");
                return;
            }
        };
        if msg.node == self.node_id {
            return;
        }
        if let Some(req) = msg.answer {
            if msg.to.as_deref() == Some(self.node_id.as_str()) {
                if let Some(tx) = self.asked.lock().unwrap_or_else(|e| e.into_inner()).get(&req) {
                    let _ = tx.send(msg.body);
                }
            }
            return;
        }
        let Some(listener) = self.listeners.read().unwrap_or_else(|e| e.into_inner()).get(msg.topic.as_str()).cloned()
        else {
            return;
        };
        match msg.ask {
            Some(req) => {
                let answer = listener.on_ask(msg.body);
                let bus = self.clone();
                tokio::spawn(async move {
                    let out = Out {
                        node: &bus.node_id,
                        topic: &msg.topic,
                        ask: None,
                        to: Some(&msg.node),
                        answer: Some(req),
                        body: &answer,
                    };
                    bus.send(&out).await;
                });
            }
            None => listener.on_message(msg.body),
        }
    }
}
