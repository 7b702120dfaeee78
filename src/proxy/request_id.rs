//! `X-Request-Id`: one id per request, the same in the backend's request,
//! the client's response and the access log line, so the three can be
//! matched up.
//!
//! A client's own id is kept when it is one header of visible ASCII of at
//! most [`MAX_LEN`] bytes (an id that is logged and passed on must not be
//! able to break a log line or a header); otherwise tollgate makes one:
//! 128 random bits in hex from a per-thread generator, seeded once from the
//! OS, so no request pays a system call for it. The ids are unique, not
//! secret: a seeded generator is enough.

use std::cell::RefCell;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client id kept.
pub const MAX_LEN: usize = 200;

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// The request's id: the client's if it sent one acceptable
/// `X-Request-Id`, else a new one. The header is left holding exactly
/// that one value.
pub fn settle(headers: &mut HeaderMap) -> HeaderValue {
    let mut sent = headers.get_all(&X_REQUEST_ID).iter();
    let kept = match (sent.next(), sent.next()) {
        (Some(v), None) if acceptable(v) => Some(v.clone()),
        _ => None,
    };
    let id = kept.unwrap_or_else(generate);
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|c| c.is_ascii_graphic())
}

/// 32 lowercase hex digits.
pub fn generate() -> HeaderValue {
    let bits: u128 = RNG.with(|rng| rng.borrow_mut().random());
    let mut hex = [0u8; 32];
    for (i, digit) in hex.iter_mut().enumerate() {
        let nibble = (bits >> (124 - 4 * i)) & 0xf;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(values: &[&[u8]]) -> (HeaderValue, HeaderMap) {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                X_REQUEST_ID.clone(),
                HeaderValue::from_bytes(v).expect("value"),
            );
        }
        let id = settle(&mut h);
        (id, h)
    }

    #[test]
    fn a_good_client_id_is_kept() {
        let (id, h) = settled(&[b"abc-123_/=:"]);
        assert_eq!(id, "abc-123_/=:");
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().count(), 1);
    }

    #[test]
    fn bad_or_missing_ids_are_replaced_by_a_new_one() {
        let long = vec![b'a'; MAX_LEN + 1];
        let max = vec![b'a'; MAX_LEN];
        assert_eq!(settled(&[&max]).0.as_bytes(), &max[..]);
        let cases: [&[&[u8]]; 6] = [
            &[],
            &[b"has space"],
            &[b"tab\there"],
            &[b"\xc3\xa9"],
            &[&long],
            &[b"a", b"b"],
        ];
        for bad in cases {
            let (id, h) = settled(bad);
            assert_eq!(id.len(), 32, "{bad:?}");
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{bad:?}");
            assert_eq!(h.get_all(&X_REQUEST_ID).iter().collect::<Vec<_>>(), [&id]);
        }
    }

    #[test]
    fn new_ids_differ() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
