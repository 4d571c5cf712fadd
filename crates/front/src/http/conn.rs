//! The node's TCP connections, each closable from the outside.
//!
//! socketioxide cannot disconnect a socket whose outgoing buffer is full (its disconnect packet
//! needs a place in that buffer), and a client that stops reading keeps it full: a slow consumer
//! would then hold its memory until the heartbeat gives up on it. Every accepted stream is wrapped
//! in a [`Closable`], and its [`Peer`] (the peer address and the stream's switch) travels with each
//! request as axum's `ConnectInfo`, so a socket's handshake request can close its own connection:
//! [`Peer::kill`] makes the stream's reads and writes fail at once, the transport closes and the
//! socket's disconnect handler runs.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Default)]
struct Switch {
    killed: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

/// Who is at the other end of a connection, and the means to close it.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    switch: Arc<Switch>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Peer({})", self.addr)
    }
}

impl Peer {
    /// Wraps an accepted stream.
    pub fn wrap<S>(inner: S, addr: SocketAddr) -> (Closable<S>, Peer) {
        let switch = Arc::new(Switch::default());
        (Closable { inner, switch: switch.clone() }, Peer { addr, switch })
    }

    /// Closes the connection: its pending and later reads and writes fail.
    pub fn kill(&self) {
        self.switch.killed.store(true, Ordering::Release);
        self.switch.reader.wake();
        self.switch.writer.wake();
    }
}

/// A stream that fails with `ConnectionAborted` once killed.
pub struct Closable<S> {
    inner: S,
    switch: Arc<Switch>,
}

impl<S> Closable<S> {
    /// The stream inside (its socket options, say).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "closed by the gateway (slow consumer)")
}

impl<S: AsyncRead + Unpin> AsyncRead for Closable<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.switch.reader.register(cx.waker());
        if self.switch.killed.load(Ordering::Acquire) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Closable<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.switch.writer.register(cx.waker());
        if self.switch.killed.load(Ordering::Acquire) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.switch.writer.register(cx.waker());
        if self.switch.killed.load(Ordering::Acquire) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.switch.writer.register(cx.waker());
        if self.switch.killed.load(Ordering::Acquire) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_killed_stream_fails_its_pending_read_and_writes() {
        let (a, mut b) = tokio::io::duplex(64);
        let (mut s, peer) = Peer::wrap(a, "127.0.0.1:4000".parse().unwrap());
        b.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            let r = s.read(&mut buf).await;
            (r, s)
        });
        tokio::task::yield_now().await;
        peer.kill();
        let (r, mut s) = reader.await.unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionAborted, "the pending read is woken");
        assert_eq!(s.write(b"x").await.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
    }
}
