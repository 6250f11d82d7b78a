//! Reading options from an AMQP URI, and printing one without its password.
//!
//! The parsing is `amq-protocol`'s; what is ours is what it leaves out (IPv6 literal hosts,
//! the TLS file keys of the query) and the redaction, which must hide a password however
//! malformed the URI around it is (a URI is printed precisely when it fails to parse).

use std::str::FromStr;
use std::time::Duration;

use amq_protocol::uri::{AMQPScheme, AMQPUri, SASLMechanism};

use super::{AuthMechanism, ConnectionOptions, Secret, TlsOptions};
use crate::error::{Error, ErrorKind, Result};

impl ConnectionOptions {
    /// Parses an AMQP URI: `amqp[s]://[user[:password]@]host[:port][/vhost][?query]`.
    ///
    /// Query keys: `heartbeat`, `frame_max`, `channel_max`, `connection_timeout` (ms),
    /// `auth_mechanism` (`plain` or `external`), and for `amqps` the files `cacertfile`,
    /// `certfile`, `keyfile` and `server_name_indication`.
    pub fn from_uri(uri: &str) -> Result<Self> {
        let parsed = AMQPUri::from_str(uri).map_err(|e| {
            // The parser's message may quote the whole URI ("Invalid URL: '...'").
            let redacted = redact_uri(uri);
            Error::new(
                ErrorKind::Config,
                format!("invalid AMQP URI {redacted}: {}", e.replace(uri, &redacted)),
            )
        })?;
        // The URI parser takes the host from the URL's domain, which is empty for an IPv6
        // literal; take a bracketed host from the URI itself.
        let host = ipv6_host(uri).unwrap_or(parsed.authority.host);
        let mut opts = Self::new(host, parsed.authority.port);
        opts.vhost = parsed.vhost;
        opts.username = parsed.authority.userinfo.username;
        opts.password = Secret(parsed.authority.userinfo.password);
        let q = parsed.query;
        if let Some(h) = q.heartbeat {
            opts.heartbeat = h;
        }
        if let Some(f) = q.frame_max {
            opts.frame_max = f;
        }
        if let Some(c) = q.channel_max {
            opts.channel_max = c;
        }
        if let Some(ms) = q.connection_timeout {
            opts.connection_timeout = Duration::from_millis(ms);
        }
        match q.auth_mechanism {
            None | Some(SASLMechanism::Plain) => {}
            Some(SASLMechanism::External) => opts.auth = AuthMechanism::External,
            Some(other) => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("auth_mechanism {other} is not supported (use plain or external)"),
                ));
            }
        }
        if parsed.scheme == AMQPScheme::AMQPS {
            let mut tls = TlsOptions::default();
            for (key, value) in query_pairs(uri) {
                match key.as_str() {
                    "cacertfile" => tls.ca_file = Some(value.into()),
                    "certfile" => tls.cert_file = Some(value.into()),
                    "keyfile" => tls.key_file = Some(value.into()),
                    "server_name_indication" => tls.server_name = Some(value),
                    _ => {}
                }
            }
            opts.tls = Some(tls);
        }
        Ok(opts)
    }
}

/// Replaces the password in an AMQP URI with `***`, for logs and errors.
///
/// The user information ends at the *last* `@` of the URI, whatever the password holds
/// (`/`, `?`, `#`, `@`, `:` or percent-escapes): a password with a raw `/` makes the URI
/// invalid, and that is exactly when it gets printed in an error. An `@` further right (in
/// the vhost or the query) therefore hides more than the password; hiding too much is the
/// safe side. A URI without `://` (`amqp:user:pass@host`) is redacted the same way.
///
/// ```
/// assert_eq!(
///     lepus_amqp::redact_uri("amqp://app:s3cret@host/vh"),
///     "amqp://app:***@host/vh"
/// );
/// assert_eq!(
///     lepus_amqp::redact_uri("amqp://app:se/cr?et@host/vh"),
///     "amqp://app:***@host/vh"
/// );
/// ```
pub fn redact_uri(uri: &str) -> String {
    let (prefix, rest) = match uri.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => match uri.split_once(':') {
            Some((scheme, rest)) => (format!("{scheme}:"), rest),
            None => (String::new(), uri),
        },
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return uri.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{prefix}{user}:***@{host}"),
        None => uri.to_string(),
    }
}

/// `::1` from `amqp://user:pass@[::1]:5672/vh`.
fn ipv6_host(uri: &str) -> Option<String> {
    let (_, rest) = uri.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let inner = host_port.strip_prefix('[')?;
    let (host, _) = inner.split_once(']')?;
    Some(host.to_owned())
}

fn query_pairs(uri: &str) -> Vec<(String, String)> {
    let Some((_, query)) = uri.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn uri_sets_everything() {
        let o = ConnectionOptions::from_uri(
            "amqps://u:p%40ss@broker:5999/prod?heartbeat=7&frame_max=8192&channel_max=9&connection_timeout=1500&auth_mechanism=external&cacertfile=/tmp/ca.pem&certfile=/tmp/c.pem&keyfile=/tmp/k%20x.pem",
        )
        .unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.vhost.as_str()),
            ("broker", 5999, "prod")
        );
        assert_eq!(o.password.0, "p@ss");
        assert_eq!((o.heartbeat, o.frame_max, o.channel_max), (7, 8192, 9));
        assert_eq!(o.connection_timeout, Duration::from_millis(1500));
        assert_eq!(o.auth, AuthMechanism::External);
        let tls = o.tls.unwrap();
        assert_eq!(tls.key_file.unwrap(), PathBuf::from("/tmp/k x.pem"));
        assert_eq!(tls.ca_file.unwrap(), PathBuf::from("/tmp/ca.pem"));
    }

    #[test]
    fn ipv6_literal_hosts() {
        let o = ConnectionOptions::from_uri("amqp://u:p@[::1]:5999/v").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("::1", 5999));
        assert_eq!(o.address(), "[::1]:5999");
        let o = ConnectionOptions::from_uri("amqps://[fe80::1]/v").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("fe80::1", 5671));
    }

    #[test]
    fn default_vhost_and_port() {
        let o = ConnectionOptions::from_uri("amqp://localhost").unwrap();
        assert_eq!((o.port, o.vhost.as_str()), (5672, "/"));
        let o = ConnectionOptions::from_uri("amqp://h/%2f").unwrap();
        assert_eq!(o.vhost.as_str(), "/");
    }

    #[test]
    fn bad_uri_is_a_config_error_without_the_password() {
        let err = ConnectionOptions::from_uri("amqp://u:hunter2@host:notaport/").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_uri("amqp://h:5672/"), "amqp://h:5672/");
        assert_eq!(redact_uri("amqp://u@h"), "amqp://u@h");
        assert_eq!(redact_uri("amqps://u:p:w@h?x=1"), "amqps://u:***@h?x=1");
    }

    /// Passwords holding every character that ends an authority, raw or escaped.
    const NASTY: &[&str] = &[
        "se/cret",
        "se?cret",
        "se#cret",
        "se@cret",
        "s@e/c?r#et",
        "se%2Fcret",
        "se%40cr%3Fet",
        "se:cret",
        "/",
        "?",
        "#",
        "@",
        "%",
        "sec ret",
        "sécret",
    ];

    #[test]
    fn redaction_hides_any_password_whatever_it_holds() {
        for password in NASTY {
            let password = format!("K{password}Z");
            for tail in ["", "/vh", "/%2f?heartbeat=5", "?x=1", ":5672/vh"] {
                let uri = format!("amqp://app:{password}@broker{tail}");
                let redacted = redact_uri(&uri);
                assert_eq!(redacted, format!("amqp://app:***@broker{tail}"), "{uri}");
                assert!(!redacted.contains(&password), "{uri} -> {redacted}");
            }
            // Without "//" too (an invalid URI the parser echoes back).
            let uri = format!("amqp:app:{password}@broker/vh");
            assert_eq!(redact_uri(&uri), "amqp:app:***@broker/vh", "{uri}");
        }
    }

    #[test]
    fn invalid_uris_never_print_the_password() {
        let secret = "Hunter2Secret";
        for password in NASTY {
            let password = format!("{secret}{password}");
            for uri in [
                format!("amqp://app:{password}@broker:notaport/vh"),
                format!("amqp://app:{password}@broker/vh"),
                format!("amqp:app:{password}@broker/vh"),
                format!("http://app:{password}@broker/vh"),
                format!("amqp://app:{password}@broker/vh?heartbeat=x"),
                format!("amqp://app:{password}@broker/vh?auth_mechanism=nope"),
            ] {
                match ConnectionOptions::from_uri(&uri) {
                    Err(err) => {
                        let text = format!("{err} {err:?}");
                        assert!(!text.contains(secret), "{uri}: {text}");
                        assert_eq!(err.kind(), ErrorKind::Config, "{uri}");
                    }
                    Ok(opts) => {
                        // Some of these parse (with a strange host); the options then
                        // hold the secret, and their Debug must not show it.
                        let text = format!("{opts:?}");
                        assert!(!text.contains(secret), "{uri}: {text}");
                    }
                }
            }
        }
    }
}
