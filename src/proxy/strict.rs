//! Strict HTTP at the front door (RFC 9110, RFC 9112): the rules a request
//! must meet before it is identified, charged or forwarded.
//!
//! Each rule closes a gap between what tollgate reads and what a backend
//! may read: two `Host` lines or two API keys (each side may take a
//! different one), a transfer coding tollgate would drop, a `CONNECT`
//! tollgate cannot serve, or a header name with `_` that a backend maps to
//! `-` (a header tollgate never looked at). One pass over the header lines
//! gathers what every rule needs, so a well-formed request costs a few
//! comparisons per header line and no allocation.

use std::borrow::Cow;

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Version};

use crate::error::ProxyError;

/// What the rules depend on in the config.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    /// The API key header, which must not be sent twice.
    pub(crate) api_key_header: HeaderName,
    /// Whether header names with `_` are forwarded (nginx's
    /// `underscores_in_headers`); otherwise they are dropped.
    pub(crate) allow_underscores: bool,
}

/// Checks `req` and settles its `Host`: the authority of an absolute-form
/// or HTTP/2 target replaces the `Host` header (RFC 9112 §3.2.2, RFC 9113
/// §8.3.1). Returns the host the backend gets, `None` only for HTTP/1.0
/// without one. Header names with `_` are removed unless allowed.
pub(crate) fn check<B>(
    req: &mut Request<B>,
    rules: &Rules,
) -> Result<Option<HeaderValue>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    if let Some(standard) = case_folded_standard(req.method()) {
        return Err(bad(format!(
            "Method names are case-sensitive: {} is not {standard}",
            req.method()
        )));
    }
    let mut host = None;
    let mut hosts = 0u32;
    let mut keys = 0u32;
    let mut coded = false;
    let mut underscored = false;
    // Header lines, not names: a repeated name comes once per line. Walking
    // names and looking up Host and the key header afterwards instead cost
    // ~150 instructions more per request (callgrind, 11 headers).
    for (name, value) in req.headers() {
        if name == header::HOST {
            hosts += 1;
            host = Some(value);
        } else if name == header::TRANSFER_ENCODING {
            coded = true;
        } else if name == rules.api_key_header {
            keys += 1;
        } else if !rules.allow_underscores && has_underscore(name.as_str().as_bytes()) {
            underscored = true;
        }
    }
    if hosts > 1 {
        return Err(bad("More than one Host header"));
    }
    if host.is_some_and(|h| !valid_authority(h.as_bytes())) {
        return Err(bad("Invalid Host header"));
    }
    if keys > 1 {
        return Err(bad(format!(
            "More than one {} header",
            rules.api_key_header
        )));
    }
    if coded {
        transfer_coding(req.headers())?;
    }
    let host = match req.uri().authority() {
        Some(authority) => {
            if !valid_authority(authority.as_str().as_bytes()) {
                return Err(bad("Invalid authority in the request target"));
            }
            // RFC 9112 §3.2: an HTTP/1.1 request needs a Host line even
            // when its target names the host.
            if host.is_none() && req.version() == Version::HTTP_11 {
                return Err(bad("Missing Host header"));
            }
            let value = HeaderValue::from_str(authority.as_str())
                .map_err(|_| bad("Invalid authority in the request target"))?;
            req.headers_mut().insert(header::HOST, value.clone());
            Some(value)
        }
        None => match host {
            Some(h) => Some(h.clone()),
            None if req.version() <= Version::HTTP_10 => None,
            None => return Err(bad("Missing Host header")),
        },
    };
    if underscored {
        drop_underscored(req.headers_mut());
    }
    Ok(host)
}

/// The standard method `m` spells in another case (`get`, `Post`), if it
/// does: a backend that folds case would serve it as that method, while
/// rules on `GET` would not see it (nginx answers 400 too). Standard
/// methods are upper case, so only a method with a lower-case letter is
/// looked at.
fn case_folded_standard(m: &Method) -> Option<&'static str> {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    let name = m.as_str();
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return None;
    }
    STANDARD.into_iter().find(|s| s.eq_ignore_ascii_case(name))
}

fn bad(message: impl Into<Cow<'static, str>>) -> ProxyError {
    ProxyError::BadRequest(message.into())
}

/// `Transfer-Encoding` must name `chunked` once and nothing else: another
/// coding would be dropped with the hop-by-hop header, so the backend would
/// get a body encoded in a way it was not told about (RFC 9112 §6.1:
/// 501 for a coding not understood). hyper has already refused a last
/// coding other than `chunked` (400), whose body length is unknowable.
fn transfer_coding(h: &HeaderMap) -> Result<(), ProxyError> {
    let mut chunked = 0u32;
    for value in h.get_all(header::TRANSFER_ENCODING) {
        let Ok(text) = value.to_str() else {
            return Err(ProxyError::TransferCodingNotImplemented);
        };
        // Empty list elements are allowed and ignored (RFC 9110 §5.6.1).
        for coding in text.split(',').map(|c| c.trim_matches([' ', '\t'])) {
            if coding.eq_ignore_ascii_case("chunked") {
                chunked += 1;
            } else if !coding.is_empty() {
                return Err(ProxyError::TransferCodingNotImplemented);
            }
        }
    }
    if chunked == 1 {
        Ok(())
    } else {
        // Chunked twice (RFC 9112 §6.1 forbids it), or only empty elements.
        Err(bad("Invalid Transfer-Encoding header"))
    }
}

/// Removes every header whose name contains `_`. Rare, so the names are
/// gathered only once one was seen.
fn drop_underscored(h: &mut HeaderMap) {
    let names: Vec<HeaderName> = h
        .keys()
        .filter(|n| has_underscore(n.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in names {
        tracing::debug!(header = %name, "dropped a header name with '_'");
        h.remove(name);
    }
}

/// Whether `name` contains `_`, eight bytes at a time: this runs on every
/// header name of every request, and names are mostly 8-25 bytes, where
/// `<[u8]>::contains` goes byte by byte (~4 instructions a byte).
fn has_underscore(name: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const UNDERSCORES: u64 = u64::from_ne_bytes([b'_'; 8]);
    // A byte of `w` is zero where the name has `_`; the classic test for
    // a zero byte in a word (exact: no false positives when nonzero).
    let any_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS != 0;
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        u64::from_ne_bytes(w) ^ UNDERSCORES
    };
    if name.len() < 8 {
        return name.contains(&b'_');
    }
    let mut chunks = name.chunks_exact(8);
    if chunks.any(|c| any_zero(word(c))) {
        return true;
    }
    // The last eight bytes, overlapping what was checked, cover the rest.
    !chunks.remainder().is_empty() && any_zero(word(&name[name.len() - 8..]))
}

/// Bytes allowed in a `reg-name` or an IP literal besides `%`-escapes
/// (RFC 3986 §3.2.2: unreserved and sub-delims; `:` only inside brackets).
const NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        i += 1;
    }
    t
};

/// Whether `s` is `host [":" port]` as `Host` carries it (RFC 9110 §7.2):
/// a non-empty reg-name, IPv4 address or bracketed IP literal, and digits
/// after the colon. No userinfo, path, spaces or controls.
fn valid_authority(s: &[u8]) -> bool {
    let port = if s.first() == Some(&b'[') {
        let Some(close) = s.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &s[1..close];
        if literal.is_empty() || !literal.iter().all(|&b| b == b':' || NAME[usize::from(b)]) {
            return false;
        }
        &s[close + 1..]
    } else {
        // reg-name or IPv4 address, up to the first byte that cannot be in
        // one; only a `:` and the port may follow.
        let mut i = 0;
        while let Some(&b) = s.get(i) {
            if NAME[usize::from(b)] {
                i += 1;
            } else if b == b'%'
                && s.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && s.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
            {
                i += 3;
            } else {
                break;
            }
        }
        if i == 0 {
            return false;
        }
        &s[i..]
    };
    match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            api_key_header: HeaderName::from_static("x-api-key"),
            allow_underscores: false,
        }
    }

    fn request(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(uri).version(version);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).expect("request")
    }

    fn message(r: Result<Option<HeaderValue>, ProxyError>) -> String {
        match r {
            Ok(h) => format!("ok {h:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn underscores_are_found_at_every_position_and_length() {
        for len in 0..40 {
            let clean = vec![b'a'; len];
            assert!(!has_underscore(&clean), "{len}");
            for at in 0..len {
                let mut name = clean.clone();
                name[at] = b'_';
                assert!(has_underscore(&name), "{len} {at}");
            }
        }
        // Bytes next to '_' in value (0x5e, 0x60) and high bytes are not it.
        assert!(!has_underscore(b"^^^^````\xff\x80^`^`^`^`^"));
    }

    #[test]
    fn authorities() {
        for good in [
            "a.example",
            "a.example:8080",
            "a.example:",
            "127.0.0.1",
            "[::1]",
            "[2001:db8::1]:443",
            "[v1.fe]",
            "a%2Db.example",
            "under_score.example",
        ] {
            assert!(valid_authority(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            ":80",
            "a b",
            "u@a.example",
            "a.example/x",
            "a.example:8x",
            "a.example:80:80",
            "::1",
            "[::1",
            "[]",
            "[::1]x",
            "[::1]:8x",
            "a%2",
            "a%zz",
            "a\\b",
            "a\u{7f}",
            "é.example",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn host_rules_by_version() {
        let r = rules();
        let mut h10 = request(Version::HTTP_10, "/", &[]);
        assert_eq!(message(check(&mut h10, &r)), "ok None");
        let mut h11 = request(Version::HTTP_11, "/", &[]);
        assert_eq!(message(check(&mut h11, &r)), "Missing Host header");
        // h2 without :authority needs a Host line (RFC 9113 §8.3.1).
        let mut h2 = request(Version::HTTP_2, "/", &[]);
        assert_eq!(message(check(&mut h2, &r)), "Missing Host header");
        let mut h2 = request(Version::HTTP_2, "/", &[("host", "a.example")]);
        assert_eq!(message(check(&mut h2, &r)), r#"ok Some("a.example")"#);
        // :authority wins over a differing Host, and replaces it.
        let mut h2 = request(
            Version::HTTP_2,
            "http://a.example/",
            &[("host", "b.example")],
        );
        assert_eq!(message(check(&mut h2, &r)), r#"ok Some("a.example")"#);
        assert_eq!(h2.headers()["host"], "a.example");
        assert_eq!(h2.headers().get_all("host").iter().count(), 1);
    }

    #[test]
    fn codings() {
        let te = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, HeaderValue::from_static(v));
            }
            transfer_coding(&h).map_err(|e| e.to_string())
        };
        assert_eq!(te(&["chunked"]), Ok(()));
        assert_eq!(te(&["CHUNKED"]), Ok(()));
        assert_eq!(te(&[" , chunked"]), Ok(()));
        let not_implemented = Err("Transfer-Encoding other than chunked is not implemented".into());
        assert_eq!(te(&["gzip, chunked"]), not_implemented);
        assert_eq!(te(&["gzip", "chunked"]), not_implemented);
        let invalid = Err("Invalid Transfer-Encoding header".into());
        assert_eq!(te(&["chunked, chunked"]), invalid);
        assert_eq!(te(&["chunked", "chunked"]), invalid);
        assert_eq!(te(&[","]), invalid);
    }

    #[test]
    fn underscored_names_go_unless_allowed() {
        let headers = [
            ("host", "a.example"),
            ("x_api_key", "k"),
            ("x-kept", "1"),
            ("a_b", "1"),
        ];
        let mut req = request(Version::HTTP_11, "/", &headers);
        check(&mut req, &rules()).expect("valid");
        let names: Vec<&str> = req.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["host", "x-kept"]);
        let allow = Rules {
            allow_underscores: true,
            ..rules()
        };
        let mut req = request(Version::HTTP_11, "/", &headers);
        check(&mut req, &allow).expect("valid");
        assert_eq!(req.headers().len(), 4);
    }

    #[test]
    fn connect_and_repeated_keys() {
        let mut req = request(Version::HTTP_11, "/", &[("host", "a.example")]);
        *req.method_mut() = Method::CONNECT;
        assert_eq!(
            message(check(&mut req, &rules())),
            "Method CONNECT is not allowed"
        );
        let mut req = request(
            Version::HTTP_11,
            "/",
            &[
                ("host", "a.example"),
                ("x-api-key", "a"),
                ("x-api-key", "b"),
            ],
        );
        assert_eq!(
            message(check(&mut req, &rules())),
            "More than one x-api-key header"
        );
    }
}
