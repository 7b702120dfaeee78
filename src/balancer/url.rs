//! A backend's address as configured: `http://host:port` or
//! `https://host[:port]`.
//!
//! The balancer owns it (logs, metric labels and the admin API show it);
//! the config only reads it. Anything that would leak a secret or cannot
//! be connected to (user information, port 0) is refused when parsed, and
//! so is an `https://` host that cannot be a TLS server name, so a loaded
//! URL can always be connected to.
//!
//! The port: required for `http://` (as it always was), optional for
//! `https://`, where it defaults to 443. The default is written into the
//! authority when parsed, so `https://api.internal` and
//! `https://api.internal:443` are the same backend (and a duplicate), and
//! both show as `https://api.internal:443`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rustls_pki_types::ServerName;
use serde::{Deserialize, Deserializer};

/// How a backend is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HTTP/1.1 over TCP.
    Http,
    /// HTTP/1.1 over TLS, the certificate verified.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// A backend's base URL: `http://host:port` or `https://host:port`,
/// without path or query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `host:port` (the port always present: for `https://` 443 when it
    /// was not written).
    pub authority: http::uri::Authority,
    /// The name the certificate must be valid for and sent as SNI (`None`
    /// for `http://`): the host, a DNS name or an IP address.
    server_name: Option<ServerName<'static>>,
}

impl BackendUrl {
    /// Parses and validates a backend URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri = http::Uri::from_str(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(other) => {
                return Err(format!(
                    "{s:?}: scheme {other:?} is not supported (http:// or https://)"
                ))
            }
            None => return Err(format!("{s:?}: expected http://host:port")),
        };
        let mut authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{s:?}: expected {}://host:port", scheme.as_str()))?;
        if let Some((_, host)) = authority.as_str().rsplit_once('@') {
            // Not echoed whole: the part before '@' may be a password.
            return Err(format!(
                "\"{}://...@{host}\": user information (user:password@) is not \
                 supported in a backend URL; it would show in /backends, metrics and logs",
                scheme.as_str()
            ));
        }
        if authority.port_u16() == Some(0) {
            return Err(format!("{s:?}: port 0 cannot be connected to"));
        }
        if authority.port_u16().is_none() {
            // `port_u16` is also None for a port that does not fit 16 bits.
            let written = authority
                .as_str()
                .rsplit_once(']')
                .map_or(authority.as_str(), |(_, after)| after)
                .rsplit_once(':')
                .map(|(_, port)| port);
            match written {
                Some(port) if !port.is_empty() => {
                    return Err(format!("{s:?}: port {port} is out of range (1-65535)"));
                }
                // No port written at all (`host:` is taken as a typo).
                None if scheme == Scheme::Https => {
                    authority = http::uri::Authority::try_from(format!("{authority}:443"))
                        .map_err(|e| format!("{s:?} is not a URL: {e}"))?;
                }
                _ => return Err(format!("{s:?}: the port is required (http://host:port)")),
            }
        }
        if s.contains('#') {
            return Err(format!(
                "{s:?}: a backend URL has no fragment (#...) ({}://host:port)",
                scheme.as_str()
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "{s:?}: a backend URL has no path or query ({}://host:port)",
                scheme.as_str()
            ));
        }
        let server_name = match scheme {
            Scheme::Http => None,
            Scheme::Https => Some(
                ServerName::try_from(unbracketed(authority.host()))
                    .map_err(|e| format!("{s:?}: the host cannot be a TLS server name: {e}"))?
                    .to_owned(),
            ),
        };
        Ok(Self {
            scheme,
            authority,
            server_name,
        })
    }

    /// The TLS server name (sent as SNI when it is a DNS name, and what
    /// the certificate must be valid for); `None` for `http://`.
    pub fn server_name(&self) -> Option<&ServerName<'static>> {
        self.server_name.as_ref()
    }

    /// The host to connect to, an IPv6 literal without its brackets.
    pub fn host(&self) -> &str {
        unbracketed(self.authority.host())
    }

    /// The port (always known: required, or 443 for `https://`).
    pub fn port(&self) -> u16 {
        self.authority.port_u16().unwrap_or(match self.scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        })
    }

    /// Whether the host is a loopback address (or `localhost`).
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority)
    }
}

/// An IPv6 literal comes bracketed in a URL, not in a socket address or
/// a server name.
fn unbracketed(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

impl<'de> Deserialize<'de> for BackendUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls() {
        assert!(BackendUrl::parse("http://127.0.0.1:9001").is_ok());
        assert!(BackendUrl::parse("http://[::1]:9001")
            .expect("v6")
            .is_loopback());
        assert!(BackendUrl::parse("http://localhost:9001")
            .expect("ok")
            .is_loopback());
        assert!(!BackendUrl::parse("http://10.0.0.1:80")
            .expect("ok")
            .is_loopback());
        assert!(
            BackendUrl::parse("http://127.0.0.1").is_err(),
            "port required"
        );
        assert!(
            BackendUrl::parse("http://127.0.0.1:1/api").is_err(),
            "no path"
        );
        assert!(BackendUrl::parse("ftp://127.0.0.1:21").is_err());
    }

    #[test]
    fn https_urls_keep_their_scheme_and_default_to_port_443() {
        let u = BackendUrl::parse("https://api.internal").expect("no port");
        assert_eq!(u.scheme, Scheme::Https);
        assert_eq!(u.port(), 443);
        assert_eq!(u.to_string(), "https://api.internal:443");
        assert_eq!(
            u,
            BackendUrl::parse("https://api.internal:443").expect("443")
        );
        let u = BackendUrl::parse("https://localhost:8443/").expect("with port");
        assert_eq!(u.to_string(), "https://localhost:8443");
        assert_eq!(u.authority.as_str(), "localhost:8443");
        assert!(u.is_loopback());
        assert_eq!(
            BackendUrl::parse("http://localhost:8443")
                .expect("http")
                .to_string(),
            "http://localhost:8443"
        );
        assert_ne!(u, BackendUrl::parse("http://localhost:8443").expect("http"));
        for (url, says) in [
            ("https://h:", "required"),
            ("https://h:70000", "70000"),
            ("https://h:0", "port 0"),
            ("https://u:pw@h:443", "user"),
            ("https://h:443/api", "path"),
        ] {
            let e = BackendUrl::parse(url).expect_err(url);
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("pw"), "{url}: {e}");
        }
    }

    #[test]
    fn the_tls_server_name_is_the_host() {
        let dns = BackendUrl::parse("https://Api.Example.com:8443").expect("dns");
        assert!(
            matches!(dns.server_name(), Some(ServerName::DnsName(n)) if n.as_ref().eq_ignore_ascii_case("api.example.com")),
            "{:?}",
            dns.server_name()
        );
        let v4 = BackendUrl::parse("https://10.1.2.3:8443").expect("v4");
        assert!(matches!(v4.server_name(), Some(ServerName::IpAddress(_))));
        let v6 = BackendUrl::parse("https://[::1]:8443").expect("v6");
        assert!(matches!(v6.server_name(), Some(ServerName::IpAddress(_))));
        assert_eq!(v6.host(), "::1");
        assert!(BackendUrl::parse("http://10.1.2.3:80")
            .expect("http")
            .server_name()
            .is_none());
    }

    #[test]
    fn backend_urls_with_userinfo_port_zero_or_a_fragment_are_refused() {
        for (url, says) in [
            ("http://user:pw@127.0.0.1:9001", "user"),
            ("http://user@127.0.0.1:9001", "user"),
            ("http://127.0.0.1:0", "port 0"),
            ("http://127.0.0.1:9001#frag", "fragment"),
            ("http://127.0.0.1:9001/#frag", "fragment"),
        ] {
            let e = BackendUrl::parse(url).expect_err(url);
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("pw"), "{url}: the password is echoed: {e}");
        }
    }

    #[test]
    fn an_out_of_range_port_says_so() {
        let e = BackendUrl::parse("http://127.0.0.1:70000").expect_err("70000");
        assert!(e.contains("70000") && e.contains("65535"), "{e}");
        assert!(!e.contains("required"), "{e}");
        let e = BackendUrl::parse("http://127.0.0.1").expect_err("no port");
        assert!(e.contains("required"), "{e}");
    }
}
