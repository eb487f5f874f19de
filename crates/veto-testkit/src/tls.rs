//! Test certificates: a throwaway CA and server certificates it signs,
//! made with rcgen (ring), written as PEM files.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

/// A certificate authority made for one test.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

/// PEM files of a certificate and its private key.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS #8).
    pub key: PathBuf,
}

impl TestCa {
    /// A new self-signed CA named `name` (ECDSA P-256).
    ///
    /// Errors: rcgen's, when the key or certificate cannot be made.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// The CA certificate as PEM (what `--ca-file` takes).
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA certificate to `dir/<name>`; returns its path.
    ///
    /// Errors: the file cannot be written.
    pub fn write_cert(&self, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, self.cert_pem())?;
        Ok(path)
    }

    /// A server certificate for `localhost` and `127.0.0.1` (plus
    /// `names`), signed by this CA, written to `dir/<stem>.pem` and
    /// `dir/<stem>.key`.
    ///
    /// Errors: rcgen's, or the files cannot be written.
    pub fn issue_server(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
    ) -> Result<CertFiles, Box<dyn std::error::Error + Send + Sync>> {
        let mut dns: Vec<String> = vec!["localhost".into()];
        dns.extend(names.iter().map(|n| (*n).to_owned()));
        let mut params = CertificateParams::new(dns)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, stem);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let files = CertFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }
}
