//! Compact request heads for Engine.IO sessions.
//!
//! Why this exists: engineioxide keeps the request head (`Parts`) of every session for the
//! session's whole life, so handlers can read it (`socket.req_parts()`). Hyper parses header
//! values and the URI as *slices of the connection's read buffer* (8–16 KiB), and axum adds
//! routing extensions. Keeping the head as it arrives therefore keeps that whole buffer, plus
//! maps nobody reads, alive per connected socket: the largest single item of idle memory in the
//! heap profile (docs/benchmarks.md, S1). Copying the head into small owned allocations lets the
//! buffer go once the handshake is done.
//!
//! What is kept: the headers some code of ours or of the stack reads ([`KEPT_HEADERS`], exact
//! bytes, sensitivity preserved), the URI, the method and version, and the two extensions the stack
//! reads: hyper's `OnUpgrade` (engineioxide needs it to take over a WebSocket) and axum's
//! `ConnectInfo` (the peer address for the per-IP limit). CORS runs before this layer and still
//! sees the request as it arrived. A handler that starts reading another header of
//! `socket.req_parts()` must add it to [`KEPT_HEADERS`] (a test lists them).

use crate::http::conn::Peer;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap, HeaderName, HeaderValue, Request, Uri};

/// The Engine.IO path socketioxide serves (its default; the SPEC does not change it).
pub const ENGINE_IO_PATH: &str = "/socket.io";

/// The request headers an Engine.IO session keeps, and who reads them:
/// `authorization` (the token, `events::authenticate`), `x-forwarded-for` (the client address behind
/// a trusted proxy), `sec-websocket-key` (engineioxide's WebSocket handshake) and `content-type`
/// (engineioxide's polling POST). The rest (cookies, user agent, languages) would be kept for the
/// life of every socket and never read.
pub static KEPT_HEADERS: [HeaderName; 4] = [
    axum::http::header::AUTHORIZATION,
    HeaderName::from_static("x-forwarded-for"),
    axum::http::header::SEC_WEBSOCKET_KEY,
    axum::http::header::CONTENT_TYPE,
];

/// Rewrites the head of an Engine.IO request into owned, exactly sized parts; other requests pass
/// through untouched. Never fails: a part that cannot be copied is kept as it was.
pub fn compact_head(req: Request<Body>) -> Request<Body> {
    if !req.uri().path().starts_with(ENGINE_IO_PATH) {
        return req;
    }
    let (mut parts, body) = req.into_parts();
    parts.headers = owned_headers(&parts.headers);
    if let Ok(uri) = Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    let mut extensions = Extensions::new();
    if let Some(upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
        extensions.insert(upgrade);
    }
    if let Some(peer) = parts.extensions.remove::<ConnectInfo<Peer>>() {
        extensions.insert(peer);
    }
    parts.extensions = extensions;
    Request::from_parts(parts, body)
}

fn owned_headers(headers: &HeaderMap) -> HeaderMap {
    let kept = || KEPT_HEADERS.iter().flat_map(|name| headers.get_all(name).iter().map(move |v| (name, v)));
    let mut out = HeaderMap::with_capacity(kept().count());
    for (name, value) in kept() {
        // `from_bytes` copies the value out of the connection's read buffer.
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        out.append(name.clone(), copy);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> Request<Body> {
        let (_, peer) = Peer::wrap((), "10.1.2.3:4567".parse().unwrap());
        let mut req = Request::builder()
            .uri(uri)
            .header("authorization", "Bearer abc")
            .header("x-forwarded-for", "192.0.2.1")
            .header("x-forwarded-for", "192.0.2.2")
            .header("cookie", "session=secret")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(42u32);
        req
    }

    #[test]
    fn engine_io_heads_keep_the_read_headers_uri_and_peer_only() {
        let req = compact_head(request("/socket.io/?EIO=4&transport=websocket&token=t"));
        assert_eq!(req.uri().query(), Some("EIO=4&transport=websocket&token=t"));
        assert_eq!(req.headers().get("authorization").unwrap(), "Bearer abc");
        assert_eq!(req.headers().get("sec-websocket-key").unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");
        let forwarded: Vec<_> = req.headers().get_all("x-forwarded-for").iter().collect();
        assert_eq!(forwarded, ["192.0.2.1", "192.0.2.2"]);
        assert!(req.headers().get("cookie").is_none(), "unread headers are dropped");
        assert_eq!(req.headers().len(), 4);
        let peer = req.extensions().get::<ConnectInfo<Peer>>().unwrap();
        assert_eq!(peer.0.addr.to_string(), "10.1.2.3:4567");
        assert!(req.extensions().get::<u32>().is_none());
    }

    #[test]
    fn other_routes_are_untouched() {
        let req = compact_head(request("/api/stats"));
        assert_eq!(req.extensions().get::<u32>(), Some(&42));
        assert_eq!(req.headers().get("cookie").unwrap(), "session=secret");
    }
}
