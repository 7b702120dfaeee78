//! A backend's address as configured: `http://host:port`.
//!
//! The balancer owns it (logs, metric labels and the admin API show it);
//! the config only reads it. Anything that would leak a secret or cannot
//! be connected to (user information, port 0) is refused when parsed.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A backend's base URL: `http://host:port`, without path or query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// `host:port` as written.
    pub authority: http::uri::Authority,
}

impl BackendUrl {
    /// Parses and validates a backend URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri = http::Uri::from_str(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "{s:?}: scheme {other:?} is not supported (only http://)"
                ))
            }
            None => return Err(format!("{s:?}: expected http://host:port")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{s:?}: expected http://host:port"))?;
        if let Some((_, host)) = authority.as_str().rsplit_once('@') {
            // Not echoed whole: the part before '@' may be a password.
            return Err(format!(
                "\"http://...@{host}\": user information (user:password@) is not \
                 supported in a backend URL; it would show in /backends, metrics and logs"
            ));
        }
        match authority.port_u16() {
            Some(0) => return Err(format!("{s:?}: port 0 cannot be connected to")),
            Some(_) => {}
            None => {
                // `port_u16` is also None for a port that does not fit 16 bits.
                let written = authority
                    .as_str()
                    .rsplit_once(']')
                    .map_or(authority.as_str(), |(_, after)| after)
                    .rsplit_once(':')
                    .map(|(_, port)| port);
                return Err(match written {
                    Some(port) if !port.is_empty() => {
                        format!("{s:?}: port {port} is out of range (1-65535)")
                    }
                    _ => format!("{s:?}: the port is required (http://host:port)"),
                });
            }
        }
        if s.contains('#') {
            return Err(format!(
                "{s:?}: a backend URL has no fragment (#...) (http://host:port)"
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "{s:?}: a backend URL has no path or query (http://host:port)"
            ));
        }
        Ok(Self { authority })
    }

    /// Whether the host is a loopback address (or `localhost`).
    pub fn is_loopback(&self) -> bool {
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
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
