//! `lepus doctor` against real nodes: a TLS node passes every check; an untrusted CA, a
//! wrong host name and an expiring certificate each fail (or warn) with the right reason;
//! no broker at all is its own exit code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use serde_json::Value;

use common::{Run, lepus};

const T: Duration = Duration::from_secs(60);

/// The check `name` of the first endpoint: (status, detail, fix).
fn check(report: &Value, name: &str) -> (String, String, String) {
    let checks = report["endpoints"][0]["checks"].as_array().unwrap();
    let c = checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"));
    (
        c["status"].as_str().unwrap().to_owned(),
        c["detail"].as_str().unwrap().to_owned(),
        c["fix"].as_str().unwrap_or("").to_owned(),
    )
}

fn doctor(args: &[&str]) -> (Run, Value) {
    let mut all = args.to_vec();
    all.extend(["doctor", "--json", "--timeout", "5"]);
    let run = lepus(&all, b"", T);
    let report: Value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    (run, report)
}

fn amqps_localhost(url: &str) -> String {
    url.replace("127.0.0.1", "localhost")
}

#[test]
fn a_tls_node_passes_every_check() {
    let broker = lepus_testkit::shared_tls_broker().unwrap();
    let files = broker.tls_files().unwrap();
    let url = amqps_localhost(broker.amqps_url().unwrap());
    let (ca, cert, key) = (
        files.ca().display().to_string(),
        files.client_cert().display().to_string(),
        files.client_key().display().to_string(),
    );
    let (run, report) = doctor(&[
        "--amqp-url",
        &url,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    assert_eq!(run.code, Some(0), "{report:#}");
    for name in [
        "dns",
        "tcp",
        "tls",
        "tls.chain",
        "tls.hostname",
        "tls.expiry",
        "tls.client-cert",
        "login",
        "broker",
        "heartbeat",
        "frame-max",
        "permissions",
        "alarms",
    ] {
        assert_eq!(check(&report, name).0, "pass", "{name}: {report:#}");
    }
    assert!(check(&report, "tls").1.contains("TLSv1_3"), "{report:#}");
    assert!(
        check(&report, "broker").1.contains("RabbitMQ"),
        "{report:#}"
    );

    let text = lepus(
        &[
            "--amqp-url",
            &url,
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "doctor",
        ],
        b"",
        T,
    );
    assert_eq!(text.code, Some(0), "{}", text.stdout);
    eprintln!("{}", text.stdout);
    assert!(text.stdout.contains("PASS  tls.chain"), "{}", text.stdout);
}

#[test]
fn an_untrusted_ca_and_a_wrong_host_name_fail_with_the_reason() {
    let broker = lepus_testkit::shared_tls_broker().unwrap();
    let files = broker.tls_files().unwrap();
    let url = amqps_localhost(broker.amqps_url().unwrap());
    // The client certificate is a certificate, but not the CA that issued the server's.
    let wrong_ca = files.client_cert().display().to_string();
    let (run, report) = doctor(&["--amqp-url", &url, "--tls-ca", &wrong_ca]);
    assert_eq!(run.code, Some(4), "{report:#}");
    let (status, detail, fix) = check(&report, "tls.chain");
    assert_eq!(status, "fail", "{report:#}");
    assert!(
        detail.contains("not trusted") && detail.contains("UnknownIssuer"),
        "{detail}"
    );
    assert!(fix.contains("--tls-ca"), "{fix}");
    // The name still matches, and the login fails because of TLS.
    assert_eq!(check(&report, "tls.hostname").0, "pass", "{report:#}");
    assert_eq!(check(&report, "login").0, "fail", "{report:#}");

    let ca = files.ca().display().to_string();
    let (run, report) = doctor(&[
        "--amqp-url",
        &url,
        "--tls-ca",
        &ca,
        "--tls-server-name",
        "wrong.example",
    ]);
    assert_eq!(run.code, Some(4), "{report:#}");
    assert_eq!(check(&report, "tls.chain").0, "pass", "{report:#}");
    let (status, detail, _) = check(&report, "tls.hostname");
    assert_eq!(status, "fail", "{report:#}");
    assert!(
        detail.contains("not 'wrong.example'") && detail.contains("localhost"),
        "{detail}"
    );
}

#[test]
fn a_plain_node_passes_and_no_broker_is_its_own_exit_code() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let (run, report) = doctor(&["--amqp-url", broker.url()]);
    assert_eq!(run.code, Some(0), "{report:#}");
    assert_eq!(check(&report, "tls").0, "skip", "{report:#}");
    assert_eq!(check(&report, "permissions").0, "pass", "{report:#}");

    let (run, report) = doctor(&["--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"]);
    assert_eq!(run.code, Some(5), "{report:#}");
    let (status, _, fix) = check(&report, "tcp");
    assert_eq!(status, "fail");
    assert!(fix.contains("port 1"), "{fix}");

    let (run, report) = doctor(&[
        "--amqp-url",
        &broker.url().replace("guest:guest", "guest:wrong"),
    ]);
    assert_eq!(run.code, Some(4), "{report:#}");
    let (status, detail, fix) = check(&report, "login");
    assert_eq!(status, "fail");
    assert!(detail.contains("login refused"), "{detail}");
    assert!(fix.contains("password"), "{fix}");
}

/// A node whose server certificate (from a CA of the test's own) has `validity`; the CA
/// file for the client, and the node.
fn node_with_cert(
    dir: &std::path::Path,
    validity: lepus_testkit::Validity,
) -> (String, lepus_testkit::Broker) {
    use lepus_testkit::{CertSpec, CertificateAuthority, ServerTls};
    let ca = CertificateAuthority::new("doctor test CA").unwrap();
    let server = ca
        .issue(&CertSpec::server(["localhost", "127.0.0.1"]).validity(validity))
        .unwrap();
    let (ca_file, cert, key) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    ca.write_cert(&ca_file).unwrap();
    server.write(&cert, &key).unwrap();
    let broker = lepus_testkit::Broker::builder()
        .server_tls(ServerTls::new(&ca_file, &cert, &key))
        .start()
        .unwrap();
    (ca_file.display().to_string(), broker)
}

#[test]
fn an_expiring_certificate_warns_and_an_expired_one_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (soon_dir, old_dir) = (dir.path().join("soon"), dir.path().join("old"));
    let soon = std::thread::spawn(move || {
        node_with_cert(
            &soon_dir,
            lepus_testkit::Validity::expiring_in(Duration::from_secs(10 * 86_400)),
        )
    });
    let old =
        std::thread::spawn(move || node_with_cert(&old_dir, lepus_testkit::Validity::expired()));
    let (soon_ca, soon) = soon.join().unwrap();
    let (old_ca, old) = old.join().unwrap();

    let url = amqps_localhost(&soon.amqps_url().unwrap());
    let (run, report) = doctor(&["--amqp-url", &url, "--tls-ca", &soon_ca]);
    assert_eq!(run.code, Some(3), "{report:#}");
    let (status, detail, fix) = check(&report, "tls.expiry");
    assert_eq!(status, "warn", "{report:#}");
    assert!(
        detail.contains("expires in 9 days") || detail.contains("expires in 10 days"),
        "{detail}"
    );
    assert!(fix.contains("renew"), "{fix}");
    // Everything else is fine: the warning is the only finding.
    assert_eq!(check(&report, "tls.chain").0, "pass", "{report:#}");
    assert_eq!(check(&report, "permissions").0, "pass", "{report:#}");

    let url = amqps_localhost(&old.amqps_url().unwrap());
    let (run, report) = doctor(&["--amqp-url", &url, "--tls-ca", &old_ca]);
    assert_eq!(run.code, Some(4), "{report:#}");
    let (status, detail, _) = check(&report, "tls.expiry");
    assert_eq!(status, "fail", "{report:#}");
    assert!(detail.contains("expired on"), "{detail}");
    // Trust is judged apart from expiry: the chain itself is fine.
    assert_eq!(check(&report, "tls.chain").0, "pass", "{report:#}");
    assert_eq!(check(&report, "login").0, "fail", "{report:#}");
}

#[test]
fn a_broker_that_requires_a_client_certificate_says_so() {
    let broker = lepus_testkit::Broker::builder()
        .tls(true)
        .require_client_cert(true)
        .start()
        .unwrap();
    let files = broker.tls_files().unwrap();
    let url = amqps_localhost(&broker.amqps_url().unwrap());
    let ca = files.ca().display().to_string();
    let (run, report) = doctor(&["--amqp-url", &url, "--tls-ca", &ca]);
    assert_eq!(run.code, Some(4), "{report:#}");
    let (status, detail, fix) = check(&report, "tls.client-cert");
    assert_eq!(status, "fail", "{report:#}");
    assert!(
        detail.contains("closed the connection after the handshake"),
        "{detail}"
    );
    assert!(fix.contains("--tls-cert"), "{fix}");

    let (cert, key) = (
        files.client_cert().display().to_string(),
        files.client_key().display().to_string(),
    );
    let (run, report) = doctor(&[
        "--amqp-url",
        &url,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    assert_eq!(run.code, Some(0), "{report:#}");
    assert!(
        check(&report, "tls.client-cert")
            .1
            .contains("CN=lepus-client accepted"),
        "{report:#}"
    );
}

#[test]
fn heartbeats_turned_off_are_a_warning() {
    let broker = lepus_testkit::Broker::builder()
        .config("heartbeat = 0")
        .start()
        .unwrap();
    let url = format!("{}?heartbeat=0", broker.url());
    let (run, report) = doctor(&["--amqp-url", &url]);
    assert_eq!(run.code, Some(3), "{report:#}");
    let (status, detail, fix) = check(&report, "heartbeat");
    assert_eq!(status, "warn", "{report:#}");
    assert!(detail.contains("heartbeats are off"), "{detail}");
    assert!(fix.contains("heartbeat="), "{fix}");
}
