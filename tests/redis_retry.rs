//! The first requests after a Redis restart (issue 12): the gateway's store answers them (a plain
//! command and a Lua script, whose cache the restart emptied) instead of failing them with the dropped
//! connection. Runs a real `redis-server` (scripts/test.sh installs it when missing), SIGKILLed and
//! restarted on the same port. It asserts what the gateway does, not what redis-rs does.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use realtime_gateway::redis_link::RedisLink;
use redis::AsyncCommands;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A `redis-server` that is SIGKILLed and reaped when dropped (also when a test panics).
struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

/// Starts `redis-server` without persistence and waits until it answers a PING.
fn start_redis(port: u16) -> RedisServer {
    let server = RedisServer(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (scripts/test.sh installs it)"),
    );
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = client.get_connection() {
            if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                return server;
            }
        }
        assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(server: RedisServer) {
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_first_requests_after_a_redis_restart_succeed() {
    use realtime_gateway::store::{redis::RedisStore, Limits, Store};
    let port = free_port();
    let redis = start_redis(port);
    let url = format!("redis://127.0.0.1:{port}");
    let store = RedisStore::new(Arc::new(RedisLink::open(&url).expect("link")), "retry", "n1", Limits::default());
    let user = realtime_gateway::auth::User { user_id: "u".into(), email: None, name: None, role: "user".into() };
    assert_eq!(store.socket_up(&user, "s1", 20).await.expect("socket_up before the restart"), Some(true));
    let mut other = RedisLink::open(&url).expect("link").commands();
    let _: () = other.set("k", "before").await.expect("set before the restart");

    kill(redis);
    let redis = start_redis(port);
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
