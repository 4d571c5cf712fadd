//! This node's `/ws` connections, their rooms, and the [`Transport`] that gives them the core's
//! broadcasts: here directly, on the other nodes through the bus (`<prefix>:bus`).
//!
//! A connection costs one entry in `conns`, one per room in `rooms`, its [`WsConn`] and its task:
//! no Engine.IO layer, no per-connection timer beyond the task's own.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures_util::future::BoxFuture;
use rtg_model::id::ClientId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

use governor::DefaultDirectRateLimiter;
use rtg_cluster::bus::{Bus, Listener};
use rtg_model::client::{Client, Close, Link, SendError};
use rtg_model::hub::{Broadcast, Member, Transport};
use rtg_model::session::{Quotas, Session};

use super::dialect::{self, Kind};
use super::frames;

/// What the connection's task writes.
pub enum Out {
    Frame(Utf8Bytes),
    /// A close after the frames queued before it (shutdown: `server-shutdown` first).
    Close(u16, &'static str),
    /// Told once every frame queued before it was written to the socket and flushed: how a
    /// hand-over that needs proof (`pending-messages`) learns it reached the client's socket. Dropped
    /// unsent when the connection ends first.
    Written(tokio::sync::oneshot::Sender<()>),
}

/// What the connection's reader hands its handler, in the order the frames arrived (see
/// `super::run`): handling a frame may wait on Redis or the event proxy, and meanwhile the
/// connection's writer goes on draining its queue.
pub enum Job {
    Text(Utf8Bytes),
    Binary,
    /// A frame past the frame budget: answered `RATE_LIMITED`, not run (the text, to echo its `requestId`).
    Refused(Option<Utf8Bytes>),
    /// Close after the answers to the frames before it.
    Close(u16, &'static str),
}

/// Frames read ahead of the handler; past this the reader stops reading until the handler catches up.
pub const MAX_JOBS: usize = 64;

#[derive(Default)]
struct Jobs {
    items: VecDeque<Job>,
    /// A handler task is draining `items` (at most one: frames are handled in order).
    running: bool,
    /// Closing: jobs are dropped.
    closing: bool,
}

/// Most bytes one connection may have waiting: past it the client is a slow consumer, whatever the
/// number of frames (a few huge broadcasts fill memory as surely as many small ones).
pub const MAX_QUEUED_BYTES: usize = 8 << 20;

#[derive(Default)]
struct Queue {
    items: VecDeque<Out>,
    bytes: usize,
}

/// One `/ws` connection, as the registry and the core see it.
pub struct WsConn {
    id: ClientId,
    /// Frames waiting for the connection's task. A plain queue rather than a channel: an idle
    /// connection's queue holds no allocation (a bounded channel allocates a block of slots up front).
    queue: Mutex<Queue>,
    cap: usize,
    /// Something was queued.
    pub wake: Notify,
    jobs: Mutex<Jobs>,
    /// The handler took a job from a full queue, or stopped.
    pub jobs_changed: Notify,
    session: RwLock<Option<Arc<Session>>>,
    rooms: Mutex<Vec<String>>,
    clients: Arc<WsClients>,
    /// Set with `kill`: the task closes at once, queued frames or not. `kill_signal` interrupts a
    /// write under way; the writer looks at `killed` whenever it wakes.
    killed: Mutex<Option<(u16, &'static str)>>,
    pub kill_signal: Notify,
    open: AtomicBool,
    /// The client sends `payload` (not `data`): its server frames carry `payload` too.
    payload_style: AtomicBool,
    /// The protocol it speaks (a [`dialect::Kind`]), told by its first frames.
    dialect: std::sync::atomic::AtomicU8,
    /// Frames received before authentication (a client that may do nothing else yet).
    pub pre_auth_frames: std::sync::atomic::AtomicU32,
    /// Every frame after authentication, counted before it is read (the event quota), and the
    /// budget of frames refused for it: spent, the connection is flooding (SPEC §10).
    pub frames: DefaultDirectRateLimiter,
    pub frame_strikes: DefaultDirectRateLimiter,
    /// Where it connected from (for the Admin UI).
    address: Option<std::net::IpAddr>,
}

impl WsConn {
    pub fn new(
        clients: Arc<WsClients>,
        buffer: usize,
        address: Option<std::net::IpAddr>,
        quotas: &Quotas,
    ) -> Arc<Self> {
        Arc::new(WsConn {
            id: ClientId::new(),
            queue: Mutex::new(Queue::default()),
            cap: buffer.max(1),
            wake: Notify::new(),
            jobs: Mutex::new(Jobs::default()),
            jobs_changed: Notify::new(),
            session: RwLock::new(None),
            rooms: Mutex::new(Vec::new()),
            clients,
            killed: Mutex::new(None),
            kill_signal: Notify::new(),
            open: AtomicBool::new(true),
            payload_style: AtomicBool::new(false),
            dialect: std::sync::atomic::AtomicU8::new(Kind::Undecided as u8),
            pre_auth_frames: std::sync::atomic::AtomicU32::new(0),
            frames: DefaultDirectRateLimiter::direct(quotas.events),
            frame_strikes: DefaultDirectRateLimiter::direct(quotas.strikes),
            address,
        })
    }

    pub fn set_session(&self, session: Arc<Session>) {
        *self.session.write().unwrap_or_else(|e| e.into_inner()) = Some(session);
    }

    /// Queues a frame; a full queue (frames or bytes) means the client does not read: it is closed.
    pub fn push(&self, frame: Utf8Bytes) -> Result<(), SendError> {
        if !self.open.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.items.len() >= self.cap || q.bytes + frame.len() > MAX_QUEUED_BYTES {
                drop(q);
                tracing::warn!(sid = %self.id, "slow consumer: buffer full, disconnecting");
                self.kill(1008, "Slow consumer");
                return Err(SendError::Full);
            }
            q.bytes += frame.len();
            if q.items.capacity() == 0 {
                // Most connections only ever hold one frame at a time (the greeting, a rare
                // message): one slot, not the four a first push grows to.
                q.items.reserve_exact(1);
            }
            q.items.push_back(Out::Frame(frame));
        }
        self.wake.notify_one();
        Ok(())
    }

    /// The next queued item; an emptied queue gives back its memory when it had grown.
    pub fn pop(&self) -> Option<Out> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let item = q.items.pop_front();
        if let Some(Out::Frame(f)) = &item {
            q.bytes = q.bytes.saturating_sub(f.len());
        }
        if q.items.is_empty() && q.items.capacity() > 16 {
            q.items = VecDeque::new();
        }
        item
    }

    pub fn send_text(&self, text: String) -> Result<(), SendError> {
        self.push(Utf8Bytes::from(text))
    }

    /// Queues a [`Out::Written`] marker behind what is queued; its receiver hears once all of it
    /// was written (an error when the connection ends first).
    pub fn written(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.open.load(Ordering::Acquire) {
            self.queue.lock().unwrap_or_else(|e| e.into_inner()).items.push_back(Out::Written(tx));
            self.wake.notify_one();
        }
        rx
    }

    /// Queues a job for the handler; true when no handler task is running (the caller starts one).
    pub fn push_job(&self, job: Job) -> bool {
        let mut j = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if j.closing {
            return false;
        }
        j.items.push_back(job);
        !std::mem::replace(&mut j.running, true)
    }

    /// The handler's next job; `None` (and the handler is done) when there is none.
    pub fn next_job(&self) -> Option<Job> {
        let mut j = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let full = j.items.len() >= MAX_JOBS;
        let job = if j.closing { None } else { j.items.pop_front() };
        if job.is_none() {
            j.running = false;
            j.items = VecDeque::new();
        }
        drop(j);
        if full || job.is_none() {
            self.jobs_changed.notify_one();
        }
        job
    }

    /// The reader is that far ahead of the handler.
    pub fn jobs_full(&self) -> bool {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).items.len() >= MAX_JOBS
    }

    /// No more jobs: the connection closes.
    pub fn stop_jobs(&self) {
        let mut j = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        j.closing = true;
        j.items = VecDeque::new();
    }

    pub fn jobs_running(&self) -> bool {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).running
    }

    /// Closes after what is queued.
    pub fn close_after_queue(&self, code: u16, reason: &'static str) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).items.push_back(Out::Close(code, reason));
        self.wake.notify_one();
    }

    /// Closes at once.
    pub fn kill(&self, code: u16, reason: &'static str) {
        let mut k = self.killed.lock().unwrap_or_else(|e| e.into_inner());
        if k.is_none() {
            *k = Some((code, reason));
        }
        self.kill_signal.notify_one();
        // The writer, when it waits for frames rather than on a write.
        self.wake.notify_one();
    }

    pub fn killed(&self) -> Option<(u16, &'static str)> {
        *self.killed.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_payload_style(&self) {
        self.payload_style.store(true, Ordering::Relaxed);
    }

    pub fn payload_style(&self) -> bool {
        self.payload_style.load(Ordering::Relaxed)
    }

    pub fn dialect(&self) -> Kind {
        Kind::from_u8(self.dialect.load(Ordering::Relaxed))
    }

    /// Set once, by the first frame that tells.
    pub fn set_dialect(&self, kind: Kind) {
        let _ = self.dialect.compare_exchange(Kind::Undecided as u8, kind as u8, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A server event as this connection's protocol writes it.
    fn event_frame(&self, event: &str, data: &Value) -> String {
        dialect::render(self.dialect(), event, data).unwrap_or_else(|| frames::event(event, data, self.payload_style()))
    }

    pub fn set_closed(&self) {
        self.open.store(false, Ordering::Release);
    }
}

impl Link for WsConn {
    fn id(&self) -> ClientId {
        self.id
    }
    fn session(&self) -> Option<Arc<Session>> {
        self.session.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn join(&self, room: &str) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if !rooms.iter().any(|r| r == room) {
            if rooms.capacity() == 0 {
                rooms.reserve_exact(1); // the user's own room, for most connections the only one
            }
            rooms.push(room.to_string());
            self.clients.index_add(room, self.id);
        }
    }
    fn leave(&self, room: &str) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let before = rooms.len();
        rooms.retain(|r| r != room);
        if rooms.len() != before {
            self.clients.index_remove(room, self.id);
        }
    }
    fn rooms(&self) -> Vec<String> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn emit(&self, event: &str, data: &Value) -> Result<(), SendError> {
        self.send_text(self.event_frame(event, data))
    }
    fn emit_confirmed<'a>(&'a self, event: &'a str, data: &'a Value, timeout: Duration) -> BoxFuture<'a, bool> {
        // No client acks on `/ws`: confirmed once the frame's bytes were written to the socket (a
        // frame merely queued for a peer that reads nothing is not handed over).
        Box::pin(async move {
            if self.emit(event, data).is_err() {
                return false;
            }
            matches!(tokio::time::timeout(timeout, self.written()).await, Ok(Ok(())))
        })
    }
    fn connected(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
    fn close(&self, why: Close) {
        match why {
            Close::Kicked => self.close_after_queue(1000, "Disconnected by the server"),
            Close::AuthExpired => self.close_after_queue(4003, "Token expired"),
            Close::Overloaded => self.close_after_queue(1013, "Try again later"),
        }
    }
    fn transport(&self) -> rtg_model::client::Via {
        rtg_model::client::Via::Ws
    }
    fn info(&self) -> rtg_model::client::ClientInfo {
        let issued = self.session().map(|s| s.since).unwrap_or_default();
        rtg_model::client::ClientInfo {
            transport: "ws".into(),
            address: self.address.map(|a| a.to_string()),
            issued,
            time: crate::render::date(issued),
            url: "/ws".into(),
            ..Default::default()
        }
    }
}

/// What travels on the bus (topic `ws`) between nodes.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum BusOp<B> {
    Emit {
        b: B,
    },
    /// `node` has `/ws` clients (sent when its first arrives, then every [`PRESENCE_EVERY`]).
    Present {
        node: String,
    },
    /// `node` has none any more.
    Absent {
        node: String,
    },
    Leave {
        rooms: Vec<String>,
    },
    Disconnect {
        room: String,
    },
}

/// A question (topic `ws`): which of your `/ws` clients are in `room` (and, with `rooms`, in what rooms)?
#[derive(Serialize, Deserialize)]
struct Ask {
    room: String,
    #[serde(default)]
    rooms: bool,
}

/// A `/ws` client of another node, as its node describes it.
#[derive(Serialize, Deserialize, Default)]
struct Remote {
    id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rooms: Vec<String>,
}

/// How often a node with `/ws` clients says so on the bus.
const PRESENCE_EVERY: Duration = Duration::from_secs(5);
/// A room's members on this node. Most rooms are a user's own (`u:<userId>`) with one device: its id
/// inline, a set only from the second (a set's first table costs ~80 bytes per room, that is per idle
/// connection).
enum Members {
    One(ClientId),
    Many(HashSet<ClientId>),
}

impl Members {
    fn insert(&mut self, id: ClientId) {
        match self {
            Members::One(one) if *one == id => {}
            Members::One(one) => *self = Members::Many(HashSet::from([*one, id])),
            Members::Many(set) => {
                set.insert(id);
            }
        }
    }

    /// Takes `id` out; true when no member is left (the room goes).
    fn remove(&mut self, id: &ClientId) -> bool {
        match self {
            Members::One(one) => one == id,
            Members::Many(set) => {
                set.remove(id);
                set.is_empty()
            }
        }
    }

    fn contains(&self, id: &ClientId) -> bool {
        match self {
            Members::One(one) => one == id,
            Members::Many(set) => set.contains(id),
        }
    }

    fn len(&self) -> usize {
        match self {
            Members::One(_) => 1,
            Members::Many(set) => set.len(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &ClientId> {
        let (one, many) = match self {
            Members::One(one) => (Some(one), None),
            Members::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// How long a node's word that it has `/ws` clients holds; and how long a new node assumes that others
/// have some (it has not heard them yet).
const PRESENCE_HOLDS: Duration = Duration::from_secs(15);

/// This node's `/ws` connections and their rooms.
///
/// Lock order: `conns` before `rooms`, never the other way. A thread that holds `rooms` and waits for
/// `conns` while another holds `conns` and waits for `rooms` deadlocks as soon as writers queue on
/// both (std's `RwLock` makes new readers wait behind a waiting writer).
pub struct WsClients {
    conns: RwLock<HashMap<ClientId, Arc<WsConn>>>,
    rooms: RwLock<HashMap<String, Members>>,
    bus: Arc<Bus>,
    /// The other nodes that said they have `/ws` clients, and when: broadcasts go on the bus only
    /// while one has (a cluster of Socket.IO clients alone pays no extra publish per broadcast).
    remote: Mutex<HashMap<String, std::time::Instant>>,
    started: std::time::Instant,
}

impl WsClients {
    /// The registry, listening on the bus's `ws` topic.
    pub fn new(bus: Arc<Bus>) -> Arc<Self> {
        let clients = Arc::new(WsClients {
            conns: RwLock::default(),
            rooms: RwLock::default(),
            bus: bus.clone(),
            remote: Mutex::new(HashMap::new()),
            started: std::time::Instant::now(),
        });
        bus.listen("ws", Arc::new(BusSide(Arc::downgrade(&clients))));
        clients
    }

    /// Asks every other node for its `/ws` clients in `room` (with their rooms when `rooms`).
    async fn ask(&self, room: &str, rooms: bool) -> Vec<Remote> {
        let answers = self.bus.ask("ws", &Ask { room: room.to_string(), rooms }).await;
        answers.into_iter().filter_map(|a| serde_json::from_value::<Vec<Remote>>(a).ok()).flatten().collect()
    }

    pub fn register(self: &Arc<Self>, conn: Arc<WsConn>) {
        let first = {
            let mut conns = self.conns.write().unwrap_or_else(|e| e.into_inner());
            conns.insert(conn.id, conn);
            conns.len() == 1
        };
        if first {
            self.announce(true);
        }
    }

    /// Tells the other nodes whether this one has `/ws` clients.
    fn announce(self: &Arc<Self>, present: bool) {
        if !self.bus.clustered() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let node = me.bus.node_id().to_string();
            let op: BusOp<()> = if present { BusOp::Present { node } } else { BusOp::Absent { node } };
            me.bus.publish("ws", &op).await;
        });
    }

    /// May another node have `/ws` clients? (Then broadcasts go on the bus too.)
    fn remote_present(&self) -> bool {
        if self.started.elapsed() < PRESENCE_HOLDS {
            return true;
        }
        let mut remote = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        remote.retain(|_, at| at.elapsed() < PRESENCE_HOLDS);
        !remote.is_empty()
    }

    /// Says every [`PRESENCE_EVERY`] that this node has `/ws` clients, while it has.
    pub fn spawn_presence(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRESENCE_EVERY);
            loop {
                tick.tick().await;
                if !me.is_empty() {
                    me.announce(true);
                }
            }
        })
    }

    /// Forgets a closed connection and its rooms.
    pub fn unregister(self: &Arc<Self>, conn: &WsConn) {
        let last = {
            let mut conns = self.conns.write().unwrap_or_else(|e| e.into_inner());
            conns.remove(&conn.id).is_some() && conns.is_empty()
        };
        if last {
            self.announce(false);
        }
        let rooms = std::mem::take(&mut *conn.rooms.lock().unwrap_or_else(|e| e.into_inner()));
        let mut index = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        for room in rooms {
            if index.get_mut(&room).is_some_and(|m| m.remove(&conn.id)) {
                index.remove(&room);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.conns.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn index_add(&self, room: &str, id: ClientId) {
        let mut index = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        match index.get_mut(room) {
            Some(members) => members.insert(id),
            None => {
                index.insert(room.to_string(), Members::One(id));
            }
        }
    }

    fn index_remove(&self, room: &str, id: ClientId) {
        let mut index = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        if index.get_mut(room).is_some_and(|m| m.remove(&id)) {
            index.remove(room);
        }
    }

    /// Calls `each` for every admitted connection a broadcast reaches on this node, while the
    /// registry's locks are held: a leave (a writer of `rooms`) comes wholly before or wholly after
    /// it, so a client whose `leave-room` was answered gets nothing more from that room.
    fn for_targets(&self, b: &Broadcast, mut each: impl FnMut(&Arc<WsConn>)) {
        let conns = self.conns.read().unwrap_or_else(|e| e.into_inner());
        if conns.is_empty() {
            return;
        }
        let index = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        let skip = b.skip.as_deref();
        let excluded = |id: &ClientId| {
            skip.is_some_and(|s| id.as_str() == s)
                || b.except.iter().any(|r| index.get(r).is_some_and(|m| m.contains(id)))
        };
        if b.rooms.is_empty() {
            for (id, c) in conns.iter() {
                if !excluded(id) && c.session().is_some() {
                    each(c);
                }
            }
        } else if let [room] = b.rooms.as_slice() {
            // One room: its members are distinct already.
            for id in index.get(room).into_iter().flat_map(Members::iter) {
                if !excluded(id) {
                    if let Some(c) = conns.get(id) {
                        each(c);
                    }
                }
            }
        } else {
            let mut seen: HashSet<ClientId> = HashSet::new();
            for room in &b.rooms {
                for id in index.get(room).into_iter().flat_map(Members::iter) {
                    if !excluded(id) && seen.insert(*id) {
                        if let Some(c) = conns.get(id) {
                            each(c);
                        }
                    }
                }
            }
        }
    }

    /// Queues a broadcast's frame for its targets, under the registry's locks (see
    /// [`WsClients::for_targets`]); a push takes only the connection's own queue lock.
    fn deliver(&self, b: &Broadcast) {
        // Built once per envelope style and dialect, and only when someone speaks it.
        let mut built: [Option<Utf8Bytes>; 6] = Default::default();
        self.for_targets(b, |c| {
            let slot = match c.dialect() {
                Kind::Undecided | Kind::Saas => usize::from(c.payload_style()),
                other => other as usize + 1,
            };
            let frame = built[slot].get_or_insert_with(|| Utf8Bytes::from(c.event_frame(&b.event, &b.data)));
            let _ = c.push(frame.clone());
        });
    }

    fn leave_local(&self, rooms: &[String]) {
        for c in self.in_rooms(rooms) {
            for r in rooms {
                c.leave(r);
            }
        }
    }

    fn in_rooms(&self, rooms: &[String]) -> Vec<Arc<WsConn>> {
        // `conns` first: the lock order of [`WsClients`].
        let conns = self.conns.read().unwrap_or_else(|e| e.into_inner());
        let index = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: HashSet<ClientId> = HashSet::new();
        for r in rooms {
            ids.extend(index.get(r).into_iter().flat_map(Members::iter).copied());
        }
        ids.iter().filter_map(|id| conns.get(id).cloned()).collect()
    }

    fn disconnect_local(&self, room: &str) -> usize {
        let conns = self.in_rooms(&[room.to_string()]);
        for c in &conns {
            c.close(Close::Kicked);
        }
        conns.len()
    }

    pub fn all(&self) -> Vec<Arc<WsConn>> {
        self.conns.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}

/// The `/ws` side of the hub.
pub struct WsTransport(pub Arc<WsClients>);

impl Transport for WsTransport {
    fn broadcast<'a>(&'a self, b: &'a Broadcast) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0.deliver(b);
            if !b.local && self.0.remote_present() {
                self.0.bus.publish("ws", &BusOp::Emit { b }).await;
            }
            Ok(())
        })
    }

    fn get(&self, id: ClientId) -> Option<Client> {
        let conns = self.0.conns.read().unwrap_or_else(|e| e.into_inner());
        conns.get(&id).filter(|c| c.session().is_some()).map(|c| c.clone() as Client)
    }

    fn local_clients(&self) -> Vec<Client> {
        self.0.all().into_iter().filter(|c| c.session().is_some()).map(|c| c as Client).collect()
    }

    /// This node's members, then the other nodes' (asked on the bus; their sessions are not known
    /// here: the caller finds their users in the store).
    fn members<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Vec<Member>> {
        Box::pin(async move {
            let mut out: Vec<Member> = self
                .0
                .in_rooms(&[room.to_string()])
                .into_iter()
                .filter_map(|c| c.session().map(|s| Member { id: c.id, session: Some(s) }))
                .collect();
            for r in self.0.ask(room, false).await {
                if let Ok(id) = r.id.parse::<ClientId>() {
                    out.push(Member { id, session: None });
                }
            }
            out
        })
    }

    fn rooms_of_members<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut out: Vec<String> = self.0.in_rooms(&[room.to_string()]).iter().flat_map(|c| c.rooms()).collect();
            out.extend(self.0.ask(room, true).await.into_iter().flat_map(|r| r.rooms));
            out
        })
    }

    fn leave_all<'a>(&'a self, rooms: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.0.leave_local(rooms);
            self.0.bus.publish("ws", &BusOp::<()>::Leave { rooms: rooms.to_vec() }).await;
        })
    }

    fn disconnect<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<usize, String>> {
        Box::pin(async move {
            let n = self.0.disconnect_local(room);
            self.0.bus.publish("ws", &BusOp::<()>::Disconnect { room: room.to_string() }).await;
            Ok(n)
        })
    }

    fn local_rooms(&self) -> BoxFuture<'_, Vec<(String, u64)>> {
        Box::pin(async move {
            let index = self.0.rooms.read().unwrap_or_else(|e| e.into_inner());
            index.iter().map(|(r, m)| (r.clone(), m.len() as u64)).collect()
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for c in self.0.all() {
                c.close_after_queue(1001, "Server shutting down");
            }
            // The connections' tasks flush and close; wait a little for them.
            for _ in 0..40 {
                if self.0.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }
}

/// The registry's side of the bus: the other nodes' broadcasts and questions for `/ws` clients.
struct BusSide(std::sync::Weak<WsClients>);

impl Listener for BusSide {
    fn on_message(&self, body: Value) {
        let Some(clients) = self.0.upgrade() else { return };
        match serde_json::from_value::<BusOp<Broadcast>>(body) {
            Ok(BusOp::Emit { b }) => clients.deliver(&b),
            Ok(BusOp::Leave { rooms }) => clients.leave_local(&rooms),
            Ok(BusOp::Disconnect { room }) => {
                clients.disconnect_local(&room);
            }
            Ok(BusOp::Present { node }) => {
                clients.remote.lock().unwrap_or_else(|e| e.into_inner()).insert(node, std::time::Instant::now());
            }
            Ok(BusOp::Absent { node }) => {
                clients.remote.lock().unwrap_or_else(|e| e.into_inner()).remove(&node);
            }
            Err(e) => tracing::debug!("ws bus: unreadable message: {e}"),
        }
    }

    fn on_ask(&self, body: Value) -> Value {
        let (Some(clients), Ok(ask)) = (self.0.upgrade(), serde_json::from_value::<Ask>(body)) else {
            return Value::Array(Vec::new());
        };
        let members: Vec<Remote> = clients
            .in_rooms(&[ask.room])
            .into_iter()
            .filter(|c| c.session().is_some())
            .map(|c| Remote { id: c.id.to_string(), rooms: if ask.rooms { c.rooms() } else { Vec::new() } })
            .collect();
        serde_json::to_value(members).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Broadcasts (`targets`), room look-ups (`in_rooms`), arrivals and departures (writers on both
    /// locks) and joins, all at once: with the two locks taken in opposite orders this deadlocks
    /// within a few thousand rounds.
    #[test]
    fn registry_locks_do_not_deadlock_under_concurrent_readers_and_writers() {
        let bus = Bus::new(None, "test".into(), "node".into(), Arc::new(AtomicUsize::new(0)));
        let clients = WsClients::new(bus);
        let quota = governor::Quota::per_second(std::num::NonZeroU32::MIN);
        let quotas = Quotas { events: quota, strikes: quota };
        let room = "r".to_string();
        for _ in 0..50 {
            let c = WsConn::new(clients.clone(), 16, None, &quotas);
            c.join(&room);
            clients.register(c);
        }
        let b = Broadcast {
            rooms: vec![room.clone()],
            except: Vec::new(),
            skip: None,
            event: "e".into(),
            data: Value::Null,
            local: true,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let mut threads = Vec::new();
        for kind in 0..6 {
            let (clients, quotas, room, b, stop, done) = (
                clients.clone(),
                Quotas { events: quota, strikes: quota },
                room.clone(),
                b.clone(),
                stop.clone(),
                done.clone(),
            );
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match kind % 3 {
                        0 => clients.for_targets(&b, |_| {}),
                        1 => drop(clients.in_rooms(std::slice::from_ref(&room))),
                        _ => {
                            let c = WsConn::new(clients.clone(), 16, None, &quotas);
                            clients.register(c.clone());
                            c.join(&room);
                            clients.unregister(&c);
                        }
                    }
                }
                let _ = done.send(());
            }));
        }
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        for _ in 0..threads.len() {
            finished.recv_timeout(Duration::from_secs(10)).expect("the registry's locks deadlocked");
        }
    }

    /// A room's members inline and as a set: the one-member form keeps what the set would, through
    /// growing to two members and shrinking back.
    #[test]
    fn members_one_then_many_then_empty() {
        let (a, b) = (ClientId::new(), ClientId::new());
        let mut m = Members::One(a);
        m.insert(a);
        assert!(matches!(m, Members::One(_)) && m.len() == 1 && m.contains(&a) && !m.contains(&b));
        assert!(!m.remove(&b), "removing a stranger leaves the member");
        m.insert(b);
        assert_eq!(m.len(), 2);
        let mut ids: Vec<ClientId> = m.iter().copied().collect();
        ids.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(ids, want);
        assert!(!m.remove(&a));
        assert!(m.contains(&b) && !m.contains(&a) && m.len() == 1);
        assert!(m.remove(&b), "the last member gone, the room goes");
        assert!(Members::One(a).remove(&a));
    }
}
