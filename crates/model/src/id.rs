//! The gateway's own id of a connected client, whatever carries it.

/// The gateway's own id of a connected client: `socket.id` (`sessionId`) for Socket.IO,
/// `connectionId` for `/ws`. 16 characters of the URL-safe base64 alphabet (96 random bits), the
/// shape of an Engine.IO session id, so that one `socketId` target names either kind.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId([u8; 16]);

const ID_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

impl ClientId {
    /// Below every real id (a bound for ordered sets).
    pub const ZERO: Self = Self([0u8; 16]);

    /// A new random id.
    pub fn new() -> Self {
        use rand::Rng;
        let mut rng = rand::rng();
        let mut id = [0u8; 16];
        for b in &mut id {
            *b = ID_ALPHABET[rng.random_range(0..64)];
        }
        Self(id)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl Default for ClientId {
    fn default() -> Self {
        Self::new()
    }
}

/// Not a client id: the wrong length, or a character outside the URL-safe base64 alphabet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a client id")]
pub struct BadClientId;

impl std::str::FromStr for ClientId {
    type Err = BadClientId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes: [u8; 16] = s.as_bytes().try_into().map_err(|_| BadClientId)?;
        if bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_') {
            Ok(Self(bytes))
        } else {
            Err(BadClientId)
        }
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
