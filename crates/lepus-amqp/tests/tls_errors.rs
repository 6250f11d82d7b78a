//! TLS failures come back typed, with a message naming the endpoint: a server certificate
//! from another CA, one for another host name, one that has expired, and a client
//! certificate the broker rejects. Against real nodes booted with certificates made for
//! the purpose.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use lepus_amqp::*;
use lepus_testkit::{Broker, CertSpec, CertificateAuthority, ServerTls, Validity, blocking};

/// Writes `ca`'s certificate and a server certificate made from `spec` into `dir`, and
/// returns the listener files for a node.
fn server_files(dir: &Path, ca: &CertificateAuthority, spec: &CertSpec) -> ServerTls {
    let ca_file = dir.join("ca.pem");
    ca.write_cert(&ca_file).unwrap();
    let cert = ca.issue(spec).unwrap();
    cert.write(&dir.join("server.pem"), &dir.join("server.key"))
        .unwrap();
    ServerTls::new(ca_file, dir.join("server.pem"), dir.join("server.key"))
}

fn write_ca(dir: &Path, name: &str, ca: &CertificateAuthority) -> PathBuf {
    let path = dir.join(name);
    ca.write_cert(&path).unwrap();
    path
}

fn options(broker: &Broker, tls: TlsOptions) -> ConnectionOptions {
    let url = broker.amqps_url().unwrap();
    ConnectionOptions::from_uri(&url).unwrap().tls(tls)
}

async fn connect_err(opts: ConnectionOptions) -> Error {
    match Connection::connect(opts).await {
        Ok(conn) => panic!("connected: {:?}", conn.negotiated()),
        Err(e) => e,
    }
}

fn assert_tls(err: &Error, failure: TlsFailure, words: &str, port: u16) {
    eprintln!("{failure:?}: {err}");
    assert_eq!(err.kind(), ErrorKind::Tls, "{err:?}");
    assert_eq!(err.tls_failure(), Some(failure), "{err:?}");
    assert!(!err.is_recoverable(), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(words), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
}

/// One node whose certificate covers only `localhost`, from CA 1, and that requires a
/// client certificate signed by CA 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_wrong_name_and_a_rejected_client_cert_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::new("lepus test CA 1").unwrap();
    let other = CertificateAuthority::new("lepus test CA 2").unwrap();
    let listener = server_files(dir.path(), &ca, &CertSpec::server(["localhost"]));
    let broker = blocking(move || {
        Broker::builder()
            .server_tls(listener)
            .require_client_cert(true)
            .start()
            .unwrap()
    })
    .await;
    let port = broker.amqps_port().unwrap();
    let trusted = write_ca(dir.path(), "trusted.pem", &ca);
    let untrusted = write_ca(dir.path(), "other.pem", &other);
    let good_client = ca.client_cert("guest").unwrap();
    good_client
        .write(&dir.path().join("good.pem"), &dir.path().join("good.key"))
        .unwrap();
    let bad_client = other.client_cert("guest").unwrap();
    bad_client
        .write(&dir.path().join("bad.pem"), &dir.path().join("bad.key"))
        .unwrap();
    let tls = |ca_file: &Path, name: &str, client: Option<&str>| TlsOptions {
        ca_file: Some(ca_file.to_path_buf()),
        cert_file: client.map(|c| dir.path().join(format!("{c}.pem"))),
        key_file: client.map(|c| dir.path().join(format!("{c}.key"))),
        server_name: Some(name.to_owned()),
    };

    // The control: trusted CA, right name, a client certificate from CA 1.
    let conn = Connection::connect(options(&broker, tls(&trusted, "localhost", Some("good"))))
        .await
        .unwrap();
    conn.close().await.unwrap();

    let err = connect_err(options(&broker, tls(&untrusted, "localhost", Some("good")))).await;
    assert_tls(
        &err,
        TlsFailure::UnknownIssuer,
        "not signed by a CA we trust",
        port,
    );

    // Still on 127.0.0.1, but the certificate is verified against "127.0.0.1".
    let err = connect_err(options(&broker, tls(&trusted, "127.0.0.1", Some("good")))).await;
    assert_tls(
        &err,
        TlsFailure::NotValidForName,
        "not valid for the name \"127.0.0.1\"",
        port,
    );
    let err = connect_err(options(
        &broker,
        tls(&trusted, "other.example", Some("good")),
    ))
    .await;
    assert_tls(&err, TlsFailure::NotValidForName, "\"other.example\"", port);

    // A client certificate from CA 2: the node refuses it.
    let err = connect_err(options(&broker, tls(&trusted, "localhost", Some("bad")))).await;
    assert_tls(
        &err,
        TlsFailure::RejectedByPeer,
        "rejected our client certificate",
        port,
    );

    // No client certificate at all.
    let err = connect_err(options(&broker, tls(&trusted, "localhost", None))).await;
    assert_tls(
        &err,
        TlsFailure::RejectedByPeer,
        "requires a client certificate",
        port,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_server_certificate_is_reported_as_expired() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::new("lepus test CA").unwrap();
    let spec = CertSpec::server(["localhost", "127.0.0.1"]).validity(Validity::expired());
    let listener = server_files(dir.path(), &ca, &spec);
    let broker = blocking(move || Broker::builder().server_tls(listener).start().unwrap()).await;
    let port = broker.amqps_port().unwrap();
    let opts = options(
        &broker,
        TlsOptions {
            ca_file: Some(dir.path().join("ca.pem")),
            cert_file: None,
            key_file: None,
            server_name: None,
        },
    );
    let err = connect_err(opts).await;
    assert_tls(&err, TlsFailure::Expired, "has expired", port);
}
