//! Prometheus metrics (SPEC §8 `/metrics`), kept in the node's state rather than a global recorder.
//!
//! Every label value is known in advance: events by name come from the typed lists of `event.rs`
//! (anything else counts as `unknown` in, `other` out), so a client cannot grow the series set. Handles are registered once at
//! start-up; counting is one atomic add.

use std::collections::HashMap;

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::error::Code;
use crate::event::{ClientEvent, ServerEvent};

const CODES: &[Code] = &[
    Code::Unauthenticated,
    Code::Forbidden,
    Code::InvalidPayload,
    Code::NotInRoom,
    Code::NotFound,
    Code::RateLimited,
    Code::PayloadTooLarge,
    Code::UserOffline,
    Code::Internal,
];

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Indexed by [`ClientEvent::index`].
    events_in: Vec<Counter>,
    events_in_unknown: Counter,
    events_out: HashMap<&'static str, Counter>,
    events_out_other: Counter,
    acks_ok: Counter,
    acks_error: Counter,
    errors: HashMap<&'static str, Counter>,
    refused: Counter,
    handshakes: Counter,
    handshakes_refused: Counter,
    /// Engine.IO sessions not yet connected to a namespace (see `http/engine.rs`).
    pub handshakes_pending: Gauge,
    pub connections_authenticated: Gauge,
    pub connections_anonymous: Gauge,
    pub subscriptions: Gauge,
    pub channels: Gauge,
    pub redis_up: Gauge,
    pub ingress_messages: Counter,
    pub ingress_dropped: Counter,
    /// Channel publications delivered without an offset: the history could not be appended to.
    pub history_errors: Counter,
    /// Subscribes with `since`, by result.
    pub recovered: Counter,
    pub not_recovered: Counter,
    /// Event proxy calls by outcome (`ok`, `error`, `timeout`, `busy`).
    proxy: HashMap<&'static str, Counter>,
    /// Webhooks by outcome (`queued`, `delivered`, `retried`, `dropped`, `expired`, `dead_letter`, `handed_over`).
    webhooks: HashMap<&'static str, Counter>,
    /// Bytes of webhooks held in this node's memory (its queue, the lanes, on their way to Redis).
    pub webhook_queue_bytes: Gauge,
    /// Admin UI logins by outcome (`ok`, `failed`, `throttled`).
    admin_logins: HashMap<&'static str, Counter>,
}

/// The outcomes of a webhook.
pub const WEBHOOK_OUTCOMES: &[&str] =
    &["queued", "delivered", "retried", "dropped", "expired", "dead_letter", "handed_over"];

/// The outcomes of an Admin UI login (`throttled`: refused unchecked while backing off after failures).
pub const ADMIN_LOGIN_OUTCOMES: &[&str] = &["ok", "failed", "throttled"];

/// The outcomes of an event proxy call.
pub const PROXY_OUTCOMES: &[&str] = &["ok", "error", "timeout", "busy"];

const META: Metadata<'static> =
    Metadata::new("realtime_gateway", Level::INFO, Some("realtime_gateway::model::metrics"));

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counter =
            |name: &'static str, labels: Vec<Label>| recorder.register_counter(&Key::from_parts(name, labels), &META);
        let gauge =
            |name: &'static str, labels: Vec<Label>| recorder.register_gauge(&Key::from_parts(name, labels), &META);
        let describe =
            |name: &'static str, help: &'static str| recorder.describe_counter(name.into(), None, help.into());
        describe("realtime_events_in_total", "Client events received, by event name");
        describe(
            "realtime_events_out_total",
            "Server events emitted, by event name (one per emit call, not per recipient)",
        );
        describe("realtime_acks_total", "Acks sent to clients, by result");
        describe("realtime_errors_total", "Failed client events, by error code");
        describe("realtime_connections_refused_total", "Connections refused at the handshake");
        describe("realtime_engine_handshakes_total", "Engine.IO handshakes (polling and WebSocket) received");
        describe(
            "realtime_engine_handshakes_refused_total",
            "Engine.IO handshakes refused before a session was opened (per-address budget, pending cap)",
        );
        recorder.describe_gauge(
            "realtime_engine_sessions_pending".into(),
            None,
            "Engine.IO sessions not yet connected to a namespace (dropped after 10 s)".into(),
        );
        describe("realtime_ingress_messages_total", "Messages received from Redis ingress and REST publish");
        describe("realtime_ingress_dropped_total", "Ingress messages dropped (broken envelope, unknown channel)");
        describe(
            "realtime_channel_history_errors_total",
            "Channel publications delivered without an offset because the history could not be appended to",
        );
        describe("realtime_channel_recoveries_total", "Subscribes with `since`, by result (recovered or not)");
        describe("realtime_event_proxy_total", "Client events sent to EVENT_PROXY_URL, by outcome");
        describe(
            "realtime_webhooks_total",
            "Webhooks queued, delivered, retried (attempts), dropped (queue full), expired (an hour of retries), dead_letter (refused for good) and handed_over (left to the next lease holder)",
        );
        describe(
            "realtime_admin_logins_total",
            "Admin UI logins with a password: ok, failed (wrong credentials) and throttled (refused while backing off)",
        );
        recorder.describe_gauge("realtime_connections".into(), None, "Connected sockets on this node".into());
        recorder.describe_gauge("realtime_subscriptions".into(), None, "Channel subscriptions on this node".into());
        recorder.describe_gauge("realtime_channels".into(), None, "Channels with a subscriber on this node".into());
        recorder.describe_gauge(
            "realtime_webhook_queue_bytes".into(),
            None,
            "Bytes of webhook bodies held in this node's memory (bounded by WEBHOOK_QUEUE_MAX_BYTES)".into(),
        );
        recorder.describe_gauge(
            "realtime_redis_up".into(),
            None,
            "1 when Redis is reachable, 0 when down, -1 when disabled".into(),
        );

        let events_in = ClientEvent::ALL
            .iter()
            .map(|e| counter("realtime_events_in_total", vec![Label::new("event", e.name())]))
            .collect();
        let errors = CODES
            .iter()
            .map(|c| (c.as_str(), counter("realtime_errors_total", vec![Label::new("code", c.as_str())])))
            .collect();
        Metrics {
            events_in,
            events_in_unknown: counter("realtime_events_in_total", vec![Label::new("event", "unknown")]),
            events_out: ServerEvent::ALL
                .iter()
                .map(|e| (e.name(), counter("realtime_events_out_total", vec![Label::new("event", e.name())])))
                .collect(),
            events_out_other: counter("realtime_events_out_total", vec![Label::new("event", "other")]),
            acks_ok: counter("realtime_acks_total", vec![Label::new("result", "ok")]),
            acks_error: counter("realtime_acks_total", vec![Label::new("result", "error")]),
            errors,
            refused: counter("realtime_connections_refused_total", vec![]),
            handshakes: counter("realtime_engine_handshakes_total", vec![]),
            handshakes_refused: counter("realtime_engine_handshakes_refused_total", vec![]),
            handshakes_pending: gauge("realtime_engine_sessions_pending", vec![]),
            connections_authenticated: gauge("realtime_connections", vec![Label::new("kind", "authenticated")]),
            connections_anonymous: gauge("realtime_connections", vec![Label::new("kind", "anonymous")]),
            subscriptions: gauge("realtime_subscriptions", vec![]),
            channels: gauge("realtime_channels", vec![]),
            redis_up: gauge("realtime_redis_up", vec![]),
            ingress_messages: counter("realtime_ingress_messages_total", vec![]),
            ingress_dropped: counter("realtime_ingress_dropped_total", vec![]),
            history_errors: counter("realtime_channel_history_errors_total", vec![]),
            recovered: counter("realtime_channel_recoveries_total", vec![Label::new("result", "recovered")]),
            not_recovered: counter("realtime_channel_recoveries_total", vec![Label::new("result", "not_recovered")]),
            proxy: PROXY_OUTCOMES
                .iter()
                .map(|o| (*o, counter("realtime_event_proxy_total", vec![Label::new("outcome", *o)])))
                .collect(),
            webhooks: WEBHOOK_OUTCOMES
                .iter()
                .map(|o| (*o, counter("realtime_webhooks_total", vec![Label::new("outcome", *o)])))
                .collect(),
            webhook_queue_bytes: gauge("realtime_webhook_queue_bytes", vec![]),
            admin_logins: ADMIN_LOGIN_OUTCOMES
                .iter()
                .map(|o| (*o, counter("realtime_admin_logins_total", vec![Label::new("outcome", *o)])))
                .collect(),
            recorder,
            handle,
        }
    }

    /// A client event: one of the gateway's (`Some`), or another name (`unknown`).
    pub fn event_in(&self, event: Option<ClientEvent>) {
        event.and_then(|e| self.events_in.get(e.index())).unwrap_or(&self.events_in_unknown).increment(1);
    }
    pub fn event_out(&self, event: &str) {
        self.events_out.get(event).unwrap_or(&self.events_out_other).increment(1);
    }
    pub fn ack(&self, ok: bool) {
        if ok { &self.acks_ok } else { &self.acks_error }.increment(1);
    }
    pub fn error(&self, code: Code) {
        if let Some(c) = self.errors.get(code.as_str()) {
            c.increment(1);
        }
    }
    pub fn proxy(&self, outcome: &str) {
        if let Some(c) = self.proxy.get(outcome) {
            c.increment(1);
        }
    }
    pub fn admin_login(&self, outcome: &str) {
        if let Some(c) = self.admin_logins.get(outcome) {
            c.increment(1);
        }
    }
    /// The counter of a webhook outcome (a no-op counter for an unknown one).
    pub fn webhook_counter(&self, outcome: &str) -> Counter {
        self.webhooks.get(outcome).cloned().unwrap_or_else(Counter::noop)
    }
    pub fn handshake(&self) {
        self.handshakes.increment(1);
    }
    pub fn handshake_refused(&self) {
        self.handshakes_refused.increment(1);
    }
    pub fn refused(&self) {
        self.refused.increment(1);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let _ = &self.recorder;
        self.handle.render()
    }
}
