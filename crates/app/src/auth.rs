//! JWT authentication (SPEC §2): where a token is found, how it is verified, what a user is.
//!
//! Each accepted key is paired with the one algorithm it may verify, and the token header's `alg`
//! picks the key. So `alg: none` (not an algorithm jsonwebtoken knows) is malformed, and an HS256 token
//! "signed" with an RSA public key finds no HS256 key made of that public key: algorithm confusion has
//! nothing to confuse.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use rtg_model::clock::unix_now;
use rtg_model::config::{Config, JwtAlgorithm};
pub use rtg_model::user::User;

/// The claims we read. Unknown claims are ignored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Claims {
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// A verified token: who, and until when (seconds since the epoch, as in the JWT).
#[derive(Debug, Clone)]
pub struct Verified {
    pub user: User,
    pub exp: u64,
}

/// Why a connection or a refresh was refused. `Display` is the exact `connect_error` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Authentication required")]
    Required,
    #[error("Authentication failed: {0}")]
    Failed(&'static str),
    /// Authenticated, but over the per-user socket cap.
    #[error("Too many connections for this user")]
    TooManySockets,
    /// Over the per-IP connection rate.
    #[error("Too many connections from this address")]
    TooManyConnections,
}

impl AuthError {
    /// The short reason, for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Required => "no token",
            AuthError::Failed(r) => r,
            AuthError::TooManySockets => "socket cap",
            AuthError::TooManyConnections => "connection rate",
        }
    }
}

struct Key {
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens with the configured keys; mints HS256 tokens with the current secret.
pub struct Authenticator {
    keys: Vec<Key>,
    validation_base: Validation,
    signing: Option<EncodingKey>,
    /// Set when no secret was configured: the process made one up.
    pub ephemeral: bool,
}

impl Authenticator {
    /// Builds the key set from the configuration. Without `JWT_SECRET` nor a public key, an
    /// ephemeral random secret is generated (see [`Authenticator::ephemeral`]).
    pub fn from_config(cfg: &Config) -> anyhow::Result<Arc<Self>> {
        let mut keys = Vec::new();
        let mut ephemeral = false;
        // An empty variable counts as unset.
        let configured = cfg.jwt_secret.as_deref().filter(|s| !s.is_empty());
        let secret = match (configured, &cfg.jwt_public_key_file) {
            (Some(s), _) => Some(s.to_string()),
            (None, Some(_)) => None,
            (None, None) => {
                ephemeral = true;
                Some(random_secret())
            }
        };
        if let Some(s) = &secret {
            keys.push(Key { alg: Algorithm::HS256, key: DecodingKey::from_secret(s.as_bytes()) });
        }
        if let Some(prev) = cfg.jwt_secret_previous.as_deref().filter(|s| !s.is_empty()) {
            keys.push(Key { alg: Algorithm::HS256, key: DecodingKey::from_secret(prev.as_bytes()) });
        }
        match (&cfg.jwt_public_key_file, cfg.jwt_algorithm) {
            (Some(path), alg) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("JWT_PUBLIC_KEY_FILE: cannot read {}", path.display()))?;
                let (alg, key) = match alg {
                    JwtAlgorithm::Rs256 => (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)),
                    JwtAlgorithm::Es256 => (Algorithm::ES256, DecodingKey::from_ec_pem(&pem)),
                    JwtAlgorithm::Hs256 => {
                        anyhow::bail!("JWT_ALGORITHM: a public key needs RS256 or ES256")
                    }
                };
                let key = key.map_err(|e| anyhow::anyhow!("JWT_PUBLIC_KEY_FILE: not a {alg:?} PEM public key: {e}"))?;
                keys.push(Key { alg, key });
            }
            (None, JwtAlgorithm::Rs256 | JwtAlgorithm::Es256) => {
                anyhow::bail!("JWT_ALGORITHM: RS256/ES256 need JWT_PUBLIC_KEY_FILE")
            }
            (None, JwtAlgorithm::Hs256) => {}
        }

        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present in the token, not merely right when present.
        let mut required = vec!["exp"];
        match cfg.jwt_audience.as_deref().filter(|a| !a.is_empty()) {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = cfg.jwt_issuer.as_deref().filter(|i| !i.is_empty()) {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Arc::new(Self {
            keys,
            validation_base: validation,
            signing: secret.map(|s| EncodingKey::from_secret(s.as_bytes())),
            ephemeral,
        }))
    }

    /// Verifies a token and returns its user and expiry.
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Failed(reason(e.kind())))?;
        let mut last = AuthError::Failed("invalid algorithm");
        for k in self.keys.iter().filter(|k| k.alg == header.alg) {
            let mut validation = self.validation_base.clone();
            validation.algorithms = vec![k.alg];
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(data) => return claims_to_user(data.claims),
                // Only a bad signature may be tried against the next (rotated) key.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                    last = AuthError::Failed("invalid signature")
                }
                Err(e) => return Err(AuthError::Failed(reason(e.kind()))),
            }
        }
        Err(last)
    }

    /// Mints an HS256 token with the current secret.
    pub fn mint(&self, user: &User, ttl: Duration) -> anyhow::Result<String> {
        let key = self.signing.as_ref().context("no JWT_SECRET configured: cannot mint HS256 tokens")?;
        let now = unix_now();
        let claims = Claims {
            sub: Some(user.user_id.clone()),
            user_id: None,
            role: Some(user.role.clone()),
            email: user.email.clone(),
            name: user.name.clone(),
            exp: now + ttl.as_secs(),
            iat: Some(now),
        };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)?)
    }
}

fn claims_to_user(c: Claims) -> Result<Verified, AuthError> {
    let user_id = c.sub.or(c.user_id).filter(|s| !s.is_empty()).ok_or(AuthError::Failed("missing subject"))?;
    // User ids appear in channel names (`user:<id>`), room names and Redis keys: the id alphabet only.
    if !rtg_model::names::valid_id(&user_id) {
        return Err(AuthError::Failed("invalid subject"));
    }
    Ok(Verified {
        user: User {
            user_id,
            email: c.email,
            name: c.name,
            role: c.role.filter(|r| !r.is_empty()).unwrap_or_else(|| "user".into()),
        },
        exp: c.exp,
    })
}

fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::InvalidSignature => "invalid signature",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidIssuer => "invalid issuer",
        ErrorKind::InvalidAudience => "invalid audience",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
            "invalid algorithm"
        }
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => "invalid audience",
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => "invalid issuer",
        ErrorKind::MissingRequiredClaim(_) => "missing exp claim",
        ErrorKind::InvalidClaimFormat(_) => "invalid claim",
        _ => "malformed token",
    }
}

/// Finds the token in the handshake: `auth.token`, then query `token`, then `Authorization: Bearer`.
/// An empty value counts as absent.
pub fn find_token<'a>(
    auth: Option<&'a serde_json::Value>,
    query: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(t) = auth.and_then(|a| a.get("token")).and_then(|t| t.as_str()).filter(|t| !t.is_empty()) {
        return Some(t.into());
    }
    if let Some(t) = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token="))).filter(|t| !t.is_empty())
    {
        return Some(percent_decode(t));
    }
    authorization
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(Into::into)
}

/// Minimal `%XX` decoding for a query value (JWTs are URL-safe, but clients may still encode).
fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') && !s.contains('+') {
        return s.into();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

fn random_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(secret: &str) -> Config {
        let mut c = Config::default_for_tests();
        c.jwt_secret = Some(secret.into());
        c.jwt_secret_previous = None;
        c.jwt_public_key_file = None;
        c.jwt_issuer = None;
        c.jwt_audience = None;
        c
    }

    fn alice() -> User {
        User { user_id: "alice".into(), email: None, name: None, role: "user".into() }
    }

    #[test]
    fn roundtrip_and_rotation() {
        let old = Authenticator::from_config(&cfg("old-secret")).unwrap();
        let token = old.mint(&alice(), Duration::from_secs(60)).unwrap();
        let mut c = cfg("new-secret");
        let fresh = Authenticator::from_config(&c).unwrap();
        assert_eq!(fresh.verify(&token).unwrap_err(), AuthError::Failed("invalid signature"));
        c.jwt_secret_previous = Some("old-secret".into());
        let rotated = Authenticator::from_config(&c).unwrap();
        assert_eq!(rotated.verify(&token).unwrap().user, alice());
    }

    #[test]
    fn alg_none_and_garbage_are_malformed() {
        let a = Authenticator::from_config(&cfg("s")).unwrap();
        // {"alg":"none","typ":"JWT"}.{"sub":"alice","exp":9999999999}.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(matches!(a.verify(none), Err(AuthError::Failed(_))));
        assert_eq!(a.verify("not-a-jwt").unwrap_err(), AuthError::Failed("malformed token"));
    }

    #[test]
    fn token_sources_in_order() {
        let auth = serde_json::json!({"token": "A"});
        assert_eq!(find_token(Some(&auth), Some("token=B"), Some("Bearer C")).unwrap(), "A");
        assert_eq!(find_token(None, Some("EIO=4&token=B"), Some("Bearer C")).unwrap(), "B");
        assert_eq!(find_token(None, Some("EIO=4"), Some("Bearer C")).unwrap(), "C");
        assert!(find_token(None, None, None).is_none());
        assert_eq!(find_token(None, Some("token=a%2Eb"), None).unwrap(), "a.b");
    }
}
