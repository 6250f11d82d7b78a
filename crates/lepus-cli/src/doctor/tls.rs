//! The TLS part of `lepus doctor`: one handshake that records what it saw instead of
//! stopping at the first problem, so every problem is reported at once.
//!
//! The probe's verifier asks rustls's WebPKI verifier (the one the engine uses) for its
//! verdict on the chain, at a moment inside the certificate's validity so that expiry is
//! judged separately; it records the verdict and the chain, and lets the handshake go on.
//! The host name is then checked against the certificate's names, and the expiry against
//! the clock, each on its own. After the handshake the probe sends the AMQP protocol
//! header: a broker that refused our client certificate answers with a TLS alert there
//! (TLS 1.3 sends that verdict after the handshake), one that took it answers with AMQP.
//! Nothing of the probe's connection is used for anything else.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The TLS settings of one endpoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsSettings {
    /// CA file; the system's roots when unset.
    pub ca: Option<PathBuf>,
    /// Client certificate chain.
    pub cert: Option<PathBuf>,
    /// Client key.
    pub key: Option<PathBuf>,
    /// The name checked against the certificate.
    pub server_name: String,
}

/// One certificate, as far as the checks care.
#[derive(Debug, Clone)]
pub(crate) struct CertInfo {
    /// Subject, e.g. `CN=rabbit`.
    pub subject: String,
    /// Issuer.
    pub issuer: String,
    /// DNS names and IP addresses of the subjectAltName extension.
    pub names: Vec<String>,
    /// Seconds since the epoch.
    pub not_before: i64,
    /// Seconds since the epoch.
    pub not_after: i64,
}

/// What the probe saw.
#[derive(Debug)]
pub(crate) struct Probe {
    /// `TLSv1_3` and the like.
    pub version: String,
    /// The cipher suite.
    pub cipher: String,
    /// The server's chain, leaf first.
    pub chain: Vec<CertInfo>,
    /// The WebPKI verdict on the chain (expiry set aside): `None` if trusted.
    pub untrusted: Option<String>,
    /// Whether the server asked for a client certificate.
    pub client_cert_requested: bool,
    /// Whether we had one to give.
    pub client_cert_configured: bool,
    /// Our client certificate, if configured.
    pub client_cert: Option<CertInfo>,
    /// Set when the broker refused the connection after the handshake (a TLS alert):
    /// what it said.
    pub rejected_after_handshake: Option<String>,
}

/// Parses a DER certificate.
pub(crate) fn cert_info(der: &[u8]) -> Option<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(n) => names.push((*n).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Some(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Whether `name` (a host name or an IP address) is one of the certificate's names
/// (a `*.` wildcard stands for exactly one leftmost label).
pub(crate) fn name_matches(names: &[String], name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if let Ok(ip) = name.parse::<IpAddr>() {
        return names.iter().any(|n| n.parse::<IpAddr>().ok() == Some(ip));
    }
    names.iter().any(|pattern| {
        let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => pattern == name,
        }
    })
}

/// Seconds since the epoch now.
pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[derive(Debug)]
struct Recorder {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<(Vec<CertInfo>, Option<String>)>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain: Vec<CertInfo> = Vec::new();
        for der in std::iter::once(end_entity).chain(intermediates) {
            if let Some(info) = cert_info(der) {
                chain.push(info);
            }
        }
        // Judge trust inside the leaf's validity: expiry is its own check.
        let at = match chain.first() {
            Some(leaf) => {
                let now_s = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
                let inside = now_s.clamp(
                    leaf.not_before.saturating_add(1),
                    leaf.not_after.saturating_sub(1),
                );
                UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(inside).unwrap_or(0)))
            }
            None => now,
        };
        let verdict = match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            at,
        ) {
            Ok(_) => None,
            // The name is checked after the chain: this error means the chain is trusted.
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => None,
            Err(err) => Some(err.to_string()),
        };
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some((chain, verdict));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct ClientCert {
    key: Arc<CertifiedKey>,
    asked: Arc<AtomicBool>,
}

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::Relaxed);
        Some(Arc::clone(&self.key))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct NoClientCert {
    asked: Arc<AtomicBool>,
}

impl ResolvesClientCert for NoClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

fn read_certs(path: &PathBuf) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

/// Handshakes with `addr` and reports what it saw. Errors are for what stops the probe
/// itself (unreadable files, no handshake at all).
pub(crate) async fn probe(
    addr: std::net::SocketAddr,
    tls: &TlsSettings,
    timeout: Duration,
) -> anyhow::Result<Probe> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(path) => {
            for cert in read_certs(path)? {
                roots
                    .add(cert)
                    .with_context(|| format!("bad CA certificate in {}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let webpki =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .context("no usable CA certificate to verify the server with")?;
    let recorder = Arc::new(Recorder {
        inner: webpki,
        seen: Mutex::new(None),
    });
    // Set by our resolver when the server sends a CertificateRequest.
    let asked = Arc::new(AtomicBool::new(false));
    let (resolver, client_cert): (Arc<dyn ResolvesClientCert>, Option<CertInfo>) =
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let info = chain.first().and_then(|c| cert_info(c));
                let key = PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("cannot read client key {}", key.display()))?;
                let certified = CertifiedKey::from_der(chain, key, &provider)
                    .context("the client certificate and key do not fit")?;
                (
                    Arc::new(ClientCert {
                        key: Arc::new(certified),
                        asked: Arc::clone(&asked),
                    }),
                    info,
                )
            }
            (None, None) => (
                Arc::new(NoClientCert {
                    asked: Arc::clone(&asked),
                }),
                None,
            ),
            _ => bail!("mutual TLS needs both --tls-cert and --tls-key"),
        };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_client_cert_resolver(resolver);
    let name = ServerName::try_from(tls.server_name.clone())
        .with_context(|| format!("invalid TLS server name {:?}", tls.server_name))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = async {
        let tcp = TcpStream::connect(addr).await?;
        connector.connect(name, tcp).await
    };
    let mut stream = tokio::time::timeout(timeout, handshake)
        .await
        .with_context(|| format!("no TLS handshake with {addr} within {timeout:?}"))?
        .with_context(|| format!("TLS handshake with {addr} failed"))?;
    let (version, cipher) = {
        let (_, conn) = stream.get_ref();
        (
            conn.protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_else(|| "?".into()),
            conn.negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()))
                .unwrap_or_else(|| "?".into()),
        )
    };
    // The AMQP header: a broker that took us answers with connection.start.
    let answer = async {
        stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
        stream.flush().await?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.map(|_| ())
    };
    let rejected_after_handshake = match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(err.to_string()),
        Err(_) => Some(format!("no answer within {timeout:?}")),
    };
    let (chain, untrusted) = recorder
        .seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .unwrap_or_else(|| (Vec::new(), Some("the server sent no certificate".into())));
    Ok(Probe {
        version,
        cipher,
        chain,
        untrusted,
        client_cert_requested: asked.load(Ordering::Relaxed),
        client_cert_configured: tls.cert.is_some(),
        client_cert,
        rejected_after_handshake,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_exactly_by_wildcard_or_by_address() {
        let names = vec![
            "localhost".to_owned(),
            "*.rabbit.internal".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        assert!(name_matches(&names, "LOCALHOST"));
        assert!(name_matches(&names, "node-a.rabbit.internal"));
        assert!(!name_matches(&names, "a.b.rabbit.internal"));
        assert!(!name_matches(&names, "rabbit.internal"));
        assert!(name_matches(&names, "127.0.0.1"));
        assert!(!name_matches(&names, "127.0.0.2"));
        assert!(!name_matches(&names, "wrong.example"));
    }
}
