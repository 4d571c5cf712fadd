//! `upload-start` and `upload-chunk` (SPEC §13): a file shared in a chat room or with a user, sent in
//! acknowledged chunks. The storage side is `files.rs`; a finished upload becomes a room `Message` of
//! `type:"file"` or a `private-message`, through the same paths as a text one.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::json;

use super::Ctx;
use rtg_model::error::{ApiError, Code, HandlerResult};
use rtg_storage::files::{Destination, FileMeta, NewUpload};
use rtg_storage::store::{Message, PrivateMessage};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadStart {
    name: String,
    size: u64,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    room_id: Option<String>,
    #[serde(default)]
    target_user_id: Option<String>,
}

/// `upload-start` `{name, size, mimeType?, roomId?|targetUserId?}` → `{success, uploadId, chunkSize}`.
pub async fn upload_start(ctx: &Ctx, req: UploadStart) -> HandlerResult {
    let user = ctx.user()?;
    let files = &ctx.state.files;
    if req.name.is_empty() || req.name.len() > 255 || req.name.chars().any(|c| c.is_control() || c == '/' || c == '\\')
    {
        return Err(ApiError::invalid("name must be 1 to 255 bytes, without control characters or slashes"));
    }
    if req.size == 0 {
        return Err(ApiError::invalid("size must be at least 1 byte"));
    }
    if let Some(m) = &req.mime_type {
        if !rtg_storage::files::valid_mime(m) {
            return Err(ApiError::invalid("mimeType must look like type/subtype"));
        }
    }
    let to = match (req.room_id, req.target_user_id) {
        (Some(room), None) => {
            let room = super::rooms::valid_room(room)?;
            if !super::rooms::is_joined(ctx, &room) {
                return Err(ApiError::new(Code::NotInRoom, "Not in room"));
            }
            Destination::Room(room)
        }
        (None, Some(target)) if !target.is_empty() && target.len() <= 128 => Destination::User(target),
        (None, Some(_)) => return Err(ApiError::invalid("targetUserId must be a user id of 1 to 128 characters")),
        _ => return Err(ApiError::invalid("name exactly one of roomId and targetUserId")),
    };
    let id = files
        .start(
            ctx.state.redis.as_ref(),
            &ctx.state.config.redis_prefix,
            &user.user_id,
            &ctx.id().to_string(),
            NewUpload { name: req.name, size: req.size, declared: req.mime_type, to },
        )
        .await?;
    Ok(json!({ "success": true, "uploadId": id, "chunkSize": files.limits.chunk_bytes }))
}

/// A chunk's bytes: a Socket.IO binary attachment, or base64 text (`/ws`).
pub struct Chunk(pub Vec<u8>);

impl<'de> Deserialize<'de> for Chunk {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Chunk;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("binary data, or base64 text")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Chunk, E> {
                Ok(Chunk(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Chunk, E> {
                Ok(Chunk(v))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Chunk, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Chunk(out))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Chunk, E> {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map(Chunk)
                    .map_err(|_| E::custom("data is not base64"))
            }
        }
        // Asked for as bytes: socketioxide then resolves a binary attachment's placeholder; a JSON
        // string (`/ws`) comes as text.
        d.deserialize_byte_buf(V)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadChunk {
    upload_id: String,
    seq: u64,
    data: Chunk,
}

/// `upload-chunk` `{uploadId, seq, data}` → `{success, received}`; the last adds `complete, file`.
pub async fn upload_chunk(ctx: &Ctx, req: UploadChunk) -> HandlerResult {
    let user = ctx.user()?;
    let files = &ctx.state.files;
    let Some(upload) = files.get(&req.upload_id, &ctx.id().to_string()) else {
        return Err(ApiError::new(Code::NotFound, "Unknown upload"));
    };
    let mut upload = upload.lock().await;
    // The room is checked again at the last chunk: a sender who left meanwhile posts nothing.
    let last = upload.received.saturating_add(req.data.0.len() as u64) >= upload.size && req.seq == upload.next_seq;
    if let (true, Destination::Room(room)) = (last, &upload.to) {
        if !super::rooms::is_joined(ctx, room) {
            files.drop_upload(&mut upload).await;
            return Err(ApiError::new(Code::NotInRoom, "Not in room"));
        }
    }
    let Some(meta) = files.chunk(&mut upload, req.seq, &req.data.0).await? else {
        return Ok(json!({ "success": true, "received": upload.received }));
    };
    let received = upload.received;
    drop(upload);
    if let Err(e) = share(ctx, user, &meta).await {
        // No message, no file: a failed post leaves nothing downloadable behind.
        files.delete(&meta.id).await;
        return Err(e);
    }
    Ok(json!({ "success": true, "received": received, "complete": true, "file": meta.public() }))
}

/// A finished file, as a message: `type:"file"` in its room, or a `private-message`.
async fn share(ctx: &Ctx, user: &rtg_model::user::User, meta: &FileMeta) -> Result<(), ApiError> {
    let now = rtg_model::clock::unix_now_ms();
    match (&meta.room_id, &meta.to_user_id) {
        (Some(room), _) => {
            let msg = Message {
                id: rtg_storage::store::new_id("m"),
                room_id: room.clone(),
                user_id: user.user_id.clone(),
                user: user.clone(),
                content: meta.name.clone(),
                kind: "file".into(),
                reply_to: None,
                timestamp: now,
                edited: false,
                deleted: false,
                file: Some(meta.public()),
            };
            super::rooms::post(ctx, &msg).await
        }
        (None, Some(to)) => {
            let pm = PrivateMessage {
                id: rtg_storage::store::new_id("pm"),
                from_user_id: user.user_id.clone(),
                from_user: user.clone(),
                to_user_id: to.clone(),
                content: meta.name.clone(),
                timestamp: now,
                read: false,
                file: Some(meta.public()),
            };
            super::private::send(ctx, &pm).await.map(|_| ())
        }
        (None, None) => Ok(()),
    }
}
