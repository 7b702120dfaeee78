//! Client identities: an IP address, an IPv6 network, or an API key.

use std::fmt;
use std::net::IpAddr;

use ipnet::Ipv6Net;

/// Longest accepted API key, in bytes.
pub const MAX_API_KEY_LEN: usize = 256;

/// Why a string is not a usable API key / client id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Empty key.
    #[error("must not be empty")]
    Empty,
    /// Longer than [`MAX_API_KEY_LEN`].
    #[error("must be at most {MAX_API_KEY_LEN} bytes (got {0})")]
    TooLong(usize),
    /// A byte outside the safe set.
    #[error("may only contain ASCII letters, digits and . _ - : ~ + / = @ (found {0:?})")]
    BadChar(char),
}

/// An API key (or client id): 1 to 256 bytes of printable, header-safe ASCII.
///
/// The set is letters, digits and `. _ - : ~ + / = @`, which covers UUIDs,
/// base64 and most vendor key formats while keeping ids safe in URLs, logs
/// and HTTP headers.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiKey(Box<str>);

impl ApiKey {
    /// Validates `s` as an API key.
    pub fn new(s: &str) -> Result<Self, KeyError> {
        if s.is_empty() {
            return Err(KeyError::Empty);
        }
        if s.len() > MAX_API_KEY_LEN {
            return Err(KeyError::TooLong(s.len()));
        }
        if let Some(c) = s.chars().find(|c| !is_key_char(*c)) {
            return Err(KeyError::BadChar(c));
        }
        Ok(Self(s.into()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '~' | '+' | '/' | '=' | '@')
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ApiKey").field(&self.as_str()).finish()
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a request is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An unauthenticated client, by address.
    Ip(IpAddr),
    /// Unauthenticated IPv6 clients grouped by network
    /// (`rate_limit.ipv6_prefix`): a host is usually given a whole /64,
    /// and one bucket per address would let it mint buckets at will. Built
    /// by [`ClientKey::grouped`]: prefix below 128, host bits zero.
    Net(Ipv6Net),
    /// A client that presented an API key.
    Api(ApiKey),
}

impl ClientKey {
    /// The key of the client at `ip`: an IPv4 address (an IPv4-mapped
    /// IPv6 address counting as the IPv4 one) is its own key; an IPv6
    /// address is grouped with its network of `ipv6_prefix` bits (128 or
    /// more: the address alone).
    pub fn grouped(ip: IpAddr, ipv6_prefix: u8) -> Self {
        let v6 = match ip {
            IpAddr::V4(_) => return Self::Ip(ip),
            IpAddr::V6(v6) => v6,
        };
        if let Some(v4) = v6.to_ipv4_mapped() {
            return Self::Ip(IpAddr::V4(v4));
        }
        match Ipv6Net::new(v6, ipv6_prefix) {
            Ok(net) if ipv6_prefix < 128 => Self::Net(net.trunc()),
            _ => Self::Ip(ip),
        }
    }

    /// The client key for an API key / client id string.
    pub fn api(s: &str) -> Result<Self, KeyError> {
        ApiKey::new(s).map(Self::Api)
    }

    /// `ip:<address>` or `key:<api key>`: the key's name wherever it is
    /// stored outside the process (bucket snapshots, Redis keys), so that
    /// an API key that spells an address is never that address.
    pub fn encode(&self) -> String {
        match self {
            Self::Ip(ip) => format!("ip:{ip}"),
            Self::Net(net) => format!("ip:{net}"),
            Self::Api(k) => format!("key:{k}"),
        }
    }

    /// The inverse of [`ClientKey::encode`]; `None` for a malformed name.
    pub fn decode(s: &str) -> Option<Self> {
        if let Some(ip) = s.strip_prefix("ip:") {
            if let Ok(ip) = ip.parse() {
                return Some(Self::Ip(ip));
            }
            let net: Ipv6Net = ip.parse().ok()?;
            Some(Self::grouped(IpAddr::V6(net.addr()), net.prefix_len()))
        } else {
            s.strip_prefix("key:").and_then(|k| Self::api(k).ok())
        }
    }
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        Self::Ip(ip)
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Net(net) => write!(f, "{net}"),
            Self::Api(k) => write!(f, "{k}"),
        }
    }
}

/// IPv4 addresses are stored as their IPv4-mapped IPv6 form, so one
/// 128-bit value identifies any address and `::ffff:1.2.3.4` and `1.2.3.4`
/// are the same client.
pub(crate) fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_ipv6_mapped().to_bits(),
            None => v6.to_bits(),
        },
    }
}

pub(crate) fn ip_from_bits(bits: u128) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from_bits(bits);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_validation() {
        assert!(ApiKey::new("user1").is_ok());
        assert!(ApiKey::new("a-b_c.d:e~f+g/h=i@j").is_ok());
        assert_eq!(ApiKey::new(""), Err(KeyError::Empty));
        assert_eq!(ApiKey::new(&"x".repeat(257)), Err(KeyError::TooLong(257)));
        assert!(ApiKey::new(&"x".repeat(256)).is_ok());
        assert_eq!(ApiKey::new("a b"), Err(KeyError::BadChar(' ')));
        assert_eq!(ApiKey::new("é"), Err(KeyError::BadChar('é')));
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let a = ClientKey::grouped(ip("2001:db8::1"), 64);
        assert_eq!(a, ClientKey::grouped(ip("2001:db8::ffff:2"), 64));
        assert_ne!(a, ClientKey::grouped(ip("2001:db8:0:1::1"), 64));
        assert_eq!(a.to_string(), "2001:db8::/64");
        assert_eq!(ClientKey::decode(&a.encode()), Some(a));
        assert_eq!(
            ClientKey::grouped(ip("2001:db8::1"), 128),
            ClientKey::Ip(ip("2001:db8::1"))
        );
        assert_eq!(
            ClientKey::grouped(ip("2001:db8:ab:cdef::1"), 48).to_string(),
            "2001:db8:ab::/48"
        );
        // IPv4, mapped or not, is never grouped.
        assert_eq!(
            ClientKey::grouped(ip("::ffff:192.0.2.1"), 64),
            ClientKey::Ip(ip("192.0.2.1"))
        );
        assert_eq!(
            ClientKey::grouped(ip("192.0.2.1"), 1),
            ClientKey::Ip(ip("192.0.2.1"))
        );
    }

    #[test]
    fn v4_and_mapped_v6_are_one_client() {
        let a: IpAddr = "1.2.3.4".parse().expect("ip");
        let b: IpAddr = "::ffff:1.2.3.4".parse().expect("ip");
        assert_eq!(ip_bits(a), ip_bits(b));
        assert_eq!(ip_from_bits(ip_bits(b)), a);
        let c: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(ip_from_bits(ip_bits(c)), c);
    }
}
