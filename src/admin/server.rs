//! Serving the admin router on the proxy's connection code
//! ([`crate::proxy::server::serve`]).
//!
//! The admin listener needs what the proxy listeners already have: a
//! header read timeout, a shutdown bounded by `server.drain_timeout`, a
//! write that stays blocked failing after `send_timeout`, and the JSON
//! error in place of the empty answer hyper's HTTP/1.1 parser gives to a
//! request it refuses (a 2 MB header got a bare 431 here when the admin
//! API ran its own hyper loop). Serving through the same function keeps
//! those in one place. The router still reads bodies under its own
//! timeout (`super::read_body`), since hyper has no timer for bodies.
//!
//! The peer address is handed to the router as [`ConnectInfo`], for the
//! bad-token throttle (`super::guard`).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::body::BoxError;
use crate::proxy::server::{Drained, ServeOptions};

/// Largest admin request head: a bearer token and a few headers fit many
/// times over; anything larger gets a JSON 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Serves `app` on `listener` until `shutdown` completes; then closes the
/// listener and idle connections, and gives requests in progress up to
/// `drain_timeout`; the connections still open then are left to end with
/// the runtime.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    drain_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let options = ServeOptions {
        header_read_timeout,
        drain_timeout,
        max_header_bytes: MAX_HEADER_BYTES,
        ..ServeOptions::default()
    };
    let service = TowerToHyperService::new(app);
    let handler = move |mut req: http::Request<hyper::body::Incoming>, conn: crate::proxy::Conn| {
        req.extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(conn.peer));
        let answer = hyper::service::Service::call(&service, req);
        async move {
            match answer.await {
                Ok(response) => response
                    .map(|body| body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()),
                Err(never) => match never {},
            }
        }
    };
    if crate::proxy::server::serve(listener, handler, options, shutdown).await == Drained::TimedOut
    {
        tracing::warn!("admin connections still open at the drain timeout; closing them");
    }
}
