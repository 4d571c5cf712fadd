//! Files (SPEC §13): uploads in acknowledged chunks, streamed to storage as they arrive, and the
//! metadata that says who may download them.
//!
//! Storage goes through `object_store`: a local directory by default (`FILE_STORE_URL` unset: `files/`
//! under the working directory), an S3-compatible bucket with `FILE_STORE_URL=s3://bucket` (the
//! `AWS_*` variables name its endpoint and keys), where every node reads what any node wrote. A file
//! is two objects: `files/<id>` (the bytes) and `files/<id>.json` (its [`FileMeta`]), written last, so
//! a file exists for downloads only once it is complete.
//!
//! An upload lives on the node of the client that sends it (its chunks come over that one
//! connection): in memory there, with its writer, until its last chunk, its client leaving, or ten
//! minutes without a chunk. Chunks go to storage as they come (a multipart upload on S3): a file is
//! never held whole in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use rtg_model::config::Config;
use rtg_model::error::{ApiError, Code};

/// What a finished file is, and who may see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileMeta {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub mime_type: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    pub from_user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_user_id: Option<String>,
    pub created_at: u64,
}

impl FileMeta {
    /// `{id, name, size, mimeType, url}`: what messages and acks carry.
    pub fn public(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "name": self.name, "size": self.size, "mimeType": self.mime_type, "url": self.url,
        })
    }
}

/// Where a finished upload goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Room(String),
    User(String),
}

/// What `upload-start` announces.
pub struct NewUpload {
    pub name: String,
    pub size: u64,
    pub declared: Option<String>,
    pub to: Destination,
}

/// An upload in progress.
pub struct Upload {
    pub id: String,
    pub user_id: String,
    /// The client sending it: its chunks must come from it.
    pub sid: String,
    pub name: String,
    pub size: u64,
    pub declared: Option<String>,
    pub to: Destination,
    pub received: u64,
    pub next_seq: u64,
    /// The first bytes, for the content-type check.
    pub head: Vec<u8>,
    writer: Option<BufWriter>,
    last: Instant,
    /// Where `size` was charged against the daily budget: what an abandoned upload did not write
    /// is given back there.
    budget: Option<Budget>,
}

/// Where an upload's bytes were counted against the daily budget.
#[derive(Clone)]
enum Budget {
    /// The cluster's count, `<prefix>:upload-bytes:<user>:<day>`.
    Redis(Arc<crate::redis_link::RedisLink>, String),
    /// This node's count for that day.
    Local(u64),
}

impl Upload {
    fn new(id: &str, user_id: &str, sid: &str, req: NewUpload, writer: BufWriter) -> Self {
        Upload {
            id: id.to_string(),
            user_id: user_id.to_string(),
            sid: sid.to_string(),
            name: req.name,
            size: req.size,
            declared: req.declared,
            to: req.to,
            received: 0,
            next_seq: 0,
            head: Vec::new(),
            writer: Some(writer),
            last: Instant::now(),
            budget: None,
        }
    }
}

/// Limits of SPEC §13 and their settings.
#[derive(Debug, Clone, Copy)]
pub struct FileLimits {
    pub max_bytes: u64,
    pub chunk_bytes: usize,
    pub per_user: usize,
    pub bytes_per_day: u64,
    pub idle: Duration,
}

impl FileLimits {
    pub fn from_config(c: &Config) -> Self {
        // A chunk must fit in one packet: on `/ws` as base64 (4/3 of it) inside a JSON frame.
        let fits = (c.max_payload_bytes.saturating_sub(1024) * 3 / 4) as usize;
        FileLimits {
            max_bytes: c.max_upload_bytes,
            chunk_bytes: (c.upload_chunk_bytes as usize).min(fits).max(1024),
            per_user: c.max_uploads_per_user as usize,
            bytes_per_day: c.upload_bytes_per_day,
            idle: Duration::from_secs(c.upload_idle_timeout_secs),
        }
    }
}

const HEAD: usize = 512;

/// An upload in the registry: who sends it, outside its lock.
struct Entry {
    user_id: String,
    sid: String,
    upload: Arc<tokio::sync::Mutex<Upload>>,
}

pub struct Files {
    store: Arc<dyn ObjectStore>,
    /// Bytes an upload holds before they go to storage: S3's smallest multipart part (5 MiB), a
    /// chunk's worth for a directory.
    buffer: usize,
    pub limits: FileLimits,
    uploads: Mutex<HashMap<String, Entry>>,
    /// Bytes started per user today (UTC day): (day, bytes). On this node; with Redis the count is
    /// the cluster's (see [`Files::reserve_today`]).
    today: Mutex<HashMap<String, (u64, u64)>>,
}

fn data_path(id: &str) -> Path {
    Path::from(format!("files/{id}"))
}

fn meta_path(id: &str) -> Path {
    Path::from(format!("files/{id}.json"))
}

/// A file id: our own alphabet, so that it is safe in a path and a URL.
pub fn valid_file_id(id: &str) -> bool {
    (8..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Files {
    /// Opens the store that `FILE_STORE_URL` names (a local directory, created, when unset).
    pub fn open(config: &Config) -> anyhow::Result<Self> {
        use anyhow::Context;
        let url = config.file_store_url.clone().unwrap_or_default();
        let s3 = url.starts_with("s3://");
        let store: Arc<dyn ObjectStore> = if s3 {
            Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(&url)
                    .build()
                    .context("FILE_STORE_URL: cannot use this S3 bucket")?,
            )
        } else {
            let dir = match url.strip_prefix("file://") {
                Some(p) => std::path::PathBuf::from(p),
                None if url.is_empty() => {
                    std::env::current_dir().context("FILE_STORE_URL: no working directory")?.join("files")
                }
                None if url.contains("://") => {
                    anyhow::bail!("FILE_STORE_URL: use a directory, file:///dir or s3://bucket")
                }
                None => std::path::PathBuf::from(&url),
            };
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("FILE_STORE_URL: cannot create {}", dir.display()))?;
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .with_context(|| format!("FILE_STORE_URL: cannot use {}", dir.display()))?,
            )
        };
        let limits = FileLimits::from_config(config);
        Ok(Files {
            store,
            buffer: if s3 { 5 * 1024 * 1024 } else { limits.chunk_bytes.max(64 * 1024) },
            limits,
            uploads: Mutex::new(HashMap::new()),
            today: Mutex::new(HashMap::new()),
        })
    }

    fn uploads(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `bytes` against the user's daily budget on this node; `None` past it.
    fn reserve_local(&self, user_id: &str, bytes: u64) -> Option<Budget> {
        let day = rtg_model::clock::unix_now() / 86_400;
        let mut t = self.today.lock().unwrap_or_else(|e| e.into_inner());
        t.retain(|_, (d, _)| *d == day);
        let e = t.entry(user_id.to_string()).or_insert((day, 0));
        if e.1.saturating_add(bytes) > self.limits.bytes_per_day {
            return None;
        }
        e.1 += bytes;
        Some(Budget::Local(day))
    }

    /// Gives back the part of an upload's charge that it never wrote (it was abandoned or failed).
    async fn refund(&self, upload: &mut Upload) {
        let unwritten = upload.size.saturating_sub(upload.received);
        let (Some(budget), true) = (upload.budget.take(), unwritten > 0) else { return };
        match budget {
            Budget::Local(day) => {
                let mut t = self.today.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(e) = t.get_mut(&upload.user_id).filter(|e| e.0 == day) {
                    e.1 = e.1.saturating_sub(unwritten);
                }
            }
            Budget::Redis(redis, key) => {
                let script = redis::Script::new(
                    "if redis.call('DECRBY', KEYS[1], ARGV[1]) <= 0 then redis.call('DEL', KEYS[1]) end return 1",
                );
                let mut conn = redis.commands();
                if let Err(e) = script.key(key).arg(unwritten).invoke_async::<i64>(&mut conn).await {
                    tracing::warn!(upload = upload.id, "upload budget refund: {e}");
                }
            }
        }
    }

    /// Starts an upload: the per-user caps, then a writer on storage (which stores nothing yet).
    pub async fn start(
        &self,
        redis: Option<&Arc<crate::redis_link::RedisLink>>,
        prefix: &str,
        user_id: &str,
        sid: &str,
        req: NewUpload,
    ) -> Result<String, ApiError> {
        if req.size > self.limits.max_bytes {
            return Err(ApiError::new(
                Code::PayloadTooLarge,
                format!("File too large: at most {} bytes", self.limits.max_bytes),
            ));
        }
        let id = crate::store::new_id("f");
        let size = req.size;
        // Counted and registered in one step: concurrent starts cannot both take the last place.
        {
            let mut uploads = self.uploads();
            if uploads.values().filter(|e| e.user_id == user_id).count() >= self.limits.per_user {
                return Err(ApiError::new(
                    Code::RateLimited,
                    format!("Too many uploads in progress (at most {})", self.limits.per_user),
                ));
            }
            // Two parts on their way at most: an upload holds at most three parts of memory.
            let writer =
                BufWriter::with_capacity(self.store.clone(), data_path(&id), self.buffer).with_max_concurrency(2);
            let entry = Entry {
                user_id: user_id.to_string(),
                sid: sid.to_string(),
                upload: Arc::new(tokio::sync::Mutex::new(Upload::new(&id, user_id, sid, req, writer))),
            };
            uploads.insert(id.clone(), entry);
        }
        let Some(budget) = self.reserve_today(redis, prefix, user_id, size).await else {
            self.uploads().remove(&id);
            return Err(ApiError::new(Code::RateLimited, "Daily upload limit reached"));
        };
        let registered = self.uploads().get(&id).map(|e| e.upload.clone());
        if let Some(u) = registered {
            u.lock().await.budget = Some(budget);
        }
        Ok(id)
    }

    /// The daily budget: cluster-wide in Redis (`<prefix>:upload-bytes:<user>:<day>`), else on
    /// this node. Redis unreachable: this node's count.
    async fn reserve_today(
        &self,
        redis: Option<&Arc<crate::redis_link::RedisLink>>,
        prefix: &str,
        user_id: &str,
        bytes: u64,
    ) -> Option<Budget> {
        let Some(redis) = redis.filter(|r| !r.is_down()) else { return self.reserve_local(user_id, bytes) };
        let day = rtg_model::clock::unix_now() / 86_400;
        let key = format!("{prefix}:upload-bytes:{user_id}:{day}");
        let script = redis::Script::new(
            r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 0 end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 172800)
return 1
"#,
        );
        let mut conn = redis.commands();
        match script.key(&key).arg(bytes).arg(self.limits.bytes_per_day).invoke_async::<i64>(&mut conn).await {
            Ok(1) => Some(Budget::Redis(redis.clone(), key)),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("upload budget: redis unavailable, counting on this node: {e}");
                self.reserve_local(user_id, bytes)
            }
        }
    }

    /// The upload `id` of the client `sid`.
    pub fn get(&self, id: &str, sid: &str) -> Option<Arc<tokio::sync::Mutex<Upload>>> {
        self.uploads().get(id).filter(|e| e.sid == sid).map(|e| e.upload.clone())
    }

    /// Writes one chunk; `Some(meta)` once the last one is stored (the file then exists).
    pub async fn chunk(&self, upload: &mut Upload, seq: u64, data: &[u8]) -> Result<Option<FileMeta>, ApiError> {
        if seq != upload.next_seq {
            return Err(ApiError::invalid(format!("Out of order: expected seq {}", upload.next_seq)));
        }
        let max = self.limits.chunk_bytes.min((upload.size - upload.received) as usize);
        if data.is_empty() || data.len() > max {
            return Err(ApiError::invalid(format!(
                "Chunk of {} bytes: 1 to {max} expected for seq {}",
                data.len(),
                upload.next_seq
            )));
        }
        let Some(writer) = upload.writer.as_mut() else {
            return Err(ApiError::new(Code::NotFound, "Unknown upload"));
        };
        if let Err(e) = writer.write_all(data).await {
            tracing::warn!(upload = upload.id, "file storage: {e}");
            self.drop_upload(upload).await;
            return Err(ApiError::new(Code::Internal, "File storage unavailable"));
        }
        if upload.head.len() < HEAD {
            let take = (HEAD - upload.head.len()).min(data.len());
            upload.head.extend_from_slice(&data[..take]);
        }
        upload.received += data.len() as u64;
        upload.next_seq += 1;
        upload.last = Instant::now();
        if upload.received < upload.size {
            return Ok(None);
        }
        let done = match upload.writer.take() {
            Some(mut w) => w.shutdown().await,
            None => Ok(()),
        };
        self.uploads().remove(&upload.id);
        if let Err(e) = done {
            tracing::warn!(upload = upload.id, "file storage: {e}");
            let _ = self.store.delete(&data_path(&upload.id)).await;
            return Err(ApiError::new(Code::Internal, "File storage unavailable"));
        }
        let (room_id, to_user_id) = match &upload.to {
            Destination::Room(r) => (Some(r.clone()), None),
            Destination::User(u) => (None, Some(u.clone())),
        };
        let meta = FileMeta {
            id: upload.id.clone(),
            name: upload.name.clone(),
            size: upload.size,
            mime_type: content_type(upload.declared.as_deref(), &upload.head),
            url: format!("/api/files/{}", upload.id),
            room_id,
            from_user_id: upload.user_id.clone(),
            to_user_id,
            created_at: rtg_model::clock::unix_now_ms(),
        };
        let json = serde_json::to_vec(&meta).map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
        if let Err(e) = self.store.put(&meta_path(&meta.id), json.into()).await {
            tracing::warn!(upload = meta.id, "file storage: {e}");
            let _ = self.store.delete(&data_path(&meta.id)).await;
            return Err(ApiError::new(Code::Internal, "File storage unavailable"));
        }
        Ok(Some(meta))
    }

    /// Forgets an upload and what it stored, and gives back the budget it did not use.
    pub async fn drop_upload(&self, upload: &mut Upload) {
        self.uploads().remove(&upload.id);
        self.refund(upload).await;
        if let Some(mut w) = upload.writer.take() {
            if let Err(e) = w.abort().await {
                tracing::debug!(upload = upload.id, "abort: {e}");
            }
        }
        let _ = self.store.delete(&data_path(&upload.id)).await;
    }

    /// Drops the uploads of a client that left, and (with `idle`) those without a chunk for that long.
    pub async fn sweep(&self, sid: Option<&str>) {
        let now = Instant::now();
        let all: Vec<_> =
            self.uploads().values().filter(|e| sid.is_none_or(|s| e.sid == s)).map(|e| e.upload.clone()).collect();
        for u in all {
            // A client that left: wait for a chunk being written; the idle sweep skips busy ones.
            let mut guard = match sid {
                Some(_) => u.lock().await,
                None => match u.try_lock() {
                    Ok(g) => g,
                    Err(_) => continue,
                },
            };
            let gone = match sid {
                Some(s) => guard.sid == s,
                None => now.duration_since(guard.last) >= self.limits.idle,
            };
            if gone {
                tracing::info!(upload = guard.id, user_id = guard.user_id, "upload dropped");
                self.drop_upload(&mut guard).await;
            }
        }
    }

    /// Deletes a finished file (its metadata first: from then on it is unknown to downloads). For a
    /// file whose message could not be posted, or whose message was deleted.
    pub async fn delete(&self, id: &str) {
        if !valid_file_id(id) {
            return;
        }
        for path in [meta_path(id), data_path(id)] {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(file = id, "file delete: {e}"),
            }
        }
    }

    /// The file's metadata; `None` when there is no such (finished) file.
    pub async fn meta(&self, id: &str) -> Result<Option<FileMeta>, object_store::Error> {
        if !valid_file_id(id) {
            return Ok(None);
        }
        match self.store.get(&meta_path(id)).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                Ok(serde_json::from_slice(&bytes).ok())
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The file's bytes in `range` (all of them when `None`), as a stream from storage.
    pub async fn read(
        &self,
        id: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<object_store::GetResult, object_store::Error> {
        let opts = object_store::GetOptions { range: range.map(Into::into), ..Default::default() };
        self.store.get_opts(&data_path(id), opts).await
    }
}

/// The type a file is served with: the declared one when its first bytes agree (or say nothing
/// against it); the sniffed one when they name another; never a type a browser would run.
pub fn content_type(declared: Option<&str>, head: &[u8]) -> String {
    let sniffed = infer::get(head).map(|t| t.mime_type().to_string());
    let declared = declared.map(str::to_ascii_lowercase);
    let chosen = match (declared, sniffed) {
        (Some(d), Some(s)) if d == s => d,
        (_, Some(s)) => s,
        (Some(d), None) => d,
        (None, None) => "application/octet-stream".to_string(),
    };
    // HTML, XML of any kind (SVG, XHTML, RSS, XSL...), scripts: what a browser renders or runs.
    let active = chosen.starts_with("text/html")
        || chosen.contains("xml")
        || chosen.contains("xsl")
        || chosen.contains("javascript")
        || chosen.contains("ecmascript");
    if active {
        "application/octet-stream".to_string()
    } else {
        chosen
    }
}

/// `upload-start`'s `mimeType`: `type/subtype`, plain characters.
pub fn valid_mime(m: &str) -> bool {
    let Some((t, s)) = m.split_once('/') else { return false };
    let ok = |x: &str| {
        !x.is_empty() && x.len() <= 64 && x.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    ok(t) && ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let png = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13];
        assert_eq!(content_type(Some("image/png"), &png), "image/png");
        // Declared as text, the bytes are a PNG: served as what it is.
        assert_eq!(content_type(Some("text/plain"), &png), "image/png");
        assert_eq!(content_type(Some("text/plain"), b"hello"), "text/plain");
        assert_eq!(content_type(None, b"hello"), "application/octet-stream");
        // Never a type a browser would run, declared or not.
        assert_eq!(content_type(Some("text/html"), b"<html><script>"), "application/octet-stream");
        assert_eq!(content_type(Some("image/svg+xml"), b"<svg"), "application/octet-stream");
        assert_eq!(content_type(Some("application/rss+xml"), b"<rss"), "application/octet-stream");
        assert_eq!(content_type(Some("application/x-javascript"), b"x"), "application/octet-stream");
        assert!(valid_mime("application/pdf"));
        assert!(!valid_mime("text"));
        assert!(!valid_mime("a/b c"));
        assert!(valid_file_id("f1a2b3c4d5e6"));
        assert!(!valid_file_id("../etc/passwd"));
    }
}
