//! Socket.IO room names. Channels, chat rooms and users live in one room namespace of the adapter;
//! a prefix each keeps them apart, so a channel can never collide with a chat room or a user's room.

/// The adapter room of a channel's subscribers.
pub fn channel(name: &str) -> String {
    format!("ch:{name}")
}

/// The room of a channel's subscribers still catching up after a recovery: the channel's
/// publications skip them until this node delivers one past their replay (see `publications.rs`).
pub fn catching_up(channel: &str) -> String {
    format!("chx:{channel}")
}

/// The adapter room of a chat room's joined sockets.
pub fn chat(room_id: &str) -> String {
    format!("r:{room_id}")
}

/// The adapter room holding every socket of a user.
pub fn user(user_id: &str) -> String {
    format!("u:{user_id}")
}

pub const CHANNEL_PREFIX: &str = "ch:";
pub const CHAT_PREFIX: &str = "r:";

/// The Redis channel of `realtime:emit` requests: the REST API's and the backend's emits to every node.
pub const EMIT_CHANNEL: &str = "realtime:emit";

/// SPEC §7: 1 to 128 characters from `[A-Za-z0-9:_.@-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'@' | b'-'))
}

/// Room ids additionally may not use the reserved prefixes `user:`, `system:` and `socket:`.
pub fn valid_room_id(id: &str) -> bool {
    valid_id(id) && !["user:", "system:", "socket:"].iter().any(|p| id.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("apps:created"));
        assert!(valid_id("a@b.c-d_e"));
        assert!(!valid_id(""));
        assert!(!valid_id(&"a".repeat(129)));
        assert!(valid_id(&"a".repeat(128)));
        assert!(!valid_id("with space"));
        assert!(!valid_id("ünï"));
        assert!(!valid_id("a/b"));
        assert!(valid_room_id("general"));
        assert!(!valid_room_id("user:alice"));
        assert!(!valid_room_id("system:x"));
        assert!(!valid_room_id("socket:x"));
    }
}
