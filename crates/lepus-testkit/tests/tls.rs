//! A TLS node: TLS 1.3 with the client certificate and EXTERNAL login, TLS 1.2 with
//! PLAIN, and TLS 1.1 refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Amqp, Login};
use lepus_testkit::{Broker, TlsFiles, unique_name};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

fn tls_connect(
    port: u16,
    files: &TlsFiles,
    version: &'static rustls::SupportedProtocolVersion,
    client_cert: bool,
    host: &str,
) -> Amqp<StreamOwned<ClientConnection, TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(files.ca()).unwrap())
        .unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots);
    let config = if client_cert {
        let chain = CertificateDer::pem_file_iter(files.client_cert())
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(files.client_key()).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let name = ServerName::try_from(host.to_owned()).unwrap();
    let conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    Amqp::new(StreamOwned::new(conn, tcp))
}

#[test]
fn tls_node_accepts_external_with_the_client_cert_and_refuses_tls_1_1() {
    let broker = Broker::builder()
        .tls(true)
        .start()
        .expect("start a TLS node");
    let port = broker.amqps_port().unwrap();
    assert_eq!(
        broker.amqps_url().unwrap(),
        format!("amqps://guest:guest@127.0.0.1:{port}/%2f")
    );
    let files = broker.tls_files().unwrap();

    // TLS 1.3, client certificate, EXTERNAL: logs in as lepus-client.
    let mut amqp = tls_connect(port, files, &rustls::version::TLS13, true, "localhost");
    amqp.handshake(Login::External);
    amqp.declare_queue(&unique_name("testkit-tls"), false);
    let connections = broker
        .rabbitmqctl(&[
            "-q",
            "list_connections",
            "user",
            "auth_mechanism",
            "protocol",
        ])
        .unwrap();
    assert!(connections.contains("lepus-client"), "{connections}");
    assert!(connections.contains("EXTERNAL"), "{connections}");

    // TLS 1.2 without a client certificate, PLAIN guest/guest, server name as an IP.
    let mut amqp = tls_connect(port, files, &rustls::version::TLS12, false, "127.0.0.1");
    amqp.handshake(Login::Plain("guest", "guest"));

    // TLS 1.1 is refused (rustls cannot speak it; openssl can).
    let status = Command::new("openssl")
        .args(["s_client", "-tls1_1", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl s_client");
    assert!(!status.success(), "TLS 1.1 handshake succeeded");
}
