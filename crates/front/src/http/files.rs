//! `GET /api/files/{id}` (SPEC §13): a shared file's bytes, for who may see it, streamed from storage
//! with `Range` support. Any node serves any file (the storage is shared in a cluster).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;

use super::api::HttpError;
use super::Api;
use rtg_storage::files::FileMeta;

fn error(status: StatusCode, msg: &str) -> Response {
    HttpError(status, msg.to_string()).into_response()
}

/// May this user see the file? Its sender, its addressee, an admin, or (in a room) whoever may read
/// the room: the members of a created room, any user for an open one.
async fn may_see(api: &Api, user: &rtg_model::user::User, meta: &FileMeta) -> Result<bool, HttpError> {
    if user.is_admin() || meta.from_user_id == user.user_id || meta.to_user_id.as_deref() == Some(&user.user_id) {
        return Ok(true);
    }
    let Some(room_id) = &meta.room_id else { return Ok(false) };
    match api.state.store.room(room_id).await {
        Ok(Some(room)) => Ok(room.members.contains(&user.user_id)),
        Ok(None) => Ok(!(room_id.starts_with("dm:") || room_id.starts_with("grp:"))),
        Err(e) => Err(HttpError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

/// A `Range` header that cannot be served: 416.
#[derive(Debug, PartialEq, Eq)]
pub struct Unsatisfiable;

/// One `bytes=` range of a file of `size` bytes: `Ok(None)` for none or a form we do not serve (the
/// whole file then), `Err` when unsatisfiable.
pub fn parse_range(h: &str, size: u64) -> Result<Option<std::ops::Range<u64>>, Unsatisfiable> {
    let Some(spec) = h.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.is_empty(), b.is_empty()) {
        (true, true) => return Err(Unsatisfiable),
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| Unsatisfiable)?;
            if n == 0 {
                return Err(Unsatisfiable);
            }
            size.saturating_sub(n)..size
        }
        (false, _) => {
            let start: u64 = a.parse().map_err(|_| Unsatisfiable)?;
            let end = if b.is_empty() {
                size
            } else {
                b.parse::<u64>().map_err(|_| Unsatisfiable)?.saturating_add(1).min(size)
            };
            if start >= size || end <= start {
                return Err(Unsatisfiable);
            }
            start..end
        }
    };
    Ok(Some(range))
}

/// `attachment; filename="..."; filename*=UTF-8''...`
fn disposition(name: &str) -> HeaderValue {
    let ascii: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

pub async fn download(State(api): State<Api>, Path(id): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let Some(token) = rtg_app::auth::find_token(None, uri.query(), authorization) else {
        return error(StatusCode::UNAUTHORIZED, "Authentication required");
    };
    let user = match api.state.auth.verify(&token) {
        Ok(v) => v.user,
        Err(e) => return error(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    let meta = match api.state.files.meta(&id).await {
        Ok(Some(m)) => m,
        Ok(None) => return error(StatusCode::NOT_FOUND, "File not found"),
        Err(e) => {
            tracing::warn!(file = id, "file storage: {e}");
            return error(StatusCode::SERVICE_UNAVAILABLE, "File storage unavailable");
        }
    };
    match may_see(&api, &user, &meta).await {
        Ok(true) => {}
        Ok(false) => return error(StatusCode::FORBIDDEN, "Not allowed to see this file"),
        Err(e) => return e.into_response(),
    }
    let range = match headers.get(header::RANGE).and_then(|h| h.to_str().ok()).map(|h| parse_range(h, meta.size)) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(r))) => Some(r),
        Some(Err(Unsatisfiable)) => {
            let mut r = error(StatusCode::RANGE_NOT_SATISFIABLE, "Range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", meta.size)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let got = match api.state.files.read(&meta.id, range.clone()).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return error(StatusCode::NOT_FOUND, "File not found"),
        Err(e) => {
            tracing::warn!(file = meta.id, "file storage: {e}");
            return error(StatusCode::SERVICE_UNAVAILABLE, "File storage unavailable");
        }
    };
    let stream = got.into_stream().map_err(std::io::Error::other);
    let (status, length) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.end - r.start),
        None => (StatusCode::OK, meta.size),
    };
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&meta.mime_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::CONTENT_DISPOSITION, disposition(&meta.name));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=0"));
    if let Some(r) = &range {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{}", r.start, r.end - 1, meta.size)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Ok(Some(0..100)));
        assert_eq!(parse_range("bytes=900-", 1000), Ok(Some(900..1000)));
        assert_eq!(parse_range("bytes=-100", 1000), Ok(Some(900..1000)));
        assert_eq!(parse_range("bytes=0-5000", 1000), Ok(Some(0..1000)));
        assert_eq!(parse_range("bytes=1000-", 1000), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=5-2", 1000), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=0-1,5-9", 1000), Ok(None));
        assert_eq!(parse_range("items=0-1", 1000), Ok(None));
        assert_eq!(parse_range("bytes=x-1", 1000), Err(Unsatisfiable));
    }
}
