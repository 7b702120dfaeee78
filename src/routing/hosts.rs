//! Host names as routes match them: the `Host` header's name without its
//! port, in lower case, against exact names and `*.` wildcards.

/// One `hosts` entry of a route, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// This name exactly (lower case).
    Exact(String),
    /// One or more labels, then this suffix (`.example.com`, lower case,
    /// with its leading dot).
    Wildcard(String),
}

impl HostPattern {
    /// `api.example.com` or `*.example.com`; `None` for anything else
    /// (empty, a `*` elsewhere, a port, characters a host name cannot
    /// hold).
    pub fn parse(written: &str) -> Option<Self> {
        let lower = written.to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let bracketed_ipv6 = name.starts_with('[') && name.ends_with(']') && !wild;
        if !bracketed_ipv6 && (name.is_empty() || !name.split('.').all(label_ok)) {
            return None;
        }
        Some(if wild {
            Self::Wildcard(format!(".{name}"))
        } else {
            Self::Exact(name.to_owned())
        })
    }

    /// Whether `host` (a [`request_host`]: no port, any case) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.as_bytes();
        match self {
            Self::Exact(name) => host.eq_ignore_ascii_case(name.as_bytes()),
            Self::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }

    /// Whether every host this pattern matches, `other` matches too.
    pub fn covered_by(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), b) => b.matches(a),
            (Self::Wildcard(a), Self::Wildcard(b)) => a.ends_with(b.as_str()),
            (Self::Wildcard(_), Self::Exact(_)) => false,
        }
    }
}

impl std::fmt::Display for HostPattern {
    /// As a config writes it: `api.example.com`, `*.example.com`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// The host a request names, as routes compare it: the `Host` value (for
/// HTTP/2, the `:authority` strict HTTP put there) without its port and a
/// trailing dot; patterns compare it without regard to case, so nothing
/// is copied. The TLS SNI name is not used: a client may send one name in
/// SNI and another in `Host`, and the backend reads `Host`.
pub fn request_host(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?;
    let name = if text.starts_with('[') {
        // [v6]:port
        match text.find(']') {
            Some(end) => &text[..=end],
            None => text,
        }
    } else {
        text.rsplit_once(':').map_or(text, |(h, _)| h)
    };
    Some(name.strip_suffix('.').unwrap_or(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap_or_else(|| panic!("{s}"))
    }

    #[test]
    fn exact_names_match_without_port_and_case() {
        let h = |v: &'static str| request_host(v.as_bytes()).expect("host");
        assert!(p("api.example.com").matches(h("API.Example.com:8080")));
        assert!(p("api.example.com").matches(h("api.example.com.")));
        assert!(!p("api.example.com").matches(h("example.com")));
        assert!(p("[::1]").matches(h("[::1]:8080")));
        assert_eq!(h("127.0.0.1:80"), "127.0.0.1");
        assert!(p("api.example.com").matches(h("API.EXAMPLE.COM")));
    }

    #[test]
    fn wildcards_take_one_or_more_labels() {
        let w = p("*.api.example.com");
        assert!(w.matches("eu.api.example.com"));
        assert!(w.matches("a.b.api.example.com"));
        assert!(!w.matches("api.example.com"));
        assert!(!w.matches("xapi.example.com"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "*", "a.*.b", "a:80", "a b", "*.", "a..b"] {
            assert!(HostPattern::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn patterns_are_shown_as_written() {
        assert_eq!(p("API.example.com").to_string(), "api.example.com");
        assert_eq!(p("*.Example.com").to_string(), "*.example.com");
    }

    #[test]
    fn coverage() {
        assert!(p("a.example.com").covered_by(&p("*.example.com")));
        assert!(p("*.a.example.com").covered_by(&p("*.example.com")));
        assert!(!p("*.example.com").covered_by(&p("a.example.com")));
        assert!(!p("example.com").covered_by(&p("*.example.com")));
    }
}
