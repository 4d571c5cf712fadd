//! Redis ingress (SPEC §9): `PUBLISH <channel> <json>` reaches that channel's subscribers, and
//! `PUBLISH realtime:emit {event,data,target}` emits any event.
//!
//! Every node subscribes and delivers to its own sockets only, so each subscriber gets exactly one
//! copy however many nodes run. The subscriber reconnects with backoff and resubscribes by itself.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use crate::delivery::{self, EmitRequest};
use crate::names;
use crate::policy::Policy;
use crate::state::AppState;

/// The channel that carries `{event, data, room?|channel?|userId?|socketId?}` envelopes.
pub const EMIT_CHANNEL: &str = "realtime:emit";

/// Redis glob patterns for every channel the policy knows (`{userId}` becomes `*`, Redis's special
/// characters are escaped).
pub fn redis_patterns(policy: &Policy) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in policy.patterns() {
        let glob: String = p
            .replace("{userId}", "*")
            .chars()
            .flat_map(|c| match c {
                '?' | '[' | ']' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        if !out.contains(&glob) {
            out.push(glob);
        }
    }
    out
}

/// Zero-or-more `*` matching, as Redis does for the escaped patterns above.
fn redis_glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None::<usize>, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == '\\' && pi + 1 < p.len() && p[pi + 1] == t[ti] {
            pi += 2;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && p[pi] != '\\' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

pub fn spawn(state: AppState) -> Option<tokio::task::JoinHandle<()>> {
    let redis = state.redis.clone()?;
    let patterns = Arc::new(redis_patterns(&state.policy));
    Some(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        // In a cluster, which listed node to subscribe on: the next one after each failure.
        let mut attempt = 0;
        loop {
            let mut subscribed = false;
            let mut moved = redis.changes();
            let client = redis.pubsub_client(attempt);
            attempt += 1;
            match run_once(&state, &client, &patterns, &mut subscribed, &mut moved).await {
                Ok(()) => tracing::warn!("redis ingress: subscription closed"),
                Err(e) => tracing::warn!("redis ingress: {e}"),
            }
            // Whether Redis is down is the heartbeat's call (every second): this subscriber's own
            // connection may drop while the node's command connection is fine.
            redis.set_ingress(false);
            if subscribed {
                backoff = Duration::from_millis(100);
            }
            // A new master (Sentinel) is worth trying at once.
            let _ = tokio::time::timeout(backoff, moved.changed()).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }))
}

async fn run_once(
    state: &AppState,
    client: &redis::Client,
    patterns: &[String],
    subscribed: &mut bool,
    moved: &mut tokio::sync::watch::Receiver<u64>,
) -> redis::RedisResult<()> {
    let mut pubsub = tokio::time::timeout(Duration::from_secs(3), client.get_async_pubsub())
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timeout")))??;
    pubsub.subscribe(EMIT_CHANNEL).await?;
    let bus = state.bus.channel().to_string();
    pubsub.subscribe(&bus).await?;
    // The official Node emitter (see emitter.rs).
    let emitter_pattern = crate::emitter::broadcast_pattern();
    let emitter_requests = crate::emitter::request_channel();
    pubsub.psubscribe(&emitter_pattern).await?;
    pubsub.subscribe(&emitter_requests).await?;
    // Seed 004's `WebSocketEmitter` (see ws/dialect/emitter.rs).
    use crate::ws::dialect::emitter as ws_emitter;
    pubsub.subscribe(ws_emitter::BROADCAST).await?;
    for p in ws_emitter::PATTERNS {
        pubsub.psubscribe(p).await?;
    }
    for p in patterns {
        pubsub.psubscribe(p).await?;
    }
    *subscribed = true;
    if let Some(r) = &state.redis {
        r.set_up(true);
        r.set_ingress(true);
    }
    tracing::info!(patterns = patterns.len(), "redis ingress subscribed");
    let mut stream = pubsub.on_message();
    moved.mark_unchanged();
    loop {
        // The old master may linger half-open after a failover: leave it when the sentinels name another.
        let msg = tokio::select! {
            m = stream.next() => match m { Some(m) => m, None => break },
            _ = moved.changed() => {
                tracing::info!("redis ingress: the master changed; resubscribing there");
                break;
            }
        };
        let channel = msg.get_channel_name().to_string();
        let pattern: Option<String> = msg.get_pattern().ok();
        let payload = msg.get_payload_bytes();
        match pattern {
            None if channel == EMIT_CHANNEL => emit(state, payload).await,
            None if channel == bus => state.bus.on_payload(payload),
            None if channel == emitter_requests => crate::emitter::on_request(state, payload),
            None if channel == ws_emitter::BROADCAST => ws_emitter::on_message(state, payload).await,
            None => {}
            Some(p) if p == emitter_pattern => crate::emitter::on_broadcast(state, payload).await,
            Some(p) if ws_emitter::PATTERNS.contains(&p.as_str()) => ws_emitter::on_message(state, payload).await,
            Some(p) => {
                // A channel matching two patterns arrives once per pattern: take the first only.
                let first = patterns.iter().find(|q| redis_glob(q, &channel));
                if first.map(String::as_str) == Some(p.as_str()) && channel != EMIT_CHANNEL && channel != bus {
                    publish(state, &channel, payload).await;
                }
            }
        }
    }
    Ok(())
}

/// The data of a publish: JSON when it parses, else the raw text as a string.
pub fn payload_value(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

async fn publish(state: &AppState, channel: &str, payload: &[u8]) {
    if !names::valid_id(channel) || !state.policy.knows(channel) {
        state.metrics.ingress_dropped.increment(1);
        tracing::debug!(channel, "ingress: not a channel of the policy; dropped");
        return;
    }
    state.metrics.ingress_messages.increment(1);
    let p = crate::publications::Pub {
        channel: channel.to_string(),
        data: payload_value(payload),
        keep: true,
        raw: payload.to_vec(),
    };
    state.publications.publish(p).await;
}

async fn emit(state: &AppState, payload: &[u8]) {
    let req: EmitRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.ingress_dropped.increment(1);
            tracing::warn!("realtime:emit: broken envelope dropped: {e}");
            return;
        }
    };
    let target = match req.target() {
        Ok(t) => t,
        Err(e) => {
            state.metrics.ingress_dropped.increment(1);
            tracing::warn!("realtime:emit: envelope dropped: {e}");
            return;
        }
    };
    state.metrics.ingress_messages.increment(1);
    if let Err(e) = delivery::emit(&state.hub, &target, &req.event, &req.data, true).await {
        tracing::warn!("realtime:emit delivery failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_glob() {
        let p = redis_patterns(&Policy::default());
        assert!(p.contains(&"apps:*".to_string()));
        assert!(p.contains(&"user:*".to_string()));
        assert!(p.contains(&"announcements".to_string()));
        assert!(redis_glob("apps:*", "apps:created"));
        assert!(redis_glob("apps:*", "apps:"));
        assert!(!redis_glob("apps:*", "app"));
        assert!(redis_glob("a\\?b", "a?b"));
        assert!(!redis_glob("a\\?b", "axb"));
    }

    #[test]
    fn payloads() {
        assert_eq!(payload_value(b"{\"id\":1}"), serde_json::json!({"id": 1}));
        assert_eq!(payload_value(b"hello"), Value::String("hello".into()));
        assert_eq!(payload_value(b"42"), serde_json::json!(42));
    }
}
