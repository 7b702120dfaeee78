//! One QUIC connection: the handshake, its requests (each a task of its
//! own, so a slow one holds up no other), the time it may stay open
//! without one, and its GOAWAY.
//!
//! Like an idle HTTP/2 connection on the TCP listeners, a connection with
//! no request open for `header_read_timeout` is sent a GOAWAY and closed.
//! On shutdown the GOAWAY names the next request it would have taken
//! (RFC 9114 §5.2): every request accepted before it is served, later
//! ones are refused with H3_REQUEST_REJECTED and a client may retry them
//! elsewhere; the connection closes once its requests are done.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::super::server::ServeOptions;
use super::super::{Body, ClientBody, Conn};
use super::exchange;
use crate::shutdown::Signal;

/// H3_NO_ERROR (RFC 9114 §8.1): a graceful close.
pub(super) const H3_NO_ERROR: u32 = 0x100;

/// The h3 connection over quinn.
type H3Conn = h3::server::Connection<h3_quinn::Connection, Bytes>;

/// Serves one incoming connection until it closes, the client goes idle,
/// or shutdown has drained it. `permit`: its place in the connection
/// budget, held until it ends.
pub(super) async fn serve<H, F>(
    incoming: quinn::Incoming,
    handler: Arc<H>,
    options: Arc<ServeOptions>,
    (shutdown, _permit): (Signal, Option<OwnedSemaphorePermit>),
) where
    H: Fn(Request<ClientBody>, Conn) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let peer = incoming.remote_address();
    let quic = match tokio::time::timeout(options.header_read_timeout, incoming).await {
        Ok(Ok(quic)) => quic,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "QUIC handshake not done within header_read_timeout");
            return;
        }
    };
    let h3 = h3::server::builder()
        .max_field_section_size(options.max_header_bytes as u64)
        .build(h3_quinn::Connection::new(quic.clone()))
        .await;
    match h3 {
        Ok(h3) => {
            let conn = Conn {
                peer: quic.remote_address(),
                tls: true,
                // No PROXY protocol on UDP: the QUIC peer is who it is,
                // and a trusted one may name clients as over TCP.
                forwarded_for: true,
            };
            requests(h3, (handler, conn), &options, shutdown).await;
        }
        Err(e) => tracing::debug!(%peer, error = %e, "HTTP/3 connection setup failed"),
    }
    quic.close(H3_NO_ERROR.into(), b"");
}

/// Accepts and serves requests until the client closes, the connection
/// has been idle for `header_read_timeout`, or shutdown (after a GOAWAY)
/// has seen its accepted requests through.
async fn requests<H, F>(
    mut h3: H3Conn,
    (handler, conn): (Arc<H>, Conn),
    options: &ServeOptions,
    shutdown: Signal,
) where
    H: Fn(Request<ClientBody>, Conn) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut running = JoinSet::new();
    let mut draining = false;
    let mut idle_since = Instant::now();
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let idle = running.is_empty() && !draining;
        let idle_until = idle_since + options.header_read_timeout;
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    running.spawn(exchange::serve(resolver, handler.clone(), conn, options.into()));
                }
                Ok(None) => break,
                Err(e) => {
                    if !e.is_h3_no_error() {
                        tracing::debug!(peer = %conn.peer, error = %e, "HTTP/3 connection ended");
                    }
                    break;
                }
            },
            Some(_) = running.join_next(), if !running.is_empty() => {
                if running.is_empty() {
                    if draining {
                        break;
                    }
                    idle_since = Instant::now();
                }
            }
            () = tokio::time::sleep_until(idle_until), if idle => {
                options.metrics.idle_timeout("h3_idle");
                let _ = h3.shutdown(1).await;
                break;
            }
            () = &mut stop, if !draining => {
                draining = true;
                // The GOAWAY names the stream after the last one accepted.
                if let Err(e) = h3.shutdown(1).await {
                    tracing::debug!(peer = %conn.peer, error = %e, "HTTP/3 GOAWAY not sent");
                    break;
                }
                if running.is_empty() {
                    break;
                }
            }
        }
    }
    // Requests still running here belong to a connection that broke or
    // was closed by its client: nothing can reach it any more.
    running.abort_all();
}
