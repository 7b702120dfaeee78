//! Header rules of the proxy: hop-by-hop removal, `X-Forwarded-*`, and
//! the rate-limit headers.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::limiter::Decision;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// plus `Proxy-Connection`, which some clients still send. Not `Trailer`:
/// it announces the message's trailer fields end to end (RFC 9110
/// §6.6.2), and an HTTP/1.1 hop sends trailers only for fields announced
/// so (RFC 2616's list named a "Trailers" that no message carries).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");

/// Removes hop-by-hop headers, including any named in `Connection`.
///
/// One pass over the names present notes which hop-by-hop names occur;
/// only those are removed, not all nine by hashed lookups. Browsers send
/// `Connection: keep-alive` on every HTTP/1.1 request, so the removal
/// path is a common one.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let mut present = [false; HOP_BY_HOP.len()];
    for name in h.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    // `Connection` is HOP_BY_HOP[0]; the values it carries name further
    // headers of this connection only.
    if let http::header::Entry::Occupied(connection) = h.entry(header::CONNECTION) {
        let values: Vec<HeaderValue> = connection.remove_entry_mult().1.collect();
        for value in values {
            let Ok(value) = value.to_str() else { continue };
            for name in value.split(',').map(str::trim) {
                // `close` and `keep-alive` are the usual tokens; `close`
                // names no header and `keep-alive` is in the list anyway.
                if !name.is_empty() && !name.eq_ignore_ascii_case("close") {
                    h.remove(name);
                }
            }
        }
    }
    for (hop, present) in HOP_BY_HOP.iter().zip(present).skip(1) {
        if present {
            h.remove(hop);
        }
    }
}

/// Where `name` is in [`HOP_BY_HOP`], if it is. One match on the name's
/// text (its length first) instead of comparing it with each of the eight:
/// that scan took ~680 instructions per proxied request (callgrind), run
/// on the request's and the response's headers.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-authenticate" => Some(2),
        "proxy-authorization" => Some(3),
        "te" => Some(4),
        "transfer-encoding" => Some(5),
        "upgrade" => Some(6),
        "proxy-connection" => Some(7),
        _ => None,
    }
}

/// [`strip_hop_by_hop`] for a request on its way to a backend, keeping
/// `TE: trailers` (as `trailers` alone) when the client sent it: gRPC
/// servers require it, and an HTTP/1.1 backend sends trailers only to a
/// request that says it accepts them. Every other `TE` coding is this
/// hop's business and goes.
pub fn strip_request_hop_by_hop(h: &mut HeaderMap) {
    let trailers = h.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|c| {
                c.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            })
        })
    });
    strip_hop_by_hop(h);
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// `X-Forwarded-For: <client>` policy: a trusted peer's chain is kept and
/// extended with the peer; an untrusted peer's chain is replaced, so a
/// backend never sees addresses a client made up. `X-Forwarded-Proto` is
/// what the client spoke to tollgate (`https` on the TLS listener).
pub fn set_forwarded(
    h: &mut HeaderMap,
    peer: std::net::IpAddr,
    peer_trusted: bool,
    tls: bool,
    host: Option<HeaderValue>,
) {
    let mut chain = String::new();
    if peer_trusted {
        for prior in h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            chain.push_str(prior);
            chain.push_str(", ");
        }
    }
    push_ip(&mut chain, peer);
    if let Ok(v) = HeaderValue::from_str(&chain) {
        h.insert(X_FORWARDED_FOR, v);
    }
    let proto = if tls { "https" } else { "http" };
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(host) => {
            h.insert(X_FORWARDED_HOST, host);
        }
        None => {
            h.remove(X_FORWARDED_HOST);
        }
    }
}

fn push_num(text: &mut String, n: impl itoa::Integer) {
    text.push_str(itoa::Buffer::new().format(n));
}

/// Writes an address as `Display` does; IPv4 (the common case) without
/// `core::fmt`, which cost ~1,300 instructions per request here.
fn push_ip(text: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                push_num(text, octet);
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(text, "{v6}");
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `Retry-After` seconds for a denied request: whole seconds, rounded up,
/// so never before the token is there. `None` if no token will ever come.
pub fn retry_after_secs(d: &Decision) -> Option<u64> {
    d.reset_after().map(|t| ceil_secs(t).max(1))
}

/// The headers of a 429: the refusing bucket's rate-limit headers and
/// `Retry-After`.
pub fn rate_limited(h: &mut HeaderMap, d: &Decision) {
    rate_limit(h, d);
    if let Some(secs) = retry_after_secs(d) {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
}

/// `RateLimit-Policy` / `RateLimit` (IETF httpapi draft: `q` capacity,
/// `w` seconds to fill from empty, `r` whole tokens left, `t` seconds to
/// the next token) and `X-RateLimit-Limit` / `X-RateLimit-Remaining`.
pub fn rate_limit(h: &mut HeaderMap, d: &Decision) {
    // The four values are written into one buffer and handed out as slices
    // of it: two allocations per response instead of eight. Numbers go
    // through `itoa`: `core::fmt` here cost ~1,700 instructions per
    // response (callgrind).
    let mut text = String::with_capacity(96);
    let mut ends = [0usize; 4];
    text.push_str("\"tollgate\";q=");
    push_num(&mut text, d.limit());
    if let Some(w) = d.fill_time() {
        text.push_str(";w=");
        push_num(&mut text, ceil_secs(w));
    }
    ends[0] = text.len();
    text.push_str("\"tollgate\";r=");
    push_num(&mut text, d.remaining());
    if let Some(t) = d.reset_after() {
        text.push_str(";t=");
        push_num(&mut text, ceil_secs(t));
    }
    ends[1] = text.len();
    push_num(&mut text, d.limit());
    ends[2] = text.len();
    push_num(&mut text, d.remaining());
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

/// The rate-limit headers when rules applied (`rate_limit.rules`):
/// `RateLimit-Policy` lists every policy under its own name, `RateLimit`
/// and `X-RateLimit-*` describe the one bucket the admission picked (the
/// one that refused, else the one with the fewest tokens left), and
/// `Retry-After` (set by [`rate_limited`] on a 429) comes from it too.
pub(crate) fn rate_limit_policies(h: &mut HeaderMap, p: &super::admission::Policies) {
    let mut policy = String::with_capacity(40 * p.lines.len());
    for (i, line) in p.lines.iter().enumerate() {
        if i > 0 {
            policy.push_str(", ");
        }
        policy.push('"');
        policy.push_str(&line.name);
        policy.push_str("\";q=");
        push_num(&mut policy, line.capacity);
        if let Some(w) = line.fill_secs {
            policy.push_str(";w=");
            push_num(&mut policy, w);
        }
    }
    let d = &p.shown;
    let mut now = String::with_capacity(48);
    now.push('"');
    now.push_str(&p.shown_name);
    now.push_str("\";r=");
    push_num(&mut now, d.remaining());
    if let Some(t) = d.reset_after() {
        now.push_str(";t=");
        push_num(&mut now, ceil_secs(t));
    }
    let values = [
        (RATELIMIT_POLICY, policy),
        (RATELIMIT, now),
        (
            X_RATELIMIT_LIMIT,
            itoa::Buffer::new().format(d.limit()).to_owned(),
        ),
        (
            X_RATELIMIT_REMAINING,
            itoa::Buffer::new().format(d.remaining()).to_owned(),
        ),
    ];
    for (name, text) in values {
        if let Ok(v) = HeaderValue::from_str(&text) {
            h.insert(name, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn te_trailers_is_kept_on_requests_and_nothing_else_of_te() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("TE"));
        h.insert(header::TE, HeaderValue::from_static("gzip;q=0.5, Trailers"));
        strip_request_hop_by_hop(&mut h);
        assert_eq!(
            h.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        assert_eq!(h.len(), 1);

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_request_hop_by_hop(&mut h);
        assert!(h.is_empty());

        // Responses: TE means nothing there and goes as before.
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn every_hop_by_hop_name_is_found_at_its_place_and_no_other_name_is() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for other in [
            header::HOST,
            header::TRAILER,
            header::CONTENT_LENGTH,
            HeaderName::from_static("x-connection"),
            HeaderName::from_static("keep-alive2"),
        ] {
            assert_eq!(hop_by_hop_index(&other), None, "{other}");
        }
    }

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
    fn every_connection_header_and_what_it_names_go() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive , X-Secret,,"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::HOST));

        // Nothing hop-by-hop: nothing touched.
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
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
            false,
            Some(HeaderValue::from_static("example.com")),
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        set_forwarded(&mut h, peer, false, true, None);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https", "on the TLS listener");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.20.3.4",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("ip");
            let mut text = String::new();
            push_ip(&mut text, ip);
            assert_eq!(text, ip.to_string());
        }
    }

    #[test]
    fn rate_limit_values() {
        use crate::limiter::{ClientKey, FakeClock, Limits, Registry, RegistryConfig};
        // Capacity 100 at 10.75/s fills in 9.3 s; 93 taken leaves 7, and
        // the next token comes at the next 100 ms tick.
        let registry = Registry::with_clock(
            RegistryConfig {
                default_limits: Limits::new(100, 100.0 / 9.3).expect("valid"),
                max_clients: std::num::NonZeroUsize::MIN,
                idle_timeout: Duration::from_secs(600),
                refill_interval: Duration::from_millis(100),
            },
            std::sync::Arc::new(FakeClock::new()),
        );
        let key = ClientKey::api("k").expect("key");
        let mut d = registry.check(&key).expect("room");
        for _ in 0..92 {
            d = registry.check(&key).expect("room");
        }
        assert!(d.allowed());
        assert_eq!(d.remaining(), 7);
        assert_eq!(d.fill_time().map(ceil_secs), Some(10));
        assert_eq!(d.reset_after().map(ceil_secs), Some(1));
        let mut h = HeaderMap::new();
        rate_limit(&mut h, &d);
        assert_eq!(h["ratelimit-policy"], "\"tollgate\";q=100;w=10");
        assert_eq!(h["ratelimit"], "\"tollgate\";r=7;t=1");
        assert_eq!(h["x-ratelimit-limit"], "100");
        assert_eq!(h["x-ratelimit-remaining"], "7");
    }
}
