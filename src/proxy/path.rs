//! The one request path: normalized once, before the client is
//! identified, then matched by rules (and routes) and forwarded as is.
//!
//! A rule on `/api/search` must see every spelling a backend reads as
//! that path: `//api/search`, `/api/%73earch`, `/x/../api/search`,
//! `/api/./search`. So the path is put in one form (RFC 3986 §6.2.2):
//! percent-encoded unreserved characters decoded, other escapes in upper
//! case, `.` and `..` segments resolved (§5.2.4), repeated `/` merged; and
//! the backend gets exactly that form, so what was matched is what is
//! served. What cannot be put in one form safely is refused with 400: an
//! encoded `/` or `\` (a backend may decode it into a separator the rules
//! never saw; `proxy.escaped_slashes: keep` forwards them untouched and
//! matches them as text), a raw `\` (Windows and some frameworks read it
//! as `/`), an encoded NUL, a malformed escape, and a `..` that climbs
//! above the root (nginx refuses that too).
//!
//! Most paths are already normal: one pass over the bytes finds that, and
//! then nothing is allocated.

use std::borrow::Cow;

use http::uri::{PathAndQuery, Uri};
use serde::Deserialize;

/// What to do with `%2F` and `%5C` in a path (`proxy.escaped_slashes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Refuse the request with 400.
    #[default]
    Reject,
    /// Forward them untouched, and match them as the text `%2F`/`%5C`.
    Keep,
}

/// Why a path cannot be put in one form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A raw `\`.
    #[error("Backslash in the request path")]
    Backslash,
    /// `%2F` or `%5C` with `proxy.escaped_slashes: reject`.
    #[error("Encoded slash (%2F or %5C) in the request path")]
    EscapedSlash,
    /// `%00`.
    #[error("Encoded NUL in the request path")]
    Nul,
    /// `%` not followed by two hex digits.
    #[error("Malformed percent-encoding in the request path")]
    BadEscape,
    /// A `..` segment with nothing left to remove.
    #[error("Request path climbs above the root")]
    AboveRoot,
}

/// The normal form of `path` (without its query): borrowed when it is
/// normal already.
pub fn normalize(path: &str, escaped: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    // `*` (OPTIONS *) and anything not starting with `/` have no segments.
    if !path.starts_with('/') || is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path.as_bytes(), escaped)?;
    resolve(&decoded).map(Cow::Owned)
}

/// Puts the request target's path in its normal form, in place; the query
/// is kept as it came.
pub fn settle(uri: &mut Uri, escaped: EscapedSlashes) -> Result<(), PathError> {
    let Cow::Owned(path) = normalize(uri.path(), escaped)? else {
        return Ok(());
    };
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    // The normal form is made of bytes the request target already held
    // (decoding only produces unreserved characters), so it parses.
    let Ok(path_and_query) = PathAndQuery::try_from(target) else {
        return Err(PathError::BadEscape);
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(path_and_query);
    *uri = Uri::from_parts(parts).map_err(|_| PathError::BadEscape)?;
    Ok(())
}

/// Whether `path` is normal already: no escape, no backslash, no empty,
/// `.` or `..` segment.
fn is_normal(path: &[u8]) -> bool {
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'%' | b'\\' => return false,
            b'/' => match path.get(i + 1) {
                Some(b'/') => return false,
                Some(b'.') => {
                    let rest = &path[i + 2..];
                    if rest.is_empty()
                        || rest[0] == b'/'
                        || (rest[0] == b'.' && (rest.len() == 1 || rest[1] == b'/'))
                    {
                        return false;
                    }
                }
                _ => {}
            },
            _ => {}
        }
        i += 1;
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes escapes of unreserved characters and writes the others in
/// upper case; refuses what cannot be decoded safely.
fn decode(path: &[u8], escaped: EscapedSlashes) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'\\' {
            return Err(PathError::Backslash);
        }
        if b != b'%' {
            // The path is UTF-8 (`http::Uri` checked it): copy whole
            // characters.
            let end = path[i..]
                .iter()
                .position(|&c| c == b'%' || c == b'\\')
                .map_or(path.len(), |n| i + n);
            out.push_str(std::str::from_utf8(&path[i..end]).map_err(|_| PathError::BadEscape)?);
            i = end;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            path.get(i + 1).copied().and_then(hex),
            path.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let v = hi << 4 | lo;
        match v {
            0 => return Err(PathError::Nul),
            b'/' | b'\\' if escaped == EscapedSlashes::Reject => {
                return Err(PathError::EscapedSlash)
            }
            v if is_unreserved(v) => out.push(char::from(v)),
            v => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(v >> 4)]));
                out.push(char::from(HEX[usize::from(v & 15)]));
            }
        }
        i += 3;
    }
    Ok(out)
}

/// Resolves `.` and `..` segments and merges repeated `/` in a decoded
/// path that starts with `/`; a trailing `/` (or a last `.`/`..`, which
/// names a directory) stays.
fn resolve(path: &str) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing = false;
    for segment in path.split('/').skip(1) {
        trailing = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                if kept.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if trailing || kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p, EscapedSlashes::Reject).map(Cow::into_owned)
    }

    #[test]
    fn the_spellings_of_one_path_become_that_path() {
        for spelling in [
            "/api/search",
            "//api/search",
            "/api//search",
            "/api/%73earch",
            "/api/%73%65arch",
            "/x/../api/search",
            "/api/./search",
            "/./api/search",
            "/api/x/y/../../search",
            "/%61pi/search",
            "/api/%2e/search",
            "/api/x/%2E%2E/search",
        ] {
            assert_eq!(norm(spelling).as_deref(), Ok("/api/search"), "{spelling}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/api/search",
            "/a.b/c..d/.e/..f/",
            "/x",
            "*",
            "/caf\u{e9}",
        ] {
            assert!(
                matches!(normalize(p, EscapedSlashes::Reject), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn trailing_slashes_and_directories_stay() {
        assert_eq!(norm("/a/b/").as_deref(), Ok("/a/b/"));
        assert_eq!(norm("/a/b/.").as_deref(), Ok("/a/b/"));
        assert_eq!(norm("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(norm("/a/..").as_deref(), Ok("/"));
        assert_eq!(norm("//").as_deref(), Ok("/"));
        assert_eq!(norm("/a//").as_deref(), Ok("/a/"));
    }

    #[test]
    fn other_escapes_stay_escaped_in_upper_case() {
        assert_eq!(norm("/a%20b%2a").as_deref(), Ok("/a%20b%2A"));
        assert_eq!(norm("/caf%C3%A9").as_deref(), Ok("/caf%C3%A9"));
    }

    #[test]
    fn what_cannot_be_put_in_one_form_is_refused() {
        assert_eq!(norm("/api%2fsearch"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/api%2Fsearch"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/api%5csearch"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/api\\search"), Err(PathError::Backslash));
        assert_eq!(norm("/api%00"), Err(PathError::Nul));
        assert_eq!(norm("/api%zz"), Err(PathError::BadEscape));
        assert_eq!(norm("/api%2"), Err(PathError::BadEscape));
        assert_eq!(norm("/../etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(norm("/%2e%2e/etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(norm("/a/../../b"), Err(PathError::AboveRoot));
    }

    #[test]
    fn keep_forwards_escaped_slashes_as_text() {
        let keep = |p| normalize(p, EscapedSlashes::Keep).map(Cow::into_owned);
        assert_eq!(keep("/api%2fsearch").as_deref(), Ok("/api%2Fsearch"));
        assert_eq!(keep("/a%5Cb").as_deref(), Ok("/a%5Cb"));
        // NUL and raw backslashes stay refused.
        assert_eq!(keep("/a%00"), Err(PathError::Nul));
        assert_eq!(keep("/a\\b"), Err(PathError::Backslash));
    }

    #[test]
    fn settle_keeps_the_query_and_the_authority() {
        let mut uri: Uri = "http://h.example/x/../a//b?q=%2F..//".parse().expect("uri");
        settle(&mut uri, EscapedSlashes::Reject).expect("settled");
        assert_eq!(uri.to_string(), "http://h.example/a/b?q=%2F..//");
    }
}
