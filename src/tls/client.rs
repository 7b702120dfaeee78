//! Verifying `https://` backends: the roots (system + `proxy.ca_file`)
//! and one rustls client configuration shared by the proxy and the health
//! checks.
//!
//! One configuration for both, so a backend the health checks accept is a
//! backend the proxy can reach, and the reverse. It is built once at start:
//! reading the system store and parsing a CA bundle per connection would
//! cost more than the handshake.
//!
//! This module takes a path, not the config, so that `config` can use
//! [`check_ca_file`] to check `proxy.ca_file` without a module cycle.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Largest `proxy.ca_file` read. The full Mozilla bundle is about 220 KB;
/// the cap keeps a path such as `/dev/zero` from eating memory.
const MAX_CA_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Why the roots or the client configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// The CA file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// `proxy.ca_file`.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA file is larger than any CA bundle.
    #[error("{} is larger than {MAX_CA_FILE_BYTES} bytes: not a CA bundle", path.display())]
    TooLarge {
        /// `proxy.ca_file`.
        path: PathBuf,
    },
    /// A PEM section in the CA file is malformed.
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        /// `proxy.ca_file`.
        path: PathBuf,
        /// What the PEM parser said.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The CA file holds no `CERTIFICATE` section (a key, or nothing).
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate {
        /// `proxy.ca_file`.
        path: PathBuf,
    },
    /// A certificate in the CA file cannot be a trust anchor.
    #[error("certificate {index} of {} cannot be used as a CA: {source}", path.display())]
    BadCertificate {
        /// `proxy.ca_file`.
        path: PathBuf,
        /// Its position in the file, from 1.
        index: usize,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// There are `https://` backends but no root at all to verify them
    /// with: every connection to them would fail.
    #[error(
        "no CA certificate to verify https:// backends with: the system store is empty or \
         missing and proxy.ca_file is not set"
    )]
    NoRoots,
    /// rustls refused the configuration (protocol versions of the provider).
    #[error("TLS client configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// Every certificate in a PEM CA bundle, in file order. Other sections
/// (keys, CRLs) are skipped; a file with no certificate at all is an
/// error, since pointing `proxy.ca_file` at it is surely a mistake.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientTlsError> {
    let read_error = |source| ClientTlsError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(ClientTlsError::TooLarge {
            path: path.to_owned(),
        });
    }
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ClientTlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(ClientTlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The CA certificates in `path` as a root store, each checked to be
/// usable as a trust anchor.
fn ca_file_roots(path: &Path) -> Result<RootCertStore, ClientTlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in read_ca_file(path)?.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|source| ClientTlsError::BadCertificate {
                path: path.to_owned(),
                index: i + 1,
                source,
            })?;
    }
    Ok(roots)
}

/// Checks `proxy.ca_file` as start-up would use it: readable, PEM, at
/// least one certificate, each one usable as a CA.
pub fn check_ca_file(path: &Path) -> Result<usize, ClientTlsError> {
    ca_file_roots(path).map(|roots| roots.len())
}

/// The client configuration for `https://` backends: the system roots
/// plus every certificate in `ca_file`, the ring provider, TLS 1.2 and
/// 1.3, ALPN `http/1.1` (backends are spoken to in HTTP/1.1).
///
/// `https_backends` says whether any backend needs it: only then is an
/// empty root store an error. A missing system store alone is not one
/// (slim container images have none; `ca_file` may be all that is meant
/// to be trusted).
pub fn backend_client_config(
    ca_file: Option<&Path>,
    https_backends: bool,
) -> Result<Arc<ClientConfig>, ClientTlsError> {
    let mut roots = match ca_file {
        Some(path) => ca_file_roots(path)?,
        None => RootCertStore::empty(),
    };
    let from_ca_file = roots.len();
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        tracing::debug!(error = %e, "system CA store: not all of it could be read");
    }
    // A system store holds the odd certificate webpki cannot use (old
    // versions, unusual encodings); skipping those is what browsers do.
    let (system_added, system_skipped) = roots.add_parsable_certificates(system.certs);
    if https_backends {
        tracing::info!(
            system = system_added,
            system_skipped,
            ca_file = from_ca_file,
            path = ca_file.map(|p| tracing::field::display(p.display())),
            "CA certificates for https:// backends"
        );
    } else {
        tracing::debug!(
            system = system_added,
            system_skipped,
            ca_file = from_ca_file,
            "CA certificates for https:// backends (none configured)"
        );
    }
    if https_backends && roots.is_empty() {
        return Err(ClientTlsError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ClientTlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
