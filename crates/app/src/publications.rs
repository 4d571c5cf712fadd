//! The one path a channel publication takes on a node (SPEC §15), and the subscriptions that must
//! meet it without a gap or a duplicate.
//!
//! One task per node takes, in the order this node received them, the publications for its
//! clients and delivers each one with its `offset` and `epoch` to the channel's subscribers on this
//! node. With Redis, one node appends the `PUBLISH`es and every node delivers what it announces
//! (`sequence.rs`); without Redis (or, for `/api/publish`, while Redis is down) the task appends to
//! the node's own history (or delivers without an offset) in batches, one round trip per batch.
//!
//! **Order.** A publication is appended before any node delivers it, and each node delivers in
//! offset order, so offsets increase in publish order on every node.
//!
//! **The seam.** A subscription (with `since` or without) starts at a point in this task's sequence:
//! publications delivered before it are in the history already (they were appended before they were
//! delivered); those after it are held for the client. The task reads the history, joins the client
//! to the channel together with a catching-up room that the channel's deliveries skip, and answers
//! with the position read. Once the client has that answer (see [`Go`]) it sends the publications
//! after `since` up to that position, then the held ones past it; those this node delivers later
//! and that the replay already covered are skipped until the first one past it, which ends the
//! catching up. Nothing is delivered twice or skipped, and nothing newer comes first
//! (`tests/publications.rs` drives the real task over random interleavings).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::sequence::{Input, Sequencer};
use metrics::Counter;
use rtg_model::client::{Client, Close};
use rtg_model::error::{ApiError, Code};
use rtg_model::hub::Hub;
use rtg_model::names;
use rtg_storage::history::{History, NewPublication, Position, Tail};
use rtg_storage::store::StoreResult;

/// Publications waiting for the task; the ingress waits when it is full.
const QUEUE: usize = 8192;
/// Publications appended in one round trip at most.
const BATCH: usize = 512;
/// Publications held for one subscription while its history is read; past it, see [`Pending`].
const HELD: usize = 10_000;
/// Subscribes and unsubscribes waiting for the task; the handlers wait when it is full.
const CONTROL: usize = 1024;
/// How often the appender looks at the durable ingress (`sequence.rs`): an entry waits at most this.
const DURABLE_POLL: Duration = Duration::from_millis(50);
/// Batches of the durable ingress appended per look at most.
const DURABLE_BATCHES: usize = 8;

/// The `event` envelope of a channel delivery: `{channel, data, timestamp, offset?, epoch?}`.
#[derive(Serialize)]
pub struct Envelope<'a> {
    pub channel: &'a str,
    pub data: &'a Value,
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<&'a str>,
}

/// An ISO-8601 date of a time in ms since the epoch.
pub fn iso(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(rtg_model::clock::iso_now)
}

/// One publication on its way.
pub struct Pub {
    pub channel: String,
    pub data: Value,
    /// Kept in the history (false while Redis is down: delivered without an offset).
    pub keep: bool,
}

/// What waits for the task, in the order it came.
enum Item {
    /// From this node: the REST API without Redis or while it is down.
    Local(Pub),
    /// From the Redis ingress.
    Redis(Input),
}

/// The answer to a subscribe.
pub struct Subscribed {
    /// Set when the subscribe named `since`.
    pub recovered: Option<bool>,
    /// The position the subscription starts after; `None` when history is off or unreadable.
    pub position: Option<Position>,
    /// Drop it once the client has the answer: the missed publications follow.
    pub go: Option<Go>,
}

/// Dropped when the client has its subscribe answer (or the answer was abandoned): the task then
/// sends the missed and held publications and completes the subscription.
pub struct Go {
    id: u64,
    done: mpsc::UnboundedSender<Done>,
}

impl Drop for Go {
    fn drop(&mut self) {
        let _ = self.done.send(Done::Go { id: self.id });
    }
}

/// The steps of subscriptions being set up: at most two per subscription (the read, the [`Go`]),
/// and those are bounded by [`CONTROL`] and the per-socket cap, so their channel needs no bound of
/// its own (a [`Go`] is dropped in synchronous code, which cannot wait for room).
enum Done {
    Ready { id: u64, result: StoreResult<Tail> },
    Go { id: u64 },
}

enum Ctl {
    Subscribe {
        client: Client,
        channel: String,
        since: Option<Position>,
        cap: usize,
        reply: oneshot::Sender<Result<Subscribed, ApiError>>,
    },
    Unsubscribe {
        client: Client,
        channel: String,
        reply: oneshot::Sender<()>,
    },
    /// The node stops: the appender lets its lease go.
    Retire {
        reply: oneshot::Sender<()>,
    },
}

type Receivers = (mpsc::Receiver<Item>, mpsc::Receiver<Ctl>, mpsc::UnboundedReceiver<Done>, Option<Sequencer>);

pub struct Publications {
    history: Option<Arc<dyn History>>,
    /// The Redis notes channel the ingress subscribes to (with a sequencer).
    notes: Option<String>,
    pubs: mpsc::Sender<Item>,
    ctl: mpsc::Sender<Ctl>,
    done: mpsc::UnboundedSender<Done>,
    receivers: Mutex<Option<Receivers>>,
    next_id: Arc<AtomicU64>,
}

impl Publications {
    /// `history` is `None` when `CHANNEL_HISTORY_SIZE=0`: no offsets, no recovery. `sequencer`
    /// (Redis history) numbers the Redis `PUBLISH`es; without it this node appends them itself.
    pub fn new(history: Option<Arc<dyn History>>, sequencer: Option<Sequencer>) -> Self {
        let (pubs, pubs_rx) = mpsc::channel(QUEUE);
        let (ctl, ctl_rx) = mpsc::channel(CONTROL);
        let (done, done_rx) = mpsc::unbounded_channel();
        Publications {
            history,
            notes: sequencer.as_ref().map(|s| s.notes_channel().to_string()),
            pubs,
            ctl,
            done,
            receivers: Mutex::new(Some((pubs_rx, ctl_rx, done_rx, sequencer))),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The Redis channel of the appender's notes, which the ingress subscribes to on the
    /// connection of the channels (`None`: this node appends what it receives itself).
    pub fn notes_channel(&self) -> Option<&str> {
        self.notes.as_deref()
    }

    /// Queues a publication this node received for its clients (waits while the queue is full).
    pub async fn publish(&self, p: Pub) {
        if self.pubs.send(Item::Local(p)).await.is_err() {
            tracing::warn!("channel publications: the task is gone; publication dropped");
        }
    }

    /// Queues what the Redis ingress received on the channels' connection, in its order (waits
    /// while the queue is full).
    pub async fn from_redis(&self, input: Input) {
        if self.pubs.send(Item::Redis(input)).await.is_err() {
            tracing::warn!("channel publications: the task is gone; publication dropped");
        }
    }

    /// Subscribes `client` to `channel` at this point of the node's sequence; with `since`, the
    /// publications missed after it follow the answer (see the module's doc).
    pub async fn subscribe(
        &self,
        client: Client,
        channel: String,
        since: Option<Position>,
        cap: usize,
    ) -> Result<Subscribed, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.ctl
            .send(Ctl::Subscribe { client, channel, since, cap, reply })
            .await
            .map_err(|_| ApiError::new(Code::Internal, "Internal error"))?;
        rx.await.map_err(|_| ApiError::new(Code::Internal, "Internal error"))?
    }

    /// At shutdown: if this node appends the channels' `PUBLISH`es, it lets the lease go, so that another node
    /// takes over within its next renewal instead of after the lease ran out; it takes it no more.
    pub async fn retire(&self) {
        let (reply, rx) = oneshot::channel();
        if self.ctl.send(Ctl::Retire { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Ends a subscription, also one still being set up.
    pub async fn unsubscribe(&self, client: Client, channel: String) {
        let (reply, rx) = oneshot::channel();
        if self.ctl.send(Ctl::Unsubscribe { client, channel, reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The channel's position and its last `limit` kept publications (`None`: history is off).
    pub async fn last(&self, channel: &str, limit: usize) -> Option<StoreResult<Tail>> {
        match &self.history {
            Some(h) => Some(h.last(channel, limit).await),
            None => None,
        }
    }

    /// Starts the node's publication task.
    /// `hub` delivers; `history_errors` counts the history's failures.
    pub fn spawn(&self, hub: Arc<Hub>, history_errors: Counter) -> Option<tokio::task::JoinHandle<()>> {
        let (pubs, ctl, done, sequencer) = self.receivers.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        let task = Task {
            hub,
            history_errors,
            next_id: self.next_id.clone(),
            history: self.history.clone(),
            sequencer,
            done_tx: self.done.clone(),
            pending: HashMap::new(),
            by_channel: HashMap::new(),
        };
        Some(tokio::spawn(task.run(pubs, ctl, done)))
    }
}

/// A publication held for a subscription being set up: (offset, epoch, envelope), the envelope
/// shared by every subscription that holds it.
type Held = (Option<u64>, Option<Arc<str>>, Arc<Value>);

/// A subscription being set up.
struct Pending {
    client: Client,
    channel: String,
    since: Option<Position>,
    reply: Option<oneshot::Sender<Result<Subscribed, ApiError>>>,
    /// Delivered to the channel since the subscription started, until [`Go`]: (offset, epoch,
    /// envelope).
    held: Vec<Held>,
    /// More than [`HELD`] publications arrived before the subscription completed: the client is
    /// closed rather than sent a stream with a hole (it reconnects and recovers from its offset).
    overflow: bool,
    /// The missed publications to send first (set once the history was read).
    replay: Vec<Value>,
    /// Set once the history was read: which publications the replay already covers.
    seam: Option<Seam>,
    /// Joined once the history was read (before the answer, so that whatever the client does
    /// next sees it subscribed), together with the catching-up room that the channel's
    /// deliveries skip; publications are held for it until [`Go`].
    joined: bool,
    /// After [`Go`]: in the catching-up room until this node delivers a publication past the replay.
    went: bool,
}

/// Where a subscription's replay ends and its live stream begins.
///
/// The replay runs to the channel's position when the history was read. This node may deliver
/// some publications up to that position after the read (other nodes appended them first); the
/// seam skips those, and the first publication past it ends the catching up. A publication without
/// an offset (Redis down) or of another epoch is always past it.
#[derive(Debug, Clone)]
pub struct Seam {
    start: Position,
}

impl Seam {
    pub fn new(start: Position) -> Self {
        Seam { start }
    }

    /// Is this publication past the replay (to be delivered)?
    pub fn past(&self, offset: Option<u64>, epoch: Option<&str>) -> bool {
        match (offset, epoch) {
            (Some(o), Some(e)) => e != self.start.epoch || o > self.start.offset,
            _ => true,
        }
    }
}

struct Task {
    hub: Arc<Hub>,
    history_errors: Counter,
    next_id: Arc<AtomicU64>,
    history: Option<Arc<dyn History>>,
    sequencer: Option<Sequencer>,
    done_tx: mpsc::UnboundedSender<Done>,
    pending: HashMap<u64, Pending>,
    by_channel: HashMap<String, Vec<u64>>,
}

impl Task {
    async fn run(
        mut self,
        mut pubs: mpsc::Receiver<Item>,
        mut ctl: mpsc::Receiver<Ctl>,
        mut done: mpsc::UnboundedReceiver<Done>,
    ) {
        let mut sweep = tokio::time::interval(Duration::from_secs(30));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let period = self.sequencer.as_ref().map_or(Duration::from_secs(3600), |s| s.period());
        let mut lease = tokio::time::interval(period);
        lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut durable = tokio::time::interval(DURABLE_POLL);
        durable.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let appends = |s: &Option<Sequencer>| s.as_ref().is_some_and(|s| s.role() == crate::sequence::Role::Appender);
        loop {
            tokio::select! {
                biased;
                Some(d) = done.recv() => match d {
                    Done::Ready { id, result } => self.ready(id, result),
                    Done::Go { id } => self.go(id),
                },
                Some(c) = ctl.recv() => self.control(c).await,
                _ = sweep.tick() => self.sweep(),
                _ = lease.tick(), if self.sequencer.is_some() => {
                    if let Some(seq) = self.sequencer.as_mut() {
                        seq.tick().await;
                        seq.flush().await;
                    }
                }
                _ = durable.tick(), if appends(&self.sequencer) => {
                    // A few batches, then the other work gets its turn; a backlog goes on next tick.
                    if let Some(seq) = self.sequencer.as_mut() {
                        for _ in 0..DURABLE_BATCHES {
                            if !seq.drain().await {
                                break;
                            }
                        }
                    }
                }
                Some(item) = pubs.recv() => {
                    let mut items = vec![item];
                    while items.len() < BATCH {
                        match pubs.try_recv() {
                            Ok(i) => items.push(i),
                            Err(_) => break,
                        }
                    }
                    self.take(items).await;
                }
                else => break,
            }
        }
    }

    /// Runs of local publications are appended as batches; Redis inputs go to the sequencer.
    async fn take(&mut self, items: Vec<Item>) {
        let mut local = Vec::new();
        for item in items {
            match item {
                Item::Local(p) => local.push(p),
                Item::Redis(input) => {
                    if !local.is_empty() {
                        self.publish(std::mem::take(&mut local)).await;
                    }
                    let deliveries = match self.sequencer.as_mut() {
                        Some(seq) => seq.input(input).await,
                        None => Vec::new(),
                    };
                    for d in deliveries {
                        self.deliver(&d.channel, &d.data, Some(d.place)).await;
                    }
                }
            }
        }
        if !local.is_empty() {
            self.publish(local).await;
        }
        if let Some(seq) = self.sequencer.as_mut() {
            seq.flush().await;
        }
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    async fn publish(&mut self, batch: Vec<Pub>) {
        let mut places: Vec<Option<rtg_storage::history::Appended>> = vec![None; batch.len()];
        if let Some(history) = &self.history {
            let kept: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].keep).collect();
            if !kept.is_empty() {
                let news: Vec<NewPublication> = kept
                    .iter()
                    .map(|&i| {
                        let p = &batch[i];
                        let json = serde_json::to_string(&p.data).unwrap_or_else(|_| "null".into());
                        NewPublication { channel: p.channel.clone(), hash: String::new(), json }
                    })
                    .collect();
                match history.append(&news).await {
                    Ok(appended) => {
                        for (i, a) in kept.into_iter().zip(appended) {
                            places[i] = Some(a);
                        }
                    }
                    Err(e) => {
                        self.history_errors.increment(1);
                        tracing::warn!(
                            publications = news.len(),
                            "channel history: not appended, delivered without offsets: {e}"
                        );
                    }
                }
            }
        }
        for (p, place) in batch.into_iter().zip(places) {
            self.deliver(&p.channel, &p.data, place).await;
        }
    }

    /// Delivers a publication to the channel's subscribers on this node, and to the
    /// subscriptions being set up (see the module's doc).
    async fn deliver(&mut self, channel: &str, data: &Value, place: Option<rtg_storage::history::Appended>) {
        let epoch: Option<Arc<str>> = place.as_ref().map(|a| Arc::from(a.epoch.as_str()));
        let env = Envelope {
            channel,
            data,
            timestamp: place.as_ref().map(|a| iso(a.ts)).unwrap_or_else(rtg_model::clock::iso_now),
            offset: place.as_ref().map(|a| a.offset),
            epoch: epoch.as_deref(),
        };
        let value = match serde_json::to_value(&env) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(channel, "channel publication not serialisable: {e}");
                return;
            }
        };
        let ids = self.by_channel.get(channel).cloned().unwrap_or_default();
        let catching = ids.iter().any(|id| self.pending.get(id).is_some_and(|x| x.joined));
        let to = self.hub.to(names::channel(channel)).local();
        let to = if catching { to.except(names::catching_up(channel)) } else { to };
        // The value goes to the hub as it is; the subscriptions being set up share one copy.
        let shared = if ids.is_empty() { None } else { Some(Arc::new(value.clone())) };
        if let Err(e) = to.emit_value("event", value).await {
            tracing::warn!(channel, "channel delivery failed: {e}");
        }
        let Some(value) = shared else { return };
        let offset = place.as_ref().map(|a| a.offset);
        let mut done = Vec::new();
        for id in ids {
            let Some(pending) = self.pending.get_mut(&id) else { continue };
            if pending.went {
                if !pending.client.connected() {
                    done.push(id);
                } else if pending.seam.as_ref().is_none_or(|s| s.past(offset, epoch.as_deref())) {
                    // The first one past the replay: from the next one on, the room delivers.
                    let _ = pending.client.emit("event", &value);
                    pending.client.leave(&names::catching_up(channel));
                    done.push(id);
                }
            } else if pending.held.len() >= HELD {
                pending.overflow = true;
            } else if !pending.overflow {
                pending.held.push((offset, epoch.clone(), value.clone()));
            }
        }
        for id in done {
            self.forget(id);
        }
    }

    async fn control(&mut self, c: Ctl) {
        match c {
            Ctl::Subscribe { client, channel, since, cap, reply } => self.subscribe(client, channel, since, cap, reply),
            Ctl::Retire { reply } => {
                if let Some(seq) = self.sequencer.as_mut() {
                    seq.retire().await;
                }
                let _ = reply.send(());
            }
            Ctl::Unsubscribe { client, channel, reply } => {
                for id in self.ids_of(&client, &channel) {
                    self.forget(id);
                }
                let room = names::channel(&channel);
                client.leave(&names::catching_up(&channel));
                self.hub.leave(&*client, &room);
                let _ = reply.send(());
            }
        }
    }

    /// The subscriptions of `client` to `channel` being set up (at most one).
    fn ids_of(&self, client: &Client, channel: &str) -> Vec<u64> {
        let Some(ids) = self.by_channel.get(channel) else { return Vec::new() };
        ids.iter().copied().filter(|id| self.pending.get(id).is_some_and(|p| p.client.id() == client.id())).collect()
    }

    fn forget(&mut self, id: u64) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        if let Some(ids) = self.by_channel.get_mut(&p.channel) {
            ids.retain(|x| *x != id);
            if ids.is_empty() {
                self.by_channel.remove(&p.channel);
            }
        }
        Some(p)
    }

    /// Forgets the subscriptions set up for clients that left (a quiet channel never completes
    /// their catching up).
    fn sweep(&mut self) {
        let gone: Vec<u64> = self.pending.iter().filter(|(_, p)| !p.client.connected()).map(|(id, _)| *id).collect();
        for id in gone {
            self.forget(id);
        }
    }

    fn subscribe(
        &mut self,
        client: Client,
        channel: String,
        since: Option<Position>,
        cap: usize,
        reply: oneshot::Sender<Result<Subscribed, ApiError>>,
    ) {
        let room = names::channel(&channel);
        // A newer subscribe of the same client to the same channel replaces one being set up.
        for id in self.ids_of(&client, &channel) {
            if let Some(old) = self.forget(id) {
                if let Some(r) = old.reply {
                    let _ = r.send(Err(ApiError::invalid("Superseded by a newer subscribe to this channel")));
                }
            }
        }
        client.leave(&names::catching_up(&channel));
        let rooms = client.rooms();
        let was_subscribed = rooms.contains(&room);
        // The cap counts the subscriptions being set up too; this task is the only place that
        // makes a client join a channel, so the count cannot race.
        let setting_up =
            self.pending.values().filter(|p| p.client.id() == client.id() && !p.joined && p.channel != channel).count();
        let others = rooms.iter().filter(|r| r.starts_with(names::CHANNEL_PREFIX) && **r != room).count() + setting_up;
        if others >= cap {
            let _ = reply
                .send(Err(ApiError::new(Code::Forbidden, format!("Subscription limit reached ({cap} per socket)"))));
            return;
        }
        let Some(history) = self.history.clone() else {
            self.hub.join(&*client, &room, None);
            let recovered = since.map(|_| false);
            let _ = reply.send(Ok(Subscribed { recovered, position: None, go: None }));
            return;
        };
        if was_subscribed {
            // Held from here like a new subscriber: the client rejoins once it has its answer.
            client.leave(&room);
        }
        let id = self.new_id();
        let after = since.as_ref().map(|s| s.offset);
        self.pending.insert(
            id,
            Pending {
                client,
                channel: channel.clone(),
                since,
                reply: Some(reply),
                held: Vec::new(),
                overflow: false,
                replay: Vec::new(),
                seam: None,
                joined: false,
                went: false,
            },
        );
        self.by_channel.entry(channel.clone()).or_default().push(id);
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let result = match after {
                Some(after) => history.after(&channel, after).await,
                None => history.position(&channel).await,
            };
            let _ = done.send(Done::Ready { id, result });
        });
    }

    fn ready(&mut self, id: u64, result: StoreResult<Tail>) {
        let done = self.done_tx.clone();
        let (history_errors, hub) = (self.history_errors.clone(), self.hub.clone());
        let Some(p) = self.pending.get_mut(&id) else { return };
        let answer = if p.overflow {
            Err(ApiError::new(Code::Internal, "Too many publications while subscribing; try again"))
        } else {
            match result {
                Err(e) => {
                    history_errors.increment(1);
                    tracing::warn!(channel = p.channel, "channel history unreadable; subscribed without recovery: {e}");
                    Ok((p.since.as_ref().map(|_| false), None, Vec::new()))
                }
                Ok(tail) => {
                    let (recovered, start, replay) = place(p.since.as_ref(), tail);
                    let replay = replay
                        .iter()
                        .filter_map(|pub_| {
                            serde_json::to_value(Envelope {
                                channel: &p.channel,
                                data: &pub_.data,
                                timestamp: iso(pub_.ts),
                                offset: Some(pub_.offset),
                                epoch: Some(&start.epoch),
                            })
                            .ok()
                        })
                        .collect();
                    Ok((recovered, Some(start), replay))
                }
            }
        };
        let Some(reply) = p.reply.take() else { return };
        match answer {
            Ok((recovered, start, replay)) => {
                p.replay = replay;
                p.seam = start.clone().map(Seam::new);
                p.client.join(&names::catching_up(&p.channel));
                hub.join(&*p.client, &names::channel(&p.channel), None);
                p.joined = true;
                // Sent or not (an abandoned subscribe drops the Go at once), the Go completes it.
                let _ = reply.send(Ok(Subscribed { recovered, position: start, go: Some(Go { id, done }) }));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                self.forget(id);
            }
        }
    }

    /// The client has its answer: the replay, the held publications past it, then the channel.
    fn go(&mut self, id: u64) {
        let Some(p) = self.pending.get_mut(&id) else { return };
        if !p.client.connected() || !p.joined {
            self.forget(id);
            return;
        }
        if p.overflow {
            tracing::warn!(sid = %p.client.id(), channel = p.channel, "too many publications while subscribing: closing the client");
            p.client.close(Close::Overloaded);
            self.forget(id);
            return;
        }
        for env in std::mem::take(&mut p.replay) {
            let _ = p.client.emit("event", &env);
        }
        let mut caught_up = p.seam.is_none();
        for (offset, epoch, env) in std::mem::take(&mut p.held) {
            if caught_up || p.seam.as_ref().is_some_and(|s| s.past(offset, epoch.as_deref())) {
                caught_up = true;
                let _ = p.client.emit("event", &env);
            }
        }
        if caught_up {
            p.client.leave(&names::catching_up(&p.channel));
            self.forget(id);
        } else {
            // Until this node delivers a publication past the replay, the room's deliveries skip it.
            p.went = true;
        }
    }
}

/// Where a subscription starts (the channel's position when read), whether `since` was
/// recovered, and what to replay: the publications after `since` up to that position. The pure
/// part of the seam (see [`Seam`] for the rest).
pub fn place(since: Option<&Position>, tail: Tail) -> (Option<bool>, Position, Vec<rtg_storage::history::Publication>) {
    let start = tail.position;
    let Some(since) = since else { return (None, start, Vec::new()) };
    // `{offset:0, epoch:""}` is the place of a channel that had no publication yet: it matches
    // the start of whatever epoch the channel has now.
    let same_epoch = since.epoch == start.epoch || (since.epoch.is_empty() && since.offset == 0);
    let recovered = same_epoch
        && since.offset <= start.offset
        && (since.offset == start.offset || tail.publications.first().map(|p| p.offset) == Some(since.offset + 1));
    if !recovered {
        return (Some(false), start, Vec::new());
    }
    let replay =
        tail.publications.into_iter().filter(|p| p.offset > since.offset && p.offset <= start.offset).collect();
    (Some(true), start, replay)
}
