//! Seed 002, QryptChat's chat API as its `websocket-chat.js` store reads it: every frame is
//! `{type, payload, requestId, timestamp}`; a request's answer echoes its `requestId`, and a
//! failure is `{type:"error", payload:{error, code}}` (the store rejects the request with
//! `payload.error`). Conversations are rooms, participants are members; a message's content is
//! opaque (the client may encrypt it end to end) and travels as `encrypted_content`.

use super::{Dialect, Does, Op, Rename, Shape, V};

/// A room message (`it`) as the store reads one: `id`, `conversation_id`, `encrypted_content`, ...
const MESSAGE: &[(&str, V)] = &[
    ("id", V::P("it.id")),
    ("conversation_id", V::P("it.roomId")),
    ("sender_id", V::P("it.userId")),
    (
        "sender",
        V::Obj(&[
            ("id", V::P("it.userId")),
            ("username", V::Or(&["it.user.name", "it.userId"])),
            ("display_name", V::Or(&["it.user.name", "it.userId"])),
        ]),
    ),
    ("encrypted_content", V::P("it.content")),
    ("message_type", V::P("it.type")),
    ("reply_to_id", V::P("it.replyTo")),
    ("created_at", V::Iso("it.timestamp")),
    ("edited", V::P("it.edited")),
    ("deleted", V::P("it.deleted")),
];

/// A room (`it`, a `list-rooms` or `create-room` room) as a conversation.
const CONVERSATION: &[(&str, V)] = &[
    ("id", V::P("it.id")),
    ("conversation_id", V::P("it.id")),
    ("conversation_name", V::Or(&["it.name", "it.id"])),
    ("name", V::P("it.name")),
    ("conversation_type", V::P("it.type")),
    ("type", V::P("it.type")),
    ("participant_ids", V::P("it.members")),
    ("last_message", V::At("it.lastMessage", MESSAGE)),
];

/// The conversation a request names.
const ROOM: V = V::P("req.conversationId");
/// The answer to `load_messages` and `load_more_messages`.
const MESSAGES_LOADED: V = V::Obj(&[
    ("conversationId", ROOM),
    ("messages", V::Each("ack.messages", MESSAGE)),
    ("hasMore", V::P("ack.hasMore")),
]);

pub static DIALECT: Dialect = Dialect {
    name: "qrypt",
    shape: Shape::TypePayload,
    ops: &[
        Op {
            name: "auth",
            does: Does::Authenticate,
            reply: Some((
                "auth_success",
                V::Obj(&[(
                    "user",
                    V::Obj(&[
                        ("id", V::P("user_id")),
                        ("userId", V::P("user_id")),
                        ("username", V::Or(&["user.name", "user_id"])),
                        ("display_name", V::P("user.name")),
                        ("email", V::P("user.email")),
                        ("role", V::P("user.role")),
                    ]),
                )]),
            )),
        },
        Op {
            name: "load_conversations",
            does: Does::Core("list-rooms", V::Obj(&[])),
            reply: Some(("conversations_loaded", V::Obj(&[("conversations", V::Each("ack.rooms", CONVERSATION))]))),
        },
        Op {
            name: "join_conversation",
            does: Does::Core("join-room", ROOM),
            reply: Some((
                "conversation_joined",
                V::Obj(&[
                    ("conversationId", ROOM),
                    (
                        "participants",
                        V::Each("ack.members", &[("user_id", V::P("it.userId")), ("user", V::P("it.user"))]),
                    ),
                ]),
            )),
        },
        Op {
            name: "leave_conversation",
            does: Does::Core("leave-room", ROOM),
            reply: Some(("conversation_left", V::Obj(&[("conversationId", ROOM)]))),
        },
        Op {
            name: "create_conversation",
            does: Does::Core(
                "create-room",
                V::Obj(&[
                    ("name", V::P("req.name")),
                    ("type", V::P("req.type")),
                    ("members", V::P("req.participant_ids")),
                ]),
            ),
            reply: Some((
                "conversation_created",
                V::Obj(&[("conversation", V::At("ack.room", CONVERSATION)), ("conversationId", V::P("ack.room.id"))]),
            )),
        },
        Op {
            name: "send_message",
            does: Does::Core(
                "message",
                V::Obj(&[
                    ("roomId", ROOM),
                    ("content", V::P("req.content")),
                    ("type", V::P("req.messageType")),
                    ("replyTo", V::P("req.replyToId")),
                ]),
            ),
            reply: Some((
                "message_sent",
                V::Obj(&[(
                    "message",
                    V::Obj(&[
                        ("id", V::P("ack.messageId")),
                        ("conversation_id", ROOM),
                        ("sender_id", V::P("user_id")),
                        ("encrypted_content", V::P("req.content")),
                        ("message_type", V::Or(&["req.messageType"])),
                        ("reply_to_id", V::P("req.replyToId")),
                        ("created_at", V::Iso("ack.timestamp")),
                    ]),
                )]),
            )),
        },
        Op {
            name: "load_messages",
            does: Does::Core("load-messages", V::Obj(&[("roomId", ROOM), ("limit", V::P("req.limit"))])),
            reply: Some(("messages_loaded", MESSAGES_LOADED)),
        },
        Op {
            name: "load_more_messages",
            does: Does::Core(
                "load-messages",
                V::Obj(&[
                    ("roomId", ROOM),
                    ("before", V::Or(&["req.before", "req.beforeMessageId", "req.before_id", "req.oldestMessageId"])),
                    ("limit", V::P("req.limit")),
                ]),
            ),
            reply: Some(("messages_loaded", MESSAGES_LOADED)),
        },
        Op {
            name: "typing_start",
            does: Does::Core("typing", V::Obj(&[("roomId", ROOM)])),
            reply: Some((
                "typing_update",
                V::Obj(&[("conversationId", ROOM), ("userId", V::P("user_id")), ("isTyping", V::Bool(true))]),
            )),
        },
        Op {
            name: "typing_stop",
            does: Does::Core("stop-typing", V::Obj(&[("roomId", ROOM)])),
            reply: Some((
                "typing_update",
                V::Obj(&[("conversationId", ROOM), ("userId", V::P("user_id")), ("isTyping", V::Bool(false))]),
            )),
        },
        Op { name: "ping", does: Does::Reply, reply: Some(("pong", V::Obj(&[]))) },
    ],
    out: &[
        Rename {
            core: "new-message",
            when: None,
            name: "message_received",
            fields: V::Obj(&[("message", V::At("data", MESSAGE))]),
        },
        Rename {
            core: "user-typing",
            when: None,
            name: "typing_update",
            fields: V::Obj(&[
                ("conversationId", V::P("data.roomId")),
                ("userId", V::P("data.userId")),
                ("user", V::P("data.user")),
                ("isTyping", V::Bool(true)),
            ]),
        },
        Rename {
            core: "user-stopped-typing",
            when: None,
            name: "typing_update",
            fields: V::Obj(&[
                ("conversationId", V::P("data.roomId")),
                ("userId", V::P("data.userId")),
                ("isTyping", V::Bool(false)),
            ]),
        },
        Rename {
            core: "presence-update",
            when: Some(("status", "offline")),
            name: "user_offline",
            fields: V::Obj(&[
                ("userId", V::P("data.userId")),
                ("status", V::P("data.status")),
                ("timestamp", V::Iso("data.timestamp")),
            ]),
        },
        Rename {
            core: "presence-update",
            when: None,
            name: "user_online",
            fields: V::Obj(&[
                ("userId", V::P("data.userId")),
                ("status", V::P("data.status")),
                ("timestamp", V::Iso("data.timestamp")),
            ]),
        },
    ],
    error: ("error", V::Obj(&[("error", V::P("err.message")), ("code", V::P("err.code"))])),
    auth_error: "auth_error",
    passthrough: false,
    default_rooms: &[],
};
