//! Header rules of the proxy: hop-by-hop removal, `X-Forwarded-*`, and
//! the rate-limit headers.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::limiter::Verdict;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// plus the proxy ones some clients still send.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");

/// Removes hop-by-hop headers, including any named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none: one pass over the names present (standard
    // names compare as tags) instead of nine hashed removals.
    if !h
        .keys()
        .any(|name| HOP_BY_HOP.contains(name) || name == PROXY_CONNECTION)
    {
        return;
    }
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in &named {
            h.remove(name);
        }
    }
    for name in HOP_BY_HOP.iter().chain([&PROXY_CONNECTION]) {
        h.remove(name);
    }
}

/// `X-Forwarded-For: <client>` policy: a trusted peer's chain is kept and
/// extended with the peer; an untrusted peer's chain is replaced, so a
/// backend never sees addresses a client made up.
pub fn set_forwarded(
    h: &mut HeaderMap,
    peer: std::net::IpAddr,
    peer_trusted: bool,
    host: Option<HeaderValue>,
) {
    let chain = if peer_trusted {
        let prior: Vec<&str> = h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if prior.is_empty() {
            peer.to_string()
        } else {
            format!("{}, {peer}", prior.join(", "))
        }
    } else {
        peer.to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&chain) {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match host {
        Some(host) => {
            h.insert(X_FORWARDED_HOST, host);
        }
        None => {
            h.remove(X_FORWARDED_HOST);
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `Retry-After` seconds for a denied request: whole seconds, rounded up,
/// so never before the token is there. `None` if no token will ever come.
pub fn retry_after_secs(d: &Verdict) -> Option<u64> {
    d.reset_after.map(|t| ceil_secs(t).max(1))
}

/// `RateLimit-Policy` / `RateLimit` (IETF httpapi draft: `q` capacity,
/// `w` seconds to fill from empty, `r` whole tokens left, `t` seconds to
/// the next token) and `X-RateLimit-Limit` / `X-RateLimit-Remaining`.
pub fn rate_limit(h: &mut HeaderMap, d: &Verdict) {
    use std::fmt::Write;
    // The four values are written into one buffer and handed out as slices
    // of it: two allocations per response instead of eight.
    let mut text = String::with_capacity(96);
    let mut ends = [0usize; 4];
    let _ = write!(text, "\"tollgate\";q={}", d.limit);
    if let Some(w) = d.fill_time {
        let _ = write!(text, ";w={}", ceil_secs(w));
    }
    ends[0] = text.len();
    let _ = write!(text, "\"tollgate\";r={}", d.remaining);
    if let Some(t) = d.reset_after {
        let _ = write!(text, ";t={}", ceil_secs(t));
    }
    ends[1] = text.len();
    let _ = write!(text, "{}", d.limit);
    ends[2] = text.len();
    let _ = write!(text, "{}", d.remaining);
    ends[3] = text.len();
    let text = Bytes::from(text);
    let mut start = 0;
    for (name, end) in [
        RATELIMIT_POLICY,
        RATELIMIT,
        X_RATELIMIT_LIMIT,
        X_RATELIMIT_REMAINING,
    ]
    .into_iter()
    .zip(ends)
    {
        if let Ok(v) = HeaderValue::from_maybe_shared(text.slice(start..end)) {
            h.insert(name, v);
        }
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_for_is_extended_only_for_trusted_peers() {
        let peer: std::net::IpAddr = "10.0.0.9".parse().expect("ip");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        set_forwarded(
            &mut h,
            peer,
            true,
            Some(HeaderValue::from_static("example.com")),
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        set_forwarded(&mut h, peer, false, None);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
    }
}
