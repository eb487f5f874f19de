//! A test certificate authority made in the test (rcgen, ring): a CA, and
//! server and client certificates it issues, as PEM text and files; and
//! HTTPS clients that trust it.

#![allow(
    clippy::expect_used,
    reason = "a test kit: a step that fails fails the test there, with what went wrong"
)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority that exists only for one test.
pub struct TestCa {
    /// The CA certificate, PEM: what clients are told to trust (`--ca-file`).
    pub ca_pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA (ECDSA P-256) named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("generating a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-signing the CA");
        Self {
            ca_pem: cert.pem(),
            cert,
            key,
        }
    }

    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().expect("generating a key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("certificate parameters");
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first);
        }
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signing a certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A server certificate for `names` (DNS names or IP addresses, such
    /// as `127.0.0.1`): `(cert_pem, key_pem)`.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        self.leaf(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate for `name`: `(cert_pem, key_pem)`.
    pub fn issue_client(&self, name: &str) -> (String, String) {
        self.leaf(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// Writes the CA certificate to `dir/name` and returns the path.
    pub fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        write(dir, name, &self.ca_pem)
    }

    /// Issues a server certificate for `names` and writes it to
    /// `dir/PREFIX.crt` and `dir/PREFIX.key`; returns both paths.
    pub fn write_server(&self, dir: &Path, prefix: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(names);
        (
            write(dir, &format!("{prefix}.crt"), &cert),
            write(dir, &format!("{prefix}.key"), &key),
        )
    }
}

/// Writes `text` to `dir/name` (replacing it atomically, as a rotation
/// would) and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("writing a TLS file");
    std::fs::rename(&tmp, &path).expect("renaming a TLS file into place");
    path
}

/// An HTTP client (30 s timeout, gzip) that trusts `ca_pem` (and nothing
/// else), presenting `identity` (`(cert_pem, key_pem)`) when given.
pub fn https_client(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("parsing the CA PEM"),
        );
    if let Some((cert, key)) = identity {
        let pem = format!("{cert}\n{key}");
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("parsing the identity"));
    }
    b.build().expect("building an HTTPS client")
}

/// The leaf certificate a TLS server at `addr` presents for `name`, DER,
/// trusting `ca_pem`: to see which certificate a new connection gets.
pub async fn peer_certificate(addr: std::net::SocketAddr, name: &str, ca_pem: &str) -> Vec<u8> {
    use veto_tls::rustls::pki_types::ServerName;
    let dir = crate::TempDir::new("peer-cert");
    let ca = write(dir.path(), "ca.pem", ca_pem);
    let tls = veto_tls::ClientTls::with_ca_file(Some(&ca)).expect("loading the CA");
    let connector = veto_tls::tokio_rustls::TlsConnector::from(tls.config());
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting to the TLS server");
    let name = ServerName::try_from(name.to_owned()).expect("a server name");
    let stream = connector
        .connect(name, tcp)
        .await
        .expect("the TLS handshake");
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("the server's certificates");
    certs.first().expect("a leaf certificate").to_vec()
}

/// The DER of the first certificate in `pem`.
pub fn pem_der(pem: &str) -> Vec<u8> {
    use veto_tls::rustls::pki_types::pem::PemObject as _;
    veto_tls::rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate")
        .to_vec()
}
