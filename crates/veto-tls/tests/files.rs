//! veto-tls through its public API: PEM errors name the file and what was
//! wrong; a reloading certificate swaps on change and keeps the old one
//! when the new file does not load.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests: a failed step fails the test"
)]

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use veto_tls::{ClientTls, ServerTls, TlsError};

struct Dir(PathBuf);

impl Dir {
    fn new(label: &str) -> Self {
        let p = std::env::temp_dir().join(format!("veto-tls-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `(ca_pem, [(cert_pem, key_pem); n])` for 127.0.0.1.
fn ca_and_leaves(n: usize) -> (String, Vec<(String, String)>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let leaves = (0..n)
        .map(|_| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        })
        .collect();
    (ca.pem(), leaves)
}

fn message(e: TlsError) -> String {
    e.to_string()
}

#[test]
fn pem_errors_name_the_file_and_the_problem() {
    let dir = Dir::new("errors");
    let (ca, leaves) = ca_and_leaves(2);
    let missing = dir.0.join("missing.pem");
    let e = message(ClientTls::with_ca_file(Some(&missing)).unwrap_err());
    assert!(
        e.contains("missing.pem") && e.contains("cannot read"),
        "{e}"
    );
    let der = dir.write("der.pem", "0\x01\x0a DER, not PEM");
    let e = message(ClientTls::with_ca_file(Some(&der)).unwrap_err());
    assert!(e.contains("der.pem") && e.contains("not PEM"), "{e}");
    let key_only = dir.write("key-only.pem", &leaves[0].1);
    let e = message(ClientTls::with_ca_file(Some(&key_only)).unwrap_err());
    assert!(
        e.contains("key-only.pem") && e.contains("no certificates"),
        "{e}"
    );
    let truncated = dir.write("cut.pem", &ca[..ca.len() / 2]);
    let e = message(ClientTls::with_ca_file(Some(&truncated)).unwrap_err());
    assert!(e.contains("cut.pem"), "{e}");
    assert!(ClientTls::with_ca_file(Some(&dir.write("ca.pem", &ca))).is_ok());

    let cert = dir.write("a.crt", &leaves[0].0);
    let other_key = dir.write("b.key", &leaves[1].1);
    let e = message(ServerTls::load(&cert, &other_key, None).unwrap_err());
    assert!(e.contains("b.key") && e.contains("a.crt"), "{e}");
    let e = message(ServerTls::load(&cert, &cert, None).unwrap_err());
    assert!(e.contains("a.crt") && e.contains("no private key"), "{e}");
    let key = dir.write("a.key", &leaves[0].1);
    assert!(ServerTls::load(&cert, &key, Some(&dir.0.join("ca.pem"))).is_ok());
}

#[test]
fn reload_swaps_on_change_and_keeps_the_old_certificate_on_a_bad_file() {
    let dir = Dir::new("reload");
    let (_, leaves) = ca_and_leaves(2);
    let cert = dir.write("s.crt", &leaves[0].0);
    let key = dir.write("s.key", &leaves[0].1);
    let tls = ServerTls::load(&cert, &key, None).unwrap();
    assert!(!tls.reload_if_changed().unwrap(), "nothing changed");

    // A half-written rotation: the new certificate with the old key.
    dir.write("s.crt", &leaves[1].0);
    let e = tls.reload_if_changed().unwrap_err().to_string();
    assert!(e.contains("s.key") && e.contains("s.crt"), "{e}");
    // Not retried until something changes again...
    assert!(!tls.reload_if_changed().unwrap());
    // ...and the key arriving completes it.
    dir.write("s.key", &leaves[1].1);
    assert!(tls.reload_if_changed().unwrap());
    // A forced reload (SIGHUP) reads the files regardless.
    assert!(tls.reload().unwrap());
    dir.write("s.crt", "garbage");
    let e = tls.reload().unwrap_err().to_string();
    assert!(e.contains("s.crt") && e.contains("not PEM"), "{e}");
}
