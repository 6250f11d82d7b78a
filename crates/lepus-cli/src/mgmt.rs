//! A small client for RabbitMQ's management HTTP API: what AMQP cannot tell (the list of
//! queues and exchanges, bindings, message rates, alarms, cluster nodes).
//!
//! One request per connection (`Connection: close`), a deadline on each, a cap on the
//! response size, plain HTTP or HTTPS (system roots, or `--tls-ca`). It is all the CLI
//! needs, and it keeps an HTTP stack with its own TLS provider out of the binary.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::connect::ConnectArgs;

/// Largest response read (a definitions export of a big broker fits).
const MAX_RESPONSE: usize = 64 << 20;
/// Deadline of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The management API of one node.
#[derive(Debug, Clone)]
pub(crate) struct Management {
    tls: bool,
    host: String,
    port: u16,
    prefix: String,
    auth: String,
    ca: Option<std::path::PathBuf>,
}

/// `/` becomes `%2F` and so on: a vhost or a queue name as one path segment.
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undoes `%XX` escapes (invalid ones stay as they are).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Management {
    /// The management API at `url` (`http[s]://[user:pass@]host[:port][/prefix]`;
    /// guest/guest when the URL has no user). TLS trusts `args.tls_ca` when given.
    pub(crate) fn new(url: &str, args: &ConnectArgs) -> anyhow::Result<Management> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            bail!("the management URL must start with http:// or https://");
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("")),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, pass) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (percent_decode(user), percent_decode(pass)),
                None => (percent_decode(u), String::new()),
            },
            None => ("guest".to_owned(), "guest".to_owned()),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                p.parse::<u16>()
                    .with_context(|| format!("bad port in the management URL: {p}"))?,
            ),
            _ => (hostport.to_owned(), if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            bail!("no host in the management URL");
        }
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        Ok(Management {
            tls,
            host,
            port,
            prefix: prefix.trim_end_matches('/').to_owned(),
            auth,
            ca: args.tls_ca.clone(),
        })
    }

    /// `host:port`, for messages.
    pub(crate) fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// GET `path` (below `/api`), parsed as JSON.
    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.get_dated(path).await?.0)
    }

    /// GET `path` (below `/api`) as JSON, with the server's clock from the `Date` header
    /// (seconds since the epoch, if it sent one).
    pub(crate) async fn get_dated(&self, path: &str) -> anyhow::Result<(Value, Option<i64>)> {
        let Response { status, date, body } = self.request("GET", path, None).await?;
        if status != 200 {
            bail!(
                "management API GET {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            );
        }
        let value = serde_json::from_slice(&body)
            .with_context(|| format!("management API GET {path}: not JSON"))?;
        Ok((value, date.as_deref().and_then(http_date)))
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Response> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body))
            .await
            .with_context(|| {
                format!(
                    "management API at {} did not answer within {REQUEST_TIMEOUT:?}",
                    self.address()
                )
            })?
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Response> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("cannot reach the management API at {}", self.address()))?;
        let mut head = format!(
            "{method} {}/api{path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {}\r\nAccept: application/json\r\nConnection: close\r\n",
            self.prefix, self.host, self.auth
        );
        let body = body.unwrap_or_default();
        if method != "GET" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        let raw = if self.tls {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(self.tls_config()?));
            let name = ServerName::try_from(self.host.clone())
                .with_context(|| format!("invalid TLS server name {}", self.host))?;
            let stream = connector
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS to the management API at {}", self.address()))?;
            roundtrip(stream, &request).await?
        } else {
            roundtrip(tcp, &request).await?
        };
        parse_response(&raw)
    }

    fn tls_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                {
                    roots.add(cert.with_context(|| format!("bad PEM in {}", path.display()))?)?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> anyhow::Result<Vec<u8>> {
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut raw = Vec::new();
    let mut limited = (&mut stream).take(MAX_RESPONSE as u64 + 1);
    // A TLS peer that closes without close_notify is still a complete response here:
    // the length or the chunking says whether the body is whole.
    if let Err(err) = limited.read_to_end(&mut raw).await
        && err.kind() != std::io::ErrorKind::UnexpectedEof
    {
        return Err(err.into());
    }
    if raw.len() > MAX_RESPONSE {
        bail!("management API response over {MAX_RESPONSE} bytes");
    }
    Ok(raw)
}

/// What an HTTP request returned.
struct Response {
    status: u16,
    /// The `Date` header.
    date: Option<String>,
    body: Vec<u8>,
}

/// Seconds since the epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(crate) fn http_date(s: &str) -> Option<i64> {
    let mut parts = s.split_whitespace().skip(1);
    let day: i64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    // Days from the civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

/// Status, date and body of an HTTP/1.1 response (Content-Length, chunked, or to the end).
fn parse_response(raw: &[u8]) -> anyhow::Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("management API: no complete HTTP response")?;
    let head = String::from_utf8_lossy(raw.get(..split).unwrap_or_default());
    let body = raw.get(split + 4..).unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .context("management API: bad HTTP status line")?;
    let mut chunked = false;
    let mut length = None;
    let mut date = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse::<usize>().ok();
            } else if k == "date" {
                date = Some(v.to_owned());
            }
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else {
        match length {
            Some(n) => body
                .get(..n)
                .context("management API: response shorter than its Content-Length")?
                .to_vec(),
            None => body.to_vec(),
        }
    };
    Ok(Response { status, date, body })
}

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("management API: bad chunk")?;
        let size_text = String::from_utf8_lossy(body.get(..end).unwrap_or_default()).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("management API: bad chunk size")?;
        let start = end + 2;
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(
            body.get(start..start + size)
                .context("management API: truncated chunk")?,
        );
        body = body.get(start + size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_give_host_port_prefix_and_credentials() {
        let m = Management::new(
            "http://ops:p%40ss@rabbit:15673/mgmt/",
            &ConnectArgs::default(),
        )
        .unwrap();
        assert_eq!(m.address(), "rabbit:15673");
        assert_eq!(m.prefix, "/mgmt");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&m.auth)
            .unwrap();
        assert_eq!(decoded, b"ops:p@ss");
        assert!(Management::new("ftp://x", &ConnectArgs::default()).is_err());
        assert_eq!(segment("/"), "%2F");
    }

    #[test]
    fn responses_parse_with_length_and_chunks() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\r\n{}",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, b"{}".as_slice()));
        assert_eq!(r.date.as_deref().and_then(http_date), Some(784_111_777));
        assert_eq!(
            http_date("Sat, 29 Feb 2020 00:00:00 GMT"),
            Some(1_582_934_400)
        );
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"[1,2]");
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }
}
