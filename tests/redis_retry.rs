//! The first requests after a Redis restart (issue 12): the gateway's store answers them (a plain
//! command and a Lua script, whose cache the restart emptied) instead of failing them with the dropped
//! connection. Runs a real `redis-server` (scripts/test.sh installs it when missing), SIGKILLed and
//! restarted on the same port. It asserts what the gateway does, not what redis-rs does.

use std::sync::Arc;

mod common;

use common::{free_port, RedisServer};
use realtime_gateway::storage::redis_link::RedisLink;
use redis::AsyncCommands;

fn kill(server: RedisServer) {
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_first_requests_after_a_redis_restart_succeed() {
    use realtime_gateway::storage::store::{redis::RedisStore, Limits, Store};
    let port = free_port();
    let redis = RedisServer::start_on(port);
    let url = format!("redis://127.0.0.1:{port}");
    let store = RedisStore::new(Arc::new(RedisLink::open(&url).expect("link")), "retry", "n1", Limits::default());
    let user = realtime_gateway::app::auth::User { user_id: "u".into(), email: None, name: None, role: "user".into() };
    assert_eq!(store.socket_up(&user, "s1", 20).await.expect("socket_up before the restart"), Some(true));
    let mut other = RedisLink::open(&url).expect("link").commands();
    let _: () = other.set("k", "before").await.expect("set before the restart");

    kill(redis);
    let redis = RedisServer::start_on(port);
    // Both on connections the restart dropped: a command, then a script (its cache is empty now).
    let first: redis::RedisResult<Option<String>> = other.get("k").await;
    let script = store.socket_up(&user, "s2", 20).await;
    let presence = store.presence(&["u".to_string()]).await;
    kill(redis);

    // Redis restarted empty (no persistence): the data is gone, but each request itself succeeded.
    assert_eq!(first.expect("the first command after the restart"), None);
    assert_eq!(script.expect("the first script after the restart"), Some(true), "online again, on an empty Redis");
    assert_eq!(presence.expect("presence after the restart")[0].status, "online");
}
