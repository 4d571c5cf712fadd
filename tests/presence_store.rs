//! The Redis store's presence scripts (issue 23, SPEC §4) against a real `redis-server`: nodes with
//! different `PRESENCE_GRACE_MS` run each other's offline checks; the grace of the node the user left is
//! the one that counts, and a check run too early is scheduled again, never dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::RedisServer;
use realtime_gateway::app::auth::User;
use realtime_gateway::storage::redis_link::RedisLink;
use realtime_gateway::storage::store::{redis::RedisStore, Limits, Store};

/// A `redis-server` that is SIGKILLed and reaped when dropped (also when a test panics).
fn node(url: &str, id: &str) -> RedisStore {
    RedisStore::new(Arc::new(RedisLink::open(url).expect("link")), "ps", id, Limits::default())
}

/// Claims the due offline checks on `store` until `user`'s comes (or fails after `limit`).
async fn claim(store: &RedisStore, user: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if store.due_offline_checks().await.expect("due checks").iter().any(|u| u == user) {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "no offline check of {user} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_departing_nodes_grace_counts_and_an_early_check_is_scheduled_again() {
    let server = RedisServer::start();
    let url = server.url();
    let (c, a) = (node(&url, "c"), node(&url, "a"));
    let user = |id: &str| User { user_id: id.into(), email: None, name: None, role: "user".into() };

    // The user leaves node C (grace 300 ms); node A (grace 5 s) claims the check: offline now.
    assert_eq!(c.socket_up(&user("u1"), "s1", 20).await.unwrap(), Some(true));
    assert_eq!(c.socket_down("u1", "s1", &["r1".to_string()], 300).await.unwrap(), 0);
    claim(&a, "u1", Duration::from_secs(5)).await;
    let rooms = a.mark_offline_if_idle("u1", 5000).await.unwrap();
    assert_eq!(rooms, Some(vec!["r1".to_string()]), "offline after the departing node's grace, not the checker's");
    assert_eq!(a.presence(&["u1".to_string()]).await.unwrap()[0].status, "offline");

    // The user leaves node C with a 1.5 s grace; a check comes due at once (a node with grace 0 scheduled
    // it): too early, so it is scheduled again for the end of the 1.5 s, and runs then.
    assert_eq!(c.socket_up(&user("u2"), "s2", 20).await.unwrap(), Some(true));
    assert_eq!(c.socket_down("u2", "s2", &[], 1500).await.unwrap(), 0);
    a.schedule_offline_check("u2", 0).await.unwrap();
    claim(&a, "u2", Duration::from_secs(1)).await;
    assert_eq!(a.mark_offline_if_idle("u2", 0).await.unwrap(), None, "still within the departing node's grace");
    assert_eq!(a.presence(&["u2".to_string()]).await.unwrap()[0].status, "online");
    let after = claim(&a, "u2", Duration::from_secs(5)).await;
    assert!(after >= Duration::from_millis(1000), "scheduled for the end of the grace, came after {after:?}");
    assert!(a.mark_offline_if_idle("u2", 0).await.unwrap().is_some(), "offline once the grace is over");
}
