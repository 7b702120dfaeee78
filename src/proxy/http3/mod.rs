//! HTTP/3 at the front door (`server.http3`): a QUIC endpoint (quinn) on
//! UDP, HTTP/3 framing (h3) on top, and every request handed to the same
//! handler the TCP listeners call, as a [`Request<ClientBody>`].
//!
//! Roles: this file owns the endpoint (the UDP socket, the QUIC and TLS
//! settings, accepting connections, the drain); [`connection`] one QUIC
//! connection (its requests, its idle time, its GOAWAY); [`exchange`] one
//! request (its head, its streamed body each way, its trailers).
//!
//! The endpoint runs on a thread of its own with a single-threaded
//! runtime, like each proxy thread, and with its own copy of the handler
//! (so its own backend connections). One endpoint rather than one per
//! core: QUIC routes packets by connection ID, which `SO_REUSEPORT`
//! sockets do not, so a client whose address changes (NAT rebinding,
//! migration) could land on a socket that does not know its connection.
//!
//! The TLS side is the TLS listener's: the same certificate set (a reload
//! reaches both), TLS 1.3 only (QUIC requires it), ALPN `h3`. The client's
//! identity is the source address of its QUIC connection: there is no
//! PROXY protocol on UDP, and `X-Forwarded-For` is believed only from
//! `rate_limit.trusted_proxies`, as on the other listeners.
//!
//! Shutdown: new connections are refused at once; each open connection
//! gets a GOAWAY naming the last request it will serve, the requests it
//! accepted run until `drain_timeout`, then the endpoint closes.

mod connection;
mod exchange;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::task::JoinSet;

use super::server::{ConnectionBudget, Drained, ServeOptions};
use super::{Body, ClientBody, Conn};
use crate::shutdown::Signal;
use crate::telemetry::Throttle;
use crate::tls::server::TlsTerminator;

/// QUIC's idle timeout: a peer that sends nothing for this long (not even
/// an acknowledgement of our keep-alive PINGs) is gone. Shorter than the
/// time a connection may stay open without a request, which the
/// connection itself bounds (`header_read_timeout`, see [`connection`]).
const QUIC_IDLE_TIMEOUT_MS: u32 = 30_000;

/// How often the server PINGs an open connection, so that a request
/// waiting on a slow backend (no packets either way) does not look idle
/// to QUIC.
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Longest the endpoint waits, after closing, for the close to reach the
/// peers.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Connections refused because the connection budget was spent, logged
/// once per burst.
static BUDGET_SPENT: Throttle = Throttle::new();

/// Why the HTTP/3 listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Http3Error {
    /// The TLS settings cannot be used for QUIC.
    #[error("TLS settings for QUIC: {0}")]
    Tls(String),
    /// The UDP socket cannot be bound or set up.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A bound HTTP/3 listener, not serving yet.
#[derive(Debug)]
pub struct Http3Listener {
    socket: std::net::UdpSocket,
    config: quinn::ServerConfig,
    addr: SocketAddr,
}

impl Http3Listener {
    /// Binds `addr` (UDP) and sets up QUIC with `tls`'s certificates;
    /// `max_streams`: requests one connection may have open at once
    /// (`server.http2_max_concurrent_streams`, the same bound).
    pub fn bind(
        addr: SocketAddr,
        tls: &TlsTerminator,
        max_streams: u32,
    ) -> Result<Self, Http3Error> {
        let crypto = tls
            .quic_config()
            .map_err(|e| Http3Error::Tls(e.to_string()))?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|e| Http3Error::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(max_streams.into())
            .keep_alive_interval(Some(QUIC_KEEP_ALIVE))
            .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
                QUIC_IDLE_TIMEOUT_MS,
            ))));
        config.transport_config(Arc::new(transport));
        let bind_error = |source| Http3Error::Bind { addr, source };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
        let addr = socket.local_addr().map_err(bind_error)?;
        Ok(Self {
            socket,
            config,
            addr,
        })
    }

    /// The bound address (the port picked, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Serves `listener` on a thread of its own with the handler
/// `make_handler` returns there, until `shutdown`; the handle reports
/// how the drain ended.
pub fn serve_thread<M, H, F>(
    listener: Http3Listener,
    make_handler: M,
    options: ServeOptions,
    shutdown: Signal,
) -> std::io::Result<std::thread::JoinHandle<Drained>>
where
    M: FnOnce() -> H + Send + 'static,
    H: Fn(Request<ClientBody>, Conn) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    std::thread::Builder::new()
        .name("tollgate-h3".into())
        .spawn(move || {
            crate::proxy::server::on_proxy_runtime(serve(
                listener,
                make_handler(),
                options,
                shutdown,
            ))
        })
}

/// Accepts QUIC connections until `shutdown`, then drains them.
pub async fn serve<H, F>(
    listener: Http3Listener,
    handler: H,
    options: ServeOptions,
    shutdown: Signal,
) -> Drained
where
    H: Fn(Request<ClientBody>, Conn) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let endpoint = match quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(listener.config),
        listener.socket,
        Arc::new(quinn::TokioRuntime),
    ) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the HTTP/3 endpoint");
            return Drained::TimedOut;
        }
    };
    let handler = Arc::new(handler);
    let options = Arc::new(options);
    let mut connections = JoinSet::new();
    let stop = shutdown.clone().wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Some(permit) = admit(options.budget.as_ref()) else {
                    incoming.refuse();
                    continue;
                };
                connections.spawn(connection::serve(
                    incoming,
                    handler.clone(),
                    options.clone(),
                    (shutdown.clone(), permit),
                ));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // New connections are refused from here on; the open ones send their
    // GOAWAY on the same signal and finish what they accepted.
    endpoint.set_server_config(None);
    let drained = tokio::time::timeout(options.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    let drained = match drained {
        Ok(()) => Drained::Clean,
        Err(_) => {
            connections.abort_all();
            Drained::TimedOut
        }
    };
    endpoint.close(connection::H3_NO_ERROR.into(), b"shutting down");
    let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
    drained
}

/// A place in the connection budget (shared with the TCP listeners), or
/// `None` if it is spent: the connection is refused rather than queued,
/// as UDP has no listen queue to leave it in.
fn admit(budget: Option<&ConnectionBudget>) -> Option<Option<tokio::sync::OwnedSemaphorePermit>> {
    let Some(budget) = budget else {
        return Some(None);
    };
    match budget.try_take() {
        Some(permit) => Some(Some(permit)),
        None => {
            BUDGET_SPENT.note(|times| {
                tracing::warn!(
                    limit = budget.limit(),
                    times,
                    "server.max_connections reached: new QUIC connections are refused"
                );
            });
            None
        }
    }
}
