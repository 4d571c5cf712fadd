//! The first command after a Redis restart (issue 12): a bare `ConnectionManager` fails it with a
//! dropped connection while it reconnects; the gateway's `RetryConn` retries it inside and succeeds.
//! Runs a real `redis-server` (scripts/test.sh installs it when missing), SIGKILLed and restarted on
//! the same port.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
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
async fn the_first_command_after_a_redis_restart_succeeds() {
    let port = free_port();
    let redis = start_redis(port);
    let url = format!("redis://127.0.0.1:{port}");
    // Two links, so each has a connection of its own that the restart drops.
    let (link, other) = (RedisLink::open(&url).expect("link"), RedisLink::open(&url).expect("link"));
    let mut retrying = link.commands();
    let mut bare = other.conn();
    let _: () = retrying.set("k", "before").await.expect("set before the restart");
    let _: String = redis::cmd("PING").query_async(&mut bare).await.expect("bare ping before the restart");

    kill(redis);
    let redis = start_redis(port);
    // The premise: without the retry, the first command on a dropped connection fails.
    let bare_first: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut bare).await;
    let first: redis::RedisResult<Option<String>> = retrying.get("k").await;
    kill(redis);

    assert!(bare_first.is_err(), "a bare ConnectionManager's first command after a restart was expected to fail");
    // Redis restarted empty (no persistence): the key is gone, but the command itself succeeded.
    assert_eq!(first.expect("the gateway's first command after the restart"), None);
}
