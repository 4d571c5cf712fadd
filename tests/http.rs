//! Integration tests over real HTTP: the app on port 0, `/health`, and a raw Engine.IO/Socket.IO
//! handshake by long-polling (the protocol bytes a client sends, without a client library).

use std::time::Duration;

use realtime_gateway::app::auth::{Authenticator, User};
use realtime_gateway::model::config::Config;
use serde_json::Value;

struct Running {
    base: String,
    auth: std::sync::Arc<Authenticator>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(mut cfg: Config) -> Running {
    cfg.jwt_secret = Some("integration-secret".into());
    let gw = realtime_gateway::startup(cfg).await.expect("startup");
    let base = format!("http://{}", gw.local_addr());
    let auth = gw.state.auth.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gw.run(async move {
        let _ = rx.await;
    }));
    Running { base, auth, stop: Some(tx), task }
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let res = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        assert!(matches!(res, Ok(Ok(Ok(())))), "clean shutdown within 10 s");
    }
}

fn token(r: &Running, sub: &str) -> String {
    let user = User { user_id: sub.into(), email: None, name: None, role: "user".into() };
    r.auth.mint(&user, Duration::from_secs(60)).unwrap()
}

#[tokio::test]
async fn health_reports_the_node() {
    let r = start(Config::default_for_tests()).await;
    let body: Value = reqwest::get(format!("{}/health", r.base)).await.unwrap().json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["service"], "realtime");
    assert_eq!(body["redis"], "disabled");
    assert_eq!(body["connections"], 0);
    assert!(body["nodeId"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(body["timestamp"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert!(body["uptimeSeconds"].is_u64());
    r.stop().await;
}

/// Parses Engine.IO 4 polling payloads (packets separated by 0x1e).
fn packets(body: &str) -> Vec<String> {
    body.split('\u{1e}').map(str::to_string).collect()
}

#[tokio::test]
async fn polling_handshake_with_token_gets_connected() {
    let r = start(Config::default_for_tests()).await;
    let http = reqwest::Client::new();
    let url = format!("{}/socket.io/?EIO=4&transport=polling", r.base);
    let open = http.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(open.starts_with('0'), "open packet: {open}");
    let open: Value = serde_json::from_str(&open[1..]).unwrap();
    let sid = open["sid"].as_str().unwrap().to_string();
    let url = format!("{url}&sid={sid}");

    let connect = format!("40{}", serde_json::json!({ "token": token(&r, "alice") }));
    let ok = http.post(&url).body(connect).send().await.unwrap().text().await.unwrap();
    assert_eq!(ok, "ok");

    // The connect ack and the `connected` event may arrive in one poll or two.
    let mut seen = Vec::new();
    for _ in 0..5 {
        let body = http.get(&url).send().await.unwrap().text().await.unwrap();
        seen.extend(packets(&body));
        if seen.iter().any(|p| p.starts_with("42")) {
            break;
        }
    }
    let socket_sid = seen
        .iter()
        .find_map(|p| p.strip_prefix("40"))
        .map(|j| serde_json::from_str::<Value>(j).unwrap()["sid"].as_str().unwrap().to_string())
        .expect("connect ack");
    let event = seen.iter().find_map(|p| p.strip_prefix("42")).expect("an event");
    let event: Value = serde_json::from_str(event).unwrap();
    assert_eq!(event[0], "connected");
    assert_eq!(event[1]["userId"], "alice");
    assert_eq!(event[1]["sessionId"], socket_sid.as_str());

    // An unknown event with an ack id gets exactly one NOT_FOUND answer.
    http.post(&url).body("421[\"nope\",{}]").send().await.unwrap();
    let body = http.get(&url).send().await.unwrap().text().await.unwrap();
    let ack = packets(&body).into_iter().find_map(|p| p.strip_prefix("431").map(str::to_string)).expect("ack 1");
    let ack: Value = serde_json::from_str(&ack).unwrap();
    assert_eq!(ack[0]["code"], "NOT_FOUND");
    assert_eq!(ack[0]["success"], false);
    r.stop().await;
}

#[tokio::test]
async fn refused_connect_carries_the_reason() {
    let mut cfg = Config::default_for_tests();
    cfg.allow_anonymous = false;
    let r = start(cfg).await;
    let http = reqwest::Client::new();
    let url = format!("{}/socket.io/?EIO=4&transport=polling", r.base);
    let open = http.get(&url).send().await.unwrap().text().await.unwrap();
    let sid = serde_json::from_str::<Value>(&open[1..]).unwrap()["sid"].as_str().unwrap().to_string();
    let url = format!("{url}&sid={sid}");
    http.post(&url).body("40").send().await.unwrap();
    let body = http.get(&url).send().await.unwrap().text().await.unwrap();
    let err = packets(&body).into_iter().find_map(|p| p.strip_prefix("44").map(str::to_string)).expect("connect_error");
    let err: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(err["message"], "Authentication required");
    r.stop().await;
}
