//! A client configured from the environment, the way services are deployed: the broker
//! URLs, TLS files, heartbeat and connection name come from variables, with the same
//! names the `lepus` command reads, so an operator's shell and a service agree.
//!
//! | Variable | Meaning |
//! |---|---|
//! | `LEPUS_AMQP_URL` | Broker URLs, comma separated (failover across nodes); `AMQP_URL` when unset |
//! | `LEPUS_TLS_CA` | PEM file of the CA certificates to trust (amqps) |
//! | `LEPUS_TLS_CERT` | PEM file of the client certificate (mutual TLS) |
//! | `LEPUS_TLS_KEY` | PEM file of the client key (mutual TLS) |
//! | `LEPUS_TLS_SERVER_NAME` | The name to check the server's certificate against |
//! | `LEPUS_HEARTBEAT` | Heartbeat in seconds (0 turns heartbeats off) |
//! | `LEPUS_CONNECTION_NAME` | The name the broker shows for the connections |
//!
//! The TLS variables apply to every URL and need `amqps://` URLs; they override the same
//! settings given as URL query keys.

use super::ClientBuilder;
use crate::error::{Error, ErrorKind, Result};

/// Broker URLs, comma separated.
pub const AMQP_URL: &str = "LEPUS_AMQP_URL";
/// Broker URLs when [`AMQP_URL`] is unset: the name many deployments already use.
pub const AMQP_URL_FALLBACK: &str = "AMQP_URL";
/// PEM file of the CA certificates to trust.
pub const TLS_CA: &str = "LEPUS_TLS_CA";
/// PEM file of the client certificate, for mutual TLS.
pub const TLS_CERT: &str = "LEPUS_TLS_CERT";
/// PEM file of the client key, for mutual TLS.
pub const TLS_KEY: &str = "LEPUS_TLS_KEY";
/// The name to check the server's certificate against (default: the URL's host).
pub const TLS_SERVER_NAME: &str = "LEPUS_TLS_SERVER_NAME";
/// Heartbeat timeout in seconds.
pub const HEARTBEAT: &str = "LEPUS_HEARTBEAT";
/// The connection name the broker shows (suffixed with the role).
pub const CONNECTION_NAME: &str = "LEPUS_CONNECTION_NAME";

impl ClientBuilder {
    /// A builder configured from the process's environment (see the
    /// [module docs](crate::env) for the variables). Fails when no URL is set or a value
    /// cannot be used; everything else (topology, reconnect policy) is added as usual.
    ///
    /// ```no_run
    /// # async fn demo() -> lepus::Result<()> {
    /// // LEPUS_AMQP_URL=amqps://app:secret@rabbit-1,amqps://app:secret@rabbit-2
    /// // LEPUS_TLS_CA=/etc/ssl/rabbit-ca.pem
    /// let client = lepus::Client::builder().from_env()?.build()?;
    /// # Ok(()) }
    /// ```
    pub fn from_env(self) -> Result<Self> {
        self.from_env_with(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) reading the variables through `lookup` (configuration
    /// kept elsewhere, or tests).
    pub fn from_env_with(mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let urls = get(AMQP_URL)
            .or_else(|| get(AMQP_URL_FALLBACK))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!("no broker URL: set {AMQP_URL} (or {AMQP_URL_FALLBACK})"),
                )
            })?;
        let tls: Vec<(&str, String)> = [
            ("cacertfile", TLS_CA),
            ("certfile", TLS_CERT),
            ("keyfile", TLS_KEY),
            ("server_name_indication", TLS_SERVER_NAME),
        ]
        .into_iter()
        .filter_map(|(key, name)| get(name).map(|v| (key, v)))
        .collect();
        let heartbeat = get(HEARTBEAT)
            .map(|v| {
                v.trim().parse::<u16>().map_err(|_| {
                    Error::new(
                        ErrorKind::Config,
                        format!("{HEARTBEAT} must be a number of seconds (0 to 65535), not '{v}'"),
                    )
                })
            })
            .transpose()?;
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let url = with_tls(url, &tls)?;
            self = self.endpoint(&url)?;
            if let (Some(secs), Some(last)) = (heartbeat, self.endpoints.last_mut()) {
                last.options = std::mem::take(&mut last.options).heartbeat(secs);
            }
        }
        if let Some(name) = get(CONNECTION_NAME) {
            self = self.name(name);
        }
        Ok(self)
    }
}

/// `url` with the TLS settings added as the query keys the URI parser reads (later keys
/// win, so these override the URL's own).
fn with_tls(url: &str, tls: &[(&str, String)]) -> Result<String> {
    if tls.is_empty() {
        return Ok(url.to_owned());
    }
    if !url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("amqps://"))
    {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "the TLS variables need an amqps:// URL, not {}",
                lepus_amqp::redact_uri(url)
            ),
        ));
    }
    let query: Vec<String> = tls
        .iter()
        .map(|(key, value)| format!("{key}={}", encode_query(value)))
        .collect();
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{sep}{}", query.join("&")))
}

/// Percent-encodes what would break a query value.
fn encode_query(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<ClientBuilder> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ClientBuilder::default().from_env_with(|name| vars.get(name).cloned())
    }

    #[test]
    fn urls_come_from_the_lepus_variable_then_amqp_url() {
        let b = from(&[
            (AMQP_URL, "amqp://a:1, amqp://b:2,"),
            (AMQP_URL_FALLBACK, "amqp://c:3"),
        ])
        .unwrap();
        let labels: Vec<&str> = b.endpoints.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["amqp://a:1", "amqp://b:2"]);
        let b = from(&[(AMQP_URL, " "), (AMQP_URL_FALLBACK, "amqp://c:3")]).unwrap();
        assert_eq!(b.endpoints.len(), 1);
        assert_eq!(b.endpoints[0].options.address(), "c:3");
        let err = from(&[]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains(AMQP_URL), "{err}");
    }

    #[test]
    fn tls_heartbeat_and_name_apply_to_every_endpoint() {
        let b = from(&[
            (
                AMQP_URL,
                "amqps://a:5671,amqps://b:5671?cacertfile=/old.pem",
            ),
            (TLS_CA, "/etc/ca dir/ca.pem"),
            (TLS_CERT, "/etc/client.pem"),
            (TLS_KEY, "/etc/client.key"),
            (TLS_SERVER_NAME, "rabbit.internal"),
            (HEARTBEAT, "7"),
            (CONNECTION_NAME, "billing"),
        ])
        .unwrap();
        assert_eq!(b.endpoints.len(), 2);
        for e in &b.endpoints {
            let shown = format!("{:?}", e.options);
            assert!(
                shown.contains("ca_file: Some(\"/etc/ca dir/ca.pem\")"),
                "{shown}"
            );
            assert!(
                shown.contains("cert_file: Some(\"/etc/client.pem\")"),
                "{shown}"
            );
            assert!(
                shown.contains("key_file: Some(\"/etc/client.key\")"),
                "{shown}"
            );
            assert!(
                shown.contains("server_name: Some(\"rabbit.internal\")"),
                "{shown}"
            );
            assert!(shown.contains("heartbeat: 7"), "{shown}");
        }
        assert_eq!(b.name.as_deref(), Some("billing"));
    }

    #[test]
    fn unusable_values_are_configuration_errors() {
        let plain_with_tls = from(&[(AMQP_URL, "amqp://a"), (TLS_CA, "/ca.pem")]).unwrap_err();
        assert_eq!(plain_with_tls.kind(), ErrorKind::Config);
        assert!(
            plain_with_tls.to_string().contains("amqps://"),
            "{plain_with_tls}"
        );
        let heartbeat = from(&[(AMQP_URL, "amqp://a"), (HEARTBEAT, "soon")]).unwrap_err();
        assert!(heartbeat.to_string().contains(HEARTBEAT), "{heartbeat}");
        let url = from(&[(AMQP_URL, "nonsense://a")]).unwrap_err();
        assert_eq!(url.kind(), ErrorKind::Config);
    }
}
