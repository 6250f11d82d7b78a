//! Test certificates made in process: a CA, server and client certificates it signs, and
//! validity windows in the past or about to end.
//!
//! TLS tests need more than one good chain: a server certificate from another CA, one
//! for the wrong host, one that has expired, a client certificate the broker does not
//! trust. Making them here (with `rcgen`, ECDSA P-256) keeps every such case one function
//! call away and needs no `openssl` program on the machine.
//!
//! ```
//! # fn main() -> Result<(), lepus_testkit::Error> {
//! use lepus_testkit::{CertSpec, CertificateAuthority, Validity};
//!
//! let ca = CertificateAuthority::new("lepus test CA")?;
//! let server = ca.issue(&CertSpec::server(["localhost", "127.0.0.1"]))?;
//! let expired = ca.issue(&CertSpec::server(["localhost"]).validity(Validity::expired()))?;
//! let client = ca.issue(&CertSpec::client("lepus-client"))?;
//! assert!(server.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
//! # let _ = (expired, client);
//! # Ok(())
//! # }
//! ```

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::error::Error;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// When a certificate is valid: from `not_before` to `not_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// The first moment the certificate is valid.
    pub not_before: SystemTime,
    /// The last moment the certificate is valid.
    pub not_after: SystemTime,
}

impl Validity {
    /// From one day ago (so a clock a little behind still accepts it) until `days` days
    /// from now.
    pub fn days(days: u64) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - DAY,
            not_after: now + DAY * u32::try_from(days).unwrap_or(u32::MAX),
        }
    }

    /// Ended yesterday (valid from 30 days ago until one day ago).
    pub fn expired() -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - DAY * 30,
            not_after: now - DAY,
        }
    }

    /// Valid now, ending `left` from now (for "expires soon" warnings).
    pub fn expiring_in(left: Duration) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - DAY,
            not_after: now + left,
        }
    }

    /// Not valid yet: starts `days` days from now, ends a year after that.
    pub fn not_yet_valid(days: u64) -> Validity {
        let start = SystemTime::now() + DAY * u32::try_from(days).unwrap_or(u32::MAX);
        Validity {
            not_before: start,
            not_after: start + DAY * 365,
        }
    }
}

impl Default for Validity {
    /// Ten years from yesterday.
    fn default() -> Self {
        Validity::days(3650)
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    Server,
    Client,
}

/// What to put into a certificate a [`CertificateAuthority`] issues.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct CertSpec {
    common_name: String,
    hosts: Vec<String>,
    usage: Usage,
    validity: Validity,
}

impl CertSpec {
    /// A server certificate (extended key usage `serverAuth`) for `hosts`: each is a DNS
    /// name (`localhost`) or an IP address (`127.0.0.1`) in the subject alternative names.
    /// The common name is the first host. Valid for ten years.
    pub fn server<I, S>(hosts: I) -> CertSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let hosts: Vec<String> = hosts.into_iter().map(Into::into).collect();
        CertSpec {
            common_name: hosts.first().cloned().unwrap_or_default(),
            hosts,
            usage: Usage::Server,
            validity: Validity::default(),
        }
    }

    /// A client certificate (extended key usage `clientAuth`) with this common name, the
    /// user RabbitMQ's EXTERNAL login sees. Valid for ten years.
    pub fn client(common_name: impl Into<String>) -> CertSpec {
        CertSpec {
            common_name: common_name.into(),
            hosts: Vec::new(),
            usage: Usage::Client,
            validity: Validity::default(),
        }
    }

    /// Another validity window, e.g. [`Validity::expired`].
    pub fn validity(mut self, validity: Validity) -> CertSpec {
        self.validity = validity;
        self
    }

    /// Another common name.
    pub fn common_name(mut self, common_name: impl Into<String>) -> CertSpec {
        self.common_name = common_name.into();
        self
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes the certificate to `cert` (mode 644) and the key to `key` (mode 600),
    /// creating their directories.
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), Error> {
        write_pem(cert, self.cert_pem.as_bytes(), 0o644)?;
        write_pem(key, self.key_pem.as_bytes(), 0o600)
    }
}

/// A certificate authority: a self-signed CA certificate and the key that signs what it
/// issues. Each one has a fresh key, so two of them never trust each other's certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert: IssuedCert,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new CA with this common name, valid for ten years.
    pub fn new(common_name: &str) -> Result<CertificateAuthority, Error> {
        CertificateAuthority::with_validity(common_name, Validity::default())
    }

    /// A new CA with this common name and validity window.
    pub fn with_validity(
        common_name: &str,
        validity: Validity,
    ) -> Result<CertificateAuthority, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, validity);
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate().map_err(|e| cert_error("a CA key", &e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| cert_error("the CA certificate", &e))?;
        let issued = IssuedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        };
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            cert: issued,
        })
    }

    /// The CA certificate (and its key), e.g. to write the file clients trust.
    pub fn cert(&self) -> &IssuedCert {
        &self.cert
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        self.cert.cert_pem()
    }

    /// Writes the CA certificate (PEM) to `path`.
    pub fn write_cert(&self, path: &Path) -> Result<(), Error> {
        write_pem(path, self.cert.cert_pem.as_bytes(), 0o644)
    }

    /// A certificate signed by this CA, with a key of its own.
    pub fn issue(&self, spec: &CertSpec) -> Result<IssuedCert, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![match spec.usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        for host in &spec.hosts {
            let san = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    host.clone()
                        .try_into()
                        .map_err(|e| cert_error(&format!("the host name {host:?}"), &e))?,
                ),
            };
            params.subject_alt_names.push(san);
        }
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, spec.validity);
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate().map_err(|e| cert_error("a key", &e))?;
        let what = format!("a certificate for {}", spec.common_name);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| cert_error(&what, &e))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A ten-year server certificate for `hosts` (DNS names or IP addresses).
    pub fn server_cert(&self, hosts: &[&str]) -> Result<IssuedCert, Error> {
        self.issue(&CertSpec::server(hosts.iter().copied()))
    }

    /// A ten-year client certificate with this common name.
    pub fn client_cert(&self, common_name: &str) -> Result<IssuedCert, Error> {
        self.issue(&CertSpec::client(common_name))
    }
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
}

fn random_serial() -> rcgen::SerialNumber {
    // Positive (top bit clear) and never zero.
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    rcgen::SerialNumber::from_slice(&bytes)
}

fn cert_error(what: &str, error: &rcgen::Error) -> Error {
    Error::Certificate(format!("making {what}: {error}"))
}

/// Writes `bytes` to `path` with `mode`, creating the directory.
pub(crate) fn write_pem(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    let context = || format!("writing {}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io(context(), e))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(context(), e))?;
    file.write_all(bytes).map_err(|e| Error::io(context(), e))
}
