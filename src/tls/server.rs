//! Terminating TLS from clients: certificates by SNI, reloaded on
//! demand, protocol versions and ALPN as configured.
//!
//! The certificate set lives behind an [`ArcSwap`]: a handshake takes the
//! set that is current when its ClientHello arrives, so a reload changes
//! what new handshakes get and leaves open connections alone (their keys
//! were agreed already). A reload reads every file first and swaps only
//! if all of them are usable; one broken file keeps the whole old set.
//!
//! This module knows nothing of `config.yaml`: the config turns its
//! `server.tls` section into [`TlsSettings`] (and reports [`CertError`]s
//! on their field), so `config` depends on this module and not the other
//! way round.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Largest certificate or key file read: a chain of a few certificates is
/// a few KB; a path pointing at something huge by mistake must not be
/// read whole.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// One certificate chain and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePaths {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// The lowest TLS version accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// An application protocol offered by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2 (`h2`).
    H2,
    /// HTTP/1.1 (`http/1.1`).
    Http11,
}

impl Alpn {
    /// The protocol's ALPN identifier.
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http11 => b"http/1.1",
        }
    }
}

/// The ALPN identifier of HTTP/3 (RFC 9114 §3.1).
pub const ALPN_H3: &[u8] = b"h3";

/// How the TLS listener terminates TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The first is the default (no SNI, or a name no certificate has).
    pub certificates: Vec<CertificatePaths>,
    /// Lowest version accepted.
    pub min_version: MinVersion,
    /// Protocols offered, in order of preference; empty: no ALPN
    /// (HTTP/1.1).
    pub alpn: Vec<Alpn>,
}

/// Which of a pair's two files a [`CertError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFile {
    /// The certificate chain.
    Cert,
    /// The private key (a key that does not match its certificate counts
    /// as the key's problem).
    Key,
}

/// Why a certificate chain and key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// No certificate was configured.
    #[error("at least one certificate is required")]
    NoCertificates,
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
        /// Which of the pair it is.
        file: PairFile,
    },
    /// A file is larger than any certificate or key file.
    #[error("{}: larger than {MAX_PEM_BYTES} bytes, not a certificate or key file", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Which of the pair it is.
        file: PairFile,
    },
    /// The certificate file is not PEM or holds no certificate.
    #[error("{}: no PEM certificate in it: {source}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The leaf certificate is not a valid X.509 certificate.
    #[error("{}: the first certificate cannot be parsed: {source}", path.display())]
    BadLeaf {
        /// The file.
        path: PathBuf,
        /// What the X.509 parser said.
        #[source]
        source: webpki::Error,
    },
    /// The first certificate is a CA's (`basicConstraints: CA:true`):
    /// clients refuse it as a server's.
    #[error(
        "{}: the first certificate is a CA certificate (basicConstraints CA:true), \
         not a server's: list the server's certificate first, then its chain",
        path.display()
    )]
    CaCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file is not PEM or holds no private key.
    #[error("{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {source}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The key is of a kind rustls cannot sign with.
    #[error("{}: unsupported private key: {source}", path.display())]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The key is not the certificate's.
    #[error("{} is not the key of {}: {source}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The TLS configuration could not be built (protocol versions).
    #[error("TLS settings: {0}")]
    Settings(#[source] rustls::Error),
}

impl CertError {
    /// Which file of its pair the problem is in, if it is about one.
    pub fn file(&self) -> Option<PairFile> {
        match self {
            CertError::Read { file, .. } | CertError::TooLarge { file, .. } => Some(*file),
            CertError::BadCertificate { .. }
            | CertError::BadLeaf { .. }
            | CertError::CaCertificate { .. } => Some(PairFile::Cert),
            CertError::BadKey { .. }
            | CertError::UnsupportedKey { .. }
            | CertError::Mismatch { .. } => Some(PairFile::Key),
            CertError::NoCertificates | CertError::Settings(_) => None,
        }
    }
}

/// The crypto provider of every server configuration: ring, passed
/// explicitly rather than installed process-wide (see [`super`]).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_capped(path: &Path, file: PairFile) -> Result<Vec<u8>, CertError> {
    let read_error = |source| CertError::Read {
        path: path.to_owned(),
        source,
        file,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(CertError::TooLarge {
            path: path.to_owned(),
            file,
        });
    }
    Ok(bytes)
}

/// One loaded chain and key, with the DNS names its leaf is valid for.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Lower-case names from the leaf's subjectAltName; a wildcard keeps
    /// its `*.`.
    names: Vec<String>,
}

/// Reads and checks one pair: the chain parses, the key loads, and the
/// key is the leaf's.
fn load_pair(paths: &CertificatePaths, provider: &CryptoProvider) -> Result<Loaded, CertError> {
    let cert_pem = read_capped(&paths.cert, PairFile::Cert)?;
    let key_pem = read_capped(&paths.key, PairFile::Key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .and_then(|chain| {
            if chain.is_empty() {
                Err(rustls_pki_types::pem::Error::NoItemsFound)
            } else {
                Ok(chain)
            }
        })
        .map_err(|source| CertError::BadCertificate {
            path: paths.cert.clone(),
            source,
        })?;
    let names = {
        let leaf =
            webpki::EndEntityCert::try_from(&chain[0]).map_err(|source| CertError::BadLeaf {
                path: paths.cert.clone(),
                source,
            })?;
        leaf.valid_dns_names()
            .map(str::to_ascii_lowercase)
            .collect()
    };
    if super::leaf::is_ca(&chain[0]) {
        return Err(CertError::CaCertificate {
            path: paths.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| CertError::BadKey {
        path: paths.key.clone(),
        source,
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| CertError::UnsupportedKey {
            path: paths.key.clone(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // ring's keys always know their public half; "unknown" would
        // mean a key whose match cannot be checked, which is not a
        // mismatch.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(source) => {
            return Err(CertError::Mismatch {
                cert: paths.cert.clone(),
                key: paths.key.clone(),
                source,
            })
        }
    }
    Ok(Loaded {
        key: Arc::new(certified),
        names,
    })
}

/// Checks one pair as a start would load it; for `tollgate check`.
pub fn check_pair(paths: &CertificatePaths) -> Result<(), CertError> {
    load_pair(paths, &provider()).map(|_| ())
}

/// The certificates of one moment: the default and the names that pick
/// the others.
#[derive(Debug)]
struct CertSet {
    /// In config order; the first is the default.
    keys: Vec<Arc<CertifiedKey>>,
    /// Exact DNS name to index in `keys`.
    exact: HashMap<String, usize>,
    /// `*.example.com` certificates by `example.com`.
    wildcard: HashMap<String, usize>,
}

impl CertSet {
    fn load(paths: &[CertificatePaths], provider: &CryptoProvider) -> Result<Self, CertError> {
        if paths.is_empty() {
            return Err(CertError::NoCertificates);
        }
        let mut set = CertSet {
            keys: Vec::with_capacity(paths.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (i, pair) in paths.iter().enumerate() {
            let loaded = load_pair(pair, provider)?;
            // The first certificate naming a name keeps it: config order
            // decides, as it does for the default.
            for name in loaded.names {
                match name.strip_prefix("*.") {
                    Some(parent) => set.wildcard.entry(parent.to_owned()).or_insert(i),
                    None => set.exact.entry(name).or_insert(i),
                };
            }
            set.keys.push(loaded.key);
        }
        Ok(set)
    }

    /// The certificate for `server_name`: an exact name, else a wildcard
    /// one label up, else the default.
    fn pick(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let index = server_name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).copied().or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent).copied()
            })
        });
        &self.keys[index.unwrap_or(0)]
    }
}

/// The certificates of the TLS listener, swapped whole on reload.
#[derive(Debug)]
pub struct Certificates {
    /// Changed by a reload whose config lists other files.
    paths: std::sync::Mutex<Vec<CertificatePaths>>,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertSet>,
}

impl Certificates {
    /// Reads every pair of `paths`.
    fn load(
        paths: Vec<CertificatePaths>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, CertError> {
        let set = CertSet::load(&paths, &provider)?;
        Ok(Self {
            paths: std::sync::Mutex::new(paths),
            provider,
            current: ArcSwap::from_pointee(set),
        })
    }

    /// Reads the files again; new handshakes get the new certificates.
    /// On any error the certificates in use stay, all of them.
    pub fn reload(&self) -> Result<Swapped, CertError> {
        let paths = self
            .paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let set = CertSet::load(&paths, &self.provider)?;
        Ok(self.swap(set))
    }

    /// Reads `paths` (a reloaded config's list) and serves them from now
    /// on, the first as the default; on any error the files and
    /// certificates in use stay.
    pub fn replace(&self, paths: Vec<CertificatePaths>) -> Result<Swapped, CertError> {
        let mut current = self
            .paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let set = CertSet::load(&paths, &self.provider)?;
        let swapped = self.swap(set);
        *current = paths;
        Ok(swapped)
    }

    fn swap(&self, set: CertSet) -> Swapped {
        let old = self.current.load();
        let changed = old.keys.len() != set.keys.len()
            || old
                .keys
                .iter()
                .zip(&set.keys)
                .any(|(a, b)| a.cert != b.cert);
        let served = set.keys.len();
        self.current.store(Arc::new(set));
        Swapped { served, changed }
    }
}

/// What a certificate reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swapped {
    /// Certificates served now.
    pub served: usize,
    /// Whether any of them differs from what was served before (a
    /// renewed file, another list): what a reload reports as applied.
    pub changed: bool,
}

impl Certificates {}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().pick(client_hello.server_name()).clone())
    }
}

/// What a TLS listener needs: the acceptor every connection's handshake
/// goes through, and the certificates a reload replaces.
#[derive(Clone)]
pub struct TlsTerminator {
    acceptor: TlsAcceptor,
    certificates: Arc<Certificates>,
}

impl std::fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTerminator")
            .field("certificates", &self.certificates)
            .finish_non_exhaustive()
    }
}

impl TlsTerminator {
    /// Loads the certificates and builds the server configuration.
    pub fn new(settings: &TlsSettings) -> Result<Self, CertError> {
        let provider = provider();
        let certificates = Arc::new(Certificates::load(
            settings.certificates.clone(),
            provider.clone(),
        )?);
        static TLS12_AND_13: [&SupportedProtocolVersion; 2] =
            [&rustls::version::TLS12, &rustls::version::TLS13];
        static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        let versions: &[&SupportedProtocolVersion] = match settings.min_version {
            MinVersion::Tls12 => &TLS12_AND_13,
            MinVersion::Tls13 => &TLS13_ONLY,
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(CertError::Settings)?
            .with_no_client_auth()
            .with_cert_resolver(certificates.clone());
        config.alpn_protocols = settings.alpn.iter().map(|p| p.id().to_vec()).collect();
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificates,
        })
    }

    /// The certificates, for reloading them.
    pub fn certificates(&self) -> &Arc<Certificates> {
        &self.certificates
    }

    /// The server configuration of the HTTP/3 listener: the same
    /// certificates (a reload reaches both listeners at once), TLS 1.3
    /// only as QUIC requires (RFC 9001 §4.2), ALPN `h3`.
    pub fn quic_config(&self) -> Result<ServerConfig, CertError> {
        let mut config = ServerConfig::builder_with_provider(self.certificates.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(CertError::Settings)?
            .with_no_client_auth()
            .with_cert_resolver(self.certificates.clone());
        config.alpn_protocols = vec![ALPN_H3.to_vec()];
        Ok(config)
    }

    /// Runs the handshake on `stream` until `deadline`. A failure is
    /// counted by reason and logged at debug: handshakes fail all the time
    /// on a public port (scanners, clients that do not trust the
    /// certificate), and a line per connection at warn would drown the
    /// log.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        deadline: Instant,
        metrics: &crate::telemetry::Metrics,
    ) -> Result<TlsStream<TcpStream>, HandshakeFailure> {
        // Counted before the connection is closed (the stream is dropped
        // at the end of this function), so a client that sees the close
        // also finds the failure in the metric.
        let accept = self.acceptor.accept(stream).into_fallible();
        tokio::pin!(accept);
        let failure = tokio::select! {
            accepted = &mut accept => match accepted {
                Ok(tls) => return Ok(tls),
                Err((e, _stream)) => {
                    let failure = HandshakeFailure::from_io(&e);
                    metrics.tls_handshake_failure(failure.as_str());
                    return Err(failure);
                }
            },
            () = tokio::time::sleep_until(deadline) => HandshakeFailure::Timeout,
        };
        metrics.tls_handshake_failure(failure.as_str());
        Err(failure)
    }
}

/// Whether a handshake chose HTTP/2 by ALPN.
pub fn negotiated_h2(stream: &TlsStream<TcpStream>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(Alpn::H2.id())
}

/// Why a handshake failed: the `reason` label of
/// `tollgate_tls_handshake_failures_total`, a small fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not finished within `server.header_read_timeout`.
    Timeout,
    /// The client closed or reset the connection.
    Closed,
    /// What arrived is not TLS (plain HTTP on the TLS port, a scanner).
    NotTls,
    /// No protocol version, cipher suite or key exchange in common (a
    /// TLS 1.2 client with `min_version: "1.3"`).
    ProtocolVersion,
    /// The client offered ALPN protocols and none of ours.
    NoApplicationProtocol,
    /// The client refused the certificate (an alert about it).
    CertificateRejected,
    /// Anything else.
    Other,
}

impl HandshakeFailure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::ProtocolVersion => "protocol_version",
            HandshakeFailure::NoApplicationProtocol => "no_application_protocol",
            HandshakeFailure::CertificateRejected => "certificate_rejected",
            HandshakeFailure::Other => "other",
        }
    }

    /// Sorts an error of tokio-rustls' accept: rustls' own errors come
    /// wrapped in the `io::Error`.
    fn from_io(e: &std::io::Error) -> Self {
        use rustls::{AlertDescription as A, Error as E};
        let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) else {
            return match e.kind() {
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe => HandshakeFailure::Closed,
                _ => HandshakeFailure::Other,
            };
        };
        let failure = match tls {
            E::InvalidMessage(_) => HandshakeFailure::NotTls,
            E::PeerIncompatible(_) => HandshakeFailure::ProtocolVersion,
            E::NoApplicationProtocol => HandshakeFailure::NoApplicationProtocol,
            E::AlertReceived(
                A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA,
            ) => HandshakeFailure::CertificateRejected,
            E::AlertReceived(A::ProtocolVersion | A::HandshakeFailure) => {
                HandshakeFailure::ProtocolVersion
            }
            _ => HandshakeFailure::Other,
        };
        tracing::debug!(error = %tls, reason = failure.as_str(), "TLS handshake failed");
        failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_with(names: &[&[&str]]) -> CertSet {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths: Vec<CertificatePaths> = names
            .iter()
            .enumerate()
            .map(|(i, names)| {
                let key =
                    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
                let params = rcgen::CertificateParams::new(
                    names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
                )
                .expect("params");
                let cert = params.self_signed(&key).expect("cert");
                let paths = CertificatePaths {
                    cert: dir.path().join(format!("{i}.pem")),
                    key: dir.path().join(format!("{i}.key")),
                };
                std::fs::write(&paths.cert, cert.pem()).expect("write");
                std::fs::write(&paths.key, key.serialize_pem()).expect("write");
                paths
            })
            .collect();
        CertSet::load(&paths, &provider()).expect("loads")
    }

    fn index(set: &CertSet, name: Option<&str>) -> usize {
        let picked = set.pick(name);
        set.keys
            .iter()
            .position(|k| Arc::ptr_eq(k, picked))
            .expect("one of the set")
    }

    #[test]
    fn names_pick_certificates_exactly_then_by_wildcard_then_default() {
        let set = set_with(&[
            &["default.test"],
            &["a.test", "*.wild.test"],
            &["exact.wild.test", "a.test"],
        ]);
        assert_eq!(index(&set, None), 0);
        assert_eq!(index(&set, Some("default.test")), 0);
        assert_eq!(index(&set, Some("unknown.test")), 0);
        assert_eq!(index(&set, Some("a.test")), 1, "first one naming it");
        assert_eq!(index(&set, Some("A.Test.")), 1, "case and root dot");
        assert_eq!(index(&set, Some("x.wild.test")), 1);
        assert_eq!(index(&set, Some("exact.wild.test")), 2, "exact beats *");
        assert_eq!(index(&set, Some("wild.test")), 0, "* needs a label");
        assert_eq!(index(&set, Some("a.b.wild.test")), 0, "* is one label");
    }
}
