//! Channels (SPEC §3): server-to-client streams a socket subscribes to, gated by the channel policy.
//! A subscription is membership of the adapter room `ch:<channel>`, so publishes reach subscribers on
//! every node through the adapter (REST) or each node's own ingress (Redis).

use serde::Deserialize;
use serde_json::json;

use super::Ctx;
use crate::error::{ApiError, Code, HandlerResult};
use crate::names;

/// `"name"` or `{channel: "name"}`.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum ChannelRequest {
    Bare(String),
    Object { channel: String },
}

impl ChannelRequest {
    fn into_valid(self) -> Result<String, ApiError> {
        let (ChannelRequest::Bare(c) | ChannelRequest::Object { channel: c }) = self;
        if names::valid_id(&c) {
            Ok(c)
        } else {
            Err(ApiError::invalid("Invalid channel name"))
        }
    }
}

/// The channels this socket is subscribed to.
fn subscribed(ctx: &Ctx) -> Vec<String> {
    ctx.client.rooms().into_iter().filter_map(|r| r.strip_prefix(names::CHANNEL_PREFIX).map(str::to_string)).collect()
}

pub async fn subscribe(ctx: &Ctx, req: ChannelRequest) -> HandlerResult {
    let channel = req.into_valid()?;
    if !ctx.state.policy.may_subscribe(ctx.session.user.as_ref(), &channel) {
        return Err(ApiError::forbidden("Not authorized to subscribe to this channel"));
    }
    let room = names::channel(&channel);
    let cap = ctx.state.config.max_subscriptions_per_socket;
    // Count and join under the session's lock: concurrent subscribes cannot both take the last place.
    ctx.session.exclusive(|| {
        let current = subscribed(ctx);
        if !current.contains(&channel) {
            if current.len() >= cap {
                return Err(ApiError::new(Code::Forbidden, format!("Subscription limit reached ({cap} per socket)")));
            }
            super::join(&ctx.state, &*ctx.client, &room);
        }
        Ok(())
    })?;
    Ok(json!({ "success": true, "channel": channel }))
}

pub async fn unsubscribe(ctx: &Ctx, req: ChannelRequest) -> HandlerResult {
    let channel = req.into_valid()?;
    super::leave(&ctx.state, &*ctx.client, &names::channel(&channel));
    Ok(json!({ "success": true, "channel": channel }))
}

pub async fn list_channels(ctx: &Ctx) -> HandlerResult {
    Ok(json!({
        "success": true,
        "channels": ctx.state.policy.authorized_patterns(ctx.session.user.as_ref()),
        "subscribed": subscribed(ctx),
    }))
}
