//! Connection options every command shares, and the client built from them.
//!
//! The options are global (`lepus --amqp-url X status` and `lepus status --amqp-url X`
//! both work), each has an environment variable, and a named profile of the config file
//! (see [`crate::profile`]) fills in whatever neither gives. They are resolved once, in
//! `main`, and read by the commands through [`global`].
//!
//! The variables are the ones [`lepus::ClientBuilder::from_env`] reads (named in
//! [`lepus::env`]), so a shell set up for the command configures a service the same way.
//!
//! Every command goes through [`lepus::Client`]: failover across the given URLs, reconnects
//! with backoff, and a hard deadline on the first connect, so a missing broker ends the
//! command with a clear message instead of a hang.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use lepus::{Client, ReconnectPolicy, Role, Topology};

use crate::profile::Profile;

/// The broker a command talks to when no URL is given.
pub(crate) const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Reconnect delays stay short: an operator's command should notice a broker that is back
/// within a couple of seconds.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

static RESOLVED: OnceLock<ConnectArgs> = OnceLock::new();

/// Where the broker is, and how to reach it.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Connection (any command; env vars and --profile too)")]
pub(crate) struct ConnectArgs {
    /// Broker URL (amqp:// or amqps://); repeat the option, or separate with commas, for
    /// failover across several nodes (AMQP_URL is read when neither this nor a profile
    /// gives one) [default: amqp://guest:guest@127.0.0.1:5672/%2f].
    #[arg(
        long = "amqp-url",
        value_name = "URL",
        env = lepus::env::AMQP_URL,
        value_delimiter = ',',
        hide_env_values = true,
        global = true
    )]
    pub urls: Vec<String>,
    /// Management API base URL, e.g. http://guest:guest@127.0.0.1:15672 (used by
    /// `status` for rates, `topology export` and `doctor` when given).
    #[arg(
        long,
        value_name = "URL",
        env = "LEPUS_MANAGEMENT_URL",
        hide_env_values = true,
        global = true
    )]
    pub management_url: Option<String>,
    /// PEM file of the CA certificates to trust (amqps).
    #[arg(long, value_name = "PATH", env = lepus::env::TLS_CA, global = true)]
    pub tls_ca: Option<PathBuf>,
    /// PEM file of the client certificate, for mutual TLS.
    #[arg(long, value_name = "PATH", env = lepus::env::TLS_CERT, global = true)]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the client key, for mutual TLS.
    #[arg(long, value_name = "PATH", env = lepus::env::TLS_KEY, global = true)]
    pub tls_key: Option<PathBuf>,
    /// The name to check the server's certificate against (default: the URL's host).
    #[arg(
        long,
        value_name = "NAME",
        env = lepus::env::TLS_SERVER_NAME,
        global = true
    )]
    pub tls_server_name: Option<String>,
    /// A named profile of the config file.
    #[arg(long, value_name = "NAME", env = "LEPUS_PROFILE", global = true)]
    pub profile: Option<String>,
    /// The config file [default: $XDG_CONFIG_HOME/lepus/lepus.conf or
    /// ~/.config/lepus/lepus.conf].
    #[arg(long, value_name = "PATH", env = "LEPUS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

/// The resolved options (set by `main`; the defaults if it did not).
/// The consuming connection of `client`, for a command that inspects the broker; when
/// none comes within `timeout`, the client is closed, the user told, and the exit code
/// for an unreachable broker is the `Err`.
pub(crate) async fn inspecting_connection(
    client: &Client,
    timeout: Duration,
) -> Result<lepus::connection::Live, std::process::ExitCode> {
    match client.connection(Role::Consume, timeout).await {
        Ok(live) => Ok(live),
        Err(err) => {
            let _ = client.close(Duration::from_secs(2)).await;
            eprintln!(
                "lepus: cannot connect to {}: {}",
                global().describe(),
                err.report()
            );
            Err(std::process::ExitCode::from(crate::exit::UNREACHABLE))
        }
    }
}

pub(crate) fn global() -> &'static ConnectArgs {
    RESOLVED.get_or_init(|| ConnectArgs::default().with_defaults())
}

/// Makes `args` what [`global`] returns. Only the first call counts.
pub(crate) fn install(args: ConnectArgs) {
    let _ = RESOLVED.set(args);
}

impl ConnectArgs {
    /// Fills what the command line and the environment left open from the profile, then
    /// from the defaults.
    pub(crate) fn resolve(mut self) -> anyhow::Result<ConnectArgs> {
        if let Some(profile) = Profile::load(self.config.as_deref(), self.profile.as_deref())? {
            if self.urls.is_empty() {
                self.urls = profile.urls;
            }
            self.management_url = self.management_url.or(profile.management_url);
            self.tls_ca = self.tls_ca.or(profile.tls_ca);
            self.tls_cert = self.tls_cert.or(profile.tls_cert);
            self.tls_key = self.tls_key.or(profile.tls_key);
            self.tls_server_name = self.tls_server_name.or(profile.tls_server_name);
        }
        if self.urls.is_empty()
            && let Ok(urls) = std::env::var(lepus::env::AMQP_URL_FALLBACK)
        {
            // The name many deployments already use, read by the library too.
            self.urls = urls.split(',').map(|u| u.trim().to_owned()).collect();
        }
        let resolved = self.with_defaults();
        resolved.endpoints()?;
        Ok(resolved)
    }

    fn with_defaults(mut self) -> ConnectArgs {
        self.urls.retain(|u| !u.trim().is_empty());
        if self.urls.is_empty() {
            self.urls.push(DEFAULT_URL.to_owned());
        }
        self
    }

    /// The URLs with passwords hidden, for messages.
    pub(crate) fn describe(&self) -> String {
        self.urls
            .iter()
            .map(|u| lepus::amqp::redact_uri(u))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether any TLS option was given.
    fn has_tls_options(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_server_name.is_some()
    }

    /// The URLs with the TLS options added as the query keys the URI parser reads.
    pub(crate) fn endpoints(&self) -> anyhow::Result<Vec<String>> {
        self.urls
            .iter()
            .map(|url| {
                if !self.has_tls_options() {
                    return Ok(url.clone());
                }
                if !url.starts_with("amqps://") {
                    bail!(
                        "the TLS options need an amqps:// URL, not {}",
                        lepus::amqp::redact_uri(url)
                    );
                }
                let mut extra = Vec::new();
                let mut add = |key: &str, value: Option<String>| {
                    if let Some(v) = value {
                        extra.push(format!("{key}={}", encode_query(&v)));
                    }
                };
                let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
                add("cacertfile", path(&self.tls_ca));
                add("certfile", path(&self.tls_cert));
                add("keyfile", path(&self.tls_key));
                add("server_name_indication", self.tls_server_name.clone());
                let sep = if url.contains('?') { '&' } else { '?' };
                Ok(format!("{url}{sep}{}", extra.join("&")))
            })
            .collect()
    }

    /// Builds a client (supervision starts in the background). `shared` puts publishing
    /// and consuming on one connection, enough for the one-shot commands.
    pub(crate) fn client(
        &self,
        name: &str,
        topology: Topology,
        shared: bool,
    ) -> anyhow::Result<Client> {
        let mut builder = Client::builder()
            .name(name)
            .reconnect(ReconnectPolicy::default().max_delay(MAX_RECONNECT_DELAY))
            .topology(topology)
            .shared_connection(shared);
        for url in self.endpoints()? {
            // lepus's error names the endpoint.
            builder = builder.endpoint(&url)?;
        }
        Ok(builder.build()?)
    }
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

/// Waits up to `timeout` for `role`'s connection, with the broker named in the error.
pub(crate) async fn wait_for(
    client: &Client,
    role: Role,
    timeout: Duration,
    args: &ConnectArgs,
) -> anyhow::Result<()> {
    client
        .connection(role, timeout)
        .await
        .map(drop)
        .with_context(|| format!("cannot connect to {}", args.describe()))
}

/// Parses a number of seconds (fractions allowed) into a duration.
pub(crate) fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("'{s}' is not a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn seconds_parse_and_reject_nonsense() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-3").is_err());
        assert!(parse_secs("inf").is_err());
        assert!(parse_secs("soon").is_err());
    }

    #[test]
    fn tls_options_become_query_keys_of_amqps_urls_only() {
        let args = ConnectArgs {
            urls: vec!["amqps://h:5671/%2f?heartbeat=5".into()],
            tls_ca: Some("/etc/my ca.pem".into()),
            tls_server_name: Some("rabbit.internal".into()),
            ..ConnectArgs::default()
        };
        assert_eq!(
            args.endpoints().unwrap(),
            vec![
                "amqps://h:5671/%2f?heartbeat=5&cacertfile=/etc/my%20ca.pem&server_name_indication=rabbit.internal"
            ]
        );
        let plain = ConnectArgs {
            urls: vec!["amqp://h".into()],
            ..args
        };
        assert!(plain.endpoints().is_err());
    }
}
