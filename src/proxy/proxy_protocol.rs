//! The PROXY protocol (v1 text, v2 binary) on incoming connections.
//!
//! With `server.proxy_protocol: true` tollgate sits behind a TCP balancer
//! (haproxy `send-proxy`, AWS NLB, ...) that opens every connection with
//! a header naming the client it relays. That client's address then
//! stands in for the TCP peer everywhere: limits, `X-Forwarded-For`, logs.
//!
//! A header is believed only from a peer in `rate_limit.trusted_proxies`;
//! anyone else could name any address and pick their own bucket. A
//! connection from an untrusted peer, or without a well-formed header
//! within `server.header_read_timeout`, is closed without an answer:
//! answering would mean guessing what protocol the peer speaks.
//!
//! Exactly the header is taken from the socket. The start of the request
//! (an HTTP/1.1 request line, an h2c preface or, later, a TLS
//! ClientHello) often arrives in the same segment, and whoever reads the
//! connection next must find it there. So bytes are peeked, and only
//! those known to belong to the header are read: a v2 header says its
//! length in its first 16 bytes; a v1 header ends at its first `\n`.
//! Header parsing itself is left to the `ppp` crate.

use std::net::{IpAddr, SocketAddr};
use tokio::time::Instant;

use ipnet::IpNet;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::identity;
use crate::telemetry::{self, Throttle};

/// Longest v1 header the protocol allows
/// (`PROXY TCP6 <39> <39> 65535 65535\r\n` and then some).
const V1_MAX: usize = 107;
/// What every v1 header starts with.
const V1_PREFIX: &[u8] = b"PROXY ";
/// What every v2 header starts with.
const V2_SIGNATURE: &[u8] = ppp::v2::PROTOCOL_PREFIX;
/// The part of a v2 header before its variable part: signature, version
/// and command, family and protocol, length.
const V2_FIXED: usize = 16;

/// Why a connection was closed before its first request.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The peer is not in `rate_limit.trusted_proxies`.
    #[error("the peer {0} is not in rate_limit.trusted_proxies")]
    Untrusted(IpAddr),
    /// The connection does not start with a PROXY signature (a client
    /// talking straight to tollgate, a balancer not configured to send
    /// the header), or closed before its first byte.
    #[error("the connection does not start with a PROXY header")]
    Missing,
    /// A v1 header `ppp` refuses.
    #[error("malformed PROXY v1 header")]
    MalformedV1(#[source] ppp::v1::BinaryParseError),
    /// A v2 header `ppp` refuses.
    #[error("malformed PROXY v2 header")]
    MalformedV2(#[source] ppp::v2::ParseError),
    /// A v1 header with no line end within the longest allowed length.
    #[error("PROXY v1 header without a line end in its first {V1_MAX} bytes")]
    TooLong,
    /// The peer closed the connection inside the header.
    #[error("the connection closed inside the PROXY header")]
    Truncated,
    /// Reading the header failed (a reset, most often).
    #[error("reading the PROXY header failed")]
    Read(#[source] std::io::Error),
    /// No complete header within `server.header_read_timeout`.
    #[error("no complete PROXY header within server.header_read_timeout")]
    Timeout,
}

impl Refused {
    /// The `reason` label of `tollgate_proxy_protocol_refused_total`:
    /// `untrusted`, `missing`, `malformed` (a connection that ends inside
    /// the header included) or `timeout`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Untrusted(_) => "untrusted",
            Self::Missing => "missing",
            Self::MalformedV1(_)
            | Self::MalformedV2(_)
            | Self::TooLong
            | Self::Truncated
            | Self::Read(_) => "malformed",
            Self::Timeout => "timeout",
        }
    }
}

/// Untrusted peers sending to a PROXY listener, logged once per burst:
/// usually a `rate_limit.trusted_proxies` that misses the balancer.
static UNTRUSTED: Throttle = Throttle::new();

/// Reads PROXY headers from the peers it trusts.
#[derive(Debug, Clone)]
pub struct ProxyProtocol {
    trusted: Vec<IpNet>,
}

impl ProxyProtocol {
    /// Believes headers from peers in `trusted`.
    pub fn new(trusted: Vec<IpNet>) -> Self {
        Self { trusted }
    }

    /// Takes the header off `stream` and returns the client it names
    /// (and `true`), or `peer` itself for a header that names none (v1
    /// `UNKNOWN`, v2 `LOCAL`: the balancer's own health checks) and
    /// `false`: that peer speaks for itself only, its requests'
    /// `X-Forwarded-For` is not read ([`super::Conn::forwarded_for`]). `None`: the
    /// connection is refused, counted and logged, and must be dropped
    /// without an answer. The header must be complete by `deadline`, the
    /// same one the request head after it has (`server.header_read_timeout`
    /// from the accept), so the header does not add time of its own.
    pub(crate) async fn accept(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        deadline: Instant,
        metrics: &telemetry::Metrics,
    ) -> Option<(SocketAddr, bool)> {
        match self.client_addr(stream, peer, deadline).await {
            Ok(client) => Some(client),
            Err(refused) => {
                metrics.proxy_protocol_refused(refused.reason());
                note_refused(&refused, peer);
                None
            }
        }
    }

    async fn client_addr(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        deadline: Instant,
    ) -> Result<(SocketAddr, bool), Refused> {
        // Checked before reading anything: an untrusted peer gets no
        // chance to make tollgate parse its bytes.
        if !identity::is_in(&self.trusted, peer.ip()) {
            return Err(Refused::Untrusted(peer.ip()));
        }
        match tokio::time::timeout_at(deadline, read_header(stream)).await {
            Ok(named) => Ok(named?.map_or((peer, false), |client| (client, true))),
            Err(_) => Err(Refused::Timeout),
        }
    }
}

fn note_refused(refused: &Refused, peer: SocketAddr) {
    let cause = std::error::Error::source(refused).map(ToString::to_string);
    tracing::debug!(%peer, reason = refused.reason(), error = %refused, ?cause,
        "connection closed: PROXY protocol");
    if let Refused::Untrusted(ip) = refused {
        UNTRUSTED.note(|times| {
            tracing::warn!(
                peer = %ip,
                times,
                "server.proxy_protocol is on and connections came from peers outside \
                 rate_limit.trusted_proxies; they were closed"
            );
        });
    }
}

/// Which header the first bytes announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The version whose signature `seen` (non-empty) starts, or
/// [`Refused::Missing`] when it starts neither.
fn version(seen: &[u8]) -> Result<Version, Refused> {
    let starts = |signature: &[u8]| {
        let n = seen.len().min(signature.len());
        seen[..n] == signature[..n]
    };
    if starts(V1_PREFIX) {
        Ok(Version::V1)
    } else if starts(V2_SIGNATURE) {
        Ok(Version::V2)
    } else {
        Err(Refused::Missing)
    }
}

/// Reads one header, and not a byte more, from `stream`; the address it
/// names, if any.
///
/// Peeking does not wait for new bytes while unread ones are there, so
/// bytes seen to belong to the header are read off at once: the next peek
/// then waits for the rest instead of spinning on a header that arrives
/// in pieces.
async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, Refused> {
    let mut head = [0u8; V1_MAX];
    let mut have = 0;
    loop {
        let n = stream.peek(&mut head[have..]).await.map_err(read_error)?;
        if n == 0 {
            return Err(if have == 0 {
                Refused::Missing
            } else {
                Refused::Truncated
            });
        }
        let seen = have + n;
        let take = match version(&head[..seen])? {
            Version::V1 => match head[have..seen].iter().position(|&b| b == b'\n') {
                Some(at) => {
                    let end = have + at + 1;
                    stream
                        .read_exact(&mut head[have..end])
                        .await
                        .map_err(read_error)?;
                    return parse_v1(&head[..end]);
                }
                None if seen >= V1_MAX => return Err(Refused::TooLong),
                None => seen,
            },
            Version::V2 if seen >= V2_FIXED => {
                stream
                    .read_exact(&mut head[have..V2_FIXED])
                    .await
                    .map_err(read_error)?;
                let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
                let mut whole = vec![0u8; V2_FIXED + len];
                whole[..V2_FIXED].copy_from_slice(&head[..V2_FIXED]);
                stream
                    .read_exact(&mut whole[V2_FIXED..])
                    .await
                    .map_err(read_error)?;
                return parse_v2(&whole);
            }
            Version::V2 => seen,
        };
        // Everything seen is header and there is more to come.
        stream
            .read_exact(&mut head[have..take])
            .await
            .map_err(read_error)?;
        have = take;
    }
}

fn read_error(e: std::io::Error) -> Refused {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Refused::Truncated
    } else {
        Refused::Read(e)
    }
}

fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, Refused> {
    use ppp::v1::{Addresses, Header};
    let header = Header::try_from(line).map_err(Refused::MalformedV1)?;
    Ok(match header.addresses {
        Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        Addresses::Unknown => None,
    })
}

fn parse_v2(bytes: &[u8]) -> Result<Option<SocketAddr>, Refused> {
    use ppp::v2::{Addresses, Command, Header};
    let header = Header::try_from(bytes).map_err(Refused::MalformedV2)?;
    if header.command == Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        Addresses::IPv6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        // No IP to give (unix sockets, or unspecified): the balancer
        // itself is the client, as with LOCAL.
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair on loopback: (the client's end, the server's end).
    async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        (client, server, peer)
    }

    fn loopback_trusted() -> ProxyProtocol {
        ProxyProtocol::new(vec!["127.0.0.0/8".parse().expect("cidr")])
    }

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x20 | command);
        b.push(family);
        b.extend_from_slice(&u16::try_from(addresses.len()).expect("len").to_be_bytes());
        b.extend_from_slice(addresses);
        b
    }

    /// Sends `chunks` one write each, then reads the header; the address
    /// found and the bytes left in the socket.
    async fn run(pp: &ProxyProtocol, chunks: &[&[u8]]) -> (Result<SocketAddr, Refused>, Vec<u8>) {
        let (mut client, mut server, peer) = pair().await;
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for c in chunks {
                client.write_all(&c).await.expect("write");
                client.flush().await.expect("flush");
                tokio::task::yield_now().await;
            }
            client.shutdown().await.expect("shutdown");
            client
        });
        let found = pp
            .client_addr(&mut server, peer, Instant::now() + Duration::from_secs(5))
            .await
            .map(|(client, _named)| client);
        let mut rest = Vec::new();
        let _client = writer.await.expect("writer");
        if found.is_ok() {
            server.read_to_end(&mut rest).await.expect("rest");
        }
        (found, rest)
    }

    #[tokio::test]
    async fn v1_tcp4_names_the_client_and_leaves_the_request() {
        let (found, rest) = run(
            &loopback_trusted(),
            &[b"PROXY TCP4 198.51.100.7 10.0.0.1 51234 80\r\nGET / HTTP/1.1\r\n\r\n"],
        )
        .await;
        assert_eq!(
            found.expect("accepted"),
            "198.51.100.7:51234".parse().expect("addr")
        );
        assert_eq!(rest, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn headers_split_across_writes_are_read_whole() {
        let (found, rest) = run(
            &loopback_trusted(),
            &[
                b"PRO",
                b"XY TCP6 2001:db8::7 2001:db8::1 ",
                b"1 2\r",
                b"\nGET",
            ],
        )
        .await;
        assert_eq!(
            found.expect("accepted"),
            "[2001:db8::7]:1".parse().expect("addr")
        );
        assert_eq!(rest, b"GET");

        let mut addresses = vec![192, 0, 2, 9, 10, 0, 0, 1];
        addresses.extend_from_slice(&[0x1f, 0x90, 0, 80]);
        let header = v2(1, 0x11, &addresses);
        let (found, rest) = run(
            &loopback_trusted(),
            &[
                &header[..5],
                &header[5..15],
                &header[15..17],
                &header[17..],
                b"PRI",
            ],
        )
        .await;
        assert_eq!(
            found.expect("accepted"),
            "192.0.2.9:8080".parse().expect("addr")
        );
        assert_eq!(rest, b"PRI");
    }

    #[tokio::test]
    async fn headers_naming_no_client_keep_the_peer() {
        let (found, rest) = run(&loopback_trusted(), &[b"PROXY UNKNOWN\r\nX"]).await;
        assert!(found.expect("accepted").ip().is_loopback());
        assert_eq!(rest, b"X");
        let (found, rest) = run(&loopback_trusted(), &[&v2(0, 0x00, &[]), b"Y"]).await;
        assert!(found.expect("accepted").ip().is_loopback());
        assert_eq!(rest, b"Y");
    }

    #[tokio::test]
    async fn bad_connections_are_refused_with_their_reason() {
        let pp = loopback_trusted();
        let cases: [(&[u8], &str); 7] = [
            (b"GET / HTTP/1.1\r\n\r\n", "missing"),
            (b"", "missing"),
            (b"PROXY TCP4 1.2.3.4 nonsense\r\n", "malformed"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", "malformed"),
            (b"POST / HTTP/1.1\r\n\r\n", "missing"),
            (&b"PROXY UNKNOWN ".repeat(10), "malformed"),
            (&v2(1, 0x11, &[1, 2, 3]), "malformed"),
        ];
        for (bytes, reason) in cases {
            let (found, _) = run(&pp, &[bytes]).await;
            let refused = found.expect_err("refused");
            assert_eq!(refused.reason(), reason, "{bytes:?}: {refused}");
        }
        let untrusted = ProxyProtocol::new(vec!["10.0.0.0/8".parse().expect("cidr")]);
        let (found, _) = run(&untrusted, &[b"PROXY UNKNOWN\r\n"]).await;
        assert_eq!(found.expect_err("refused").reason(), "untrusted");
    }

    #[tokio::test]
    async fn a_header_that_never_completes_times_out() {
        let pp = loopback_trusted();
        let (mut client, mut server, peer) = pair().await;
        client.write_all(b"PROXY TCP4 ").await.expect("write");
        let refused = pp
            .client_addr(
                &mut server,
                peer,
                Instant::now() + Duration::from_millis(100),
            )
            .await
            .expect_err("refused");
        assert_eq!(refused.reason(), "timeout");
    }
}
