//! The certificate API: rustls accepts the chains it makes, and refuses the broken ones
//! for the reason they were made broken. In memory, no broker: a client and a server
//! connection handing each other bytes until the handshake ends.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use lepus_testkit::{CertSpec, CertificateAuthority, IssuedCert, TlsFiles, Validity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, ClientConnection, ServerConfig, ServerConnection};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateAuthority) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    roots
}

fn key(cert: &IssuedCert) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(cert.key_pem().as_bytes()).unwrap()
}

fn chain(cert: &IssuedCert) -> Vec<CertificateDer<'static>> {
    vec![CertificateDer::from(cert.cert_der().to_vec())]
}

/// Runs a handshake; the first error either side reports.
fn handshake(
    server_ca: &CertificateAuthority,
    server: &IssuedCert,
    client_trusts: &CertificateAuthority,
    host: &str,
    client_cert: Option<&IssuedCert>,
) -> Result<(), rustls::Error> {
    let server_config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let server_config = if client_cert.is_some() {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(server_ca)), provider())
                .build()
                .unwrap();
        server_config.with_client_cert_verifier(verifier)
    } else {
        server_config.with_no_client_auth()
    }
    .with_single_cert(chain(server), key(server))
    .unwrap();
    let client_config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(client_trusts));
    let client_config = match client_cert {
        Some(cert) => client_config
            .with_client_auth_cert(chain(cert), key(cert))
            .unwrap(),
        None => client_config.with_no_client_auth(),
    };
    let mut client = ClientConnection::new(
        Arc::new(client_config),
        ServerName::try_from(host.to_owned()).unwrap(),
    )
    .unwrap();
    let mut server = ServerConnection::new(Arc::new(server_config)).unwrap();
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        server.read_tls(&mut buf.as_slice()).unwrap();
        server.process_new_packets()?;
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        client.read_tls(&mut buf.as_slice()).unwrap();
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

fn cert_error(result: Result<(), rustls::Error>) -> CertificateError {
    match result {
        Err(rustls::Error::InvalidCertificate(e)) => e,
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

#[test]
fn a_good_chain_is_accepted_by_name_and_by_ip() {
    let ca = CertificateAuthority::new("test CA").unwrap();
    let server = ca.server_cert(&["localhost", "127.0.0.1"]).unwrap();
    let client = ca.client_cert("lepus-client").unwrap();
    handshake(&ca, &server, &ca, "localhost", None).unwrap();
    handshake(&ca, &server, &ca, "127.0.0.1", Some(&client)).unwrap();
}

#[test]
fn broken_chains_fail_for_their_reason() {
    let ca = CertificateAuthority::new("test CA").unwrap();
    let other = CertificateAuthority::new("another CA").unwrap();
    let server = ca.server_cert(&["localhost"]).unwrap();

    let unknown = cert_error(handshake(&ca, &server, &other, "localhost", None));
    assert_eq!(unknown, CertificateError::UnknownIssuer);

    let wrong_name = cert_error(handshake(&ca, &server, &ca, "127.0.0.1", None));
    assert!(
        matches!(
            wrong_name,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ),
        "{wrong_name:?}"
    );

    let expired = ca
        .issue(&CertSpec::server(["localhost"]).validity(Validity::expired()))
        .unwrap();
    let err = cert_error(handshake(&ca, &expired, &ca, "localhost", None));
    assert!(
        matches!(
            err,
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        ),
        "{err:?}"
    );

    // A client certificate from a CA the server does not trust.
    let stranger = other.client_cert("lepus-client").unwrap();
    let err = cert_error(handshake(&ca, &server, &ca, "localhost", Some(&stranger)));
    assert_eq!(err, CertificateError::UnknownIssuer);
}

#[test]
fn expiring_soon_is_still_valid_and_files_are_written() {
    let ca = CertificateAuthority::new("test CA").unwrap();
    let soon = ca
        .issue(
            &CertSpec::server(["localhost"])
                .validity(Validity::expiring_in(Duration::from_secs(3 * 86_400))),
        )
        .unwrap();
    handshake(&ca, &soon, &ca, "localhost", None).unwrap();

    let dir = tempfile::tempdir().unwrap();
    soon.write(
        &dir.path().join("s/cert.pem"),
        &dir.path().join("s/key.pem"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("s/key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("s/cert.pem")).unwrap(),
        soon.cert_pem()
    );

    // TlsFiles::generate writes a full set once and then reuses it.
    let files = TlsFiles::generate(dir.path().join("tls")).unwrap();
    let first = std::fs::read(files.ca()).unwrap();
    let again = TlsFiles::generate(dir.path().join("tls")).unwrap();
    assert_eq!(std::fs::read(again.ca()).unwrap(), first);
    assert!(dir.path().join("tls/ca.key").is_file());
}
