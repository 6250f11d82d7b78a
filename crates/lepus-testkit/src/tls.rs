//! Certificates and the TLS listener configuration of a test node.
//!
//! The files come from `scripts/broker certs DIR`, so certificate generation exists once.
//! The listener configuration mirrors what `scripts/broker start --tls` writes: TLS 1.2 and
//! 1.3 only, peer verification with client certificates optional, and EXTERNAL login for
//! the `lepus-client` certificate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::Error;
use crate::process;

/// The user the client certificate logs in as with EXTERNAL (its common name).
pub const CLIENT_CERT_USER: &str = "lepus-client";

/// Definitions loaded during the boot of a TLS node: the passwordless `lepus-client` user
/// next to `guest`/`guest`. A node given definitions seeds no default user or vhost, so
/// both are listed; guest's hash is RabbitMQ's salted SHA-256 of "guest". Same content as
/// `tls_definitions` in `scripts/broker`.
pub(crate) const DEFINITIONS: &str = r#"{
  "vhosts": [{"name": "/"}],
  "users": [
    {"name": "guest", "tags": ["administrator"],
     "password_hash": "bGVwdRUng8XDvwfNTzWVpduhTFgKaAEX6GXHmqLLP/d/k92q",
     "hashing_algorithm": "rabbit_password_hashing_sha256"},
    {"name": "lepus-client", "tags": [], "password_hash": "",
     "hashing_algorithm": "rabbit_password_hashing_sha256"}
  ],
  "permissions": [
    {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
    {"user": "lepus-client", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
  ]
}
"#;

/// Paths of the PEM files a TLS test needs: the CA that signed the server certificate
/// (for `localhost` and `127.0.0.1`), and the client certificate (CN `lepus-client`) with
/// its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    /// The files `scripts/broker certs` writes into `dir`: `ca.pem`, `server.pem`,
    /// `server.key`, `client.pem`, `client.key`. Fails if one of them is missing.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Result<TlsFiles, Error> {
        let files = TlsFiles { dir: dir.into() };
        for path in [
            files.ca(),
            files.server_cert(),
            files.server_key(),
            files.client_cert(),
            files.client_key(),
        ] {
            if !path.is_file() {
                return Err(Error::State(format!(
                    "TLS file {} is missing (generate it with scripts/broker certs {})",
                    path.display(),
                    files.dir.display()
                )));
            }
        }
        Ok(files)
    }

    /// Generates the files into `dir` with `scripts/broker certs` (reused if present).
    pub(crate) fn generate(dir: &Path) -> Result<TlsFiles, Error> {
        let script = broker_script();
        let mut cmd = Command::new("bash");
        cmd.arg(&script).arg("certs").arg(dir);
        let out = process::run(&mut cmd, Duration::from_secs(60), "scripts/broker certs")?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("{} certs {}", script.display(), dir.display()),
                status: out.status.to_string(),
                output: out.combined(),
            });
        }
        TlsFiles::in_dir(dir)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (PEM) to trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The client certificate (PEM), common name `lepus-client`.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// The client certificate's private key (PEM, PKCS#8).
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    /// The server certificate (PEM) the node presents.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server certificate's private key (PEM, PKCS#8).
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// rabbitmq.conf lines for an amqps listener on 127.0.0.1:`port`.
    pub(crate) fn rabbitmq_conf(&self, port: u16) -> String {
        format!(
            "listeners.ssl.1 = 127.0.0.1:{port}\n\
             ssl_options.cacertfile = {ca}\n\
             ssl_options.certfile = {cert}\n\
             ssl_options.keyfile = {key}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = false\n\
             ssl_options.versions.1 = tlsv1.3\n\
             ssl_options.versions.2 = tlsv1.2\n\
             auth_mechanisms.1 = PLAIN\n\
             auth_mechanisms.2 = AMQPLAIN\n\
             auth_mechanisms.3 = EXTERNAL\n\
             ssl_cert_login_from = common_name\n",
            ca = self.ca().display(),
            cert = self.server_cert().display(),
            key = self.server_key().display(),
        )
    }
}

/// `scripts/broker` of this workspace.
pub(crate) fn broker_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
        .join("scripts")
        .join("broker")
}
