//! Serving the admin router: HTTP/1.1 connections with a header read
//! timeout, and a shutdown bounded by `server.drain_timeout`.
//!
//! `axum::serve` has neither: one client that sends half a request head
//! kept the admin task, and so the process, alive after SIGTERM for as long
//! as it kept the connection open. The body read timeout is the router's
//! (`super::read_body`), since hyper has no timer for bodies.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Serves `app` on `listener` until `shutdown` completes; then closes the
/// listener and idle connections, gives requests in progress up to
/// `drain_timeout`, and cuts what is left.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    drain_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors: back off instead of spinning.
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let conn = http.serve_connection(
                    TokioIo::new(stream),
                    TowerToHyperService::new(app.clone()),
                );
                let watched = graceful.watch(conn);
                connections.spawn(async move {
                    if let Err(e) = watched.await {
                        tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                    }
                });
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "admin connections still open at the drain timeout; closing them"
        );
    }
    connections.shutdown().await;
}
