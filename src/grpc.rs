//! What tollgate needs to know of gRPC on the wire: telling a gRPC call
//! from other requests, its deadline (`grpc-timeout`), the text of a
//! `grpc-message`, and the few bytes of a `grpc.health.v1` check.
//!
//! tollgate does not decode gRPC messages on the request path; a call is
//! an HTTP/2 request like any other, forwarded frame by frame with its
//! trailers. Only its own answers (refusals, see
//! [`crate::error::grpc_refusal`]) and the health check speak gRPC, and
//! both are small enough to write by hand rather than to pull a protobuf
//! toolchain into the build.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName};

/// `grpc-status`: the call's status code, in the trailers (or in the
/// headers of a trailers-only response).
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`: the status's text, percent-encoded.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-timeout`: the time the client gives the call.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The path of the standard health check method.
pub const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// Whether a request is a gRPC call: its `content-type` is
/// `application/grpc` or one of its variants (`application/grpc+proto`,
/// `application/grpc-web`...).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| starts_with_ignore_case(v.as_bytes(), b"application/grpc"))
}

fn starts_with_ignore_case(value: &[u8], prefix: &[u8]) -> bool {
    value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The call's deadline from `grpc-timeout` (`1-8 digits` and a unit: `H`
/// hours, `M` minutes, `S` seconds, `m` ms, `u` µs, `n` ns); `None` when
/// absent or malformed (then the call has no deadline of its own, as gRPC
/// servers treat it).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `text` as a `grpc-message` value: percent-encoded outside printable
/// ASCII, and `%` itself (the gRPC HTTP/2 spec's rule).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The body of a `grpc.health.v1.Health/Check` call: one uncompressed
/// message, `HealthCheckRequest { service = 1: string }` (the field left
/// out when `service` is empty, as protobuf encodes a default).
pub fn health_request(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0); // not compressed
    framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    framed.put_slice(&message);
    framed.freeze()
}

fn put_varint(buf: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        buf.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// Whether a health check's response body says SERVING: its first
/// message is uncompressed, whole, and its field 1 (`status`) is 1. A
/// missing field is UNKNOWN (0), which is not serving.
pub fn health_serving(body: &[u8]) -> bool {
    let Some((&0, rest)) = body.split_first() else {
        return false;
    };
    let Some((len, rest)) = rest.split_first_chunk::<4>() else {
        return false;
    };
    let len = u32::from_be_bytes(*len) as usize;
    let Some(mut message) = rest.get(..len) else {
        return false;
    };
    let mut status = 0;
    while !message.is_empty() {
        let Some(key) = varint(&mut message) else {
            return false;
        };
        let (field, wire) = (key >> 3, key & 7);
        let skipped = match wire {
            0 => match varint(&mut message) {
                Some(v) if field == 1 => {
                    status = v;
                    Some(())
                }
                Some(_) => Some(()),
                None => None,
            },
            1 => skip(&mut message, 8),
            2 => varint(&mut message).and_then(|n| skip(&mut message, n as usize)),
            5 => skip(&mut message, 4),
            _ => None,
        };
        if skipped.is_none() {
            return false;
        }
    }
    status == SERVING
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(n);
        }
    }
    None
}

fn skip(buf: &mut &[u8], n: usize) -> Option<()> {
    *buf = buf.get(n..)?;
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, http::HeaderValue::from_static(value));
        h
    }

    #[test]
    fn grpc_content_types_are_told_apart() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc-web",
            "Application/GRPC",
        ] {
            assert!(is_grpc(&headers("content-type", ct)), "{ct}");
        }
        for ct in ["application/json", "application/gr", "text/plain"] {
            assert!(!is_grpc(&headers("content-type", ct)), "{ct}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeout_units() {
        let t = |v: &'static str| timeout(&headers("grpc-timeout", v));
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("250000u"), Some(Duration::from_millis(250)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1M"), Some(Duration::from_secs(60)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "10x", "1.5S", "-1S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("No healthy backends"), "No healthy backends");
        assert_eq!(percent_encode("100% é\n"), "100%25 %C3%A9%0A");
    }

    #[test]
    fn health_request_encodes_the_service() {
        assert_eq!(&health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &health_request("a.B")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
    }

    #[test]
    fn health_responses_decode() {
        assert!(health_serving(&[0, 0, 0, 0, 2, 0x08, 1]));
        // NOT_SERVING, UNKNOWN (field absent), compressed, truncated.
        assert!(!health_serving(&[0, 0, 0, 0, 2, 0x08, 2]));
        assert!(!health_serving(&[0, 0, 0, 0, 0]));
        assert!(!health_serving(&[1, 0, 0, 0, 2, 0x08, 1]));
        assert!(!health_serving(&[0, 0, 0, 0, 3, 0x08, 1]));
        assert!(!health_serving(&[]));
        // An unknown field before the status is skipped.
        assert!(health_serving(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1]));
    }
}
