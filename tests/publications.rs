//! The recovery seam (SPEC §15) on the real publication task of `crates/app/src/publications.rs`, not a
//! model of it: the task runs with the memory history and the real hub, and clients that record what they
//! get. While publications flow from another task, a client subscribes with `since` at a random moment and
//! a random distance behind: it must get every publication after `since` exactly once, in order, the
//! answer first; whatever the interleaving of the subscribe with the publications.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use proptest::prelude::*;
use realtime_gateway::app::publications::{Pub, Publications};
use realtime_gateway::model::client::{Client, ClientInfo, Close, Link, SendError, Via};
use realtime_gateway::model::hub::{Broadcast, Hub, Member, Transport};
use realtime_gateway::model::id::ClientId;
use realtime_gateway::model::session::Session;
use realtime_gateway::storage::history::memory::MemoryHistory;
use realtime_gateway::storage::history::{HistoryLimits, Position};
use serde_json::Value;

const CHANNEL: &str = "apps:seam";

/// A client that keeps the offsets of the channel events it gets, in order.
#[derive(Default)]
struct Recorder {
    id: ClientId,
    rooms: Mutex<HashSet<String>>,
    offsets: Mutex<Vec<u64>>,
}

impl Link for Recorder {
    fn id(&self) -> ClientId {
        self.id
    }
    fn session(&self) -> Option<Arc<Session>> {
        None
    }
    fn join(&self, room: &str) {
        self.rooms.lock().unwrap().insert(room.to_string());
    }
    fn leave(&self, room: &str) {
        self.rooms.lock().unwrap().remove(room);
    }
    fn rooms(&self) -> Vec<String> {
        self.rooms.lock().unwrap().iter().cloned().collect()
    }
    fn emit(&self, event: &str, data: &Value) -> Result<(), SendError> {
        if event == "event" && data["channel"] == CHANNEL {
            if let Some(o) = data["offset"].as_u64() {
                self.offsets.lock().unwrap().push(o);
            }
        }
        Ok(())
    }
    fn emit_confirmed<'a>(&'a self, event: &'a str, data: &'a Value, _: Duration) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.emit(event, data).is_ok() })
    }
    fn connected(&self) -> bool {
        true
    }
    fn close(&self, _: Close) {}
    fn transport(&self) -> Via {
        Via::Ws
    }
    fn info(&self) -> ClientInfo {
        ClientInfo::default()
    }
}

/// This node's clients, delivered to by room as a front end's transport does.
#[derive(Default)]
struct Clients(Mutex<Vec<Arc<Recorder>>>);

impl Transport for Clients {
    fn broadcast<'a>(&'a self, b: &'a Broadcast) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let clients = self.0.lock().unwrap().clone();
            for c in clients {
                let rooms = c.rooms.lock().unwrap().clone();
                let to = b.rooms.is_empty() || b.rooms.iter().any(|r| rooms.contains(r));
                if to && !b.except.iter().any(|r| rooms.contains(r)) {
                    let _ = c.emit(&b.event, &b.data);
                }
            }
            Ok(())
        })
    }
    fn get(&self, _: ClientId) -> Option<Client> {
        None
    }
    fn local_clients(&self) -> Vec<Client> {
        Vec::new()
    }
    fn members<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Vec<Member>> {
        Box::pin(async { Vec::new() })
    }
    fn rooms_of_members<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async { Vec::new() })
    }
    fn leave_all<'a>(&'a self, _: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    fn disconnect<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<usize, String>> {
        Box::pin(async { Ok(0) })
    }
    fn local_rooms(&self) -> BoxFuture<'_, Vec<(String, u64)>> {
        Box::pin(async { Vec::new() })
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// `total` publications from another task; a client subscribes with `since` = `behind` before the last
/// offset it saw, once `at` have been published.
async fn run(total: u64, at: u64, behind: u64, size: usize) {
    let clients = Arc::new(Clients::default());
    let hub = Arc::new(Hub::default());
    hub.install(vec![clients.clone() as Arc<dyn Transport>]);
    let history = Arc::new(MemoryHistory::new(HistoryLimits { size, ttl_ms: 3_600_000 }));
    let pubs = Arc::new(Publications::new(Some(history), None));
    let task = pubs.spawn(hub.clone(), metrics::Counter::noop()).expect("the task");

    // A client subscribed from the start sees every offset: the reference.
    let first = Arc::new(Recorder::default());
    clients.0.lock().unwrap().push(first.clone());
    let sub = pubs.subscribe(first.clone(), CHANNEL.into(), None, 100).await.expect("subscribe");
    drop(sub.go);
    let publisher = {
        let pubs = pubs.clone();
        tokio::spawn(async move {
            for n in 1..=total {
                pubs.publish(Pub { channel: CHANNEL.into(), data: serde_json::json!({ "n": n }), keep: true }).await;
                if n % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (first.offsets.lock().unwrap().len() as u64) < at && tokio::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    let seen = first.offsets.lock().unwrap().last().copied().unwrap_or(0);
    let since = seen.saturating_sub(behind);
    let epoch = pubs.last(CHANNEL, 0).await.expect("history on").expect("readable").position.epoch;
    let second = Arc::new(Recorder::default());
    clients.0.lock().unwrap().push(second.clone());
    let answer = pubs
        .subscribe(second.clone(), CHANNEL.into(), Some(Position { offset: since, epoch }), 100)
        .await
        .expect("subscribe with since");
    let recovered = answer.recovered;
    drop(answer.go);
    publisher.await.expect("publisher");
    while (second.offsets.lock().unwrap().last().copied().unwrap_or(0)) < total
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    task.abort();
    let got = second.offsets.lock().unwrap().clone();
    let reference = first.offsets.lock().unwrap().clone();
    assert_eq!(reference, (1..=total).collect::<Vec<_>>(), "the client subscribed from the start");
    if recovered == Some(true) {
        assert_eq!(got, (since + 1..=total).collect::<Vec<_>>(), "since {since}: each after it once, in order");
    } else {
        // Recovery refused (the history no longer reaches `since`): from where it was placed, no gap, no repeat.
        let from = got.first().copied().unwrap_or(total + 1);
        assert_eq!(got, (from..=total).collect::<Vec<_>>(), "not recovered: a run without gap or repeat");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    #[test]
    fn a_recovering_subscribe_gets_each_publication_after_since_once_in_order(
        at in 1u64..400, behind in 0u64..60, size in prop_oneof![Just(10_000usize), Just(50usize)],
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(400, at, behind, size));
    }
}
