//! TCP and TLS sockets, split into the halves the reader and writer tasks own.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::{Error, ErrorKind, Result, TlsError, TlsFailure};
use crate::options::{ConnectionOptions, TlsOptions};

pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Opens TCP (and TLS when configured) to the broker. The caller bounds the time.
pub(crate) async fn connect(opts: &ConnectionOptions) -> Result<(ReadHalf, WriteHalf)> {
    let tcp = TcpStream::connect((opts.host.as_str(), opts.port))
        .await
        .map_err(|e| Error::io(&format!("cannot connect to {}", opts.address()), e))?;
    // Frames are batched by the writer; Nagle would only add latency.
    tcp.set_nodelay(true)
        .map_err(|e| Error::io("cannot set TCP_NODELAY", e))?;
    match &opts.tls {
        None => {
            let (r, w) = tcp.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
        Some(tls) => {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(tls)?));
            let name = tls.server_name.clone().unwrap_or_else(|| opts.host.clone());
            let server_name = ServerName::try_from(name.clone()).map_err(|e| {
                Error::with_source(
                    ErrorKind::Config,
                    format!("invalid TLS server name {name:?}"),
                    e,
                )
            })?;
            let stream = connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| tls_io_error(opts, "TLS handshake", e))?;
            let (r, w) = tokio::io::split(stream);
            Ok((Box::new(r), Box::new(w)))
        }
    }
}

/// The error for a failed read or write on a TLS connection, or its handshake: typed
/// ([`ErrorKind::Tls`] with a [`TlsFailure`]) when rustls says why, an I/O error
/// otherwise. The message names the endpoint and the server name verified.
///
/// With TLS 1.3 the client's handshake is over before the server has looked at the
/// client certificate; a server that refuses it says so with an alert that arrives on
/// the first read, which is why the handshake's first reads come here too.
pub(crate) fn tls_io_error(opts: &ConnectionOptions, during: &str, err: std::io::Error) -> Error {
    let Some(tls) = &opts.tls else {
        return Error::io(during, err);
    };
    let name = tls.server_name.as_deref().unwrap_or(opts.host.as_str());
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls_err) => tls_error(opts, during, rustls_err),
        None => Error::io(
            &format!(
                "{during} with {} (TLS, server name {name:?})",
                opts.address()
            ),
            err,
        ),
    }
}

/// A [`ErrorKind::Tls`] error for what rustls reported, naming the endpoint.
pub(crate) fn tls_error(
    opts: &ConnectionOptions,
    during: &str,
    rustls_err: &rustls::Error,
) -> Error {
    let name = opts
        .tls
        .as_ref()
        .and_then(|tls| tls.server_name.as_deref())
        .unwrap_or(opts.host.as_str());
    let failure = classify(rustls_err);
    let has_client_cert = opts.tls.as_ref().is_some_and(|tls| tls.cert_file.is_some());
    let reason = match failure {
        TlsFailure::UnknownIssuer => {
            "the server's certificate is not signed by a CA we trust (check the CA file)".to_owned()
        }
        TlsFailure::NotValidForName => {
            format!("the server's certificate is not valid for the name {name:?}")
        }
        TlsFailure::Expired => "the server's certificate has expired".to_owned(),
        TlsFailure::NotValidYet => "the server's certificate is not valid yet".to_owned(),
        TlsFailure::BadCertificate => "the server's certificate is unusable".to_owned(),
        TlsFailure::RejectedByPeer if has_client_cert => {
            "the server rejected our client certificate".to_owned()
        }
        TlsFailure::RejectedByPeer => {
            "the server requires a client certificate and we sent none".to_owned()
        }
        _ => "the TLS handshake failed".to_owned(),
    };
    // What rustls said is the source; the message is ours only.
    let message = format!(
        "{during} with {} (server name {name:?}) failed: {reason}",
        opts.address()
    );
    let source = TlsError {
        failure,
        source: rustls_err.clone(),
    };
    Error::with_source(ErrorKind::Tls, message, source)
}

/// What went wrong, from what rustls reports.
fn classify(err: &rustls::Error) -> TlsFailure {
    use rustls::{AlertDescription as A, CertificateError as C};
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer => TlsFailure::UnknownIssuer,
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsFailure::NotValidForName,
            C::Expired | C::ExpiredContext { .. } => TlsFailure::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => TlsFailure::NotValidYet,
            _ => TlsFailure::BadCertificate,
        },
        rustls::Error::AlertReceived(
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::CertificateRequired
            | A::AccessDenied,
        ) => TlsFailure::RejectedByPeer,
        _ => TlsFailure::Handshake,
    }
}

/// TLS 1.2 and 1.3 only, ring as the crypto provider.
fn client_config(tls: &TlsOptions) -> Result<rustls::ClientConfig> {
    let tls_err = |what: String, e: rustls::Error| Error::with_source(ErrorKind::Tls, what, e);
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| {
                    Error::with_source(
                        ErrorKind::Config,
                        format!("cannot read CA certificates from {}", path.display()),
                        e,
                    )
                })?;
            if certs.is_empty() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("no certificate in CA file {}", path.display()),
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| tls_err(format!("bad CA certificate in {}", path.display()), e))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A system store may hold certificates rustls cannot use; skip those.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls_err("cannot configure TLS versions".into(), e))?
        .with_root_certificates(roots);
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| {
                    Error::with_source(
                        ErrorKind::Config,
                        format!("cannot read client certificate {}", cert.display()),
                        e,
                    )
                })?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                Error::with_source(
                    ErrorKind::Config,
                    format!("cannot read client key {}", key.display()),
                    e,
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err("client certificate and key do not fit".into(), e))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(Error::new(
            ErrorKind::Config,
            "mutual TLS needs both a certificate file and a key file",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_errors_map_to_failures() {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let cases = [
            (
                E::InvalidCertificate(C::UnknownIssuer),
                TlsFailure::UnknownIssuer,
            ),
            (
                E::InvalidCertificate(C::NotValidForName),
                TlsFailure::NotValidForName,
            ),
            (E::InvalidCertificate(C::Expired), TlsFailure::Expired),
            (
                E::InvalidCertificate(C::NotValidYet),
                TlsFailure::NotValidYet,
            ),
            (
                E::InvalidCertificate(C::BadSignature),
                TlsFailure::BadCertificate,
            ),
            (E::AlertReceived(A::UnknownCA), TlsFailure::RejectedByPeer),
            (
                E::AlertReceived(A::CertificateRequired),
                TlsFailure::RejectedByPeer,
            ),
            (E::AlertReceived(A::ProtocolVersion), TlsFailure::Handshake),
        ];
        for (err, failure) in cases {
            assert_eq!(classify(&err), failure, "{err}");
        }
    }

    #[test]
    fn a_tls_error_is_typed_and_names_the_endpoint() {
        let opts = ConnectionOptions::from_uri("amqps://broker.example:5671/%2f")
            .unwrap_or_else(|e| panic!("{e}"));
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        );
        let err = tls_io_error(&opts, "TLS handshake", io);
        assert_eq!(err.kind(), ErrorKind::Tls);
        assert_eq!(err.tls_failure(), Some(TlsFailure::Expired));
        assert!(!err.is_recoverable());
        assert!(err.to_string().contains("broker.example:5671"), "{err}");
        assert!(err.to_string().contains("has expired"), "{err}");
        crate::error::tests::assert_causes_not_repeated(&err);
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(
            cause,
            Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Expired).to_string())
        );
        // A reset during the handshake is the network's doing: an I/O error, recoverable.
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let err = tls_io_error(&opts, "TLS handshake", reset);
        assert_eq!(err.kind(), ErrorKind::Io);
        assert_eq!(err.tls_failure(), None);
        assert!(err.is_recoverable());
        crate::error::tests::assert_causes_not_repeated(&err);
    }
}
