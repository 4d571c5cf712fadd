//! The gateway's event names, as one typed list: the router (`app/events`) matches on [`ClientEvent`]
//! (the compiler makes it route every one), the metrics take their label sets from [`ClientEvent::ALL`]
//! and [`ServerEvent::ALL`], and a test checks that `docs/protocol.md` documents each name.

macro_rules! event_list {
    ($(#[$doc:meta])* $ty:ident { $($variant:ident => $name:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $ty {
            $($variant),*
        }

        impl $ty {
            /// Every one, in the order of the list.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),*];

            /// Its name on the wire.
            pub const fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),*
                }
            }

            /// The event of that name, if it is one of the list.
            pub fn parse(name: &str) -> Option<Self> {
                match name {
                    $($name => Some($ty::$variant),)*
                    _ => None,
                }
            }

            /// Its place in [`Self::ALL`] (for tables indexed by event).
            pub const fn index(self) -> usize {
                self as usize
            }
        }
    };
}

event_list! {
    /// An event a client sends that the gateway handles itself (SPEC §3-§7, §13, §15). Any other name
    /// goes to the event proxy when there is one (SPEC §14), else is answered `NOT_FOUND`.
    ClientEvent {
        Subscribe => "subscribe",
        Unsubscribe => "unsubscribe",
        ChannelHistory => "channel-history",
        UploadStart => "upload-start",
        UploadChunk => "upload-chunk",
        ListChannels => "list_channels",
        Stats => "stats",
        RefreshToken => "refresh-token",
        JoinRoom => "join-room",
        LeaveRoom => "leave-room",
        CreateRoom => "create-room",
        Message => "message",
        EditMessage => "edit-message",
        DeleteMessage => "delete-message",
        ListRooms => "list-rooms",
        LoadMessages => "load-messages",
        Typing => "typing",
        StopTyping => "stop-typing",
        UpdateStatus => "update-status",
        GetPresence => "get-presence",
        PrivateMessage => "private-message",
        MarkRead => "mark-read",
        CallUser => "call-user",
        CallAnswer => "call-answer",
        IceCandidate => "ice-candidate",
        CallReject => "call-reject",
        HangUp => "hang-up",
    }
}

event_list! {
    /// An event the gateway emits by name. A named event of the REST API or of `realtime:emit` is the
    /// backend's, not one of these.
    ServerEvent {
        Connected => "connected",
        Event => "event",
        NewMessage => "new-message",
        MessageUpdated => "message-updated",
        MessageDeleted => "message-deleted",
        UserJoined => "user-joined",
        UserLeft => "user-left",
        UserTyping => "user-typing",
        UserStoppedTyping => "user-stopped-typing",
        PresenceUpdate => "presence-update",
        PrivateMessage => "private-message",
        MessagesRead => "messages-read",
        PendingMessages => "pending-messages",
        IncomingCall => "incoming-call",
        CallAnswered => "call-answered",
        CallHandledElsewhere => "call-handled-elsewhere",
        CallRejected => "call-rejected",
        CallEnded => "call-ended",
        IceCandidate => "ice-candidate",
        AuthExpired => "auth-expired",
        ServerShutdown => "server-shutdown",
        Error => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        for (i, e) in ClientEvent::ALL.iter().enumerate() {
            assert_eq!(ClientEvent::parse(e.name()), Some(*e));
            assert_eq!(e.index(), i);
        }
        for e in ServerEvent::ALL {
            assert_eq!(ServerEvent::parse(e.name()), Some(*e));
        }
        assert_eq!(ClientEvent::parse("nope"), None);
    }

    /// Every event of the list is documented: `docs/protocol.md` names it in backticks.
    #[test]
    fn protocol_md_documents_every_event() {
        let doc = include_str!("../../../docs/protocol.md");
        let missing: Vec<&str> = ClientEvent::ALL
            .iter()
            .map(|e| e.name())
            .chain(ServerEvent::ALL.iter().map(|e| e.name()))
            .filter(|n| !doc.contains(&format!("`{n}`")))
            .collect();
        assert!(missing.is_empty(), "docs/protocol.md does not document {missing:?}");
    }
}
