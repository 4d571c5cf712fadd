//! The event proxy (SPEC §14): a client event that is not the gateway's own, from Socket.IO or `/ws`,
//! is POSTed to `EVENT_PROXY_URL` as `{event, args, socketId, user, nodeId, ts}`; the backend's JSON
//! answer `{ack?, emit?, join?, leave?}` becomes the event's ack, its emits and the caller's room
//! changes. The app keeps its own events and logic; the gateway keeps the sockets.
//!
//! Bounded: at most `EVENT_PROXY_CONCURRENCY` calls in flight per node (past it the event answers
//! `RATE_LIMITED` at once: back-pressure, never a queue), each within `EVENT_PROXY_TIMEOUT_MS`, over
//! keep-alive connections; the answer is read up to `MAX_PAYLOAD_BYTES`. Signed like the webhooks (`X-Realtime-Signature` over `"<X-Realtime-Timestamp>.<body>"`).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::delivery::EmitRequest;
use rtg_model::error::{ApiError, Code};
use rtg_model::metrics::Metrics;
use rtg_model::user::User;

/// The client of one node: its HTTP connections and its budget of calls in flight.
pub struct EventProxy {
    url: String,
    http: reqwest::Client,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    secret: Option<String>,
    max_answer: usize,
}

/// What the backend answers: the event's ack, and what to do (carried out by `events::proxied`).
#[derive(Deserialize, Default)]
pub struct Answer {
    #[serde(default)]
    pub ack: Option<Value>,
    #[serde(default)]
    pub emit: Vec<EmitRequest>,
    #[serde(default)]
    pub join: Vec<String>,
    #[serde(default)]
    pub leave: Vec<String>,
}

/// Who sent the event, as the backend is told.
pub struct Caller<'a> {
    pub socket_id: String,
    pub user: Option<&'a User>,
    pub node_id: &'a str,
}

/// `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with secret>`: the `X-Realtime-Signature` header.
/// The timestamp is signed so that a captured request cannot be replayed under a fresh
/// `X-Realtime-Timestamp` (the receiver refuses stale ones).
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(), // HMAC takes keys of any length: not reached
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The HTTP client of the hooks: keep-alive, rustls, no redirects.
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("realtime-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| anyhow::anyhow!("HTTP client: {e}"))
}

impl EventProxy {
    pub fn from_config(cfg: &rtg_model::config::Config) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(url) = cfg.event_proxy_url.as_deref().filter(|u| !u.is_empty()) else { return Ok(None) };
        let parsed: reqwest::Url = url.parse().map_err(|e| anyhow::anyhow!("EVENT_PROXY_URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!("EVENT_PROXY_URL: an http or https URL");
        }
        let timeout = Duration::from_millis(cfg.event_proxy_timeout_ms);
        Ok(Some(Arc::new(EventProxy {
            url: url.to_string(),
            http: http_client(timeout)?,
            in_flight: Arc::new(Semaphore::new(cfg.event_proxy_concurrency as usize)),
            timeout,
            secret: cfg.webhook_secret.clone().filter(|s| !s.is_empty()),
            max_answer: cfg.max_payload_bytes as usize,
        })))
    }

    /// Sends one event to the backend; its answer, for the caller to carry out.
    pub async fn call(
        &self,
        metrics: &Metrics,
        caller: Caller<'_>,
        event: &str,
        args: Vec<Value>,
    ) -> Result<Answer, ApiError> {
        let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
            metrics.proxy("busy");
            return Err(ApiError::new(Code::RateLimited, "Backend busy"));
        };
        let ts = rtg_model::clock::unix_now_ms();
        let body = json!({
            "event": event,
            "args": args,
            "socketId": caller.socket_id,
            "user": caller.user,
            "nodeId": caller.node_id,
            "ts": ts,
        });
        let body = serde_json::to_vec(&body).map_err(|_| ApiError::internal())?;
        let mut req =
            self.http.post(&self.url).header("content-type", "application/json").header("x-realtime-timestamp", ts);
        if let Some(secret) = &self.secret {
            req = req.header("x-realtime-signature", signature(secret, ts, &body));
        }
        let unavailable = || ApiError::new(Code::Internal, "Backend unavailable");
        let res = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                metrics.proxy(if e.is_timeout() { "timeout" } else { "error" });
                tracing::warn!(event, "event proxy: {e}");
                return Err(unavailable());
            }
        };
        if !res.status().is_success() {
            metrics.proxy("error");
            tracing::warn!(event, status = %res.status(), "event proxy: backend answered an error");
            return Err(unavailable());
        }
        let answer = match read_answer(res, self.max_answer, self.timeout).await {
            Ok(a) => a,
            Err(e) => {
                metrics.proxy("error");
                tracing::warn!(event, "event proxy: unreadable answer: {e}");
                return Err(unavailable());
            }
        };
        metrics.proxy("ok");
        Ok(answer)
    }
}

/// Reads at most `max` bytes of JSON; an empty body is an empty answer.
async fn read_answer(mut res: reqwest::Response, max: usize, timeout: Duration) -> anyhow::Result<Answer> {
    let mut buf = Vec::new();
    tokio::time::timeout(timeout, async {
        while let Some(chunk) = res.chunk().await? {
            if buf.len() + chunk.len() > max {
                anyhow::bail!("answer over {max} bytes");
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("answer timed out"))??;
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Ok(Answer::default());
    }
    Ok(serde_json::from_slice(&buf)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hex_hmac_sha256_of_timestamp_dot_body() {
        // HMAC-SHA256 of "12.what do ya want for nothing?" keyed "Jefe" (RFC 4231 case 2 with a timestamp).
        assert_eq!(
            super::signature("Jefe", 12, b"what do ya want for nothing?"),
            "sha256=884f387af4fab053210fff358c2ae1ceb946a70c677f05c2b731ca65c7769498"
        );
        // The test vector of docs/hooks.md.
        let body =
            br#"{"id":"wh1a22ec59668428ca6c45711","type":"user.offline","ts":1796081030760,"data":{"userId":"alice"}}"#;
        assert_eq!(
            super::signature("whsec-example", 1796081030765, body),
            "sha256=141eaa3681440d38b2849e70bb2febec71319c168253e2ebd1aac7cb00d39af0"
        );
        // A fresh timestamp gives another signature: a replay under it does not verify.
        assert_ne!(super::signature("Jefe", 12, b"x"), super::signature("Jefe", 13, b"x"));
    }
}
