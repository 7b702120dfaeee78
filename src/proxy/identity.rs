//! Who is this request from?
//!
//! The API key header names the client when it carries a key of a client
//! in the client table; otherwise the client is its IP address. The IP is
//! the TCP peer, unless the peer is a trusted proxy: then the right-most
//! address in `X-Forwarded-For` that is not itself a trusted proxy. A
//! client can therefore only look like another client by holding that
//! client's key, and cannot escape its IP limit by inventing keys.
//!
//! An IPv6 client's limit is its network's (`rate_limit.ipv6_prefix`,
//! /64 by default): a host that holds a /64 could otherwise take a fresh
//! bucket for every request.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use super::Conn;
use crate::limiter::{ApiKey, ClientKey, KeyError};

/// Resolves client identities.
#[derive(Debug, Clone)]
pub struct Identifier {
    api_key_header: http::HeaderName,
    trusted: Vec<IpNet>,
    ipv6_prefix: u8,
}

impl Identifier {
    /// An identifier reading keys from `api_key_header` and believing
    /// `X-Forwarded-For` from peers in `trusted`.
    pub fn new(api_key_header: http::HeaderName, trusted: Vec<IpNet>) -> Self {
        Self {
            api_key_header,
            trusted,
            ipv6_prefix: 128,
        }
    }

    /// The same identifier, keying IPv6 clients by their network of
    /// `prefix` bits (128: every address alone, what [`Identifier::new`]
    /// does).
    pub fn with_ipv6_prefix(mut self, prefix: u8) -> Self {
        self.ipv6_prefix = prefix;
        self
    }

    /// The header carrying API keys.
    pub fn api_key_header(&self) -> &http::HeaderName {
        &self.api_key_header
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        is_in(&self.trusted, ip)
    }

    /// The API key the request presents, if any. A header that is present
    /// but not a valid key is an error, not silently ignored. A request
    /// with the header twice never gets here (`strict::check` refuses it),
    /// so the key read is the one the backend gets.
    pub fn api_key(&self, headers: &HeaderMap) -> Result<Option<ApiKey>, KeyError> {
        match headers.get(&self.api_key_header) {
            None => Ok(None),
            Some(v) => {
                let text = v.to_str().map_err(|_| KeyError::BadChar('\u{fffd}'))?;
                ApiKey::new(text.trim()).map(Some)
            }
        }
    }

    /// The client's IP address (see the module docs).
    pub fn client_ip(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            // A hop we cannot parse ends what can be believed.
            let Some(ip) = parse_hop(hop) else { break };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }

    /// The key an unauthenticated request is limited by: its
    /// [`Identifier::client_ip`], an IPv6 one as its network.
    pub fn client_key(&self, headers: &HeaderMap, peer: IpAddr) -> ClientKey {
        ClientKey::grouped(self.client_ip(headers, peer), self.ipv6_prefix)
    }

    /// Whether a request on `conn` has its `X-Forwarded-For` believed:
    /// its peer is a trusted proxy that may name others (not a PROXY
    /// connection whose header named no client; see [`Conn`]).
    pub fn trusts_forwarded_for(&self, conn: Conn) -> bool {
        conn.forwarded_for && self.is_trusted(conn.peer.ip())
    }

    /// [`Identifier::client_ip`] of a request on `conn`: its peer alone
    /// when `X-Forwarded-For` may not be read there.
    pub fn client_ip_of(&self, headers: &HeaderMap, conn: Conn) -> IpAddr {
        if conn.forwarded_for {
            self.client_ip(headers, conn.peer.ip())
        } else {
            canonical(conn.peer.ip())
        }
    }

    /// [`Identifier::client_key`] of a request on `conn`.
    pub fn client_key_of(&self, headers: &HeaderMap, conn: Conn) -> ClientKey {
        ClientKey::grouped(self.client_ip_of(headers, conn), self.ipv6_prefix)
    }
}

/// Whether `ip` is inside one of `nets`, an IPv4-mapped IPv6 address
/// counting as the IPv4 address it maps (a dual-stack listener reports
/// IPv4 peers that way).
pub(crate) fn is_in(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|net| net.contains(&ip))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`
/// or `[2001:db8::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| canonical(s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ident(trusted: &[&str]) -> Identifier {
        Identifier::new(
            http::HeaderName::from_static("x-api-key"),
            trusted.iter().filter_map(|s| s.parse().ok()).collect(),
        )
    }

    fn xff(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static(v));
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn untrusted_peer_cannot_forge() {
        let id = ident(&["10.0.0.0/8"]);
        assert_eq!(
            id.client_ip(&xff("6.6.6.6"), ip("192.0.2.7")),
            ip("192.0.2.7")
        );
    }

    #[test]
    fn trusted_chain_gives_the_rightmost_untrusted_hop() {
        let id = ident(&["10.0.0.0/8"]);
        // client forged 6.6.6.6 in front; 198.51.100.1 is who reached our proxy.
        let h = xff("6.6.6.6, 198.51.100.1, 10.1.1.1");
        assert_eq!(id.client_ip(&h, ip("10.0.0.2")), ip("198.51.100.1"));
        assert_eq!(
            id.client_ip(&xff("[2001:db8::5]:443"), ip("10.0.0.2")),
            ip("2001:db8::5")
        );
        assert_eq!(id.client_ip(&xff("junk"), ip("10.0.0.2")), ip("10.0.0.2"));
        assert_eq!(
            id.client_ip(&HeaderMap::new(), ip("::ffff:10.0.0.2")),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn forwarded_ipv6_clients_are_keyed_by_network() {
        let id = ident(&["10.0.0.0/8"]).with_ipv6_prefix(64);
        let key = id.client_key(&xff("2001:db8::5"), ip("10.0.0.2"));
        assert_eq!(key.to_string(), "2001:db8::/64");
        let v4 = id.client_key(&xff("::ffff:198.51.100.1"), ip("10.0.0.2"));
        assert_eq!(v4, ClientKey::Ip(ip("198.51.100.1")));
        let alone = ident(&[]).client_key(&HeaderMap::new(), ip("2001:db8::5"));
        assert_eq!(alone, ClientKey::Ip(ip("2001:db8::5")));
    }

    #[test]
    fn api_keys() {
        let id = ident(&[]);
        let mut h = HeaderMap::new();
        assert_eq!(id.api_key(&h), Ok(None));
        h.insert("x-api-key", HeaderValue::from_static("user1"));
        assert_eq!(
            id.api_key(&h).ok().flatten().map(|k| k.to_string()),
            Some("user1".into())
        );
        h.insert("x-api-key", HeaderValue::from_static("bad key"));
        assert!(id.api_key(&h).is_err());
    }
}
