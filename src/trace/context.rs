//! W3C trace context (`traceparent`, `tracestate`): reading what a
//! trusted peer sent, making fresh ids, and writing the header a backend
//! gets.
//!
//! This part works without OpenTelemetry: every request is given a trace
//! context and every attempt a span id, so backends can join the trace
//! also when `telemetry.otlp` is off. The parser follows the W3C Trace
//! Context rules (lowercase hex, all-zero ids invalid, version `ff`
//! invalid, a future version read by its first four fields); anything
//! else is treated as absent, which starts a new trace, as the
//! specification asks of a receiver.

use std::cell::RefCell;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest `tracestate` passed on: the specification's 32 members of at
/// most 256 bytes would allow more, but asks that at least 512 bytes be
/// propagated; a longer one is dropped rather than cut in a member.
pub const MAX_TRACESTATE: usize = 512;

/// The `sampled` bit of the trace flags.
pub const SAMPLED: u8 = 0x01;

thread_local! {
    // Ids are unique, not secret: a per-thread generator seeded once from
    // the OS is enough and costs no system call per request.
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// The trace a request belongs to, as a peer named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// 16 bytes, not all zero.
    pub trace_id: [u8; 16],
    /// The caller's span, which becomes the parent of ours.
    pub parent_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
    /// The vendors' `tracestate`, passed on as it came.
    pub state: Option<HeaderValue>,
}

impl Incoming {
    /// The trace context in `headers`, if there is exactly one valid
    /// `traceparent`. Several `tracestate` lines are one list (joined by
    /// commas); one longer than [`MAX_TRACESTATE`] or not text is dropped.
    pub fn read(headers: &HeaderMap) -> Option<Self> {
        let mut parents = headers.get_all(&TRACEPARENT).iter();
        let parent = match (parents.next(), parents.next()) {
            (Some(v), None) => v,
            _ => return None,
        };
        let (trace_id, parent_id, flags) = parse_traceparent(parent.as_bytes())?;
        Some(Self {
            trace_id,
            parent_id,
            flags,
            state: tracestate(headers),
        })
    }

    /// Whether the caller recorded its span (the sampled flag).
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// `version-traceid-parentid-flags`: returns the ids and flags.
fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    // Version 00 is exactly 55 bytes; a later version may add fields
    // after a `-`, and is read by the four we know.
    if v.len() < 55 || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut parent_id = [0u8; 8];
    for (i, b) in parent_id.iter_mut().enumerate() {
        *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&v[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some((trace_id, parent_id, flags))
}

/// Two lowercase hex digits (the specification refuses uppercase).
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut lines = headers.get_all(&TRACESTATE).iter();
    let first = lines.next()?;
    let joined = match lines.next() {
        None => first.clone(),
        Some(second) => {
            let mut all = first.as_bytes().to_vec();
            for v in std::iter::once(second).chain(lines) {
                all.push(b',');
                all.extend_from_slice(v.as_bytes());
            }
            HeaderValue::from_bytes(&all).ok()?
        }
    };
    let ok = joined.len() <= MAX_TRACESTATE && joined.to_str().is_ok();
    ok.then_some(joined)
}

/// A new trace id: 16 random bytes, never all zero.
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id: u128 = RNG.with(|rng| rng.borrow_mut().random());
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// A new span id: 8 random bytes, never all zero.
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id: u64 = RNG.with(|rng| rng.borrow_mut().random());
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// `00-{trace_id}-{span_id}-{flags}`: the header a backend gets, naming
/// the span of the attempt that reaches it as its parent.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> HeaderValue {
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    write_hex(&mut out[3..35], trace_id);
    out[35] = b'-';
    write_hex(&mut out[36..52], span_id);
    out[52] = b'-';
    write_hex(&mut out[53..55], &[flags]);
    // Hex digits and dashes are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// Takes `traceparent` and `tracestate` out of `headers`: the backend
/// gets the ones tollgate writes for the attempt, never the client's.
pub fn strip(headers: &mut HeaderMap) {
    headers.remove(&TRACEPARENT);
    headers.remove(&TRACESTATE);
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn read(values: &[(&HeaderName, &str)]) -> Option<Incoming> {
        let mut h = HeaderMap::new();
        for (name, v) in values {
            h.append((*name).clone(), HeaderValue::from_str(v).expect("value"));
        }
        Incoming::read(&h)
    }

    #[test]
    fn reads_a_valid_traceparent_and_writes_it_back_the_same() {
        let got = read(&[(&TRACEPARENT, GOOD)]).expect("valid");
        assert!(got.sampled());
        assert_eq!(got.state, None);
        let again = traceparent(&got.trace_id, &got.parent_id, got.flags);
        assert_eq!(again.to_str().expect("text"), GOOD);
    }

    #[test]
    fn refuses_what_the_specification_refuses() {
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // 00 with more
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",    // short
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // separator
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // not hex
        ] {
            assert_eq!(read(&[(&TRACEPARENT, bad)]), None, "{bad}");
        }
        // Two traceparents: which one is meant cannot be told.
        assert_eq!(read(&[(&TRACEPARENT, GOOD), (&TRACEPARENT, GOOD)]), None);
    }

    #[test]
    fn reads_a_later_version_by_the_fields_it_knows() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        let got = read(&[(&TRACEPARENT, later)]).expect("valid");
        assert!(!got.sampled());
        let with_junk = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00x";
        assert_eq!(read(&[(&TRACEPARENT, with_junk)]), None);
    }

    #[test]
    fn joins_tracestate_lines_and_drops_an_oversized_one() {
        let got = read(&[
            (&TRACEPARENT, GOOD),
            (&TRACESTATE, "a=1"),
            (&TRACESTATE, "b=2"),
        ])
        .expect("valid");
        assert_eq!(got.state, Some(HeaderValue::from_static("a=1,b=2")));
        let long = format!("a={}", "x".repeat(MAX_TRACESTATE));
        let got = read(&[(&TRACEPARENT, GOOD), (&TRACESTATE, &long)]).expect("valid");
        assert_eq!(got.state, None);
    }

    #[test]
    fn new_ids_are_never_zero_and_differ() {
        assert_ne!(new_trace_id(), [0; 16]);
        assert_ne!(new_span_id(), new_span_id());
    }
}
