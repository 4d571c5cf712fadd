//! Property tests: whatever JSON a client sends, decoding it into any event's request type either
//! succeeds or fails cleanly (never panics), and the validators agree with their definitions.

use proptest::prelude::*;
use realtime_gateway::app::events::{calls, channels, connection, presence, private, rooms};
use realtime_gateway::app::policy::glob;
use realtime_gateway::model::names;
use serde_json::Value;

/// Arbitrary JSON up to a few levels deep, with the field names the events use.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
    ];
    let keys = prop::sample::select(vec![
        "roomId",
        "content",
        "channel",
        "targetUserId",
        "messageId",
        "messageIds",
        "userIds",
        "callId",
        "limit",
        "before",
        "type",
        "members",
        "name",
        "status",
        "offer",
        "answer",
        "candidate",
        "token",
        "reason",
        "clientMessageId",
        "replyTo",
        "callType",
        "__proto__",
    ]);
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone().prop_map(String::from), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn decode<T: serde::de::DeserializeOwned>(v: &Value) -> bool {
    serde_json::from_value::<T>(v.clone()).is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_request_type_decodes_or_refuses_without_panicking(v in json()) {
        // The results do not matter; reaching the end without a panic does.
        let _ = decode::<channels::ChannelRequest>(&v);
        let _ = decode::<connection::RefreshRequest>(&v);
        let _ = decode::<rooms::RoomRef>(&v);
        let _ = decode::<rooms::CreateRoom>(&v);
        let _ = decode::<rooms::SendMessage>(&v);
        let _ = decode::<rooms::EditMessage>(&v);
        let _ = decode::<rooms::LoadMessages>(&v);
        let _ = decode::<presence::StatusRequest>(&v);
        let _ = decode::<presence::PresenceRequest>(&v);
        let _ = decode::<private::PrivateRequest>(&v);
        let _ = decode::<private::MarkRead>(&v);
        let _ = decode::<calls::CallUser>(&v);
        let _ = decode::<calls::CallAnswer>(&v);
        let _ = decode::<calls::IceCandidate>(&v);
        let _ = decode::<calls::CallReject>(&v);
        let _ = decode::<calls::HangUp>(&v);
        let _ = decode::<realtime_gateway::app::delivery::EmitRequest>(&v);
    }

    #[test]
    fn valid_ids_are_exactly_the_documented_alphabet(s in ".{0,140}") {
        let expected = !s.is_empty() && s.len() <= 128
            && s.chars().all(|c| c.is_ascii_alphanumeric() || ":_.@-".contains(c));
        prop_assert_eq!(names::valid_id(&s), expected);
        if names::valid_room_id(&s) {
            prop_assert!(names::valid_id(&s));
            prop_assert!(!s.starts_with("user:") && !s.starts_with("system:") && !s.starts_with("socket:"));
        }
    }

    #[test]
    fn a_literal_pattern_matches_only_itself(p in "[a-z:]{1,12}", t in "[a-z:]{1,12}") {
        prop_assert_eq!(glob(&p, &t), p == t);
    }

    #[test]
    fn star_matches_one_or_more_characters(prefix in "[a-z]{1,8}:", rest in "[a-z0-9]{0,8}") {
        let pattern = format!("{prefix}*");
        let text = format!("{prefix}{rest}");
        prop_assert_eq!(glob(&pattern, &text), !rest.is_empty());
    }
}
