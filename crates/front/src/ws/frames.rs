//! The `/ws` frames (SPEC §10): what a client sends, parsed once, and the JSON of every answer.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use rtg_model::error::{ApiError, Code};

/// A client frame: `{type|event, data|payload, requestId?, channel?, token?}`.
pub struct Inbound {
    /// The client sent `payload` rather than `data`: it speaks the `{type, payload}` envelope.
    pub payload_style: bool,
    pub kind: String,
    pub data: Value,
    pub request_id: Option<Value>,
    pub channel: Option<String>,
    pub token: Option<String>,
    /// `{offset, epoch}` of a recovering `subscribe` (SPEC §15).
    pub since: Option<Value>,
}

/// Parses a text frame; the error is the `INVALID_PAYLOAD` answer's message.
pub fn parse(text: &str) -> Result<Inbound, (&'static str, Option<Value>)> {
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(text) else {
        return Err(("Invalid JSON", None));
    };
    let request_id = map.remove("requestId").filter(|v| !v.is_null());
    let kind = match map.remove("type").filter(|v| !v.is_null()).or_else(|| map.remove("event")) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => s,
        _ => return Err(("Missing type", request_id)),
    };
    let mut payload_style = false;
    let data = match map.remove("data").filter(|v| !v.is_null()) {
        Some(d) => d,
        None => match map.remove("payload") {
            Some(p) => {
                payload_style = true;
                p
            }
            None => Value::Null,
        },
    };
    let channel = match map.remove("channel") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let token = match map.remove("token") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let since = map.remove("since").filter(|v| !v.is_null());
    Ok(Inbound { payload_style, kind, data, request_id, channel, token, since })
}

/// `{type:"error", message, code, event?, channel?, requestId?, timestamp}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: &'a str,
    pub code: Code,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a Value>,
    pub timestamp: String,
}

pub fn error(e: &ApiError, event: Option<&str>, channel: Option<&str>, request_id: Option<&Value>) -> String {
    to_json(&ErrorFrame {
        kind: "error",
        message: &e.message,
        code: e.code,
        event,
        channel,
        request_id,
        timestamp: rtg_model::clock::iso_now(),
    })
}

/// `{type, ...fields, requestId?, timestamp}` for the channel frames (`subscribed`, `pong`, ...).
pub fn reply(kind: &str, mut fields: serde_json::Map<String, Value>, request_id: Option<&Value>) -> String {
    fields.insert("type".into(), Value::String(kind.to_string()));
    if let Some(id) = request_id {
        fields.insert("requestId".into(), id.clone());
    }
    fields.insert("timestamp".into(), Value::String(rtg_model::clock::iso_now()));
    to_json(&Value::Object(fields))
}

/// A generic frame: `{type, requestId?, data, payload?, timestamp}`; `payload` repeats `data` for a
/// client that speaks the `{type, payload, requestId}` envelope.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Generic<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a Value>,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    timestamp: String,
}

fn generic(kind: &str, request_id: Option<&Value>, data: &Value, with_payload: bool) -> String {
    let raw = raw(data);
    let payload = with_payload.then_some(&*raw);
    to_json(&Generic { kind, request_id, data: &raw, payload, timestamp: rtg_model::clock::iso_now() })
}

/// The answer to a generic request with a `requestId`: `{type:"ack", requestId, data, timestamp}`.
pub fn ack(request_id: &Value, data: &Value, with_payload: bool) -> String {
    generic("ack", Some(request_id), data, with_payload)
}

/// A server event: `{type:<event>, data, timestamp}`; a channel delivery (the Socket.IO `event`
/// envelope `{channel, data, timestamp}`) becomes `{type:"event", channel, data, timestamp}`.
pub fn event(event: &str, data: &Value, with_payload: bool) -> String {
    if event == "event" {
        if let Some(channel) = data.get("channel").and_then(Value::as_str) {
            let mut fields = serde_json::Map::new();
            fields.insert("type".into(), Value::String("event".into()));
            fields.insert("channel".into(), Value::String(channel.to_string()));
            for k in ["data", "timestamp", "offset", "epoch"] {
                if let Some(v) = data.get(k) {
                    fields.insert(k.into(), v.clone());
                }
            }
            return to_json(&Value::Object(fields));
        }
    }
    generic(event, None, data, with_payload)
}

fn raw(v: &Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(v).unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"))
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|_| r#"{"type":"error","message":"Internal error","code":"INTERNAL"}"#.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_envelopes() {
        let f = parse(r#"{"type":"join-room","payload":{"roomId":"r"},"requestId":7}"#).unwrap();
        assert_eq!(f.kind, "join-room");
        assert_eq!(f.data["roomId"], "r");
        assert_eq!(f.request_id, Some(Value::from(7)));
        let f = parse(r#"{"event":"authenticate","data":{"token":"t"}}"#).unwrap();
        assert_eq!(f.kind, "authenticate");
        assert_eq!(f.data["token"], "t");
        let f = parse(r#"{"type":"subscribe","channel":"apps:created"}"#).unwrap();
        assert_eq!(f.channel.as_deref(), Some("apps:created"));
        assert!(parse("not json").is_err());
        assert!(parse("[1,2]").is_err());
        assert!(parse(r#"{"data":1}"#).is_err());
        assert!(parse(r#"{"type":5}"#).is_err());
    }

    #[test]
    fn channel_deliveries_are_flat() {
        let env = serde_json::json!({"channel": "apps:created", "data": {"id": 1}, "timestamp": "t"});
        let v: Value = serde_json::from_str(&event("event", &env, false)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "event", "channel": "apps:created", "data": {"id": 1}, "timestamp": "t"})
        );
        let v: Value = serde_json::from_str(&event("new-message", &serde_json::json!({"id": "m"}), false)).unwrap();
        assert_eq!(v["type"], "new-message");
        assert_eq!(v["data"]["id"], "m");
        assert!(v.get("payload").is_none(), "the SPEC's shape for a client that sends data");
        let v: Value = serde_json::from_str(&event("new-message", &serde_json::json!({"id": "m"}), true)).unwrap();
        assert_eq!(v["payload"]["id"], "m");
        assert!(v["timestamp"].is_string());
    }
}
