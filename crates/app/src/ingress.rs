//! Redis ingress (SPEC §9): `PUBLISH <channel> <json>` reaches that channel's subscribers, and
//! `PUBLISH realtime:emit {event,data,target}` emits any event.
//!
//! Every node subscribes and delivers to its own sockets only, so each subscriber gets exactly one
//! copy however many nodes run. The subscribers reconnect with backoff and resubscribe by themselves.
//!
//! Two subscriptions, each on a connection of its own: one for `realtime:emit`, the bus and the
//! emitter, one for the channels of the policy and the appender's notes (`sequence.rs`: the notes
//! must come in the one order with the `PUBLISH`es). The second waits for the publications task
//! when its queue is full; the first, which carries the bus and its `ask` answers, never does.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::delivery::{self, EmitRequest};
use crate::policy::Policy;
use crate::sequence::Input;
use crate::state::AppState;

/// The channel that carries `{event, data, room?|channel?|userId?|socketId?}` envelopes.
pub use rtg_model::names::EMIT_CHANNEL;

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
    state.redis.as_ref()?;
    let patterns = Arc::new(redis_patterns(&state.policy));
    let channels = tokio::spawn(resubscribing(state.clone(), patterns.clone(), Subscriber::Channels));
    Some(tokio::spawn(async move {
        // Ends the channels' subscriber with this task (shutdown aborts it).
        struct Abort(tokio::task::JoinHandle<()>);
        impl Drop for Abort {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let _channels = Abort(channels);
        resubscribing(state, patterns, Subscriber::Emit).await
    }))
}

/// The node's two subscribers: the channels and the appender's notes ([`run_channels`]), and
/// `realtime:emit`, the bus and the emitters ([`run_once`]), which never wait for the channels.
#[derive(Clone, Copy, Debug)]
enum Subscriber {
    Channels,
    Emit,
}

/// Runs one subscriber for ever: after each end, again with backoff, at once on a new master
/// (Sentinel), and in a cluster on the next listed node after each failure.
async fn resubscribing(state: AppState, patterns: Arc<Vec<String>>, which: Subscriber) {
    let Some(redis) = state.redis.clone() else { return };
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        let mut subscribed = false;
        let mut moved = redis.changes();
        let client = redis.pubsub_client(attempt);
        attempt += 1;
        let r = match which {
            Subscriber::Channels => run_channels(&state, &client, &patterns, &mut subscribed, &mut moved).await,
            Subscriber::Emit => run_once(&state, &client, &mut subscribed, &mut moved).await,
        };
        match r {
            Ok(()) => tracing::warn!(?which, "redis ingress: subscription closed"),
            Err(e) => tracing::warn!(?which, "redis ingress: {e}"),
        }
        if matches!(which, Subscriber::Emit) {
            // Whether Redis is down is the heartbeat's call (every second): this subscriber's own
            // connection may drop while the node's command connection is fine.
            redis.set_ingress(false);
        }
        if subscribed {
            backoff = Duration::from_millis(100);
        }
        let _ = tokio::time::timeout(backoff, moved.changed()).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn connect(client: &redis::Client) -> redis::RedisResult<redis::aio::PubSub> {
    tokio::time::timeout(Duration::from_secs(3), client.get_async_pubsub())
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timeout")))?
}

/// The channels of the policy and the appender's notes, in the one order Redis sends them.
async fn run_channels(
    state: &AppState,
    client: &redis::Client,
    patterns: &[String],
    subscribed: &mut bool,
    moved: &mut tokio::sync::watch::Receiver<u64>,
) -> redis::RedisResult<()> {
    let mut pubsub = connect(client).await?;
    let notes = state.publications.notes_channel().map(str::to_string);
    if let Some(n) = &notes {
        pubsub.subscribe(n).await?;
    }
    for p in patterns {
        pubsub.psubscribe(p).await?;
    }
    *subscribed = true;
    // Whatever was published while this node was not subscribed, it missed.
    if notes.is_some() {
        state.publications.from_redis(Input::Reset).await;
    }
    tracing::info!(patterns = patterns.len(), "redis ingress subscribed to the channels");
    let (emit, bus) = (EMIT_CHANNEL, state.bus.channel().to_string());
    let mut stream = pubsub.on_message();
    moved.mark_unchanged();
    while let Some(msg) = next_or_moved(&mut stream, moved).await {
        let channel = msg.get_channel_name().to_string();
        let payload = msg.get_payload_bytes();
        match msg.get_pattern::<Option<String>>().ok().flatten() {
            None if Some(&channel) == notes.as_ref() => {
                state.publications.from_redis(Input::Note(payload.to_vec())).await;
            }
            None => {}
            Some(p) => {
                // A channel matching two patterns arrives once per pattern: take the first only.
                let first = patterns.iter().find(|q| redis_glob(q, &channel));
                if first.map(String::as_str) == Some(p.as_str()) && channel != emit && channel != bus {
                    publish(state, &channel, payload, notes.is_some()).await;
                }
            }
        }
    }
    Ok(())
}

/// `realtime:emit`, the bus and the emitter: never waits for the channels.
async fn run_once(
    state: &AppState,
    client: &redis::Client,
    subscribed: &mut bool,
    moved: &mut tokio::sync::watch::Receiver<u64>,
) -> redis::RedisResult<()> {
    let mut pubsub = connect(client).await?;
    pubsub.subscribe(EMIT_CHANNEL).await?;
    let bus = state.bus.channel().to_string();
    pubsub.subscribe(&bus).await?;
    // The official Node emitter (see emitter.rs).
    let emitter_pattern = crate::emitter::broadcast_pattern();
    let emitter_requests = crate::emitter::request_channel();
    pubsub.psubscribe(&emitter_pattern).await?;
    pubsub.subscribe(&emitter_requests).await?;
    // Seed 004's `WebSocketEmitter` (see ignis_emitter.rs).
    use crate::ignis_emitter as ws_emitter;
    pubsub.subscribe(ws_emitter::BROADCAST).await?;
    for p in ws_emitter::PATTERNS {
        pubsub.psubscribe(p).await?;
    }
    *subscribed = true;
    if let Some(r) = &state.redis {
        r.set_up(true);
        r.set_ingress(true);
    }
    tracing::info!("redis ingress subscribed");
    let mut stream = pubsub.on_message();
    moved.mark_unchanged();
    while let Some(msg) = next_or_moved(&mut stream, moved).await {
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
            Some(_) => {}
        }
    }
    Ok(())
}

/// The next message, or None when the subscription ended or the master changed: the old master may
/// linger half-open after a failover, so a subscriber leaves it when the sentinels name another.
async fn next_or_moved<S: futures_util::Stream<Item = redis::Msg> + Unpin>(
    stream: &mut S,
    moved: &mut tokio::sync::watch::Receiver<u64>,
) -> Option<redis::Msg> {
    tokio::select! {
        m = stream.next() => m,
        _ = moved.changed() => {
            tracing::info!("redis ingress: the master changed; resubscribing there");
            None
        }
    }
}

pub use rtg_storage::history::payload_value;

async fn publish(state: &AppState, channel: &str, payload: &[u8], sequenced: bool) {
    if !state.policy.publishable(channel) {
        state.metrics.ingress_dropped.increment(1);
        tracing::debug!(channel, "ingress: not a channel of the policy; dropped");
        return;
    }
    state.metrics.ingress_messages.increment(1);
    if sequenced {
        state.publications.from_redis(Input::Raw { channel: channel.to_string(), payload: payload.to_vec() }).await;
    } else {
        let p = crate::publications::Pub { channel: channel.to_string(), data: payload_value(payload), keep: true };
        state.publications.publish(p).await;
    }
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
        assert_eq!(payload_value(b"hello"), serde_json::Value::String("hello".into()));
        assert_eq!(payload_value(b"42"), serde_json::json!(42));
    }
}
