//! TCP and TLS sockets, split into the halves the reader and writer tasks own.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::{Error, ErrorKind, Result};
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
            let stream = connector.connect(server_name, tcp).await.map_err(|e| {
                Error::with_source(
                    ErrorKind::Tls,
                    format!("TLS handshake with {} failed: {e}", opts.address()),
                    e,
                )
            })?;
            let (r, w) = tokio::io::split(stream);
            Ok((Box::new(r), Box::new(w)))
        }
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
