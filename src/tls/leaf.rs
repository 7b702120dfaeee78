//! What a serving certificate says about itself that rustls does not
//! check for a server: whether it is a CA certificate
//! (`basicConstraints: CA:true`).
//!
//! A CA certificate listed first in `server.tls.certificates` (the chain
//! pasted in the wrong order, or the CA's file named instead of the
//! server's) loads with a matching key and serves, and every client
//! refuses the handshake. Refusing it at `check`, start and reload says
//! which file is wrong before any client sees it.
//!
//! Only the path to the extension is walked (DER: Certificate →
//! tbsCertificate → `[3]` extensions → the basicConstraints extension →
//! its `cA` flag); webpki has already parsed the certificate whole, so a
//! structure this walk does not find means "no such extension", never a
//! certificate it accepts that webpki refused.

/// DER of the OID 2.5.29.19 (basicConstraints), without tag and length.
const BASIC_CONSTRAINTS: [u8; 3] = [0x55, 0x1d, 0x13];

const SEQUENCE: u8 = 0x30;
const BOOLEAN: u8 = 0x01;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT`: the extensions of a v3 tbsCertificate.
const EXTENSIONS: u8 = 0xa3;

/// Whether the DER certificate `der` has `basicConstraints` with
/// `cA: TRUE`.
pub(crate) fn is_ca(der: &[u8]) -> bool {
    ca_flag(der).unwrap_or(false)
}

fn ca_flag(der: &[u8]) -> Option<bool> {
    let (tag, cert, _) = tlv(der)?;
    expect(tag, SEQUENCE)?;
    let (tag, mut tbs, _) = tlv(cert)?;
    expect(tag, SEQUENCE)?;
    while !tbs.is_empty() {
        let (tag, value, rest) = tlv(tbs)?;
        tbs = rest;
        if tag == EXTENSIONS {
            let (tag, mut list, _) = tlv(value)?;
            expect(tag, SEQUENCE)?;
            while !list.is_empty() {
                let (tag, extension, rest) = tlv(list)?;
                list = rest;
                expect(tag, SEQUENCE)?;
                if let Some(flag) = basic_constraints(extension) {
                    return Some(flag);
                }
            }
            return None;
        }
    }
    None
}

/// The `cA` flag of one extension, if it is basicConstraints.
fn basic_constraints(extension: &[u8]) -> Option<bool> {
    let (tag, oid, mut rest) = tlv(extension)?;
    if tag != OID || oid != BASIC_CONSTRAINTS {
        return None;
    }
    let (mut tag, mut value, after) = tlv(rest)?;
    if tag == BOOLEAN {
        // `critical`, then the value.
        rest = after;
        (tag, value, _) = tlv(rest)?;
    }
    expect(tag, OCTET_STRING)?;
    let (tag, constraints, _) = tlv(value)?;
    expect(tag, SEQUENCE)?;
    // `cA BOOLEAN DEFAULT FALSE`: absent is false.
    Some(match tlv(constraints) {
        Some((BOOLEAN, flag, _)) => flag.first().is_some_and(|&b| b != 0),
        _ => false,
    })
}

fn expect(tag: u8, want: u8) -> Option<()> {
    (tag == want).then_some(())
}

/// One DER element: its tag, its value and what follows it. Only the
/// one-byte tags and the length forms a certificate uses (up to 4 length
/// bytes).
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_lengths() {
        assert_eq!(
            tlv(&[0x04, 0x01, 0xaa, 0xbb]),
            Some((0x04, &[0xaa][..], &[0xbb][..]))
        );
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([0u8; 0x80]);
        assert_eq!(tlv(&long).map(|(_, v, _)| v.len()), Some(0x80));
        assert_eq!(tlv(&[0x04, 0x02, 0xaa]), None, "shorter than its length");
        assert_eq!(tlv(&[0x04, 0x80]), None, "indefinite length is not DER");
    }

    #[test]
    fn a_constraints_extension_without_the_flag_is_not_a_ca() {
        // basicConstraints, critical, value SEQUENCE {} (cA absent).
        let ext = [
            0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x02, 0x30, 0x00,
        ];
        assert_eq!(basic_constraints(&ext), Some(false));
        // cA TRUE, not critical.
        let ext = [
            0x06, 0x03, 0x55, 0x1d, 0x13, 0x04, 0x05, 0x30, 0x03, 0x01, 0x01, 0xff,
        ];
        assert_eq!(basic_constraints(&ext), Some(true));
        // Another extension (keyUsage).
        let ext = [0x06, 0x03, 0x55, 0x1d, 0x0f, 0x04, 0x00];
        assert_eq!(basic_constraints(&ext), None);
    }
}
