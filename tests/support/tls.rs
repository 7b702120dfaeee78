//! Certificates made at test time: a private CA and leaf certificates it
//! signs (ECDSA P-256), written as PEM files into a temporary directory, and
//! clients that trust that CA.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};

/// A private certificate authority and the directory its files go to.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// Where [`TestCa::issue`] and [`TestCa::ca_file`] write.
    pub dir: tempfile::TempDir,
}

/// A leaf certificate's files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The PEM chain (leaf only).
    pub cert: PathBuf,
    /// The PEM key (PKCS#8).
    pub key: PathBuf,
    /// The leaf certificate as DER, to compare with what a server presents.
    pub der: Vec<u8>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        Self {
            issuer,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `ca.pem` and returns its path.
    pub fn ca_file(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, self.ca_pem()).expect("write CA");
        path
    }

    /// Issues a leaf certificate for `names` (DNS names or IP addresses),
    /// written to `<file>.pem` and `<file>.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> CertFiles {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, file.to_owned());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let files = CertFiles {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// Issues an intermediate CA certificate (`basicConstraints: CA:true`)
    /// for `names`, written as [`TestCa::issue`] writes a leaf: what an
    /// operator lists by mistake as a server's certificate.
    pub fn issue_ca(&self, file: &str, names: &[&str]) -> CertFiles {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, file.to_owned());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("CA key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("CA certificate");
        let files = CertFiles {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// A reqwest client that trusts only this CA (HTTP/1.1 and h2 by ALPN).
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().expect("client")
    }

    /// A reqwest builder that trusts only this CA, for further settings.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let ca = reqwest::Certificate::from_pem(self.ca_pem().as_bytes()).expect("CA pem");
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
    }

    /// A TLS connection over `tcp` (which may already carry a PROXY
    /// header), verifying the server against this CA for `app.test`,
    /// offering ALPN `http/1.1`.
    pub async fn tls_over(&self, tcp: TcpStream) -> TlsStream<TcpStream> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = CertificateDer::from_pem_slice(self.ca_pem().as_bytes()).expect("CA pem");
        roots.add(ca_der).expect("root");
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from("app.test").expect("name");
        let handshake = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
        tokio::time::timeout(PATIENCE, handshake)
            .await
            .expect("handshake in time")
            .expect("handshake")
    }
}

/// Longest [`TestCa::tls_over`] and [`exchange`] wait.
const PATIENCE: Duration = Duration::from_secs(10);

/// Writes `request` on `stream` and returns everything read until the
/// server closes. The server may answer and close before it has read the
/// whole request (a write error is ignored), and what came before a close
/// without close_notify counts.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &[u8]) -> Vec<u8> {
    let _ = stream.write_all(request).await;
    let _ = stream.flush().await;
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut got))
        .await
        .expect("the server answered and closed")
        .ok();
    got
}
