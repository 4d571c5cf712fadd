//! The TLS listener (SPEC §11): with `TLS_CERT_FILE` and `TLS_KEY_FILE`, the same routes (HTTP,
//! Socket.IO, `/ws`) are also served over rustls on `TLS_PORT`. SIGHUP reloads the pair: new
//! handshakes use the new certificate, open connections keep theirs; a pair that does not load keeps
//! the old one and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::http::conn::{Closable, Peer};

/// Handshakes that may be in progress at once; past it new connections wait in the TCP backlog.
const HANDSHAKES: usize = 1024;
/// A client that does not finish its handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate pair, reloadable.
pub struct Certs {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl Certs {
    /// Loads the pair; an error names the variable of the file that failed.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<Self>> {
        let config = server_config(cert, key)?;
        Ok(Arc::new(Certs { cert: cert.into(), key: key.into(), current: RwLock::new(config) }))
    }

    /// Loads the files again; on failure the old pair stays and the reason is logged.
    pub fn reload(&self) {
        match server_config(&self.cert, &self.key) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::warn!("TLS reload failed, keeping the current certificate: {e:#}"),
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("TLS_CERT_FILE {}: {e}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("TLS_CERT_FILE {}: no certificate in the file", cert.display());
    }
    let key_path = key;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("TLS_KEY_FILE {}: {e}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS: protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            anyhow::anyhow!(
                "TLS_CERT_FILE {} with TLS_KEY_FILE {}: the pair does not load: {e}",
                cert.display(),
                key_path.display()
            )
        })?;
    // HTTP/1.1 only: hyper serves HTTP/2 over TLS only with ALPN, and WebSocket upgrades need 1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections and hands axum the ones whose handshake succeeded. Handshakes run on
/// their own tasks so that a slow client cannot hold up the others.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<Closable<tokio::net::TcpStream>>, Peer)>,
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, certs: Arc<Certs>) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let permits = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let (stream, addr) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!("TLS accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (stream, peer) = Peer::wrap(stream, addr);
                let acceptor = certs.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, addr, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<Closable<tokio::net::TcpStream>>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task is gone (shutdown): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer::wrap((), self.addr).1)
    }
}

/// Writes a self-signed certificate and its key (`cert.pem`, `key.pem`) for `hosts` into `dir`:
/// for tests and local use (`realtime-gateway self-signed`).
pub fn self_signed(dir: &Path, hosts: Vec<String>) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = rcgen::generate_simple_self_signed(hosts).context("generating the certificate")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).with_context(|| format!("writing {}", cert_path.display()))?;
    std::fs::write(&key_path, cert.key_pair.serialize_pem())
        .with_context(|| format!("writing {}", key_path.display()))?;
    Ok((cert_path, key_path))
}
