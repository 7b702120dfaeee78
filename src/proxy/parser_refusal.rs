//! The access log line of a request hyper's HTTP/1.1 parser refused (400
//! malformed, 414 URI too long, 431 head too large).
//!
//! Such a request never reaches [`super::Proxy::handle`], which writes
//! every other line, so the connection server logs it here once it has
//! sent the JSON answer. What the line can say is what the refused bytes
//! say: the method and path when the request line could be read, `-`
//! otherwise; the client is the connection's peer (its headers were never
//! parsed, so `X-Forwarded-For` is not read); the request id is a new one.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Uri};

use super::request_id;
use crate::access_log::{AccessLog, Client, Record};

/// Longest method logged: longer ones are no method any client sends.
const MAX_METHOD_LEN: usize = 32;

/// Longest target logged; a longer one (a 414's, typically) is logged
/// as `-` rather than filling the log with it.
const MAX_TARGET_LEN: usize = 2048;

/// A request the parser refused and the JSON answer it got.
#[derive(Debug)]
pub(crate) struct Refused {
    /// The status answered (400, 414 or 431).
    pub(crate) status: u16,
    /// Bytes of the JSON body sent.
    pub(crate) body_len: u64,
    /// What hyper had read of the request and not consumed: it starts
    /// with the refused request's head.
    pub(crate) head: Bytes,
}

/// Sends the access log line of `refused`, from the client at `peer`.
pub(crate) fn log(log: &AccessLog, peer: IpAddr, refused: &Refused) {
    let (method, uri) = request_line(&refused.head);
    log.send(Record {
        ts: SystemTime::now(),
        client: Client::Ip(peer),
        method,
        uri: uri.and_then(|u| u.path_and_query().cloned()),
        status: refused.status,
        backend: None,
        // The head's first bytes may have come long before the refusal,
        // on a connection kept alive; nothing times them.
        duration: Duration::ZERO,
        bytes_sent: refused.body_len,
        limited: None,
        request_id: request_id::generate(),
        // Refused before any route was looked for; the line's fields are
        // the ones it has without pools.
        place: None,
    });
}

/// The method and target of the request line at the start of `head`, as
/// far as they can be read: `None` for a part that is missing, not a
/// method or target, or too long to log.
fn request_line(head: &[u8]) -> (Option<Method>, Option<Uri>) {
    let line_end = head
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(head.len());
    let mut parts = head[..line_end].split(|&b| b == b' ');
    let method = parts
        .next()
        .filter(|m| !m.is_empty() && m.len() <= MAX_METHOD_LEN)
        .and_then(|m| Method::from_bytes(m).ok());
    let Some(method) = method else {
        // Bytes that do not start like a request: their target would be
        // a guess.
        return (None, None);
    };
    let uri = parts
        .next()
        .filter(|t| t.len() <= MAX_TARGET_LEN)
        .and_then(|t| Uri::try_from(t).ok())
        .filter(|u| u.path().starts_with('/') || u.path() == "*");
    (Some(method), uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(head: &[u8]) -> (String, String) {
        let (method, uri) = request_line(head);
        (
            method.map_or("-".into(), |m| m.to_string()),
            uri.map_or("-".into(), |u| u.path().to_owned()),
        )
    }

    #[test]
    fn the_request_line_is_read_as_far_as_it_goes() {
        let cases: [(&[u8], &str, &str); 9] = [
            (b"GET /a/b?secret=1 HTTP/1.1\r\nx: y\r\n", "GET", "/a/b"),
            (b"POST http://h/p HTTP/1.1\r\n", "POST", "/p"),
            (b"OPTIONS * HTTP/1.1\r\n", "OPTIONS", "*"),
            (b"GET /cut-before-the-versi", "GET", "/cut-before-the-versi"),
            (b"GET\r\n", "GET", "-"),
            (b"GET not-a-path HTTP/1.1\r\n", "GET", "-"),
            (b"\x16\x03\x01 hello\r\n", "-", "-"),
            (b"", "-", "-"),
            (b" / HTTP/1.1\r\n", "-", "-"),
        ];
        for (head, method, path) in cases {
            assert_eq!(
                read(head),
                (method.to_owned(), path.to_owned()),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn a_target_too_long_to_log_is_a_dash() {
        let long = format!("GET /{} HTTP/1.1\r\n", "u".repeat(MAX_TARGET_LEN));
        assert_eq!(read(long.as_bytes()), ("GET".to_owned(), "-".to_owned()));
        let method = format!("{} / HTTP/1.1\r\n", "M".repeat(MAX_METHOD_LEN + 1));
        assert_eq!(read(method.as_bytes()), ("-".to_owned(), "-".to_owned()));
    }
}
