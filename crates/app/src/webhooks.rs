//! Lifecycle webhooks (SPEC §14): `POST WEBHOOK_URL` of `{id, type, ts, data}` for `user.online`,
//! `user.offline`, `socket.connected`, `socket.disconnected`, `room.created`, `message.created` and
//! `private.queued`, signed like the event proxy (`X-Realtime-Signature` over `"<X-Realtime-Timestamp>.<body>"`).
//!
//! Delivery is at least once, once per cluster, in order per user, retried with exponential backoff
//! (backon) for up to an hour after the event:
//! - With Redis, producers append to the stream `<prefix>:webhooks` (bounded at [`MAX_QUEUED`] entries
//!   and at `WEBHOOK_QUEUE_MAX_BYTES` of bodies, kept in the counter `<prefix>:webhooks:bytes` by the
//!   scripts that append and delete; the oldest trimmed and counted as dropped). One node at a time
//!   delivers: the holder of the lease `<prefix>:webhooks:leader`, reading through the consumer group
//!   `hooks`; an entry is acknowledged and deleted once the backend took it. A node that takes the
//!   lease over first claims, page by page to the end, what its predecessor had read and not
//!   delivered, so a webhook survives the death of the node that produced it and of the one that was
//!   delivering it.
//! - Fenced: the lease's value is `<node> <token>`, a new token each time a node takes it, and every
//!   webhook read from the stream carries the token it was read under. Before each attempt a lane
//!   checks in Redis that the lease still holds that value and for how long; the attempt's timeout
//!   ends before the lease could expire. A node that lost the lease (stopped, cut off, slow) drops
//!   what it had read without delivering it: the new holder claims it and delivers it in stream
//!   order, so a user's webhook 2 never goes out from one node while 1 is still tried by another.
//! - Appends are in order, one task per node, and back-pressured: while Redis refuses them the
//!   appender retries the oldest, and a webhook that does not fit beside those waiting is dropped and
//!   counted (`dropped`), never delivered out of turn from memory.
//! - Without Redis, a queue in memory, bounded the same way.
//!
//! Bounded by bytes, not only by count: a webhook carries a message's content, so 100,000 of them can
//! be gigabytes (a dead endpoint must not take a node's memory, or Redis's). On a node the memory queue,
//! the lanes and the appends on their way to Redis hold at most `WEBHOOK_QUEUE_MAX_BYTES` together: the
//! lanes and the appends take at most a quarter each, the memory queue the rest, dropping its oldest.
//!
//! The deliverer hands each webhook to one of [`LANES`] lanes by its user: a lane delivers in order and
//! waits while a webhook is retried, so one user's order holds and a failing user holds up only its lane
//! (the lanes' backlog is bounded together, not each). A permanent refusal (a `4xx` other than `408` and
//! `429`) is tried [`PERMANENT_TRIES`] times, then dead-lettered (counted as `dead_letter`, deleted), so
//! a malformed webhook does not hold its lane for an hour.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use metrics::Counter;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, Notify};

use rtg_storage::redis_link::RedisLink;

/// Webhooks waiting at most (stream or memory queue); past it the oldest are dropped and counted.
pub const MAX_QUEUED: usize = 100_000;
/// Lanes of in-order delivery.
const LANES: usize = 16;
/// Webhooks on their way to the stream; past it new ones are dropped and counted.
const APPEND_QUEUE: usize = 10_000;
/// How long a webhook is retried after its event.
const GIVE_UP_AFTER: Duration = Duration::from_secs(3600);
/// The deliverer's lease, renewed every second.
pub const LEASE_MS: u64 = 10_000;
/// An attempt starts only with this much of the lease left, and ends (times out) this long before it
/// runs out: a request never outlives the lease it was sent under.
const LEASE_MARGIN: Duration = Duration::from_millis(1000);
/// Attempts of a webhook the backend refuses for good (a `4xx` but `408`, `429`) before it is
/// dead-lettered.
pub const PERMANENT_TRIES: u32 = 3;
/// Entries claimed at a time when taking the lease over.
const CLAIM_PAGE: usize = 1000;

/// One webhook: the body the backend gets, and the key of its order (the user).
#[derive(Debug, Clone)]
struct Hook {
    /// The stream entry, when it came from Redis (acknowledged once delivered).
    entry: Option<String>,
    /// The lease token it was read under (0: this node's own, from the memory queue): delivered only
    /// while the lease still holds it.
    tenure: u64,
    key: String,
    body: String,
    ts: u64,
}

impl Hook {
    /// What it weighs against `WEBHOOK_QUEUE_MAX_BYTES` (its body: the rest is small and bounded).
    fn size(&self) -> usize {
        self.body.len()
    }
}

/// The memory queue and the bytes it holds.
#[derive(Default)]
struct Local {
    queue: VecDeque<Hook>,
    bytes: usize,
}

/// Appends to the stream within both bounds: the oldest entries go (their bytes off the counter) until
/// the new one fits. Returns `{dropped, added}`. An empty stream resets the counter (a stream deleted by
/// hand does not leave it behind).
const APPEND_SCRIPT: &str = r"
local cap, max_len, size = tonumber(ARGV[1]), tonumber(ARGV[2]), string.len(ARGV[5])
local bytes = tonumber(redis.call('GET', KEYS[2]) or '0')
if redis.call('XLEN', KEYS[1]) == 0 then bytes = 0 end
local dropped = 0
while bytes + size > cap or redis.call('XLEN', KEYS[1]) >= max_len do
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if #oldest == 0 then break end
  local fields = oldest[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'b' then bytes = bytes - string.len(fields[i + 1]) end
  end
  redis.call('XDEL', KEYS[1], oldest[1][1])
  dropped = dropped + 1
end
if bytes < 0 then bytes = 0 end
if bytes + size > cap then
  redis.call('SET', KEYS[2], bytes)
  return {dropped + 1, 0}
end
redis.call('XADD', KEYS[1], '*', 'k', ARGV[3], 't', ARGV[4], 'b', ARGV[5])
redis.call('SET', KEYS[2], bytes + size)
return {dropped, 1}
";

/// Acknowledges and deletes a delivered entry; its bytes come off the counter only if it was still in
/// the stream (an entry trimmed while it was being delivered was counted off then).
const ACK_SCRIPT: &str = r"
redis.call('XACK', KEYS[1], 'hooks', ARGV[1])
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
  if redis.call('DECRBY', KEYS[2], ARGV[2]) < 0 or redis.call('XLEN', KEYS[1]) == 0 then
    redis.call('SET', KEYS[2], 0)
  end
end
return 1
";

#[derive(Serialize)]
struct Body<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'a str,
    ts: u64,
    data: &'a Value,
}

/// Counters by outcome.
struct Figures {
    queued: Counter,
    delivered: Counter,
    retried: Counter,
    dropped: Counter,
    expired: Counter,
    dead_letter: Counter,
    handed_over: Counter,
}

/// How an attempt went.
enum Failure {
    /// Worth trying again (a network error, a `5xx`, `408`, `429`, a `3xx`).
    Transient(String),
    /// The backend refuses this webhook for good (another `4xx`).
    Permanent(String),
}

/// What became of a webhook in a lane.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    DeadLetter,
    Expired,
    /// The lease it was read under is gone: the next holder delivers it.
    HandedOver,
}

/// Whether this node may deliver a webhook read from the stream now.
enum Fence {
    /// Yes, for at most this long (the attempt's timeout).
    Hold(Duration),
    /// No: the lease has another holder or token.
    Lost,
    /// Not known (Redis away, or the lease about to run out): wait and ask again.
    Wait,
}

pub struct Webhooks {
    url: String,
    secret: Option<String>,
    http: reqwest::Client,
    redis: Option<Arc<RedisLink>>,
    stream: String,
    /// The stream's byte counter (hash-tagged: the same Redis Cluster slot as the stream).
    stream_bytes: String,
    lease: String,
    /// The token of this node's lease while it holds it, else 0.
    tenure: AtomicU64,
    /// The longest an attempt may take.
    attempt_timeout: Duration,
    /// `WEBHOOK_QUEUE_MAX_BYTES`.
    max_bytes: usize,
    node_id: String,
    /// Without Redis: the queue in memory.
    local: Mutex<Local>,
    wake: Notify,
    /// With Redis: webhooks on their way to the stream, appended one after another by one task, so
    /// that a user's webhooks enter the stream in the order they happened.
    appends: mpsc::Sender<Hook>,
    appends_rx: Mutex<Option<mpsc::Receiver<Hook>>>,
    /// Webhooks read from the stream and not yet delivered (the lanes' backlog).
    in_lanes: std::sync::atomic::AtomicUsize,
    /// Webhooks handed to the appender and not yet in the stream.
    appending: std::sync::atomic::AtomicUsize,
    /// Bytes of the webhooks in the lanes, and of those on their way to the stream.
    lane_bytes: std::sync::atomic::AtomicUsize,
    appending_bytes: std::sync::atomic::AtomicUsize,
    held: metrics::Gauge,
    figures: Figures,
}

impl Webhooks {
    pub fn from_config(
        cfg: &rtg_model::config::Config,
        redis: Option<Arc<RedisLink>>,
        node_id: &str,
        metrics: Option<&rtg_model::metrics::Metrics>,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(url) = cfg.webhook_url.as_deref().filter(|u| !u.is_empty()) else { return Ok(None) };
        let parsed: reqwest::Url = url.parse().map_err(|e| anyhow::anyhow!("WEBHOOK_URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!("WEBHOOK_URL: an http or https URL");
        }
        let counter = |outcome: &str| metrics.map(|m| m.webhook_counter(outcome)).unwrap_or_else(Counter::noop);
        let (appends, appends_rx) = mpsc::channel(APPEND_QUEUE);
        let attempt_timeout = Duration::from_millis(cfg.event_proxy_timeout_ms.max(5000));
        Ok(Some(Arc::new(Webhooks {
            url: url.to_string(),
            secret: cfg.webhook_secret.clone().filter(|s| !s.is_empty()),
            http: crate::proxy::http_client(attempt_timeout)?,
            tenure: AtomicU64::new(0),
            attempt_timeout,
            redis,
            stream: format!("{}:webhooks", cfg.redis_prefix),
            stream_bytes: format!("{}:webhooks:bytes", cfg.redis_prefix),
            lease: format!("{}:webhooks:leader", cfg.redis_prefix),
            max_bytes: usize::try_from(cfg.webhook_queue_max_bytes).unwrap_or(usize::MAX),
            node_id: node_id.to_string(),
            local: Mutex::new(Local::default()),
            wake: Notify::new(),
            appends,
            appends_rx: Mutex::new(Some(appends_rx)),
            in_lanes: std::sync::atomic::AtomicUsize::new(0),
            appending: std::sync::atomic::AtomicUsize::new(0),
            lane_bytes: std::sync::atomic::AtomicUsize::new(0),
            appending_bytes: std::sync::atomic::AtomicUsize::new(0),
            held: metrics.map(|m| m.webhook_queue_bytes.clone()).unwrap_or_else(metrics::Gauge::noop),
            figures: Figures {
                queued: counter("queued"),
                delivered: counter("delivered"),
                retried: counter("retried"),
                dropped: counter("dropped"),
                expired: counter("expired"),
                dead_letter: counter("dead_letter"),
                handed_over: counter("handed_over"),
            },
        })))
    }

    /// Queues a webhook (never waits: the append to Redis runs on its own task).
    pub fn send(self: &Arc<Self>, kind: &str, user: &str, data: Value) {
        let ts = rtg_model::clock::unix_now_ms();
        let body = Body { id: rtg_storage::store::new_id("wh"), kind, ts, data: &data };
        let Ok(body) = serde_json::to_string(&body) else { return };
        self.figures.queued.increment(1);
        let hook = Hook { entry: None, tenure: 0, key: user.to_string(), body, ts };
        if self.redis.is_none() {
            self.push_local(hook);
            return;
        }
        let size = hook.size();
        if self.appending_bytes.load(std::sync::atomic::Ordering::Acquire) + size > self.max_bytes / 4 {
            // The appender is this far behind in bytes (Redis slow or away): dropped and counted, not
            // kept aside to go out of turn.
            self.figures.dropped.increment(1);
            tracing::warn!("webhook dropped: the appends to redis are {} bytes behind", self.max_bytes / 4);
            return;
        }
        self.appending.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.appending_bytes.fetch_add(size, std::sync::atomic::Ordering::AcqRel);
        self.show_held();
        if self.appends.try_send(hook).is_err() {
            self.appending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            self.appending_bytes.fetch_sub(size, std::sync::atomic::Ordering::AcqRel);
            self.show_held();
            // The appender is [`APPEND_QUEUE`] behind: the same.
            self.figures.dropped.increment(1);
            tracing::warn!("webhook dropped: {APPEND_QUEUE} appends to redis waiting");
        }
    }

    /// At shutdown: waits (at most `limit`) until the webhooks on their way to the stream are in it, so
    /// that those of the departures just made survive this node.
    pub async fn flush(&self, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        while self.appending.load(std::sync::atomic::Ordering::Acquire) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Appends to the stream in order (one task per node), retrying until Redis takes it: the next
    /// one waits (back-pressure), so a user's webhooks never overtake each other. An append that
    /// timed out may have run and runs again: a duplicate, next to its original.
    async fn append(&self, hook: Hook) {
        let Some(redis) = &self.redis else { return };
        let mut pause = Duration::from_millis(100);
        loop {
            let mut conn = redis.commands();
            let added: redis::RedisResult<(u64, u64)> = redis::Script::new(APPEND_SCRIPT)
                .key(&self.stream)
                .key(&self.stream_bytes)
                .arg(self.max_bytes)
                .arg(MAX_QUEUED)
                .arg(&hook.key)
                .arg(hook.ts)
                .arg(&hook.body)
                .invoke_async(&mut conn)
                .await;
            match added {
                Ok((dropped, _)) => {
                    if dropped > 0 {
                        self.figures.dropped.increment(dropped);
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!("webhook not yet queued in redis, retried in {pause:?}: {e}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Queues in memory within both bounds: the oldest go until the new one fits beside what the lanes
    /// and the appends hold (a hook that cannot fit at all is dropped itself).
    fn push_local(&self, hook: Hook) {
        let size = hook.size();
        let mut q = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let others = self.lane_bytes.load(std::sync::atomic::Ordering::Acquire)
            + self.appending_bytes.load(std::sync::atomic::Ordering::Acquire);
        while q.queue.len() >= MAX_QUEUED || (!q.queue.is_empty() && q.bytes + others + size > self.max_bytes) {
            if let Some(old) = q.queue.pop_front() {
                q.bytes -= old.size();
            }
            self.figures.dropped.increment(1);
        }
        if q.bytes + others + size > self.max_bytes {
            self.figures.dropped.increment(1);
            return;
        }
        q.bytes += size;
        q.queue.push_back(hook);
        drop(q);
        self.show_held();
        self.wake.notify_one();
    }

    /// The lanes take no more while they hold this many webhooks or bytes (the rest waits where it is
    /// bounded: the memory queue, the stream).
    fn lanes_full(&self) -> bool {
        self.in_lanes.load(std::sync::atomic::Ordering::Relaxed) >= MAX_QUEUED
            || self.lane_bytes.load(std::sync::atomic::Ordering::Acquire) >= self.max_bytes / 4
    }

    fn to_lane(&self, hook: &Hook) {
        self.in_lanes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lane_bytes.fetch_add(hook.size(), std::sync::atomic::Ordering::AcqRel);
    }

    /// `realtime_webhook_queue_bytes`: what this node holds now.
    fn show_held(&self) {
        let local = self.local.lock().unwrap_or_else(|e| e.into_inner()).bytes;
        let held = local
            + self.lane_bytes.load(std::sync::atomic::Ordering::Acquire)
            + self.appending_bytes.load(std::sync::atomic::Ordering::Acquire);
        self.held.set(held as f64);
    }

    /// One POST, within `timeout`; an error for anything but a 2xx.
    async fn post(&self, hook: &Hook, timeout: Duration) -> Result<(), Failure> {
        let ts = rtg_model::clock::unix_now_ms();
        let mut req = self
            .http
            .post(&self.url)
            .timeout(timeout)
            .header("content-type", "application/json")
            .header("x-realtime-timestamp", ts);
        if let Some(secret) = &self.secret {
            req = req.header("x-realtime-signature", crate::proxy::signature(secret, ts, hook.body.as_bytes()));
        }
        match req.body(hook.body.clone()).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => {
                let status = r.status();
                let permanent = status.is_client_error()
                    && status != reqwest::StatusCode::REQUEST_TIMEOUT
                    && status != reqwest::StatusCode::TOO_MANY_REQUESTS;
                let e = format!("HTTP {status}");
                Err(if permanent { Failure::Permanent(e) } else { Failure::Transient(e) })
            }
            Err(e) => Err(Failure::Transient(e.to_string())),
        }
    }

    /// Whether this node may deliver `hook` now (see [`Fence`]). A webhook of the memory queue is
    /// this node's alone; one read from the stream goes out only while the lease holds the token it
    /// was read under, and the attempt ends [`LEASE_MARGIN`] before the lease could run out.
    async fn fence(&self, hook: &Hook) -> Fence {
        if hook.tenure == 0 {
            return Fence::Hold(self.attempt_timeout);
        }
        if self.tenure.load(Ordering::Acquire) != hook.tenure {
            return Fence::Lost;
        }
        let Some(redis) = &self.redis else { return Fence::Lost };
        let mut conn = redis.commands();
        let left: redis::RedisResult<i64> = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PTTL', KEYS[1]) end return -3",
        )
        .key(&self.lease)
        .arg(self.lease_value(hook.tenure))
        .invoke_async(&mut conn)
        .await;
        match left {
            Ok(-3) => Fence::Lost,
            Ok(ms) if ms > 0 && Duration::from_millis(ms as u64) > LEASE_MARGIN * 2 => {
                Fence::Hold(self.attempt_timeout.min(Duration::from_millis(ms as u64) - LEASE_MARGIN))
            }
            Ok(_) => Fence::Wait,
            Err(e) => {
                tracing::debug!("webhook lease check: {e}");
                Fence::Wait
            }
        }
    }

    /// The lease's value while this node holds it under `tenure`.
    fn lease_value(&self, tenure: u64) -> String {
        format!("{} {tenure}", self.node_id)
    }

    /// Delivers one webhook, retrying until it is taken, refused for good [`PERMANENT_TRIES`] times,
    /// an hour after its event has passed, or (read from the stream) until this node loses the lease.
    async fn deliver(&self, hook: &Hook) -> Outcome {
        let age = Duration::from_millis(rtg_model::clock::unix_now_ms().saturating_sub(hook.ts));
        let give_up = tokio::time::Instant::now() + GIVE_UP_AFTER.saturating_sub(age);
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(60))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        let mut refused = 0;
        loop {
            let timeout = match self.fence(hook).await {
                Fence::Hold(t) => t,
                Fence::Lost => {
                    self.figures.handed_over.increment(1);
                    return Outcome::HandedOver;
                }
                Fence::Wait => {
                    if tokio::time::Instant::now() >= give_up {
                        self.figures.expired.increment(1);
                        return Outcome::Expired;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            let e = match self.post(hook, timeout).await {
                Ok(()) => {
                    self.figures.delivered.increment(1);
                    return Outcome::Delivered;
                }
                Err(Failure::Permanent(e)) => {
                    refused += 1;
                    if refused >= PERMANENT_TRIES {
                        self.figures.dead_letter.increment(1);
                        tracing::warn!("webhook dead-lettered after {refused} refusals: {e}");
                        return Outcome::DeadLetter;
                    }
                    e
                }
                Err(Failure::Transient(e)) => e,
            };
            let after = delays.next().unwrap_or(Duration::from_secs(60));
            if tokio::time::Instant::now() + after >= give_up {
                self.figures.expired.increment(1);
                tracing::warn!("webhook given up after an hour of retries: {e}");
                return Outcome::Expired;
            }
            self.figures.retried.increment(1);
            tracing::debug!("webhook retried in {after:?}: {e}");
            tokio::time::sleep(after).await;
        }
    }
}

fn lane_of(key: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % LANES
}

/// The deliverer: lanes, fed from the memory queue and, on the lease holder, from the stream.
pub fn spawn(hooks: Arc<Webhooks>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut lanes = Vec::with_capacity(LANES);
    for _ in 0..LANES {
        // The lanes' backlog together is bounded ([`MAX_QUEUED`] and a quarter of the bytes: the
        // readers wait past it), not each
        // lane's: a lane held up by a failing user does not stop the others.
        let (tx, mut rx) = mpsc::unbounded_channel::<Hook>();
        lanes.push(tx);
        let hooks = hooks.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(hook) = rx.recv().await {
                let outcome = hooks.deliver(&hook).await;
                hooks.in_lanes.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                hooks.lane_bytes.fetch_sub(hook.size(), std::sync::atomic::Ordering::AcqRel);
                hooks.show_held();
                if outcome == Outcome::HandedOver {
                    // Still pending in the group: the lease's holder claims it.
                    continue;
                }
                if let (Some(entry), Some(redis)) = (&hook.entry, &hooks.redis) {
                    let mut conn = redis.commands();
                    let acked: redis::RedisResult<i64> = redis::Script::new(ACK_SCRIPT)
                        .key(&hooks.stream)
                        .key(&hooks.stream_bytes)
                        .arg(entry)
                        .arg(hook.size())
                        .invoke_async(&mut conn)
                        .await;
                    if let Err(e) = acked {
                        tracing::debug!("webhook ack: {e}");
                    }
                }
            }
        }));
    }
    let lanes = Arc::new(lanes);
    // The memory queue.
    {
        let (hooks, lanes) = (hooks.clone(), lanes.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                if hooks.lanes_full() {
                    // The lanes are this far behind: the bounded queue holds the rest meanwhile.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let next = {
                    let mut q = hooks.local.lock().unwrap_or_else(|e| e.into_inner());
                    let hook = q.queue.pop_front();
                    if let Some(h) = &hook {
                        q.bytes -= h.size();
                        // Counted in the lanes before the lock goes: never off both counts at once.
                        hooks.to_lane(h);
                    }
                    hook
                };
                match next {
                    Some(hook) => {
                        if lanes[lane_of(&hook.key)].send(hook).is_err() {
                            return;
                        }
                    }
                    None => hooks.wake.notified().await,
                }
            }
        }));
    }
    // The appender and the stream's reader (on the lease holder).
    if hooks.redis.is_some() {
        if let Some(mut rx) = hooks.appends_rx.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let hooks = hooks.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(hook) = rx.recv().await {
                    let size = hook.size();
                    hooks.append(hook).await;
                    hooks.appending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    hooks.appending_bytes.fetch_sub(size, std::sync::atomic::Ordering::AcqRel);
                    hooks.show_held();
                }
            }));
        }
        tasks.push(tokio::spawn(async move { read_stream(hooks, lanes).await }));
    }
    tasks
}

type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;

fn to_hook(id: String, fields: Vec<(String, Vec<u8>)>, tenure: u64) -> Option<Hook> {
    let mut hook = Hook { entry: Some(id), tenure, key: String::new(), body: String::new(), ts: 0 };
    for (k, v) in fields {
        let v = String::from_utf8(v).ok()?;
        match k.as_str() {
            "k" => hook.key = v,
            "t" => hook.ts = v.parse().unwrap_or(0),
            "b" => hook.body = v,
            _ => {}
        }
    }
    (!hook.body.is_empty()).then_some(hook)
}

/// Holds (or waits for) the deliverer's lease, renewing it every second, apart from the reader so
/// that a reader waiting on full lanes still holds it. The lease is renewed only under the token it
/// was taken with; once it has run out (or has another holder) this node takes it again, if free,
/// under a new token, so that what it read under the old one is dropped and claimed afresh.
fn spawn_lease(hooks: Arc<Webhooks>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(redis) = hooks.redis.clone() else { return };
        // 1: renewed; 2: taken under ARGV[3]; 0: another's.
        let script = redis::Script::new(
            r"local v = redis.call('GET', KEYS[1])
              if v and v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
              if not v then redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2]) return 2 end
              return 0",
        );
        loop {
            let current = hooks.tenure.load(Ordering::Acquire);
            let fresh = rand::random::<u64>().max(1);
            let mut conn = redis.commands();
            let held: redis::RedisResult<i64> = script
                .key(&hooks.lease)
                .arg(if current == 0 { String::new() } else { hooks.lease_value(current) })
                .arg(LEASE_MS)
                .arg(hooks.lease_value(fresh))
                .invoke_async(&mut conn)
                .await;
            match held {
                Ok(1) => {}
                Ok(2) => hooks.tenure.store(fresh, Ordering::Release),
                Ok(_) => hooks.tenure.store(0, Ordering::Release),
                // Unknown: the lanes ask Redis before each attempt anyway.
                Err(e) => tracing::debug!("webhook lease: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

async fn read_stream(hooks: Arc<Webhooks>, lanes: Arc<Vec<mpsc::UnboundedSender<Hook>>>) {
    let Some(redis) = hooks.redis.clone() else { return };
    let _lease = AbortOnDrop(spawn_lease(hooks.clone()));
    // The tenure whose claim of the predecessor's entries is done (0: none).
    let mut reading = 0;
    let mut group_ready = false;
    // XREADGROUP blocks its connection: a connection of its own.
    let mut blocking: Option<rtg_storage::redis_link::Conn> = None;
    loop {
        if hooks.lanes_full() {
            // The lanes are this far behind: read more once they have delivered some.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let tenure = hooks.tenure.load(Ordering::Acquire);
        if tenure == 0 {
            reading = 0;
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let conn = match &mut blocking {
            Some(c) => c,
            None => match redis.blocking_conn().await {
                Ok(c) => blocking.insert(c),
                Err(e) => {
                    tracing::debug!("webhooks: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        if !group_ready {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&hooks.stream)
                .arg("hooks")
                .arg("0")
                .arg("MKSTREAM")
                .query_async(conn)
                .await;
            group_ready = match created {
                Ok(()) => true,
                Err(e) => e.to_string().contains("BUSYGROUP"),
            };
            if !group_ready {
                blocking = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        if reading != tenure {
            // Just took over: what was read and not delivered before (by the previous holder, or by
            // this node under an earlier token) comes first, in stream order.
            tracing::info!("webhooks: this node delivers");
            match claim_all(&hooks, &lanes, conn, tenure).await {
                Ok(true) => reading = tenure,
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!("webhooks claim: {e}");
                    blocking = None;
                    group_ready = false;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            continue;
        }
        let read: redis::RedisResult<Option<Vec<(String, Entries)>>> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("hooks")
            .arg(&hooks.node_id)
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&hooks.stream)
            .arg(">")
            .query_async(conn)
            .await;
        match read {
            Ok(Some(streams)) => {
                for (_, entries) in streams {
                    dispatch(&hooks, &lanes, entries, tenure);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!("webhooks read: {e}");
                blocking = None;
                group_ready = false;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Claims every entry pending in the group (whoever read it) for this node, page by page following
/// `XAUTOCLAIM`'s cursor until it comes back to `0-0`, and hands them to the lanes in stream order.
/// `Ok(false)` when the lease changed meanwhile (the new tenure claims again). A page that fails is
/// asked again from the same cursor, so nothing is handed to the lanes twice under one tenure.
async fn claim_all(
    hooks: &Webhooks,
    lanes: &[mpsc::UnboundedSender<Hook>],
    conn: &mut rtg_storage::redis_link::Conn,
    tenure: u64,
) -> redis::RedisResult<bool> {
    let mut cursor = "0-0".to_string();
    loop {
        if hooks.tenure.load(Ordering::Acquire) != tenure {
            return Ok(false);
        }
        while hooks.lanes_full() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Redis 6.2 answers [cursor, entries], 7 adds the ids it found deleted.
        let reply: Vec<redis::Value> = redis::cmd("XAUTOCLAIM")
            .arg(&hooks.stream)
            .arg("hooks")
            .arg(&hooks.node_id)
            .arg(0)
            .arg(&cursor)
            .arg("COUNT")
            .arg(CLAIM_PAGE)
            .query_async(&mut *conn)
            .await?;
        let mut reply = reply.into_iter();
        let next: String = redis::from_redis_value(reply.next().unwrap_or(redis::Value::Nil))?;
        let entries: Entries = match reply.next() {
            Some(v) => redis::from_redis_value(v)?,
            None => Vec::new(),
        };
        dispatch(hooks, lanes, entries, tenure);
        if next == "0-0" {
            return Ok(true);
        }
        cursor = next;
    }
}

fn dispatch(hooks: &Webhooks, lanes: &[mpsc::UnboundedSender<Hook>], entries: Entries, tenure: u64) {
    for (id, fields) in entries {
        if let Some(hook) = to_hook(id, fields, tenure) {
            hooks.to_lane(&hook);
            let _ = lanes[lane_of(&hook.key)].send(hook);
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
