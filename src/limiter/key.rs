//! Client identities: an IP address or an API key.

use std::fmt;
use std::net::IpAddr;

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
    /// A client that presented an API key.
    Api(ApiKey),
}

impl ClientKey {
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
            Self::Api(k) => format!("key:{k}"),
        }
    }

    /// The inverse of [`ClientKey::encode`]; `None` for a malformed name.
    pub fn decode(s: &str) -> Option<Self> {
        if let Some(ip) = s.strip_prefix("ip:") {
            ip.parse().ok().map(Self::Ip)
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
    fn v4_and_mapped_v6_are_one_client() {
        let a: IpAddr = "1.2.3.4".parse().expect("ip");
        let b: IpAddr = "::ffff:1.2.3.4".parse().expect("ip");
        assert_eq!(ip_bits(a), ip_bits(b));
        assert_eq!(ip_from_bits(ip_bits(b)), a);
        let c: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(ip_from_bits(ip_bits(c)), c);
    }
}
