//! Configuration: every setting is an environment variable and the same-named CLI flag (SPEC §1).
//!
//! Each field's value name is its environment variable, so clap's first error line
//! (`invalid value 'x' for '--port <PORT>'`) already names the variable; `main` prints that line alone.

use std::path::PathBuf;
use std::time::Duration;

use clap::{builder::BoolishValueParser, Args, Parser, Subcommand, ValueEnum};

/// Command line: the gateway itself, or the `token` helper.
#[derive(Debug, Parser)]
#[command(name = "realtime-gateway", version, about = "Socket.IO-compatible real-time gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mint a JWT with the configured secret (JWT_SECRET, or JWT_SECRET_FILE-less HS256 only).
    Token {
        /// User id (`sub` claim).
        #[arg(long)]
        sub: String,
        /// Role claim; `admin` is an administrator.
        #[arg(long, default_value = "user")]
        role: String,
        /// Lifetime, e.g. `90s`, `15m`, `1h`, `7d`.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// Optional `email` claim.
        #[arg(long)]
        email: Option<String>,
        /// Optional `name` claim.
        #[arg(long)]
        name: Option<String>,
    },
    /// Write a self-signed certificate and key (`cert.pem`, `key.pem`) for local TLS and tests.
    SelfSigned {
        /// Directory to write them to.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Host names (and addresses) the certificate is for.
        #[arg(long, default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
        host: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Algorithm of `JWT_PUBLIC_KEY_FILE`. HS256 secrets are always checked with HS256 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JwtAlgorithm {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
}

/// Gateway settings (SPEC §1 plus the documented extras in docs/operations.md).
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[arg(long, env = "PORT", value_name = "PORT", default_value_t = 8888)]
    pub port: u16,
    #[arg(long, env = "HOST", value_name = "HOST", default_value = "0.0.0.0")]
    pub host: String,

    #[arg(long, env = "JWT_SECRET", value_name = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    #[arg(long, env = "JWT_SECRET_PREVIOUS", value_name = "JWT_SECRET_PREVIOUS", hide_env_values = true)]
    pub jwt_secret_previous: Option<String>,
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE", value_name = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    #[arg(long, env = "JWT_ALGORITHM", value_name = "JWT_ALGORITHM", value_enum, default_value = "HS256")]
    pub jwt_algorithm: JwtAlgorithm,
    #[arg(long, env = "JWT_ISSUER", value_name = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    #[arg(long, env = "JWT_AUDIENCE", value_name = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    #[arg(long, env = "ALLOW_ANONYMOUS", value_name = "ALLOW_ANONYMOUS", default_value = "true",
          value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub allow_anonymous: bool,

    #[arg(long, env = "REDIS_URL", value_name = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// PEM CA certificate(s) trusted for every TLS connection to Redis (`rediss://`), in any mode.
    #[arg(long, env = "REDIS_CA_FILE", value_name = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// Sentinels (comma-separated `host:port` or `redis[s]://[:password@]host:port`): the master is
    /// found through them and followed through a failover. Excludes `REDIS_URL`.
    #[arg(long, env = "REDIS_SENTINELS", value_name = "REDIS_SENTINELS", hide_env_values = true)]
    pub redis_sentinels: Option<String>,
    /// The master's name known to the sentinels.
    #[arg(long, env = "REDIS_SENTINEL_MASTER", value_name = "REDIS_SENTINEL_MASTER", default_value = "mymaster")]
    pub redis_sentinel_master: String,
    /// Redis Cluster nodes (comma-separated `host:port` or URLs, any nodes of it). Excludes `REDIS_URL`.
    #[arg(long, env = "REDIS_CLUSTER_NODES", value_name = "REDIS_CLUSTER_NODES", hide_env_values = true)]
    pub redis_cluster_nodes: Option<String>,
    #[arg(long, env = "API_KEY", value_name = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[arg(long, env = "CORS_ORIGINS", value_name = "CORS_ORIGINS", default_value = "*")]
    pub cors_origins: String,
    #[arg(long, env = "CHANNEL_POLICY_FILE", value_name = "CHANNEL_POLICY_FILE")]
    pub channel_policy_file: Option<PathBuf>,
    #[arg(long, env = "MAX_PAYLOAD_BYTES", value_name = "MAX_PAYLOAD_BYTES", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_payload_bytes: u64,
    #[arg(long, env = "LOG_FORMAT", value_name = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    #[arg(long, env = "TYPING_TIMEOUT_MS", value_name = "TYPING_TIMEOUT_MS", default_value_t = 3000)]
    pub typing_timeout_ms: u64,
    #[arg(long, env = "PRESENCE_GRACE_MS", value_name = "PRESENCE_GRACE_MS", default_value_t = 5000)]
    pub presence_grace_ms: u64,
    #[arg(long, env = "CALL_RING_TIMEOUT_MS", value_name = "CALL_RING_TIMEOUT_MS", default_value_t = 30000)]
    pub call_ring_timeout_ms: u64,
    #[arg(long, env = "RATE_LIMIT_PER_SEC", value_name = "RATE_LIMIT_PER_SEC", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_sec: u32,
    #[arg(long, env = "RATE_LIMIT_BURST", value_name = "RATE_LIMIT_BURST", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: u32,
    #[arg(long, env = "PING_INTERVAL_MS", value_name = "PING_INTERVAL_MS", default_value_t = 25000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub ping_interval_ms: u64,
    #[arg(long, env = "PING_TIMEOUT_MS", value_name = "PING_TIMEOUT_MS", default_value_t = 20000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub ping_timeout_ms: u64,

    /// Grace between `auth-expired` and the disconnect of a socket whose token has expired (≤ 30 s by SPEC §2).
    #[arg(long, env = "AUTH_EXPIRY_GRACE_MS", value_name = "AUTH_EXPIRY_GRACE_MS", default_value_t = 10000,
          value_parser = clap::value_parser!(u64).range(0..=30000))]
    pub auth_expiry_grace_ms: u64,
    /// Packets that may wait in one socket's outgoing buffer; a socket whose buffer is full when the
    /// gateway answers it is a slow consumer and is dropped.
    #[arg(long, env = "SOCKET_BUFFER_PACKETS", value_name = "SOCKET_BUFFER_PACKETS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub socket_buffer_packets: u64,
    /// Bytes read at a time from each WebSocket: small keeps idle connections light (each holds this
    /// much for its life); larger frames are still read whole, in several reads. 512 holds a typical
    /// chat frame in one read (docs/benchmarks.md, the `/ws` idle memory).
    #[arg(long, env = "WS_READ_BUFFER_BYTES", value_name = "WS_READ_BUFFER_BYTES", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(256..=1_048_576))]
    pub ws_read_buffer_bytes: u64,
    /// Pending connections the kernel holds for each listener (plain and TLS) before the gateway
    /// accepts them; capped by `net.core.somaxconn`. Too small, a connect storm overflows it and each
    /// overflowed client waits for its SYN retry (about 1 s).
    #[arg(long, env = "LISTEN_BACKLOG", value_name = "LISTEN_BACKLOG", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub listen_backlog: u32,
    /// Connections per second from one IP address (bursts of twice that); 0 turns it off. The default
    /// lets 10,000 clients behind one address (a NAT, a proxy) reconnect within about 8 s after a deploy.
    #[arg(long, env = "CONNECT_RATE_PER_IP", value_name = "CONNECT_RATE_PER_IP", default_value_t = 1000)]
    pub connect_rate_per_ip: u32,
    /// Take the client address from `X-Forwarded-For` (only behind a proxy that sets it).
    #[arg(long, env = "TRUST_PROXY_HEADERS", value_name = "TRUST_PROXY_HEADERS", default_value = "false",
          value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub trust_proxy_headers: bool,
    /// Prefix of every Redis key and of the adapter's pub/sub channels (`<prefix>-sio-...`).
    #[arg(long, env = "REDIS_PREFIX", value_name = "REDIS_PREFIX", default_value = "rtg")]
    pub redis_prefix: String,
    /// This node's id in `/health` and `/api/stats`; random when unset.
    #[arg(long, env = "NODE_ID", value_name = "NODE_ID")]
    pub node_id: Option<String>,
    /// Most sockets one user may hold at once (SPEC §7).
    #[arg(long, env = "MAX_SOCKETS_PER_USER", value_name = "MAX_SOCKETS_PER_USER", default_value_t = 20)]
    pub max_sockets_per_user: usize,
    /// Most channel subscriptions per socket (SPEC §7).
    #[arg(
        long,
        env = "MAX_SUBSCRIPTIONS_PER_SOCKET",
        value_name = "MAX_SUBSCRIPTIONS_PER_SOCKET",
        default_value_t = 128
    )]
    pub max_subscriptions_per_socket: usize,
    /// Publications kept per channel for `channel-history` and recovery (SPEC §15); 0 turns channel
    /// history off (no `offset`/`epoch`, no recovery).
    #[arg(long, env = "CHANNEL_HISTORY_SIZE", value_name = "CHANNEL_HISTORY_SIZE", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub channel_history_size: u64,
    /// How long a channel publication is kept for recovery, in seconds.
    #[arg(long, env = "CHANNEL_HISTORY_TTL_SECS", value_name = "CHANNEL_HISTORY_TTL_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=7 * 24 * 3600))]
    pub channel_history_ttl_secs: u64,
    /// Where files go (SPEC §13): a directory (`files/` under the working directory when unset),
    /// `file:///dir`, or `s3://bucket` (endpoint and keys from the `AWS_*` variables).
    #[arg(long, env = "FILE_STORE_URL", value_name = "FILE_STORE_URL")]
    pub file_store_url: Option<String>,
    /// Largest file an `upload-start` may announce, in bytes.
    #[arg(long, env = "MAX_UPLOAD_BYTES", value_name = "MAX_UPLOAD_BYTES", default_value_t = 25 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=(1u64 << 40)))]
    pub max_upload_bytes: u64,
    /// The `chunkSize` of uploads (cut to what fits in `MAX_PAYLOAD_BYTES`).
    #[arg(long, env = "UPLOAD_CHUNK_BYTES", value_name = "UPLOAD_CHUNK_BYTES", default_value_t = 256 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
    pub upload_chunk_bytes: u64,
    /// Uploads one user may have in progress at once (per node).
    #[arg(long, env = "MAX_UPLOADS_PER_USER", value_name = "MAX_UPLOADS_PER_USER", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_uploads_per_user: u64,
    /// Bytes one user may upload per UTC day (cluster-wide with Redis).
    #[arg(long, env = "UPLOAD_BYTES_PER_DAY", value_name = "UPLOAD_BYTES_PER_DAY", default_value_t = 1024 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_bytes_per_day: u64,
    /// An upload without a chunk for this long is dropped.
    #[arg(long, env = "UPLOAD_IDLE_TIMEOUT_SECS", value_name = "UPLOAD_IDLE_TIMEOUT_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub upload_idle_timeout_secs: u64,
    /// Messages kept per room (SPEC §7).
    #[arg(long, env = "MAX_ROOM_HISTORY", value_name = "MAX_ROOM_HISTORY", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..))]
    pub max_room_history: u64,
    /// Bytes of message content kept per room: the oldest messages go first when a room is over it.
    #[arg(long, env = "MAX_ROOM_HISTORY_BYTES", value_name = "MAX_ROOM_HISTORY_BYTES", default_value_t = 2 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_room_history_bytes: u64,
    /// Largest `content` of a room or private message, in bytes (SPEC §1).
    #[arg(long, env = "MAX_MESSAGE_BYTES", value_name = "MAX_MESSAGE_BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(1..=16 * 1024 * 1024))]
    pub max_message_bytes: u64,
    /// Rooms made with `create-room` that one user may have created (and that still exist).
    #[arg(long, env = "MAX_CREATED_ROOMS_PER_USER", value_name = "MAX_CREATED_ROOMS_PER_USER", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_created_rooms_per_user: u64,
    /// Bytes of room history one user's messages may hold over all rooms (counted as
    /// `MAX_ROOM_HISTORY_BYTES` counts): past it the user's own oldest messages go first.
    #[arg(long, env = "MAX_HISTORY_BYTES_PER_USER", value_name = "MAX_HISTORY_BYTES_PER_USER", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_history_bytes_per_user: u64,
    /// Bytes of private messages one sender may keep waiting in offline users' queues, over all its
    /// targets (SPEC §5): past it a message for an offline user answers `RATE_LIMITED`.
    #[arg(long, env = "MAX_QUEUED_BYTES_PER_SENDER", value_name = "MAX_QUEUED_BYTES_PER_SENDER", default_value_t = 8 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_queued_bytes_per_sender: u64,
    /// A room's history, and a room made with `create-room`, are forgotten after this long without a message.
    #[arg(long, env = "ROOM_IDLE_TTL_SECS", value_name = "ROOM_IDLE_TTL_SECS", default_value_t = 30 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(60..))]
    pub room_idle_ttl_secs: u64,
    /// Chat rooms one socket may be joined to at once.
    #[arg(long, env = "MAX_ROOMS_PER_SOCKET", value_name = "MAX_ROOMS_PER_SOCKET", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_rooms_per_socket: u64,
    /// `/ws`: a connection without a token must authenticate in-band within this (else close 4001).
    #[arg(long, env = "WS_AUTH_TIMEOUT_MS", value_name = "WS_AUTH_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub ws_auth_timeout_ms: u64,
    /// `/ws`: a connection from which nothing arrives (pongs count) for this long is closed (4002).
    #[arg(long, env = "WS_IDLE_TIMEOUT_MS", value_name = "WS_IDLE_TIMEOUT_MS", default_value_t = 90000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub ws_idle_timeout_ms: u64,
    /// PEM certificate chain for the TLS listener (SPEC §11); with `TLS_KEY_FILE`.
    #[arg(long, env = "TLS_CERT_FILE", value_name = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for the TLS listener; with `TLS_CERT_FILE`.
    #[arg(long, env = "TLS_KEY_FILE", value_name = "TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Port of the TLS listener (`0` picks a free one; the bound address is logged as `tls_addr`).
    #[arg(long, env = "TLS_PORT", value_name = "TLS_PORT", default_value_t = 8443)]
    pub tls_port: u16,
    /// The Socket.IO Admin UI's password (a bcrypt hash, or plain text hashed at start); unset: no `/admin`.
    #[arg(long, env = "ADMIN_UI_PASSWORD", value_name = "ADMIN_UI_PASSWORD", hide_env_values = true)]
    pub admin_ui_password: Option<String>,
    #[arg(long, env = "ADMIN_UI_USERNAME", value_name = "ADMIN_UI_USERNAME", default_value = "admin")]
    pub admin_ui_username: String,
    /// The UI may look but not act (no emit, join, leave, disconnect).
    #[arg(long, env = "ADMIN_UI_READONLY", value_name = "ADMIN_UI_READONLY", default_value = "false",
          value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub admin_ui_readonly: bool,
    /// `production` (server figures only, the default) or `development` (sockets, rooms and events listed,
    /// tokens redacted): development shows what clients send, private messages included.
    #[arg(long, env = "ADMIN_UI_MODE", value_name = "ADMIN_UI_MODE", default_value = "production")]
    pub admin_ui_mode: String,
    /// Client events that are not the gateway's own are POSTed here (SPEC §14).
    #[arg(long, env = "EVENT_PROXY_URL", value_name = "EVENT_PROXY_URL")]
    pub event_proxy_url: Option<String>,
    #[arg(long, env = "EVENT_PROXY_TIMEOUT_MS", value_name = "EVENT_PROXY_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub event_proxy_timeout_ms: u64,
    /// Calls to `EVENT_PROXY_URL` in flight at once on a node; past it an event answers `RATE_LIMITED`.
    #[arg(long, env = "EVENT_PROXY_CONCURRENCY", value_name = "EVENT_PROXY_CONCURRENCY", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub event_proxy_concurrency: u64,
    /// Lifecycle webhooks are POSTed here (SPEC §14).
    #[arg(long, env = "WEBHOOK_URL", value_name = "WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key of `X-Realtime-Signature` on webhooks and event proxy calls.
    #[arg(long, env = "WEBHOOK_SECRET", value_name = "WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Bytes of webhook bodies waiting at most (in memory on a node, and in the Redis stream); past it the
    /// oldest are dropped and counted. The queue carries messages' content: a count alone does not bound it.
    #[arg(long, env = "WEBHOOK_QUEUE_MAX_BYTES", value_name = "WEBHOOK_QUEUE_MAX_BYTES", default_value_t = 64 << 20,
          value_parser = clap::value_parser!(u64).range(1 << 20..=1 << 40))]
    pub webhook_queue_max_bytes: u64,
    /// Live calls (ringing or active) one user may be a party of.
    #[arg(long, env = "MAX_CALLS_PER_USER", value_name = "MAX_CALLS_PER_USER", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_calls_per_user: u64,
}

impl Config {
    /// Defaults, as if no variable were set: what tests start from.
    pub fn default_for_tests() -> Self {
        let cli = Cli::parse_from(["realtime-gateway", "--port", "0", "--host", "127.0.0.1"]);
        cli.config
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }
}

/// `90s`, `15m`, `1h`, `7d`, or plain seconds.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad duration '{s}'"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("bad duration unit in '{s}' (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("x").is_err());
    }

    #[test]
    fn invalid_value_names_the_variable() {
        let err = Cli::try_parse_from(["realtime-gateway", "--port", "nope"]).unwrap_err();
        let first = err.to_string();
        assert!(first.lines().next().unwrap().contains("PORT"), "{first}");
        let err = Cli::try_parse_from(["realtime-gateway", "--log-format", "xml"]).unwrap_err();
        assert!(err.to_string().lines().next().unwrap().contains("LOG_FORMAT"));
    }
}
