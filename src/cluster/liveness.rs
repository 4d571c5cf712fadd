//! The cluster: each node's heartbeat and figures in Redis, cluster-wide stats, and the reaper that
//! takes a dead node's users out of presence.
//!
//! Every second a node renews its liveness key `<prefix>:node:<node>` (expiring after
//! [`NODE_LIVENESS_MS`]), lists itself in `<prefix>:nodes`, and writes its figures to
//! `<prefix>:node-stats:<node>` (expiring too). Liveness is Redis's key expiry, not a comparison of
//! the nodes' wall clocks: when a node's key has expired, presence ignores its sockets at once, and
//! one live node (the one that wins a short lock) removes its entries, ends its calls and schedules
//! the offline check of its users.

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::AsyncCommands;

use crate::app::state::AppState;
use crate::model::stats::local_stats;
use crate::storage::store::redis::NODE_LIVENESS_MS;

/// The heartbeat and the reaper of dead nodes (both every second).
/// What the reaper does for each user of a dead node (their calls there end): given by `startup`,
/// so that this module needs nothing from the event handlers.
pub type OnNodeGone = std::sync::Arc<dyn Fn(AppState, String, String) -> BoxFuture<'static, ()> + Send + Sync>;

pub fn spawn_heartbeat(state: AppState, on_gone: OnNodeGone) -> Option<tokio::task::JoinHandle<()>> {
    // `tick` below: the first beat is immediate.
    let redis = state.redis.clone()?;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_up = false;
        // The figures last written: unchanged ones are not written again (they name every
        // subscribed channel), only kept alive.
        let mut written: Option<String> = None;
        loop {
            tick.tick().await;
            let stats = serde_json::to_string(&local_stats(&state).await).unwrap_or_default();
            let stats_key = state.redis_key(&["node-stats", &state.node_id]);
            let mut stats_cmd = redis::pipe();
            if written.as_deref() == Some(stats.as_str()) {
                stats_cmd.expire(&stats_key, (NODE_LIVENESS_MS / 1000) as i64).ignore();
            } else {
                stats_cmd.set_ex(&stats_key, &stats, NODE_LIVENESS_MS / 1000).ignore();
            }
            let generation = redis.generation();
            let mut conn = redis.commands();
            // The liveness key's previous value: missing when this is the first beat, when the
            // node was away longer than its lifetime, or when Redis lost its data (a restart
            // without persistence). Each of those needs this node's presence written again.
            let beat: redis::RedisResult<(Option<String>, usize)> = redis::pipe()
                .cmd("SET")
                .arg(state.redis_key(&["node", &state.node_id]))
                .arg(1)
                .arg("PX")
                .arg(NODE_LIVENESS_MS)
                .arg("GET")
                .hset(state.redis_key(&["nodes"]), &state.node_id, crate::model::clock::unix_now_ms())
                .ignore()
                .hlen(state.redis_key(&["nodes"]))
                .query_async(&mut conn)
                .await;
            // Written after the beat: a node whose liveness key Redis lost writes its figures anew.
            let stats_ok = match &beat {
                Ok((Some(_), _)) => stats_cmd.query_async::<()>(&mut conn).await.is_ok(),
                Ok((None, _)) => redis::pipe()
                    .set_ex(&stats_key, &stats, NODE_LIVENESS_MS / 1000)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            written = stats_ok.then_some(stats);
            redis.beat(generation, beat.is_ok());
            if let Ok((_, nodes)) = &beat {
                // The other nodes (dead ones not reaped yet included): how many answers a question
                // to every node waits for (the `/ws` bus).
                state.peers.store(nodes.saturating_sub(1), std::sync::atomic::Ordering::Relaxed);
            }
            let lost = matches!(&beat, Ok((None, _)));
            if beat.is_ok() && (!was_up || lost) {
                // First beat, Redis is back, or it forgot this node: make presence match this
                // node's live sockets.
                resync(&state).await;
            }
            was_up = beat.is_ok();
            // The reaper runs every beat: a dead node is noticed at most a second after its
            // liveness key expired, so its users go offline at most NODE_LIVENESS_MS + 1 s + the
            // grace after it died (docs/scaling.md).
            if beat.is_ok() {
                if let Err(e) = reap(&state, &mut conn, &on_gone).await {
                    tracing::debug!("reaper: {e}");
                }
            }
        }
    }))
}

/// Rewrites this node's presence counts from its live sockets.
async fn resync(state: &AppState) {
    let mut local: Vec<(crate::model::user::User, u64)> = Vec::new();
    for c in state.hub.local_clients() {
        let Some(user) = c.session().and_then(|s| s.user()).map(|u| (*u).clone()) else {
            continue;
        };
        match local.iter_mut().find(|(u, _)| u.user_id == user.user_id) {
            Some((_, n)) => *n += 1,
            None => local.push((user, 1)),
        }
    }
    match state.store.resync(&local).await {
        Ok(gone) => {
            tracing::info!(users = local.len(), stale = gone.len(), "presence resynced with redis");
            for user_id in gone {
                if let Err(e) = state.store.schedule_offline_check(&user_id, state.config.presence_grace_ms).await {
                    tracing::warn!(user_id, "offline check: {e}");
                }
            }
        }
        Err(e) => tracing::warn!("presence resync: {e}"),
    }
}

/// Removes dead nodes: their presence entries go, and their users get the presence grace.
async fn reap(
    state: &AppState,
    conn: &mut crate::storage::redis_link::RetryConn,
    on_gone: &OnNodeGone,
) -> redis::RedisResult<()> {
    let nodes: Vec<String> = conn.hkeys(state.redis_key(&["nodes"])).await?;
    for node in nodes {
        if node == state.node_id {
            continue;
        }
        let alive: bool = conn.exists(state.redis_key(&["node", &node])).await?;
        if alive {
            continue;
        }
        let won: bool = redis::cmd("SET")
            .arg(state.redis_key(&["reap", &node]))
            .arg(&state.node_id)
            .arg("NX")
            .arg("EX")
            .arg(60)
            .query_async(conn)
            .await?;
        if !won {
            continue;
        }
        let users: Vec<String> = conn.smembers(state.redis_key(&["node-users", &node])).await?;
        // Its users' clients (the store lists them per node): gone from the Admin UI too.
        let sockets: Vec<String> = conn.smembers(state.redis_key(&["node-socks", &node])).await?;
        if let Some(admin) = &state.admin {
            admin.node_gone(&sockets);
        }
        tracing::warn!(node, users = users.len(), "reaping a dead node");
        for user in &users {
            let _: () = conn.hdel(state.redis_key(&["presence", user]), format!("n:{node}")).await?;
            on_gone(state.clone(), user.clone(), node.clone()).await;
            if let Err(e) = state.store.schedule_offline_check(user, state.config.presence_grace_ms).await {
                tracing::warn!(user, "offline check: {e}");
            }
        }
        let _: () = redis::pipe()
            .del(state.redis_key(&["node-users", &node]))
            .del(state.redis_key(&["node-socks", &node]))
            .hdel(state.redis_key(&["nodes"]), &node)
            .query_async(conn)
            .await?;
    }
    Ok(())
}
