//! Seed 003's native WebSocket server, as its `WebSocketClient` reads it: `{type, ...fields}`
//! frames with numeric `timestamp`s; `join`/`leave` `{room}` answered `joined`/`left` `{roomId}`,
//! `chat` `{room, content}` to the whole room as `{type:"chat", from, content, timestamp}`,
//! `broadcast` `{room, data}` to the others as `data` itself, `ping` → `pong`, errors as
//! `{type:"error", error}`. The token comes with the upgrade (the URL's `token`).

use super::{Dialect, Does, Op, Rename, Shape, V};

/// A room member as the seed's `getRoomMembers` gives it (the user object).
const MEMBER: &[(&str, V)] = &[("id", V::P("it.userId")), ("name", V::Or(&["it.user.name", "it.userId"]))];

pub static DIALECT: Dialect = Dialect {
    name: "native",
    shape: Shape::Flat,
    ops: &[
        Op {
            name: "join",
            does: Does::Core("join-room", V::P("req.room")),
            reply: Some((
                "joined",
                V::Obj(&[("roomId", V::P("req.room")), ("members", V::Each("ack.members", MEMBER))]),
            )),
        },
        Op {
            name: "leave",
            does: Does::Core("leave-room", V::P("req.room")),
            reply: Some(("left", V::Obj(&[("roomId", V::P("req.room"))]))),
        },
        Op {
            name: "chat",
            does: Does::Core("message", V::Obj(&[("roomId", V::P("req.room")), ("content", V::P("req.content"))])),
            reply: None,
        },
        Op { name: "broadcast", does: Does::RoomBroadcast("req.room"), reply: None },
        Op { name: "ping", does: Does::Reply, reply: Some(("pong", V::Obj(&[("timestamp", V::P("now_ms"))]))) },
    ],
    out: &[
        Rename {
            core: "new-message",
            when: None,
            name: "chat",
            fields: V::Obj(&[
                ("from", V::Or(&["data.user.name", "data.userId"])),
                ("content", V::P("data.content")),
                ("timestamp", V::P("data.timestamp")),
                ("roomId", V::P("data.roomId")),
                ("userId", V::P("data.userId")),
                ("id", V::P("data.id")),
            ]),
        },
        // What another client broadcast: its `data`, as it sent it.
        Rename { core: "broadcast", when: None, name: "", fields: V::P("data") },
        Rename {
            core: "user-joined",
            when: None,
            name: "user-joined",
            fields: V::Obj(&[
                ("userId", V::P("data.userId")),
                ("roomId", V::P("data.roomId")),
                ("timestamp", V::P("now_ms")),
            ]),
        },
        Rename {
            core: "user-left",
            when: None,
            name: "user-left",
            fields: V::Obj(&[
                ("userId", V::P("data.userId")),
                ("roomId", V::P("data.roomId")),
                ("timestamp", V::P("now_ms")),
            ]),
        },
    ],
    error: ("error", V::Obj(&[("error", V::P("err.message")), ("code", V::P("err.code"))])),
    auth_error: "error",
    passthrough: false,
    default_rooms: &[],
};
