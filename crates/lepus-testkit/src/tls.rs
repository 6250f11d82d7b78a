//! Certificates and the TLS listener configuration of a test node.
//!
//! The default files (a CA, a server certificate for `localhost`/`127.0.0.1`, a client
//! certificate for `lepus-client`) are made in process by [`TlsFiles::generate`], for test
//! nodes and for `lepus-broker start --tls` alike. The listener configuration: TLS 1.2 and
//! 1.3 only, peer verification with client certificates optional (unless required), and
//! EXTERNAL login for the `lepus-client` certificate.

use std::path::{Path, PathBuf};

use crate::certs::{CertSpec, CertificateAuthority, write_pem};
use crate::error::Error;

/// The user the client certificate logs in as with EXTERNAL (its common name).
pub const CLIENT_CERT_USER: &str = "lepus-client";

/// Definitions loaded during the boot of a TLS node: the passwordless `lepus-client` user
/// next to `guest`/`guest`. A node given definitions seeds no default user or vhost, so
/// both are listed; guest's hash is RabbitMQ's salted SHA-256 of "guest" (salt "lepu").
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
    /// The files [`TlsFiles::generate`] (and `scripts/broker certs`) writes into `dir`: `ca.pem`, `server.pem`,
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
                    "TLS file {} is missing (generate it with lepus-broker certs {})",
                    path.display(),
                    files.dir.display()
                )));
            }
        }
        Ok(files)
    }

    /// Generates the files into `dir` unless all of them are there already: a CA
    /// (`ca.pem`, and `ca.key`), a server certificate for `localhost` and `127.0.0.1`
    /// (`server.pem`, `server.key`) and a client certificate with common name
    /// [`CLIENT_CERT_USER`] (`client.pem`, `client.key`), all valid for ten years. Files
    /// are written under other names and renamed into place, so a reader sees a whole
    /// file or none.
    pub fn generate(dir: impl Into<PathBuf>) -> Result<TlsFiles, Error> {
        let dir = dir.into();
        if let Ok(files) = TlsFiles::in_dir(&dir) {
            return Ok(files);
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let ca = CertificateAuthority::new("lepus test CA")?;
        let server = ca.issue(&CertSpec::server(["localhost", "127.0.0.1"]))?;
        let client = ca.issue(&CertSpec::client(CLIENT_CERT_USER))?;
        let tag = format!(".tmp-{:08x}", rand::random::<u32>());
        let staged = |name: &str| dir.join(format!("{name}{tag}"));
        let mut written = Vec::new();
        let mut stage = |name: &'static str, bytes: &str, mode: u32| -> Result<(), Error> {
            write_pem(&staged(name), bytes.as_bytes(), mode)?;
            written.push(name);
            Ok(())
        };
        let result = (|| {
            stage("ca.pem", ca.cert_pem(), 0o644)?;
            stage("ca.key", ca.cert().key_pem(), 0o600)?;
            stage("server.pem", server.cert_pem(), 0o644)?;
            stage("server.key", server.key_pem(), 0o600)?;
            stage("client.pem", client.cert_pem(), 0o644)?;
            stage("client.key", client.key_pem(), 0o600)
        })();
        if let Err(e) = result {
            for name in written {
                let _ = std::fs::remove_file(staged(name));
            }
            return Err(e);
        }
        for name in written {
            let target = dir.join(name);
            std::fs::rename(staged(name), &target)
                .map_err(|e| Error::io(format!("renaming into {}", target.display()), e))?;
        }
        TlsFiles::in_dir(dir)
    }

    /// The server side of these files as a [`ServerTls`]: the node presents
    /// `server.pem` and trusts `ca.pem`, client certificates optional.
    pub fn server_tls(&self) -> ServerTls {
        ServerTls::new(self.ca(), self.server_cert(), self.server_key())
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
}

/// What a node's amqps listener uses: its certificate and key, the CA file it verifies
/// client certificates with, and whether a client must present one.
///
/// Any files will do, so a test can boot a node with an expired certificate, one for
/// another host, or one from a CA the client does not trust (see
/// [`CertificateAuthority`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// The CA certificate(s) client certificates are verified against (PEM).
    pub ca: PathBuf,
    /// The certificate the node presents (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Refuse a client without a certificate (`ssl_options.fail_if_no_peer_cert`).
    /// Default: false (the client certificate is optional, but verified if sent).
    pub require_client_cert: bool,
}

impl ServerTls {
    /// These files, client certificates optional.
    pub fn new(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        ServerTls {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            require_client_cert: false,
        }
    }

    /// Whether a client must present a certificate.
    #[must_use]
    pub fn require_client_cert(mut self, on: bool) -> Self {
        self.require_client_cert = on;
        self
    }

    /// rabbitmq.conf lines for an amqps listener on 127.0.0.1:`port`: TLS 1.2 and 1.3
    /// only, peer verification, EXTERNAL login from the certificate's common name.
    pub(crate) fn rabbitmq_conf(&self, port: u16) -> String {
        format!(
            "listeners.ssl.1 = 127.0.0.1:{port}\n\
             ssl_options.cacertfile = {ca}\n\
             ssl_options.certfile = {cert}\n\
             ssl_options.keyfile = {key}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = {require}\n\
             ssl_options.versions.1 = tlsv1.3\n\
             ssl_options.versions.2 = tlsv1.2\n\
             auth_mechanisms.1 = PLAIN\n\
             auth_mechanisms.2 = AMQPLAIN\n\
             auth_mechanisms.3 = EXTERNAL\n\
             ssl_cert_login_from = common_name\n",
            ca = self.ca.display(),
            cert = self.cert.display(),
            key = self.key.display(),
            require = self.require_client_cert,
        )
    }
}
