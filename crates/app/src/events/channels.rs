//! Channels (SPEC §3): server-to-client streams a socket subscribes to, gated by the channel policy.
//! A subscription is membership of the room `ch:<channel>`; each node delivers the channel's
//! publications to its own subscribers (`publications.rs`), which also sets subscriptions up so
//! that a recovering client misses nothing at the seam.

use serde::Deserialize;
use serde_json::json;

use super::{Ctx, Then};
use rtg_model::error::{ApiError, Code, HandlerResult};
use rtg_model::names;
use rtg_storage::history::Position;

/// `"name"` or `{channel: "name", since?: {offset, epoch}}`.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum ChannelRequest {
    Bare(String),
    Object {
        channel: String,
        #[serde(default)]
        since: Option<Since>,
    },
}

/// A position a client saw last: `{offset, epoch}` from an `event` envelope or a subscribe answer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

impl ChannelRequest {
    fn into_valid(self) -> Result<(String, Option<Position>), ApiError> {
        let (c, since) = match self {
            ChannelRequest::Bare(c) => (c, None),
            ChannelRequest::Object { channel, since } => (channel, since),
        };
        if !names::valid_id(&c) {
            return Err(ApiError::invalid("Invalid channel name"));
        }
        let since = match since {
            Some(s) if s.epoch.len() > 64 => return Err(ApiError::invalid("Invalid since: epoch too long")),
            Some(s) => Some(Position { offset: s.offset, epoch: s.epoch }),
            None => None,
        };
        Ok((c, since))
    }
}

/// The channels this socket is subscribed to.
fn subscribed(ctx: &Ctx) -> Vec<String> {
    ctx.client.rooms().into_iter().filter_map(|r| r.strip_prefix(names::CHANNEL_PREFIX).map(str::to_string)).collect()
}

/// `subscribe`: `{success, channel}`; with `since` (SPEC §15) also `recovered` and the channel's
/// place `{offset, epoch}`, and the missed publications follow the answer (see `publications.rs`).
pub async fn subscribe(ctx: &Ctx, req: ChannelRequest) -> HandlerResult {
    let (channel, since) = req.into_valid()?;
    if !ctx.state.policy.may_subscribe(ctx.session.user().as_deref(), &channel) {
        return Err(ApiError::forbidden("Not authorized to subscribe to this channel"));
    }
    let cap = ctx.state.config.max_subscriptions_per_socket;
    let sub = ctx.state.publications.subscribe(ctx.client.clone(), channel.clone(), since, cap).await?;
    // A refresh that lowered the role while this subscription was being set up swept the socket's
    // subscriptions before this one existed: checked again against the claims of now. Unsubscribed
    // before `sub` is dropped, so that no missed publication goes out.
    if !ctx.state.policy.may_subscribe(ctx.session.user().as_deref(), &channel) {
        ctx.state.publications.unsubscribe(ctx.client.clone(), channel).await;
        drop(sub);
        return Err(ApiError::forbidden("Not authorized to subscribe to this channel"));
    }
    // SPEC §3's `{success, channel}`; with `since`, SPEC §15's `recovered`, `offset` and `epoch`
    // (`null` when the history is off or unreadable).
    let mut ack = json!({ "success": true, "channel": channel });
    if let Some(recovered) = sub.recovered {
        ack["recovered"] = json!(recovered);
        if recovered { &ctx.state.metrics.recovered } else { &ctx.state.metrics.not_recovered }.increment(1);
        let (offset, epoch) = match sub.position {
            Some(p) => (json!(p.offset), json!(p.epoch)),
            None => (serde_json::Value::Null, serde_json::Value::Null),
        };
        ack["offset"] = offset;
        ack["epoch"] = epoch;
    }
    if let Some(go) = sub.go {
        *ctx.then.lock().unwrap_or_else(|e| e.into_inner()) = Then::new(go);
    }
    Ok(ack)
}

pub async fn unsubscribe(ctx: &Ctx, req: ChannelRequest) -> HandlerResult {
    let (channel, _) = req.into_valid()?;
    ctx.state.publications.unsubscribe(ctx.client.clone(), channel.clone()).await;
    Ok(json!({ "success": true, "channel": channel }))
}

/// `channel-history` `{channel, limit?}`.
#[derive(Deserialize)]
pub struct HistoryRequest {
    pub channel: String,
    #[serde(default)]
    pub limit: Option<u64>,
}

/// `channel-history`: the channel's last publications, for its subscribers only.
pub async fn channel_history(ctx: &Ctx, req: HistoryRequest) -> HandlerResult {
    if !names::valid_id(&req.channel) {
        return Err(ApiError::invalid("Invalid channel name"));
    }
    let size = ctx.state.config.channel_history_size.max(1);
    let limit = match req.limit {
        None => size.min(100),
        Some(n) if (1..=size.max(100)).contains(&n) => n.min(size),
        Some(_) => return Err(ApiError::invalid(format!("limit must be 1 to {}", size.max(100)))),
    };
    if !ctx.client.rooms().contains(&names::channel(&req.channel)) {
        return Err(ApiError::forbidden("Not subscribed to this channel"));
    }
    let tail = match ctx.state.publications.last(&req.channel, limit as usize).await {
        None => Default::default(),
        Some(Ok(tail)) => tail,
        Some(Err(e)) => {
            tracing::warn!(channel = req.channel, "channel history unreadable: {e}");
            return Err(ApiError::new(Code::Internal, "Channel history unavailable"));
        }
    };
    let publications: Vec<serde_json::Value> = tail
        .publications
        .iter()
        .map(|p| json!({ "data": p.data, "offset": p.offset, "timestamp": crate::publications::iso(p.ts) }))
        .collect();
    Ok(json!({
        "success": true,
        "publications": publications,
        "offset": tail.position.offset,
        "epoch": tail.position.epoch,
    }))
}

pub async fn list_channels(ctx: &Ctx) -> HandlerResult {
    Ok(json!({
        "success": true,
        "channels": ctx.state.policy.authorized_patterns(ctx.session.user().as_deref()),
        "subscribed": subscribed(ctx),
    }))
}
