//! The nodes' bus (`crates/cluster/src/bus.rs`) against a real `redis-server`: two nodes' buses, each fed by
//! a subscription of its own as the ingress feeds it. A message reaches the other node and not its sender;
//! a question is answered by every other node, and only the asker gets the answers; a topic nobody listens
//! to, and a body that is not the bus's, are ignored.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::RedisServer;
use futures_util::StreamExt;
use realtime_gateway::cluster::bus::{Bus, Listener};
use realtime_gateway::storage::redis_link::RedisLink;
use serde_json::{json, Value};

const CHANNEL: &str = "t:bus";

/// Records what a node's listener heard, and answers questions with its node's name.
struct Heard {
    node: &'static str,
    messages: Mutex<Vec<Value>>,
}

impl Listener for Heard {
    fn on_message(&self, body: Value) {
        self.messages.lock().unwrap().push(body);
    }
    fn on_ask(&self, body: Value) -> Value {
        json!({ "node": self.node, "asked": body })
    }
}

/// A node's bus and what its listener heard; its subscription feeds the bus until the test ends.
async fn node(url: &str, name: &'static str, peers: &Arc<AtomicUsize>) -> (Arc<Bus>, Arc<Heard>) {
    let link = Arc::new(RedisLink::open(url).expect("link"));
    let bus = Bus::new(Some(link), CHANNEL.into(), name.into(), peers.clone());
    let heard = Arc::new(Heard { node: name, messages: Mutex::new(Vec::new()) });
    bus.listen("topic", heard.clone());
    let mut sub = redis::Client::open(url).expect("url").get_async_pubsub().await.expect("pubsub");
    sub.subscribe(CHANNEL).await.expect("subscribe");
    let feed = bus.clone();
    tokio::spawn(async move {
        let mut stream = sub.on_message();
        while let Some(msg) = stream.next().await {
            feed.on_payload(msg.get_payload_bytes());
        }
    });
    (bus, heard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_the_other_node_and_questions_are_answered_by_each_other_node() {
    let redis = RedisServer::start();
    let url = redis.url();
    let peers = Arc::new(AtomicUsize::new(2));
    let (a, heard_a) = node(&url, "a", &peers).await;
    let (_b, heard_b) = node(&url, "b", &peers).await;
    let (_c, heard_c) = node(&url, "c", &peers).await;

    a.publish("topic", &json!({ "n": 1 })).await;
    a.publish("nobody-listens", &json!({ "n": 2 })).await;
    let mut raw = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("PUBLISH").arg(CHANNEL).arg("not the bus's").query_async(&mut raw).await.unwrap();
    a.publish("topic", &json!({ "n": 3 })).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while (heard_b.messages.lock().unwrap().len() < 2 || heard_c.messages.lock().unwrap().len() < 2)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for heard in [&heard_b, &heard_c] {
        assert_eq!(*heard.messages.lock().unwrap(), vec![json!({ "n": 1 }), json!({ "n": 3 })], "in order, once each");
    }
    assert!(heard_a.messages.lock().unwrap().is_empty(), "the sender does not hear itself");

    let mut answers = a.ask("topic", &json!({ "q": 1 })).await;
    answers.sort_by_key(|v| v["node"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        answers,
        vec![json!({ "node": "b", "asked": { "q": 1 } }), json!({ "node": "c", "asked": { "q": 1 } })],
        "one answer from each other node, to the asker"
    );
    // A question on a topic nobody listens to: no answer, after the bus's own timeout.
    assert!(a.ask("nobody-listens", &json!({})).await.is_empty());
}
