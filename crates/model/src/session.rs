//! What the gateway knows of one connected client (its [`Session`]: user, rate budget, joined chat
//! rooms, place under the per-user cap), the node's connection counters, and the expiry queue of tokens.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use governor::{DefaultDirectRateLimiter, Quota};

use crate::config::Config;
use crate::id::ClientId;
use crate::user::User;
/// The per-address connection quota: `rate` per second, bursts of twice that; `None` for 0 (off).
pub fn connect_quota(rate: u32) -> Option<Quota> {
    NonZeroU32::new(rate).map(|rate| {
        let burst = rate.checked_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN)).unwrap_or(rate);
        Quota::per_second(rate).allow_burst(burst)
    })
}

pub fn random_node_id() -> String {
    use rand::Rng;
    let n: u32 = rand::rng().random();
    format!("node-{n:08x}")
}

/// What a socket is. Its user id is fixed at connect; the claims (role, email, name, expiry) are those
/// of its latest token: a refresh replaces them (SPEC §2). Kept small: one per socket.
pub struct Session {
    /// The id of [`Session::user`], which never changes: kept apart so that it can be lent out.
    user_id: Option<String>,
    /// The claims of the latest token; read through [`Session::user`], replaced by [`Session::set_claims`].
    user: RwLock<Option<Arc<User>>>,
    /// Token expiry in seconds since the epoch; 0 for anonymous sockets.
    exp: AtomicU64,
    /// The socket's event budget (`RATE_LIMIT_PER_SEC`, bursts of `RATE_LIMIT_BURST`).
    pub limiter: DefaultDirectRateLimiter,
    /// The budget of refused events: a socket that exhausts it too is flooding, and is dropped.
    pub strikes: DefaultDirectRateLimiter,
    /// The chat rooms (ids) this socket joined. Kept here rather than read back from the adapter:
    /// socketioxide may empty a closing socket's rooms before its disconnect handler runs. Its lock
    /// also makes check-then-join sequences (caps) atomic per socket.
    rooms: Mutex<Vec<String>>,
    /// This socket's place under the per-user cap; given back when the session is dropped, so a
    /// socket that never completes its connect cannot leak it.
    _slot: Option<Slot>,
    /// The store counted this socket and the user was offline before it (announce `online`).
    pub became_online: std::sync::atomic::AtomicBool,
    /// Its departure ran (see `events::depart`).
    pub departed: std::sync::atomic::AtomicBool,
    /// When it was admitted (ms since the epoch).
    pub since: u64,
}

/// The outcome of [`Session::join_room`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    New,
    Already,
    /// At the per-socket room cap.
    Full,
}

/// The per-socket rate quotas, computed once from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    pub events: Quota,
    pub strikes: Quota,
}

impl Quotas {
    pub fn from_config(cfg: &Config) -> Self {
        let per_sec = NonZeroU32::new(cfg.rate_limit_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(cfg.rate_limit_burst).unwrap_or(NonZeroU32::MIN);
        let half = NonZeroU32::new((cfg.rate_limit_per_sec / 2).max(1)).unwrap_or(NonZeroU32::MIN);
        Quotas {
            events: Quota::per_second(per_sec).allow_burst(burst),
            strikes: Quota::per_second(half).allow_burst(burst),
        }
    }
}

impl Session {
    pub fn new(user: Option<User>, exp: u64, quotas: &Quotas, slot: Option<Slot>) -> Self {
        Self {
            user_id: user.as_ref().map(|u| u.user_id.clone()),
            user: RwLock::new(user.map(Arc::new)),
            exp: AtomicU64::new(exp),
            limiter: DefaultDirectRateLimiter::direct(quotas.events),
            strikes: DefaultDirectRateLimiter::direct(quotas.strikes),
            rooms: Mutex::new(Vec::new()),
            _slot: slot,
            became_online: std::sync::atomic::AtomicBool::new(false),
            departed: std::sync::atomic::AtomicBool::new(false),
            since: crate::clock::unix_now_ms(),
        }
    }
    /// Records a joined chat room, unless the socket already holds `cap` rooms.
    pub fn join_room(&self, room_id: &str, cap: usize) -> Joined {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if rooms.iter().any(|r| r == room_id) {
            return Joined::Already;
        }
        if rooms.len() >= cap {
            return Joined::Full;
        }
        rooms.push(room_id.to_string());
        Joined::New
    }
    /// Forgets a chat room; false if it was not joined.
    pub fn leave_room(&self, room_id: &str) -> bool {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let before = rooms.len();
        rooms.retain(|r| r != room_id);
        rooms.len() != before
    }
    pub fn in_room(&self, room_id: &str) -> bool {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|r| r == room_id)
    }
    /// The joined chat rooms, emptied (the socket is leaving).
    pub fn take_rooms(&self) -> Vec<String> {
        std::mem::take(&mut *self.rooms.lock().unwrap_or_else(|e| e.into_inner()))
    }
    pub fn exp(&self) -> u64 {
        self.exp.load(Ordering::Relaxed)
    }
    pub fn set_exp(&self, exp: u64) {
        self.exp.store(exp, Ordering::Relaxed)
    }
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }
    /// The user as its latest token describes it; None for an anonymous socket.
    pub fn user(&self) -> Option<Arc<User>> {
        self.user.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Replaces the claims with a newer token's, of the same user (false, and nothing changed, for
    /// another user or an anonymous socket). A lower role takes effect at once: every check that
    /// follows reads the new claims. The expiry moves apart, with its timers (`connection::refresh`).
    pub fn set_claims(&self, user: User) -> bool {
        if self.user_id.as_deref() != Some(user.user_id.as_str()) {
            return false;
        }
        *self.user.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(user));
        true
    }
    pub fn is_admin(&self) -> bool {
        self.user().is_some_and(|u| u.is_admin())
    }
}

/// Node-local connection counts, and sockets per user for the per-user cap.
#[derive(Default)]
pub struct Counters {
    pub connections: AtomicI64,
    pub authenticated: AtomicI64,
    per_user: Mutex<HashMap<String, usize>>,
}

/// One socket's place under the per-user cap on this node (see [`Counters::reserve`]).
pub struct Slot {
    counters: Arc<Counters>,
    user_id: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.counters.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.user_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.user_id);
            }
        }
    }
}

impl Counters {
    /// Takes one of the user's `cap` places on this node, checked and counted under one lock so
    /// that concurrent connects cannot both take the last one.
    pub fn reserve(self: &Arc<Self>, user_id: &str, cap: usize) -> Option<Slot> {
        let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(user_id.to_string()).or_insert(0);
        if *n >= cap {
            if *n == 0 {
                map.remove(user_id);
            }
            return None;
        }
        *n += 1;
        Some(Slot { counters: self.clone(), user_id: user_id.to_string() })
    }

    /// Counts a connected socket.
    pub fn add(&self, authenticated: bool) {
        if authenticated {
            self.authenticated.fetch_add(1, Ordering::Relaxed);
        }
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn remove(&self, authenticated: bool) {
        if authenticated {
            self.authenticated.fetch_sub(1, Ordering::Relaxed);
        }
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }
    pub fn authenticated(&self) -> i64 {
        self.authenticated.load(Ordering::Relaxed)
    }
    /// Distinct users with a socket on this node.
    pub fn online_users(&self) -> usize {
        self.per_user.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// What the expiry sweep does when an entry falls due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExpiryStep {
    /// The token's `exp`: send `auth-expired`.
    Warn,
    /// The end of the grace: disconnect unless refreshed.
    Disconnect,
}

/// One ordered set of (due second, step, socket) shared by every socket of the node, swept by one
/// task four times a second (`events::spawn_expiry_sweeper`): no timer or task per socket.
#[derive(Default)]
pub struct ExpiryQueue {
    set: Mutex<BTreeSet<(u64, ExpiryStep, ClientId)>>,
}

impl ExpiryQueue {
    pub fn schedule(&self, due: u64, step: ExpiryStep, sid: ClientId) {
        self.set.lock().unwrap_or_else(|e| e.into_inner()).insert((due, step, sid));
    }
    pub fn cancel(&self, due: u64, step: ExpiryStep, sid: ClientId) {
        self.set.lock().unwrap_or_else(|e| e.into_inner()).remove(&(due, step, sid));
    }
    /// Removes and returns every entry due at or before `now`.
    pub fn take_due(&self, now: u64) -> Vec<(u64, ExpiryStep, ClientId)> {
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        let rest = set.split_off(&(now + 1, ExpiryStep::Warn, ClientId::ZERO));
        std::mem::replace(&mut *set, rest).into_iter().collect()
    }
    pub fn len(&self) -> usize {
        self.set.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_cap() {
        let c = Arc::new(Counters::default());
        let a1 = c.reserve("a", 2).expect("first place");
        let a2 = c.reserve("a", 2).expect("second place");
        assert!(c.reserve("a", 2).is_none(), "the cap holds");
        assert_eq!(c.online_users(), 1);
        drop(a1);
        let a3 = c.reserve("a", 2).expect("a place given back is free again");
        drop((a2, a3));
        assert_eq!(c.online_users(), 0);
        assert!(c.reserve("b", 0).is_none());
        assert_eq!(c.online_users(), 0, "a refused reservation leaves nothing behind");
        c.add(true);
        c.add(false);
        assert_eq!((c.connections(), c.authenticated()), (2, 1));
    }

    #[test]
    fn per_user_cap_is_atomic_under_threads() {
        let c = Arc::new(Counters::default());
        let got: Vec<Option<Slot>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16).map(|_| s.spawn(|| c.reserve("u", 3))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(got.iter().filter(|s| s.is_some()).count(), 3);
    }

    #[test]
    fn default_connect_rate_lets_10k_clients_behind_one_address_back_within_30s() {
        use governor::clock::FakeRelativeClock;
        let rate = Config::default_for_tests().connect_rate_per_ip;
        let quota = connect_quota(rate).expect("on by default");
        let clock = FakeRelativeClock::default();
        let limiter = governor::RateLimiter::direct_with_clock(quota, clock.clone());
        // 10,000 clients behind one NAT, all retrying every 100 ms after a deploy.
        let (mut waiting, mut elapsed_ms) = (10_000u32, 0u64);
        while waiting > 0 && elapsed_ms <= 30_000 {
            while waiting > 0 && limiter.check().is_ok() {
                waiting -= 1;
            }
            clock.advance(std::time::Duration::from_millis(100));
            elapsed_ms += 100;
        }
        assert_eq!(waiting, 0, "CONNECT_RATE_PER_IP={rate} leaves clients out after 30 s");
        assert!(elapsed_ms <= 10_000, "all back in {elapsed_ms} ms");
        // The old default (50/s) would not have.
        let old = governor::RateLimiter::direct_with_clock(connect_quota(50).unwrap(), FakeRelativeClock::default());
        assert!((0..10_000).filter(|_| old.check().is_ok()).count() < 10_000);
    }

    #[test]
    fn expiry_takes_only_due() {
        let q = ExpiryQueue::default();
        let s = ClientId::new();
        q.schedule(10, ExpiryStep::Warn, s);
        q.schedule(11, ExpiryStep::Disconnect, s);
        q.schedule(12, ExpiryStep::Warn, s);
        let due = q.take_due(11);
        assert_eq!(due.len(), 2);
        assert_eq!(q.len(), 1);
        q.cancel(12, ExpiryStep::Warn, s);
        assert!(q.is_empty());
    }
}
