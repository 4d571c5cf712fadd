//! Seed 004, the Bun WebSocket helper (`@venizia/ignis-helpers`): `{event, data}` frames both
//! ways. `authenticate` `{token}` is answered `connected` `{id, userId, time}` and puts the client
//! in `ws-default`, `ws-notification` and its own id; `join`/`leave` `{rooms:[...]}` run
//! `join-room`/`leave-room` for each room, unanswered as in the helper; `heartbeat` is activity
//! only; errors are `{event:"error", data:{message, code}}`. Its other events run the core event
//! of that name (`message`, `typing`, ...). Server events arrive as `{event, data}`.

use super::{Dialect, Does, Op, Shape, V};

pub static DIALECT: Dialect = Dialect {
    name: "bun",
    shape: Shape::EventData,
    ops: &[
        Op {
            name: "authenticate",
            does: Does::Authenticate,
            reply: Some((
                "connected",
                V::Obj(&[("id", V::P("conn")), ("userId", V::P("user_id")), ("time", V::P("now_iso"))]),
            )),
        },
        Op { name: "join", does: Does::EachCore("join-room", "req.rooms"), reply: None },
        Op { name: "leave", does: Does::EachCore("leave-room", "req.rooms"), reply: None },
        Op { name: "heartbeat", does: Does::Nothing, reply: None },
    ],
    out: &[],
    error: ("error", V::Obj(&[("message", V::P("err.message")), ("code", V::P("err.code"))])),
    auth_error: "error",
    passthrough: true,
    default_rooms: &["ws-default", "ws-notification", "conn"],
};
