//! Everything the gateway keeps beyond a socket's life: rooms and their members, history, presence,
//! offline queues, de-duplication keys, private-message receipts and call state.
//!
//! One trait, two implementations: [`memory::MemoryStore`] for a single node and
//! [`redis::RedisStore`] for a cluster, so that any node can serve any user. Every collection is
//! bounded: history per room (count and bytes) and per author (bytes), queue per user (count and
//! bytes), created rooms per user, calls per user, and TTLs on rooms, history, de-dup keys, receipts
//! and queues.

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use rtg_model::user::User;

/// A chat message as clients see it (SPEC §4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: String,
    pub room_id: String,
    pub user_id: String,
    pub user: User,
    pub content: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub reply_to: Option<String>,
    pub timestamp: u64,
    pub edited: bool,
    pub deleted: bool,
    /// A shared file (`type:"file"`, SPEC §13): `{id, name, size, mimeType, url}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<serde_json::Value>,
}

/// A room made with `create-room`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Room {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub members: Vec<String>,
    pub created_by: String,
    pub created_at: u64,
}

/// A private message (SPEC §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrivateMessage {
    pub id: String,
    pub from_user_id: String,
    pub from_user: User,
    pub to_user_id: String,
    pub content: String,
    pub timestamp: u64,
    pub read: bool,
    /// A shared file (SPEC §13): `{id, name, size, mimeType, url}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<serde_json::Value>,
}

/// What `get-presence` answers for one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub status: String,
    pub last_seen: Option<u64>,
}

/// A call between two users (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Call {
    pub id: String,
    pub caller: String,
    pub callee: String,
    pub caller_sid: String,
    /// The node holding the caller's socket.
    #[serde(default)]
    pub caller_node: String,
    /// The callee socket that answered; `None` while ringing.
    pub callee_sid: Option<String>,
    /// The node holding the answering socket.
    #[serde(default)]
    pub callee_node: Option<String>,
    pub call_type: String,
    pub state: CallState,
    pub created_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    Ringing,
    Active,
}

impl Call {
    /// Does this call count against `user_id`'s `MAX_CALLS_PER_USER`? The calls a user placed
    /// (ringing or answered) and the calls they answered; a call ringing *to* a user counts against
    /// its caller only, so that nobody can make another user unreachable by calling them.
    pub fn counts_against(&self, user_id: &str) -> bool {
        self.caller == user_id || (self.callee == user_id && self.state == CallState::Active)
    }
}

/// The outcome of queueing a private message for an offline target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// The target has a connected socket: not queued.
    Online,
    Queued,
    /// Not queued: its sender already keeps `queued_bytes_per_sender` waiting in offline queues.
    SenderFull,
}

/// The outcome of answering a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Answered {
    /// Answered: the call as stored now (active).
    Yes(Box<Call>),
    /// Not ringing (answered already, ended, or unknown).
    NotRinging,
    /// The callee already has `cap` calls counting against them.
    AtCap,
}

/// An edit of a stored message.
#[derive(Debug, Clone)]
pub enum Edit {
    Content(String),
    Delete,
}

impl Message {
    /// Applies an edit: new content marks it edited; a delete empties it and marks it deleted.
    pub fn apply(&mut self, edit: &Edit) {
        match edit {
            Edit::Content(c) => {
                self.content.clone_from(c);
                self.edited = true;
            }
            Edit::Delete => {
                self.content.clear();
                self.file = None;
                self.deleted = true;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A failing store is an `INTERNAL` error to the client; the cause goes to the log.
impl From<StoreError> for rtg_model::error::ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!("store: {e}");
        rtg_model::error::ApiError::new(rtg_model::error::Code::Internal, "Storage unavailable")
    }
}

/// The outcome of claiming a de-duplication key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use: go ahead.
    New,
    /// Seen before within the window: the value stored with the first use.
    Seen(String),
}

/// Offline checks are polled, and `lastSeen` is wall-clock: allow this much disagreement.
pub const GRACE_TOLERANCE_MS: u64 = 50;

/// Limits every implementation enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub history_per_room: usize,
    /// Bytes of stored messages per room (the oldest go first).
    pub history_bytes_per_room: usize,
    /// A room's history and a created room go after this long without a message.
    pub room_idle_ttl_secs: u64,
    /// Rooms made with `create-room` that one user may have created.
    pub created_rooms_per_user: usize,
    pub queue_per_user: usize,
    /// Bytes of queued private messages per user (the oldest go first).
    pub queue_bytes_per_user: usize,
    pub queue_ttl_secs: u64,
    /// Bytes (as [`queued_cost`] counts) one sender may keep waiting in all offline queues
    /// together; released when a message is handed over, evicted or expires.
    pub queued_bytes_per_sender: usize,
    pub dedup_ttl_secs: u64,
    pub receipt_ttl_secs: u64,
    /// De-duplication keys, and read receipts, one sender may hold (each): past it the sender's
    /// oldest is forgotten (an old duplicate may pass again; `mark-read` of a very old message is
    /// ignored), so one account cannot grow them without bound.
    pub keys_per_sender: usize,
    /// Rooms remembered per user between a disconnect and the end of the presence grace.
    pub departed_rooms_per_user: usize,
    /// Bytes of history one user's messages may hold, over all rooms (counted as the room caps
    /// count them): past it, that user's own oldest messages go first, so one user's writes only
    /// ever displace their own.
    pub history_bytes_per_user: usize,
    /// The in-memory store's bound on all rooms' history together: past it, the oldest messages of
    /// the user who holds the most go first.
    pub history_bytes_total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            history_per_room: 1000,
            history_bytes_per_room: 2 * 1024 * 1024,
            room_idle_ttl_secs: 30 * 24 * 3600,
            created_rooms_per_user: 200,
            queue_per_user: 1000,
            queue_bytes_per_user: 4 * 1024 * 1024,
            queue_ttl_secs: 7 * 24 * 3600,
            queued_bytes_per_sender: 8 * 1024 * 1024,
            dedup_ttl_secs: 300,
            receipt_ttl_secs: 7 * 24 * 3600,
            keys_per_sender: 100_000,
            departed_rooms_per_user: 2000,
            history_bytes_per_user: 16 * 1024 * 1024,
            history_bytes_total: 256 * 1024 * 1024,
        }
    }
}

impl Limits {
    pub fn from_config(cfg: &rtg_model::config::Config) -> Self {
        Limits {
            history_per_room: cfg.max_room_history as usize,
            history_bytes_per_room: cfg.max_room_history_bytes as usize,
            room_idle_ttl_secs: cfg.room_idle_ttl_secs,
            created_rooms_per_user: cfg.max_created_rooms_per_user as usize,
            history_bytes_per_user: cfg.max_history_bytes_per_user as usize,
            queued_bytes_per_sender: cfg.max_queued_bytes_per_sender as usize,
            ..Limits::default()
        }
    }
}

/// What counts against a room's history bytes: the content plus a fixed allowance for the rest.
pub fn message_cost(msg: &Message) -> usize {
    msg.content.len() + 256
}

/// What counts against a user's offline queue bytes.
pub fn queued_cost(msg: &PrivateMessage) -> usize {
    msg.content.len() + 256
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- rooms made with create-room ---
    /// Stores a room unless one with its id exists; returns the stored room either way, or `None`
    /// when the creator already has `created_rooms_per_user` rooms.
    async fn create_room(&self, room: Room) -> StoreResult<Option<Room>>;
    async fn room(&self, id: &str) -> StoreResult<Option<Room>>;
    /// Rooms that list this user.
    async fn rooms_of(&self, user_id: &str) -> StoreResult<Vec<Room>>;

    // --- history ---
    /// Appends, trimming the room to `history_per_room` messages and `history_bytes_per_room`, and
    /// the author's messages (over all rooms) to `history_bytes_per_user`, oldest first.
    async fn append(&self, msg: &Message) -> StoreResult<()>;
    /// Up to `limit` messages just before `before` (or the newest), oldest first, and whether older
    /// ones exist. `None` when `before` is not in the history.
    async fn history(
        &self,
        room: &str,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Option<(Vec<Message>, bool)>>;
    async fn message(&self, room: &str, id: &str) -> StoreResult<Option<Message>>;
    /// Applies an edit to a live (not deleted) message and returns it as stored. The change in size
    /// counts against its author's `history_bytes_per_user`.
    async fn edit(&self, room: &str, id: &str, edit: Edit) -> StoreResult<Option<Message>>;

    // --- de-duplication ---
    /// Claims `key` for `ttl_secs`, remembering `value`; a second claim gets the first value. The
    /// key counts against `owner`'s `keys_per_sender` (their oldest is forgotten past it).
    async fn claim(&self, owner: &str, key: &str, value: &str) -> StoreResult<Claim>;
    /// Gives a claim back (the work it guarded failed), so that a retry is not taken for a duplicate.
    async fn release(&self, key: &str) -> StoreResult<()>;
    /// Takes a lease on `key` for `ms` unless someone holds it: true when taken. It ends with
    /// [`Store::unlease`] or by itself after `ms`, so a holder that dies cannot keep it.
    async fn lease(&self, key: &str, ms: u64) -> StoreResult<bool>;
    async fn unlease(&self, key: &str) -> StoreResult<()>;

    // --- presence ---
    /// Counts a connected socket of the user unless they already hold `cap` sockets cluster-wide
    /// (checked and counted in one step). `None`: at the cap, nothing counted. `Some(true)`: the
    /// user was offline (status `offline`) and is online now.
    async fn socket_up(&self, user: &User, sid: &str, cap: usize) -> StoreResult<Option<bool>>;
    /// Uncounts a socket and remembers the chat rooms it was in. When it was the user's last socket
    /// cluster-wide, an offline check falls due after `grace_ms` (see [`Store::due_offline_checks`]).
    /// Returns the user's remaining sockets cluster-wide.
    async fn socket_down(&self, user_id: &str, sid: &str, rooms: &[String], grace_ms: u64) -> StoreResult<u64>;
    /// Sockets the user has connected, cluster-wide.
    async fn sockets_of(&self, user_id: &str) -> StoreResult<u64>;
    /// The user behind each socket id (for members on other nodes).
    async fn socket_users(&self, sids: &[String]) -> StoreResult<Vec<Option<User>>>;
    async fn set_status(&self, user_id: &str, status: &str, now: u64) -> StoreResult<()>;
    /// Schedules an offline check of the user after `grace_ms` (a dead node's users).
    async fn schedule_offline_check(&self, user_id: &str, grace_ms: u64) -> StoreResult<()>;
    /// Takes (claims) the offline checks that are due: each is handed to exactly one caller, on any
    /// node, so a check survives the node that scheduled it.
    async fn due_offline_checks(&self) -> StoreResult<Vec<String>>;
    /// Marks the user offline if they have no socket and none left less than the grace ago (a
    /// later disconnect restarts the grace). The grace is the one given to the last `socket_down`
    /// (the departing node's `PRESENCE_GRACE_MS`), else `grace_ms` (the checker's): in a cluster whose
    /// nodes have different settings, a check run too early by another node is scheduled again for
    /// the end of that grace, never forgotten. `Some(rooms)`: they went offline now; `rooms` are the
    /// chat rooms their sockets were in when they left.
    async fn mark_offline_if_idle(&self, user_id: &str, grace_ms: u64) -> StoreResult<Option<Vec<String>>>;
    async fn presence(&self, user_ids: &[String]) -> StoreResult<Vec<Presence>>;
    /// Makes this node's presence entries match the sockets it admitted (`socket_up`) and has not
    /// released (`socket_down`), after Redis was away or the node restarted under the same id; no
    /// socket's own update runs meanwhile. Returns the users whose count on this node dropped to zero
    /// (they may have gone offline).
    async fn resync(&self) -> StoreResult<Vec<String>>;

    // --- private messages ---
    /// Queues the message unless its target has a connected socket, in one step with the check, so
    /// that a target connecting meanwhile either finds it in its queue or receives it live; and
    /// unless its sender already keeps `queued_bytes_per_sender` in offline queues (checked and
    /// counted in the same step).
    async fn enqueue_if_offline(&self, msg: &PrivateMessage) -> StoreResult<Enqueued>;
    /// Queues a message already accepted (its target left while it was on its way): counted
    /// against its sender like any queued message, never refused.
    async fn enqueue(&self, msg: &PrivateMessage) -> StoreResult<()>;
    /// The user's queue, oldest first, left in place until [`Store::ack_queue`].
    async fn peek_queue(&self, user_id: &str) -> StoreResult<Vec<PrivateMessage>>;
    /// Removes these messages from the user's queue (they were handed over).
    async fn ack_queue(&self, user_id: &str, msgs: &[PrivateMessage]) -> StoreResult<()>;
    /// Remembers who sent a private message to whom, for `mark-read`; at most `keys_per_sender`
    /// per sender (their oldest is forgotten past it).
    async fn remember_receipt(&self, id: &str, from: &str, to: &str) -> StoreResult<()>;
    /// (from, to) of each message id, when known.
    async fn receipts(&self, ids: &[String]) -> StoreResult<Vec<Option<(String, String)>>>;

    // --- calls ---
    /// Stores a new (ringing) call unless its caller already has `cap` calls counting against them
    /// ([`Call::counts_against`]), checked and stored in one step. False at the cap.
    async fn put_call(&self, call: &Call, cap: usize) -> StoreResult<bool>;
    async fn call(&self, id: &str) -> StoreResult<Option<Call>>;
    async fn remove_call(&self, id: &str) -> StoreResult<Option<Call>>;
    /// Marks a ringing call answered by `callee_sid` on `node`, unless the callee already has `cap`
    /// calls counting against them (checked and changed in one step).
    async fn answer_call(&self, id: &str, callee_sid: &str, node: &str, cap: usize) -> StoreResult<Answered>;
    /// Removes the call only if it is still ringing (the ring timeout).
    async fn remove_ringing_call(&self, id: &str) -> StoreResult<Option<Call>>;
    /// Live calls the user is a party of.
    async fn calls_of(&self, user_id: &str) -> StoreResult<Vec<Call>>;

    /// Periodic upkeep (once a minute): forget what expired. Redis expires keys by itself.
    async fn purge(&self) {}
}

pub use rtg_model::clock::new_id;
