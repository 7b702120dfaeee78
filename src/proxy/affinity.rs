//! Which backend a request's own data asks for: its sticky-session cookie
//! (any strategy) and, under `strategy: hash`, the hash of its `hash_key`.
//! Read off the client's request before the route edits its headers, so a
//! route that removes `Cookie` from what the backend sees still keeps its
//! clients pinned.

use std::net::IpAddr;
use std::sync::Arc;

use http::{header, Response};

use super::{Body, Conn, Live};
use crate::balancer::{key_hash, Backend, InFlight, Refused};
use crate::routing::pools::PoolUse;
use crate::routing::traffic::HashKey;

/// A request's affinity.
#[derive(Debug, Default)]
pub(super) struct Affinity {
    /// The hash of its `hash_key`, if the pool hashes and the request has
    /// the key.
    key: Option<u64>,
    /// The backend its valid sticky cookie names, if that one takes
    /// requests.
    pinned: Option<Arc<Backend>>,
    /// The client is on TLS (the cookie is then `Secure`).
    tls: bool,
}

impl Affinity {
    /// Reads the request's affinity for `pool`.
    pub(super) fn read(
        parts: &http::request::Parts,
        conn: Conn,
        live: &Live,
        pool: &PoolUse,
    ) -> Self {
        let traffic = &pool.traffic;
        let pinned = traffic.sticky.as_ref().and_then(|s| {
            let value = s.read(&parts.headers)?;
            s.find(&pool.pool, value)
        });
        let key = match &traffic.hash_key {
            Some(k) if pinned.is_none() => hash_of(k, parts, conn, live),
            _ => None,
        };
        Self {
            key,
            pinned,
            tls: conn.tls,
        }
    }

    /// A slot for the request: on the backend its sticky cookie names,
    /// the key's, or the strategy's; waiting in the pool's queue when every
    /// backend is at `max_connections`.
    pub(super) async fn admit(&self, pool: &PoolUse) -> Result<InFlight, Refused> {
        pool.pool.admit_for(self.key, self.pinned.as_ref()).await
    }

    /// A slot for a retry, on none of `tried`, without waiting.
    pub(super) fn admit_again(&self, pool: &PoolUse, tried: &[Arc<Backend>]) -> Option<InFlight> {
        pool.pool.admit_excluding(tried, self.key)
    }

    /// Sets the sticky cookie on `response` when `backend` answered and the
    /// request's cookie did not already name it.
    pub(super) fn stamp(
        &self,
        pool: &PoolUse,
        response: &mut Response<Body>,
        backend: &Arc<Backend>,
    ) {
        let Some(sticky) = &pool.traffic.sticky else {
            return;
        };
        if self
            .pinned
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, backend))
        {
            return;
        }
        if let Some(v) = sticky.set_cookie(backend, self.tls) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
}

/// The hash of the request's `key`, if it has one.
fn hash_of(key: &HashKey, parts: &http::request::Parts, conn: Conn, live: &Live) -> Option<u64> {
    let headers = &parts.headers;
    let ip = || live.identifier.client_ip(headers, conn.peer.ip());
    match key {
        HashKey::Client => match live.identifier.api_key(headers) {
            Ok(Some(k)) => Some(key_hash(k.as_str().as_bytes())),
            _ => Some(ip_hash(ip())),
        },
        HashKey::Ip => Some(ip_hash(ip())),
        HashKey::Header(name) => headers.get(name).map(|v| key_hash(v.as_bytes())),
        HashKey::Cookie(name) => {
            crate::balancer::cookie_value(headers, name).map(|v| key_hash(v.as_bytes()))
        }
        HashKey::Path => Some(key_hash(parts.uri.path().as_bytes())),
    }
}

fn ip_hash(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => key_hash(&v4.octets()),
        IpAddr::V6(v6) => key_hash(&v6.octets()),
    }
}
