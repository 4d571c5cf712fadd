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

/// A TCP relay in front of Redis that, once armed, swallows the next reply from Redis and closes the
/// client's connection: the command ran, its client sees the connection end before the answer.
async fn relay(redis_port: u16, armed: Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("relay listens");
    let port = listener.local_addr().expect("relay address").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await else { continue };
            let armed = armed.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if armed.swap(false, Ordering::SeqCst) {
                        break; // the reply is swallowed, the client's connection closed
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    port
}

/// Issue 22: a connection that ends after Redis ran a command, before its reply, fails that command to
/// its caller; the command is not sent again (an `INCR` ran once, not twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_reply_was_lost_is_not_run_twice() {
    let redis = RedisServer::start();
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = relay(redis.port, armed.clone()).await;
    let link = RedisLink::open(&format!("redis://127.0.0.1:{port}")).expect("link");
    let mut conn = link.commands();
    let _: () = conn.set("n", 0).await.expect("set through the relay");
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let lost: redis::RedisResult<i64> = conn.incr("n", 1).await;
    assert!(lost.is_err(), "the reply never came: the INCR fails to its caller, got {lost:?}");
    let mut direct = RedisLink::open(&redis.url()).expect("direct link").commands();
    let n: i64 = direct.get("n").await.expect("read directly");
    assert_eq!(n, 1, "the INCR ran exactly once");
    // The link goes on: the next command is answered on a new connection.
    let next: i64 = conn.incr("n", 1).await.expect("the next command after the lost reply");
    assert_eq!(next, 2);
}
