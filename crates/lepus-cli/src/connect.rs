//! Connection options every command shares, and the client built from them.
//!
//! Every command goes through [`lepus::Client`]: failover across the given URLs, reconnects
//! with backoff, and a hard deadline on the first connect, so a missing broker ends the
//! command with a clear message instead of a hang.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use lepus::{Client, ReconnectPolicy, Role, Topology};

/// The broker a command talks to when no URL is given.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Reconnect delays stay short: an operator's command should notice a broker that is back
/// within a couple of seconds.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// Where the broker is.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Broker URL; repeat the option for failover across several nodes.
    #[arg(
        long = "amqp-url",
        value_name = "URL",
        env = "LEPUS_AMQP_URL",
        default_value = DEFAULT_URL,
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub urls: Vec<String>,
}

impl ConnectArgs {
    /// The URLs with passwords hidden, for messages.
    pub fn describe(&self) -> String {
        self.urls
            .iter()
            .map(|u| lepus::amqp::redact_uri(u))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Builds a client (supervision starts in the background). `shared` puts publishing
    /// and consuming on one connection, enough for the one-shot commands.
    pub fn client(&self, name: &str, topology: Topology, shared: bool) -> anyhow::Result<Client> {
        let mut builder = Client::builder()
            .name(name)
            .reconnect(ReconnectPolicy::default().max_delay(MAX_RECONNECT_DELAY))
            .topology(topology)
            .shared_connection(shared);
        for url in &self.urls {
            builder = builder.endpoint(url)?;
        }
        Ok(builder.build()?)
    }
}

/// Waits up to `timeout` for `role`'s connection, with the broker named in the error.
pub async fn wait_for(
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
pub fn parse_secs(s: &str) -> Result<Duration, String> {
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
    use super::*;

    #[test]
    fn seconds_parse_and_reject_nonsense() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-3").is_err());
        assert!(parse_secs("inf").is_err());
        assert!(parse_secs("soon").is_err());
    }
}
