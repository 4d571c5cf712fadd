//! Which node numbers the channel publications that arrive by Redis `PUBLISH` (SPEC §15), and how
//! the others learn the numbers.
//!
//! A `PUBLISH` reaches every node and carries no id: no node can tell another node's copy of a
//! publication from a new publication with the same payload. So one node appends, the holder of a
//! lease (`<prefix>:chist:lease`, [`LEASE_MS`], renewed every third of it), and every node, the
//! appender too, delivers what the appender announces: the append script publishes a note
//! `{c, o, e, t, h, d}` (channel, offset, epoch, time, payload hash, data) on `<prefix>:chist:notes`
//! for each publication it appends, in the same step. Offsets thus depend on nothing but the order
//! in which the appender received the `PUBLISH`es, which is Redis's one order.
//!
//! **Taking over where the last appender stopped.** Every node keeps the `PUBLISH`es it received
//! and has not yet seen a note for (its *buffer*). A node that takes the lease publishes a *marker*
//! in the same script, and the appender publishes a new marker with every renewal (every third of
//! the lease); notes and markers travel on the one notes channel, in the one order, on the same
//! connection as the `PUBLISH`es. When the node receives its own marker it has received every note
//! of every earlier appender (they were published before the lease was taken, and the append script
//! refuses a node that does not hold the lease), so what is left in its buffer is exactly what
//! nobody appended: it appends that, in order, then what comes next.
//!
//! **Which note is which publication: by place, not by payload.** Two `PUBLISH`es of the same
//! payload are told apart by their place in Redis's one order: the *k*-th `PUBLISH` after marker
//! *M* (`M/k`). Every node that received *M* counts the same `PUBLISH`es after it, so the appender's
//! note names the publication it appended by its place and its payload hash (its `h`: `M/k#hash`),
//! and each node removes exactly the entry at that place. Only what a node received before its
//! first marker since it subscribed (at most a renewal period while an appender lives) has no place
//! there: a note matches the oldest such entry of the same channel and payload.
//!
//! **Delivering each once.** A node delivers a note only if its offset is past the last one it
//! delivered on that channel (same epoch); a note further ahead than the next offset (the node's
//! subscription dropped and missed some) is preceded by the missing publications read from the
//! history. A stalled node (a VM pause, SIGSTOP) reads the notes it missed when it resumes, and
//! its appends are refused once its lease lapsed, so a stall of any length stores and delivers
//! nothing twice.
//!
//! **What is lost.** A node whose pub/sub subscription drops forgets its buffer (it cannot know
//! what it missed) and, if it was the appender, lets the lease go to a node that did not drop. A
//! `PUBLISH` is lost only when every node that received it is gone before one appended it, or when
//! Redis dropped it (no node was subscribed, or Redis failed). See docs/scaling.md.
//!
//! **The durable ingress** is for backends that need more: an entry `XADD`ed to `<prefix>:ingress`
//! waits in Redis until an appender appends it, however many nodes died meanwhile (none need be
//! running). The appender reads the stream after the last entry it appended ([`Sequencer::drain`]),
//! and the append script moves that mark in the same step, so an entry is appended once whichever
//! node appends it and whatever answer was lost. Its note names no buffered `PUBLISH` (no node
//! received one), so every node delivers it like any other.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use rtg_storage::history::redis::{Lease, RedisHistory};
use rtg_storage::history::{parse_data, Appended, History, NewPublication};

/// How long the appender's lease lasts without a renewal: a stalled or dead appender is replaced
/// after at most this (plus one renewal period).
pub const LEASE_MS: u64 = 3_000;
/// Publications appended in one script call at most.
const BATCH: usize = 512;
/// Durable ingress entries read (and appended) in one round trip at most.
const INGRESS_BATCH: usize = 256;
/// `PUBLISH`es a node keeps without a note at most (normally a handful: the appender's round trip).
const BUFFER: usize = 100_000;
/// Channels whose last delivered offset a node remembers at most.
const CHANNELS: usize = 100_000;

/// What the ingress hands the sequencer, in the order the node's subscription received it.
#[derive(Debug, Clone)]
pub enum Input {
    /// A `PUBLISH` on a channel of the policy.
    Raw { channel: String, payload: Vec<u8> },
    /// A message on the notes channel (a note or a marker).
    Note(Vec<u8>),
    /// The subscription was (re)made: whatever was published meanwhile was missed.
    Reset,
}

/// A publication to deliver with its place.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub channel: String,
    pub data: Value,
    pub place: Appended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    /// Holds the lease and waits for its own marker.
    Syncing,
    /// Holds the lease and has its marker: appends.
    Appender,
}

struct Entry {
    channel: String,
    /// Its place, `M/k` (the *k*-th `PUBLISH` after the marker `M`), when placed.
    key: String,
    /// Received after a marker (since the subscription was made).
    placed: bool,
    /// The payload's hash (notes of an appender that names publications by hash).
    hash: String,
    json: String,
    sent: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Message {
    Marker { m: String, n: String },
    Note { c: String, o: String, e: String, t: String, h: String, d: String },
}

pub struct Sequencer {
    history: Arc<RedisHistory>,
    token: String,
    lease_key: String,
    notes: String,
    lease_ms: u64,
    role: Role,
    /// The marker of the current lease taking.
    nonce: u64,
    /// No taking the lease before this (just after a reset: the nodes that missed nothing go first).
    eligible: Instant,
    buffer: VecDeque<Entry>,
    /// The last marker received since the subscription was made, and how many `PUBLISH`es came after it.
    base: Option<(String, u64)>,
    last: HashMap<String, (String, u64)>,
    /// Subscribed before: a later [`Input::Reset`] means the subscription dropped.
    subscribed: bool,
    /// The node stops: it takes the lease no more ([`Sequencer::retire`]).
    retired: bool,
    /// Which channels the durable ingress may publish to (the policy's); others are passed over.
    known: Box<dyn Fn(&str) -> bool + Send>,
    /// The last look at the durable ingress failed (Redis down): said once, not every 50 ms.
    ingress_failing: bool,
}

/// The first 16 bytes of the payload's SHA-256, in hex.
pub fn hash(payload: &[u8]) -> String {
    hex::encode(&Sha256::digest(payload)[..16])
}

impl Sequencer {
    /// `token` names this node (unique per process).
    pub fn new(history: Arc<RedisHistory>, token: String, lease_ms: u64) -> Self {
        Sequencer {
            lease_key: history.lease_key(),
            notes: history.notes_channel(),
            history,
            token,
            lease_ms,
            role: Role::Follower,
            nonce: 0,
            eligible: Instant::now(),
            buffer: VecDeque::new(),
            base: None,
            last: HashMap::new(),
            subscribed: false,
            retired: false,
            known: Box::new(|_| true),
            ingress_failing: false,
        }
    }

    /// Only the channels `known` accepts are appended from the durable ingress (the channel policy's:
    /// a `PUBLISH` outside it never reaches a node either).
    pub fn knowing(mut self, known: impl Fn(&str) -> bool + Send + 'static) -> Self {
        self.known = Box::new(known);
        self
    }

    /// The appender appends what waits in the durable ingress, a batch at a time; true when a whole
    /// batch was read (more may wait). Run it often: an entry waits at most that long plus a round trip.
    pub async fn drain(&mut self) -> bool {
        if self.role != Role::Appender {
            return false;
        }
        let entries = match self.history.read_ingress(INGRESS_BATCH).await {
            Ok(entries) => {
                self.ingress_failing = false;
                if entries.is_empty() {
                    return false;
                }
                entries
            }
            Err(e) => {
                if !std::mem::replace(&mut self.ingress_failing, true) {
                    tracing::warn!("channel publications: the durable ingress not read: {e}");
                }
                return false;
            }
        };
        let full = entries.len() >= INGRESS_BATCH;
        let mut ids = Vec::with_capacity(entries.len());
        let mut batch = Vec::with_capacity(entries.len());
        for e in entries {
            // An empty channel: the script only moves the mark past the entry.
            let (channel, json) = match e.data.as_deref() {
                Some(data) if (self.known)(&e.channel) => {
                    let value = rtg_storage::history::payload_value(data.as_bytes());
                    (e.channel, serde_json::to_string(&value).unwrap_or_else(|_| "null".into()))
                }
                _ => {
                    tracing::warn!(
                        id = e.id,
                        channel = e.channel,
                        "durable ingress: no known channel or no data; passed over"
                    );
                    (String::new(), String::new())
                }
            };
            // No node buffers it: its note must match no buffered `PUBLISH` (see `Input::Note`).
            batch.push(NewPublication { channel, hash: format!("ingress:{}", e.id), json });
            ids.push(e.id);
        }
        let lease = Lease { key: &self.lease_key, token: &self.token, notes: &self.notes };
        match self.history.append_ingress(&batch, &ids, &lease).await {
            Ok(Some(_)) => full,
            Ok(None) => {
                tracing::info!("channel publications: the lease lapsed; another node appends");
                self.role = Role::Follower;
                false
            }
            Err(e) => {
                // It may have run; the stored mark says what is left, so the next read resumes there.
                tracing::warn!(entries = batch.len(), "channel publications: durable ingress not appended: {e}");
                false
            }
        }
    }

    /// The pub/sub channel the ingress must subscribe to, on the connection of the `PUBLISH`es.
    pub fn notes_channel(&self) -> &str {
        &self.notes
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// How often [`Sequencer::tick`] should run.
    pub fn period(&self) -> Duration {
        Duration::from_millis((self.lease_ms / 3).max(1))
    }

    /// Takes one input; returns what to deliver, in order. Call [`Sequencer::flush`] after a run
    /// of inputs.
    pub async fn input(&mut self, input: Input) -> Vec<Delivery> {
        match input {
            Input::Raw { channel, payload } => {
                let json = serde_json::to_string(&rtg_storage::history::payload_value(&payload))
                    .unwrap_or_else(|_| "null".into());
                if self.buffer.len() >= BUFFER {
                    self.buffer.pop_front();
                    tracing::warn!("channel publications: too many without a note; the oldest is forgotten");
                }
                let hash = hash(&payload);
                let (key, placed) = match &mut self.base {
                    Some((marker, k)) => {
                        *k += 1;
                        (format!("{marker}/{k}"), true)
                    }
                    None => (String::new(), false),
                };
                self.buffer.push_back(Entry { channel, key, placed, hash, json, sent: false });
                Vec::new()
            }
            Input::Note(bytes) => match serde_json::from_slice::<Message>(&bytes) {
                Ok(Message::Marker { m, n }) => {
                    let taking = m == self.token && n == self.nonce.to_string() && self.role == Role::Syncing;
                    self.base = Some((format!("{m}:{n}"), 0));
                    if taking {
                        for e in self.buffer.iter_mut() {
                            e.sent = false;
                        }
                        self.role = Role::Appender;
                        tracing::info!(waiting = self.buffer.len(), "channel publications: this node appends");
                    }
                    Vec::new()
                }
                Ok(Message::Note { c, o, e, t, h, d }) => {
                    // By place (`M/k#hash`); else (this node received the publication before its first
                    // marker, or the appender had none) the oldest unplaced entry of that channel and payload.
                    let (place, payload) = match h.split_once('#') {
                        Some((place, payload)) => (Some(place), payload),
                        None => (None, h.as_str()),
                    };
                    let found = place
                        .and_then(|p| self.buffer.iter().position(|x| x.placed && x.key == p))
                        .or_else(|| self.buffer.iter().position(|x| !x.placed && x.channel == c && x.hash == payload));
                    if let Some(i) = found {
                        self.buffer.remove(i);
                    }
                    let (Ok(offset), Ok(ts)) = (o.parse::<u64>(), t.parse::<u64>()) else {
                        tracing::warn!("channel publications: a broken note ignored");
                        return Vec::new();
                    };
                    let place = Appended { offset, epoch: e, ts };
                    self.deliverable(c, parse_data(&d), place).await
                }
                Err(e) => {
                    tracing::warn!("channel publications: a broken note ignored: {e}");
                    Vec::new()
                }
            },
            Input::Reset => {
                self.buffer.clear();
                self.base = None;
                if self.role != Role::Follower {
                    self.role = Role::Follower;
                    if let Err(e) = self.history.release(&self.lease_key, &self.token).await {
                        tracing::warn!("channel publications: lease not released: {e}");
                    }
                }
                // After a drop, the nodes that missed nothing take the lease first.
                if std::mem::replace(&mut self.subscribed, true) {
                    self.eligible = Instant::now() + Duration::from_millis(self.lease_ms);
                }
                // A marker published before the subscription was lost: take (and mark) now.
                self.tick().await;
                Vec::new()
            }
        }
    }

    /// The note's publication, preceded by any this node missed; nothing if it delivered it already.
    async fn deliverable(&mut self, channel: String, data: Value, place: Appended) -> Vec<Delivery> {
        let mut out = Vec::new();
        if let Some((epoch, last)) = self.last.get(&channel) {
            if *epoch == place.epoch {
                if place.offset <= *last {
                    return out;
                }
                if place.offset > last + 1 {
                    match self.history.after(&channel, *last).await {
                        Ok(tail) if tail.position.epoch == place.epoch => {
                            out.extend(tail.publications.into_iter().filter(|p| p.offset < place.offset).map(|p| {
                                Delivery {
                                    channel: channel.clone(),
                                    data: p.data,
                                    place: Appended { offset: p.offset, epoch: place.epoch.clone(), ts: p.ts },
                                }
                            }));
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(channel, "channel publications: missed ones not read: {e}"),
                    }
                }
            }
        }
        if self.last.len() >= CHANNELS && !self.last.contains_key(&channel) {
            self.last.clear();
        }
        self.last.insert(channel.clone(), (place.epoch.clone(), place.offset));
        out.push(Delivery { channel, data, place });
        out
    }

    /// The node stops: it lets the lease go if it holds it (another node takes over within its next
    /// renewal, and appends what this one did not: its own marker tells it what that is), and takes it no
    /// more.
    pub async fn retire(&mut self) {
        self.retired = true;
        if self.role != Role::Follower {
            self.role = Role::Follower;
            match self.history.release(&self.lease_key, &self.token).await {
                Ok(()) => tracing::info!("channel publications: lease released (shutdown)"),
                Err(e) => tracing::warn!("channel publications: lease not released at shutdown: {e}"),
            }
        }
    }

    /// Renews or takes the lease (run every [`Sequencer::period`]).
    pub async fn tick(&mut self) {
        if self.retired {
            return;
        }
        let marker = match self.role {
            Role::Follower if Instant::now() < self.eligible => return,
            Role::Follower => {
                self.nonce += 1;
                Some(self.nonce)
            }
            Role::Syncing => Some(self.nonce),
            // A new marker with every renewal: the nodes that subscribed since the last one can
            // place what they receive from then on.
            Role::Appender => {
                self.nonce += 1;
                Some(self.nonce)
            }
        };
        match self.history.lease(&self.lease_key, &self.token, self.lease_ms, marker).await {
            Ok(0) => {
                if self.role != Role::Follower {
                    tracing::info!("channel publications: another node appends");
                }
                self.role = Role::Follower;
            }
            // Held all along.
            Ok(1) if self.role == Role::Appender => {}
            // Lapsed and taken again: another node may have appended meanwhile.
            Ok(2) if self.role == Role::Appender => {
                self.role = Role::Syncing;
                self.nonce += 1;
                let _ = self.history.lease(&self.lease_key, &self.token, self.lease_ms, Some(self.nonce)).await;
            }
            Ok(_) => self.role = Role::Syncing,
            Err(e) => tracing::warn!("channel publications: lease not renewed: {e}"),
        }
    }

    /// The appender appends what waits in its buffer.
    pub async fn flush(&mut self) {
        while self.role == Role::Appender {
            let idx: Vec<usize> = (0..self.buffer.len()).filter(|&i| !self.buffer[i].sent).take(BATCH).collect();
            if idx.is_empty() {
                return;
            }
            let batch: Vec<NewPublication> = idx
                .iter()
                .map(|&i| {
                    let e = &self.buffer[i];
                    let tag = if e.placed { format!("{}#{}", e.key, e.hash) } else { e.hash.clone() };
                    NewPublication { channel: e.channel.clone(), hash: tag, json: e.json.clone() }
                })
                .collect();
            let lease = Lease { key: &self.lease_key, token: &self.token, notes: &self.notes };
            match self.history.append_as(&batch, Some(&lease)).await {
                Ok(Some(_)) => {
                    for i in idx {
                        self.buffer[i].sent = true;
                    }
                }
                Ok(None) => {
                    tracing::info!("channel publications: the lease lapsed; another node appends");
                    self.role = Role::Follower;
                }
                Err(e) => {
                    // It may have run: only a new marker tells what is still to append.
                    tracing::warn!(publications = batch.len(), "channel publications: not appended: {e}");
                    self.role = Role::Syncing;
                    self.nonce += 1;
                    return;
                }
            }
        }
    }
}
