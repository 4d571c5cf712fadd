//! Webhooks (SPEC §14, issue 23) against a real `redis-server` and a real HTTP receiver: the deliverer
//! claims everything a dead deliverer held (past one page), a node that lost the lease delivers nothing
//! more, appends wait for Redis in order instead of going out from memory, and a permanent refusal is
//! dead-lettered instead of holding its lane for an hour.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
mod common;

use common::RedisServer;
use realtime_gateway::app::webhooks::{self, Webhooks};
use realtime_gateway::model::config::Config;
use realtime_gateway::model::metrics::Metrics;
use realtime_gateway::storage::redis_link::RedisLink;

/// One request the receiver got: the webhook's body, and the lease's value in Redis at that moment.
#[derive(Clone, Debug)]
struct Got {
    body: serde_json::Value,
    status: u16,
    lease: Option<String>,
}

type Answer = Arc<dyn Fn(&serde_json::Value, usize) -> u16 + Send + Sync>;

#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    /// The status for a body, given how many times this id was seen before.
    answer: Answer,
    /// When set, each request reads this lease key (who holds it as the request arrives).
    lease: Option<(redis::aio::MultiplexedConnection, String)>,
}

impl Receiver {
    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
    /// The `data.n` of the accepted webhooks, in the order they arrived.
    fn accepted(&self) -> Vec<u64> {
        self.got().iter().filter(|g| g.status < 300).filter_map(|g| g.body["data"]["n"].as_u64()).collect()
    }
}

async fn receive(State(r): State<Receiver>, body: String) -> StatusCode {
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    let lease = match &r.lease {
        Some((conn, key)) => {
            let mut conn = conn.clone();
            redis::cmd("GET").arg(key).query_async::<Option<String>>(&mut conn).await.expect("GET lease")
        }
        None => None,
    };
    let seen = r.got.lock().unwrap().iter().filter(|g| g.body["id"] == body["id"]).count();
    let status = (r.answer)(&body, seen);
    r.got.lock().unwrap().push(Got { body, status, lease });
    StatusCode::from_u16(status).expect("a status")
}

async fn start_receiver(
    answer: Answer,
    lease: Option<(redis::aio::MultiplexedConnection, String)>,
) -> (String, Receiver) {
    let r = Receiver { got: Arc::default(), answer, lease };
    let app = axum::Router::new().route("/hooks", axum::routing::post(receive)).with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (format!("http://{addr}/hooks"), r)
}

fn hooks(url: &str, redis: Option<Arc<RedisLink>>, prefix: &str, node: &str, metrics: &Metrics) -> Arc<Webhooks> {
    let mut cfg = Config::default_for_tests();
    cfg.webhook_url = Some(url.to_string());
    cfg.redis_prefix = prefix.to_string();
    let hooks = Webhooks::from_config(&cfg, redis, node, Some(metrics)).expect("config").expect("webhooks on");
    webhooks::spawn(hooks.clone());
    hooks
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, limit: Duration, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn counter(metrics: &Metrics, outcome: &str) -> u64 {
    let text = metrics.render();
    let line = format!("realtime_webhooks_total{{outcome=\"{outcome}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&line)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// The test's own connection: a generous reply timeout, for the replies of 10,000 entries on a busy machine.
async fn conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect")
}

/// The ids of a sequence with repeats of the latest one allowed (at least once) must never go back.
fn assert_in_order(seq: &[u64], want: u64) {
    let mut max = None;
    for &n in seq {
        assert!(max.is_none_or(|m| n >= m), "{n} after {max:?}: out of order in {seq:?}");
        max = Some(n);
    }
    let mut unique = seq.to_vec();
    unique.dedup();
    assert_eq!(unique, (0..want).collect::<Vec<_>>(), "every webhook, once each apart from repeats: {seq:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_claims_everything_the_dead_deliverer_held_past_one_page() {
    let server = RedisServer::start();
    let mut c = conn(&server).await;
    let stream = "wh1:webhooks";
    const HELD: u64 = 10_050;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("hooks")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .unwrap();
    let now = realtime_gateway::model::clock::unix_now_ms();
    let mut p = redis::pipe();
    for n in 0..HELD {
        let body =
            serde_json::json!({ "id": format!("e{n}"), "type": "message.created", "ts": now, "data": { "n": n } });
        p.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("k")
            .arg(format!("u{}", n % 64))
            .arg("t")
            .arg(now)
            .arg("b")
            .arg(body.to_string())
            .ignore();
    }
    let _: () = p.query_async(&mut c).await.unwrap();
    // A deliverer that read all of them and died.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("hooks")
        .arg("dead")
        .arg("COUNT")
        .arg(HELD + 1)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();

    let (url, receiver) = start_receiver(Arc::new(|_, _| 204), None).await;
    let metrics = Metrics::new();
    let _hooks = hooks(&url, Some(Arc::new(RedisLink::open(&server.url()).unwrap())), "wh1", "alive", &metrics);
    until("every held webhook delivered", Duration::from_secs(120), || {
        let n = receiver.accepted().len() as u64;
        async move { n >= HELD }
    })
    .await;
    let mut ids: Vec<u64> = receiver.accepted();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len() as u64, HELD, "each one delivered");
    until("nothing left pending", Duration::from_secs(20), || {
        let mut c = c.clone();
        async move {
            let pending: (u64, redis::Value, redis::Value, redis::Value) =
                redis::cmd("XPENDING").arg(stream).arg("hooks").query_async(&mut c).await.unwrap();
            pending.0 == 0
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_lost_the_lease_delivers_nothing_more_and_order_holds_across_the_takeover() {
    let server = RedisServer::start();
    let mut c = conn(&server).await;
    let lease_key = "wh2:webhooks:leader".to_string();
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gate = open.clone();
    let answer: Answer = Arc::new(move |_, _| if gate.load(std::sync::atomic::Ordering::SeqCst) { 204 } else { 503 });
    let (url, receiver) = start_receiver(answer, Some((c.clone(), lease_key.clone()))).await;
    let metrics = Metrics::new();
    let x = hooks(&url, Some(Arc::new(RedisLink::open(&server.url()).unwrap())), "wh2", "x", &metrics);
    until("x holds the lease", Duration::from_secs(10), || {
        let mut c = c.clone();
        let key = lease_key.clone();
        async move {
            let v: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut c).await.unwrap();
            v.is_some_and(|v| v.starts_with("x"))
        }
    })
    .await;
    for n in 0..3 {
        x.send("message.created", "u", serde_json::json!({ "n": n }));
    }
    until("x retrying the first one", Duration::from_secs(10), || {
        let n = receiver.got().len();
        async move { n >= 2 }
    })
    .await;
    // X loses the lease while it is alive (as when it was stopped longer than the lease): another holds
    // it for 3 s. From now on X must not deliver; the next holder delivers, in order.
    let _: () = redis::cmd("SET").arg(&lease_key).arg("other 1").arg("PX").arg(3000).query_async(&mut c).await.unwrap();
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    until("all three delivered", Duration::from_secs(30), || {
        let n = receiver.accepted().len();
        async move { n >= 3 }
    })
    .await;
    let got = receiver.got();
    let during: Vec<&Got> = got.iter().filter(|g| g.lease.as_deref() == Some("other 1")).collect();
    assert!(during.is_empty(), "delivered while another node held the lease: {during:?}");
    assert_in_order(&receiver.accepted(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_wait_for_redis_in_order_instead_of_going_out_from_memory() {
    let server = RedisServer::start();
    let mut c = conn(&server).await;
    // Another node holds the lease: this one only produces.
    let _: () = redis::cmd("SET")
        .arg("wh3:webhooks:leader")
        .arg("other 1")
        .arg("PX")
        .arg(120_000)
        .query_async(&mut c)
        .await
        .unwrap();
    let (url, receiver) = start_receiver(Arc::new(|_, _| 204), None).await;
    let metrics = Metrics::new();
    let p = hooks(&url, Some(Arc::new(RedisLink::open(&server.url()).unwrap())), "wh3", "p", &metrics);
    for n in 0..5 {
        p.send("message.created", "u", serde_json::json!({ "n": n }));
    }
    until("the first five in the stream", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move { redis::cmd("XLEN").arg("wh3:webhooks").query_async::<u64>(&mut c).await.unwrap() == 5 }
    })
    .await;
    // Redis stops answering (its appends time out) while the next five are produced; for longer than a
    // command's timeout (2 s), then it comes back.
    server.signal("-STOP");
    for n in 5..10 {
        p.send("message.created", "u", serde_json::json!({ "n": n }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.signal("-CONT");
    assert!(receiver.got().is_empty(), "nothing goes out of turn from this node's memory: {:?}", receiver.accepted());
    // The lease is handed to this node: it delivers all ten, in order.
    let _: () = redis::cmd("DEL").arg("wh3:webhooks:leader").query_async(&mut c).await.unwrap();
    until("all ten delivered", Duration::from_secs(30), || {
        let mut unique = receiver.accepted();
        unique.sort_unstable();
        unique.dedup();
        async move { unique.len() >= 10 }
    })
    .await;
    assert_in_order(&receiver.accepted(), 10);
    assert_eq!(counter(&metrics, "dropped"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_permanent_refusal_is_dead_lettered_and_does_not_hold_its_lane() {
    // 400 for the poisoned one, 429 twice then 204 for the busy one, 204 for the rest.
    let answer: Answer = Arc::new(|body, seen| match body["data"]["kind"].as_str() {
        Some("poison") => 400,
        Some("busy") if seen < 2 => 429,
        _ => 204,
    });
    let (url, receiver) = start_receiver(answer, None).await;
    let metrics = Metrics::new();
    let h = hooks(&url, None, "wh4", "n", &metrics);
    h.send("message.created", "u", serde_json::json!({ "n": 0, "kind": "poison" }));
    h.send("message.created", "u", serde_json::json!({ "n": 1, "kind": "busy" }));
    h.send("message.created", "u", serde_json::json!({ "n": 2 }));
    until("the ones behind the poisoned webhook delivered", Duration::from_secs(20), || {
        let n = receiver.accepted().len();
        async move { n >= 2 }
    })
    .await;
    assert_eq!(receiver.accepted(), [1, 2], "in order, after the dead letter");
    let tries = |kind: &str| receiver.got().iter().filter(|g| g.body["data"]["kind"] == kind).count();
    assert_eq!(tries("poison"), webhooks::PERMANENT_TRIES as usize, "a 400 is tried a few times only");
    assert_eq!(tries("busy"), 3, "a 429 is retried until taken");
    assert_eq!(counter(&metrics, "dead_letter"), 1);
    assert_eq!(counter(&metrics, "delivered"), 2);
}
