//! An HTTPS backend for tests: rustls + hyper HTTP/1.1 on 127.0.0.1:0,
//! answering `200 tls:<path>:<n>` (n = request body bytes read) and
//! `GET /health` with `200 ok`.
//!
//! It records what the balancer does on the wire: the SNI of every TLS
//! connection, how many connections carried a proxied (non-health)
//! request, how many health checks arrived. Its certificate can be swapped
//! while it runs (a rotation to a certificate the balancer does not
//! trust), and it can be told to stall: accept TCP and never answer the
//! TLS handshake.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use super::tls::CertFiles;

/// What the backend saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// SNI of each completed TLS handshake (`None`: no SNI sent).
    pub sni: Mutex<Vec<Option<String>>>,
    /// TCP connections accepted.
    pub accepted: AtomicUsize,
    /// TLS connections that carried at least one non-health request.
    pub proxied_connections: AtomicUsize,
    /// `GET /health` requests answered.
    pub health_checks: AtomicUsize,
}

/// A running HTTPS test backend.
pub struct TlsBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub seen: Arc<Seen>,
    certificate: Arc<Swappable>,
    stall: Arc<AtomicBool>,
}

impl TlsBackend {
    /// Starts one presenting `cert`.
    pub async fn start(cert: &CertFiles) -> Self {
        let certificate = Arc::new(Swappable(Mutex::new(certified_key(cert))));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
        // No session resumption: a resumed session skips the certificate,
        // and a swapped certificate must be seen on the next connection,
        // as after a real backend's restart.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let stall = Arc::new(AtomicBool::new(false));
        let (seen_task, stall_task) = (seen.clone(), stall.clone());
        tokio::spawn(async move {
            // Stalled connections are held here so they stay open.
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                seen_task.accepted.fetch_add(1, Ordering::SeqCst);
                if stall_task.load(Ordering::SeqCst) {
                    held.push(tcp);
                    continue;
                }
                tokio::spawn(serve(acceptor.clone(), tcp, seen_task.clone()));
            }
        });
        Self {
            addr,
            seen,
            certificate,
            stall,
        }
    }

    /// Presents `cert` on connections from now on.
    pub fn present(&self, cert: &CertFiles) {
        *self.certificate.0.lock().expect("lock") = certified_key(cert);
    }

    /// From now on, accepts connections and never answers on them.
    pub fn stall(&self) {
        self.stall.store(true, Ordering::SeqCst);
    }

    /// Every SNI seen so far.
    pub fn sni(&self) -> Vec<Option<String>> {
        self.seen.sni.lock().expect("lock").clone()
    }

    /// Connections that carried a proxied request.
    pub fn proxied_connections(&self) -> usize {
        self.seen.proxied_connections.load(Ordering::SeqCst)
    }

    /// Health checks answered.
    pub fn health_checks(&self) -> usize {
        self.seen.health_checks.load(Ordering::SeqCst)
    }
}

async fn serve(acceptor: tokio_rustls::TlsAcceptor, tcp: tokio::net::TcpStream, seen: Arc<Seen>) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let sni = tls.get_ref().1.server_name().map(str::to_owned);
    seen.sni.lock().expect("lock").push(sni);
    let counted = Arc::new(AtomicBool::new(false));
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (seen, counted) = (seen.clone(), counted.clone());
        async move {
            let path = req.uri().path().to_owned();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = if path == "/health" {
                seen.health_checks.fetch_add(1, Ordering::SeqCst);
                "ok".to_owned()
            } else {
                if !counted.swap(true, Ordering::SeqCst) {
                    seen.proxied_connections.fetch_add(1, Ordering::SeqCst);
                }
                format!("tls:{path}:{}", body.len())
            };
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(text))))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

/// The certificate every handshake gets, replaceable while running.
#[derive(Debug)]
struct Swappable(Mutex<Arc<CertifiedKey>>);

impl ResolvesServerCert for Swappable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.lock().expect("lock").clone())
    }
}

fn certified_key(files: &CertFiles) -> Arc<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .expect("open cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("cert pem");
    let key = PrivateKeyDer::from_pem_file(&files.key).expect("key pem");
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).expect("signing key");
    Arc::new(CertifiedKey::new(chain, signing))
}
